"""InfoNCE against fixed text embeddings, with a learnable temperature.

Two objectives, both over unit vectors and scaled by ``exp(log_scale)``:

- ``class``: each clip's logits against the text embeddings of ALL species, cross-entropy with its
  species. The negatives are every other species, whatever the batch holds; with fixed targets this
  is a softmax classifier whose weights are the teacher's text embeddings.
- ``batch``: CLIP's symmetric InfoNCE within the (global) batch. Audio→text over the species present
  in the batch; text→audio over the batch's clips, where every clip of the species is a positive
  (several clips often share a species; counting them as negatives of each other would be wrong).
  With distinct species in the batch it is exactly CLIP's loss.

The temperature follows CLIP and SoundBind: ``log_scale`` starts at log(1/0.07), and the scale is
clamped at 100.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from birdsearch.errors import ConfigError

OBJECTIVES = ("class", "batch")


class LogitScale(nn.Module):
    """A learnable inverse temperature, exp(log_scale), clamped at ``max_scale``."""

    def __init__(self, init_temperature: float = 0.07, max_scale: float = 100.0):
        super().__init__()
        self.log_scale = nn.Parameter(torch.tensor(math.log(1.0 / init_temperature)))
        self.max_scale = max_scale

    def forward(self) -> torch.Tensor:
        return self.log_scale.exp().clamp(max=self.max_scale)


def class_infonce(
    audio: torch.Tensor, targets: torch.Tensor, labels: torch.Tensor, scale: torch.Tensor
) -> torch.Tensor:
    """(B, D) audio and (S, D) targets, both unit; labels (B,) in [0, S)."""
    logits = scale * audio @ targets.T  # (B, S)
    return F.cross_entropy(logits, labels)


def batch_infonce(
    audio: torch.Tensor, targets: torch.Tensor, labels: torch.Tensor, scale: torch.Tensor
) -> torch.Tensor:
    """Symmetric InfoNCE over the batch's clips and the batch's distinct species."""
    present, column = labels.unique(return_inverse=True)  # (U,), (B,) column of each clip's species
    logits = scale * audio @ targets[present].T  # (B, U)
    audio_to_text = F.cross_entropy(logits, column)
    positives = column[None, :] == torch.arange(len(present), device=labels.device)[:, None]  # (U, B)
    text_logits = logits.T  # (U, B)
    positive_mass = torch.logsumexp(text_logits.masked_fill(~positives, float("-inf")), dim=1)
    text_to_audio = (torch.logsumexp(text_logits, dim=1) - positive_mass).mean()
    return (audio_to_text + text_to_audio) / 2


def objective_loss(
    name: str, audio: torch.Tensor, targets: torch.Tensor, labels: torch.Tensor, scale: torch.Tensor
) -> torch.Tensor:
    if name == "class":
        return class_infonce(audio, targets, labels, scale)
    if name == "batch":
        return batch_infonce(audio, targets, labels, scale)
    raise ConfigError(f"unknown objective {name!r}: use one of {', '.join(OBJECTIVES)}")


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate a tensor over all ranks, keeping the gradient path to every rank's part."""
    import torch.distributed as dist
    import torch.distributed.nn.functional as dist_fn

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    return torch.cat(dist_fn.all_gather(tensor), dim=0)


def gather(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate a tensor over all ranks (no gradient)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor)
    return torch.cat(parts, dim=0)
