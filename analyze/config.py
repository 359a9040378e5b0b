"""One ``analyze`` run: what to ask of each recording (the engine's ``BatchOptions``), which recordings,
where the results go, and which runner does the work."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from birdsearch.analyze import formats
from birdsearch.engine.batch import BatchOptions
from birdsearch.engine.config import EngineConfig
from birdsearch.errors import ConfigError
from birdsearch.model.hub import DEFAULT_STUDENT


@dataclass(frozen=True, kw_only=True)
class AnalyzeConfig(BatchOptions):
    """One ``analyze`` run; the fields it inherits are what each recording is asked (``BatchOptions``)."""

    inputs: Sequence[str]  # files, folders (recursive) and glob patterns
    out: Path  # output folder (created)
    index_root: Path  # holds the published index versions
    checkpoint: str = ""  # distilled encoder; empty: the zero-shot cascade
    student: str = DEFAULT_STUDENT  # the cascade's student spec
    device: str = "auto"
    calibration: str = ""  # calibration file; empty: calibration.json beside the encoder / in the index root
    formats: Sequence[str] = formats.FORMATS
    merge_consecutive: int = 1  # merge a species' consecutive detections, at most this many (BirdNET's)
    locale: str = "en"  # common names in this language (BirdNET's codes), from ``names``
    names: Path | None = None  # the IOC multilingual list (CSV) the names come from
    additional_columns: Sequence[str] = ()  # settings written as extra CSV columns (BirdNET's names and ours)
    absolute_paths: bool = False  # write recordings' paths absolute (default: as given)
    progress: bool = True
    url: str = ""  # a running query service to send the recordings to instead of loading models (remote.py)
    runner: str = "local"  # "local" (this process) or "ray" (Ray Data: distributed.py)
    ray_address: str | None = None  # the Ray cluster (None: RAY_ADDRESS, else a local instance)
    ray_actors: int = 1  # model actors (one model, and one GPU where there are GPUs, each)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.runner not in ("local", "ray"):
            raise ConfigError(f"runner {self.runner!r}: use local or ray")
        if self.url and self.runner != "local":
            raise ConfigError("--url sends the work to a server; it does not combine with --runner ray")
        if self.ray_actors < 1:
            raise ConfigError(f"ray_actors={self.ray_actors} must be at least 1")
        formats.parse_formats(",".join(self.formats))
        if self.merge_consecutive < 0:
            raise ConfigError(
                f"merge_consecutive={self.merge_consecutive} must be 0 or more (0 and 1: no merging)"
            )
        unknown_columns(self.additional_columns)

    def engine_config(self) -> EngineConfig:
        """The models, index and calibration the engine loads for this run."""
        return EngineConfig(index_root=self.index_root, checkpoint=self.checkpoint, student=self.student,
                            device=self.device, calibration=self.calibration)  # fmt: skip


# Settings --additional-columns can write: BirdNET-Analyzer's names that have a meaning here, and ours.
COLUMNS = ("overlap", "min_conf", "species_list", "model", "window_s", "hop_s", "species_k", "species_rule",
           "mode", "index", "fmin", "fmax", "locale", "calibration")  # fmt: skip
NOT_HERE = {"lat": "no location filter", "lon": "no location filter", "week": "no location filter",
            "sensitivity": "no sigmoid sensitivity: confidences are calibrated"}  # fmt: skip


def unknown_columns(names: Sequence[str]) -> None:
    """ConfigError for a column --additional-columns cannot write, saying why."""
    for name in names:
        if name in NOT_HERE:
            raise ConfigError(f"additional column {name!r}: birdsearch has {NOT_HERE[name]}; use some of "
                              f"{', '.join(COLUMNS)}")  # fmt: skip
        if name not in COLUMNS:
            raise ConfigError(f"unknown additional column {name!r}: use some of {', '.join(COLUMNS)}")


@dataclass
class Summary:
    """What a run did; also written to ``run.json``."""

    recordings: int = 0  # found in the inputs
    analysed: int = 0
    skipped: int = 0  # done by an earlier run with the same settings
    failed: int = 0
    detections: int = 0
    audio_s: float = 0.0  # seconds of audio analysed in this run
    wall_s: float = 0.0
    settings_hash: str = ""
    stage_s: dict[str, float] = field(default_factory=dict)  # decode, waiting, model, search, write
    failures: list[tuple[str, str, str]] = field(default_factory=list)  # (file, code, reason)

    @property
    def audio_hours_per_s(self) -> float:
        return self.audio_s / 3600 / self.wall_s if self.wall_s > 0 else 0.0
