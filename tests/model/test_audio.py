"""The audio front end's first half: decoding, downmix, resampling, windows, and refusing bad input."""

import io
import struct

import numpy as np
import pytest
import soundfile as sf

from birdsearch.errors import (
    AudioTooLongError,
    CorruptAudioError,
    EmptyAudioError,
    SilentAudioError,
    UnsupportedAudioError,
)
from birdsearch.model import audio

PLAYABLE = [
    "librosa_robin_22k_mono.ogg",
    "perch_21100_36_48_16k_10s.flac",
    "perch_21100_36_48_16k_10s.ogg",
    "oss_birds_10s_32k.wav",
    "maad_spinetail_44k1_12s.wav",
    "derived_spinetail_stereo_44k1.mp3",
    "derived_birds_stereo_48k.opus",
    "birdnet_soundscape_48k_30s.flac",
    "oss_veryshort_44k1_0.14s.wav",
]


@pytest.mark.parametrize("name", PLAYABLE)
def test_every_format_decodes_to_mono_float32_at_48k(audio_dir, name):
    info = sf.info(audio_dir / name)
    rec = audio.load(audio_dir / name)
    assert rec.sample_rate == 48_000
    assert rec.samples.dtype == np.float32 and rec.samples.ndim == 1
    assert rec.source_rate == info.samplerate and rec.source_channels == info.channels
    # Resampling keeps the duration to within one source sample.
    assert abs(rec.duration_s - info.frames / info.samplerate) < 1.5 / info.samplerate + 1e-4
    assert np.abs(rec.samples).max() > 1e-3


def test_bytes_and_file_objects_decode_like_paths(audio_dir):
    path = audio_dir / "librosa_robin_22k_mono.ogg"
    from_path = audio.load(path).samples
    assert np.array_equal(audio.load(path.read_bytes()).samples, from_path)
    with open(path, "rb") as f:
        assert np.array_equal(audio.load(f).samples, from_path)


def test_stereo_is_the_mean_of_its_channels():
    rate = 48_000
    t = np.arange(rate) / rate
    left, right = np.sin(2 * np.pi * 440 * t), 0.5 * np.sin(2 * np.pi * 880 * t)
    buffer = io.BytesIO()
    sf.write(buffer, np.stack([left, right], axis=1).astype(np.float32), rate, format="WAV", subtype="FLOAT")
    rec = audio.load(buffer.getvalue())
    np.testing.assert_allclose(rec.samples, (left + right) / 2, atol=1e-6)


def test_resampling_keeps_a_tone_clean():
    """A 1 kHz tone at 16 kHz, resampled to 48 kHz: same frequency, no audible aliasing."""
    rate = 16_000
    tone = np.sin(2 * np.pi * 1000 * np.arange(rate) / rate).astype(np.float32)
    out = audio.resample(tone, rate, 48_000)
    assert len(out) == 48_000
    spectrum = np.abs(np.fft.rfft(out[4800:-4800] * np.hanning(len(out) - 9600)))
    peak = int(np.argmax(spectrum))
    freqs = np.fft.rfftfreq(len(out) - 9600, 1 / 48_000)
    assert abs(freqs[peak] - 1000) < 2
    spurious = spectrum.copy()
    spurious[max(0, peak - 20) : peak + 20] = 0
    assert 20 * np.log10(spectrum[peak] / spurious.max()) > 60  # dB between the tone and anything else


def test_zero_frames_is_empty(audio_dir):
    with pytest.raises(EmptyAudioError, match="no samples"):
        audio.load(audio_dir / "oss_empty_2c_44k1.wav")


def test_five_frames_is_too_short(audio_dir):
    with pytest.raises(EmptyAudioError, match="shorter than"):
        audio.load(audio_dir / "oss_stereo_float_44k1_tiny.wav")


def test_digital_silence_is_refused_unless_allowed(audio_dir):
    with pytest.raises(SilentAudioError, match="dBFS"):
        audio.load(audio_dir / "oss_silence_10s_44k1.mp3")
    rec = audio.load(audio_dir / "oss_silence_10s_44k1.mp3", allow_silence=True)
    assert rec.duration_s == pytest.approx(10.0, abs=0.05)


@pytest.mark.parametrize("payload", [b"", b"not audio at all, just text", b"\x89PNG\r\n\x1a\n" + b"\0" * 64])
def test_non_audio_is_unsupported(payload):
    with pytest.raises(UnsupportedAudioError, match="wav, flac, ogg, opus or mp3"):
        audio.load(payload)


def test_a_cut_off_mp3_is_corrupt(audio_dir):
    data = (audio_dir / "derived_spinetail_stereo_44k1.mp3").read_bytes()
    with pytest.raises(CorruptAudioError, match="truncated"):
        audio.load(data[: len(data) // 5])


def test_too_long_is_refused_before_decoding(audio_dir):
    with pytest.raises(AudioTooLongError, match="longer than the 5 s limit"):
        audio.load(audio_dir / "oss_birds_10s_32k.wav", limits=audio.AudioLimits(max_duration_s=5))


def wav_header(rate: int, channels: int, frames: int) -> bytes:
    """A PCM-16 WAV file with an arbitrary (possibly absurd) header."""
    data = b"\x01\x00" * channels * frames
    fmt = struct.pack("<HHIIHH", 1, channels, rate, rate * channels * 2, channels * 2, 16)
    return b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVEfmt " + struct.pack("<I", 16) + fmt + b"data" + \
        struct.pack("<I", len(data)) + data  # fmt: skip


def test_absurd_sample_rate_is_unsupported():
    with pytest.raises(UnsupportedAudioError, match="sample rate 10 Hz"):
        audio.load(wav_header(rate=10, channels=1, frames=100))


def test_nan_samples_are_corrupt():
    buffer = io.BytesIO()
    samples = np.full(4800, 0.1, dtype=np.float32)
    samples[100] = np.nan
    sf.write(buffer, samples, 48_000, format="WAV", subtype="FLOAT")
    with pytest.raises(CorruptAudioError, match="NaN"):
        audio.load(buffer.getvalue())


def test_long_recordings_split_into_hopped_windows_the_last_padded_or_dropped_as_birdnet_does():
    rate = 1000
    samples = np.arange(1, 25 * rate + 1, dtype=np.float32)
    windows = audio.split(samples, rate, window_s=10, hop_s=5)
    assert windows.samples.shape == (4, 10 * rate)
    np.testing.assert_allclose(windows.starts_s, [0, 5, 10, 15])  # the last one ends with the recording
    windows = audio.split(samples, rate, window_s=10, hop_s=7)
    np.testing.assert_allclose(
        windows.starts_s, [0, 7, 14, 21]
    )  # no window aligned to the end: 21 s holds 4 s
    np.testing.assert_array_equal(windows.samples[-1], audio.repeat_pad(samples[21 * rate :], 10 * rate))
    assert not windows.padded
    tail = audio.split(samples[: int(20.5 * rate)], rate, window_s=10)
    np.testing.assert_allclose(tail.starts_s, [0, 10])  # 0.5 s after the second window: under 1 s, dropped
    tail = audio.split(samples[: int(21.5 * rate)], rate, window_s=10)
    np.testing.assert_allclose(tail.starts_s, [0, 10, 20])  # 1.5 s: kept, padded
    assert audio.window_starts(300, window=1000, hop=1000, min_tail=1000) == [0]  # an only window stays


def test_short_recordings_are_repeat_padded_like_clap():
    samples = np.arange(1, 4, dtype=np.float32)  # 3 samples
    padded = audio.repeat_pad(samples, 10)
    np.testing.assert_array_equal(padded, [1, 2, 3, 1, 2, 3, 1, 2, 3, 0])
    more_than_half = np.ones(6, dtype=np.float32)
    np.testing.assert_array_equal(audio.repeat_pad(more_than_half, 10), [1] * 6 + [0] * 4)
    windows = audio.split(samples, 1, window_s=10)
    assert windows.padded and windows.samples.shape == (1, 10)


def test_random_crop_is_seeded_and_in_bounds():
    samples = np.arange(100, dtype=np.float32)
    crop_a = audio.random_crop(samples, 30, np.random.default_rng(7))
    crop_b = audio.random_crop(samples, 30, np.random.default_rng(7))
    np.testing.assert_array_equal(crop_a, crop_b)
    assert len(crop_a) == 30 and np.all(np.diff(crop_a) == 1)
    assert len(audio.random_crop(samples[:10], 30, np.random.default_rng(0))) == 30


def test_a_cut_off_wav_is_corrupt(audio_dir):
    """libsndfile trims a cut-off WAV's length to what is there; its header log still tells the truth."""
    data = (audio_dir / "maad_spinetail_44k1_12s.wav").read_bytes()
    with pytest.raises(CorruptAudioError, match="truncated: the header declares 1058400 bytes"):
        audio.load(data[:200_000])


def test_error_messages_do_not_leak_object_reprs():
    with pytest.raises(UnsupportedAudioError) as info:
        audio.load(b"definitely not audio")
    assert "BytesIO" not in str(info.value) and "0x" not in str(info.value)
