"""Ways to turn audio windows into a query vector in the teacher's space, behind one interface.

Everything that searches the image index (the service, ``birdsearch evaluate``) takes a
``QueryEmbedder``: windows (N, T) in, L2-normalised (N, teacher dim) vectors out. The distilled
encoder (``birdsearch.model.encoder.LoadedEncoder``) is one; the zero-shot cascade below is the
method that needs no training at all, and the service's fallback when no distilled checkpoint is
configured. The text-space mappings live with the other baselines in ``birdsearch.model.evaluate``.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

from birdsearch.model.student import Student


class QueryEmbedder(Protocol):
    """(N, T) windows at the front end's rate to (N, dim) unit vectors in the teacher's space."""

    @property
    def dim(self) -> int: ...

    def embed_windows(self, windows: np.ndarray | torch.Tensor, batch_size: int = 32) -> torch.Tensor: ...


class CascadeQuery:
    """Zero-shot cascade: the student classifies, the teacher's species text embeddings answer.

    The student scores each window against its own captions of the gallery's species; the softmax
    posterior (soft) or its top species (hard) weights the teacher's text embeddings of the same
    species, and that vector queries the image index.
    """

    def __init__(
        self,
        student: Student,
        student_species: torch.Tensor,
        teacher_species: torch.Tensor,
        hard: bool = False,
        logit_scale: float | None = None,
    ):
        """
        Args:
            student: the audio-text model that classifies.
            student_species: (S, student dim) caption embeddings, e.g. ``student.embed_species(taxa)``.
            teacher_species: (S, teacher dim) class embeddings of the same species, same order.
            hard: use the top-1 species only, instead of the whole posterior.
            logit_scale: softmax inverse temperature; default the student's own audio logit scale.
        """
        if student_species.shape[0] != teacher_species.shape[0]:
            raise ValueError(
                f"{student_species.shape[0]} student and {teacher_species.shape[0]} teacher species embeddings"
            )
        self.student = student
        self.student_species = F.normalize(student_species.float(), dim=-1)
        self.teacher_species = F.normalize(teacher_species.float(), dim=-1)
        self.hard = hard
        self.logit_scale = (
            logit_scale if logit_scale is not None else float(student.model.logit_scale_a.exp())
        )

    @property
    def dim(self) -> int:
        return int(self.teacher_species.shape[1])

    def posterior(self, audio: torch.Tensor) -> torch.Tensor:
        """(N, student dim) audio embeddings to (N, S) species probabilities."""
        return torch.softmax(self.logit_scale * audio @ self.student_species.T, dim=-1)

    def embed_windows(self, windows: np.ndarray | torch.Tensor, batch_size: int = 32) -> torch.Tensor:
        return self.from_audio(self.student.embed_windows(windows, batch_size))

    def from_audio(self, audio: torch.Tensor) -> torch.Tensor:
        """(N, student dim) audio embeddings to (N, teacher dim) query vectors."""
        probs = self.posterior(audio)
        if self.hard:
            return self.teacher_species[probs.argmax(dim=-1)]
        return F.normalize(probs @ self.teacher_species, dim=-1)
