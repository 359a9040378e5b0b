"""The text embeddings the student is distilled into: one per species, computed once and cached.

Three target spaces (``TargetSpec.kind``):

- ``teacher`` (the method): the teacher's zero-shot class embeddings, ``Teacher.embed_species`` in a
  name format and template set. The teacher is loaded only when the cache misses.
- ``student-text`` (the ablation without visual grounding): the student's OWN caption embeddings,
  "Sound of a {common name}". Fine-tuning into them is generic audio-text fine-tuning with the same
  data, objective and budget; its audio reaches the image index only through a text-space mapping.
- ``rotated-teacher`` (a control): the teacher's class embeddings under a fixed random rotation.
  Every distance between species is kept (the task is exactly as easy), but the space is no
  longer the one the images live in.

The cache key holds everything that changes the vectors: the kind, the model's spec and weights
checksum, the name format, the templates, the rotation seed and the species list.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from birdsearch.errors import ConfigError
from birdsearch.model import hub
from birdsearch.model.names import Taxon, templates_for
from birdsearch.paths import cache_root

log = logging.getLogger(__name__)

TARGET_KINDS = ("teacher", "student-text", "rotated-teacher")
STUDENT_CAPTION = ("com", "Sound of a {}")  # the student's own name format and prompt


@dataclass(frozen=True)
class TargetSpec:
    """Which text space to distil into."""

    kind: str = "teacher"  # one of TARGET_KINDS
    name_format: str = "taxon_com"  # teacher name format (names.NAME_FORMATS); BioCLIP's richest
    templates: str | tuple[str, ...] = "openai"  # teacher template set name, or explicit templates
    rotation_seed: int = 0  # for rotated-teacher

    def __post_init__(self) -> None:
        if self.kind not in TARGET_KINDS:
            raise ConfigError(f"unknown target {self.kind!r}: use one of {', '.join(TARGET_KINDS)}")
        templates_for(self.templates)  # validates


@dataclass
class Targets:
    """(S, dim) unit vectors, one per species, and the facts that identify their space."""

    embeddings: torch.Tensor
    space: dict[str, Any]  # {"id", "dim", "weights_sha256"}: goes into the encoder card as "teacher"
    key: str  # cache key


def weights_checksum(spec: str, kind: str) -> tuple[str, str]:
    """(normalised spec, weights sha256) of a model, without loading it."""
    resolved = hub.resolve(spec, kind)  # type: ignore[arg-type]
    return resolved.spec, hub.weights_sha256(resolved.weights_file)


def cache_key(spec: TargetSpec, model_spec: str, weights_sha: str, taxa: Sequence[Taxon]) -> str:
    facts = {
        "kind": spec.kind,
        "model": model_spec,
        "weights_sha256": weights_sha,
        "name_format": spec.name_format if spec.kind != "student-text" else STUDENT_CAPTION[0],
        "templates": list(templates_for(spec.templates))
        if spec.kind != "student-text"
        else [STUDENT_CAPTION[1]],
        "rotation_seed": spec.rotation_seed if spec.kind == "rotated-teacher" else None,
        "species": [(t.lineage, t.common) for t in taxa],
    }
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:32]


def random_rotation(dim: int, seed: int) -> torch.Tensor:
    """A (dim, dim) orthogonal matrix drawn uniformly (QR of a Gaussian, signs fixed)."""
    generator = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(dim, dim, generator=generator, dtype=torch.float64))
    return (q * torch.sign(torch.diagonal(r))).float()


def species_targets(
    spec: TargetSpec,
    taxa: Sequence[Taxon],
    teacher: str,
    student: str,
    device: str | torch.device = "auto",
    cache_dir: str | Path | None = None,
) -> Targets:
    """The target embeddings of ``taxa``, from the cache or computed (and cached) now."""
    kind = "student" if spec.kind == "student-text" else "teacher"
    model_spec, sha = weights_checksum(student if kind == "student" else teacher, kind)
    key = cache_key(spec, model_spec, sha, taxa)
    path = Path(cache_dir or cache_root() / "text-targets") / f"{key}.safetensors"
    if path.is_file():
        loaded = load_cached(path)
        if loaded is not None:
            log.info("target text embeddings from cache %s", path)
            return Targets(loaded[0], loaded[1], key)
    embeddings, space = compute(spec, taxa, model_spec, sha, device)
    store(path, embeddings, space)
    return Targets(embeddings, space, key)


def compute(
    spec: TargetSpec, taxa: Sequence[Taxon], model_spec: str, sha: str, device: str | torch.device
) -> tuple[torch.Tensor, dict[str, Any]]:
    if spec.kind == "student-text":
        from birdsearch.model.student import Student

        student = Student.load(model_spec, device)
        embeddings = student.embed_species(taxa, *STUDENT_CAPTION)
        return embeddings, {"id": f"student-text:{model_spec}", "dim": student.dim, "weights_sha256": sha}
    from birdsearch.model.teacher import Teacher

    log.info("computing teacher text embeddings for %d species (%s)", len(taxa), spec.name_format)
    teacher = Teacher.load(model_spec, device)
    embeddings = teacher.embed_species(taxa, spec.name_format, spec.templates)
    space = {"id": model_spec, "dim": teacher.dim, "weights_sha256": sha}
    if spec.kind == "rotated-teacher":
        embeddings = embeddings @ random_rotation(teacher.dim, spec.rotation_seed)
        space["id"] = f"rotated-teacher:{spec.rotation_seed}:{model_spec}"
    del teacher
    return embeddings.float().contiguous(), space


def store(path: Path, embeddings: torch.Tensor, space: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{id(embeddings)}")
    save_file({"embeddings": embeddings.contiguous()}, tmp, metadata={"space": json.dumps(space)})
    tmp.replace(path)


def load_cached(path: Path) -> tuple[torch.Tensor, dict[str, Any]] | None:
    """The cached vectors and their space; None (recompute) when the file is damaged."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            space = json.loads(f.metadata()["space"])
            return f.get_tensor("embeddings"), space
    except Exception as e:  # a damaged cache entry is rebuilt, never fatal
        log.warning("ignoring damaged cache entry %s: %s", path, e)
        return None
