"""The toy models the package ships: installed bit-identical instead of trained, and current."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from birdsearch.errors import ConfigError
from birdsearch.model.calibration import load_calibration
from birdsearch.model.novelty import load_open_set
from birdsearch.toy import build, shipped
from birdsearch.toy.config import tiny_config
from birdsearch.toy.export import export, reexport_calibration
from birdsearch.toy.world import MODEL_STAGES, ensure_world, model_dirs, open_world


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    """The tiny world with its three models trained here, and their metrics.

    In a cache of its own: in the session's cache another test may have installed the shipped tiny
    models already, and then nothing would train.
    """
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("BIRDSEARCH_CACHE", str(tmp_path_factory.mktemp("trained-cache")))
        world = ensure_world(tiny_config(), progress=False, train=True)
    assert not json.loads(world.stage_marker("teacher").read_text()).get("shipped")
    return world


@pytest.fixture
def packed(tiny_models, tmp_path) -> Path:
    """The tiny world's models packed as the package ships them, in a folder of their own."""
    root = tmp_path / "shipped"
    for stage, directory in model_dirs(tiny_models).items():
        facts = json.loads(tiny_models.stage_marker(stage).read_text())
        shipped.pack(directory, root / directory.name, facts, tiny_models.config.seed)
    shutil.copyfile(tiny_models.metrics_json, root / tiny_models.metrics_json.name)
    return root


def test_shipped_models_install_bit_identical_and_nothing_trains(tiny_models, packed, tmp_path, monkeypatch):
    monkeypatch.setattr(shipped, "SHIPPED_ROOT", packed)
    monkeypatch.setenv("BIRDSEARCH_CACHE", str(tmp_path / "fresh"))

    def refuse(world, progress):
        raise AssertionError("trained or drew the training recordings although the models ship")

    for stage in (*MODEL_STAGES, "metrics", "student-audio"):
        monkeypatch.setitem(build.STAGE_BUILDERS, stage, refuse)
    fresh = ensure_world(tiny_config(), progress=False)
    assert fresh.root != tiny_models.root
    assert fresh.metrics_json.read_bytes() == tiny_models.metrics_json.read_bytes()
    assert not fresh.is_built("student-audio"), "installed students need no training recordings"
    for stage, directory in model_dirs(fresh).items():
        original = model_dirs(tiny_models)[stage]
        assert sorted(p.name for p in directory.iterdir()) == sorted(p.name for p in original.iterdir())
        for path in original.iterdir():
            assert (directory / path.name).read_bytes() == path.read_bytes(), path.name
        assert json.loads(fresh.stage_marker(stage).read_text())["shipped"] is True
    teacher = model_dirs(tiny_models)["teacher"]
    stored = sum(p.stat().st_size for p in (packed / teacher.name).iterdir())
    assert stored < 0.2 * sum(p.stat().st_size for p in teacher.iterdir())  # float16, changed token rows


def test_an_installed_encoder_names_this_caches_distillation_manifest(tmp_path, monkeypatch):
    """Not the exporting machine's path: the card points at the recordings this cache holds."""
    monkeypatch.setenv("BIRDSEARCH_CACHE", str(tmp_path / "cache"))
    world = open_world("tiny")
    (name,) = {name for name in shipped_names(world) if name.startswith("encoder-realistic")}
    settings = json.loads((shipped.SHIPPED_ROOT / name / shipped.FACTS_FILE).read_text())["build"]["distill"]
    target = tmp_path / "encoder"
    assert shipped.install_encoder(world, "realistic", settings, target)
    card = json.loads((target / "card.json").read_text())
    assert card["training"]["manifest"] == str(world.distill_manifest)
    assert card["training_data_hash"]  # what identifies the data, unchanged by the move


def test_rebuild_trains_although_the_models_ship(tiny_models, packed, tmp_path, monkeypatch):
    monkeypatch.setattr(shipped, "SHIPPED_ROOT", packed)
    monkeypatch.setenv("BIRDSEARCH_CACHE", str(tmp_path / "fresh"))
    trained = []
    monkeypatch.setitem(build.STAGE_BUILDERS, "teacher", lambda world, progress: trained.append(1) or {})
    world = ensure_world(tiny_config(), stages=("teacher",), rebuild=True, progress=False)
    assert trained == [1] and "shipped" not in json.loads(world.stage_marker("teacher").read_text())


def test_a_damaged_shipped_model_is_trained_instead(tiny_models, packed, tmp_path, caplog):
    teacher = model_dirs(tiny_models)["teacher"]
    weights = packed / teacher.name / "open_clip_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0xFF  # a weight's last bytes: still a valid file, no longer the same model
    weights.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING):
        facts = shipped.install(tmp_path / "installed" / teacher.name, tiny_models.config.seed, root=packed)
    assert facts is None and "training it instead" in caplog.text
    assert not (tmp_path / "installed" / teacher.name).exists()
    assert shipped.install(tmp_path / "elsewhere" / "teacher-unknown", 0, root=packed) is None


def test_weights_that_float16_would_change_are_refused(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    save_file({"w": torch.full((2, 2), 1 / 3)}, model / "model.safetensors")
    with pytest.raises(ConfigError, match="round_to_half"):
        shipped.pack(model, tmp_path / "out", {}, seed=0)
    shipped.pack(model, tmp_path / "out", {}, seed=0, rounding=True)  # an encoder is rounded when packed
    assert (tmp_path / "out" / shipped.FACTS_FILE).is_file()


def test_the_token_table_start_is_float16_exact_and_seeded():
    table = shipped.token_table(0, 8, 4)
    assert table.dtype == np.float32 and np.array_equal(table.astype(np.float16).astype(np.float32), table)
    assert np.array_equal(table, shipped.token_table(0, 8, 4))
    assert not np.array_equal(table, shipped.token_table(1, 8, 4))


PRESETS = ("default", "small", "tiny")


def shipped_names(world) -> set[str]:
    """The shipped folders and files ``world`` uses: its models, their metrics, the demo's encoders.

    An encoder's name hashes its distillation settings, which depend on the world's data (the batch
    is capped at the training clips); they are read from the shipped encoder's build facts.
    """
    names = {directory.name for directory in model_dirs(world).values()} | {world.metrics_json.name}
    for folder in shipped.SHIPPED_ROOT.glob("encoder-*"):
        variant = folder.name.split("-")[1]
        settings = json.loads((folder / shipped.FACTS_FILE).read_text())["build"]["distill"]
        if shipped.encoder_dir_name(world, variant, settings) == folder.name:
            names.add(folder.name)
            names.add(shipped.calibration_dir_name(world, settings))
    return names


@pytest.mark.parametrize("preset", PRESETS)
def test_the_package_ships_each_presets_current_models(preset):
    """Fails when a generator or trainer changed (a new key) and the models were not exported again.

    The small and tiny presets ship too, so that the tests and the study train none of their models.
    """
    world = open_world(preset)
    names = shipped_names(world)
    present = {p.name for p in shipped.SHIPPED_ROOT.iterdir()}
    missing = {d.name for d in model_dirs(world).values()} | {world.metrics_json.name}
    missing -= present
    encoders = {name.split("-")[1] for name in names if name.startswith("encoder-")}
    assert not missing and encoders == {"realistic", "perfect"}, (
        f"run: python -m birdsearch.toy.export --preset {preset} (missing {missing}, encoders {encoders})"
    )
    calibrations = {name for name in names if name.startswith("calibration-")}
    assert calibrations <= present and len(calibrations) == 1, (
        f"run: python -m birdsearch.toy.export --preset {preset} --calibration"
    )
    size = sum(p.stat().st_size for name in names for p in (shipped.SHIPPED_ROOT / name).glob("*"))
    assert size < 8e6


def test_nothing_ships_that_no_preset_uses():
    """An export for an older key leaves folders behind; they would only grow the package."""
    used = set().union(*(shipped_names(open_world(preset)) for preset in PRESETS))
    present = {p.name for p in shipped.SHIPPED_ROOT.iterdir() if p.name != "__pycache__"}
    assert present <= used, f"delete {sorted(present - used)} from {shipped.SHIPPED_ROOT}"


def test_the_shipped_calibration_is_what_the_demo_fits_now(toy_cache, tmp_path):
    """Fails when the engine's scoring or the demo's fit changed and the calibration was not exported again.

    Tolerance: a Platt fit of scores that differ in their last float32 bits (another thread count or
    CPU kind) moves its parameters by far less than 0.1 %.
    """
    fitted = reexport_calibration("tiny", out_root=tmp_path)
    fix = "run: python -m birdsearch.toy.export --preset tiny --calibration"
    for mode, where in [
        ("distilled", "encoder"),
        ("classifier", "encoder"),
        ("hybrid", "encoder"),
        ("cascade", "index"),
    ]:
        now = load_calibration(fitted / f"{where}.calibration.json")[mode]
        before = load_calibration(shipped.SHIPPED_ROOT / fitted.name / f"{where}.calibration.json")[mode]
        assert now.features == before.features, fix
        np.testing.assert_allclose([*now.weights, now.bias], [*before.weights, before.bias], rtol=1e-3)
        gate_now = load_open_set(fitted / f"{where}.open_set.json")[mode]
        gate_before = load_open_set(shipped.SHIPPED_ROOT / fitted.name / f"{where}.open_set.json")[mode]
        assert (gate_now.signal, gate_now.params) == (gate_before.signal, gate_before.params), fix
        np.testing.assert_allclose(gate_now.threshold, gate_before.threshold, rtol=1e-3)


@pytest.mark.slow
def test_rebuilding_from_scratch_reproduces_the_shipped_models(toy_cache, tmp_path, monkeypatch):
    """One thread, as the shipped models were made: every weights file hashes the same.

    Tolerance: on the same thread count and CPU kind, zero (the same SHA-256); a CPU with other
    vector units may move the last bits of float sums, so on a mismatch the rebuilt models must
    still name the held-out photos and recordings within 3 points of the shipped ones.
    """
    from birdsearch.toy.metrics import measure_world

    monkeypatch.setenv("BIRDSEARCH_TOY_THREADS", "1")
    monkeypatch.setenv("BIRDSEARCH_CACHE", str(tmp_path / "rebuilt"))
    written = export("default", out_root=tmp_path / "shipped")
    differ = []
    # The metrics file and the calibration fits hold no weights (the fits: compared by
    # test_the_shipped_calibration_is_what_the_demo_fits_now).
    for folder in (p for p in written if p.is_dir() and not p.name.startswith("calibration-")):
        rebuilt = json.loads((folder / shipped.FACTS_FILE).read_text())["weights"]
        original = json.loads((shipped.SHIPPED_ROOT / folder.name / shipped.FACTS_FILE).read_text())[
            "weights"
        ]
        differ += [
            f"{folder.name}/{name}" for name in rebuilt if rebuilt[name]["sha256"] != original[name]["sha256"]
        ]
    if not differ:
        return
    world = open_world("default")
    rebuilt_metrics = measure_world(world)
    monkeypatch.setenv("BIRDSEARCH_CACHE", str(tmp_path / "installed"))
    installed = ensure_world("default", progress=False)
    for part, figures in measure_world(installed).items():
        for name, value in figures.items():
            if name.startswith("zero_shot_top1"):
                assert abs(rebuilt_metrics[part][name] - value) <= 0.03, (differ, part, name)
