"""Synthetic bird calls at 48 kHz: species syllables in phrases, per-recording variation, background noise.

A species' ``Song`` fixes its call type (shared by its genus), pitch and rhythm. A recording repeats
its phrase from a random start to the end, so every 10 s crop holds calls. Each recording varies the
pitch (a few per cent), the tempo, the level and the background (pink and brown noise, sometimes
an insect's whine), at a signal-to-noise ratio drawn per recording.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from birdsearch.toy.taxonomy import Song

SAMPLE_RATE = 48_000


@dataclass(frozen=True)
class Event:
    """Where a species calls in a recording: seconds from its start."""

    start_s: float
    end_s: float


def envelope(n: int, attack: float = 0.15) -> np.ndarray:
    """Rise over the first ``attack`` of the syllable, fall to zero at its end."""
    t = np.linspace(0, 1, n, endpoint=False)
    rise = np.clip(t / attack, 0, 1)
    return np.sin(0.5 * np.pi * rise) * np.cos(0.5 * np.pi * t) ** 0.6


def tone(freq: np.ndarray, sr: int) -> np.ndarray:
    """A sine following the instantaneous frequency ``freq`` (Hz per sample)."""
    return np.sin(2 * np.pi * np.cumsum(freq) / sr)


def band_noise(rng: np.random.Generator, n: int, centre: float, width: float, sr: int) -> np.ndarray:
    """Noise in a band of about ``width`` Hz around ``centre``: low-passed white noise shifted up.

    A moving average (via a cumulative sum) is the low-pass; multiplying by a sine at ``centre``
    moves it there. Cheaper than an FFT mask on odd-length syllables.
    """
    k = max(1, int(sr / width))
    white = rng.standard_normal(n + k)
    summed = np.cumsum(white)
    low = (summed[k:] - summed[:-k])[:n]
    out = low * np.sin(2 * np.pi * centre * np.arange(n) / sr)
    return out / (np.abs(out).max() + 1e-9)


def syllable(song: Song, f0: float, duration: float, rng: np.random.Generator, sr: int) -> np.ndarray:
    """One syllable of ``song`` at base frequency ``f0``."""
    n = max(16, int(duration * sr))
    t = np.arange(n) / sr
    u = t / duration  # 0..1 through the syllable
    vibrato = 1 + song.vibrato_depth * np.sin(2 * np.pi * song.vibrato_hz * t)
    kind = song.call_type
    if kind == "sweep_up":
        out = tone(f0 * song.ratio**u * vibrato, sr)
    elif kind == "sweep_down":
        out = tone(f0 * song.ratio ** (1 - u) * vibrato, sr)
    elif kind == "chirp":  # a fast, steep fall
        out = tone(f0 * 1.6 * (0.5 ** (u * 1.3)) * vibrato, sr)
    elif kind == "two_note":
        step = 0.5 + 0.5 * np.tanh((u - 0.5) * 40)
        out = tone(f0 * (1 + (song.ratio - 1) * step) * vibrato, sr)
    elif kind == "harmonic":  # a low fundamental with a stack of harmonics
        base = f0 / 2.5
        phase = 2 * np.pi * np.cumsum(base * vibrato) / sr
        harmonics = [k for k in range(1, 7) if k * base < 0.45 * sr]
        out = sum(np.sin(k * phase) / k for k in harmonics)
    elif kind == "trill":  # fast repeated down-slurred notes
        note = (t * song.trill_hz) % 1.0
        out = tone(f0 * (1 + 0.35 * (1 - note)) * vibrato, sr) * np.sin(np.pi * note) ** 2
    elif kind == "buzz":  # an amplitude-modulated noisy tone
        carrier = 0.6 * tone(f0 * vibrato, sr) + 0.4 * band_noise(rng, n, f0, 0.25 * f0, sr)
        out = carrier * (0.5 + 0.5 * np.sin(2 * np.pi * song.trill_hz * 3 * t))
    # The two kinds below only the open world's out-of-gallery genera use (birdsearch.toy.openset).
    elif kind == "warble":  # a tone wandering up and down, a new turn every few tens of ms
        turns = rng.uniform(-1, 1, max(2, int(duration * song.trill_hz) + 2))
        wander = np.interp(u * (len(turns) - 1), np.arange(len(turns)), turns)
        out = tone(f0 * (song.ratio ** (0.5 * wander)) * vibrato, sr)
    elif kind == "rattle":  # a train of short broadband clicks
        note = (t * song.trill_hz * 2) % 1.0
        out = band_noise(rng, n, f0, 0.8 * f0, sr) * np.exp(-note * 12)
    else:
        raise ValueError(f"unknown call type {kind!r}")
    return (out * envelope(n)).astype(np.float32)


def phrase(song: Song, rng: np.random.Generator, pitch: float, tempo: float, sr: int) -> np.ndarray:
    """One phrase: ``song.syllables`` syllables separated by the species' gap."""
    parts = []
    for _ in range(song.syllables):
        duration = song.syllable_s * tempo * rng.uniform(0.92, 1.08)
        parts.append(syllable(song, song.f0 * pitch * rng.uniform(0.98, 1.02), duration, rng, sr))
        parts.append(np.zeros(int(song.gap_s * tempo * sr), np.float32))
    return np.concatenate(parts[:-1])


def sing(
    song: Song,
    duration_s: float,
    rng: np.random.Generator,
    sr: int = SAMPLE_RATE,
    start_s: float | None = None,
) -> tuple[np.ndarray, list[Event]]:
    """A clean track of ``duration_s`` in which the species repeats its phrase; and where it sings.

    The pitch and tempo of the individual bird are drawn once per call to ``sing``.
    """
    pitch, tempo = rng.normal(1, 0.03), rng.uniform(0.9, 1.1)
    n = int(duration_s * sr)
    out = np.zeros(n, np.float32)
    events: list[Event] = []
    position = int((rng.uniform(0, 0.8) if start_s is None else start_s) * sr)
    while position < n:
        sound = phrase(song, rng, pitch, tempo, sr) * rng.uniform(0.6, 1.0)
        end = min(n, position + len(sound))
        out[position:end] += sound[: end - position]
        events.append(Event(position / sr, end / sr))
        position = end + int(song.phrase_gap_s * tempo * rng.uniform(0.8, 1.25) * sr)
    return out, events


def coloured_noise(rng: np.random.Generator, n: int, exponent: float) -> np.ndarray:
    """Noise with power falling as 1/f**exponent (1: pink, 2: brown), unit RMS."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n)
    freqs[0] = freqs[1]
    out = np.fft.irfft(spectrum / freqs ** (exponent / 2), n)
    return (out / (out.std() + 1e-12)).astype(np.float32)


class NoiseBank:
    """Long pink and brown noise tracks, made once; a recording's background is a random cut of each.

    Shaping noise with an FFT per recording would cost more than synthesising the calls.
    """

    def __init__(self, seed: int, length: int = 1 << 22):
        rng = np.random.default_rng([seed, 99])
        self.pink = coloured_noise(rng, length, 1.0)
        self.brown = coloured_noise(rng, length, 2.0)

    def cut(self, track: np.ndarray, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` samples from a random place in ``track`` (wrapping), maybe reversed."""
        start = int(rng.integers(len(track)))
        out = np.take(track, np.arange(start, start + n), mode="wrap")
        return out[::-1] if rng.random() < 0.5 else out

    def background(self, rng: np.random.Generator, n: int, sr: int = SAMPLE_RATE) -> np.ndarray:
        """Field background: pink hiss, brown rumble (wind, traffic), now and then an insect; unit RMS."""
        noise = self.cut(self.pink, rng, n) + rng.uniform(0.1, 0.8) * self.cut(self.brown, rng, n)
        if rng.random() < 0.3:
            t = np.arange(n) / sr
            whine = np.sin(2 * np.pi * rng.uniform(7000, 11000) * t)
            noise += rng.uniform(0.1, 0.5) * whine * (0.6 + 0.4 * np.sin(2 * np.pi * rng.uniform(2, 8) * t))
        return (noise / (noise.std() + 1e-12)).astype(np.float32)


def mix(signal: np.ndarray, noise: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    """``signal`` plus ``noise`` at ``snr_db`` (signal RMS over its voiced part), peak-normalised."""
    voiced = signal[np.abs(signal) > 1e-4]
    level = voiced.std() if voiced.size else 1.0
    out = signal + noise * level / 10 ** (snr_db / 20)
    return (out * rng.uniform(0.3, 0.9) / (np.abs(out).max() + 1e-9)).astype(np.float32)


def recording(
    song: Song, duration_s: float, rng: np.random.Generator, noise: NoiseBank, sr: int = SAMPLE_RATE
) -> np.ndarray:
    """A field recording of one species: its calls over background noise at a random SNR (8–30 dB)."""
    clean, _ = sing(song, duration_s, rng, sr)
    return mix(clean, noise.background(rng, len(clean), sr), rng.uniform(8, 30), rng)


def soundscape(
    songs: list[Song], duration_s: float, rng: np.random.Generator, noise: NoiseBank, sr: int = SAMPLE_RATE
) -> tuple[np.ndarray, list[tuple[int, Event]]]:
    """A long recording in which each of ``songs`` sings one to three bouts at random onsets.

    Returns the mixture and the (index into ``songs``, event) list: one event per bout, from its
    first syllable to its last.
    """
    n = int(duration_s * sr)
    mixture = np.zeros(n, np.float32)
    events: list[tuple[int, Event]] = []
    for index, song in enumerate(songs):
        for _ in range(int(rng.integers(1, 4))):
            bout_s = rng.uniform(1.5, 5.0)
            onset = rng.uniform(0, duration_s - bout_s)
            clean, bout_events = sing(song, bout_s, rng, sr, start_s=0.0)
            start = int(onset * sr)
            mixture[start : start + len(clean)] += clean * 10 ** (rng.uniform(-12, 0) / 20)
            events.append((index, Event(onset + bout_events[0].start_s, onset + bout_events[-1].end_s)))
    out = mix(mixture, noise.background(rng, n, sr), rng.uniform(5, 20), rng)
    return out, sorted(events, key=lambda e: e[1].start_s)
