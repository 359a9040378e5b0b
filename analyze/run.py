"""``analyze``'s driver: finds the recordings, skips what is done, runs the chosen runner, writes.

The runners (this process: the engine's ``BatchRun``; a server with ``--url``: ``remote``; Ray Data
with ``--runner ray``: ``distributed``) all yield each recording's result or error; this module is
the one place that picks one and writes what it yields (``writer``), so that the runners share the
engine's pieces without importing each other. The settings that decide a recording's detections,
hashed, let a rerun skip what an earlier run with the same settings did.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

from birdsearch.analyze import formats
from birdsearch.analyze.config import AnalyzeConfig, Summary
from birdsearch.analyze.present import Presentation
from birdsearch.analyze.writer import Outputs
from birdsearch.engine.batch import min_conf_of
from birdsearch.engine.config import ENCODER_MODES
from birdsearch.engine.detections import RecordingResult
from birdsearch.engine.detector import Detector
from birdsearch.engine.inputs import Recording, find_recordings
from birdsearch.engine.ranking import parse_rule
from birdsearch.errors import ConfigError
from birdsearch.model.calibration import describe as describe_calibration

log = logging.getLogger(__name__)


def analyze(config: AnalyzeConfig, engine: Detector | None = None) -> Summary:
    """Run ``config``; ``engine`` (models and index) is loaded when not given. Never raises for one bad file."""
    started = time.perf_counter()
    recordings, problems = find_recordings(config.inputs)
    for item, reason in problems:
        log.warning("input %s: %s", item, reason)
    shown_names = local_names(config)  # a bad locale or names file stops the run before the models load
    analyser, settings = make_analyser(config, engine)
    digest = digest_of(settings)
    shown = presentation(config, settings, shown_names)
    outputs = Outputs(config.out, formats.parse_formats(",".join(config.formats)), digest, shown)
    config.out.mkdir(parents=True, exist_ok=True)
    summary = Summary(recordings=len(recordings), settings_hash=digest)
    summary.failures += [(item, "no_input", reason) for item, reason in problems]

    results: dict[str, RecordingResult] = {}
    todo = []
    for recording in recordings:
        stored = outputs.done(recording)
        if stored is None:
            todo.append(recording)
        else:
            results[recording.name] = stored
    summary.skipped = len(recordings) - len(todo)
    if summary.skipped:
        log.info(
            "%d of %d recordings already analysed with these settings: skipped",
            summary.skipped,
            len(recordings),
        )

    bar = progress_bar(len(todo), config.progress)
    write_s = 0.0
    for recording, outcome in analyser.run(todo):
        if isinstance(outcome, BaseException):
            summary.failures.append(failure_row(recording, outcome, config.absolute_paths))
            summary.failed += 1
        else:
            written = time.perf_counter()
            outputs.write(recording, outcome)
            write_s += time.perf_counter() - written
            results[recording.name] = outcome
            summary.analysed += 1
            summary.detections += len(outcome.detections)
            summary.audio_s += outcome.duration_s
        advance(bar, summary, started)
    bar.close()

    outputs.write_combined([results[r.name] for r in recordings if r.name in results])
    warn_uncoded(results.values(), settings.get("index"))
    outputs.write_failures(summary.failures)
    summary.wall_s = time.perf_counter() - started
    summary.stage_s = {**{k: round(v, 3) for k, v in analyser.seconds.items()}, "write": round(write_s, 3)}
    outputs.write_run(run_file(config, outputs, settings, summary, analyser.facts()))
    log.info("analysed %d recordings (%.2f h of audio, %.3f h/s), %d skipped, %d failed, %d detections; "
             "outputs in %s", summary.analysed, summary.audio_s / 3600, summary.audio_hours_per_s,
             summary.skipped, summary.failed, summary.detections, config.out)  # fmt: skip
    return summary


def make_analyser(config: AnalyzeConfig, engine: Detector | None) -> tuple[Any, dict[str, Any]]:
    """The runner of ``config`` and the settings that decide its detections.

    The runner is a server (``--url``), Ray Data (``--runner ray``) or this process (the engine's
    ``BatchRun``); each has ``run(todo)`` (each recording with its result or error), ``seconds`` (per
    stage) and ``facts()`` (for ``run.json``).
    """
    if config.url:
        from birdsearch.analyze.remote import RemoteAnalyser

        remote = RemoteAnalyser(config)
        return remote, remote.settings
    from birdsearch.engine.batch import BatchRun, resolve_window

    engine = engine or load_engine(config)
    settings = settings_of(config, engine, *resolve_window(config, engine.front_end.window_s))
    if config.runner == "ray":
        from birdsearch.analyze.distributed import RayAnalyser

        return RayAnalyser(engine, config), settings
    return BatchRun(engine, config, config.device), settings


def load_engine(config: AnalyzeConfig) -> Detector:
    """The run's model and index (``Detector.load``), with a word when ``min_conf`` meets raw scores."""
    engine = Detector.load(
        config.engine_config(), config.mode, config.species_list, config.strict_species_list
    )
    if engine.calibration is None:
        log.warning("no calibration for mode %s: --min-conf %g applies to the raw pooled cosine score",
                    engine.mode, min_conf_of(config, engine))  # fmt: skip
    return engine


def settings_of(config: AnalyzeConfig, engine: Detector, window_s: float, hop_s: float) -> dict[str, Any]:
    """The settings of an in-process (or Ray) run that decide its detections."""
    facts = engine.embedder.facts
    model = config.checkpoint if facts.mode in ENCODER_MODES else config.student
    return {
        "mode": facts.mode,
        # The spec as given, and its folder when it is one: ids in answers may leave paths out.
        "model": model,
        "model_path": local_path(model),
        "model_details": facts.details,
        "index": engine.served.name,
        "window_s": window_s,
        "hop_s": hop_s,
        "min_conf": min_conf_of(config, engine),
        "calibration": describe_calibration(engine.calibration) if engine.calibration is not None else None,
        "open_set": engine.gate.describe() if engine.gate is not None else None,
        "species_k": config.species_k,
        "candidates_per_window": config.candidates_per_window,
        "species_rule": str(parse_rule(config.species_rule)),
        "species_list": engine.species_names,
        "max_duration_s": config.max_duration_s,
        "band_hz": [config.fmin_hz, config.fmax_hz],
    }


def digest_of(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def local_path(spec: str) -> str:
    """The absolute path of a model spec that names a local file or folder, else ""."""
    path = Path(spec).expanduser()
    return str(path.resolve()) if spec and path.exists() else ""


def failure_row(recording: Recording, error: BaseException, absolute: bool = False) -> tuple[str, str, str]:
    # A server's refusal carries the server's own code (unreadable_audio, ...), as a local failure would.
    code = getattr(error, "server_code", None) or getattr(error, "code", None) or type(error).__name__
    log.warning("%s", error)  # messages name the file
    reason = " ".join(str(error).split()).removeprefix(f"{recording.path}: ")  # the file has its own column
    return str(recording.path.resolve() if absolute else recording.path), str(code), reason


def local_names(config: AnalyzeConfig) -> Any:
    """The common names of ``config.locale`` (``locales.LocalNames``), or None to keep the index's."""
    from birdsearch.model.locales import read_local_names, translates

    if not translates(config.locale):
        return None
    if config.names is None:
        raise ConfigError(
            f"--locale {config.locale} takes its names from the IOC World Bird List's multilingual version: "
            "download 'Multiling IOC <version>.xlsx' from worldbirdnames.org, save its List sheet as CSV and "
            "give it with --names FILE (or BIRDSEARCH_NAMES)"
        )
    return read_local_names(config.names, config.locale)


def presentation(config: AnalyzeConfig, settings: dict[str, Any], names: Any) -> Presentation:
    """How the run shows its results: merged, named, paths, and the settings columns asked for."""
    from birdsearch.model.mel import FrontEndConfig

    window_s = (
        settings.get("window_s") or FrontEndConfig().window_s
    )  # a server's default window is the model's
    overlap_s = window_s - (settings.get("hop_s") or window_s)
    min_conf = settings.get("min_conf", config.min_conf)  # None: each answer's default (--url)
    values = {
        "overlap": f"{overlap_s:g}", "min_conf": f"{min_conf:g}" if min_conf is not None else "",
        "species_list": str(config.species_list or ""), "model": str(settings.get("model", "")),
        "window_s": f"{window_s:g}", "hop_s": f"{window_s - overlap_s:g}", "species_k": str(config.species_k),
        "species_rule": str(settings.get("species_rule", "")), "mode": str(settings.get("mode", "")),
        "index": str(settings.get("index", "")), "fmin": f"{config.fmin_hz:g}",
        "fmax": f"{config.fmax_hz:g}" if config.fmax_hz is not None else "",
        "locale": config.locale, "calibration": json.dumps(settings.get("calibration")),
    }  # fmt: skip
    table = formats.Table(tuple((name, values[name]) for name in config.additional_columns), overlap_s)
    return Presentation(config.merge_consecutive, names, config.absolute_paths, table)


def warn_uncoded(results: Any, index: Any) -> None:
    """One warning when detected species have no eBird code (Raven's Species Code is then empty)."""
    uncoded = sorted({d.scientific for r in results for d in r.detections if not d.species_code})
    if uncoded:
        log.warning(
            "index %s has no eBird species code for %d detected species (%s): their Species Code is empty; build "
            "the index with --taxa and the eBird taxonomy (or a manifest's species_code column) to fill it",
            index, len(uncoded), ", ".join(uncoded[:5]) + (", ..." if len(uncoded) > 5 else ""),
        )  # fmt: skip


def progress_bar(total: int, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, unit="file", desc="analyze", disable=not enabled, dynamic_ncols=True)


def advance(bar: Any, summary: Summary, started: float) -> None:
    elapsed = time.perf_counter() - started
    rate = summary.audio_s / 3600 / elapsed if elapsed > 0 else 0.0
    bar.set_postfix_str(f"{rate:.3g} h audio/s, {summary.failed} failed", refresh=False)
    bar.update(1)


def run_file(config: AnalyzeConfig, outputs: Outputs, settings: dict, summary: Summary,
             runner_facts: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    return {
        "settings_hash": summary.settings_hash,
        "settings": settings,
        "formats": outputs.formats,
        "inputs": list(config.inputs),
        "runner": "url" if config.url else config.runner,
        **runner_facts,
        "summary": {
            "recordings": summary.recordings, "analysed": summary.analysed, "skipped": summary.skipped,
            "failed": summary.failed, "detections": summary.detections, "audio_s": round(summary.audio_s, 3),
            "wall_s": round(summary.wall_s, 3), "audio_hours_per_s": round(summary.audio_hours_per_s, 6),
            "stage_s": summary.stage_s,
        },
    }  # fmt: skip
