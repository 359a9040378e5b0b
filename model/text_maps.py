"""Maps from the student's text space to the teacher's, fitted on species names (the mapping baseline).

Shared by evaluation (the baseline and its controls) and distillation (``--head-init`` starts the
distilled encoder's head from one).

Each species gives one pair: the student's caption embedding ("Sound of a {common name}") and the
teacher's class embedding. A map fitted on these pairs is then applied to the student's AUDIO
embeddings, hoping that the student's audio-text alignment carries the audio along (C-MCR, arXiv
2305.14381, connects spaces the same way). Three maps:

- ``ridge``: least squares with an L2 penalty, W = T^T S (S^T S + λI)^-1, solved in the dual when
  there are fewer species than dimensions;
- ``procrustes``: the rotation closest to the pairs, from one SVD; it only rotates, so it keeps the
  student's geometry within the span of the species' captions (and drops what lies outside it, about
  which the pairs say nothing);
- ``mlp``: a small two-layer network trained on the pairs with InfoNCE among the species.

The linear maps have no bias, so normalising before or after them gives the same direction; the
distilled encoder's head can start from one of them (``birdsearch distill --head-init``), making
step 0 of distillation the mapping baseline.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from birdsearch.errors import ConfigError

MAPPINGS = ("ridge", "procrustes", "mlp")


def fit_ridge(source: torch.Tensor, target: torch.Tensor, alpha: float = 0.1) -> torch.Tensor:
    """W (target dim, source dim) minimising ||S Wᵀ - T||² + α||W||²."""
    s, t = source.double(), target.double()
    n, d = s.shape
    if n < d:  # dual form: Wᵀ = Sᵀ (S Sᵀ + αI)⁻¹ T
        wt = s.T @ torch.linalg.solve(s @ s.T + alpha * torch.eye(n, dtype=s.dtype), t)
    else:
        wt = torch.linalg.solve(s.T @ s + alpha * torch.eye(d, dtype=s.dtype), s.T @ t)
    return wt.T.float().contiguous()


def fit_procrustes(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """W (target dim, source dim) minimising ||S Wᵀ - T||: the rotation of the pairs' span, U_r V_rᵀ.

    With fewer pairs than dimensions the pairs leave the rest of the source space free: a full
    orthogonal W would send it wherever the basis LAPACK's rounding picks for the null space, a
    different one on every kind of CPU. It is mapped to zero instead, so W is one matrix everywhere.
    """
    u, s, vh = torch.linalg.svd(target.double().T @ source.double(), full_matrices=False)
    rank = int((s > s[0] * max(u.shape[0], vh.shape[1]) * torch.finfo(s.dtype).eps).sum())
    return (u[:, :rank] @ vh[:rank]).float().contiguous()


class MLPMap(nn.Module):
    """Two layers with a GELU, to unit vectors."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int = 256):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(x), dim=-1)


def fit_mlp(
    source: torch.Tensor, target: torch.Tensor, steps: int = 300, lr: float = 1e-3, seed: int = 0
) -> MLPMap:
    """Train an MLPMap on the pairs: InfoNCE (temperature 0.05) among species, plus cosine to its target."""
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        mlp = MLPMap(source.shape[1], target.shape[1])
    finally:
        torch.random.set_rng_state(generator_state)  # fitting a baseline must not move anyone's RNG
    # In float64, then rounded back: 300 float32 steps turned the last-bit differences of another
    # CPU's vector units into 0.1-point differences of the baseline's figures; float64 steps do not.
    mlp.double()
    optimizer = torch.optim.AdamW(mlp.parameters(), lr=lr, weight_decay=0.01)
    s, t = source.double(), F.normalize(target.double(), dim=-1)
    labels = torch.arange(len(s))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # matrices of a few hundred rows: threads cost more than they give
    try:
        for _ in range(steps):
            out = mlp(s)
            loss = F.cross_entropy(out @ t.T / 0.05, labels) + (1 - (out * t).sum(-1)).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
    return mlp.float().eval().requires_grad_(False)


@dataclass
class TextMap:
    """A fitted map from the student's space to the teacher's; call it on (N, source dim) vectors."""

    kind: str
    weight: torch.Tensor | None = None  # (target dim, source dim) for the linear maps
    mlp: MLPMap | None = None

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = F.normalize(x.float(), dim=-1)
        if self.mlp is not None:
            out = self.mlp(x)
        else:
            assert self.weight is not None, "a linear TextMap holds its weight"
            out = x @ self.weight.T
        return F.normalize(out, dim=-1)


def fit_map(
    kind: str, source: torch.Tensor, target: torch.Tensor, alpha: float = 0.1, seed: int = 0
) -> TextMap:
    """Fit a ``kind`` map on (S, source dim) → (S, target dim) pairs of unit vectors."""
    if source.shape[0] != target.shape[0]:
        raise ValueError(f"{source.shape[0]} source and {target.shape[0]} target vectors")
    source, target = F.normalize(source.float(), dim=-1), F.normalize(target.float(), dim=-1)
    if kind == "ridge":
        return TextMap(kind, weight=fit_ridge(source, target, alpha))
    if kind == "procrustes":
        return TextMap(kind, weight=fit_procrustes(source, target))
    if kind == "mlp":
        return TextMap(kind, mlp=fit_mlp(source, target, seed=seed))
    raise ConfigError(f"unknown mapping {kind!r}: use one of {', '.join(MAPPINGS)}")
