"""Audio front end, part one: any recording to mono float32 at the model's rate, cut into windows.

Decoding is libsndfile (through ``soundfile``): wav, flac, ogg/vorbis, opus and mp3, any sample
rate and channel count. What libsndfile does not recognise (m4a/AAC from phones, webm, wma, and
anything else FFmpeg reads) is decoded through PyAV (the ``av`` package, which ships FFmpeg), under
the same limits and with the same typed errors. Resampling is libsoxr (through ``soxr``) at its "HQ" quality: a
band-limited polyphase resampler with a linear-phase low-pass, aliasing rejection beyond 100 dB,
faster than real time by three orders of magnitude on one core, and the default of librosa
(``soxr_hq``), which much of bioacoustics (BirdNET, Perch, opensoundscape) already trusts.

Both decoders read in blocks (``open_blocks``): ``load`` gathers a whole recording, and
``AudioStream`` hands it on block by block, resampled with libsoxr's streaming resampler, so that a
recorder's 24-hour file takes a block's memory, not the recording's. ``band_pass`` is
BirdNET-Analyzer's ``--fmin/--fmax`` filter, applied to windows.

Windows are ``window_s`` seconds (10 s for BioLingual), every ``hop_s`` seconds from the start,
until one reaches the recording's end: BirdNET-Analyzer's rule (``window_starts``). That last
window holds the rest of the recording, is dropped when the rest is under ``MIN_TAIL_S`` (1 s, as
BirdNET), and is otherwise filled out as a recording shorter than a window is: repeat-padded exactly
as ``ClapFeatureExtractor(padding="repeatpad")`` pads (whole repeats, then zeros), where BirdNET
pads with zeros, because that is how the CLAP audio tower saw short clips in training.
"""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from birdsearch.errors import (
    AudioTooLongError,
    ConfigError,
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
BLOCK_S = 1.0  # seconds of source audio a block holds: what decoding keeps in memory at a time
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
MIN_TAIL_S = 1.0  # BirdNET-Analyzer's SIG_MINLEN: a last window holding less of the recording is dropped


class NotForLibsndfile(Exception):
    """libsndfile does not recognise the container: the FFmpeg decoder gets a try."""


def source_name(source: AudioSource) -> str:
    return str(source) if isinstance(source, str | Path) else "upload"


class Blocks:
    """A recording opened for decoding block by block: its header, then (frames × channels) float32 blocks.

    Iterating decodes; the checks every decoder's output must pass run as it goes: finite samples,
    at most ``limits.max_duration_s`` (a header can lie), then at the end a length that is not zero,
    not under the limit's minimum, and not far below what the header declared (a cut-off file).
    """

    def __init__(self, name: str, rate: int, channels: int, fmt: str, declared: int, limits: AudioLimits,
                 reader: Iterator[np.ndarray], closer: Callable[[], None], slack: int = 0):  # fmt: skip
        self.name, self.rate, self.channels, self.format = name, rate, channels, fmt
        self.declared_frames = declared  # 0 when the container does not say
        self.limits = limits
        self.frames = 0  # decoded so far
        self._reader = reader
        self._closer = closer  # releases the file or container, read to the end or not
        self._max_frames = round(limits.max_duration_s * rate) + slack

    def __iter__(self) -> Iterator[np.ndarray]:
        for block in self._reader:
            self.frames += block.shape[0]
            if self.frames > self._max_frames:
                raise AudioTooLongError(
                    f"{self.name}: longer than the {self.limits.max_duration_s:g} s limit (its header did not "
                    "say so); cut it first"
                )
            if not np.isfinite(block).all():
                raise CorruptAudioError(f"{self.name}: decoded samples contain NaN or infinity")
            yield block
        check_decoded(self.name, self.frames, self.declared_frames)
        check_duration(self.name, self.frames, self.rate, self.limits)

    def close(self) -> None:
        self._closer()

    def __enter__(self) -> Blocks:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_blocks(source: AudioSource, limits: AudioLimits = AudioLimits(), block_s: float = BLOCK_S) -> Blocks:
    """Open a file, bytes or file object for block-by-block decoding.

    libsndfile first; what it does not recognise goes to FFmpeg (PyAV). Raises
    UnsupportedAudioError for what neither can read, CorruptAudioError for damaged data, and
    AudioTooLongError before decoding anything the header says is too long.
    """
    try:
        return open_libsndfile(source, limits, block_s)
    except NotForLibsndfile as e:
        if not isinstance(source, str | Path | bytes):
            source.seek(0)  # libsndfile read part of the header
        return open_ffmpeg(source, limits, block_s, libsndfile_reason=str(e))


def decode(source: AudioSource, limits: AudioLimits = AudioLimits()) -> tuple[np.ndarray, int, str]:
    """Decode a whole file, bytes or file object into (frames × channels float32, sample rate, format)."""
    with open_blocks(source, limits) as blocks:
        return gather(blocks), blocks.rate, blocks.format


def gather(blocks: Blocks) -> np.ndarray:
    """All blocks as one (frames × channels) array, filled in place where the header gave the length."""
    out = np.empty((blocks.declared_frames, blocks.channels), dtype=np.float32)
    beyond: list[np.ndarray] = []  # what a header that undercounted did not leave room for
    at = 0
    for block in blocks:
        room = max(0, min(len(block), len(out) - at))
        out[at : at + room] = block[:room]
        at += room
        if room < len(block):
            beyond.append(block[room:])
    return np.concatenate([out, *beyond]) if beyond else out[:at]


def libsndfile_error(name: str, error: Exception) -> Exception:
    """libsndfile's error as ours: NotForLibsndfile for a container it does not recognise, else corrupt."""
    message = LIBSNDFILE_PREFIX.sub("", str(error))  # drop "Error opening <_io.BytesIO object at 0x...>: "
    if "recognised" in message or "unknown format" in message.lower() or "supported" in message:
        return NotForLibsndfile(message)
    return CorruptAudioError(f"{name}: could not decode ({message})")


def open_libsndfile(source: AudioSource, limits: AudioLimits, block_s: float) -> Blocks:
    """libsndfile's reader, its header checked; raises NotForLibsndfile for a container it does not recognise."""
    import soundfile as sf

    handle = io.BytesIO(source) if isinstance(source, bytes) else source
    name = source_name(source)
    try:
        f = sf.SoundFile(handle)
    except sf.LibsndfileError as e:
        raise libsndfile_error(name, e) from e
    except (RuntimeError, ValueError, EOFError) as e:  # truncated streams surface as these
        raise CorruptAudioError(f"{name}: could not decode ({e})") from e
    try:
        rate, channels, frames = f.samplerate, f.channels, f.frames
        check_header(name, rate, channels, frames, limits)
        check_not_cut_short(name, f.extra_info)
    except BaseException:
        f.close()
        raise
    reader = libsndfile_blocks(f, name, max(1, round(block_s * rate)))
    return Blocks(name, rate, channels, f"{f.format}/{f.subtype}", frames, limits, reader, f.close)


def libsndfile_blocks(f: Any, name: str, block_frames: int) -> Iterator[np.ndarray]:
    import soundfile as sf

    while True:
        try:
            block = f.read(block_frames, dtype="float32", always_2d=True)
        except sf.LibsndfileError as e:
            raise CorruptAudioError(f"{name}: could not decode ({LIBSNDFILE_PREFIX.sub('', str(e))})") from e
        except (RuntimeError, ValueError, EOFError) as e:
            raise CorruptAudioError(f"{name}: could not decode ({e})") from e
        if not len(block):
            return
        yield block


def open_ffmpeg(
    source: AudioSource, limits: AudioLimits, block_s: float, libsndfile_reason: str = ""
) -> Blocks:
    """FFmpeg's reader (through PyAV) of the first audio stream, under the same limits as libsndfile's.

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
        # A file object: FFmpeg never sees a name it could take for a URL.
        handle: BinaryIO = open(source, "rb")  # noqa: SIM115 (closed with the Blocks, or below)
        release = handle.close
    else:
        handle = io.BytesIO(source) if isinstance(source, bytes) else source
        release = None  # the caller's file object stays the caller's
    try:
        return open_av(av, handle, name, limits, block_s, release)
    except BaseException:
        if release is not None:
            release()
        raise


def open_av(av: Any, handle: BinaryIO, name: str, limits: AudioLimits, block_s: float,
            release: Callable[[], None] | None) -> Blocks:  # fmt: skip
    refused = f"{name}: not a recording libsndfile or FFmpeg can read"
    if stream_size(handle) == 0:  # FFmpeg would only say "Invalid argument"
        raise UnsupportedAudioError(f"{refused}: the file is empty (0 bytes); {FORMATS_HINT}")
    try:
        # No protocol may be opened from inside the stream (playlists, concat lists): only these bytes.
        container = av.open(handle, mode="r", options={"protocol_whitelist": "none"})
    except (av.FFmpegError, OSError, ValueError) as e:
        raise UnsupportedAudioError(f"{refused} ({ffmpeg_reason(e)}); {FORMATS_HINT}") from e
    try:
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
        fmt = f"{container.format.name}/{stream.codec_context.name}"
    except BaseException:
        container.close()
        raise

    def close() -> None:
        container.close()
        if release is not None:
            release()

    reader = av_blocks(av, container, stream, name, max(1, round(block_s * rate)))
    return Blocks(name, rate, channels, fmt, declared, limits, reader, close, slack=AAC_SLACK_FRAMES)


def av_blocks(av: Any, container: Any, stream: Any, name: str, block_frames: int) -> Iterator[np.ndarray]:
    """The stream's frames as (frames, channels) float32, gathered into blocks of about ``block_frames``."""
    resampler = av.AudioResampler(format="fltp")  # planar float at the stream's own rate and layout
    pending: list[np.ndarray] = []  # (channels, n) pieces of the next block
    size = 0
    try:
        for frame in container.decode(stream):
            for converted in resampler.resample(frame):
                pending.append(converted.to_ndarray())
                size += pending[-1].shape[1]
            if size >= block_frames:
                yield np.ascontiguousarray(np.concatenate(pending, axis=1).T, dtype=np.float32)
                pending, size = [], 0
    except av.FFmpegError as e:
        raise CorruptAudioError(f"{name}: could not decode ({ffmpeg_reason(e)})") from e
    if pending:
        yield np.ascontiguousarray(np.concatenate(pending, axis=1).T, dtype=np.float32)


def stream_size(handle: BinaryIO) -> int:
    """Bytes from the current position to the end, the position kept."""
    position = handle.tell()
    end = handle.seek(0, io.SEEK_END)
    handle.seek(position)
    return end - position


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


def check_decoded(name: str, frames: int, declared_frames: int) -> None:
    """What every decoder's output must hold: samples, and about as many as the header declared."""
    if frames == 0:
        raise EmptyAudioError(f"{name}: the recording holds no samples")
    if frames < TRUNCATION_TOLERANCE * declared_frames:
        # Decoders stop quietly at the end of a cut-off upload; the header still tells the length.
        raise CorruptAudioError(
            f"{name}: truncated: the header declares {declared_frames} frames but only {frames} could be decoded"
        )


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
    if not allow_silence:
        check_not_silent(source_name(source), peak_dbfs(mono), limits)
    return Recording(resample(mono, rate, sample_rate), sample_rate, rate, data.shape[1], fmt)


def check_not_silent(name: str, peak_db: float, limits: AudioLimits) -> None:
    if peak_db < limits.silence_dbfs:
        raise SilentAudioError(
            f"{name}: silent (peak {peak_db:.1f} dBFS, below {limits.silence_dbfs:g} dBFS)"
        )


class AudioStream:
    """A recording decoded as it is read: mono float32 at ``sample_rate``, one block at a time.

    What ``load`` returns, in pieces, with memory bounded by a block (``block_s`` of the source)
    however long the recording: blocks come from the same decoders, are downmixed the same way, and
    go through libsoxr's streaming resampler, whose output does not depend on where blocks begin
    and end (the pieces joined equal ``load``'s samples). The checks ``load`` makes on the whole run
    as the blocks come: a recording found too long, damaged or cut off raises when that is known,
    and silence (a peak below ``limits.silence_dbfs`` over the whole recording) after the last piece.

    Use it as a context manager, or ``close()`` it, to release the file if reading stops early.
    """

    def __init__(self, source: AudioSource, sample_rate: int = 48_000, limits: AudioLimits = AudioLimits(),
                 allow_silence: bool = False, block_s: float = BLOCK_S):  # fmt: skip
        self.name = source_name(source)
        self.sample_rate = sample_rate
        self.limits = limits
        self.allow_silence = allow_silence
        self._blocks = open_blocks(source, limits, block_s)
        self.samples = 0  # emitted so far, at sample_rate
        self.peak_db = float("-inf")  # loudest sample so far, dBFS

    @property
    def source_rate(self) -> int:
        return self._blocks.rate

    @property
    def source_channels(self) -> int:
        return self._blocks.channels

    @property
    def source_format(self) -> str:
        return self._blocks.format

    @property
    def declared_duration_s(self) -> float:
        """The length the header declares (0 when it does not say); the decoded length may differ a little."""
        return self._blocks.declared_frames / self._blocks.rate

    @property
    def duration_s(self) -> float:
        """Seconds emitted so far: the recording's length once the stream is exhausted."""
        return self.samples / self.sample_rate

    def __iter__(self) -> Iterator[np.ndarray]:
        import soxr

        resampler = None
        if self.source_rate != self.sample_rate:
            resampler = soxr.ResampleStream(
                self.source_rate, self.sample_rate, 1, dtype="float32", quality="HQ"
            )
        for block in self._blocks:
            mono = to_mono(block)
            self.peak_db = max(self.peak_db, peak_dbfs(mono))
            yield from self._emit(resampler.resample_chunk(mono) if resampler else np.ascontiguousarray(mono))
        if resampler is not None:
            yield from self._emit(resampler.resample_chunk(np.zeros(0, np.float32), last=True))
        if not self.allow_silence:
            check_not_silent(self.name, self.peak_db, self.limits)

    def _emit(self, piece: np.ndarray) -> Iterator[np.ndarray]:
        if len(piece):
            self.samples += len(piece)
            yield piece

    def close(self) -> None:
        self._blocks.close()

    def __enter__(self) -> AudioStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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


def window_lengths(window_s: float, hop_s: float | None, sample_rate: int) -> tuple[int, int, int]:
    """(window, hop, min_tail) in samples for ``window_starts``; the hop defaults to the window (no overlap)."""
    hop_s = window_s if hop_s is None else hop_s
    if window_s <= 0 or hop_s <= 0:
        raise ValueError(f"window ({window_s} s) and hop ({hop_s} s) must be positive")
    window = round(window_s * sample_rate)
    return window, max(1, round(hop_s * sample_rate)), min(window, round(MIN_TAIL_S * sample_rate))


def window_starts(n_samples: int, window: int, hop: int, min_tail: int) -> list[int]:
    """Start offsets of a recording's windows: every ``hop`` samples from 0, until one reaches the end.

    BirdNET-Analyzer's rule: the last window, the one that reaches the end, holds what is left of
    the recording and is padded to a full window; it is dropped when that is less than ``min_tail``
    samples, unless it is the recording's only window. (Each window then starts where it would
    without the tail, so no two windows of a recording cover almost the same audio.)
    """
    last = (
        -(-max(0, n_samples - window) // hop) * hop
    )  # the first multiple of hop whose window reaches the end
    starts = list(range(0, last + 1, hop))
    if len(starts) > 1 and n_samples - starts[-1] < min_tail:
        starts.pop()
    return starts


def split(
    samples: np.ndarray, sample_rate: int, window_s: float = 10.0, hop_s: float | None = None
) -> Windows:
    """Cut a recording into ``window_s`` windows every ``hop_s`` seconds (default: no overlap)."""
    [part] = stream_windows(
        [samples], sample_rate, window_s, hop_s, per_part=1 << 62
    )  # one part: all windows
    return Windows(part.samples, part.starts_s, window_s, padded=len(samples) < round(window_s * sample_rate))


@dataclass(frozen=True)
class WindowPart:
    """Consecutive windows of one recording."""

    samples: np.ndarray  # (n, W) float32
    starts_s: np.ndarray  # (n,) start of each window in the recording, seconds


def stream_windows(
    pieces: Iterable[np.ndarray],
    sample_rate: int,
    window_s: float = 10.0,
    hop_s: float | None = None,
    pad_to: int | None = None,
    per_part: int = 64,
) -> Iterator[WindowPart]:
    """Cut a recording that arrives in pieces (an ``AudioStream``) into windows, ``per_part`` at a time.

    The windows are those ``window_starts`` places on the whole recording, so the result does not
    depend on the pieces' sizes. A window with fewer samples than ``pad_to`` (default: the window)
    is repeat-padded to it as CLAP pads a short recording: the last window of a recording, and
    every window when the window is shorter than the model's. Memory: about two windows' samples
    and a piece, plus the part being filled, whatever the recording's length.
    """
    window, hop, min_tail = window_lengths(window_s, hop_s, sample_rate)
    part = Part(per_part, pad_to or window, sample_rate)
    audio = Tail(2 * window)
    regular = 0  # the next window every ``hop``, cut as soon as its samples are all here
    emitted = 0
    for piece in pieces:
        audio.append(piece)
        while regular + window <= audio.end:
            yield from part.add(audio.get(regular, window), regular)
            regular, emitted = regular + hop, emitted + 1
        audio.drop_before(min(regular, audio.end - window))  # what a later window may still need
    for start in window_starts(audio.end, window, hop, min_tail)[
        emitted:
    ]:  # the tail, now the length is known
        yield from part.add(audio.get(start, window), start)
    yield from part.flush()


class Tail:
    """The end of a growing recording: samples ``start``..``end``, appended to and dropped from the front."""

    def __init__(self, capacity: int):
        self.data = np.zeros(max(1, capacity), np.float32)
        self.start = self.end = 0  # recording sample numbers of data[head] and of the end
        self.head = 0

    def append(self, piece: np.ndarray) -> None:
        held = self.end - self.start
        if self.head + held + len(piece) > len(self.data):  # move what is held to the front, grow if needed
            if held + len(piece) > len(self.data):
                grown = np.empty(2 * (held + len(piece)), np.float32)
                grown[:held] = self.data[self.head : self.head + held]
                self.data = grown
            else:
                self.data[:held] = self.data[self.head : self.head + held].copy()
            self.head = 0
        self.data[self.head + held : self.head + held + len(piece)] = piece
        self.end += len(piece)

    def get(self, start: int, length: int) -> np.ndarray:
        """Samples ``start``..``start + length`` (fewer at the end of the recording), a view."""
        at = self.head + start - self.start
        return self.data[at : at + min(length, self.end - start)]

    def drop_before(self, start: int) -> None:
        start = min(max(start, self.start), self.end)
        self.head += start - self.start
        self.start = start


class Part:
    """Windows gathered into a preallocated (n, width) array, handed on when ``size`` are in."""

    def __init__(self, size: int, width: int, sample_rate: int):
        self.size, self.width, self.sample_rate = size, width, sample_rate
        self.rows = np.empty((0, width), np.float32)
        self.starts: list[int] = []

    def add(self, row: np.ndarray, start: int) -> Iterator[WindowPart]:
        n = len(self.starts)
        if n == len(self.rows):  # grown by doubling up to ``size``: a recording may have a single window
            grown = np.empty((min(self.size, max(1, 2 * n)), self.width), np.float32)
            grown[:n] = self.rows
            self.rows = grown
        self.rows[n] = row if len(row) == self.width else repeat_pad(row, self.width)
        self.starts.append(start)
        if n + 1 == self.size:
            yield from self.flush()

    def flush(self) -> Iterator[WindowPart]:
        if self.starts:
            n = len(self.starts)
            yield WindowPart(self.rows[:n], np.asarray(self.starts, np.float64) / self.sample_rate)
            self.rows, self.starts = np.empty((0, self.width), np.float32), []


BAND_PASS_ORDER = 5  # BirdNET-Analyzer's Butterworth order for --fmin/--fmax
BAND_PASS_PAD_S = 0.25  # reflected around each window: the filter's ringing must not wrap around


def band_gain(freqs: np.ndarray, fmin: float, fmax: float | None, order: int = BAND_PASS_ORDER) -> np.ndarray:
    """|H(f)| of a Butterworth band-pass: a high-pass at ``fmin`` (none at 0), a low-pass at ``fmax`` (none at None)."""
    gain = np.ones_like(freqs, dtype=np.float64)
    with np.errstate(divide="ignore"):  # 0 Hz under a high-pass: fmin / 0 is infinite, the gain 0
        if fmin > 0:
            gain /= np.sqrt(1.0 + (fmin / freqs) ** (2 * order))
    if fmax is not None:
        gain /= np.sqrt(1.0 + (freqs / fmax) ** (2 * order))
    return gain


def band_pass(
    windows: np.ndarray,
    sample_rate: int,
    fmin: float = 0.0,
    fmax: float | None = None,
    order: int = BAND_PASS_ORDER,
) -> np.ndarray:
    """Windows ((N, W), or one (W,) signal) band-passed to ``fmin``–``fmax`` Hz, each on its own.

    The filter has the magnitude response of BirdNET-Analyzer's ``--fmin/--fmax`` filter (an order-5
    Butterworth, -3 dB at each edge) without its phase shift: it is applied as a gain on each
    window's spectrum, the window reflected ``BAND_PASS_PAD_S`` at both ends first. Filtering each
    window rather than the recording makes the result independent of how a recording is read in
    pieces: a window is the same whichever block its samples came in. ``fmin`` 0 and ``fmax`` None
    leave the windows as they are.
    """
    nyquist = sample_rate / 2
    if not 0 <= fmin < (fmax if fmax is not None else nyquist) <= nyquist:
        raise ConfigError(
            f"band-pass {fmin:g}–{fmax if fmax is not None else nyquist:g} Hz: need 0 <= fmin < fmax <= "
            f"{nyquist:g} Hz (half the {sample_rate} Hz sample rate)"
        )
    if fmin == 0 and fmax is None:
        return windows
    rows = np.atleast_2d(windows)
    width = rows.shape[1]
    pad = min(round(BAND_PASS_PAD_S * sample_rate), width - 1)
    size = width + 2 * pad
    gain = band_gain(np.fft.rfftfreq(size, 1 / sample_rate), fmin, fmax, order).astype(np.float32)
    out = np.empty(rows.shape, dtype=np.float32)
    for i, row in enumerate(rows):  # one window at a time: a batch's spectra at once would be large
        spectrum = np.fft.rfft(np.pad(row.astype(np.float32, copy=False), pad, mode="reflect"))
        out[i] = np.fft.irfft(spectrum * gain, size)[pad : pad + width]
    return out if windows.ndim == 2 else out[0]
