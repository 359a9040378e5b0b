"""The audio front end's FFmpeg fallback: phone recordings (m4a/AAC) libsndfile cannot read.

Every recording here is encoded in the test itself with PyAV, so nothing but the ``av`` wheel is needed.
"""

import io
import sys

import numpy as np
import pytest

from birdsearch.errors import AudioTooLongError, SilentAudioError, UnsupportedAudioError
from birdsearch.model import audio

av = pytest.importorskip("av")


def encode(samples: np.ndarray, rate: int, container: str = "mp4", codec: str = "aac") -> bytes:
    """(channels, n) float32 encoded into ``container`` with ``codec``, as a phone's voice memo app does."""
    layout = "mono" if samples.shape[0] == 1 else "stereo"
    buffer = io.BytesIO()
    with av.open(buffer, "w", format=container) as out:
        stream = out.add_stream(codec, rate=rate, layout=layout)
        for start in range(0, samples.shape[1], 1024):
            frame = av.AudioFrame.from_ndarray(
                np.ascontiguousarray(samples[:, start : start + 1024]), format="fltp", layout=layout
            )
            frame.sample_rate = rate
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buffer.getvalue()


def tones(rate: int, seconds: float, freqs: tuple[float, ...], amplitude: float = 0.3) -> np.ndarray:
    t = np.arange(round(rate * seconds)) / rate
    return np.stack([amplitude * np.sin(2 * np.pi * f * t) for f in freqs]).astype(np.float32)


def dominant_hz(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[np.argmax(spectrum)])


@pytest.fixture(scope="module")
def m4a_stereo() -> bytes:
    return encode(tones(44_100, 3.0, (1000.0, 1000.0)), 44_100)


def test_libsndfile_cannot_read_m4a_so_ffmpeg_does(m4a_stereo):
    import soundfile as sf

    with pytest.raises(sf.LibsndfileError):
        sf.info(io.BytesIO(m4a_stereo))
    rec = audio.load(m4a_stereo)
    assert rec.sample_rate == 48_000 and rec.samples.dtype == np.float32 and rec.samples.ndim == 1
    assert rec.source_rate == 44_100 and rec.source_channels == 2
    assert rec.source_format.endswith("/aac") and "mp4" in rec.source_format
    # AAC adds a frame or two of priming/padding; the length is otherwise the encoded one.
    assert rec.duration_s == pytest.approx(3.0, abs=0.06)
    assert dominant_hz(rec.samples, rec.sample_rate) == pytest.approx(1000.0, abs=2.0)
    assert 0.2 < np.abs(rec.samples).max() < 0.4


def test_paths_bytes_and_file_objects_decode_alike(tmp_path, m4a_stereo):
    path = tmp_path / "voice memo.m4a"
    path.write_bytes(m4a_stereo)
    from_path = audio.load(path).samples
    np.testing.assert_array_equal(audio.load(m4a_stereo).samples, from_path)
    with open(path, "rb") as f:
        np.testing.assert_array_equal(audio.load(f).samples, from_path)


def test_channels_are_averaged_like_libsndfile_input():
    left_right = tones(48_000, 1.0, (500.0, 3000.0))
    rec = audio.load(encode(left_right, 48_000))
    spectrum = np.abs(np.fft.rfft(rec.samples))
    freqs = np.fft.rfftfreq(len(rec.samples), 1 / 48_000)
    peaks = sorted(freqs[np.argsort(spectrum)[-2:]])
    assert peaks == pytest.approx([500.0, 3000.0], abs=3.0)


def test_too_long_is_refused_from_the_container_header():
    data = encode(tones(16_000, 6.0, (800.0,)), 16_000)
    with pytest.raises(AudioTooLongError, match="longer than the 5 s limit"):
        audio.load(data, limits=audio.AudioLimits(max_duration_s=5))


def test_too_long_is_stopped_while_decoding_when_the_header_does_not_say(monkeypatch):
    data = encode(tones(16_000, 6.0, (800.0,)), 16_000)
    monkeypatch.setattr(audio, "declared_frames", lambda stream, container, rate: 0)
    with pytest.raises(AudioTooLongError, match="its header did not say so"):
        audio.load(data, limits=audio.AudioLimits(max_duration_s=5))


def test_silence_is_refused_as_for_every_format():
    with pytest.raises(SilentAudioError, match="dBFS"):
        audio.load(encode(np.zeros((1, 48_000), dtype=np.float32), 48_000))


def test_a_container_without_audio_is_unsupported():
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="PNG")
    with pytest.raises(UnsupportedAudioError, match="holds no audio stream") as info:
        audio.load(buffer.getvalue())
    assert "0x" not in str(info.value)


def test_a_truncated_m4a_is_refused(m4a_stereo):
    # mp4 keeps its index ("moov") at the end: a cut-off file cannot even be opened.
    with pytest.raises(UnsupportedAudioError, match="libsndfile or FFmpeg"):
        audio.load(m4a_stereo[: len(m4a_stereo) // 2])


def test_without_pyav_the_error_says_how_to_get_it(monkeypatch, m4a_stereo):
    monkeypatch.setitem(sys.modules, "av", None)  # `import av` now raises ImportError
    with pytest.raises(UnsupportedAudioError, match="pip install av"):
        audio.load(m4a_stereo)


def test_an_empty_file_says_so(tmp_path):
    path = tmp_path / "empty.m4a"
    path.write_bytes(b"")
    with pytest.raises(UnsupportedAudioError, match=r"empty \(0 bytes\)"):
        audio.load(path)
