"""Model specs to directories on disk: one resolver for the teacher and the student.

A spec names where a model's files are:

- ``hf-hub:org/repo`` (or a bare ``org/repo``): the Hugging Face Hub, through its local cache;
- ``local-dir:/path`` (or a path to an existing directory): files already on disk;
- ``NAME`` or ``NAME:VARIANT``: a source that code above the core registered with
  ``register_spec_source`` (the toy world registers ``toy``; see ``birdsearch.model.registry``).

Every spec resolves to a directory that holds the publisher's on-disk format, and the loaders read
only that directory. So hub weights, a copied cache and a local directory all take the same code
path, and a missing file is caught here, with one clear error, instead of deep inside a library
(open_clip, for one, logs a warning and carries on with *random* weights when a hub download fails).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from birdsearch.errors import ConfigError, ModelUnavailableError
from birdsearch.model.registry import NAME, Registry
from birdsearch.paths import cache_root

log = logging.getLogger(__name__)

Kind = Literal["teacher", "student"]

# The models the project is about; every default in the code and the CLI names these two.
DEFAULT_TEACHER = "hf-hub:imageomics/bioclip-2"
DEFAULT_STUDENT = "davidrrobinson/BioLingual"

# Files each publisher's format needs, and the weight files in order of preference.
CONFIG_FILE = {"teacher": "open_clip_config.json", "student": "config.json"}
WEIGHT_FILES = {
    "teacher": (
        "open_clip_model.safetensors",
        "open_clip_pytorch_model.safetensors",
        "open_clip_pytorch_model.bin",
    ),
    "student": ("model.safetensors", "pytorch_model.bin"),
}
# Small files fetched alongside (configs, tokenizer, feature extractor); weights are chosen separately.
SIDE_FILE_PATTERNS = ["*.json", "*.txt", "*.model"]


@dataclass(frozen=True)
class SpecSource:
    """A registered spec source: ``resolve(kind, variant)`` returns a local model directory."""

    resolve: Callable[[Kind, str | None], Path]
    hint: str = ""  # for provisioning hints; "{flag}" becomes --teacher or --student


SPEC_SOURCES: Registry[SpecSource] = Registry("model spec source", builtin=("hf-hub", "local-dir"))


def register_spec_source(name: str, resolve: Callable[[Kind, str | None], Path], hint: str = "") -> None:
    """Make ``NAME`` and ``NAME:VARIANT`` specs resolve through ``resolve(kind, variant)``.

    ``resolve`` returns a directory in the publisher's format (config and weights); it may build it.
    """
    SPEC_SOURCES.register(name, SpecSource(resolve, hint))


@dataclass(frozen=True)
class ResolvedModel:
    """A model spec and the directory its files are in."""

    spec: str  # normalised: "hf-hub:org/repo", "local-dir:/abs/path", or a registered "NAME[:VARIANT]"
    kind: Kind
    source: str  # "hf-hub", "local-dir" or a registered source's name
    path: Path  # directory holding the config and weights
    repo_id: str | None = None  # for hub specs

    @property
    def weights_file(self) -> Path:
        return find_weights(self.path, self.kind)


def parse_spec(spec: str) -> tuple[str, str]:
    """Split a spec into (source, identifier); raises ConfigError on an empty or malformed spec."""
    spec = (spec or "").strip()
    if not spec:
        raise ConfigError(
            f"empty model spec: use 'hf-hub:org/repo' or 'local-dir:/path'; {SPEC_SOURCES.known()}"
        )
    if spec.startswith("hf-hub:"):
        repo = spec[len("hf-hub:") :].strip("/")
        if repo.count("/") != 1:
            raise ConfigError(f"bad hub spec {spec!r}: expected 'hf-hub:org/repo'")
        return "hf-hub", repo
    if spec.startswith("local-dir:"):
        path = spec[len("local-dir:") :]
        if not path:
            raise ConfigError("empty path after 'local-dir:'")
        return "local-dir", str(Path(path).expanduser().resolve())
    name, colon, variant = spec.partition(":")
    if NAME.fullmatch(name) and SPEC_SOURCES.find(name) is not None:
        return name, variant
    if Path(spec).expanduser().is_dir():
        return "local-dir", str(Path(spec).expanduser().resolve())
    if colon and NAME.fullmatch(name):
        raise ConfigError(f"unknown model spec source {name!r} in {spec!r}: {SPEC_SOURCES.known()}")
    if spec.count("/") == 1 and not spec.startswith((".", "/", "~")):
        return "hf-hub", spec
    raise ConfigError(
        f"cannot read model spec {spec!r}: use 'hf-hub:org/repo' or 'local-dir:/path' (an existing "
        f"directory); {SPEC_SOURCES.known()}"
    )


def find_weights(directory: Path, kind: Kind) -> Path:
    """The preferred weights file in ``directory``; raises ModelUnavailableError if there is none."""
    for name in WEIGHT_FILES[kind]:
        if (directory / name).is_file():
            return directory / name
    raise ModelUnavailableError(
        f"no {kind} weights in {directory}: expected one of {', '.join(WEIGHT_FILES[kind])}. "
        + provisioning_hint(kind)
    )


def provisioning_hint(kind: Kind) -> str:
    flag = "--teacher" if kind == "teacher" else "--student"
    hints = [source.hint for _, source in SPEC_SOURCES.registered()]
    return (
        f"To provision it: on a connected machine run 'birdsearch models download {flag} SPEC' and copy the "
        f"Hugging Face cache (HF_HOME, default ~/.cache/huggingface) to this one, or save the model to a "
        f"directory and pass {flag} local-dir:/that/dir"
        + "".join(f"; {hint.format(flag=flag)}" for hint in hints if hint)
        + "."
    )


def offline() -> bool:
    """True when the hub must not be contacted (read at call time, not at import)."""
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")


def resolve(spec: str, kind: Kind) -> ResolvedModel:
    """Resolve a spec to a directory holding the model's config and weights, without any download.

    Hub specs are looked up in the local Hugging Face cache only; use ``download`` to fetch them.
    """
    source, ident = parse_spec(spec)
    if source == "local-dir":
        path = Path(ident)
        check_model_dir(path, kind, spec)
        return ResolvedModel(f"local-dir:{path}", kind, "local-dir", path)
    if source == "hf-hub":
        path = cached_snapshot(ident, kind)
        return ResolvedModel(f"hf-hub:{ident}", kind, "hf-hub", path, repo_id=ident)
    path = Path(SPEC_SOURCES.get(source).resolve(kind, ident or None))  # may build the model
    check_model_dir(path, kind, spec)
    return ResolvedModel(spec.strip(), kind, source, path)


def resolve_or_download(spec: str, kind: Kind) -> ResolvedModel:
    """Like ``resolve``, but fetch a hub model that is not cached, unless HF_HUB_OFFLINE is set."""
    try:
        return resolve(spec, kind)
    except ModelUnavailableError:
        source, _ = parse_spec(spec)
        if source != "hf-hub" or offline():
            raise
    download(spec, kind)
    return resolve(spec, kind)


def check_model_dir(path: Path, kind: Kind, spec: str) -> None:
    if not path.is_dir():
        raise ModelUnavailableError(
            f"{kind} {spec!r}: directory {path} does not exist. " + provisioning_hint(kind)
        )
    config = path / CONFIG_FILE[kind]
    if not config.is_file():
        raise ModelUnavailableError(
            f"{kind} {spec!r}: {config} is missing; a {kind} directory holds "
            f"{CONFIG_FILE[kind]} and the weights. " + provisioning_hint(kind)
        )
    find_weights(path, kind)


def cached_snapshot(repo_id: str, kind: Kind) -> Path:
    """The local cache's snapshot directory for ``repo_id``, checked to hold config and weights."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        path = Path(snapshot_download(repo_id, local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError, OSError) as e:
        raise ModelUnavailableError(
            f"{kind} 'hf-hub:{repo_id}' is not in the Hugging Face cache at {constants.HF_HUB_CACHE}"
            + (" and HF_HUB_OFFLINE is set" if offline() else "")
            + ". "
            + provisioning_hint(kind)
        ) from e
    check_model_dir(path, kind, f"hf-hub:{repo_id}")
    return path


def download(spec: str, kind: Kind) -> Path:
    """Fetch a hub model's config, tokenizer and one set of weights into the Hugging Face cache."""
    source, ident = parse_spec(spec)
    if source != "hf-hub":
        return resolve(spec, kind).path
    if offline():
        raise ModelUnavailableError(f"cannot download {kind} 'hf-hub:{ident}': HF_HUB_OFFLINE is set")
    from huggingface_hub import HfApi, snapshot_download

    try:
        files = set(HfApi().list_repo_files(ident))
        weights = next((name for name in WEIGHT_FILES[kind] if name in files), None)
        if weights is None:
            raise ModelUnavailableError(
                f"hub repo {ident} has no {kind} weights (looked for {', '.join(WEIGHT_FILES[kind])})"
            )
        log.info("downloading %s %s (%s)", kind, ident, weights)
        return Path(snapshot_download(ident, allow_patterns=[*SIDE_FILE_PATTERNS, weights]))
    except ModelUnavailableError:
        raise
    except Exception as e:  # network, auth, missing repo: all mean "not available from here"
        raise ModelUnavailableError(f"could not download {kind} 'hf-hub:{ident}': {e}") from e


def weights_sha256(path: Path) -> str:
    """SHA-256 of a weights file, cached by (path, size, mtime) so that 1.7 GB is hashed once."""
    stat = path.stat()
    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    cache_file = cache_root() / "checksums.json"
    try:
        cache = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        cache = {}
    if key in cache:
        return cache[key]
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    cache[key] = digest.hexdigest()
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(cache, indent=1))
        tmp.replace(cache_file)
    except OSError as e:  # a read-only cache only costs a re-hash next time
        log.debug("could not cache checksum: %s", e)
    return cache[key]
