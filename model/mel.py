"""Audio front end, part two: windows of samples to the log-mel features the CLAP audio tower eats.

``LogMel`` is a torch implementation of ``transformers.ClapFeatureExtractor`` (HTSAT, unfused,
``truncation="rand_trunc"``): periodic Hann window, centred STFT with reflect padding, power
spectrum, the extractor's own mel filter bank, ``10·log10(max(mel, 1e-10))``. It runs batched on
CPU or GPU. ``tests/model/test_mel.py`` holds it equal to the extractor on real recordings: within
``PARITY_ATOL_DB_SIGNAL`` dB on every bin within 80 dB of the window's loudest, and within
``PARITY_ATOL_DB`` dB everywhere. The difference is float32 (torch) against float64 (numpy)
rounding, which grows as a bin's energy falls towards 100 dB below the frame's.

``MelFrontEnd`` picks the implementation for the device: the torch one on a GPU and, on a CPU,
whichever ``bench/mel.py`` measured faster (``CPU_IMPLEMENTATION``; BENCHMARKS.md, Log-mel front end).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from birdsearch.errors import ConfigError, FrontEndSettingError

# Maximum absolute difference, in dB, between LogMel and ClapFeatureExtractor on real recordings:
# on bins within PARITY_RANGE_DB of the window's loudest bin, and on all bins.
PARITY_RANGE_DB = 80.0
PARITY_ATOL_DB_SIGNAL = 5e-3
PARITY_ATOL_DB = 0.1

# Measured by bench/mel.py on a 2-core CPU (see BENCHMARKS.md, Log-mel front end): the batched torch
# STFT beat the extractor's per-frame numpy loop, so the CPU uses torch too. Set to "numpy" to use
# the Hugging Face extractor instead.
CPU_IMPLEMENTATION = "torch"

# On a CPU the torch mel runs one window at a time: a batch's STFT intermediates (4 MB of complex
# spectrum per 10 s window) pass glibc's mmap threshold, and each call then pays page faults on
# fresh memory, which made a whole batch at once slower than window by window (BENCHMARKS.md,
# Log-mel front end).
CPU_MEL_WINDOWS_PER_CALL = 1


@dataclass(frozen=True)
class FrontEndConfig:
    """Everything that decides the features; saved in checkpoint cards and index manifests."""

    sample_rate: int = 48_000  # Hz the audio tower was trained at
    window_s: float = 10.0  # seconds per window (CLAP's max_length_s)
    n_fft: int = 1024  # STFT size (fft_window_size)
    hop_length: int = 480  # STFT hop in samples: 100 frames per second at 48 kHz
    n_mels: int = 64  # mel bins (feature_size)
    f_min: float = 0.0  # lowest mel filter edge, Hz
    f_max: float = 14_000.0  # highest mel filter edge, Hz
    mel_scale: str = "slaney"  # the extractor's filters for unfused models (as librosa); "htk" is fusion's
    padding: str = "repeatpad"  # how windows shorter than window_s are filled (by birdsearch.model.audio)

    def __post_init__(self) -> None:
        # Cards and manifests are read back with from_dict: refuse what LogMel does not compute.
        if self.mel_scale != "slaney":
            raise FrontEndSettingError("mel_scale", self.mel_scale, "only 'slaney' (unfused CLAP models)")
        if self.padding != "repeatpad":
            raise FrontEndSettingError("padding", self.padding, "only 'repeatpad'")

    @property
    def window_samples(self) -> int:
        return round(self.window_s * self.sample_rate)

    @property
    def n_frames(self) -> int:
        return self.window_samples // self.hop_length + 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FrontEndConfig:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    @classmethod
    def from_feature_extractor(cls, fe: Any) -> FrontEndConfig:
        """Read the settings of a ``ClapFeatureExtractor`` (as loaded from preprocessor_config.json).

        Every setting that changes the features is either carried over (and held equal to the
        extractor by ``tests/model/test_mel.py``) or refused with FrontEndSettingError; see
        ``refuse_unsupported_settings``.
        """
        refuse_unsupported_settings(fe)
        return cls(
            sample_rate=int(fe.sampling_rate),
            window_s=float(fe.max_length_s),
            n_fft=int(fe.fft_window_size),
            hop_length=int(fe.hop_length),
            n_mels=int(fe.feature_size),
            f_min=float(fe.frequency_min),
            f_max=float(fe.frequency_max),
        )

    def mel_filters(self) -> np.ndarray:
        """The (n_fft/2+1, n_mels) filter bank, built by the same function the extractor uses."""
        from transformers.audio_utils import mel_filter_bank

        return mel_filter_bank(
            num_frequency_bins=self.n_fft // 2 + 1,
            num_mel_filters=self.n_mels,
            min_frequency=self.f_min,
            max_frequency=self.f_max,
            sampling_rate=self.sample_rate,
            norm="slaney" if self.mel_scale == "slaney" else None,
            mel_scale=self.mel_scale,
        )

    def feature_extractor(self) -> Any:
        """The equivalent ``transformers.ClapFeatureExtractor`` (the reference implementation)."""
        from transformers import ClapFeatureExtractor

        # The extractor multiplies max_length_s by the rate to get a sample count: keep it an int.
        window_s = int(self.window_s) if float(self.window_s).is_integer() else self.window_s
        return ClapFeatureExtractor(
            feature_size=self.n_mels,
            sampling_rate=self.sample_rate,
            hop_length=self.hop_length,
            max_length_s=window_s,
            fft_window_size=self.n_fft,
            frequency_min=self.f_min,
            frequency_max=self.f_max,
            truncation="rand_trunc",
            padding=self.padding,
        )


def refuse_unsupported_settings(fe: Any) -> None:
    """Raise FrontEndSettingError for any ClapFeatureExtractor setting this front end would not honour.

    Carried over, and proven equal to the extractor: ``sampling_rate``, ``max_length_s``,
    ``fft_window_size``, ``hop_length``, ``feature_size``, ``frequency_min``/``frequency_max``. The
    rest either has one supported value or is refused here. ``padding_side`` and
    ``return_attention_mask`` do not reach CLAP's features.
    """
    if fe.truncation != "rand_trunc":
        reason = (
            "it stacks four mel views for a fusion CLAP model (enable_fusion=true), and an unfused "
            "model's audio tower cannot take them (transformers fails on that input); fusion models "
            "are not supported, and an unfused one is trained with truncation 'rand_trunc'"
            if fe.truncation == "fusion"
            else "the only truncation of an unfused CLAP model is 'rand_trunc'"
        )
        raise FrontEndSettingError("truncation", fe.truncation, reason)
    if fe.padding != "repeatpad":
        raise FrontEndSettingError(
            "padding", fe.padding, "only 'repeatpad' is implemented (whole repeats, then zeros)"
        )
    # Stored by ClapFeatureExtractor but never applied to the features (transformers 4.x to 5.x): with
    # either set, what the model was trained on cannot be told from the file.
    for name, default, fix in (("top_db", None, "null"), ("padding_value", 0.0, "0.0")):
        value = getattr(fe, name)
        if value != default:
            raise FrontEndSettingError(
                name,
                value,
                "transformers' ClapFeatureExtractor stores it without applying it, so the features the "
                f"model was trained on are ambiguous; set it to {fix} if it was trained with that extractor",
            )
    check_frame_settings(fe)


def check_frame_settings(fe: Any) -> None:
    """The sizes and frequencies: positive, a whole number of samples per window, filters under Nyquist."""
    for name in ("sampling_rate", "fft_window_size", "hop_length", "feature_size"):
        value = getattr(fe, name)
        if not float(value).is_integer() or value < 1:
            raise FrontEndSettingError(name, value, "must be a positive whole number")
    samples = float(fe.max_length_s) * fe.sampling_rate
    if fe.max_length_s <= 0 or not samples.is_integer():
        raise FrontEndSettingError(
            "max_length_s",
            fe.max_length_s,
            f"must be positive and a whole number of samples at {fe.sampling_rate} Hz",
        )
    nyquist = fe.sampling_rate / 2
    if not 0 <= fe.frequency_min < fe.frequency_max <= nyquist:
        raise FrontEndSettingError(
            "frequency_min/frequency_max",
            (fe.frequency_min, fe.frequency_max),
            f"need 0 <= frequency_min < frequency_max <= {nyquist:g} Hz (half of sampling_rate)",
        )


class LogMel(nn.Module):
    """(B, T) waveforms at the config's rate to (B, 1, frames, n_mels) log-mel features."""

    def __init__(self, config: FrontEndConfig = FrontEndConfig()):
        super().__init__()
        self.config = config
        self.register_buffer("window", torch.hann_window(config.n_fft, periodic=True), persistent=False)
        filters = torch.from_numpy(config.mel_filters().astype(np.float32))
        self.register_buffer("filters", filters, persistent=False)  # (n_freq, n_mels)

    @torch.no_grad()
    def forward(self, waveforms: torch.Tensor) -> torch.Tensor:
        if waveforms.ndim != 2:
            raise ValueError(f"expected (batch, samples) waveforms, got shape {tuple(waveforms.shape)}")
        spec = torch.stft(
            waveforms.float(),
            n_fft=self.config.n_fft,
            hop_length=self.config.hop_length,
            window=self.window,
            center=True,
            pad_mode="reflect",
            return_complex=True,
        )  # (B, n_freq, frames)
        power = spec.real.square() + spec.imag.square()
        mel = torch.matmul(power.transpose(1, 2), self.filters)  # (B, frames, n_mels)
        return (10.0 * torch.log10(mel.clamp_min(1e-10))).unsqueeze(1)


class NumpyLogMel:
    """The Hugging Face extractor, batched over windows that are already exactly one window long."""

    def __init__(self, config: FrontEndConfig = FrontEndConfig()):
        self.config = config
        self.extractor = config.feature_extractor()

    def __call__(self, waveforms: np.ndarray) -> torch.Tensor:
        out = self.extractor(list(waveforms), sampling_rate=self.config.sample_rate, return_tensors="np")
        return torch.from_numpy(np.asarray(out["input_features"], dtype=np.float32))


class MelFrontEnd:
    """Windows (numpy or torch, (B, T)) to features on ``device``, with the faster implementation there."""

    def __init__(
        self, config: FrontEndConfig, device: torch.device | str = "cpu", implementation: str | None = None
    ):
        self.config = config
        self.device = torch.device(device)
        self.implementation = implementation or (
            "torch" if self.device.type == "cuda" else CPU_IMPLEMENTATION
        )
        if self.implementation == "torch":
            self.torch_mel = LogMel(config).to(self.device)
        elif self.implementation == "numpy":
            self.numpy_mel = NumpyLogMel(config)
        else:
            raise ConfigError(f"unknown mel implementation {self.implementation!r}: use 'torch' or 'numpy'")

    def __call__(self, windows: np.ndarray | torch.Tensor) -> torch.Tensor:
        expected = self.config.window_samples
        if windows.shape[-1] != expected:
            raise ValueError(f"windows must hold {expected} samples each, got {windows.shape[-1]}")
        if self.implementation == "numpy":
            array = windows.cpu().numpy() if isinstance(windows, torch.Tensor) else windows
            return self.numpy_mel(array).to(self.device)
        tensor = torch.as_tensor(windows, dtype=torch.float32).to(self.device, non_blocking=True)
        if self.device.type == "cpu" and tensor.shape[0] > CPU_MEL_WINDOWS_PER_CALL:
            step = CPU_MEL_WINDOWS_PER_CALL
            return torch.cat([self.torch_mel(tensor[i : i + step]) for i in range(0, tensor.shape[0], step)])
        return self.torch_mel(tensor)


def embed_windows_in_batches(
    windows: np.ndarray | torch.Tensor,
    front_end: MelFrontEnd,
    embed_features: Callable[[torch.Tensor], torch.Tensor],
    dim: int,
    batch_size: int = 32,
) -> torch.Tensor:
    """(B, T) windows to (B, dim) embeddings: features and a forward pass per ``batch_size`` windows."""
    out = [embed_features(front_end(windows[i : i + batch_size])) for i in range(0, len(windows), batch_size)]
    return torch.cat(out) if out else torch.empty(0, dim)
