"""Distillation runs end to end on tiny models and tones: result, log, cache, exact resume, kill, DDP."""

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
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


def test_the_encoder_keeps_its_training_windows_as_the_novelty_reference(world, reference):
    """Every window of every training clip (3 s clips, 2 s windows: 2 each), embedded by the saved encoder."""
    from birdsearch.model import audio
    from birdsearch.model.novelty import REFERENCE_CARD, load_reference

    out, _ = reference
    found = load_reference(out / "encoder")
    assert found is not None
    manifest = load_manifest(world["manifest"], world["taxa"])
    train = manifest.split("train")
    tower_dim = load_encoder(out / "encoder", "cpu").model.tower_dim  # the tiny tower's pooled width
    assert len(found.labels) == 2 * len(train) and found.dim == tower_dim
    assert sorted(found.labels.tolist()) == sorted([clip.species for clip in train for _ in range(2)])
    assert list(found.species) == [t.scientific for t in manifest.taxa]
    card = json.loads((out / "encoder" / REFERENCE_CARD).read_text())
    assert card["training_data_hash"] == manifest.digest() and card["split"] == "train"
    # The first reference window of one clip is that clip's window as the encoder embeds it.
    encoder = load_encoder(out / "encoder", "cpu")
    clip = train[0]
    samples = audio.load(clip.path, sample_rate=helpers.SAMPLE_RATE).samples
    windows = torch.as_tensor(audio.split(samples, helpers.SAMPLE_RATE, helpers.WINDOW_S).samples)
    _, tower = encoder.embed_with_tower(encoder.mel(windows))
    embedded = torch.nn.functional.normalize(tower.float(), dim=-1).numpy()
    nearest = (found.embeddings.astype(np.float32) @ embedded.T).max(axis=0)
    assert np.all(nearest > 0.999)  # float16 storage


def test_clips_that_fit_in_memory_are_decoded_once_with_the_same_result(
    world, reference, tmp_path, monkeypatch
):
    """Held in memory or decoded in loader workers every epoch: the same crops, the same weights."""
    from birdsearch.model.distill import data

    decodes = []
    read = data.read_segment
    monkeypatch.setattr(data, "read_segment", lambda clip, rate: decodes.append(clip) or read(clip, rate))
    # Training's reads only: the species classifier fitted after training reads its clips again.
    distill(config(world, tmp_path / "again", accumulate=2, workers=2, species_classifier=False))  # fits
    manifest = load_manifest(world["manifest"], world["taxa"])
    used = manifest.split("train") + manifest.split("val")
    assert sorted(map(str, decodes)) == sorted(map(str, used))  # once each, over 2 epochs and 2 validations
    assert_same_weights(weights(tmp_path / "again"), weights(reference[0]))
    monkeypatch.setattr(data, "PRELOAD_BYTES", 0)  # too big to hold: 2 forked workers decode
    decodes.clear()
    distill(config(world, tmp_path / "streamed", accumulate=2, workers=2, species_classifier=False))
    # The workers decoded for training, in their own processes; here, only the novelty reference
    # read each training clip, once, after training.
    assert sorted(map(str, decodes)) == sorted(map(str, manifest.split("train")))
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


def test_a_run_on_a_longer_schedule_is_that_runs_first_epochs(world, reference, tmp_path):
    """What the study trains after choosing an epoch count among a longer run's validations."""
    short = distill(config(world, tmp_path / "short", accumulate=2, epochs=1, schedule_epochs=2))
    assert short.steps == short.total_steps == 4

    def steps(run_dir):
        lines = [json.loads(x) for x in (Path(run_dir) / "log.jsonl").read_text().splitlines()]
        return [(line["loss"], line["lr"]) for line in lines if "loss" in line]

    assert steps(tmp_path / "short") == steps(reference[0])[:4]  # same losses, same learning rates
    assert short.history[0]["val_loss"] == reference[1].history[0]["val_loss"]
    with pytest.raises(ConfigError, match="schedule_epochs 1 is shorter"):
        config(world, tmp_path / "bad", epochs=2, schedule_epochs=1).validate()


def test_the_species_classifier_is_saved_beside_the_encoder_and_no_mode_is_chosen_without_photos(reference):
    encoder = load_encoder(reference[0] / "encoder", "cpu")
    head = encoder.species_head
    assert head is not None and head.species == [t.scientific for t in helpers.TAXA]
    assert all(head.has_audio) and head.weight.shape == (4, 24) and head.facts["val_clips"] == 4
    torch.testing.assert_close(head.weight.norm(dim=-1), torch.ones(4))
    modes = encoder.card.metrics["modes"]
    assert modes["default"] == "distilled" and "--val-gallery" in modes["why"] and modes["chosen_on"] is None


def test_the_recorded_default_mode_is_the_abstaining_one_with_the_best_validation_mAP(world, tmp_path):
    """Recompute every mode's validation mAP from the saved encoder and classifier: the default is the best
    of the modes that can abstain, and the record gives the others' mAP and why they are not served."""
    import numpy as np

    from birdsearch.model import metrics
    from birdsearch.model.distill.classifier import clip_vectors
    from birdsearch.model.gallery import from_manifest
    from birdsearch.model.species_head import ABSTAINING_MODES, ENCODER_MODES, default_mode, mode_queries
    from birdsearch.model.student import PROMPT, Student
    from birdsearch.model.teacher import Teacher

    gallery_manifest = helpers.write_gallery(tmp_path / "photos", per_species=3)
    distill(config(world, tmp_path / "run", val_gallery=str(gallery_manifest)))
    encoder = load_encoder(tmp_path / "run" / "encoder", "cpu")
    modes = encoder.card.metrics["modes"]
    assert set(modes["val_mAP"]) == set(ENCODER_MODES) and "4 validation clips" in modes["chosen_on"]
    student = Student.load(f"local-dir:{world['student']}", "cpu")
    manifest = load_manifest(world["manifest"], world["taxa"])
    teacher_species = species_targets(TargetSpec("teacher"), manifest.taxa, f"local-dir:{world['teacher']}",
                                      student.id, "cpu").embeddings  # fmt: skip
    gallery = from_manifest(gallery_manifest, Teacher.load(f"local-dir:{world['teacher']}", "cpu"))
    captions = student.embed_species(manifest.taxa, "com", PROMPT)
    queries = {"distilled": encoder, **mode_queries(
        encoder.species_head, [t.scientific for t in manifest.taxa], captions, teacher_species,
        float(student.model.logit_scale_a.exp()), 1 / encoder.card.training["final_temperature"],
        student=student, encoder=encoder)}  # fmt: skip
    val = manifest.split("val")
    labels, photo_labels = np.array([c.species for c in val]), gallery.labels(manifest.taxa)
    recomputed = {
        mode: metrics.retrieval_metrics(clip_vectors(q, val, student.front_end_config) @ gallery.vectors.T,
                                        labels, photo_labels)["mAP"]
        for mode, q in queries.items()
    }  # fmt: skip
    assert recomputed == pytest.approx(modes["val_mAP"], abs=1e-6)
    best = max(recomputed[m] for m in ABSTAINING_MODES)
    assert default_mode(encoder.card) == modes["default"] and modes["default"] in ABSTAINING_MODES
    assert recomputed[modes["default"]] == pytest.approx(best, abs=1e-6)
    assert "cannot abstain" in modes["why"]
    assert all(
        f"{m} {100 * recomputed[m]:.1f}" in modes["why"] for m in ENCODER_MODES if m not in ABSTAINING_MODES
    )


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
