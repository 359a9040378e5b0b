"""The species classifier saved beside a distilled encoder, and the query modes an encoder serves.

``birdsearch distill`` fits a linear species classifier on the student's frozen audio, on the same
labelled clips (``birdsearch.model.distill.classifier``), and saves it in the encoder's directory:

    <dir>/classifier.safetensors   ``weight``: (species, student dim) unit rows
    <dir>/classifier.json          the species of the rows, which had labelled clips, the inverse
                                   temperature, the student (spec and weights checksum), how it was chosen

An encoder directory then serves three query modes (``ENCODER_MODES``); each turns a window into a
vector in the teacher's space, searched among the photos:

- ``distilled``: the encoder's own output (the paper's method);
- ``classifier``: the linear cascade: the classifier's posterior over the species weights the
  teacher's species text embeddings; a species it has no labelled clips of (or does not know)
  answers with the student's zero-shot caption score (``birdsearch.model.query.HybridQuery``);
- ``hybrid``: the classifier for the species it learned from labelled clips, the distilled encoder
  against the teacher's species text for the others.

Which of them is the encoder's default is recorded in its card (``card.metrics["modes"]``): the one
its validation chose among the modes that can abstain (``birdsearch distill --val-gallery``), or
``distilled`` when no choice was made, with the reason either way.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from birdsearch.errors import CheckpointError
from birdsearch.model.query import CascadeQuery, HybridQuery

ENCODER_MODES = ("distilled", "classifier", "hybrid")
# The modes whose scores can say that no gallery species is there: only these may be an encoder's default
# (``birdsearch.model.distill.classifier.choose_mode`` says why the others cannot).
ABSTAINING_MODES = ("distilled",)
WEIGHTS_FILE = "classifier.safetensors"
FACTS_FILE = "classifier.json"
FORMAT = "birdsearch-species-classifier"


@dataclass
class SpeciesHead:
    """A species classifier over the student's unit audio embeddings: one unit row per species."""

    species: list[str]  # scientific names, in the order of the rows
    weight: torch.Tensor  # (species, student dim) unit rows
    logit_scale: float  # the inverse temperature its softmax was trained at
    has_audio: list[bool]  # per row: learned from labelled clips (else the student's caption)
    student: dict[str, str]  # {"id", "weights_sha256"}: the student whose audio embeddings it classifies
    facts: dict[str, Any] = field(default_factory=dict)  # learning rate, epochs, validation cmAP, clips

    def rows_for(self, names: list[str], captions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(len(names), dim) rows for species ``names`` (an index's), and which learned from labelled clips.

        A species the classifier learned from labelled clips keeps its trained row; any other takes
        its row of ``captions`` (the student's zero-shot caption embeddings of ``names``).
        """
        rows = F.normalize(captions.float(), dim=-1).clone()
        learned = torch.zeros(len(names), dtype=torch.bool)
        position = {name: i for i, name in enumerate(self.species)}
        for row, name in enumerate(names):
            i = position.get(name)
            if i is not None and self.has_audio[i]:
                rows[row] = self.weight[i]
                learned[row] = True
        return rows, learned


def save_species_head(head: SpeciesHead, directory: str | Path) -> None:
    """Write the classifier's two files into ``directory`` (an encoder's, before it is published)."""
    from safetensors.torch import save_file

    directory = Path(directory)
    save_file({"weight": head.weight.detach().float().contiguous().cpu()}, directory / WEIGHTS_FILE)
    facts = {"format": FORMAT, "species": head.species, "has_audio": head.has_audio,
             "logit_scale": head.logit_scale, "student": head.student, "facts": head.facts}  # fmt: skip
    (directory / FACTS_FILE).write_text(json.dumps(facts, indent=1))


def load_species_head(directory: str | Path) -> SpeciesHead | None:
    """The classifier saved in an encoder's directory; None when it has none (an older encoder)."""
    from safetensors.torch import load_file

    directory = Path(directory)
    if not (directory / FACTS_FILE).is_file():
        return None
    try:
        facts = json.loads((directory / FACTS_FILE).read_text())
        weight = load_file(directory / WEIGHTS_FILE)["weight"]
    except (OSError, ValueError, KeyError) as e:
        raise CheckpointError(
            f"{directory}: the species classifier cannot be read ({e}); distil again"
        ) from e
    if facts.get("format") != FORMAT or len(facts["species"]) != len(weight):
        raise CheckpointError(f"{directory / FACTS_FILE}: not a species classifier of {len(weight)} rows")
    return SpeciesHead(facts["species"], weight, float(facts["logit_scale"]), list(facts["has_audio"]),
                       dict(facts["student"]), dict(facts.get("facts", {})))  # fmt: skip


def recorded_modes(card: Any) -> dict[str, Any]:
    """What an encoder's card says about its query modes: ``default`` and why (empty for older encoders)."""
    return dict((card.metrics or {}).get("modes") or {})


def default_mode(card: Any) -> str:
    """The query mode an encoder's card records as its default; ``distilled`` when it records none."""
    mode = recorded_modes(card).get("default", "distilled")
    return mode if mode in ENCODER_MODES else "distilled"


def mode_queries(
    head: SpeciesHead,
    names: list[str],
    captions: torch.Tensor,
    teacher_species: torch.Tensor,
    student_scale: float,
    distilled_scale: float,
    student: Any = None,
    encoder: Any = None,
) -> dict[str, HybridQuery]:
    """The ``classifier`` and ``hybrid`` modes over species ``names``, as queries of the teacher's space.

    Args:
        head: the encoder's species classifier.
        names: the species to answer among (an index's, or distillation's), in order.
        captions: (S, student dim) the student's zero-shot caption embeddings of ``names``.
        teacher_species: (S, teacher dim) the teacher's text embeddings of ``names``.
        student_scale: the student's own audio-text inverse temperature (its zero-shot scores).
        distilled_scale: the distilled encoder's inverse temperature against the teacher's text.
        student, encoder: the embedders, for ``embed_windows``; None where the engine hands in the
            embeddings (``HybridQuery.from_outputs``: the student's, then the encoder's for hybrid,
            the student's twice for classifier).
    Returns:
        {"classifier": ..., "hybrid": ...}, soft (the posterior weights the teacher's text); the
        zero-shot side is not shifted (offset 0: no species without labelled clips is there to choose
        an offset on).
    """
    rows, learned = head.rows_for(names, captions)
    classifier = CascadeQuery(student, rows, teacher_species, logit_scale=head.logit_scale)
    zero_shot = CascadeQuery(student, captions, teacher_species, logit_scale=student_scale)
    distilled = CascadeQuery(encoder, teacher_species, teacher_species, logit_scale=distilled_scale)
    return {
        "classifier": HybridQuery(classifier, zero_shot, learned),
        "hybrid": HybridQuery(classifier, distilled, learned),
    }
