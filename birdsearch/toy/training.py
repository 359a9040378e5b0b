"""What the toy teacher and the toy student share in training: the loss, the schedule, the batches."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F

from birdsearch.cpus import available_cpus

log = logging.getLogger(__name__)


def class_contrastive_loss(
    samples: torch.Tensor, classes: torch.Tensor, labels: torch.Tensor, logit_scale: torch.Tensor
) -> torch.Tensor:
    """Symmetric InfoNCE where every sample of a class is a positive of that class' text.

    CLIP's loss takes the i-th text as the only positive of the i-th image; with 24 species in a
    batch of 64 that would push apart photos and texts of the same species. Here the texts are one
    per class (every class, every step), and the text-to-sample direction spreads its target
    evenly over the samples of its class.

    Args:
        samples: (B, d) unit vectors (photos or recordings).
        classes: (C, d) unit vectors, one text per class.
        labels: (B,) class index of each sample.
        logit_scale: scalar inverse temperature.
    """
    logits = logit_scale * samples @ classes.T  # (B, C)
    sample_to_text = F.cross_entropy(logits, labels)
    present = labels.unique()
    targets = (labels[None, :] == present[:, None]).float()  # (P, B)
    targets = targets / targets.sum(dim=1, keepdim=True)
    text_to_sample = -(targets * logits.T[present].log_softmax(dim=-1)).sum(dim=-1).mean()
    return (sample_to_text + text_to_sample) / 2


def warmup_cosine(step: int, total: int, warmup_fraction: float = 0.1) -> float:
    """Learning-rate multiplier: linear warm-up, then cosine decay to 5 % of the peak."""
    warmup = max(1, int(total * warmup_fraction))
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))


def batches(n: int, batch_size: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Endless batches of indices, each pass over ``range(n)`` in a new random order."""
    while True:
        order = rng.permutation(n)
        for start in range(0, n - batch_size + 1, batch_size):
            yield order[start : start + batch_size]
        if n < batch_size:
            yield order


def optimizer_for(model: torch.nn.Module, lr: float) -> torch.optim.Optimizer:
    """AdamW as CLIP trains: no weight decay on gains, biases, embeddings and the logit scale."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        flat = param.ndim < 2 or "logit_scale" in name or "embedding" in name or "positional" in name
        (no_decay if flat else decay).append(param)
    groups = [{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.98), eps=1e-6)


def training_threads() -> int:
    """Threads for toy training: ``$BIRDSEARCH_TOY_THREADS``, else the cores that are idle now.

    On a busy machine, a torch thread per core is several times slower than one thread (its
    threads wait on each other while other processes hold the cores), so count the busy ones out.
    """
    explicit = os.environ.get("BIRDSEARCH_TOY_THREADS")
    if explicit:
        return max(1, int(explicit))
    cores = available_cpus()
    idle = cores - int(round(os.getloadavg()[0])) if hasattr(os, "getloadavg") else cores
    return max(1, min(torch.get_num_threads(), idle))


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run the block with ``count`` torch threads, then restore the previous setting."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    log.info("toy training on %d torch thread(s)", count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
