"""The student: BioLingual (a ``transformers.ClapModel``, HTSAT-tiny audio tower + RoBERTa, 512-d).

Loaded with ``ClapModel.from_pretrained`` from the directory a spec resolves to; its
``preprocessor_config.json`` decides the audio front end (``FrontEndConfig``), its tokenizer the
text side. Outputs are float32, L2-normalised, on the CPU.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from birdsearch.errors import CheckpointError, FrontEndSettingError, IncompleteCheckpointError
from birdsearch.model import hub
from birdsearch.model.device import autocast, resolve_device
from birdsearch.model.mel import FrontEndConfig, MelFrontEnd, embed_windows_in_batches
from birdsearch.model.names import Taxon

log = logging.getLogger(__name__)

DEFAULT_STUDENT = hub.DEFAULT_STUDENT  # defined once, in hub
PROMPT = "Sound of a {}"  # BioLingual's caption style


def encode_audio(audio_model: Any, audio_projection: Any, features: torch.Tensor) -> torch.Tensor:
    """CLAP audio tower + its projection: (B, 1, frames, mels) features to (B, projection_dim), unnormalised."""
    return encode_audio_with_tower(audio_model, audio_projection, features)[0]


def encode_audio_with_tower(
    audio_model: Any, audio_projection: Any, features: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(projection (B, projection_dim), the tower's pooled output (B, hidden)), both unnormalised.

    The pooled output is what the audio tower learned about a window before the projection keeps
    only what names species: the space the novelty gate measures in (``birdsearch.model.novelty``).
    """
    pooled = audio_model(input_features=features).pooler_output
    return audio_projection(pooled), pooled


# Buffers that ClapModel computes from its config when a checkpoint lacks them (older transformers
# versions saved some, newer ones others): positions, all-zero token types, Swin's relative position
# table indices, and a BatchNorm step counter that inference never reads. Any other missing key —
# a parameter, or BatchNorm's learned running statistics — would stay random.
DERIVED_BUFFER_SUFFIXES = ("position_ids", "token_type_ids", "relative_position_index", "num_batches_tracked")


def refuse_unmatched_keys(model: Any, loading: dict[str, Any], resolved: hub.ResolvedModel) -> None:
    """Raise IncompleteCheckpointError when ``from_pretrained`` left weights random or ignored some.

    transformers only logs a report for missing and unexpected keys; it already leaves out the keys
    its model classes declare ignorable (e.g. ``position_ids`` saved by older versions) and raises
    on shape mismatches itself.
    """
    buffers = {name for name, _ in model.named_buffers()}
    missing = [key for key in loading["missing_keys"]
               if not (key in buffers and key.endswith(DERIVED_BUFFER_SUFFIXES))]  # fmt: skip
    unexpected = list(loading["unexpected_keys"])
    if missing or unexpected:
        weights = resolved.weights_file.name
        raise IncompleteCheckpointError(f"student {resolved.spec}", weights, missing, unexpected)


class Student:
    """A CLAP audio-text model with batch embedding APIs."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        front_end: FrontEndConfig,
        resolved: hub.ResolvedModel,
        device: torch.device,
    ):
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.front_end_config = front_end
        self.resolved = resolved
        self.device = device
        self.mel = MelFrontEnd(front_end, device)

    @classmethod
    def load(
        cls, spec: str = DEFAULT_STUDENT, device: str | torch.device = "auto", download: bool = False
    ) -> Student:
        """Load a student from a spec (a hub id, 'hf-hub:org/repo', 'local-dir:/path', a directory or 'toy')."""
        from transformers import AutoTokenizer, ClapFeatureExtractor, ClapModel

        resolved = hub.resolve_or_download(spec, "student") if download else hub.resolve(spec, "student")
        target = resolve_device(device)
        try:
            model, loading = ClapModel.from_pretrained(resolved.path, output_loading_info=True)
            model = model.to(target)
            tokenizer = AutoTokenizer.from_pretrained(resolved.path)
            extractor = ClapFeatureExtractor.from_pretrained(resolved.path)
        except (OSError, ValueError, KeyError, RuntimeError) as e:
            raise CheckpointError(f"student {resolved.spec} at {resolved.path} failed to load: {e}") from e
        refuse_unmatched_keys(model, loading, resolved)
        if model.config.audio_config.enable_fusion:
            raise CheckpointError(
                f"student {resolved.spec} is a fusion CLAP model; only unfused models are supported"
            )
        front_end = FrontEndConfig.from_feature_extractor(extractor)
        mel_bins = model.config.audio_config.num_mel_bins
        if front_end.n_mels != mel_bins:
            raise FrontEndSettingError(
                "feature_size",
                front_end.n_mels,
                f"student {resolved.spec}'s audio tower takes {mel_bins} mel bins",
            )
        log.info("student %s loaded on %s (dim %d)", resolved.spec, target, model.config.projection_dim)
        return cls(model, tokenizer, front_end, resolved, target)

    @property
    def id(self) -> str:
        return self.resolved.spec

    @property
    def dim(self) -> int:
        return int(self.model.config.projection_dim)

    def describe(self) -> dict[str, Any]:
        return {"id": self.id, "dim": self.dim, "front_end": self.front_end_config.to_dict()}

    @property
    def tower_dim(self) -> int:
        """Width of the audio tower's pooled output (``embed_with_tower``)."""
        return int(self.model.audio_projection.linear1.in_features)

    @torch.no_grad()  # not inference_mode: callers may use the outputs as training targets
    def embed_features(self, features: torch.Tensor) -> torch.Tensor:
        """(B, 1, frames, mels) log-mel features to (B, dim) audio embeddings."""
        return self.embed_with_tower(features)[0]

    @torch.no_grad()
    def embed_with_tower(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, dim) audio embeddings and (B, tower_dim) pooled tower features, each L2-normalised."""
        with autocast(self.device):
            out, pooled = encode_audio_with_tower(
                self.model.audio_model, self.model.audio_projection, features.to(self.device)
            )
        return F.normalize(out.float(), dim=-1).cpu(), F.normalize(pooled.float(), dim=-1).cpu()

    def embed_windows(self, windows: np.ndarray | torch.Tensor, batch_size: int = 32) -> torch.Tensor:
        """(B, T) windows of exactly one window each, at the front end's rate, to (B, dim) embeddings."""
        return embed_windows_in_batches(windows, self.mel, self.embed_features, self.dim, batch_size)

    @torch.no_grad()  # not inference_mode: callers may use the outputs as training targets
    def embed_texts(self, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """Captions to (N, dim) text embeddings."""
        out = []
        for start in range(0, len(texts), batch_size):
            tokens = self.tokenizer(
                list(texts[start : start + batch_size]), padding=True, truncation=True, return_tensors="pt"
            ).to(self.device)
            with autocast(self.device):
                pooled = self.model.text_model(
                    input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]
                ).pooler_output
                features = self.model.text_projection(pooled)
            out.append(F.normalize(features.float(), dim=-1).cpu())
        return torch.cat(out) if out else torch.empty(0, self.dim)

    def embed_species(
        self, taxa: Sequence[Taxon], name_format: str = "com", prompt: str = PROMPT
    ) -> torch.Tensor:
        """Zero-shot class embeddings (S, dim) from captions such as "Sound of a American Robin"."""
        return self.embed_texts([prompt.format(taxon.name(name_format)) for taxon in taxa])
