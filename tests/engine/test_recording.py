"""Upload handling below the HTTP layer: windows as views, the memory budget, header reading."""

import asyncio
import io

import numpy as np
import pytest
import soundfile as sf

from birdsearch.engine.errors import BadParameterError
from birdsearch.engine.recording import Header, MemoryBudget, plan_windows, read_header
from birdsearch.errors import AudioTooLongError
from birdsearch.model import audio

SR = 1000  # a small rate keeps the arrays small; the arithmetic is the same at 48 kHz


@pytest.mark.parametrize(
    ("seconds", "window_s", "hop_s"),
    [
        (3.0, 10.0, 10.0),
        (10.0, 10.0, 10.0),
        (25.0, 10.0, 10.0),
        (25.0, 10.0, 5.0),
        (31.7, 10.0, 3.0),
        (12.0, 5.0, 2.5),
    ],
)
def test_windows_equal_audio_split(seconds, window_s, hop_s):
    samples = np.random.default_rng(0).standard_normal(int(seconds * SR)).astype(np.float32)
    plan = plan_windows(samples, SR, window_s, hop_s, max_windows=100)
    expected = audio.split(samples, SR, window_s, hop_s)
    np.testing.assert_array_equal(plan.stacked(), expected.samples)
    np.testing.assert_allclose(plan.starts_s, expected.starts_s)
    assert plan.padded == expected.padded
    assert plan.count == len(expected.samples)
    assert plan.duration_s == pytest.approx(seconds, abs=1e-3)


def test_long_recording_windows_are_views_not_copies():
    samples = np.zeros(60 * SR, dtype=np.float32)
    plan = plan_windows(samples, SR, 10.0, 1.0, max_windows=100)
    assert plan.count == 51
    assert all(np.shares_memory(part, samples) for part in plan.parts)


def test_short_recording_is_padded_to_the_model_window():
    samples = np.arange(1, 3 * SR + 1, dtype=np.float32)
    plan = plan_windows(samples, SR, window_s=5.0, hop_s=5.0, max_windows=10, pad_to=10 * SR)
    assert plan.padded and plan.count == 1
    np.testing.assert_array_equal(plan.parts[0][0], audio.repeat_pad(samples, 10 * SR))


def test_too_many_windows_is_a_parameter_error_naming_the_fix():
    samples = np.zeros(100 * SR, dtype=np.float32)
    with pytest.raises(BadParameterError, match="91 windows, more than the limit of 50.*larger hop_s"):
        plan_windows(samples, SR, 10.0, 1.0, max_windows=50)


def test_header_is_read_without_decoding_and_rewinds():
    buffer = io.BytesIO()
    sf.write(buffer, np.zeros((4410, 2), dtype=np.float32), 44100, format="WAV")
    buffer.seek(17)
    header = read_header(buffer)
    assert header == Header(frames=4410, channels=2, sample_rate=44100)
    assert buffer.tell() == 0
    # all channels + the mono mix + the mono copy at 48 kHz
    assert header.decode_bytes(48000) == 4 * (4410 * 2 + 4410 + 4800)
    assert read_header(io.BytesIO(b"not audio at all")) is None


def test_budget_makes_requests_wait_for_their_share():
    order = []

    async def holder(budget, name, nbytes, hold_s):
        async with budget.hold(nbytes):
            order.append((name, "in", budget.used))
            await asyncio.sleep(hold_s)
        order.append((name, "out"))

    async def main():
        budget = MemoryBudget(capacity=100, per_request=100)
        first = asyncio.create_task(holder(budget, "a", 70, 0.05))
        await asyncio.sleep(0.01)
        second = asyncio.create_task(holder(budget, "b", 60, 0.0))  # must wait for a
        third = asyncio.create_task(holder(budget, "c", 20, 0.0))  # fits beside a
        await asyncio.gather(first, second, third)
        assert budget.used == 0

    asyncio.run(main())
    assert order.index(("a", "out")) < order.index(("b", "in", 60))
    assert ("c", "in", 90) in order


def test_budget_refuses_what_could_never_fit():
    async def main():
        async with MemoryBudget(capacity=1000, per_request=100).hold(101):
            pass

    with pytest.raises(AudioTooLongError, match="BIRDSEARCH_MAX_DECODED_BYTES"):
        asyncio.run(main())
