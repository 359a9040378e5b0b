"""Audio front end, part one: any recording to mono float32 at the model's rate, cut into windows.

Decoding is libsndfile (through ``soundfile``): wav, flac, ogg/vorbis, opus and mp3, any sample
rate and channel count. What libsndfile does not recognise (m4a/AAC from phones, webm, wma, and
anything else FFmpeg reads) is decoded through PyAV (the ``av`` package, which ships FFmpeg), under
the same limits and with the same typed errors. Resampling is libsoxr (through ``soxr``) at its "HQ" quality: a
band-limited polyphase resampler with a linear-phase low-pass, aliasing rejection beyond 100 dB,
faster than real time by three orders of magnitude on one core, and the default of librosa
(``soxr_hq``), which much of bioacoustics (BirdNET, Perch, opensoundscape) already trusts.

Windows follow CLAP's conventions: ``window_s`` seconds (10 s for BioLingual); a recording shorter
than a window is repeat-padded exactly as ``ClapFeatureExtractor(padding="repeatpad")`` does it
(whole repeats, then zeros); a longer one is cut into windows every ``hop_s`` seconds, and a last
window is aligned to the end so that the tail is heard too.
"""

from __future__ import annotations

import io
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from birdsearch.errors import (
    AudioTooLongError,
    CorruptAudioError,
    EmptyAudioError,
    SilentAudioError,
    UnsupportedAudioError,
)

log = logging.getLogger(__name__)

MIN_SAMPLE_RATE = 1_000  # below this nothing a bird makes survives
MAX_SAMPLE_RATE = 768_000  # the highest rate ultrasonic recorders write
MAX_CHANNELS = 64
LIBSNDFILE_PREFIX = re.compile(r"^Error opening .*?: ")
CUT_SHORT = re.compile(r"^data\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)
TRUNCATION_TOLERANCE = 0.9  # MP3 headers estimate their length; a real cut loses far more than 10 %
AAC_SLACK_FRAMES = 4096  # AAC adds encoder priming and padding (a frame or two of 1024) to the length
FORMATS_HINT = "use wav, flac, ogg, opus or mp3 (or m4a/AAC, webm and the other formats FFmpeg reads)"


@dataclass(frozen=True)
class AudioLimits:
    """What a recording must satisfy; every field is a setting of the service and the CLI."""

    max_duration_s: float = 600.0  # longer recordings are refused before they are decoded
    min_duration_s: float = 0.05  # shorter ones hold no call (and cannot be reflect-padded for the STFT)
    silence_dbfs: float = -60.0  # a peak below this is digital silence (codec noise reaches about -67 dBFS)


@dataclass(frozen=True)
class Recording:
    """A decoded recording: mono float32 at ``sample_rate``, plus what it was before conversion."""

    samples: np.ndarray  # (T,) float32, mono, at sample_rate
    sample_rate: int
    source_rate: int
    source_channels: int
    source_format: str  # e.g. "MP3/MPEG_LAYER_III"

    @property
    def duration_s(self) -> float:
        return len(self.samples) / self.sample_rate


@dataclass(frozen=True)
class Windows:
    """Fixed-length windows cut from one recording."""

    samples: np.ndarray  # (N, W) float32
    starts_s: np.ndarray  # (N,) start of each window in the recording, seconds
    window_s: float
    padded: bool  # True when the recording was shorter than one window and was repeat-padded


AudioSource = str | Path | bytes | BinaryIO


class NotForLibsndfile(Exception):
    """libsndfile does not recognise the container: the FFmpeg decoder gets a try."""


def source_name(source: AudioSource) -> str:
    return str(source) if isinstance(source, str | Path) else "upload"


def decode(source: AudioSource, limits: AudioLimits = AudioLimits()) -> tuple[np.ndarray, int, str]:
    """Decode a file, bytes or file object into (frames × channels float32, sample rate, format).

    libsndfile first; what it does not recognise goes to FFmpeg (PyAV). Raises
    UnsupportedAudioError for what neither can read, CorruptAudioError for damaged data,
    EmptyAudioError for zero frames and AudioTooLongError before decoding anything too long.
    """
    try:
        return decode_libsndfile(source, limits)
    except NotForLibsndfile as e:
        if not isinstance(source, str | Path | bytes):
            source.seek(0)  # libsndfile read part of the header
        return decode_ffmpeg(source, limits, libsndfile_reason=str(e))


def decode_libsndfile(source: AudioSource, limits: AudioLimits) -> tuple[np.ndarray, int, str]:
    """libsndfile's decode; raises NotForLibsndfile for a container it does not recognise."""
    import soundfile as sf

    handle = io.BytesIO(source) if isinstance(source, bytes) else source
    name = source_name(source)
    try:
        with sf.SoundFile(handle) as f:
            rate, channels, frames = f.samplerate, f.channels, f.frames
            fmt = f"{f.format}/{f.subtype}"
            check_header(name, rate, channels, frames, limits)
            check_not_cut_short(name, f.extra_info)
            data = f.read(dtype="float32", always_2d=True)
    except sf.LibsndfileError as e:
        message = LIBSNDFILE_PREFIX.sub("", str(e))  # drop "Error opening <_io.BytesIO object at 0x...>: "
        if "recognised" in message or "unknown format" in message.lower() or "supported" in message:
            raise NotForLibsndfile(message) from e
        raise CorruptAudioError(f"{name}: could not decode ({message})") from e
    except (RuntimeError, ValueError, EOFError) as e:  # truncated streams surface as these
        raise CorruptAudioError(f"{name}: could not decode ({e})") from e
    check_decoded(name, data, frames)
    return data, rate, fmt


def decode_ffmpeg(
    source: AudioSource, limits: AudioLimits, libsndfile_reason: str = ""
) -> tuple[np.ndarray, int, str]:
    """FFmpeg's decode (through PyAV) of the first audio stream, under the same limits as libsndfile's.

    The header's duration is checked before decoding; since a container's duration can lie, the
    decoded length is checked again as it grows, so that decoding stops at the limit.
    """
    name = source_name(source)
    try:
        import av
    except ImportError as e:
        raise UnsupportedAudioError(
            f"{name}: not a recording libsndfile can read ({libsndfile_reason}); use wav, flac, ogg, opus or "
            "mp3, or install PyAV (pip install av) for m4a/AAC and the other formats FFmpeg reads"
        ) from e
    if isinstance(source, str | Path):
        with open(source, "rb") as file:  # a file object: FFmpeg never sees a name it could take for a URL
            return decode_av(av, file, name, limits)
    return decode_av(av, io.BytesIO(source) if isinstance(source, bytes) else source, name, limits)


def decode_av(av: Any, handle: BinaryIO, name: str, limits: AudioLimits) -> tuple[np.ndarray, int, str]:
    refused = f"{name}: not a recording libsndfile or FFmpeg can read"
    if stream_size(handle) == 0:  # FFmpeg would only say "Invalid argument"
        raise UnsupportedAudioError(f"{refused}: the file is empty (0 bytes); {FORMATS_HINT}")
    try:
        # No protocol may be opened from inside the stream (playlists, concat lists): only these bytes.
        container = av.open(handle, mode="r", options={"protocol_whitelist": "none"})
    except (av.FFmpegError, OSError, ValueError) as e:
        raise UnsupportedAudioError(f"{refused} ({ffmpeg_reason(e)}); {FORMATS_HINT}") from e
    with container:
        if not container.streams.audio:
            raise UnsupportedAudioError(
                f"{refused}: its {container.format.name} container holds no audio stream; {FORMATS_HINT}"
            )
        stream = container.streams.audio[0]
        rate, channels = int(stream.codec_context.sample_rate), len(stream.codec_context.layout.channels)
        check_format(name, rate, channels)
        declared = declared_frames(stream, container, rate)
        if declared:
            check_duration(name, declared, rate, limits)
        data = decode_stream(av, container, stream, name, limits.max_duration_s)
        fmt = f"{container.format.name}/{stream.codec_context.name}"
    check_decoded(name, data, declared)
    check_duration(name, data.shape[0], rate, limits)
    return data, rate, fmt


def stream_size(handle: BinaryIO) -> int:
    """Bytes from the current position to the end, the position kept."""
    position = handle.tell()
    end = handle.seek(0, io.SEEK_END)
    handle.seek(position)
    return end - position


def decode_stream(av: Any, container: Any, stream: Any, name: str, max_duration_s: float) -> np.ndarray:
    """All frames of ``stream`` as (frames, channels) float32; AudioTooLongError past ``max_duration_s``."""
    rate = int(stream.codec_context.sample_rate)
    max_frames = round(max_duration_s * rate) + AAC_SLACK_FRAMES
    resampler = av.AudioResampler(format="fltp")  # planar float at the stream's own rate and layout
    chunks, total = [], 0
    try:
        for frame in container.decode(stream):
            for converted in resampler.resample(frame):
                chunks.append(converted.to_ndarray())  # (channels, n)
                total += chunks[-1].shape[1]
            if total > max_frames:
                raise AudioTooLongError(
                    f"{name}: longer than the {max_duration_s:g} s limit (its header did not say so); cut it first"
                )
    except av.FFmpegError as e:
        raise CorruptAudioError(f"{name}: could not decode ({ffmpeg_reason(e)})") from e
    if not chunks:
        return np.zeros((0, 1), dtype=np.float32)
    return np.ascontiguousarray(np.concatenate(chunks, axis=1).T, dtype=np.float32)


def declared_frames(stream: Any, container: Any, rate: int) -> int:
    """Frames the container says the stream holds (0 when it does not say)."""
    if stream.duration is not None and stream.time_base is not None:
        return int(stream.duration * stream.time_base * rate)
    if container.duration is not None:  # microseconds (AV_TIME_BASE)
        return int(container.duration * rate / 1_000_000)
    return 0


def ffmpeg_reason(error: Exception) -> str:
    """FFmpeg's reason without the file name PyAV appends ('<none>' for file objects)."""
    return str(getattr(error, "strerror", None) or error)


def check_decoded(name: str, data: np.ndarray, declared_frames: int) -> None:
    """What every decoder's output must satisfy: samples, as many as the header declared, all finite."""
    if data.shape[0] == 0:
        raise EmptyAudioError(f"{name}: the recording holds no samples")
    if data.shape[0] < TRUNCATION_TOLERANCE * declared_frames:
        # Decoders stop quietly at the end of a cut-off upload; the header still tells the length.
        raise CorruptAudioError(
            f"{name}: truncated: the header declares {declared_frames} frames but only {data.shape[0]} could be decoded"
        )
    if not np.isfinite(data).all():
        raise CorruptAudioError(f"{name}: decoded samples contain NaN or infinity")


def check_not_cut_short(name: str, header_log: str) -> None:
    """A WAV/AIFF cut off in transfer: libsndfile trims the length to what is there, but logs the header's claim."""
    match = CUT_SHORT.search(header_log)
    if match and int(match.group(2)) < int(match.group(1)):
        raise CorruptAudioError(
            f"{name}: truncated: the header declares {match.group(1)} bytes of audio but the file holds {match.group(2)}"
        )


def check_header(name: str, rate: int, channels: int, frames: int, limits: AudioLimits) -> None:
    """Refuse a recording from its header alone: rate, channels and duration."""
    check_format(name, rate, channels)
    check_duration(name, frames, rate, limits)


def check_format(name: str, rate: int, channels: int) -> None:
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise UnsupportedAudioError(
            f"{name}: sample rate {rate} Hz is outside {MIN_SAMPLE_RATE}–{MAX_SAMPLE_RATE} Hz"
        )
    if not 1 <= channels <= MAX_CHANNELS:
        raise UnsupportedAudioError(f"{name}: {channels} channels (1–{MAX_CHANNELS} supported)")


def check_duration(name: str, frames: int, rate: int, limits: AudioLimits) -> None:
    if frames <= 0:
        raise EmptyAudioError(f"{name}: the recording holds no samples (0 frames)")
    duration = frames / rate
    if duration > limits.max_duration_s:
        raise AudioTooLongError(
            f"{name}: {duration:.1f} s is longer than the {limits.max_duration_s:g} s limit; cut it first"
        )
    if duration < limits.min_duration_s:
        raise EmptyAudioError(
            f"{name}: {frames} frames ({duration:.4f} s) is shorter than the {limits.min_duration_s:g} s minimum"
        )


def to_mono(data: np.ndarray) -> np.ndarray:
    """(frames, channels) to (frames,) by averaging channels (what ClapProcessor users do)."""
    return data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]


def resample(samples: np.ndarray, source_rate: int, target_rate: int) -> np.ndarray:
    """Band-limited resampling with libsoxr HQ; a no-op at equal rates."""
    if source_rate == target_rate:
        return np.ascontiguousarray(samples, dtype=np.float32)
    import soxr

    return soxr.resample(samples, source_rate, target_rate, quality="HQ").astype(np.float32, copy=False)


def peak_dbfs(samples: np.ndarray) -> float:
    peak = float(np.max(np.abs(samples))) if samples.size else 0.0
    return 20.0 * np.log10(peak) if peak > 0 else float("-inf")


def load(
    source: AudioSource,
    sample_rate: int = 48_000,
    limits: AudioLimits = AudioLimits(),
    allow_silence: bool = False,
) -> Recording:
    """Decode, downmix and resample a recording; refuse silence unless ``allow_silence``."""
    data, rate, fmt = decode(source, limits)
    mono = to_mono(data)
    if not allow_silence and peak_dbfs(mono) < limits.silence_dbfs:
        name = source_name(source)
        raise SilentAudioError(
            f"{name}: silent (peak {peak_dbfs(mono):.1f} dBFS, below {limits.silence_dbfs:g} dBFS)"
        )
    return Recording(resample(mono, rate, sample_rate), sample_rate, rate, data.shape[1], fmt)


def repeat_pad(samples: np.ndarray, length: int) -> np.ndarray:
    """Pad to ``length`` as ClapFeatureExtractor's "repeatpad": whole repeats, then zeros."""
    if len(samples) >= length:
        return samples[:length]
    repeated = np.tile(samples, length // len(samples))
    return np.pad(repeated, (0, length - len(repeated))).astype(np.float32, copy=False)


def random_crop(samples: np.ndarray, length: int, rng: np.random.Generator) -> np.ndarray:
    """A random ``length`` crop of a longer recording (CLAP's "rand_trunc"), else repeat-padded."""
    if len(samples) <= length:
        return repeat_pad(samples, length)
    start = int(rng.integers(0, len(samples) - length + 1))
    return samples[start : start + length]


def window_starts(n_samples: int, window: int, hop: int) -> list[int]:
    """Start offsets of windows every ``hop`` samples; a last one is aligned to the end."""
    if n_samples <= window:
        return [0]
    starts = list(range(0, n_samples - window + 1, hop))
    if starts[-1] + window < n_samples:
        starts.append(n_samples - window)
    return starts


def split(
    samples: np.ndarray, sample_rate: int, window_s: float = 10.0, hop_s: float | None = None
) -> Windows:
    """Cut a recording into ``window_s`` windows every ``hop_s`` seconds (default: no overlap)."""
    hop_s = window_s if hop_s is None else hop_s
    if window_s <= 0 or hop_s <= 0:
        raise ValueError(f"window ({window_s} s) and hop ({hop_s} s) must be positive")
    window, hop = round(window_s * sample_rate), max(1, round(hop_s * sample_rate))
    if len(samples) <= window:
        padded = repeat_pad(samples, window)
        return Windows(padded[None, :], np.zeros(1), window_s, padded=len(samples) < window)
    starts = window_starts(len(samples), window, hop)
    frames = np.stack([samples[s : s + window] for s in starts])
    return Windows(frames, np.asarray(starts, dtype=np.float64) / sample_rate, window_s, padded=False)
