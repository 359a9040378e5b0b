"""The supervised controls: what labelled recordings buy with the student's audio tower frozen.

The distilled encoder learns from labelled recordings; the zero-shot baselines do not. Two controls
learn from exactly the recordings distillation learns from (its manifest's ``train`` rows), on the
student's frozen audio embeddings, and choose their settings on its ``val`` rows:

- ``linear-head``: a linear map from the student's audio embedding into the teacher's text space,
  trained with the distillation objective (``birdsearch.model.distill.objectives``) and a learnable
  temperature, started as the Procrustes map of the species' captions as distillation's head is.
  It is the distilled encoder with only its head trained.
- ``linear-cascade-hard`` / ``-soft``: a linear (cosine) species classifier on the same embeddings,
  started from the student's captions of the species and trained with the class objective; its top
  species' (hard) or its posterior's (soft) teacher text embedding is the query. It is the cascade
  with a supervised classifier, the fair opponent of an encoder snapped onto the species' text.

Both learn only among the species that have labelled recordings: a species without any (known from
its photos and name alone) is no class of the training loss, so nothing pushes it away. The
classifier keeps the student's caption of such a species as its row, so that it still answers for
it zero-shot (``birdsearch.model.query.HybridQuery`` puts the two together).

Features are the student's unit embeddings of every 10 s window of a clip (a training sample per
window, cut as the evaluation cuts queries); a validation clip is the renormalised mean of its
windows, as a query is. Settings (learning rate, epochs) are chosen by class-wise mAP on the
validation clips; ties go to the fewer epochs. The classifier, its grid and the features are
distillation's own (``birdsearch.model.distill.classifier``: ``birdsearch distill`` fits the same
classifier beside every encoder).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F

from birdsearch.errors import ConfigError
from birdsearch.model.distill.classifier import (
    CHECK_EVERY,
    LEARNING_RATES,
    MAX_EPOCHS,
    FittedControl,
    FrozenFeatures,
    fit_classifier,
    frozen_features,
    has_audio_mask,
    select,
    with_audio,
)
from birdsearch.model.distill.manifest import Clip, load_manifest
from birdsearch.model.distill.objectives import objective_loss
from birdsearch.model.names import Taxon
from birdsearch.model.text_maps import fit_procrustes

log = logging.getLogger(__name__)

CONTROL_METHODS = ("linear-head", "linear-cascade-hard", "linear-cascade-soft")
__all__ = [
    "CHECK_EVERY", "CONTROL_METHODS", "LEARNING_RATES", "MAX_EPOCHS", "FittedControl", "FrozenFeatures",
    "fit_classifier", "fit_head", "frozen_features", "training_clips",
]  # fmt: skip


def training_clips(
    manifest: str | Path, taxa: list[Taxon], species_table: str | None, seed: int
) -> tuple[list[Clip], list[Clip]]:
    """The distillation manifest's train and val clips, species re-indexed into ``taxa``.

    The val split is the manifest's, or the per-species share the trainer holds out with the same
    seed (``load_manifest``), so the controls see exactly the clips distillation sees.
    """
    loaded = load_manifest(manifest, species_table, val_fraction=0.1, seed=seed)
    index = {t.scientific: i for i, t in enumerate(taxa)}
    outside = sorted({t.scientific for t in loaded.taxa if t.scientific not in index})
    if outside:
        raise ConfigError(
            f"{manifest}: species {outside[:5]} are not among the evaluated species; the controls must "
            "be trained on the evaluation's species (pass the matching --taxa)"
        )
    remap = [index[t.scientific] for t in loaded.taxa]

    def of(split: str) -> list[Clip]:
        return [Clip(c.path, remap[c.species], c.start_s, c.end_s, c.split) for c in loaded.split(split)]

    train, val = of("train"), of("val")
    if not train or not val:
        raise ConfigError(
            f"{manifest}: the controls need train and val rows (found {len(train)} and {len(val)}); "
            "mark held-out rows with split 'val' or let a few clips per species be held out"
        )
    return train, val


def fit_head(
    features: FrozenFeatures,
    student_species: torch.Tensor,
    teacher_species: torch.Tensor,
    objective: str,
    batch_size: int = 32,
    seed: int = 0,
) -> FittedControl:
    """The linear head into the teacher's text space, trained with the distillation ``objective``.

    Its targets are the species with labelled recordings; the Procrustes start uses every species.
    """
    view, index = with_audio(features, len(teacher_species))
    every = F.normalize(teacher_species.float(), dim=-1)
    targets = every[index]

    def project(w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x @ w.T, dim=-1)

    def loss(w, x, y, scale):
        return objective_loss(objective, project(w, x), targets, y, scale)

    init = fit_procrustes(F.normalize(student_species.float(), dim=-1), every)
    weight, scale, chosen = select(view, init, lambda w, x: project(w, x) @ targets.T, loss, batch_size, seed)
    return FittedControl(weight, scale, {**chosen, "objective": objective}, has_audio_mask(index, len(every)))
