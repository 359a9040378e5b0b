"""The linear species classifier on the student's frozen audio, fitted on distillation's labelled clips.

A cosine classifier over the student's unit audio embeddings, one row per species, started from the
student's captions of the species ("Sound of a {common name}") and trained with the class objective
and a learnable temperature on every 10 s window of the training clips. It learns only among the
species that have labelled recordings: a species without any (known from its photos and name alone)
is no class of the loss, so nothing pushes it away, and its row stays the student's caption, which
still answers for it zero-shot. The learning rate and the epochs (a grid: ``LEARNING_RATES`` ×
every ``CHECK_EVERY`` epochs up to ``MAX_EPOCHS``) are chosen by class-wise mAP on the validation
clips, a clip being the renormalised mean of its windows, as a query is; ties go to the fewer epochs.

``birdsearch distill`` fits it beside every encoder (``birdsearch.model.species_head``: the query
modes ``classifier`` and ``hybrid``); ``birdsearch evaluate`` fits it as its ``linear-cascade-*``
control, and reuses the grid search for its ``linear-head`` control.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from birdsearch.model import metrics
from birdsearch.model.distill.data import windows_of
from birdsearch.model.distill.manifest import Clip
from birdsearch.model.distill.objectives import LogitScale, objective_loss
from birdsearch.model.mel import FrontEndConfig
from birdsearch.model.species_head import ABSTAINING_MODES, ENCODER_MODES, SpeciesHead, mode_queries
from birdsearch.model.student import PROMPT

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

    weight: torch.Tensor  # head: (teacher dim, student dim); classifier: (species, student dim) unit rows
    logit_scale: float
    chosen: dict[str, Any]  # lr, epochs, val cmAP, the grid
    has_audio: torch.Tensor  # (species,) booleans: the species it learned from labelled recordings


def frozen_features(
    student: Any, train: list[Clip], val: list[Clip], front_end: FrontEndConfig
) -> FrozenFeatures:
    """Embed every window of the training clips and every validation clip with the frozen student."""

    def embed(clips: list[Clip]) -> tuple[list[torch.Tensor], torch.Tensor]:
        out = []
        for clip in clips:
            out.append(F.normalize(student.embed_windows(windows_of(clip, front_end)).float(), dim=-1))
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


def with_audio(features: FrozenFeatures, species: int) -> tuple[FrozenFeatures, torch.Tensor]:
    """The features with labels renumbered among the species that have training windows; their indices.

    Validation clips of a species without training windows are left out: no control can score them.
    """
    has_audio = torch.zeros(species, dtype=torch.bool)
    has_audio[features.train_labels] = True
    index = has_audio.nonzero().flatten()
    position = torch.full((species,), -1, dtype=torch.long)
    position[index] = torch.arange(len(index))
    kept = has_audio[features.val_labels]
    facts = {**features.facts, "species_with_audio": len(index), "species": species}
    view = FrozenFeatures(features.train, position[features.train_labels], features.val[kept],
                          position[features.val_labels[kept]], facts)  # fmt: skip
    return view, index


def select(
    features: FrozenFeatures, weight: torch.Tensor, score: Any, loss: Any, batch_size: int, seed: int
) -> tuple[torch.Tensor, float, dict[str, Any]]:
    """Every learning rate × epoch count of the grid; the best by validation cmAP (ties: fewer epochs).

    Returns the chosen weight, its inverse temperature and how it was chosen.
    """
    grid = []
    best: tuple[float, int, float, torch.Tensor, float] | None = None
    for lr in LEARNING_RATES:
        for epochs, cmap, w, scale in train_linear(features, weight, score, loss, lr, batch_size, seed):
            grid.append({"lr": lr, "epochs": epochs, "val_cmAP": cmap})
            if best is None or (cmap, -epochs) > (best[0], -best[1]):
                best = (cmap, epochs, lr, w, scale)
    assert best is not None, "the grid is never empty"
    cmap, epochs, lr, w, scale = best
    return w, scale, {"lr": lr, "epochs": epochs, "val_cmAP": cmap, "grid": grid, **features.facts}


def fit_classifier(
    features: FrozenFeatures, student_species: torch.Tensor, batch_size: int = 32, seed: int = 0
) -> FittedControl:
    """The cosine species classifier, started from the student's captions, trained with the class objective.

    Only the rows of species with labelled recordings train; the others stay the student's captions.
    """
    view, index = with_audio(features, len(student_species))
    captions = F.normalize(student_species.float(), dim=-1)

    def logits(w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return x @ F.normalize(w, dim=-1).T

    def loss(w, x, y, scale):
        return objective_loss("class", x, F.normalize(w, dim=-1), y, scale)

    trained, scale, chosen = select(view, captions[index], logits, loss, batch_size, seed)
    weight = captions.clone()
    weight[index] = F.normalize(trained, dim=-1)
    return FittedControl(
        weight, scale, {**chosen, "objective": "class"}, has_audio_mask(index, len(captions))
    )


def has_audio_mask(index: torch.Tensor, species: int) -> torch.Tensor:
    mask = torch.zeros(species, dtype=torch.bool)
    mask[index] = True
    return mask


# ---- beside a distilled encoder -------------------------------------------------------------------------


def fit_species_head(
    student: Any,
    train: list[Clip],
    val: list[Clip],
    taxa: list[Any],
    student_checksum: tuple[str, str],
    seed: int,
) -> SpeciesHead:
    """The classifier on ``student``'s frozen audio of distillation's clips, as saved beside its encoder.

    ``taxa``: distillation's species (the clips' indices); one without training clips keeps its caption.
    """
    features = frozen_features(student, train, val, student.front_end_config)
    fitted = fit_classifier(features, student.embed_species(taxa, "com", PROMPT), seed=seed)
    facts = {k: v for k, v in fitted.chosen.items() if k != "grid"}
    identity = {"id": student_checksum[0], "weights_sha256": student_checksum[1]}
    return SpeciesHead([t.scientific for t in taxa], fitted.weight, fitted.logit_scale,
                       fitted.has_audio.tolist(), identity, facts)  # fmt: skip


def choose_mode(
    encoder: Any,
    student: Any,
    head: SpeciesHead,
    taxa: list[Any],
    teacher_species: torch.Tensor,
    val: list[Clip],
    gallery: Any | None,
) -> dict[str, Any]:
    """Which query mode the encoder serves by default, chosen on the validation clips, and why.

    Every mode (``ENCODER_MODES``) queries the photos of ``gallery`` (``GalleryVectors``) with each
    validation clip and its audio-to-image mAP is recorded; the default is the best of the modes
    that can abstain (``ABSTAINING_MODES``; ties: the earlier mode). ``classifier`` and ``hybrid``
    cannot: their query is the classifier's posterior over the species, a mix of species' text that
    lies as close to some species' photos for background noise as for a bird, so no confidence fitted
    on their scores tells a window without a gallery bird from one with (on the toy world's
    validation windows, with the gate at ``min_conf``, 38 % of background-only windows give
    ``classifier`` a detection and none ``distilled``: docs/service.md, Query modes). They stay a
    request away for clips known to hold a gallery bird. Without photos nothing can be chosen:
    classifying against the species' text would not do, since a raw distilled embedding classifies
    well but sits off the text, which costs it on photos. Then the default stays ``distilled``, the
    paper's method, and the record says so.
    """
    if gallery is None:
        return {"default": "distilled", "chosen_on": None,
                "why": "not chosen: no validation photos (birdsearch distill --val-gallery); the paper's method"}  # fmt: skip
    scale = float(student.model.logit_scale_a.exp())
    distilled_scale = 1.0 / float(encoder.card.training.get("final_temperature") or 0.07)
    captions = student.embed_species(taxa, "com", PROMPT)
    names = [t.scientific for t in taxa]
    queries = {"distilled": encoder, **mode_queries(head, names, captions, teacher_species, scale, distilled_scale,
                                                      student=student, encoder=encoder)}  # fmt: skip
    labels = np.array([c.species for c in val])
    gallery_labels = gallery.labels(taxa)
    scores = {}
    for mode in ENCODER_MODES:
        vectors = clip_vectors(queries[mode], val, student.front_end_config)
        scores[mode] = metrics.retrieval_metrics(vectors @ gallery.vectors.T, labels, gallery_labels)["mAP"]
    eligible = [m for m in ENCODER_MODES if m in ABSTAINING_MODES]
    best = max(eligible, key=lambda m: (scores[m], -ENCODER_MODES.index(m)))
    others = ", ".join(f"{m} {100 * scores[m]:.1f}" for m in eligible if m != best)
    cannot = ", ".join(f"{m} {100 * scores[m]:.1f}" for m in ENCODER_MODES if m not in ABSTAINING_MODES)
    where = Path(str(gallery.facts.get("path", "the gallery"))).name
    return {
        "default": best,
        "chosen_on": f"audio-to-image mAP of {len(val)} validation clips against {len(gallery.vectors)} photos of {where}",
        "val_mAP": scores,
        "why": f"{best}: the highest validation mAP of the modes that can abstain, {100 * scores[best]:.1f}"
        + (f" (against {others})" if others else "")
        + f"; not served by default, since they cannot abstain on audio without a gallery bird: {cannot}",
    }


def clip_vectors(embedder: Any, clips: list[Clip], front_end: FrontEndConfig) -> np.ndarray:
    """(clips, dim) unit query vectors: the renormalised mean of each clip's windows, as a query's."""
    out = [
        F.normalize(embedder.embed_windows(windows_of(c, front_end)).float().sum(0), dim=-1) for c in clips
    ]
    return torch.stack(out).numpy()
