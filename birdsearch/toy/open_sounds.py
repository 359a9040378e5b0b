"""Sounds that are not birds, and what a different recorder does to a recording, at 48 kHz.

Six kinds of sound a recorder hears besides birds, each drawn from a ``variant`` (its "species": an
insect's carrier and pulse rhythm, a frog's call, a speaker's voice, ...) and a recording's own
generator:

- ``insect``: stridulation, pulse trains on a high carrier, in chirps or as a continuous trill;
- ``frog``: a chorus of a few individuals of one species (pulsed croaks, trills or rising peeps);
- ``rain``: drops (short decaying rings) over a hiss, light to heavy;
- ``wind``: gusty low-passed noise, sometimes whistling;
- ``engine``: a harmonic series on a slowly varying firing rate, idling or passing by;
- ``speech``: speech-like formant sequences (a voice's harmonics shaped by moving vowel formants,
  with fricative bursts and pauses).

And three ways a recorder can differ from the ones the model learned from (``shift``): a band
limit (the file is written at a low sample rate), clipping (too much gain), and another noise
floor (white self-noise and mains hum). Everything is numpy and seeded by the caller.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from birdsearch.toy.calls import SAMPLE_RATE, band_noise, coloured_noise, tone

NON_BIRD_KINDS = ("insect", "frog", "rain", "wind", "engine", "speech")
SHIFT_KINDS = ("band_limited", "clipped", "noise_floor")


def unit(signal: np.ndarray) -> np.ndarray:
    """``signal`` scaled to unit RMS, float32."""
    return (signal / (signal.std() + 1e-12)).astype(np.float32)


def smooth_walk(rng: np.random.Generator, n: int, rate_hz: float, sr: int) -> np.ndarray:
    """A slowly varying curve in about [-1, 1]: random turning points ``rate_hz`` a second, interpolated."""
    points = rng.uniform(-1, 1, max(2, int(n / sr * rate_hz) + 2))
    return np.interp(np.linspace(0, len(points) - 1, n), np.arange(len(points)), points)


# --- the variants: what stays the same across a kind's recordings of one "species" -------------


@dataclass(frozen=True)
class Variant:
    """One "species" of a non-bird kind: its parameters, drawn once from its own stream."""

    kind: str
    index: int
    params: dict[str, float]


def draw_variant(kind: str, index: int, rng: np.random.Generator) -> Variant:
    """The parameters of variant ``index`` of ``kind``."""
    u = rng.uniform
    params: dict[str, float]
    if kind == "insect":
        params = {"carrier": u(3500, 12000), "pulse_hz": u(25, 120), "pulses": float(rng.integers(3, 12)),
                  "chirp_s": u(0.3, 1.4), "continuous": float(rng.random() < 0.35)}  # fmt: skip
    elif kind == "frog":
        params = {"call": float(rng.integers(3)), "f0": u(150, 900), "pulse_hz": u(8, 60),
                  "call_s": u(0.1, 0.8), "period_s": u(0.6, 2.5), "individuals": float(rng.integers(3, 9))}  # fmt: skip
    elif kind == "rain":
        params = {"drops_per_s": float(np.exp(u(np.log(40), np.log(700)))), "ring_hz": u(1200, 4500),
                  "hiss": u(0.1, 1.0)}  # fmt: skip
    elif kind == "wind":
        params = {"gust_hz": u(0.1, 0.6), "depth": u(0.3, 0.9), "smooth": float(rng.integers(4, 60)),
                  "whistle_hz": u(300, 1200) if rng.random() < 0.5 else 0.0}  # fmt: skip
    elif kind == "engine":
        params = {"f0": u(22, 160), "tilt": u(0.6, 1.6), "wobble": u(0.01, 0.15), "passing": float(rng.random() < 0.5),
                  "noise": u(0.05, 0.6)}  # fmt: skip
    elif kind == "speech":
        params = {"f0": u(95, 280), "formant_scale": u(0.95, 1.3), "syllables_per_s": u(3.0, 6.5),
                  "pause_s": u(0.2, 1.0)}  # fmt: skip
    else:
        raise ValueError(f"unknown non-bird kind {kind!r}: use one of {', '.join(NON_BIRD_KINDS)}")
    return Variant(kind, index, {k: float(v) for k, v in params.items()})


def non_bird(
    variant: Variant, duration_s: float, rng: np.random.Generator, sr: int = SAMPLE_RATE
) -> np.ndarray:
    """``duration_s`` of one recording of ``variant`` at ``sr``, unit RMS.

    Kinds with nothing above 8 kHz are synthesised at 16 kHz and resampled: a third of the work.
    """
    rate = SYNTH_RATES[variant.kind]
    samples = SYNTHS[variant.kind](variant.params, int(duration_s * rate), rng, rate)
    if rate != sr:
        import soxr

        samples = soxr.resample(samples.astype(np.float32), rate, sr, quality="HQ")
    return unit(samples[: int(duration_s * sr)])


def harmonics(phase: np.ndarray, count: int):
    """``sin(k * phase)`` for k = 1..count, by the recurrence sin(kx) = 2 cos(x) sin((k-1)x) - sin((k-2)x).

    One multiply-add per sample and harmonic instead of a sine.
    """
    previous, current, twice_cos = np.zeros_like(phase), np.sin(phase), 2 * np.cos(phase)
    for _ in range(count):
        yield current
        previous, current = current, twice_cos * current - previous


# --- the six kinds -----------------------------------------------------------------------------


def insect(p: dict[str, float], n: int, rng: np.random.Generator, sr: int) -> np.ndarray:
    t = np.arange(n) / sr
    carrier = p["carrier"] * (1 + 0.01 * np.sin(2 * np.pi * rng.uniform(3, 9) * t))
    phase = (t * p["pulse_hz"] * rng.uniform(0.95, 1.05)) % 1.0
    pulses = np.sin(np.pi * np.clip(phase / 0.6, 0, 1)) ** 2
    if not p["continuous"]:
        period = p["chirp_s"] * rng.uniform(0.9, 1.1)
        pulses = pulses * (((t + rng.uniform(0, period)) % period) < p["pulses"] / p["pulse_hz"])
    return (tone(carrier, sr) + 0.3 * tone(2 * carrier, sr)) * pulses


def frog_call(p: dict[str, float], f0: float, length: int, rng: np.random.Generator, sr: int) -> np.ndarray:
    """One call of one individual: a pulsed harmonic croak, a trill of tonal notes, or a rising peep."""
    t = np.arange(length) / sr
    u = t / max(t[-1], 1e-9)
    envelope = np.sin(np.pi * u) ** 0.5
    call = int(p["call"])
    if call == 0:  # croak: harmonics of f0, pulsed
        harmonics = sum(np.sin(2 * np.pi * k * f0 * t) / k**0.7 for k in range(1, 9) if k * f0 < 0.45 * sr)
        pulses = np.sin(np.pi * ((t * p["pulse_hz"]) % 1.0)) ** 4
        return harmonics * pulses * envelope
    if call == 1:  # trill: tonal notes at 4 x f0
        return (
            tone(np.full(length, 4 * f0), sr) * (np.sin(np.pi * ((t * p["pulse_hz"]) % 1.0)) ** 2) * envelope
        )
    return tone(8 * f0 * (1 + 0.25 * u), sr) * envelope  # peep: a short rising whistle


def frog(p: dict[str, float], n: int, rng: np.random.Generator, sr: int) -> np.ndarray:
    out = np.zeros(n)
    length = max(16, int(p["call_s"] * sr))
    for _ in range(int(p["individuals"])):
        f0, level = p["f0"] * rng.uniform(0.92, 1.08), rng.uniform(0.2, 1.0)
        call = frog_call(p, f0, length, rng, sr) * level
        position = int(rng.uniform(0, p["period_s"]) * sr)
        while position < n:
            end = min(n, position + length)
            out[position:end] += call[: end - position]
            position += int(p["period_s"] * rng.uniform(0.7, 1.3) * sr)
    return out


def rain(p: dict[str, float], n: int, rng: np.random.Generator, sr: int) -> np.ndarray:
    drops = rng.poisson(p["drops_per_s"] * n / sr)
    t = np.arange(int(0.02 * sr)) / sr
    starts = rng.integers(0, max(1, n - len(t)), drops)
    ring = p["ring_hz"] * rng.uniform(0.6, 1.6, (drops, 1))
    decay, level = rng.uniform(150, 600, (drops, 1)), rng.uniform(0.3, 3.0, (drops, 1))
    rings = level * np.sin(2 * np.pi * ring * t) * np.exp(-decay * t)  # (drops, ring samples)
    where = (starts[:, None] + np.arange(len(t))).ravel()
    return p["hiss"] * coloured_noise(rng, n, 0.5) + np.bincount(where, rings.ravel(), minlength=n)[:n]


def wind(p: dict[str, float], n: int, rng: np.random.Generator, sr: int) -> np.ndarray:
    k = int(p["smooth"])
    summed = np.cumsum(coloured_noise(rng, n + k, 1.5).astype(np.float64))
    rumble = summed[k:] - summed[:-k]  # a moving average: the higher ``smooth``, the duller
    gusts = 1 + p["depth"] * smooth_walk(rng, n, p["gust_hz"], sr)
    out = rumble / (rumble.std() + 1e-12) * gusts
    if p["whistle_hz"]:
        whistle_hz = p["whistle_hz"] * (1 + 0.2 * gusts)
        out += 0.3 * gusts * band_noise(rng, n, 0, 60, sr) * tone(whistle_hz, sr)
    return out


def engine(p: dict[str, float], n: int, rng: np.random.Generator, sr: int) -> np.ndarray:
    t = np.arange(n) / sr
    rpm = 1 + p["wobble"] * smooth_walk(rng, n, 0.5, sr)
    level = np.ones(n)
    if p["passing"]:  # a vehicle passing by: louder, then softer, its pitch falling (Doppler)
        centre, width = rng.uniform(0.3, 0.7) * n / sr, rng.uniform(1.5, 5.0)
        level = 0.1 + 1 / (1 + ((t - centre) / width) ** 2)
        rpm = rpm * (1 + 0.06 * np.tanh(-(t - centre) / width))
    phase = 2 * np.pi * np.cumsum(p["f0"] * rpm) / sr + rng.uniform(0, 2 * np.pi)
    count = int(min(40, 0.45 * sr / (1.1 * p["f0"])))
    series = sum(wave / k ** p["tilt"] for k, wave in enumerate(harmonics(phase, count), start=1))
    return level * (series + p["noise"] * 3 * coloured_noise(rng, n, 1.5))


# Vowel formants F1, F2, F3 in Hz (an adult male voice; ``formant_scale`` moves them up).
VOWELS = ((730, 1090, 2440), (270, 2290, 3010), (300, 870, 2240), (530, 1840, 2480), (570, 840, 2410))


def speech(p: dict[str, float], n: int, rng: np.random.Generator, sr: int) -> np.ndarray:
    """Harmonics of a voice whose amplitudes follow three moving formants; fricatives; pauses."""
    t = np.arange(n) / sr
    syllable_s = 1 / p["syllables_per_s"]
    # The formant track: a vowel per syllable, glided between; a voiced/unvoiced/pause plan alongside.
    count = int(n / sr / syllable_s) + 2
    targets = (
        np.array([VOWELS[int(i)] for i in rng.integers(len(VOWELS), size=count)], float) * p["formant_scale"]
    )
    position = t / syllable_s
    formants = np.stack([np.interp(position, np.arange(count), targets[:, i]) for i in range(3)])
    utterance = smooth_walk(rng, n, 0.5, sr) > rng.uniform(-0.6, -0.1)  # speaking or pausing
    voiced = ((position % 1.0) > 0.2) & utterance
    f0 = p["f0"] * (1 + 0.12 * smooth_walk(rng, n, 2.0, sr))  # intonation
    phase = 2 * np.pi * np.cumsum(f0) / sr
    out = np.zeros(n)
    step = 16  # formant gains change slowly: computed every 16 samples, held in between
    coarse_f0, coarse_formants = f0[::step], formants[:, ::step]
    for k, wave in enumerate(harmonics(phase, int(min(4000, 0.45 * sr) / (1.15 * p["f0"]))), start=1):
        freq = k * coarse_f0
        gain = sum(1 / (1 + ((freq - coarse_formants[i]) / (60 + 40 * i)) ** 2) for i in range(3))
        out += np.repeat(gain, step)[:n] * wave / k**0.5
    fricative = ((position % 1.0) < 0.12) & utterance & (np.floor(position) % 2 == 0)
    hiss = band_noise(rng, n, min(5000, 0.3 * sr), min(3000, 0.2 * sr), sr)
    return out * voiced + 0.3 * hiss * fricative


# The rate each kind is synthesised at (16 kHz: wind, engines and voices make nothing above 8 kHz).
SYNTH_RATES = {"insect": SAMPLE_RATE, "frog": SAMPLE_RATE, "rain": SAMPLE_RATE, "wind": 16_000, "engine": 16_000,
               "speech": 16_000}  # fmt: skip
SYNTHS: dict[str, Callable[[dict[str, float], int, np.random.Generator, int], np.ndarray]] = {
    "insect": insect, "frog": frog, "rain": rain, "wind": wind, "engine": engine, "speech": speech,
}  # fmt: skip


# --- another recorder ---------------------------------------------------------------------------


def draw_shift(kind: str, index: int, rng: np.random.Generator) -> Variant:
    """Variant ``index`` of a recorder shift: its band limit, its gain into clipping, or its noise floor."""
    if kind == "band_limited":
        params = {"rate": float(rng.choice([8000, 11025, 12000, 16000]))}
    elif kind == "clipped":
        params = {
            "drive": float(np.exp(rng.uniform(np.log(4), np.log(30)))),
            "ceiling": rng.uniform(0.2, 0.6),
        }
    elif kind == "noise_floor":
        params = {
            "snr_db": rng.uniform(-6, 6),
            "hum_hz": float(rng.choice([50, 60])),
            "hum": rng.uniform(0.0, 1.0),
        }
    else:
        raise ValueError(f"unknown recorder shift {kind!r}: use one of {', '.join(SHIFT_KINDS)}")
    return Variant(kind, index, {k: float(v) for k, v in params.items()})


def shift_recorder(clean: np.ndarray, background: np.ndarray, shift: Variant, rng: np.random.Generator,
                   sr: int = SAMPLE_RATE) -> tuple[np.ndarray, int]:  # fmt: skip
    """A clean call track as ``shift``'s recorder hears it: (samples in [-1, 1], the file's sample rate).

    The field background is the world's (``background``, unit RMS) at the world's signal-to-noise
    ratios; what differs is the recorder: a band-limited one is written at its low rate (the reader
    resamples it, with nothing above its Nyquist frequency), the others at 48 kHz.
    """
    voiced = clean[np.abs(clean) > 1e-4]
    level = voiced.std() if voiced.size else 1.0
    out = clean + background * level / 10 ** (rng.uniform(8, 30) / 20)
    out = out / (np.abs(out).max() + 1e-9)
    p = shift.params
    if shift.kind == "clipped":
        out = np.clip(out * p["drive"], -1, 1) * p["ceiling"]
    elif shift.kind == "noise_floor":
        t = np.arange(len(out)) / sr
        hum = sum(np.sin(2 * np.pi * k * p["hum_hz"] * t) / k for k in (1, 2, 3, 5))
        hiss = rng.standard_normal(len(out)) * out.std() / 10 ** (p["snr_db"] / 20)
        out = out + hiss + p["hum"] * out.std() * 3 * hum
    out = out * rng.uniform(0.3, 0.9) / (np.abs(out).max() + 1e-9)
    if shift.kind == "band_limited":
        import soxr

        rate = int(p["rate"])
        return soxr.resample(out.astype(np.float32), sr, rate, quality="HQ").astype(np.float32), rate
    return out.astype(np.float32), sr
