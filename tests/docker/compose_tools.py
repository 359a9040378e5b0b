"""Reading the Compose files as Compose does: the `!reset` tag, override merging, `${VAR:-default}`."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml


class ResetLoader(yaml.SafeLoader):
    """Reads Compose v2's `!reset` tag, which Debian's docker-compose (v1) does not know."""


ResetLoader.add_constructor("!reset", lambda loader, node: "__reset__")


def merge(base: Any, override: Any) -> Any:
    """Compose's override semantics for mappings, plus `!reset` removing a key."""
    if not isinstance(base, dict) or not isinstance(override, dict):
        return override
    merged = dict(base)
    for key, value in override.items():
        if value == "__reset__":
            merged.pop(key, None)
        else:
            merged[key] = merge(base.get(key), value)
    return merged


def load(*files: Path) -> dict[str, Any]:
    """The files merged in order, as `docker compose -f a -f b` reads them (before interpolation)."""
    merged: dict[str, Any] = {}
    for path in files:
        merged = merge(merged, yaml.load(path.read_text(), Loader=ResetLoader))
    return merged


VARIABLE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?-)(?P<default>[^}]*))?\}")


def substitute(match: re.Match, env: dict[str, str]) -> str:
    """`${NAME:-default}`: the default when unset or empty; `${NAME-default}`: only when unset."""
    value = env.get(match["name"])
    if match["op"] == "-":
        return match["default"] if value is None else value
    return value or (match["default"] or "")


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's `${NAME}`, `${NAME:-default}` and `${NAME-default}`, through lists and maps."""
    if isinstance(value, str):
        return VARIABLE.sub(lambda m: substitute(m, env), value)
    if isinstance(value, list):
        return [interpolate(item, env) for item in value]
    if isinstance(value, dict):
        return {key: interpolate(item, env) for key, item in value.items()}
    return value


def dotenv(path: Path) -> dict[str, str]:
    """The `.env` file Compose reads from the project directory (KEY=VALUE lines, # comments)."""
    pairs = (
        line.split("=", 1)
        for line in path.read_text().splitlines()
        if "=" in line and not line.startswith("#")
    )
    return {key.strip(): value.strip() for key, value in pairs}


def image_env(dockerfile: Path, stage: str = "runtime") -> dict[str, str]:
    """The ENV the Dockerfile's ``stage`` sets (what every container of the image starts with)."""
    import shlex

    env: dict[str, str] = {}
    inside = False
    for line in dockerfile.read_text().replace("\\\n", " ").splitlines():
        if line.startswith("FROM "):
            inside = line.split()[-1] == stage
        elif inside and line.startswith("ENV "):
            env.update(token.split("=", 1) for token in shlex.split(line[len("ENV ") :]))
    return env
