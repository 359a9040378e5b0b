"""The open world: separate from the world (nothing of it changes), lazy, seeded, split by kind and species."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from birdsearch.model.audio import load
from birdsearch.toy import openset
from birdsearch.toy.open_sounds import NON_BIRD_KINDS, SHIFT_KINDS
from birdsearch.toy.world import ALL_STAGES, OPEN_STAGES, ensure_world, open_world


def rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def tree_digest(root: Path, skip: str) -> dict[str, str]:
    """SHA-256 of every file below ``root`` except those under a folder whose name starts with ``skip``."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.relative_to(root).parts[0].startswith(skip) and ".stages" not in p.parts
    }


def built_stages(world) -> list[str]:
    """The world's stages built so far, the open world's left out."""
    return sorted(stage for stage in ALL_STAGES if stage not in OPEN_STAGES and world.is_built(stage))


@pytest.fixture(scope="module")
def open_tiny(tiny_world, tmp_path_factory):
    """The tiny world's data, then its open world: the world's files hashed before and after.

    The world is copied, without any open world, into a cache of this module's own: other tests
    (fitting open-set gates) may have drawn the session's open world already.
    """
    cache = tmp_path_factory.mktemp("open-cache")
    private_root = cache / tiny_world.root.relative_to(tiny_world.root.parents[1])
    shutil.copytree(tiny_world.root, private_root, ignore=shutil.ignore_patterns("open-*"))
    previous = os.environ["BIRDSEARCH_CACHE"]
    os.environ["BIRDSEARCH_CACHE"] = str(cache)
    try:
        world = open_world("tiny")
        assert world.root == private_root
        before, stages_before = tree_digest(world.root, "open-"), built_stages(world)
        assert not any(world.is_built(stage) for stage in OPEN_STAGES), (
            "the open world is built only when asked"
        )
        ensure_world("tiny", stages=OPEN_STAGES, progress=False)
        yield world, before, stages_before
    finally:
        os.environ["BIRDSEARCH_CACHE"] = previous


def test_building_the_open_world_changes_nothing_of_the_world(open_tiny):
    world, before, stages_before = open_tiny
    assert tree_digest(world.root, "open-") == before
    assert world.open_dir.parent == world.root and world.open_dir.name.startswith("open-")
    assert all(world.is_built(stage) for stage in OPEN_STAGES)
    assert built_stages(world) == stages_before, "asking for the open world builds nothing of the world"


def test_splits_are_disjoint_by_kind_and_species(open_tiny):
    world, *_ = open_tiny
    val, test = (rows(world.open_manifest(split)) for split in openset.SPLITS)
    assert list(val[0]) == list(openset.OPEN_COLUMNS)
    for group in openset.GROUPS:
        assert {r["variant"] for r in val if r["group"] == group}.isdisjoint(
            {r["variant"] for r in test if r["group"] == group}
        ), group
    for split_rows in (val, test):
        kinds = {r["kind"] for r in split_rows}
        assert set(NON_BIRD_KINDS) | set(SHIFT_KINDS) <= kinds, "every kind in both splits"
    gallery = {t.scientific for t in world.taxa}
    genera = {t.genus for t in world.taxa}
    outside = [r for r in val + test if r["group"] == "out_of_gallery"]
    assert not {r["species"] for r in outside} & gallery
    assert {r["kind"] for r in outside} == {"same_genus", "new_genus"}
    for r in outside:
        assert (r["species"].split()[0] in genera) == (r["kind"] == "same_genus")
    shifted = {split: {r["species"] for r in split_rows if r["group"] == "shifted"} for split, split_rows in
               (("val", val), ("test", test))}  # fmt: skip
    assert shifted["val"] <= gallery and shifted["test"] <= gallery
    assert not shifted["val"] & shifted["test"], (
        "a shifted recorder hears other species in validation and test"
    )


def test_recordings_decode_and_last_as_configured(open_tiny):
    world, *_ = open_tiny
    low, high = openset.open_config(world).recording_s
    for split in openset.SPLITS:
        for r in rows(world.open_manifest(split)):
            rec = load(r["path"], sample_rate=48_000)
            assert low - 0.01 <= rec.duration_s <= high + 0.01, r["path"]
            if r["kind"] == "band_limited":
                assert rec.source_rate < 48_000


def test_the_open_world_is_seeded(open_tiny, tmp_path, monkeypatch):
    """Drawn again in another cache: the same bytes (Ogg serials fixed, every stream seeded)."""
    world, *_ = open_tiny
    monkeypatch.setenv("BIRDSEARCH_CACHE", str(tmp_path))
    again = ensure_world("tiny", stages=("open-val",), progress=False)
    assert again.open_dir.name == world.open_dir.name
    ours, theirs = rows(world.open_manifest("val")), rows(again.open_manifest("val"))
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs, strict=True):
        assert Path(a["path"]).name == Path(b["path"]).name
        assert Path(a["path"]).read_bytes() == Path(b["path"]).read_bytes(), a["path"]
    facts = json.loads(again.stage_marker("open-val").read_text())
    assert facts["open_key"] == openset.open_key(again) and facts["recordings"] == len(theirs)


def test_out_of_gallery_species_are_named_apart_from_the_gallery():
    world = open_world("default")
    outside = openset.outside_species(world)
    config = openset.open_config(world)
    assert len(outside) == config.sibling_species + config.new_genera * config.species_per_new_genus
    names = [sp.scientific for sp in outside] + [sp.scientific for sp in world.species]
    commons = [sp.common for sp in outside] + [sp.common for sp in world.species]
    assert len(set(names)) == len(names) and len(set(commons)) == len(commons)
    assert {sp.split for sp in outside} == {"val", "test"}
