"""The models behind a query: windows in, vectors out, one batch at a time on the batcher's thread.

A model's outputs for B windows are (B, dim + tower_dim) rows: the window's embedding (``dim``:
what the search or the cascade's species head takes) followed by its audio tower's pooled features
(what the novelty gate measures in, ``birdsearch.model.novelty``); ``split_outputs`` parts them.

- ``DistilledEmbedder``: the distilled encoder, straight into the teacher's space.
- ``StudentEmbedder``: the student's audio tower, the first half of the zero-shot cascade. The second
  half (classify against the index's species, mix the teacher's species embeddings) depends on the
  index version, so it runs per request in ``ModeHead``: a batch can then mix requests that
  started on different index versions during a hot reload.
- ``ClassifierEmbedder`` / ``HybridEmbedder``: the modes ``classifier`` and ``hybrid`` of an encoder
  that carries a species classifier (``birdsearch.model.species_head``): the student's audio tower
  (and, for hybrid, the distilled encoder's embedding beside it); their species step, too, runs per
  index version in ``ModeHead``. Both run the distilled encoder for its tower features, so that every
  mode of an encoder measures novelty in one space, against the one reference ``distill`` wrote
  beside it.

Both time their stages into ``birdsearch_stage_seconds`` (features, encode).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from birdsearch.engine.metrics import stage_timer
from birdsearch.engine.redact import model_name
from birdsearch.errors import CheckpointError
from birdsearch.model.mel import FrontEndConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelFacts:
    """What a query response and /version say about a model."""

    mode: str  # "distilled", "cascade", "classifier" or "hybrid"
    id: str  # the spec the model was given, without server paths (``redact.model_name``)
    dim: int  # the embedding's dimension (the batch function adds the tower's features after it)
    teacher: dict[str, Any] = field(default_factory=dict)  # the teacher space it targets (distilled only)
    details: dict[str, Any] = field(default_factory=dict)  # card facts: base student, training hash, metrics


class PinnedStaging:
    """A reusable page-locked host buffer that batches are stacked into before going to a GPU.

    Stacking straight into pinned memory makes the host-to-device copy one asynchronous DMA instead
    of a copy through a bounce buffer: at thousands of 10 s windows per second (1.9 MB each) the
    copies, not the model, would otherwise set the pace.
    """

    def __init__(self) -> None:
        self._buffer: torch.Tensor | None = None

    def __call__(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        numel = int(np.prod(shape))
        if self._buffer is None or self._buffer.numel() < numel:
            self._buffer = torch.empty(numel, dtype=torch.float32, pin_memory=True)
        return self._buffer[:numel].numpy().view(dtype).reshape(shape)


def split_outputs(outputs: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """A model's (B, dim + tower_dim) outputs as (embeddings (B, dim), tower features (B, tower_dim))."""
    return outputs[:, :dim], outputs[:, dim:]


def staging_for(device: torch.device) -> PinnedStaging | None:
    """Pinned staging on CUDA; plain arrays elsewhere."""
    return PinnedStaging() if device.type == "cuda" else None


class DistilledEmbedder:
    """Windows (B, T) at 48 kHz to (B, teacher dim) unit vectors with a distilled encoder."""

    mode = "distilled"

    def __init__(self, encoder: Any):
        self.encoder = encoder  # birdsearch.model.encoder.LoadedEncoder
        card = encoder.card
        self.front_end: FrontEndConfig = encoder.front_end_config
        self.staging = staging_for(encoder.device)
        teacher = dict(card.teacher)
        if "id" in teacher:
            teacher["id"] = model_name(str(teacher["id"]))
        self.facts = ModelFacts(
            "distilled",
            model_name(str(encoder.path)),
            int(encoder.dim),
            teacher=teacher,
            details={
                "base_student": model_name(str(card.base_student)),
                "text_format": card.text_format,
                "training_data_hash": card.training_data_hash,
                "created": card.created,
            },
        )

    @classmethod
    def load(cls, checkpoint: str, device: str) -> DistilledEmbedder:
        from birdsearch.model.encoder import load_encoder

        encoder = load_encoder(checkpoint, device)
        log.info("distilled encoder %s loaded on %s (dim %d)", checkpoint, encoder.device, encoder.dim)
        return cls(encoder)

    def compile(self) -> None:
        """Compile the encoder with torch.compile (shapes vary with the batch: dynamic)."""
        self.encoder.model = torch.compile(self.encoder.model, dynamic=True)

    @property
    def tower_dim(self) -> int:
        return int(self.encoder.tower_dim)

    def __call__(self, windows: np.ndarray) -> np.ndarray:
        with stage_timer("features"):
            features = self.encoder.mel(torch.from_numpy(windows))  # pinned on CUDA: an async copy
        with stage_timer("encode"):
            return torch.cat(self.encoder.embed_with_tower(features), dim=1).numpy()


class StudentEmbedder:
    """Windows (B, T) to (B, student dim) audio embeddings: the cascade's classifier input."""

    mode = "cascade"

    def __init__(self, student: Any, spec: str | None = None):
        """``spec``: what the settings named (``toy`` resolves to a directory; answers show ``toy``)."""
        self.student = student  # birdsearch.model.student.Student
        self.front_end: FrontEndConfig = student.front_end_config
        self.staging = staging_for(student.device)
        name = model_name(spec or str(student.id))
        self.facts = ModelFacts(
            "cascade", name, int(student.dim), details={"student": {**student.describe(), "id": name}}
        )

    @classmethod
    def load(cls, spec: str, device: str) -> StudentEmbedder:
        from birdsearch.model.student import Student

        return cls(Student.load(spec, device), spec)

    def compile(self) -> None:
        """Compile the student's audio tower with torch.compile (dynamic batch size)."""
        self.student.model.audio_model = torch.compile(self.student.model.audio_model, dynamic=True)

    @property
    def tower_dim(self) -> int:
        return int(self.student.tower_dim)

    def __call__(self, windows: np.ndarray) -> np.ndarray:
        with stage_timer("features"):
            features = self.student.mel(torch.from_numpy(windows))
        with stage_timer("encode"):
            return torch.cat(self.student.embed_with_tower(features), dim=1).numpy()


class ClassifierEmbedder:
    """Windows to the student's audio embeddings, classified per index version by the encoder's classifier."""

    mode = "classifier"

    def __init__(self, student: StudentEmbedder, distilled: DistilledEmbedder):
        from birdsearch.model.species_head import recorded_modes

        head = distilled.encoder.species_head
        if head is None:
            raise CheckpointError(
                f"{model_name(str(distilled.encoder.path))} has no species classifier: mode {self.mode!r} needs "
                "an encoder distilled by this version of 'birdsearch distill'"
            )
        check_student(head.student, student)
        self.student, self.distilled, self.head = student, distilled, head
        self.front_end: FrontEndConfig = student.front_end
        self.staging = student.staging
        details = {"student": student.facts.details["student"], "classifier": head.facts,
                   "modes": recorded_modes(distilled.encoder.card)}  # fmt: skip
        self.facts = ModelFacts(self.mode, distilled.facts.id, self.dim, teacher=distilled.facts.teacher,
                                details=details)  # fmt: skip

    @property
    def dim(self) -> int:
        return self.student.facts.dim

    @property
    def tower_dim(self) -> int:
        return self.distilled.tower_dim

    def compile(self) -> None:
        """Nothing of its own: the models it runs are compiled where they are loaded (``Models.load``)."""

    def __call__(self, windows: np.ndarray) -> np.ndarray:
        """The student's embeddings, then the distilled encoder's tower features (what the gate measures)."""
        student = self.student(windows)[:, : self.student.facts.dim]
        distilled = self.distilled(windows)
        return np.concatenate([student, distilled[:, self.distilled.facts.dim :]], axis=1)


class HybridEmbedder(ClassifierEmbedder):
    """Windows to the student's audio embeddings and the distilled encoder's, side by side (mode hybrid)."""

    mode = "hybrid"

    @property
    def dim(self) -> int:
        return self.student.facts.dim + self.distilled.facts.dim

    def __call__(self, windows: np.ndarray) -> np.ndarray:
        """The student's embeddings, the distilled encoder's, then its tower features."""
        student = self.student(windows)[:, : self.student.facts.dim]
        return np.concatenate([student, self.distilled(windows)], axis=1)


def check_student(recorded: dict[str, str], student: StudentEmbedder) -> None:
    """Refuse a student other than the one whose audio the encoder's classifier was fitted on."""
    from birdsearch.model.hub import weights_sha256

    ours = weights_sha256(student.student.resolved.weights_file)
    if recorded.get("weights_sha256") and recorded["weights_sha256"] != ours:
        raise CheckpointError(
            f"the encoder's species classifier was fitted on the audio of student {recorded.get('id')} "
            f"(weights {recorded['weights_sha256'][:12]}), this server's student {student.facts.id} has "
            f"weights {ours[:12]}: set BIRDSEARCH_STUDENT to the encoder's student"
        )


def mode_embedder(mode: str, distilled: DistilledEmbedder | None, student: StudentEmbedder | None) -> Any:
    """The embedder a mode runs its windows through, from the loaded models (which must be there)."""
    if mode == "distilled" and distilled is not None:
        return distilled
    if mode == "cascade" and student is not None:
        return student
    if mode in ("classifier", "hybrid") and distilled is not None and student is not None:
        return (ClassifierEmbedder if mode == "classifier" else HybridEmbedder)(student, distilled)
    raise ValueError(f"mode {mode!r} needs models that are not loaded")


def load_mode_embedder(mode: str, checkpoint: str, student: str, device: str) -> Any:
    """Load the models of one mode and return its embedder (bulk work: ``Detector``, ``analyze`` on Ray)."""
    distilled = DistilledEmbedder.load(checkpoint, device) if mode != "cascade" else None
    needs_student = mode != "distilled"
    return mode_embedder(mode, distilled, StudentEmbedder.load(student, device) if needs_student else None)


class ModeHead:
    """A mode's species step for one index version: model outputs to teacher-space query vectors.

    ``query`` is a ``CascadeQuery`` (the cascade: ``from_audio``) or a ``HybridQuery`` (classifier and
    hybrid: ``from_outputs``, the outputs split at ``split`` into the student's and the encoder's).
    """

    def __init__(self, query: Any, split: int | None = None):
        self.query = query
        self.split = split

    def __call__(self, outputs: np.ndarray) -> np.ndarray:
        from birdsearch.model.query import CascadeQuery

        audio = torch.from_numpy(np.ascontiguousarray(outputs))
        if isinstance(self.query, CascadeQuery):
            return self.query.from_audio(audio).numpy()
        if self.split is None:  # classifier: the student's embedding on both sides
            return self.query.from_outputs(audio, audio).numpy()
        return self.query.from_outputs(audio[:, : self.split], audio[:, self.split :]).numpy()
