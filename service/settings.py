"""The service's settings: one pydantic-settings class, read from the environment and a config file.

Every field is ``BIRDSEARCH_<NAME>`` in the environment (``BIRDSEARCH_INDEX_ROOT``,
``BIRDSEARCH_MAX_BATCH``, ...). ``BIRDSEARCH_CONFIG`` may name a TOML, JSON or YAML file whose keys
are the field names without the prefix (``index_root = "/data/index"``); the environment wins over
the file, and explicit constructor arguments (tests, the CLI) win over both.

The app reads settings through ``get_settings()`` (cached) as a FastAPI dependency, so tests
override it with ``app.dependency_overrides`` or build the app with ``create_app(Settings(...))``.
Validators refuse bad values when the server starts, not at the first request.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    JsonConfigSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
    YamlConfigSettingsSource,
)

from birdsearch.cpus import available_cpus
from birdsearch.errors import ConfigError
from birdsearch.model.hub import DEFAULT_STUDENT
from birdsearch.paths import cache_root
from birdsearch.service.ranking import DEFAULT_SPECIES_RULE, parse_rule

CONFIG_ENV = "BIRDSEARCH_CONFIG"
Mode = Literal["distilled", "cascade"]


def default_index_root() -> Path:
    """Where ``birdsearch index`` publishes by default: ``<cache root>/index``."""
    return cache_root() / "index"


def refused_as_invalid(read: Callable[[str], Any], value: str) -> Any:
    """``read(value)``, its ConfigError turned into the ValueError pydantic reports as an invalid setting."""
    try:
        return read(value)
    except ConfigError as e:
        raise ValueError(str(e)) from e


class Settings(BaseSettings):
    """Everything the query service can be told; see the README's "service" section for a table."""

    model_config = SettingsConfigDict(env_prefix="BIRDSEARCH_", extra="ignore", validate_default=True)

    # Models and data
    index_root: Path = Field(default_factory=default_index_root)  # holds the published index versions
    checkpoint: str = ""  # distilled encoder directory; empty: the zero-shot cascade answers
    student: str = DEFAULT_STUDENT  # the student spec the cascade classifies with
    cascade: Literal["auto", "always", "never"] = "auto"  # load the cascade: auto = only without checkpoint
    device: str = "auto"  # auto, cpu, cuda or cuda:N
    # calibration file (birdsearch.model.calibration) with an entry per mode; empty: <checkpoint>/calibration.json
    # for the distilled encoder and <index_root>/calibration.json for the cascade, where they exist
    calibration: str = ""
    # species list file (plain names or BirdNET lines): only its species are searched; a request's own list wins
    species_list: str = ""

    # Limits on what a request may ask for
    max_upload_bytes: int = Field(20 * 2**20, ge=1024)  # request body; refused with 413 while it streams
    max_duration_s: float = Field(600.0, gt=0)  # longer recordings: 413 (read from the header, not decoded)
    max_decoded_bytes: int = Field(256 * 2**20, ge=2**20)  # decoding one upload (all channels + resampled)
    audio_memory_bytes: int = Field(1024 * 2**20, ge=2**20)  # decoded audio of all requests in flight
    max_windows: int = Field(256, ge=1)  # windows of one recording (duration / hop); 422 beyond
    min_hop_s: float = Field(1.0, gt=0)  # smallest hop a request may ask for
    max_k: int = Field(100, ge=1)  # most images one request may ask for
    max_species_k: int = Field(50, ge=1)  # most species one request may ask for
    candidates_per_window: int = Field(200, ge=1)  # images searched per window to rank species
    # how a species' photos among a window's candidates pool into its score (service/ranking.py)
    species_rule: str = DEFAULT_SPECIES_RULE

    # Micro-batching and concurrency
    max_batch: int = Field(
        0, ge=0
    )  # windows in one forward pass; 0: 64 on a GPU, 4 on a CPU (see batch_size)
    max_wait_ms: float = Field(5.0, ge=0)  # how long the first window of a batch waits for company
    decode_threads: int = Field(0, ge=0)  # threads decoding uploads per worker (0: CPU cores / workers)
    compute_threads: int = Field(
        0, ge=0
    )  # torch threads per model call; 0: the worker's cores that other queries did not keep busy lately
    compile: bool = False  # torch.compile the audio tower at start (a GPU lever; start takes longer)

    # Index hot reload and admin
    reload_interval_s: float = Field(5.0, ge=0)  # how often to look for a new index version; 0: never
    admin_key: SecretStr | None = None  # bearer key of the /admin routes; unset: admin routes refuse

    # HTTP
    host: str = "127.0.0.1"  # `birdsearch serve` binds here
    port: int = Field(8000, ge=1, le=65535)
    workers: int = Field(1, ge=1)  # uvicorn worker processes (each loads the model and batches on its own)
    cors_origins: Annotated[list[str], NoDecode] = []  # origins allowed by CORS: "a,b" or a JSON list
    thumbnail_size: int = Field(256, ge=32, le=1024)  # default thumbnail edge, pixels
    thumbnail_cache_bytes: int = Field(64 * 2**20, ge=0)  # thumbnails kept in memory

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
            from birdsearch.service.species_list import read_species_list

            refused_as_invalid(read_species_list, value)
        return value

    @field_validator("cors_origins", mode="before")
    @classmethod
    def split_origins(cls, value: Any) -> Any:
        """Accept "https://a.org,https://b.org" as well as a JSON list."""
        if isinstance(value, str):
            value = value.strip()
            if value.startswith("["):
                import json

                return json.loads(value)
            return [origin.strip() for origin in value.split(",") if origin.strip()]
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
    def some_model(self) -> Settings:
        if not self.checkpoint and self.cascade == "never":
            raise ValueError(
                "no model to answer with: BIRDSEARCH_CHECKPOINT is empty and BIRDSEARCH_CASCADE=never"
            )
        return self

    @model_validator(mode="after")
    def budget_fits_one_upload(self) -> Settings:
        if self.audio_memory_bytes < self.max_decoded_bytes:
            raise ValueError(
                f"audio_memory_bytes ({self.audio_memory_bytes}) must be at least max_decoded_bytes "
                f"({self.max_decoded_bytes}), or no upload of the maximum size could ever be decoded"
            )
        return self

    @property
    def cascade_enabled(self) -> bool:
        """Whether the zero-shot cascade (student + index species) is loaded."""
        return self.cascade == "always" or (self.cascade == "auto" and not self.checkpoint)

    @property
    def default_mode(self) -> Mode:
        """What mode=auto means here: the distilled encoder when one is configured."""
        return "distilled" if self.checkpoint else "cascade"

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
    def cores_per_worker(self) -> int:
        """CPU cores each worker process may keep busy (decoding threads, torch's CPU threads): the
        cores the process may use (affinity and cgroup quota, ``birdsearch.cpus``) split between workers."""
        return max(1, available_cpus() // self.workers)

    @property
    def decode_thread_count(self) -> int:
        return self.decode_threads or self.cores_per_worker


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


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment and config file, with ``overrides``; bad values raise ConfigError."""
    try:
        return Settings(**overrides)
    except ValidationError as e:
        problems = "; ".join(
            f"BIRDSEARCH_{'.'.join(str(p) for p in err['loc']).upper()}: {err['msg']}"
            if err["loc"]
            else err["msg"]
            for err in e.errors()
        )
        raise ConfigError(f"invalid service settings: {problems}") from e


@lru_cache
def get_settings() -> Settings:
    """The process's settings, read once; a FastAPI dependency that tests override."""
    return load_settings()
