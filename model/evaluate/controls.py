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

Features are the student's unit embeddings of every 10 s window of a clip (a training sample per
window, cut as the evaluation cuts queries); a validation clip is the renormalised mean of its
windows, as a query is. Settings (learning rate, epochs) are chosen by class-wise mAP on the
validation clips; ties go to the fewer epochs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from birdsearch.errors import ConfigError
from birdsearch.model import metrics
from birdsearch.model.distill.manifest import Clip, load_manifest
from birdsearch.model.distill.objectives import LogitScale, objective_loss
from birdsearch.model.names import Taxon
from birdsearch.model.text_maps import fit_procrustes

log = logging.getLogger(__name__)

CONTROL_METHODS = ("linear-head", "linear-cascade-hard", "linear-cascade-soft")
LEARNING_RATES = (1e-3, 3e-3, 1e-2)
MAX_EPOCHS = 60
CHECK_EVERY = 5  # epochs between validations (the candidate epoch counts)


@dataclass
class FrozenFeatures:
    """The student's embeddings of the training windows and of the validation clips."""

    train: torch.Tensor  # (windows, student dim) unit vectors
    train_labels: torch.Tensor  # (windows,) species index in the evaluation's taxa
    val: torch.Tensor  # (clips, student dim) unit vectors, one per validation clip
    val_labels: torch.Tensor  # (clips,)
    facts: dict[str, Any] = field(default_factory=dict)


@dataclass
class FittedControl:
    """A trained linear weight, its inverse temperature and how it was chosen."""

    weight: torch.Tensor  # head: (teacher dim, student dim); classifier: (species, student dim)
    logit_scale: float
    chosen: dict[str, Any]  # lr, epochs, val cmAP, the grid


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


def frozen_features(student: Any, train: list[Clip], val: list[Clip], windows_of: Any) -> FrozenFeatures:
    """Embed every window of the training clips and every validation clip with the frozen student."""

    def embed(clips: list[Clip]) -> tuple[list[torch.Tensor], torch.Tensor]:
        out = []
        for clip in clips:
            out.append(F.normalize(student.embed_windows(windows_of(clip)).float(), dim=-1))
        return out, torch.tensor([c.species for c in clips])

    per_clip, clip_labels = embed(train)
    train_x = torch.cat(per_clip)
    train_y = torch.repeat_interleave(clip_labels, torch.tensor([len(p) for p in per_clip]))
    val_windows, val_y = embed(val)
    val_x = F.normalize(torch.stack([w.sum(0) for w in val_windows]), dim=-1)
    facts = {"train_clips": len(train), "train_windows": len(train_x), "val_clips": len(val)}
    return FrozenFeatures(train_x, train_y, val_x, val_y, facts)


def train_linear(
    features: FrozenFeatures,
    weight: torch.Tensor,
    score: Any,
    loss: Any,
    lr: float,
    batch_size: int,
    seed: int,
) -> list[tuple[int, float, torch.Tensor, float]]:
    """AdamW on ``weight`` and a temperature; (epochs, val cmAP, weight, scale) every CHECK_EVERY epochs.

    The kind of control is in its two functions: ``loss(weight, x, labels, scale)`` on a batch of
    training windows, and ``score(weight, x)``, the (clips, species) scores validation ranks by.
    """
    generator = torch.Generator().manual_seed(seed)
    w = torch.nn.Parameter(weight.detach().clone().float())
    scale = LogitScale()
    optimizer = torch.optim.AdamW([w, scale.log_scale], lr=lr, weight_decay=0.0)
    n = len(features.train)
    batch = min(batch_size, n)
    checkpoints = []
    for epoch in range(1, MAX_EPOCHS + 1):
        order = torch.randperm(n, generator=generator)
        for start in range(0, n - batch + 1, batch):
            idx = order[start : start + batch]
            value = loss(w, features.train[idx], features.train_labels[idx], scale())
            optimizer.zero_grad()
            value.backward()
            optimizer.step()
        if epoch % CHECK_EVERY == 0:
            with torch.no_grad():
                scores = score(w, features.val).numpy()
            cmap = metrics.classification_metrics(scores, features.val_labels.numpy())["cmAP"]
            checkpoints.append((epoch, float(cmap), w.detach().clone(), float(scale().detach())))
    return checkpoints


def select(
    features: FrozenFeatures, weight: torch.Tensor, score: Any, loss: Any, batch_size: int, seed: int
) -> FittedControl:
    """Every learning rate × epoch count of the grid; the best by validation cmAP (ties: fewer epochs)."""
    grid = []
    best: tuple[float, int, float, torch.Tensor, float] | None = None
    for lr in LEARNING_RATES:
        for epochs, cmap, w, scale in train_linear(features, weight, score, loss, lr, batch_size, seed):
            grid.append({"lr": lr, "epochs": epochs, "val_cmAP": cmap})
            if best is None or (cmap, -epochs) > (best[0], -best[1]):
                best = (cmap, epochs, lr, w, scale)
    assert best is not None, "the grid is never empty"
    cmap, epochs, lr, w, scale = best
    chosen = {"lr": lr, "epochs": epochs, "val_cmAP": cmap, "grid": grid, **features.facts}
    return FittedControl(w, scale, chosen)


def fit_head(
    features: FrozenFeatures,
    student_species: torch.Tensor,
    teacher_species: torch.Tensor,
    objective: str,
    batch_size: int = 32,
    seed: int = 0,
) -> FittedControl:
    """The linear head into the teacher's text space, trained with the distillation ``objective``."""
    targets = F.normalize(teacher_species.float(), dim=-1)

    def project(w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x @ w.T, dim=-1)

    def loss(w, x, y, scale):
        return objective_loss(objective, project(w, x), targets, y, scale)

    init = fit_procrustes(F.normalize(student_species.float(), dim=-1), targets)
    fitted = select(features, init, lambda w, x: project(w, x) @ targets.T, loss, batch_size, seed)
    fitted.chosen["objective"] = objective
    return fitted


def fit_classifier(
    features: FrozenFeatures, student_species: torch.Tensor, batch_size: int = 32, seed: int = 0
) -> FittedControl:
    """The cosine species classifier, started from the student's captions, trained with the class objective."""

    def logits(w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return x @ F.normalize(w, dim=-1).T

    def loss(w, x, y, scale):
        return objective_loss("class", x, F.normalize(w, dim=-1), y, scale)

    fitted = select(features, F.normalize(student_species.float(), dim=-1), logits, loss, batch_size, seed)
    fitted.chosen["objective"] = "class"
    return fitted
