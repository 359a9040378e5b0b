"""What a toy world is made of: one dataclass per part, two presets, and the cache key.

Every number that changes a byte of the world or of its models is a field here, so that the cache
key (a hash of these fields and ``CODE_VERSION``) names exactly one world. Bump ``CODE_VERSION``
whenever the generators or the training code change what they produce.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from birdsearch.errors import ConfigError

# Part of every cache key: bump it when a generator or a trainer changes its output.
CODE_VERSION = "toy-4"


@dataclass(frozen=True)
class TeacherTrainConfig:
    """The toy teacher (an open_clip ``CLIP``) and how it is trained."""

    embed_dim: int = 128  # joint image-text space (BioCLIP-2: 768)
    image_size: int = 64  # the vision tower's input, pixels (photos are resized to it)
    # "resnet" (open_clip's ModifiedResNet: learns the colour marks from few photos in few steps)
    # or "vit" (BioCLIP-2's kind; needs about twice the steps here for lower accuracy).
    vision_tower: str = "resnet"
    vision_width: int = 16  # ResNet stem width (ViT: model width, e.g. 96)
    vision_layers: int = 1  # ResNet blocks per stage, 4 stages (ViT: depth, e.g. 3)
    patch_size: int = 8  # ViT patch, pixels (ViT only)
    text_width: int = 96  # text transformer width
    text_layers: int = 3  # text transformer depth
    heads_width: int = 32  # width per attention head, both towers
    steps: int = 300  # optimiser steps
    batch_size: int = 64  # images per step (every species' text is in every step)
    lr: float = 1e-3  # AdamW peak learning rate (linear warm-up, cosine decay)
    taxon_com_fraction: float = 0.7  # share of texts in the taxon_com format; the rest mixes the others


@dataclass(frozen=True)
class StudentTrainConfig:
    """The toy student (a ``transformers.ClapModel``) and how it is trained."""

    projection_dim: int = 64  # joint audio-text space (BioLingual: 512)
    patch_size: int = 16  # HTSAT patch on the 256x256 folded spectrogram (BioLingual: 4)
    audio_hidden: int = 64  # HTSAT first-stage width (doubles per stage)
    audio_depths: tuple[int, ...] = (1, 1)  # Swin blocks per stage
    audio_heads: tuple[int, ...] = (2, 4)  # attention heads per stage
    text_hidden: int = 64  # RoBERTa-style text encoder width
    text_layers: int = 2  # text encoder depth
    vocab_size: int = 1000  # BPE vocabulary, trained on the captions
    # ClapModel draws every Linear/Conv weight with std 0.0064 (sized for BioLingual's 768-wide,
    # 16-layer model); from scratch, a small model barely learns with it. 4x gives std 0.026.
    init_factor: float = 4.0
    crops_per_recording: int = 2  # random 10 s windows (rand_trunc) precomputed per recording
    steps: int = 300  # optimiser steps of the audio tower (phase 1)
    batch_size: int = 32  # windows per step
    text_steps: int = 200  # optimiser steps of a text tower on the locked audio (phase 2, each variant)
    lr: float = 2e-3  # AdamW peak learning rate (linear warm-up, cosine decay); 4e-3 diverges


@dataclass(frozen=True)
class WorldConfig:
    """A whole toy world: taxonomy, photos, recordings, soundscapes and both models."""

    seed: int = 0  # everything is drawn from generators seeded with it
    orders: int = 3  # taxonomy shape: orders x families x genera x species
    families_per_order: int = 2
    genera_per_family: int = 2
    species_per_genus: int = 2
    photo_size: int = 128  # side of every saved photo, pixels
    teacher_images: int = 40  # photos per species that train the teacher
    gallery_images: int = 12  # photos per species in the gallery (never seen by the teacher)
    student_recordings: int = 16  # recordings per species that train the student
    distill_train: int = 12  # recordings per species in the distillation manifest, split "train"
    distill_val: int = 4  # ... and split "val"
    query_recordings: int = 6  # held-out query recordings per species
    recording_s: tuple[float, float] = (3.0, 16.0)  # range of recording lengths, seconds
    # Share of recordings shorter than one 10 s window. CLAP repeat-pads them and fills the rest
    # with digital silence, which a model trained from scratch learns slowly from: keep it a minority.
    short_fraction: float = 0.15
    soundscapes: int = 4  # long recordings mixing several species
    soundscape_s: tuple[float, float] = (30.0, 60.0)  # range of soundscape lengths, seconds
    soundscape_rate: int = 32_000  # soundscapes are written at BirdSet's rate
    caption_fraction: float = 0.5  # share of species whose name the realistic student hears in training
    caption_noise: float = 0.1  # share of its captioned recordings captioned with a sibling's name
    teacher: TeacherTrainConfig = field(default_factory=TeacherTrainConfig)
    student: StudentTrainConfig = field(default_factory=StudentTrainConfig)

    def __post_init__(self) -> None:
        counts = (self.orders, self.families_per_order, self.genera_per_family, self.species_per_genus)
        if min(counts) < 1:
            raise ConfigError(f"taxonomy shape {counts} must be positive in every rank")
        if self.n_species < 2:
            raise ConfigError("a toy world needs at least 2 species")
        if not 0.0 < self.caption_fraction <= 1.0:
            raise ConfigError(f"caption_fraction {self.caption_fraction} must be in (0, 1]")

    @property
    def n_species(self) -> int:
        return self.orders * self.families_per_order * self.genera_per_family * self.species_per_genus

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WorldConfig:
        data = dict(data)
        teacher = TeacherTrainConfig(**data.pop("teacher", {}))
        student = dict(data.pop("student", {}))
        for key in ("audio_depths", "audio_heads"):
            if key in student:
                student[key] = tuple(student[key])
        for key in ("recording_s", "soundscape_s"):
            if key in data:
                data[key] = tuple(data[key])
        return cls(**data, teacher=teacher, student=StudentTrainConfig(**student))

    def key(self) -> str:
        """The cache key of the whole world: a hash of every field and of ``CODE_VERSION``."""
        return digest({"code": CODE_VERSION, "config": self.to_dict()})

    def data_key(self) -> str:
        """The key of the photos and recordings alone: changing how a model trains keeps them."""
        data = {k: v for k, v in self.to_dict().items() if k not in ("teacher", "student")}
        return digest({"code": CODE_VERSION, "data": data})

    def model_key(self, kind: str) -> str:
        """The key of the teacher or the students: the data key and that model's own settings."""
        return digest({"data": self.data_key(), kind: self.to_dict()[kind]})[:8]


def digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


def small_config(seed: int = 0) -> WorldConfig:
    """8 species and few samples: builds in well under a minute, for unit tests."""
    return WorldConfig(
        seed=seed,
        orders=2,
        families_per_order=1,
        genera_per_family=2,
        species_per_genus=2,
        teacher_images=30,
        gallery_images=6,
        student_recordings=12,
        distill_train=6,
        distill_val=2,
        query_recordings=4,
        soundscapes=2,
        soundscape_s=(30.0, 36.0),
        teacher=replace(TeacherTrainConfig(), steps=100, batch_size=32, text_layers=2),
        student=replace(StudentTrainConfig(), steps=80, text_steps=120, batch_size=24),
    )


def tiny_config(seed: int = 0) -> WorldConfig:
    """4 species, a handful of photos and recordings: data in seconds, models only smoke-tested.

    For tests of code that needs files of every kind (a gallery, manifests, recordings in every
    format, a soundscape) rather than models that are good at anything.
    """
    small = small_config(seed)
    return replace(
        small,
        orders=2,
        genera_per_family=1,
        teacher_images=3,
        gallery_images=2,
        student_recordings=2,
        distill_train=2,
        distill_val=1,
        query_recordings=2,
        recording_s=(3.0, 18.0),
        short_fraction=0.4,
        soundscapes=1,
        soundscape_s=(30.0, 31.0),
        teacher=replace(small.teacher, steps=20, batch_size=12),
        student=replace(small.student, steps=10, text_steps=10, batch_size=8),
    )


# Named worlds that model specs can refer to: "toy" -> default, "toy:small" -> small, "toy:tiny".
PRESETS: dict[str, Any] = {"default": WorldConfig, "small": small_config, "tiny": tiny_config}


def preset(name: str, seed: int = 0) -> WorldConfig:
    """The world config of a preset name ("default" or "small")."""
    if name not in PRESETS:
        raise ConfigError(f"unknown toy world {name!r}: use one of {', '.join(PRESETS)}")
    return PRESETS[name](seed=seed)


def preset_name(config: WorldConfig) -> str | None:
    """The preset (seed 0) a config equals, which ``toy`` model specs can name; None for any other."""
    return next((name for name in PRESETS if preset(name) == config), None)
