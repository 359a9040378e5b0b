"""``analyze``'s driver: finds the recordings, skips what is done, runs the chosen runner, writes.

The runners (this process, a server with ``--url``, Ray Data with ``--runner ray``) all yield each
recording's result or error; this module is the one place that picks one and writes what it yields,
so that the runners can share the pipeline's pieces without importing each other.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from birdsearch.service.analyze import formats
from birdsearch.service.analyze.formats import RecordingResult
from birdsearch.service.analyze.inputs import Recording, find_recordings
from birdsearch.service.analyze.pipeline import (
    RUN_FILE,
    Analyser,
    AnalyzeConfig,
    Engine,
    Outputs,
    Summary,
    digest_of,
    load_engine,
)

log = logging.getLogger(__name__)


def analyze(config: AnalyzeConfig, engine: Engine | None = None) -> Summary:
    """Run ``config``; ``engine`` (models and index) is loaded when not given. Never raises for one bad file."""
    started = time.perf_counter()
    recordings, problems = find_recordings(config.inputs)
    for item, reason in problems:
        log.warning("input %s: %s", item, reason)
    analyser = make_analyser(config, engine)
    settings = analyser.settings
    digest = digest_of(settings)
    outputs = Outputs(config.out, formats.parse_formats(",".join(config.formats)), digest)
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
        log.info("%d of %d recordings already analysed with these settings: skipped", summary.skipped, len(recordings))

    bar = progress_bar(len(todo), config.progress)
    write_s = 0.0
    for recording, outcome in analyser.run(todo):
        if isinstance(outcome, BaseException):
            summary.failures.append(failure_row(recording, outcome))
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
    outputs.write_failures(summary.failures)
    summary.wall_s = time.perf_counter() - started
    summary.stage_s = {**{k: round(v, 3) for k, v in analyser.seconds.items()}, "write": round(write_s, 3)}
    write_run_file(config, outputs, settings, summary, analyser.facts())
    log.info("analysed %d recordings (%.2f h of audio, %.3f h/s), %d skipped, %d failed, %d detections; "
             "outputs in %s", summary.analysed, summary.audio_s / 3600, summary.audio_hours_per_s,
             summary.skipped, summary.failed, summary.detections, config.out)  # fmt: skip
    return summary



def make_analyser(config: AnalyzeConfig, engine: Engine | None) -> Any:
    """The runner of ``config``: a server (``--url``), Ray Data (``--runner ray``) or this process.

    Each has ``settings`` (what decides its detections), ``run(todo)`` (as ``Analyser.run``),
    ``seconds`` (per stage) and ``facts()`` (for ``run.json``).
    """
    if config.url:
        from birdsearch.service.analyze.remote import RemoteAnalyser

        return RemoteAnalyser(config)
    engine = engine or load_engine(config)
    if config.runner == "ray":
        from birdsearch.service.analyze.distributed import RayAnalyser

        return RayAnalyser(engine, config)
    return Analyser(engine, config)



def failure_row(recording: Recording, error: BaseException) -> tuple[str, str, str]:
    # A server's refusal carries the server's own code (unreadable_audio, ...), as a local failure would.
    code = getattr(error, "server_code", None) or getattr(error, "code", None) or type(error).__name__
    log.warning("%s", error)  # messages name the file
    reason = " ".join(str(error).split()).removeprefix(f"{recording.path}: ")  # the file has its own column
    return str(recording.path), str(code), reason



def progress_bar(total: int, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, unit="file", desc="analyze", disable=not enabled, dynamic_ncols=True)



def advance(bar: Any, summary: Summary, started: float) -> None:
    elapsed = time.perf_counter() - started
    rate = summary.audio_s / 3600 / elapsed if elapsed > 0 else 0.0
    bar.set_postfix_str(f"{rate:.3g} h audio/s, {summary.failed} failed", refresh=False)
    bar.update(1)



def write_run_file(config: AnalyzeConfig, outputs: Outputs, settings: dict, summary: Summary,
                   runner_facts: dict[str, Any]) -> None:  # fmt: skip
    run = {
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
    formats.write_atomic(outputs.out / RUN_FILE, json.dumps(run, indent=2, default=str) + "\n")
