"""Training data: clips decoded and resampled, cropped, batched in a replayable order.

Clips whose decoded audio fits in ``PRELOAD_BYTES`` are decoded once and held in memory (a toy world,
a small labelled set): forking loader workers every epoch to decode them again cost more than the
training itself (the demo's 15-epoch tiny distillation: 14 s with 2 workers, 2.5 s decoded once). Larger
sets are decoded in loader workers, epoch after epoch.

Exact resume needs the data to be a pure function of (seed, epoch, position). So:

- the order of an epoch is a permutation drawn from ``(seed, epoch)`` alone;
- each clip's random crop draws from its own generator seeded by ``(seed, epoch, clip index)``, so it
  does not matter which worker loads it, or whether the run was interrupted before;
- a global micro-batch is the next ``batch × world`` clips of the permutation, and rank r takes every
  world-th of them, so the global batch is the same on one device or on many.

Resuming at optimizer step s is then: start epoch ``s // steps_per_epoch`` at micro-batch
``(s % steps_per_epoch) × accumulate``. Nothing here touches the global RNGs.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from birdsearch.errors import AudioError, CorruptAudioError, UnsupportedAudioError
from birdsearch.model.audio import random_crop, resample, split, to_mono
from birdsearch.model.distill.manifest import Clip
from birdsearch.workers import die_with_parent

VALIDATION_EPOCH = -1  # the "epoch" whose crops validation uses every time: fixed crops
PRELOAD_BYTES = 512 * 2**20  # decoded float32 audio held in memory when a set fits in this


def read_segment(clip: Clip, sample_rate: int) -> np.ndarray:
    """Decode ``clip`` (only its [start, end] segment when given), downmix, resample to ``sample_rate``."""
    import soundfile as sf

    try:
        with sf.SoundFile(str(clip.path)) as f:
            rate = f.samplerate
            start = round(clip.start_s * rate) if clip.start_s is not None else 0
            stop = min(round(clip.end_s * rate), f.frames) if clip.end_s is not None else f.frames
            if start:
                f.seek(start)
            data = f.read(max(0, stop - start), dtype="float32", always_2d=True)
    except sf.LibsndfileError as e:
        raise UnsupportedAudioError(f"{clip.path}: cannot decode ({e})") from e
    except (RuntimeError, ValueError, EOFError) as e:
        raise CorruptAudioError(f"{clip.path}: cannot decode ({e})") from e
    if data.shape[0] == 0:
        raise CorruptAudioError(f"{clip.path}: no samples in [{clip.start_s}, {clip.end_s}] s")
    return resample(to_mono(data), rate, sample_rate)


def windows_of(clip: Clip, front_end: Any) -> np.ndarray:
    """A clip (or segment) as (n, W) windows of ``front_end`` (a ``FrontEndConfig``): repeat-padded when
    short, cut without overlap when long, as a query is cut."""
    samples = read_segment(clip, front_end.sample_rate)
    return split(samples, front_end.sample_rate, front_end.window_s).samples


def crop_generator(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The crop generator of one clip in one epoch (validation: ``VALIDATION_EPOCH``)."""
    return np.random.default_rng([seed, epoch + 1, index])


class ClipDataset(torch.utils.data.Dataset):
    """Keys ``(epoch, index)`` to ``(window (W,) float32, species)``: a random ``W``-sample crop."""

    def __init__(self, clips: Sequence[Clip], sample_rate: int, window_samples: int, seed: int):
        self.clips = list(clips)
        self.sample_rate = sample_rate
        self.window_samples = window_samples
        self.seed = seed
        self.decoded: list[np.ndarray] | None = None  # every clip's samples, once ``preload`` ran

    def __len__(self) -> int:
        return len(self.clips)

    def decoded_bytes(self) -> int:
        """The size of every clip decoded at the front end's rate, from the files' headers."""
        import soundfile as sf

        total = 0
        for clip in self.clips:
            try:
                info = sf.info(str(clip.path))
            except (sf.LibsndfileError, RuntimeError) as e:
                raise UnsupportedAudioError(f"{clip.path}: cannot decode ({e})") from e
            seconds = info.frames / info.samplerate
            if clip.end_s is not None:
                seconds = min(seconds, clip.end_s)
            seconds -= clip.start_s or 0.0
            total += 4 * round(max(seconds, 0.0) * self.sample_rate)
        return total

    def preload(self) -> None:
        """Decode every clip now and keep it: later epochs only crop."""
        self.decoded = [self.samples(index) for index in range(len(self.clips))]

    def samples(self, index: int) -> np.ndarray:
        if self.decoded is not None:
            return self.decoded[index]
        clip = self.clips[index]
        try:
            return read_segment(clip, self.sample_rate)
        except AudioError:
            raise
        except Exception as e:  # anything else from a decoder, with the file named
            raise CorruptAudioError(f"{clip.path}: cannot decode ({e})") from e

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, int]:
        epoch, index = key
        clip = self.clips[index]
        window = random_crop(
            self.samples(index), self.window_samples, crop_generator(self.seed, epoch, index)
        )
        return torch.from_numpy(np.ascontiguousarray(window, dtype=np.float32)), clip.species


def collate(batch: list[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    windows, labels = zip(*batch, strict=True)
    return torch.stack(windows), torch.tensor(labels, dtype=torch.long)


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The permutation of ``n`` clips that epoch ``epoch`` visits."""
    return np.random.default_rng([seed, epoch + 1, 0x5EED]).permutation(n)


@dataclass(frozen=True)
class BatchPlan:
    """How clips become micro-batches and optimizer steps."""

    clips: int  # training clips
    batch_size: int  # clips per optimizer step, over all devices and accumulation
    world_size: int  # data-parallel processes
    accumulate: int  # micro-batches per optimizer step

    @property
    def micro_batch(self) -> int:
        """Clips per device per forward pass."""
        return self.batch_size // (self.world_size * self.accumulate)

    @property
    def global_micro_batch(self) -> int:
        return self.micro_batch * self.world_size

    @property
    def micro_batches_per_epoch(self) -> int:
        return self.clips // self.global_micro_batch

    @property
    def steps_per_epoch(self) -> int:
        return self.micro_batches_per_epoch // self.accumulate


class MicroBatches:
    """This rank's micro-batches of one epoch, from micro-batch ``start`` on (a batch sampler)."""

    def __init__(self, plan: BatchPlan, seed: int, epoch: int, rank: int, start: int = 0):
        self.plan, self.seed, self.epoch, self.rank, self.start = plan, seed, epoch, rank, start

    def __len__(self) -> int:
        return self.plan.steps_per_epoch * self.plan.accumulate - self.start

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        order = epoch_order(self.plan.clips, self.seed, self.epoch)
        size, world = self.plan.global_micro_batch, self.plan.world_size
        for micro in range(self.start, self.plan.steps_per_epoch * self.plan.accumulate):
            chunk = order[micro * size : (micro + 1) * size]
            yield [(self.epoch, int(i)) for i in chunk[self.rank :: world]]


def loader(
    dataset: ClipDataset, batches: Sequence | MicroBatches, workers: int, pin_memory: bool, seed: int
) -> torch.utils.data.DataLoader:
    """A DataLoader over explicit batches, with its own generator so the global RNG is left alone."""
    return torch.utils.data.DataLoader(
        dataset,
        batch_sampler=batches,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=pin_memory,
        generator=torch.Generator().manual_seed(seed),
        persistent_workers=False,
        prefetch_factor=4 if workers > 0 else None,
        worker_init_fn=functools.partial(die_with_parent, parent=os.getpid()),
    )


def validation_batches(n: int, batch_size: int) -> list[list[tuple[int, int]]]:
    """All ``n`` validation clips in order, with the fixed validation crops."""
    return [
        [(VALIDATION_EPOCH, i) for i in range(s, min(n, s + batch_size))] for s in range(0, n, batch_size)
    ]
