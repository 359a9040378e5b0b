"""The distilled audio encoder: the student's audio tower + projection, and a head into the teacher's space.

One checkpoint format, loadable without the teacher or the student's text tower:

    <dir>/encoder.safetensors   weights (audio_model.*, audio_projection.*, head.*)
    <dir>/card.json             what rebuilds and identifies it (see ``EncoderCard``)
    <dir>/classifier.*          optional: the species classifier fitted beside it, the query modes
                                ``classifier`` and ``hybrid`` (``birdsearch.model.species_head``)

``save_encoder`` writes into a temporary sibling and renames it into place, so a reader never sees
half a checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from birdsearch.errors import CheckpointError
from birdsearch.model.device import autocast, resolve_device
from birdsearch.model.mel import FrontEndConfig, MelFrontEnd, embed_windows_in_batches
from birdsearch.model.species_head import SpeciesHead, load_species_head, save_species_head
from birdsearch.model.student import encode_audio_with_tower

FORMAT = "birdsearch-distilled-audio-encoder"
FORMAT_VERSION = 1
WEIGHTS_FILE = "encoder.safetensors"
CARD_FILE = "card.json"


@dataclass
class EncoderCard:
    """The JSON card beside the weights: enough to rebuild the model and to know where it came from."""

    base_student: str  # student spec the audio tower started from, e.g. "davidrrobinson/BioLingual"
    audio_config: dict[str, Any]  # ClapAudioConfig.to_dict() of the audio tower
    projection_dim: int  # output size of the student's own audio projection
    teacher: dict[str, Any]  # {"id", "dim", "weights_sha256"}: the space the head maps into
    text_format: str  # species name format of the teacher text targets, e.g. "taxon_com"
    templates: str | list[str]  # template set name or the explicit templates
    front_end: dict[str, Any]  # FrontEndConfig.to_dict(): how audio becomes features
    training_data_hash: str = ""  # hash of the distillation manifest (and audio file list)
    training: dict[str, Any] = field(default_factory=dict)  # objective, steps, batch size, ...
    metrics: dict[str, Any] = field(default_factory=dict)  # validation figures at save time
    created: str = ""  # ISO-8601 UTC
    format: str = FORMAT
    format_version: int = FORMAT_VERSION

    @property
    def out_dim(self) -> int:
        return int(self.teacher["dim"])


class DistilledAudioEncoder(nn.Module):
    """Features (B, 1, frames, mels) to L2-normalised (B, teacher dim) embeddings."""

    def __init__(self, audio_config: Any, projection_dim: int, out_dim: int):
        super().__init__()
        from transformers import ClapAudioConfig
        from transformers.models.clap.modeling_clap import ClapAudioModel, ClapProjectionLayer

        if isinstance(audio_config, dict):
            audio_config = ClapAudioConfig(**audio_config)
        audio_config.projection_dim = projection_dim
        self.audio_config = audio_config
        self.audio_model = ClapAudioModel(audio_config)
        self.audio_projection = ClapProjectionLayer(audio_config)
        self.head = nn.Linear(projection_dim, out_dim, bias=False)

    @classmethod
    def from_student(cls, clap_model: Any, out_dim: int) -> DistilledAudioEncoder:
        """A new encoder whose tower and projection are copies of a ClapModel's; the head is fresh."""
        audio_config = clap_model.config.audio_config
        encoder = cls(audio_config.to_dict(), int(clap_model.config.projection_dim), out_dim)
        encoder.audio_model.load_state_dict(clap_model.audio_model.state_dict())
        encoder.audio_projection.load_state_dict(clap_model.audio_projection.state_dict())
        return encoder.to(next(clap_model.parameters()).device)

    def forward(self, features: torch.Tensor, with_tower: bool = False) -> Any:
        """(B, out dim) unit embeddings; with ``with_tower``, also the tower's (B, hidden) pooled output
        (unnormalised): the space the novelty gate measures in (``birdsearch.model.novelty``)."""
        projected, pooled = encode_audio_with_tower(self.audio_model, self.audio_projection, features)
        embeddings = F.normalize(self.head(projected), dim=-1)
        return (embeddings, pooled) if with_tower else embeddings

    @property
    def tower_dim(self) -> int:
        return int(self.audio_projection.linear1.in_features)


class LoadedEncoder:
    """A distilled encoder ready to embed windows: model, card and front end on one device."""

    def __init__(
        self,
        model: DistilledAudioEncoder,
        card: EncoderCard,
        path: Path,
        device: torch.device,
        species_head: SpeciesHead | None = None,
    ):
        self.model = model.eval().requires_grad_(False)
        self.card = card
        self.path = path
        self.device = device
        self.species_head = species_head  # the classifier saved beside it, if any
        self.front_end_config = FrontEndConfig.from_dict(card.front_end)
        self.mel = MelFrontEnd(self.front_end_config, device)

    @property
    def dim(self) -> int:
        return self.card.out_dim

    @property
    def tower_dim(self) -> int:
        """Width of the audio tower's pooled output (``embed_with_tower``)."""
        return self.model.tower_dim

    @torch.no_grad()  # not inference_mode: callers may use the outputs as training targets
    def embed_features(self, features: torch.Tensor) -> torch.Tensor:
        with autocast(self.device):
            out = self.model(features.to(self.device))
        return F.normalize(out.float(), dim=-1).cpu()

    @torch.no_grad()
    def embed_with_tower(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, teacher dim) embeddings and (B, tower_dim) pooled tower features, each L2-normalised."""
        with autocast(self.device):
            out, pooled = self.model(features.to(self.device), with_tower=True)
        return F.normalize(out.float(), dim=-1).cpu(), F.normalize(pooled.float(), dim=-1).cpu()

    def embed_windows(self, windows: np.ndarray | torch.Tensor, batch_size: int = 32) -> torch.Tensor:
        """(B, T) windows to (B, teacher dim) embeddings in the teacher's space."""
        return embed_windows_in_batches(windows, self.mel, self.embed_features, self.dim, batch_size)


def save_encoder(
    encoder: DistilledAudioEncoder,
    card: EncoderCard,
    path: str | Path,
    species_head: SpeciesHead | None = None,
) -> Path:
    """Write weights, card (and the species classifier) to ``path`` atomically (a temporary sibling renamed into place)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    card.created = card.created or datetime.now(UTC).isoformat(timespec="seconds")
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        state = {k: v.detach().contiguous().cpu() for k, v in encoder.state_dict().items()}
        save_file(state, tmp / WEIGHTS_FILE, metadata={"format": FORMAT})
        (tmp / CARD_FILE).write_text(json.dumps(asdict(card), indent=2))
        if species_head is not None:
            save_species_head(species_head, tmp)
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            path.rename(old)
            tmp.rename(path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def read_card(path: str | Path) -> EncoderCard:
    """The card of a saved encoder, checked for format and version."""
    card_path = Path(path) / CARD_FILE
    try:
        data = json.loads(card_path.read_text())
    except FileNotFoundError as e:
        raise CheckpointError(f"{path} is not a distilled encoder: {CARD_FILE} is missing") from e
    except ValueError as e:
        raise CheckpointError(f"{card_path} is not valid JSON: {e}") from e
    if data.get("format") != FORMAT:
        raise CheckpointError(f"{card_path}: format {data.get('format')!r} is not {FORMAT!r}")
    if data.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{card_path}: format version {data.get('format_version')} is not {FORMAT_VERSION}; "
            "re-run 'birdsearch distill' with this version"
        )
    known = {k: v for k, v in data.items() if k in EncoderCard.__dataclass_fields__}
    try:
        return EncoderCard(**known)
    except TypeError as e:
        raise CheckpointError(f"{card_path}: incomplete card ({e})") from e


def load_encoder(path: str | Path, device: str | torch.device = "auto") -> LoadedEncoder:
    """Load a distilled encoder from its directory; needs neither the teacher nor the student."""
    from safetensors.torch import load_file

    path = Path(path)
    card = read_card(path)
    target = resolve_device(device)
    model = DistilledAudioEncoder(card.audio_config, card.projection_dim, card.out_dim)
    try:
        state = load_file(path / WEIGHTS_FILE)
        model.load_state_dict(state, strict=True)
    except FileNotFoundError as e:
        raise CheckpointError(f"{path}: {WEIGHTS_FILE} is missing") from e
    except (RuntimeError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: weights do not match the card ({e})") from e
    return LoadedEncoder(model.to(target), card, path, target, load_species_head(path))
