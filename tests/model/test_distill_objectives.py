"""The InfoNCE objectives, the learnable temperature, the schedule and the replayable data order."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from birdsearch.model.distill import data
from birdsearch.model.distill.objectives import LogitScale, batch_infonce, class_infonce
from birdsearch.model.distill.trainer import lr_lambda


def unit(*shape, seed=0):
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


def test_class_infonce_is_cross_entropy_over_all_species():
    audio, targets, labels = unit(5, 8), unit(7, 8, seed=1), torch.tensor([0, 3, 3, 6, 1])
    scale = torch.tensor(10.0)
    manual = -torch.log_softmax(10 * audio @ targets.T, dim=1)[torch.arange(5), labels].mean()
    torch.testing.assert_close(class_infonce(audio, targets, labels, scale), manual)


def test_batch_infonce_with_distinct_species_is_clips_symmetric_loss():
    audio, targets = unit(4, 8), unit(6, 8, seed=1)
    labels = torch.tensor([5, 0, 2, 3])
    scale = torch.tensor(14.0)
    logits = scale * audio @ targets[labels].T  # CLIP: the i-th clip's text is the i-th text
    expected = (F.cross_entropy(logits, torch.arange(4)) + F.cross_entropy(logits.T, torch.arange(4))) / 2
    torch.testing.assert_close(batch_infonce(audio, targets, labels, scale), expected)


def test_batch_infonce_counts_same_species_clips_as_positives_not_negatives():
    targets = unit(3, 8, seed=1)
    audio = torch.stack([targets[0], targets[0], targets[1]])  # two perfect clips of species 0
    loss = batch_infonce(audio, targets, torch.tensor([0, 0, 1]), torch.tensor(100.0))
    assert float(loss) < 1e-3  # nothing to fix: a duplicate species is no negative


def test_logit_scale_starts_at_one_over_0_07_and_is_clamped():
    scale = LogitScale(0.07, max_scale=100.0)
    assert float(scale().detach()) == pytest.approx(1 / 0.07)
    with torch.no_grad():
        scale.log_scale.fill_(10.0)
    assert float(scale().detach()) == 100.0


def test_warmup_then_cosine():
    factor = lr_lambda(total_steps=100, warmup_steps=10, min_ratio=0.1)
    assert factor(0) == pytest.approx(0.1)
    assert factor(9) == pytest.approx(1.0)
    assert factor(55) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert factor(100) == pytest.approx(0.1)


def test_epoch_order_and_crops_depend_only_on_seed_epoch_and_index():
    assert (data.epoch_order(50, 3, 2) == data.epoch_order(50, 3, 2)).all()
    assert not (data.epoch_order(50, 3, 2) == data.epoch_order(50, 3, 1)).all()
    a = data.crop_generator(0, 1, 7).integers(0, 1000, 5)
    b = data.crop_generator(0, 1, 7).integers(0, 1000, 5)
    assert (a == b).all()


def test_ranks_split_each_global_batch_and_resume_skips_exactly():
    plan = data.BatchPlan(clips=37, batch_size=8, world_size=2, accumulate=2)
    assert (plan.micro_batch, plan.micro_batches_per_epoch, plan.steps_per_epoch) == (2, 9, 4)
    single = list(data.MicroBatches(data.BatchPlan(37, 8, 1, 2), 0, epoch=1, rank=0))
    rank0 = list(data.MicroBatches(plan, 0, epoch=1, rank=0))
    rank1 = list(data.MicroBatches(plan, 0, epoch=1, rank=1))
    # two ranks' micro-batches of 2 are a single process's micro-batches of 4, split
    for one, a, b in zip(single, rank0, rank1, strict=False):
        assert sorted(one) == sorted(a + b)
    resumed = list(data.MicroBatches(plan, 0, epoch=1, rank=0, start=4))
    assert resumed == rank0[4:]
    assert len(rank0) == plan.steps_per_epoch * plan.accumulate  # the leftover micro-batch is dropped


def test_dataset_crops_are_fixed_per_key(tmp_path):
    import soundfile as sf

    from birdsearch.model.distill.manifest import Clip

    path = tmp_path / "long.wav"
    sf.write(path, np.random.default_rng(0).standard_normal(16_000 * 3).astype(np.float32) * 0.1, 16_000)
    dataset = data.ClipDataset([Clip(path, 2)], sample_rate=16_000, window_samples=16_000, seed=5)
    first, label = dataset[(0, 0)]
    assert label == 2 and first.shape == (16_000,)
    torch.testing.assert_close(dataset[(0, 0)][0], first)
    assert not torch.equal(dataset[(1, 0)][0], first)  # another epoch, another crop
