"""The toy world on disk: ``ensure_world`` builds it once into the cache and returns every path in it.

Layout of ``cache_root()/toy/<preset>-<key>/`` (``key`` hashes the data fields of the ``WorldConfig``
and the code version; each model directory's ``<k>`` hashes that and the model's own settings, so
that retraining a model keeps the data; every manifest path is ABSOLUTE, every species column holds
the scientific name):

=============================  ===================================================================
``taxa.csv``                   label, scientific_name, common_name, genus, family, order, class, ...
``teacher_train.csv``          photos that trained the teacher: path, species, common_name, ...
``gallery/<Genus_epithet>/``   gallery photos (JPEG); never seen by the teacher in training
``images/teacher_train/``      photos that trained the teacher (drawn only when the teacher trains)
``gallery.csv``                path, species, common_name, genus, family, order, license, attribution, source
``student_train.csv``          recordings that trained the student: path, species (when it trained here)
``distill.csv``                path, species, split (train/val), start, end (seconds; empty = whole file)
``query.csv``                  held-out query recordings: path, species
``examples/``                  the first query recording of each species, drawn before the others
``soundscapes/``               30–60 s recordings mixing several species (32 kHz FLAC)
``soundscapes.csv``            file, start_s, end_s, species: one row per calling bout
``models/teacher-<k>/``        open_clip format: open_clip_config.json + open_clip_model.safetensors
``models/student-<v>-<k>/``    transformers ClapModel format; variants ``v`` "realistic" and "perfect"
``metrics-<k>.json``           what the models achieve on held-out data, measured at build time
``world.json``                 the config, its key, the code version and per-stage build times
``open-<k>/``                  the open world: out-of-gallery birds, non-bird sounds, a shifted
                               recorder; ``val.csv``/``test.csv`` and their recordings, built only
                               when asked for (``birdsearch.toy.openset``)
=============================  ===================================================================

Recordings are mostly Ogg Vorbis at 48 kHz (as BirdSet and xeno-canto ship compressed audio), one
in 20 each MP3 at 44.1 kHz, FLAC, WAV at 22.05 kHz and stereo Ogg, 3–20 s long, so that every
consumer exercises decoding, resampling, downmixing, padding and windowing. Everything is drawn
from generators seeded by ``WorldConfig.seed`` and the item's index: the same config gives the same
bytes, whatever the order or the process of building (with the same libsndfile encoders).

The teacher's training photos (``teacher-photos``) and the students' training recordings
(``student-audio``) are stages of their own, drawn only when a model trains: a world whose models
the package ships (``birdsearch.toy.shipped``) skips them. What a first answer needs (the gallery,
the models, a few ``examples`` to query with) does not wait for the rest of the recordings.
"""

from __future__ import annotations

import csv
import json
import logging
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from birdsearch.errors import ConfigError
from birdsearch.model.names import Taxon
from birdsearch.paths import cache_root
from birdsearch.toy.config import CODE_VERSION, PRESETS, WorldConfig, preset, preset_name
from birdsearch.toy.taxonomy import ToySpecies, make_species, read_taxa

log = logging.getLogger(__name__)

STUDENT_VARIANTS = ("realistic", "perfect")  # the realistic one hears only part of the species' names
DATA_STAGES = ("taxonomy", "gallery", "teacher-photos", "examples", "audio", "student-audio")
MODEL_STAGES = ("teacher", "student-perfect", "student-realistic")
OPEN_STAGES = ("open-val", "open-test")  # the open world's splits (birdsearch.toy.openset)
ALL_STAGES = (*DATA_STAGES, *MODEL_STAGES, "metrics", *OPEN_STAGES)
# What each stage needs built first.
STAGE_NEEDS: dict[str, tuple[str, ...]] = {
    "taxonomy": (),
    "gallery": ("taxonomy",),
    "teacher-photos": ("taxonomy",),
    "examples": ("taxonomy",),
    "audio": ("taxonomy",),
    "student-audio": ("taxonomy",),
    "teacher": ("taxonomy",),
    "student-realistic": ("student-perfect",),  # it keeps the perfect student's audio tower
    "student-perfect": ("taxonomy",),
    "metrics": (*MODEL_STAGES, "gallery", "audio"),  # the gallery photos and the query recordings
    "open-val": ("taxonomy",),
    "open-test": ("taxonomy",),
}
# What a model stage needs only to train: installing the model the package ships needs none of it.
TRAINING_NEEDS: dict[str, tuple[str, ...]] = {
    "teacher": ("teacher-photos",),
    "student-perfect": ("student-audio",),
    "student-realistic": ("student-audio",),
}


@dataclass(frozen=True)
class ToyWorld:
    """A toy world in the cache: its config and the paths of everything in it."""

    root: Path
    config: WorldConfig

    # --- the taxonomy ------------------------------------------------------------------------
    @property
    def taxa_csv(self) -> Path:
        return self.root / "taxa.csv"

    @cached_property
    def species(self) -> list[ToySpecies]:
        """Species with their drawing and song parameters (regenerated from the config)."""
        return make_species(self.config)

    @cached_property
    def taxa(self) -> list[Taxon]:
        """The species as ``Taxon`` objects, in label order (read from ``taxa.csv``)."""
        return read_taxa(self.taxa_csv)

    # --- photos ------------------------------------------------------------------------------
    @property
    def teacher_images_dir(self) -> Path:
        return self.root / "images" / "teacher_train"

    @property
    def teacher_images_manifest(self) -> Path:
        return self.root / "teacher_train.csv"

    @property
    def gallery_dir(self) -> Path:
        """``<gallery_dir>/<Genus_epithet>/<image>.jpg``: a folder per species (underscore for the space)."""
        return self.root / "gallery"

    @property
    def gallery_manifest(self) -> Path:
        return self.root / "gallery.csv"

    # --- recordings --------------------------------------------------------------------------
    @property
    def audio_dir(self) -> Path:
        return self.root / "audio"

    @property
    def student_manifest(self) -> Path:
        """Recordings the toy student was trained on (path, species)."""
        return self.root / "student_train.csv"

    @property
    def distill_manifest(self) -> Path:
        """Recordings for distillation: path, species, split ("train" or "val"), start, end."""
        return self.root / "distill.csv"

    @property
    def query_manifest(self) -> Path:
        """Held-out query recordings (path, species), for evaluation and the demo."""
        return self.root / "query.csv"

    @property
    def examples_dir(self) -> Path:
        """The first query recording of each species (the same bytes), to try the demo with at once."""
        return self.root / "examples"

    @property
    def soundscape_dir(self) -> Path:
        return self.root / "soundscapes"

    @property
    def soundscape_annotations(self) -> Path:
        """BirdSet-style annotations: file, start_s, end_s, species."""
        return self.root / "soundscapes.csv"

    # --- the open world ----------------------------------------------------------------------
    @property
    def open_dir(self) -> Path:
        """``open-<k>/``: what the gallery and the models never saw (``birdsearch.toy.openset``)."""
        from birdsearch.toy.openset import open_key

        return self.root / f"open-{open_key(self)}"

    def open_manifest(self, split: str) -> Path:
        """The open world's recordings of ``split`` ("val" or "test"): ``openset.OPEN_COLUMNS``."""
        return self.open_dir / f"{split}.csv"

    # --- models ------------------------------------------------------------------------------
    @property
    def teacher_dir(self) -> Path:
        return self.root / "models" / f"teacher-{self.config.model_key('teacher')}"

    def student_dir_for(self, variant: str = "realistic") -> Path:
        """The student directory of a text-side variant: "realistic" (default) or "perfect"."""
        if variant not in STUDENT_VARIANTS:
            raise ConfigError(
                f"unknown toy student variant {variant!r}: use one of {', '.join(STUDENT_VARIANTS)}"
            )
        return self.root / "models" / f"student-{variant}-{self.config.model_key('student')}"

    @property
    def student_dir(self) -> Path:
        """The default toy student: its text side knows only part of the species' names."""
        return self.student_dir_for("realistic")

    @property
    def perfect_student_dir(self) -> Path:
        """The toy student whose text side was trained on every species' name."""
        return self.student_dir_for("perfect")

    @property
    def student_dirs(self) -> dict[str, Path]:
        return {variant: self.student_dir_for(variant) for variant in STUDENT_VARIANTS}

    @property
    def preset(self) -> str | None:
        """The preset ("default" or "small") that ``toy`` specs name this world by; else None."""
        return preset_name(self.config)

    @property
    def teacher_spec(self) -> str:
        """A model spec that loads this world's teacher (``toy``, ``toy:small`` or ``local-dir:...``)."""
        return self.spec_for(None) or f"local-dir:{self.teacher_dir}"

    @property
    def student_spec(self) -> str:
        """A model spec for the realistic student (``toy``, ``toy:small`` or ``local-dir:...``)."""
        return self.spec_for("realistic") or f"local-dir:{self.student_dir}"

    @property
    def perfect_student_spec(self) -> str:
        """A model spec for the perfect-text student (``toy:perfect``, ``toy:small-perfect`` or ``local-dir:...``)."""
        return self.spec_for("perfect") or f"local-dir:{self.perfect_student_dir}"

    def spec_for(self, variant: str | None) -> str | None:
        name = self.preset
        if name is None:
            return None
        parts = [
            p for p in (None if name == "default" else name, variant if variant == "perfect" else None) if p
        ]
        return "toy:" + "-".join(parts) if parts else "toy"

    # --- facts -------------------------------------------------------------------------------
    @property
    def world_json(self) -> Path:
        return self.root / "world.json"

    @property
    def metrics_json(self) -> Path:
        return self.root / f"metrics-{self.config.key()[:8]}.json"

    @property
    def metrics(self) -> dict[str, Any]:
        """Accuracies the models reached on held-out data when the world was built."""
        return json.loads(self.metrics_json.read_text()) if self.metrics_json.is_file() else {}

    @property
    def captioned_species(self) -> list[str]:
        """Scientific names whose common names the realistic student heard in training."""
        path = self.student_dir / "toy_captions.json"
        return json.loads(path.read_text())["captioned"] if path.is_file() else []

    def read_manifest(self, path: Path) -> list[dict[str, str]]:
        """The rows of one of this world's CSV manifests."""
        with Path(path).open(newline="") as f:
            return list(csv.DictReader(f))

    def stage_marker(self, stage: str) -> Path:
        """The file that says a stage is built (model stages are keyed by their settings too)."""
        suffix = {"teacher": "teacher", "student-realistic": "student", "student-perfect": "student"}
        if stage == "metrics":
            return self.root / ".stages" / f"metrics-{self.config.key()[:8]}.json"
        if stage in OPEN_STAGES:
            return self.root / ".stages" / f"{stage}-{self.open_dir.name.removeprefix('open-')}.json"
        if stage in suffix:
            return self.root / ".stages" / f"{stage}-{self.config.model_key(suffix[stage])}.json"
        return self.root / ".stages" / f"{stage}.json"

    def is_built(self, stage: str) -> bool:
        return self.stage_marker(stage).is_file()

    def describe(self) -> dict[str, Any]:
        """Config, key and paths, as JSON-able facts."""
        return {
            "root": str(self.root),
            "key": self.config.key(),
            "code_version": CODE_VERSION,
            "preset": self.preset,
            "n_species": self.config.n_species,
            "teacher_spec": self.teacher_spec,
            "student_spec": self.student_spec,
            "perfect_student_spec": self.perfect_student_spec,
            "stages": {stage: self.is_built(stage) for stage in ALL_STAGES},
        }


def world_root(config: WorldConfig) -> Path:
    """Where the world of ``config`` lives in the cache."""
    same_data = next((name for name in PRESETS if preset(name).data_key() == config.data_key()), "custom")
    return cache_root() / "toy" / f"{same_data}-{config.data_key()}"


def open_world(config: WorldConfig | str | None = None) -> ToyWorld:
    """The ``ToyWorld`` of a config or preset name (default: "default"), built or not."""
    if config is None:
        config = preset("default")
    elif isinstance(config, str):
        config = preset(config)
    return ToyWorld(world_root(config), config)


def ensure_world(
    config: WorldConfig | str | None = None,
    rebuild: bool = False,
    stages: Sequence[str] = (*MODEL_STAGES, "metrics"),
    progress: bool = True,
    train: bool = False,
) -> ToyWorld:
    """Build what is missing of a toy world (or all of it, with ``rebuild``) and return it.

    Args:
        config: a ``WorldConfig``, a preset name ("default", "small") or None for "default".
        rebuild: delete the cached world first and build it again, models trained from scratch
            (otherwise a model the package ships for this world is installed, not trained).
        stages: build only these stages and what they need (default: the models and their metrics,
            with the data they need; the students' training recordings only if the students train);
            e.g. ``("gallery",)`` for the gallery photos alone, ``("audio",)`` for the recordings,
            ``("open-val",)`` for the open world's validation recordings (never built unless named).
        progress: show tqdm progress bars.
        train: train the missing models even where the package ships them (``rebuild`` implies it).

    Safe to call from several processes at once: building holds a file lock on the world.
    """
    world = open_world(config)
    unknown = [s for s in stages if s not in ALL_STAGES]
    if unknown:
        raise ConfigError(f"unknown toy world stages {unknown}: use some of {', '.join(ALL_STAGES)}")
    from birdsearch.toy import shipped as package

    dirs = model_dirs(world)

    def trains(stage: str) -> bool:
        installs = stage in dirs and package.ships(dirs[stage])
        return rebuild or train or not (world.is_built(stage) or installs)

    wanted = expand_stages(stages, trains)
    if not rebuild and all(world.is_built(s) for s in wanted):
        return world
    from filelock import FileLock

    world.root.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(world.root) + ".lock"):
        if rebuild and world.root.exists():
            log.info("rebuilding toy world %s", world.root)
            shutil.rmtree(world.root)
        world.root.mkdir(parents=True, exist_ok=True)
        write_world_json(world)
        for stage in wanted:
            if not world.is_built(stage):
                run_stage(world, stage, progress, shipped=not (rebuild or train))
    return world


def expand_stages(stages: Sequence[str], trains: Callable[[str], bool] = lambda stage: True) -> list[str]:
    """``stages`` and everything they need, in build order (``trains``: whether a stage will train)."""
    needed: set[str] = set()

    def add(stage: str) -> None:
        for need in STAGE_NEEDS[stage] + (TRAINING_NEEDS.get(stage, ()) if trains(stage) else ()):
            add(need)
        needed.add(stage)

    for stage in stages:
        add(stage)
    return [s for s in ALL_STAGES if s in needed]


def run_stage(world: ToyWorld, stage: str, progress: bool, shipped: bool = True) -> None:
    """Build one stage from scratch (removing any half-built output), then mark it done.

    A model stage installs the model the package ships for this world when there is one and
    ``shipped`` is true (``birdsearch.toy.shipped``); otherwise it trains.
    """
    from birdsearch.toy import build, openset

    outputs = {**build.STAGE_OUTPUTS, **openset.STAGE_OUTPUTS}
    builders = {**build.STAGE_BUILDERS, **openset.STAGE_BUILDERS}
    for path in outputs[stage](world):
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    log.info("toy world: building %s", stage)
    started = time.perf_counter()
    installed = install_shipped(world, stage) if shipped else None
    if installed is None:  # training: what it needs may have been skipped for a shipped model
        for need in TRAINING_NEEDS.get(stage, ()):
            if not world.is_built(need):
                run_stage(world, need, progress)
    facts = installed or builders[stage](world, progress) or {}
    seconds = time.perf_counter() - started
    log.info("toy world: %s built in %.1f s", stage, seconds)
    marker = world.stage_marker(stage)
    marker.parent.mkdir(exist_ok=True)
    marker.write_text(json.dumps({"seconds": round(seconds, 2), **facts}, indent=1))


def install_shipped(world: ToyWorld, stage: str) -> dict[str, Any] | None:
    """Install what the package ships for a model stage, or the metrics of shipped models; None if nothing.

    The metrics are a function of the recordings, the photos and the models: when all three
    models are the shipped ones, the figures measured when they were exported are this world's.
    """
    from birdsearch.toy import shipped as package

    if stage in MODEL_STAGES:
        return package.install(model_dirs(world)[stage], world.config.seed)
    if stage != "metrics":
        return None
    if all(json.loads(world.stage_marker(s).read_text()).get("shipped") for s in MODEL_STAGES):
        return package.install_file(world.metrics_json)
    return None


def model_dirs(world: ToyWorld) -> dict[str, Path]:
    """The folder each model stage writes."""
    students = {f"student-{variant}": world.student_dir_for(variant) for variant in STUDENT_VARIANTS}
    return {"teacher": world.teacher_dir, **students}


def write_world_json(world: ToyWorld) -> None:
    data = {k: v for k, v in world.config.to_dict().items() if k not in ("teacher", "student")}
    facts = {"data_key": world.config.data_key(), "code_version": CODE_VERSION, "data_config": data}
    world.world_json.write_text(json.dumps(facts, indent=1))


def stage_seconds(world: ToyWorld) -> dict[str, float]:
    """How long each built stage took, in seconds."""
    out = {}
    for stage in ALL_STAGES:
        marker = world.stage_marker(stage)
        if marker.is_file():
            out[stage] = json.loads(marker.read_text())["seconds"]
    return out
