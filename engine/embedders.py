"""The models behind a query: windows in, vectors out, one batch at a time on the batcher's thread.

- ``DistilledEmbedder``: the distilled encoder, straight into the teacher's space.
- ``StudentEmbedder``: the student's audio tower, the first half of the zero-shot cascade. The second
  half (classify against the index's species, mix the teacher's species embeddings) depends on the
  index version, so it runs per request in ``CascadeHead``: a batch can then mix requests that
  started on different index versions during a hot reload.

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
from birdsearch.model.mel import FrontEndConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelFacts:
    """What a query response and /version say about a model."""

    mode: str  # "distilled" or "cascade"
    id: str  # the spec the model was given, without server paths (``redact.model_name``)
    dim: int  # output dimension of the batch function
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

    def __call__(self, windows: np.ndarray) -> np.ndarray:
        with stage_timer("features"):
            features = self.encoder.mel(torch.from_numpy(windows))  # pinned on CUDA: an async copy
        with stage_timer("encode"):
            return self.encoder.embed_features(features).numpy()


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

    def __call__(self, windows: np.ndarray) -> np.ndarray:
        with stage_timer("features"):
            features = self.student.mel(torch.from_numpy(windows))
        with stage_timer("encode"):
            return self.student.embed_features(features).numpy()

    def species_head(self, captions: list[str], teacher_species: np.ndarray) -> CascadeHead:
        """The cascade's second half for one index version: its species as student captions."""
        from birdsearch.model.query import CascadeQuery

        student_species = self.student.embed_texts(captions)
        query = CascadeQuery(self.student, student_species, torch.from_numpy(np.asarray(teacher_species)))
        return CascadeHead(query)


class CascadeHead:
    """Student audio embeddings to teacher-space queries through one index version's species."""

    def __init__(self, query: Any):
        self.query = query  # birdsearch.model.query.CascadeQuery (soft)

    def __call__(self, audio_embeddings: np.ndarray) -> np.ndarray:
        return self.query.from_audio(torch.from_numpy(audio_embeddings)).numpy()
