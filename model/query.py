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
        student: Student | None,
        student_species: torch.Tensor,
        teacher_species: torch.Tensor,
        hard: bool = False,
        logit_scale: float | None = None,
    ):
        """
        Args:
            student: the audio-text model that classifies (None where only ``logits`` and ``from_audio``
                are used, on embeddings made elsewhere, as the engine's micro-batcher makes them).
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

    def logits(self, audio: torch.Tensor) -> torch.Tensor:
        """(N, student dim) audio embeddings to (N, S) species logits."""
        return self.logit_scale * audio @ self.student_species.T

    def posterior(self, audio: torch.Tensor) -> torch.Tensor:
        """(N, student dim) audio embeddings to (N, S) species probabilities."""
        return torch.softmax(self.logits(audio), dim=-1)

    def embed_windows(self, windows: np.ndarray | torch.Tensor, batch_size: int = 32) -> torch.Tensor:
        return self.from_audio(self.student.embed_windows(windows, batch_size))

    def from_audio(self, audio: torch.Tensor) -> torch.Tensor:
        """(N, student dim) audio embeddings to (N, teacher dim) query vectors."""
        return answer(self.logits(audio), self.teacher_species, self.hard)


def answer(logits: torch.Tensor, teacher_species: torch.Tensor, hard: bool) -> torch.Tensor:
    """(N, S) species logits to (N, teacher dim) queries: the top species' text, or the posterior's mix."""
    if hard:
        return teacher_species[logits.argmax(dim=-1)]
    return F.normalize(torch.softmax(logits, dim=-1) @ teacher_species, dim=-1)


class HybridQuery:
    """Two cascades joined per species: one for the species with labelled audio, one for the rest.

    A classifier trained on labelled recordings (``labelled``) cannot name a species it never heard;
    a zero-shot scorer (``fallback``: the student's captions, or a distilled encoder against the
    teacher's species text) can. Each species takes its logit from the cascade that may speak for
    it, the fallback's shifted by ``offset`` (calibrated stacking: the two scorers' logits are not on
    one scale, and ``offset`` is chosen on validation, ``-inf`` being the closed-set classifier);
    the posterior (or its top species) weights the teacher's species text, as in ``CascadeQuery``.
    With every species labelled it is the ``labelled`` cascade itself.
    """

    def __init__(
        self,
        labelled: CascadeQuery,
        fallback: CascadeQuery,
        has_audio: torch.Tensor,
        offset: float = 0.0,
        hard: bool = False,
    ):
        """
        Args:
            labelled: the cascade whose classifier learned from labelled audio.
            fallback: the zero-shot cascade over the same species, in the same order.
            has_audio: (S,) booleans, True for the species the classifier learned from.
            offset: added to the fallback's logits (``-inf``: never answer a species without audio).
            hard: use the top species only, instead of the whole posterior.
        """
        if (
            len(has_audio) != labelled.teacher_species.shape[0]
            or len(has_audio) != fallback.teacher_species.shape[0]
        ):
            raise ValueError(f"{len(has_audio)} species flags for cascades over other species lists")
        self.labelled = labelled
        self.fallback = fallback
        self.has_audio = has_audio.bool()
        self.offset = offset
        self.hard = hard

    @property
    def dim(self) -> int:
        return self.labelled.dim

    def logits(self, windows: np.ndarray | torch.Tensor, batch_size: int = 32) -> torch.Tensor:
        """(N, T) windows to (N, S) species logits, each species from the scorer that may speak for it."""
        labelled = self.labelled.student.embed_windows(windows, batch_size).float()
        if bool(self.has_audio.all()):
            return self.labelled.logits(labelled)
        return self.logits_from(labelled, self.fallback.student.embed_windows(windows, batch_size).float())

    def logits_from(self, labelled_audio: torch.Tensor, fallback_audio: torch.Tensor) -> torch.Tensor:
        """The species logits of the two scorers' audio embeddings of the same windows."""
        labelled = self.labelled.logits(labelled_audio)
        if bool(self.has_audio.all()):
            return labelled
        return torch.where(self.has_audio, labelled, self.fallback.logits(fallback_audio) + self.offset)

    def from_outputs(self, labelled_audio: torch.Tensor, fallback_audio: torch.Tensor) -> torch.Tensor:
        """(N, teacher dim) query vectors from the two scorers' audio embeddings of the same windows."""
        return answer(
            self.logits_from(labelled_audio, fallback_audio), self.labelled.teacher_species, self.hard
        )

    def embed_windows(self, windows: np.ndarray | torch.Tensor, batch_size: int = 32) -> torch.Tensor:
        return answer(self.logits(windows, batch_size), self.labelled.teacher_species, self.hard)
