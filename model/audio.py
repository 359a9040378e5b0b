"""Audio front end, part one: any recording to mono float32 at the model's rate, cut into windows.

Decoding is libsndfile (through ``soundfile``): wav, flac, ogg/vorbis, opus and mp3, any sample
rate and channel count. Resampling is libsoxr (through ``soxr``) at its "HQ" quality: a
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
from typing import BinaryIO

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


def decode(source: AudioSource, limits: AudioLimits = AudioLimits()) -> tuple[np.ndarray, int, str]:
    """Decode a file, bytes or file object into (frames × channels float32, sample rate, format).

    Raises UnsupportedAudioError for what libsndfile cannot read, CorruptAudioError for damaged
    data, EmptyAudioError for zero frames and AudioTooLongError before decoding anything too long.
    """
    import soundfile as sf

    handle = io.BytesIO(source) if isinstance(source, bytes) else source
    name = str(source) if isinstance(source, str | Path) else "upload"
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
            raise UnsupportedAudioError(
                f"{name}: not a recording libsndfile can read ({message}); use wav, flac, ogg, opus or mp3"
            ) from e
        raise CorruptAudioError(f"{name}: could not decode ({message})") from e
    except (RuntimeError, ValueError, EOFError) as e:  # truncated streams surface as these
        raise CorruptAudioError(f"{name}: could not decode ({e})") from e
    if data.shape[0] == 0:
        raise EmptyAudioError(f"{name}: the recording holds no samples")
    if data.shape[0] < TRUNCATION_TOLERANCE * frames:
        # libsndfile stops quietly at the end of a cut-off upload; the header still tells the length.
        raise CorruptAudioError(
            f"{name}: truncated: the header declares {frames} frames but only {data.shape[0]} could be decoded"
        )
    if not np.isfinite(data).all():
        raise CorruptAudioError(f"{name}: decoded samples contain NaN or infinity")
    return data, rate, fmt


def check_not_cut_short(name: str, header_log: str) -> None:
    """A WAV/AIFF cut off in transfer: libsndfile trims the length to what is there, but logs the header's claim."""
    match = CUT_SHORT.search(header_log)
    if match and int(match.group(2)) < int(match.group(1)):
        raise CorruptAudioError(
            f"{name}: truncated: the header declares {match.group(1)} bytes of audio but the file holds {match.group(2)}"
        )


def check_header(name: str, rate: int, channels: int, frames: int, limits: AudioLimits) -> None:
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise UnsupportedAudioError(
            f"{name}: sample rate {rate} Hz is outside {MIN_SAMPLE_RATE}–{MAX_SAMPLE_RATE} Hz"
        )
    if not 1 <= channels <= MAX_CHANNELS:
        raise UnsupportedAudioError(f"{name}: {channels} channels (1–{MAX_CHANNELS} supported)")
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
        name = str(source) if isinstance(source, str | Path) else "upload"
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
