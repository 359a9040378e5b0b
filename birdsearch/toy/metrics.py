"""What the toy models achieve on held-out data, measured through the project's own loaders.

The teacher classifies gallery photos (never seen in training) zero-shot against its class
embeddings in each name format; each student classifies the held-out query recordings zero-shot
against "Sound of a {common name}" captions, overall and split by whether the realistic student
heard that species' name in training. These figures go into ``metrics.json`` and the tests.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from birdsearch.model.names import NAME_FORMATS

# Annotations only: the world imports the builders, so a runtime import would close a circle.
if TYPE_CHECKING:
    from birdsearch.toy.world import ToyWorld

log = logging.getLogger(__name__)


def top1(scores: torch.Tensor, labels: torch.Tensor) -> float:
    return float((scores.argmax(dim=1) == labels).float().mean())


def gallery_embeddings(world: ToyWorld, teacher: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, dim) teacher embeddings of the gallery photos, and their labels."""
    from PIL import Image

    label_of = {sp.scientific: sp.label for sp in world.species}
    rows = world.read_manifest(world.gallery_manifest)
    images = [Image.open(row["path"]).convert("RGB") for row in rows]
    embeddings = torch.cat([teacher.embed_images(images[i : i + 128]) for i in range(0, len(images), 128)])
    return embeddings, torch.tensor([label_of[row["species"]] for row in rows])


def measure_teacher(world: ToyWorld, device: str = "cpu") -> dict[str, Any]:
    """Zero-shot top-1 of the teacher on gallery photos, per name format; and text-image similarity."""
    from birdsearch.model.teacher import Teacher

    teacher = Teacher.load(f"local-dir:{world.teacher_dir}", device=device)
    images, labels = gallery_embeddings(world, teacher)
    out: dict[str, Any] = {"chance": 1 / len(world.taxa), "images": len(labels)}
    for fmt in NAME_FORMATS:
        out[f"zero_shot_top1_{fmt}"] = round(
            top1(images @ teacher.embed_species(world.taxa, fmt).T, labels), 4
        )
    classes = teacher.embed_species(world.taxa, "taxon_com")
    cosine = images @ classes.T
    own = cosine[torch.arange(len(labels)), labels]
    out["cosine_own_species"] = round(float(own.mean()), 4)  # photo vs its species' text
    out["cosine_other_species"] = round(float((cosine.sum(1) - own).mean() / (len(world.taxa) - 1)), 4)
    return out


def recording_embeddings(student: Any, paths: list[str]) -> torch.Tensor:
    """(N, dim) student embeddings of whole recordings: the mean of their 10 s windows."""
    from birdsearch.model.audio import load, split

    config = student.front_end_config
    out = []
    for path in paths:
        recording = load(path, sample_rate=config.sample_rate)
        windows = split(recording.samples, config.sample_rate, config.window_s)
        out.append(F.normalize(student.embed_windows(windows.samples).mean(dim=0), dim=-1))
    return torch.stack(out)


def measure_student(world: ToyWorld, variant: str, device: str = "cpu") -> dict[str, Any]:
    """Zero-shot top-1 of a student on the query recordings, overall and for (un)captioned species."""
    from birdsearch.model.student import Student

    student = Student.load(f"local-dir:{world.student_dir_for(variant)}", device=device)
    label_of = {sp.scientific: sp.label for sp in world.species}
    rows = world.read_manifest(world.query_manifest)
    labels = torch.tensor([label_of[row["species"]] for row in rows])
    audio = recording_embeddings(student, [row["path"] for row in rows])
    predicted = (audio @ student.embed_species(world.taxa).T).argmax(dim=1)
    correct = (predicted == labels).numpy()
    captioned = set(world.captioned_species)
    heard = np.array([row["species"] in captioned for row in rows])
    out = {
        "chance": 1 / len(world.taxa),
        "recordings": len(rows),
        "zero_shot_top1": round(float(correct.mean()), 4),
    }
    if variant != "perfect" and heard.any() and not heard.all():
        out["zero_shot_top1_captioned"] = round(float(correct[heard].mean()), 4)
        out["zero_shot_top1_uncaptioned"] = round(float(correct[~heard].mean()), 4)
    return out


def measure_world(world: ToyWorld, device: str = "cpu") -> dict[str, Any]:
    """Every metric above, as one JSON-able dict."""
    metrics: dict[str, Any] = {"teacher": measure_teacher(world, device)}
    for variant in world.student_dirs:  # every student variant
        metrics[f"student_{variant}"] = measure_student(world, variant, device)
    log.info("toy world metrics: %s", metrics)
    return metrics
