"""An uploaded recording on its way to the model: probed, decoded within a memory budget, windowed.

Memory stays bounded whatever clients send: the body limit caps the upload, the header (read before
decoding) caps what decoding it will take, and a server-wide byte budget caps the decoded audio of
all requests in flight together, so a burst of long recordings waits its turn instead of exhausting
memory. Windows are views into the decoded samples (the last, padded one a copy); only a batch's
worth is ever copied.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from birdsearch.engine.errors import BadParameterError
from birdsearch.errors import AudioTooLongError
from birdsearch.model import audio

FLOAT_BYTES = 4
UNKNOWN_SIZE_ESTIMATE = 16 * 2**20  # what a file whose header cannot be read is charged (it fails fast)


@dataclass(frozen=True)
class Header:
    """What a recording's header says, read without decoding it."""

    frames: int
    channels: int
    sample_rate: int

    def decode_bytes(self, target_rate: int) -> int:
        """Peak bytes decoding needs: all channels, the mono mix and the resampled mono copy."""
        resampled = math.ceil(self.frames * target_rate / max(1, self.sample_rate))
        return FLOAT_BYTES * (self.frames * self.channels + self.frames + resampled)


def read_header(file: BinaryIO) -> Header | None:
    """The header of an upload, or None when it cannot be read (decoding will then say why)."""
    import soundfile as sf

    try:
        file.seek(0)
        with sf.SoundFile(file) as f:
            return Header(int(f.frames), int(f.channels), int(f.samplerate))
    except Exception:  # any failure here is reported, typed, by the real decode
        return None
    finally:
        file.seek(0)


def decode(file: BinaryIO, sample_rate: int, limits: audio.AudioLimits) -> audio.Recording:
    """Decode an upload to mono float32 at ``sample_rate`` (typed AudioErrors for bad input)."""
    file.seek(0)
    return audio.load(file, sample_rate=sample_rate, limits=limits)


class MemoryBudget:
    """An async semaphore counted in bytes: holders wait until their share fits."""

    def __init__(self, capacity: int, per_request: int):
        self.capacity = capacity
        self.per_request = min(per_request, capacity)
        self.used = 0
        self._changed = asyncio.Condition()

    @asynccontextmanager
    async def hold(self, nbytes: int) -> AsyncIterator[None]:
        """Reserve ``nbytes`` for the duration of the block; refuse what could never fit."""
        if nbytes > self.per_request:
            raise AudioTooLongError(
                f"decoding this upload needs about {nbytes / 2**20:.0f} MiB, above the "
                f"{self.per_request / 2**20:.0f} MiB limit (BIRDSEARCH_MAX_DECODED_BYTES); "
                "send fewer channels, a lower sample rate or a shorter recording"
            )
        async with self._changed:
            await self._changed.wait_for(lambda: self.used + nbytes <= self.capacity)
            self.used += nbytes
        try:
            yield
        finally:
            async with self._changed:
                self.used -= nbytes
                self._changed.notify_all()


@dataclass(frozen=True)
class WindowPlan:
    """The windows of one recording, as ``audio.split`` cuts them, without copying the whole windows."""

    parts: list[np.ndarray]  # (n_i, W) arrays, views where possible; in order they are all the windows
    starts_s: np.ndarray  # (N,) start of each window, seconds
    window_s: float
    hop_s: float
    padded: bool  # the recording was shorter than one window and was repeat-padded
    duration_s: float  # length of the recording the windows were cut from

    @property
    def count(self) -> int:
        return len(self.starts_s)

    def stacked(self) -> np.ndarray:
        """All windows as one (N, W) array (a copy; for tests and small recordings)."""
        return np.concatenate(self.parts) if len(self.parts) > 1 else np.asarray(self.parts[0])


def plan_windows(
    samples: np.ndarray,
    sample_rate: int,
    window_s: float,
    hop_s: float,
    max_windows: int,
    pad_to: int | None = None,
) -> WindowPlan:
    """Cut ``samples`` as ``audio.split`` does (``audio.window_starts``' rule) into views.

    The windows that lie wholly in the recording are views; the last one, which the recording ends
    inside, is repeat-padded straight to ``pad_to``, the model's window in samples (default: the
    window). Raises BadParameterError when the recording would need more than ``max_windows`` windows.
    """
    window, hop, min_tail = audio.window_lengths(window_s, hop_s, sample_rate)
    starts = audio.window_starts(len(samples), window, hop, min_tail)
    if len(starts) > max_windows:
        raise BadParameterError(
            f"a {len(samples) / sample_rate:.1f} s recording with window {window_s:g} s and hop {hop_s:g} s "
            f"makes {len(starts)} windows, more than the limit of {max_windows} (BIRDSEARCH_MAX_WINDOWS); "
            "use a larger hop_s"
        )
    whole = sum(1 for start in starts if start + window <= len(samples))  # the first ones
    parts = (
        [sliding_window_view(samples, window)[::hop][:whole]] if whole else []
    )  # rows 0, hop, ... (a view)
    parts += [audio.repeat_pad(samples[start:], pad_to or window)[None, :] for start in starts[whole:]]
    starts_s = np.asarray(starts, dtype=np.float64) / sample_rate
    return WindowPlan(parts, starts_s, window_s, hop_s, len(samples) < window, len(samples) / sample_rate)
