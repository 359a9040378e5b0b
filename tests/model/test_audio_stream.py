"""Long recordings read block by block: the same samples as a whole-file load, in a block's memory."""

import os
import tracemalloc

import numpy as np
import pytest
import soundfile as sf

from birdsearch.errors import AudioTooLongError, ConfigError, CorruptAudioError, SilentAudioError
from birdsearch.model import audio

from .test_audio import PLAYABLE
from .test_audio_ffmpeg import encode, tones


def streamed(source, block_s=0.05, **kwargs):
    with audio.AudioStream(source, block_s=block_s, **kwargs) as stream:
        pieces = list(stream)
    return np.concatenate(pieces), stream, len(pieces)


@pytest.mark.parametrize("name", PLAYABLE)
def test_blocks_joined_are_exactly_the_whole_file_load(audio_dir, name):
    # 50 ms blocks: hundreds of block boundaries, none of which may leave a seam after resampling
    whole = audio.load(audio_dir / name)
    joined, stream, pieces = streamed(audio_dir / name)
    np.testing.assert_array_equal(joined, whole.samples)
    assert (stream.source_rate, stream.source_channels, stream.source_format) == (
        whole.source_rate, whole.source_channels, whole.source_format,
    )  # fmt: skip
    assert stream.duration_s == whole.duration_s
    assert pieces > 1 or whole.duration_s < 0.2


def test_ffmpeg_blocks_join_like_its_whole_decode():
    m4a = encode(tones(44_100, 3.0, (1000.0, 1500.0)), 44_100)
    joined, _, pieces = streamed(m4a, block_s=0.1)
    np.testing.assert_array_equal(joined, audio.load(m4a).samples)
    assert pieces > 10


def long_flac(path, hours, rate=8_000, block_s=600):
    """A low-rate mono FLAC written block by block: a recorder's long file without its size in memory."""
    t = np.arange(round(block_s * rate)) / rate
    block = (0.05 * np.sin(2 * np.pi * 440 * t)).astype(
        np.float32
    )  # repeats seamlessly: 440 Hz, whole seconds
    with sf.SoundFile(path, "w", rate, 1, format="FLAC", subtype="PCM_16") as f:
        for _ in range(round(hours * 3600 / block_s)):
            f.write(block)
    return path


def test_an_hour_streams_in_a_few_megabytes(tmp_path):
    # 1 h at 48 kHz is 691 MB as float32; the stream holds a block (1 s) and its resampled copy
    path = long_flac(tmp_path / "hour.flac", hours=1)
    tracemalloc.start()
    try:
        with audio.AudioStream(path, limits=audio.AudioLimits(max_duration_s=24 * 3600)) as stream:
            total = sum(len(piece) for piece in stream)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert total == 3600 * 48_000
    assert stream.declared_duration_s == stream.duration_s == 3600
    assert peak < 8 * 2**20, f"peak {peak / 2**20:.1f} MiB"


def test_the_limits_hold_while_streaming(audio_dir, tmp_path):
    with pytest.raises(
        AudioTooLongError, match="longer than the 5 s limit"
    ):  # from the header, before any block
        audio.AudioStream(audio_dir / "oss_birds_10s_32k.wav", limits=audio.AudioLimits(max_duration_s=5))
    with pytest.raises(SilentAudioError, match="silent"):  # known once the whole recording is heard
        streamed(audio_dir / "oss_silence_10s_44k1.mp3")
    joined, _, _ = streamed(audio_dir / "oss_silence_10s_44k1.mp3", allow_silence=True)
    assert len(joined) == pytest.approx(480_000, abs=2400)
    cut = (audio_dir / "derived_spinetail_stereo_44k1.mp3").read_bytes()
    with pytest.raises(CorruptAudioError, match="truncated"):
        streamed(cut[: len(cut) // 5])


def open_files() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize("source", ["birdnet_soundscape_48k_30s.flac", "m4a"])
def test_a_stream_closed_early_releases_its_file(audio_dir, tmp_path, source):
    if source == "m4a":  # the FFmpeg path opens the file itself
        path = tmp_path / "memo.m4a"
        path.write_bytes(encode(tones(48_000, 3.0, (1000.0,)), 48_000))
    else:
        path = audio_dir / source
    before = open_files()
    with audio.AudioStream(path, block_s=1.0) as stream:
        first = next(iter(stream))
        assert open_files() > before
    assert open_files() == before
    assert len(first) >= 40_000


def spectrum_db(before: np.ndarray, after: np.ndarray, rate: int, hz: float) -> float:
    middle = slice(rate, -rate)  # away from the window's edges
    freqs = np.fft.rfftfreq(len(before[middle]), 1 / rate)
    at = np.argmin(np.abs(freqs - hz))
    return float(
        20 * np.log10(np.abs(np.fft.rfft(after[middle]))[at] / np.abs(np.fft.rfft(before[middle]))[at])
    )


def test_band_pass_keeps_the_band_and_cuts_outside_it_like_an_order_5_butterworth():
    rate = 48_000
    signal = tones(rate, 10.0, (300.0, 5_000.0, 16_000.0)).sum(axis=0)
    windows = audio.band_pass(np.stack([signal, signal]), rate, fmin=1_000, fmax=8_000)
    assert spectrum_db(signal, windows[0], rate, 5_000) == pytest.approx(0, abs=0.1)
    assert spectrum_db(signal, windows[0], rate, 300) < -50  # (1000/300)^10: 52 dB down
    assert spectrum_db(signal, windows[0], rate, 16_000) < -29  # 2^10: 30 dB down
    np.testing.assert_array_equal(windows[0], windows[1])  # each window on its own
    np.testing.assert_array_equal(audio.band_pass(signal, rate, fmin=1_000, fmax=8_000), windows[0])
    assert audio.band_pass(signal, rate) is signal  # no band: untouched
    edge = audio.band_gain(np.array([1_000.0, 8_000.0]), 1_000, 8_000)
    np.testing.assert_allclose(edge, 1 / np.sqrt(2), rtol=0.01)  # -3 dB at each edge


@pytest.mark.parametrize(("fmin", "fmax"), [(-1, 8_000), (9_000, 8_000), (0, 30_000)])
def test_an_impossible_band_is_refused_naming_it(fmin, fmax):
    with pytest.raises(ConfigError, match="band-pass"):
        audio.band_pass(np.zeros(48_000, np.float32), 48_000, fmin=fmin, fmax=fmax)


@pytest.mark.parametrize("seconds", [0.3, 10.0, 10.004, 25.0, 37.5])
@pytest.mark.parametrize("hop_s", [10.0, 7.0, 2.5, 12.0])
def test_windows_cut_from_pieces_are_the_windows_of_the_whole(seconds, hop_s):
    rate = 100
    samples = (
        np.random.default_rng(int(seconds * 10)).standard_normal(round(seconds * rate)).astype(np.float32)
    )
    whole = audio.split(samples, rate, window_s=10.0, hop_s=hop_s)
    sizes = np.random.default_rng(1).integers(1, 700, size=len(samples))
    pieces = np.split(samples, np.cumsum(sizes)[np.cumsum(sizes) < len(samples)])
    parts = list(audio.stream_windows(pieces, rate, window_s=10.0, hop_s=hop_s, per_part=3))
    assert all(len(p.starts_s) <= 3 for p in parts)
    np.testing.assert_array_equal(np.concatenate([p.samples for p in parts]), whole.samples)
    np.testing.assert_array_equal(np.concatenate([p.starts_s for p in parts]), whole.starts_s)


def test_windows_shorter_than_the_model_are_repeat_padded_to_it():
    rate = 100
    samples = np.arange(1, 1201, dtype=np.float32)  # 12 s
    [part] = audio.stream_windows([samples], rate, window_s=5.0, pad_to=1000)
    assert part.samples.shape == (3, 1000)
    np.testing.assert_array_equal(part.samples[0], np.tile(samples[:500], 2))
