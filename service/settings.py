"""The query service's settings: the engine's (``birdsearch.engine.config.EngineSettings``) and the
settings only a server has, in one pydantic-settings class read from the environment and a config file.

Every field is ``BIRDSEARCH_<NAME>`` in the environment (``BIRDSEARCH_INDEX_ROOT``,
``BIRDSEARCH_MAX_BATCH``, ...). ``BIRDSEARCH_CONFIG`` may name a TOML, JSON or YAML file whose keys
are the field names without the prefix (``index_root = "/data/index"``); the environment wins over
the file, and explicit constructor arguments (tests, the CLI) win over both.

The app reads settings through ``get_settings()`` (cached) as a FastAPI dependency, so tests
override it with ``app.dependency_overrides`` or build the app with ``create_app(Settings(...))``.
Validators refuse bad values when the server starts, not at the first request.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import NoDecode

from birdsearch.cpus import available_cpus
from birdsearch.engine.config import EngineConfig, EngineSettings, read_settings


class Settings(EngineSettings):
    """Everything the query service can be told; docs/service.md has a table."""

    # Request bodies and admin
    max_upload_bytes: int = Field(20 * 2**20, ge=1024)  # request body; refused with 413 while it streams
    admin_key: SecretStr | None = None  # bearer key of the /admin routes; unset: admin routes refuse

    # HTTP
    host: str = "127.0.0.1"  # `birdsearch serve` binds here
    port: int = Field(8000, ge=1, le=65535)
    workers: int = Field(1, ge=1)  # uvicorn worker processes (each loads the model and batches on its own)
    cors_origins: Annotated[list[str], NoDecode] = []  # origins allowed by CORS: "a,b" or a JSON list
    thumbnail_size: int = Field(256, ge=32, le=1024)  # default thumbnail edge, pixels
    thumbnail_cache_bytes: int = Field(64 * 2**20, ge=0)  # thumbnails kept in memory

    # A Markdown file on how the served models were evaluated (such as the tables of `birdsearch
    # evaluate`): GET /evaluation returns it and the web page shows it. It may appear after the
    # server starts (the demo writes it when its background evaluation is done).
    evaluation_report: Path | None = None

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

    @property
    def cores_per_worker(self) -> int:
        """CPU cores each worker process may keep busy (decoding threads, torch's CPU threads): the
        cores the process may use (affinity and cgroup quota, ``birdsearch.cpus``) split between workers."""
        return max(1, available_cpus() // self.workers)

    def engine_config(self, **changes: Any) -> EngineConfig:
        """The engine's config of these settings, on this worker's share of the cores."""
        return super().engine_config(**{"cores": self.cores_per_worker, **changes})


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment and config file, with ``overrides``; bad values raise ConfigError."""
    return read_settings(Settings, **overrides)


@lru_cache
def get_settings() -> Settings:
    """The process's settings, read once; a FastAPI dependency that tests override."""
    return load_settings()
