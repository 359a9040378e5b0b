"""Distillation runs end to end on tiny models and tones: result, log, cache, exact resume, kill, DDP."""

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from birdsearch.errors import ConfigError
from birdsearch.model.distill.manifest import load_manifest
from birdsearch.model.distill.targets import TargetSpec, species_targets
from birdsearch.model.distill.trainer import DistillConfig, Trainer, distill
from birdsearch.model.encoder import WEIGHTS_FILE, load_encoder

sys.path.insert(0, str(Path(__file__).parent))
import conftest_distill as helpers  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("distill_world")
    paths = helpers.write_tone_world(root, clips_per_species=6, seconds=3.0)
    paths["student"] = helpers.save_tiny_student(root / "student", dropout=0.1)
    paths["student_nodrop"] = helpers.save_tiny_student(root / "student_nodrop", dropout=0.0)
    paths["teacher"] = helpers.save_tiny_teacher(root / "teacher")
    paths["cache"] = root / "cache"
    return paths


@pytest.fixture(autouse=True)
def cache_env(world, monkeypatch):
    monkeypatch.setenv("BIRDSEARCH_CACHE", str(world["cache"]))


def config(world, out, **overrides) -> DistillConfig:
    base = DistillConfig(
        manifest=str(world["manifest"]),
        taxa=str(world["taxa"]),
        out=str(out),
        teacher=f"local-dir:{world['teacher']}",
        student=f"local-dir:{world['student']}",
        epochs=2,
        batch_size=4,  # 16 training clips: 4 steps per epoch
        lr=1e-3,
        workers=0,
        log_every=1,
        checkpoint_every=1,
        device="cpu",
        progress=False,
    )
    return replace(base, **overrides)


def weights(run_dir) -> dict[str, torch.Tensor]:
    return load_file(Path(run_dir) / "encoder" / WEIGHTS_FILE)


def assert_same_weights(a, b, exact=True):
    assert a.keys() == b.keys()
    for key in a:
        if exact:
            assert torch.equal(a[key], b[key]), key
        else:
            torch.testing.assert_close(a[key], b[key], atol=2e-5, rtol=1e-4, msg=key)


@pytest.fixture(scope="module")
def reference(world, tmp_path_factory):
    """One uninterrupted run, the yardstick for the resume tests."""
    out = tmp_path_factory.mktemp("reference")
    with helpers.cache_root_at(world["cache"]):
        result = distill(config(world, out, accumulate=2))
    return out, result


def test_a_run_saves_an_encoder_with_its_card_and_a_log(world, reference):
    out, result = reference
    assert result.steps == result.total_steps == 8
    encoder = load_encoder(out / "encoder", "cpu")
    card = encoder.card
    manifest = load_manifest(world["manifest"], world["taxa"])
    assert card.training_data_hash == manifest.digest()
    assert card.training["objective"] == "batch" and card.training["accumulate"] == 2
    assert card.teacher["dim"] == 32 and card.teacher["id"].startswith("local-dir:")
    assert card.text_format == "taxon_com" and card.templates == "openai"
    assert set(card.metrics["val"]) >= {"val_loss", "val_top1", "val_cmAP"}
    lines = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    steps = [line for line in lines if "loss" in line]
    assert [line["step"] for line in steps] == list(range(1, 9))
    assert {"loss", "temperature", "lr", "clips_per_s"} <= steps[0].keys()
    assert sum("val_loss" in line for line in lines) == 2  # one validation per epoch
    windows = torch.zeros(2, helpers.SAMPLE_RATE * helpers.WINDOW_S)
    windows[:, ::50] = 0.3
    assert encoder.embed_windows(windows).shape == (2, 32)


def test_clips_that_fit_in_memory_are_decoded_once_with_the_same_result(
    world, reference, tmp_path, monkeypatch
):
    """Held in memory or decoded in loader workers every epoch: the same crops, the same weights."""
    from birdsearch.model.distill import data

    decodes = []
    read = data.read_segment
    monkeypatch.setattr(data, "read_segment", lambda clip, rate: decodes.append(clip) or read(clip, rate))
    distill(config(world, tmp_path / "again", accumulate=2, workers=2))  # fits: workers not needed
    manifest = load_manifest(world["manifest"], world["taxa"])
    used = manifest.split("train") + manifest.split("val")
    assert sorted(map(str, decodes)) == sorted(map(str, used))  # once each, over 2 epochs and 2 validations
    assert_same_weights(weights(tmp_path / "again"), weights(reference[0]))
    monkeypatch.setattr(data, "PRELOAD_BYTES", 0)  # too big to hold: 2 forked workers decode
    decodes.clear()
    distill(config(world, tmp_path / "streamed", accumulate=2, workers=2))
    assert decodes == []  # the workers decoded, in their own processes
    assert_same_weights(weights(tmp_path / "streamed"), weights(reference[0]))


def test_stopping_mid_epoch_and_resuming_gives_the_same_weights(world, reference, tmp_path):
    out = tmp_path / "resumed"
    first = distill(config(world, out, accumulate=2, stop_after=3))  # mid-epoch 0 (4 steps per epoch)
    assert first.encoder_dir is None and first.steps == 3
    second = distill(config(world, out, accumulate=2))
    assert second.steps == 8
    assert_same_weights(weights(out), weights(reference[0]))

    def losses(run_dir):
        lines = (Path(run_dir) / "log.jsonl").read_text().splitlines()
        return [json.loads(x)["loss"] for x in lines if '"loss"' in x]

    assert losses(out) == losses(reference[0])  # the log continues where it stopped, no duplicates


def test_killed_mid_epoch_then_resumed_gives_the_same_weights(world, reference, tmp_path):
    """SIGKILL the CLI after its second checkpoint, rerun the same command, compare with the reference."""
    out = tmp_path / "killed"
    command = [
        sys.executable, "-m", "birdsearch.cli", "distill", "--manifest", str(world["manifest"]),
        "--taxa", str(world["taxa"]), "--out", str(out), "--teacher", f"local-dir:{world['teacher']}",
        "--student", f"local-dir:{world['student']}", "--epochs", "2", "--batch-size", "4", "--accumulate", "2",
        "--lr", "1e-3", "--workers", "0", "--log-every", "1", "--checkpoint-every", "1", "--device", "cpu",
        "--no-progress",
    ]  # fmt: skip
    env = {**os.environ, "BIRDSEARCH_CACHE": str(world["cache"]), "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen([*command, "--stop-after", "1000"], env=env, cwd=REPO, stderr=subprocess.PIPE)
    target = out / "checkpoints" / "step-00000002.pt"
    deadline = time.monotonic() + 120
    while not target.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, process.stderr.read().decode()[-2000:]
    assert not (out / "encoder").exists()
    finished = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert json.loads(finished.stdout)["steps"] == 8
    assert_same_weights(weights(out), weights(reference[0]))


def test_resume_refuses_another_configuration(world, tmp_path):
    out = tmp_path / "run"
    distill(config(world, out, stop_after=1))
    with pytest.raises(ConfigError, match="another configuration.*lr"):
        distill(config(world, out, stop_after=2, lr=5e-4))


def test_procrustes_head_makes_step_zero_the_mapping_baseline(world, tmp_path):
    from birdsearch.model.student import Student
    from birdsearch.model.text_maps import fit_map

    trainer = Trainer(config(world, tmp_path / "r"))
    trainer.prepare()
    student = Student.load(f"local-dir:{world['student']}", "cpu")
    windows = torch.randn(3, helpers.SAMPLE_RATE * helpers.WINDOW_S) * 0.1
    captions = student.embed_species(trainer.manifest.taxa)
    mapped = fit_map("procrustes", captions, trainer.targets.embeddings)(student.embed_windows(windows))
    encoder = trainer.module.encoder.eval()
    with torch.no_grad():
        ours = encoder(student.mel(windows))
    torch.testing.assert_close(ours, mapped, atol=1e-5, rtol=1e-4)


def test_target_embeddings_are_cached_and_the_teacher_not_reloaded(world, tmp_path, monkeypatch):
    from birdsearch.model import teacher as teacher_module

    taxa = load_manifest(world["manifest"], world["taxa"]).taxa
    spec = TargetSpec("teacher", "taxon_com", "single")
    teacher, student = f"local-dir:{world['teacher']}", f"local-dir:{world['student']}"
    first = species_targets(spec, taxa, teacher, student, "cpu", tmp_path)
    monkeypatch.setattr(teacher_module.Teacher, "load", lambda *a, **k: pytest.fail("teacher reloaded"))
    again = species_targets(spec, taxa, teacher, student, "cpu", tmp_path)
    torch.testing.assert_close(again.embeddings, first.embeddings)
    assert (
        species_targets(TargetSpec("student-text"), taxa, teacher, student, "cpu", tmp_path).space["dim"]
        == 24
    )
    # another name format is another key
    monkeypatch.undo()
    assert (
        species_targets(TargetSpec("teacher", "sci", "single"), taxa, teacher, student, "cpu", tmp_path).key
        != first.key
    )


def test_rotated_target_keeps_geometry_but_leaves_the_space(world, tmp_path):
    taxa = load_manifest(world["manifest"], world["taxa"]).taxa
    teacher, student = f"local-dir:{world['teacher']}", f"local-dir:{world['student']}"
    plain = species_targets(TargetSpec("teacher"), taxa, teacher, student, "cpu", tmp_path).embeddings
    rotated = species_targets(
        TargetSpec("rotated-teacher"), taxa, teacher, student, "cpu", tmp_path
    ).embeddings
    torch.testing.assert_close(rotated @ rotated.T, plain @ plain.T, atol=1e-5, rtol=1e-5)
    assert (rotated * plain).sum(-1).abs().max() < 0.9


def test_ddp_on_two_cpu_processes_equals_one_process(world, tmp_path):
    """torchrun, 2 processes, gloo: the same global batches give the same weights as one process."""
    common = dict(
        student=f"local-dir:{world['student_nodrop']}", objective="batch", epochs=1, checkpoint_every=0
    )
    single = tmp_path / "single"
    distill(config(world, single, **common))
    two = tmp_path / "two"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
        "-m", "birdsearch.cli", "distill", "--manifest", str(world["manifest"]), "--taxa", str(world["taxa"]),
        "--out", str(two), "--teacher", f"local-dir:{world['teacher']}", "--student", common["student"],
        "--objective", "batch", "--epochs", "1", "--batch-size", "4", "--lr", "1e-3", "--workers", "0",
        "--checkpoint-every", "0", "--device", "cpu", "--no-progress",
    ]  # fmt: skip
    env = {
        **os.environ,
        "BIRDSEARCH_CACHE": str(world["cache"]),
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
    }
    finished = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-3000:]
    card = json.loads((two / "encoder" / "card.json").read_text())
    assert card["training"]["world_size"] == 2
    assert_same_weights(weights(two), weights(single), exact=False)
