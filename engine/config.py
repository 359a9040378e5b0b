"""What the engine runs on, and where those settings come from.

- ``EngineConfig``: a plain dataclass, one field per choice the engine makes (models, index, limits,
  batching, threads), each default defined here once. Every door builds one: the HTTP app from its
  settings (``birdsearch.service.settings.Settings.engine_config``), the Python API from its
  arguments and the environment (``EngineSettings``), ``analyze`` and the demo from their flags.
- ``EngineSettings``: the same fields read as ``birdsearch serve`` reads them: ``BIRDSEARCH_<NAME>``
  environment variables and the TOML, JSON or YAML file named by ``BIRDSEARCH_CONFIG`` (keys are
  the field names without the prefix); explicit arguments win over the environment, which wins
  over the file. Validators refuse bad values at start, not at the first request. The HTTP app's
  ``Settings`` extends it with the settings only a server has (upload limits, admin key, workers).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    JsonConfigSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
    YamlConfigSettingsSource,
)

from birdsearch.cpus import available_cpus
from birdsearch.engine.ranking import DEFAULT_SPECIES_RULE, parse_rule
from birdsearch.errors import ConfigError
from birdsearch.model.hub import DEFAULT_STUDENT
from birdsearch.paths import cache_root

CONFIG_ENV = "BIRDSEARCH_CONFIG"
ENV_PREFIX = "BIRDSEARCH_"
Mode = Literal["distilled", "cascade", "classifier", "hybrid"]
MODES: tuple[str, ...] = ("distilled", "cascade", "classifier", "hybrid")
# The modes whose species step runs per index version (the student, or the encoder's classifier, classifies).
CLASSIFYING_MODES = ("cascade", "classifier", "hybrid")
ENCODER_MODES = ("distilled", "classifier", "hybrid")  # the modes of a distilled encoder directory


def default_index_root() -> Path:
    """Where ``birdsearch index`` publishes by default: ``<cache root>/index``."""
    return cache_root() / "index"


@dataclass(frozen=True)
class EngineConfig:
    """Everything the engine can be told (see ``EngineSettings`` for the checks a server makes at start)."""

    # Models and data
    index_root: Path = field(default_factory=default_index_root)  # holds the published index versions
    checkpoint: str = ""  # distilled encoder directory; empty: the zero-shot cascade answers
    student: str = DEFAULT_STUDENT  # the student spec the cascade classifies with
    cascade: str = "auto"  # load the cascade: "auto" (only without a checkpoint), "always" or "never"
    device: str = "auto"  # auto, cpu, cuda or cuda:N
    # calibration file (birdsearch.model.calibration) with an entry per mode; empty: <checkpoint>/calibration.json
    # for the distilled encoder and <index_root>/calibration.json for the cascade, where they exist
    calibration: str = ""
    # species list file (plain names or BirdNET lines): only its species are searched; a request's own list wins
    species_list: str = ""

    # Limits on what a request may ask for
    max_duration_s: float = 600.0  # longer recordings: 413 (read from the header, not decoded)
    max_decoded_bytes: int = 256 * 2**20  # decoding one upload (all channels + resampled)
    audio_memory_bytes: int = 1024 * 2**20  # decoded audio of all requests in flight
    max_windows: int = 256  # windows of one recording (duration / hop); 422 beyond
    min_hop_s: float = 1.0  # smallest hop a request may ask for: each window costs a forward pass
    max_k: int = 100  # most images one request may ask for
    max_species_k: int = 50  # most species one request may ask for
    candidates_per_window: int = 200  # images searched per window to rank species
    # how a species' photos among a window's candidates pool into its score (engine/ranking.py)
    species_rule: str = DEFAULT_SPECIES_RULE

    # Micro-batching and concurrency
    max_batch: int = 0  # windows in one forward pass; 0: 64 on a GPU, 4 on a CPU (see batch_size)
    max_wait_ms: float = 5.0  # how long the first window of a batch waits for company
    cores: int = 0  # CPU cores this engine may keep busy; 0: those this process may use (birdsearch.cpus)
    decode_threads: int = 0  # threads decoding uploads (0: the cores)
    # torch threads per model call; 0: the cores that other queries did not keep busy lately
    compute_threads: int = 0
    compile: bool = False  # torch.compile the audio tower at start (a GPU lever; start takes longer)
    reload_interval_s: float = 5.0  # how often to look for a new index version; 0: never

    @property
    def cascade_enabled(self) -> bool:
        """Whether the zero-shot cascade (student + index species) is loaded."""
        return self.cascade == "always" or (self.cascade == "auto" and not self.checkpoint)

    @property
    def default_mode(self) -> Mode:
        """What mode=auto means here: with a distilled encoder, the mode its card records as its default
        (the one its validation chose, ``birdsearch.model.species_head``); without one, the cascade."""
        return recorded_default(self.checkpoint) if self.checkpoint else "cascade"  # type: ignore[return-value]

    @property
    def batch_size(self) -> int:
        """``max_batch``, or the device's default: on a CPU larger batches bought nothing per clip
        (BENCHMARKS.md, Query service: the model path at batch 32 against batch 1), on a GPU they are
        what makes thousands of clips per second."""
        if self.max_batch:
            return self.max_batch
        from birdsearch.model.device import resolve_device

        return 64 if resolve_device(self.device).type == "cuda" else 4

    @property
    def core_count(self) -> int:
        """``cores``, or the cores this process may use (affinity and cgroup quota)."""
        return self.cores or available_cpus()

    @property
    def decode_thread_count(self) -> int:
        return self.decode_threads or self.core_count


@functools.lru_cache(maxsize=8)
def recorded_default(checkpoint: str) -> str:
    """The default query mode an encoder's card records; "distilled" when it cannot be read (the model's
    own loading then says what is wrong)."""
    from birdsearch.errors import CheckpointError
    from birdsearch.model.encoder import read_card
    from birdsearch.model.species_head import default_mode

    try:
        return default_mode(read_card(checkpoint))
    except CheckpointError:
        return "distilled"


def refused_as_invalid(read: Callable[[str], Any], value: str) -> Any:
    """``read(value)``, its ConfigError turned into the ValueError pydantic reports as an invalid setting."""
    try:
        return read(value)
    except ConfigError as e:
        raise ValueError(str(e)) from e


class EngineSettings(BaseSettings):
    """``EngineConfig``'s fields read from the environment and a config file, checked at start."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", validate_default=True)

    # Models and data (EngineConfig says what each field means)
    index_root: Path = Field(default_factory=default_index_root)
    checkpoint: str = EngineConfig.checkpoint
    student: str = EngineConfig.student
    cascade: Literal["auto", "always", "never"] = "auto"
    device: str = EngineConfig.device
    calibration: str = EngineConfig.calibration
    species_list: str = EngineConfig.species_list

    # Limits on what a request may ask for
    max_duration_s: float = Field(EngineConfig.max_duration_s, gt=0)
    max_decoded_bytes: int = Field(EngineConfig.max_decoded_bytes, ge=2**20)
    audio_memory_bytes: int = Field(EngineConfig.audio_memory_bytes, ge=2**20)
    max_windows: int = Field(EngineConfig.max_windows, ge=1)
    min_hop_s: float = Field(EngineConfig.min_hop_s, gt=0)
    max_k: int = Field(EngineConfig.max_k, ge=1)
    max_species_k: int = Field(EngineConfig.max_species_k, ge=1)
    candidates_per_window: int = Field(EngineConfig.candidates_per_window, ge=1)
    species_rule: str = EngineConfig.species_rule

    # Micro-batching and concurrency
    max_batch: int = Field(EngineConfig.max_batch, ge=0)
    max_wait_ms: float = Field(EngineConfig.max_wait_ms, ge=0)
    decode_threads: int = Field(EngineConfig.decode_threads, ge=0)
    compute_threads: int = Field(EngineConfig.compute_threads, ge=0)
    compile: bool = EngineConfig.compile

    # Index hot reload
    reload_interval_s: float = Field(EngineConfig.reload_interval_s, ge=0)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = os.environ.get(CONFIG_ENV)
        if config_file:
            sources.append(config_file_source(settings_cls, Path(config_file)))
        return tuple(sources)

    @field_validator("species_rule")
    @classmethod
    def check_species_rule(cls, value: str) -> str:
        """'best', 'mean-top:M', 'kth:Q' or 'lme:T', refused at start with the list of rules."""
        return str(refused_as_invalid(parse_rule, value))

    @field_validator("calibration")
    @classmethod
    def check_calibration(cls, value: str) -> str:
        """A given calibration file must read (refused at start, naming what is wrong)."""
        if value:
            from birdsearch.model.calibration import load_calibration

            refused_as_invalid(load_calibration, value)
        return value

    @field_validator("species_list")
    @classmethod
    def check_species_list(cls, value: str) -> str:
        """A given species list must read and parse (names are resolved against each index version)."""
        if value:
            from birdsearch.engine.species_list import read_species_list

            refused_as_invalid(read_species_list, value)
        return value

    @field_validator("checkpoint")
    @classmethod
    def checkpoint_exists(cls, value: str) -> str:
        if value and not Path(value).expanduser().is_dir():
            raise ValueError(
                f"checkpoint directory {value!r} does not exist; "
                "set BIRDSEARCH_CHECKPOINT to a distilled encoder directory, or leave it empty for the cascade"
            )
        return str(Path(value).expanduser()) if value else ""

    @field_validator("device")
    @classmethod
    def device_name(cls, value: str) -> str:
        if value != "auto" and value != "cpu" and not value.startswith("cuda"):
            raise ValueError(f"device {value!r} is not one of auto, cpu, cuda, cuda:N")
        return value

    @model_validator(mode="after")
    def some_model(self) -> EngineSettings:
        if not self.checkpoint and self.cascade == "never":
            raise ValueError(
                "no model to answer with: BIRDSEARCH_CHECKPOINT is empty and BIRDSEARCH_CASCADE=never"
            )
        return self

    @model_validator(mode="after")
    def budget_fits_one_upload(self) -> EngineSettings:
        if self.audio_memory_bytes < self.max_decoded_bytes:
            raise ValueError(
                f"audio_memory_bytes ({self.audio_memory_bytes}) must be at least max_decoded_bytes "
                f"({self.max_decoded_bytes}), or no upload of the maximum size could ever be decoded"
            )
        return self

    def engine_config(self, **changes: Any) -> EngineConfig:
        """The engine's config of these settings (``changes`` set what no setting names, e.g. ``cores``)."""
        names = {f.name for f in fields(EngineConfig)} & set(type(self).model_fields)
        return EngineConfig(**{name: getattr(self, name) for name in names}, **changes)

    @property
    def cascade_enabled(self) -> bool:
        return self.engine_config().cascade_enabled

    @property
    def default_mode(self) -> Mode:
        return self.engine_config().default_mode

    @property
    def batch_size(self) -> int:
        return self.engine_config().batch_size


def config_file_source(settings_cls: type[BaseSettings], path: Path) -> PydanticBaseSettingsSource:
    """The settings source for a TOML, JSON or YAML config file, chosen by its suffix."""
    if not path.is_file():
        raise ConfigError(
            f"{CONFIG_ENV}={path}: no such file; unset it or point it at a .toml, .json or .yaml"
        )
    suffix = path.suffix.lower()
    if suffix == ".toml":
        return TomlConfigSettingsSource(settings_cls, toml_file=path)
    if suffix == ".json":
        return JsonConfigSettingsSource(settings_cls, json_file=path)
    if suffix in (".yaml", ".yml"):
        return YamlConfigSettingsSource(settings_cls, yaml_file=path)
    raise ConfigError(f"{CONFIG_ENV}={path}: unknown config format {suffix!r}; use .toml, .json or .yaml")


def read_settings(settings_cls: type[EngineSettings], **overrides: Any) -> Any:
    """``settings_cls`` from the environment and config file, with ``overrides``; bad values raise ConfigError."""
    from pydantic import ValidationError

    try:
        return settings_cls(**overrides)
    except ValidationError as e:
        problems = "; ".join(
            f"{ENV_PREFIX}{'.'.join(str(p) for p in err['loc']).upper()}: {err['msg']}"
            if err["loc"]
            else err["msg"]
            for err in e.errors()
        )
        raise ConfigError(f"invalid service settings: {problems}") from e
