"""The toy world plugs into the core: ``toy[:VARIANT]`` model specs and the ``toy[:PRESET]`` data set.

``register()`` only records two functions; the world (and torch) is imported, and built if missing,
when a ``toy`` spec or data set is first asked for. The console script calls it once at start, and
so do the tests; other processes find it through ``BIRDSEARCH_PLUGINS`` (see
``birdsearch.model.registry``).
"""

from __future__ import annotations

from pathlib import Path

from birdsearch.model import hub, registry

NAME = "toy"


def register() -> None:
    """Register the ``toy`` spec source and data set; cheap, and harmless to repeat."""
    hub.register_spec_source(NAME, toy_model, hint="'{flag} toy' uses the offline toy model")
    registry.register_data_set(NAME, toy_data)
    registry.announce(__name__)


def toy_model(kind: str, variant: str | None) -> Path:
    """A toy model's directory (``birdsearch.toy.models`` has the variant grammar), built on first use."""
    from birdsearch.toy.models import toy_model_dir

    return toy_model_dir(kind, variant)


def toy_data(variant: str | None, progress: bool = True) -> registry.DataBundle:
    """A toy world preset ("default" for plain ``toy``) as a data set, built on first use."""
    from birdsearch.toy.world import ensure_world

    preset = variant or "default"
    world = ensure_world(preset, progress=progress)
    return registry.DataBundle(
        name=f"toy-{preset}",
        taxa=world.taxa_csv,
        train_manifest=world.distill_manifest,
        query_manifest=world.query_manifest,
        gallery_manifest=world.gallery_manifest,
        soundscape_annotations=world.soundscape_annotations,
        soundscape_dir=world.soundscape_dir,
        models={
            "teacher": world.teacher_spec,
            "student": world.student_spec,
            "perfect_student": world.perfect_student_spec,
        },
        facts={"world": str(world.root)},
    )
