"""Every method the evaluation compares, each a ``QueryEmbedder`` (windows in, teacher-space vectors out).

- ``random``: unit vectors drawn independently of the audio: the chance level.
- ``cascade-hard`` / ``cascade-soft``: the zero-shot cascade, ``birdsearch.model.query.CascadeQuery``.
- ``map-ridge`` / ``map-procrustes`` / ``map-mlp``: the student's audio embedding sent through a map
  from its text space to the teacher's, fitted on species names (``mapping``).
- ``linear-head`` / ``linear-cascade-hard`` / ``linear-cascade-soft``: the supervised controls,
  trained on the distillation's own labelled clips with the audio tower frozen (``controls``). For a
  species without labelled clips the linear cascade answers with the student's zero-shot caption
  score (``HybridQuery``): the controls' honest best.
- a distilled encoder: its own output (``LoadedEncoder``); one distilled into the student's own text
  space (the ablation) reaches the teacher's space through the Procrustes map, as the mapping
  baseline does. With the fitted classifier and species without labelled clips, also
  ``NAME+hybrid-hard`` / ``-soft``: the classifier for the species with labelled clips, the
  distilled encoder (against the teacher's species text) for the others.

Where the zero-shot side of a hybrid answers, its logits are shifted by an offset
(``HybridQuery``); given several offsets, each is a method of its own, ``NAME@OFFSET``, so that the
offset can be chosen on validation.

The student-based methods share one forward pass per batch of windows (``SharedStudent``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from birdsearch.model.evaluate.controls import CONTROL_METHODS, FittedControl
from birdsearch.model.query import CascadeQuery, HybridQuery, QueryEmbedder
from birdsearch.model.species_head import mode_queries
from birdsearch.model.text_maps import MAPPINGS, TextMap, fit_map

log = logging.getLogger(__name__)


class SharedStudent:
    """A ``Student`` (or any embedder) that remembers its embeddings of the last windows it saw.

    The evaluation passes the same windows object to every method in turn; the cascade and the
    three maps then cost one student forward pass instead of five (and an encoder and its snapped
    variants one instead of three). Everything else is the wrapped object's.
    """

    def __init__(self, student: Any):
        self._student = student
        self._last: tuple[Any, torch.Tensor] | None = None

    def embed_windows(self, windows: np.ndarray | torch.Tensor, batch_size: int = 32) -> torch.Tensor:
        if self._last is not None and self._last[0] is windows:
            return self._last[1]
        out = self._student.embed_windows(windows, batch_size)
        self._last = (windows, out)
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self._student, name)


class RandomQuery:
    """Random unit vectors, one per window, from a seeded generator: chance-level retrieval."""

    def __init__(self, dim: int, seed: int = 0):
        self._dim = dim
        self.generator = torch.Generator().manual_seed(seed)

    @property
    def dim(self) -> int:
        return self._dim

    def embed_windows(self, windows: np.ndarray | torch.Tensor, batch_size: int = 32) -> torch.Tensor:
        return F.normalize(torch.randn(len(windows), self._dim, generator=self.generator), dim=-1)


class MappedQuery:
    """An audio embedder whose output goes through a text-space map into the teacher's space."""

    def __init__(self, source: Any, text_map: TextMap, dim: int):
        self.source = source
        self.text_map = text_map
        self._dim = dim

    @property
    def dim(self) -> int:
        return self._dim

    def embed_windows(self, windows: np.ndarray | torch.Tensor, batch_size: int = 32) -> torch.Tensor:
        return self.text_map(self.source.embed_windows(windows, batch_size))


@dataclass
class Method:
    """A named method and a one-line description for the report."""

    name: str
    embedder: QueryEmbedder
    description: str


def student_methods(
    student: Any,
    student_species: torch.Tensor,
    teacher_species: torch.Tensor,
    names: tuple[str, ...],
    seed: int = 0,
    controls: dict[str, FittedControl] | None = None,
    offsets: tuple[float, ...] = (0.0,),
) -> list[Method]:
    """The baselines built from the student and the species' text embeddings of both models.

    ``controls`` holds the fitted supervised controls (``controls.fit_head`` as "head",
    ``controls.fit_classifier`` as "classifier") when ``names`` asks for any of them; ``offsets``
    are the zero-shot side's offsets of the linear cascade, for species without labelled clips.
    """
    shared = student if isinstance(student, SharedStudent) else SharedStudent(student)
    dim = int(teacher_species.shape[1])
    out = []
    for name in names:
        if name == "random":
            out.append(Method(name, RandomQuery(dim, seed), "random unit vectors: chance"))
        elif name in ("cascade-hard", "cascade-soft"):
            hard = name == "cascade-hard"
            cascade = CascadeQuery(shared, student_species, teacher_species, hard=hard)
            what = "top-1 species" if hard else "posterior-weighted species"
            out.append(Method(name, cascade, f"zero-shot cascade: student {what} -> teacher text embedding"))
        elif name in CONTROL_METHODS:
            out += control_methods(name, shared, student_species, teacher_species, controls, offsets)
        elif name.startswith("map-") and name[4:] in MAPPINGS:
            text_map = fit_map(name[4:], student_species, teacher_species, seed=seed)
            out.append(Method(name, MappedQuery(shared, text_map, dim),
                              f"student audio through a {name[4:]} map fitted on species names"))  # fmt: skip
        else:
            raise ValueError(f"unknown method {name!r}")
    return out


def control_methods(
    name: str,
    shared: SharedStudent,
    student_species: torch.Tensor,
    teacher_species: torch.Tensor,
    controls: dict[str, FittedControl] | None,
    offsets: tuple[float, ...] = (0.0,),
) -> list[Method]:
    """A supervised control (``birdsearch.model.evaluate.controls``) as methods on the shared student.

    One method, except for a linear cascade over species without labelled clips: one per offset.
    """
    kind = "head" if name == "linear-head" else "classifier"
    if not controls or kind not in controls:
        raise ValueError(
            f"method {name!r} needs the fitted {kind}: fit it with birdsearch.model.evaluate.controls"
        )
    fitted = controls[kind]
    chosen = fitted.chosen
    how = f"lr {chosen['lr']:g}, {chosen['epochs']} epochs, chosen on {chosen['val_clips']} val clips"
    if kind == "head":
        text_map = TextMap("linear-head", weight=fitted.weight)
        return [Method(name, MappedQuery(shared, text_map, int(teacher_species.shape[1])),
                       f"control: frozen student audio, a linear head into the teacher's text space trained "
                       f"with the distillation objective ({chosen['objective']}) on the distillation's training clips ({how})")]  # fmt: skip
    hard = name.endswith("hard")
    cascade = CascadeQuery(shared, fitted.weight, teacher_species, hard=hard, logit_scale=fitted.logit_scale)
    what = "top species'" if hard else "posterior-weighted species'"
    description = (f"control: a linear species classifier on frozen student audio, trained on the distillation's "
                   f"training clips ({how}); the {what} teacher text embedding queries")  # fmt: skip
    if bool(fitted.has_audio.all()):
        return [Method(name, cascade, description)]
    zero_shot = CascadeQuery(shared, student_species, teacher_species, hard=hard)
    return [
        Method(variant, HybridQuery(cascade, zero_shot, fitted.has_audio, offset, hard),
               f"{description}; species without labelled clips: the student's zero-shot caption score {offset:+g}")
        for variant, offset in offset_variants(name, offsets)
    ]  # fmt: skip


def offset_variants(name: str, offsets: tuple[float, ...]) -> list[tuple[str, float]]:
    """(method name, offset) for each offset: the name alone for one offset, ``NAME@OFFSET`` for several."""
    if len(offsets) == 1:
        return [(name, offsets[0])]
    return [(f"{name}@{offset:g}", offset) for offset in offsets]


def encoder_methods(
    name: str,
    encoder: Any,
    student_species: torch.Tensor,
    teacher_species: torch.Tensor,
    teacher_id: str,
    teacher_sha: str = "",
    snap: bool = True,
    hybrid: tuple[SharedStudent, FittedControl] | None = None,
    offsets: tuple[float, ...] = (0.0,),
    served: tuple[SharedStudent, list[str]] | None = None,
) -> list[Method]:
    """A distilled encoder as methods: itself, (``snap``) itself snapped onto the species' text,
    (``hybrid``: the shared student and the fitted classifier) the hybrids with the classifier, and
    (``served``: the shared student and the evaluated species' names) ``NAME+classifier`` and
    ``NAME+hybrid``, the query modes of an encoder that carries its own species classifier
    (``birdsearch.model.species_head``), exactly as the service answers with them.

    One trained into the student's text space (the ablation) reaches the teacher's space through
    the Procrustes map. One trained into the teacher's space also gives ``NAME+snap-hard`` and
    ``NAME+snap-soft``: its embedding classifies against the teacher's species text at its own
    learned temperature, and the top species' text embedding (or the posterior-weighted mix) is the
    query, as in the cascade but with the distilled encoder as the classifier (``CascadeQuery``
    reused). InfoNCE only asks an embedding to be nearer its species' text than the others', not
    on it; the snap drops what is left over.

    An encoder distilled against other teacher weights than the evaluation's is still evaluated, but
    its description says so (and a warning is logged): its space is not the gallery's.
    """
    space = str(encoder.card.teacher.get("id", ""))
    target = encoder.card.training.get("target", "teacher")
    dim = int(teacher_species.shape[1])
    if target == "student-text" or space.startswith("student-text:"):
        text_map = fit_map("procrustes", student_species, teacher_species)
        description = (
            "ablation: audio tower fine-tuned into the student's own text space, then a Procrustes map"
        )
        return [Method(name, MappedQuery(encoder, text_map, dim), description)]
    if target == "rotated-teacher" or space.startswith("rotated-teacher:"):
        return [Method(name, encoder, "control: distilled into a randomly rotated teacher text space")]
    objective = encoder.card.training.get("objective", "?")
    description = f"distilled into the teacher's text space ({objective} InfoNCE)"
    trained_sha = str(encoder.card.teacher.get("weights_sha256", ""))
    if (space and space != teacher_id) or (teacher_sha and trained_sha and trained_sha != teacher_sha):
        description += f" [MISMATCH: distilled against {space} {trained_sha[:12]}, evaluated with {teacher_id} {teacher_sha[:12]}]"
        log.warning("encoder %s was distilled against other teacher weights than the evaluation uses", name)
    shared = SharedStudent(encoder)
    methods = [Method(name, shared, description)]
    temperature = float(encoder.card.training.get("final_temperature") or 0.07)
    for hard in (True, False):
        snapped = CascadeQuery(
            shared, teacher_species, teacher_species, hard=hard, logit_scale=1 / temperature
        )
        what = "top species'" if hard else "posterior-weighted species'"
        kind = "hard" if hard else "soft"
        if snap:
            methods.append(Method(f"{name}+snap-{kind}", snapped,
                                  f"{name} as a classifier over the teacher's species text; the {what} text embedding queries"))  # fmt: skip
        if hybrid is not None and not bool(hybrid[1].has_audio.all()):
            student, classifier = hybrid
            labelled = CascadeQuery(student, classifier.weight, teacher_species, hard=hard,
                                    logit_scale=classifier.logit_scale)  # fmt: skip
            methods += [
                Method(variant, HybridQuery(labelled, snapped, classifier.has_audio, offset, hard),
                       f"hybrid: the linear classifier for species with labelled clips, {name} against the "
                       f"teacher's species text ({offset:+g}) for the others; the {what} text embedding queries")
                for variant, offset in offset_variants(f"{name}+hybrid-{kind}", offsets)
            ]  # fmt: skip
    head = getattr(encoder, "species_head", None)
    if served is not None and head is not None:
        student, names = served
        scale = float(student.model.logit_scale_a.exp())
        queries = mode_queries(head, names, student_species, teacher_species, scale, 1 / temperature,
                               student=student, encoder=shared)  # fmt: skip
        methods += [
            Method(f"{name}+classifier", queries["classifier"],
                   f"served mode classifier: {name}'s species classifier on the student's audio, the posterior "
                   "weighting the teacher's species text (zero-shot captions for species without labelled clips)"),
            Method(f"{name}+hybrid", queries["hybrid"],
                   f"served mode hybrid: {name}'s species classifier for species with labelled clips, {name} "
                   "against the teacher's species text for the others"),
        ]  # fmt: skip
    return methods
