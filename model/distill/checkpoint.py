"""Training-state checkpoints: everything an exact resume needs, written atomically.

A checkpoint ``<run>/checkpoints/step-00000120.pt`` holds the model (encoder + temperature), the
optimizer, the scheduler, every RNG state (Python, NumPy, torch CPU and CUDA, per rank), the
validation history, and the facts a resume must match (configuration, manifest and target hashes).
The data position is the step itself (see ``birdsearch.model.distill.data``).

Everything is stored as tensors and plain Python values, so checkpoints load with
``torch.load(weights_only=True)``: a checkpoint file cannot run code.
"""

from __future__ import annotations

import logging
import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from birdsearch.errors import CheckpointError

log = logging.getLogger(__name__)

PATTERN = re.compile(r"^step-(\d{8})\.pt$")


def path_for(directory: Path, step: int) -> Path:
    return directory / f"step-{step:08d}.pt"


def list_checkpoints(directory: Path) -> list[tuple[int, Path]]:
    """(step, path) of every complete checkpoint in ``directory``, oldest first."""
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := PATTERN.match(p.name))]
    return sorted(found)


def save(directory: Path, step: int, state: dict[str, Any], keep: int = 2) -> Path:
    """Write ``state`` as the checkpoint of ``step`` (temporary file, fsync, rename); keep the last ``keep``."""
    directory.mkdir(parents=True, exist_ok=True)
    final = path_for(directory, step)
    tmp = directory / f".{final.name}.tmp{os.getpid()}"
    with tmp.open("wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(final)
    for _, old in list_checkpoints(directory)[:-keep] if keep > 0 else []:
        old.unlink(missing_ok=True)
    return final


def load(path: Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, OSError, EOFError, ValueError) as e:
        raise CheckpointError(
            f"{path}: not a readable training checkpoint ({e}); delete it to fall back"
        ) from e


def latest(directory: Path) -> dict[str, Any] | None:
    """The newest checkpoint that loads; a damaged newest one is skipped with a warning."""
    for step, path in reversed(list_checkpoints(directory)):
        try:
            state = load(path)
        except CheckpointError as e:
            log.warning("skipping checkpoint of step %d: %s", step, e)
            continue
        state["path"] = str(path)
        return state
    return None


def rng_state() -> dict[str, Any]:
    """This process's RNG states as tensors and plain values."""
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [
            np_name,
            torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
            np_pos,
            np_has_gauss,
            np_gauss,
        ],
        "python": [py_version, list(py_state), py_gauss],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, py_state, py_gauss = state["python"]
    random.setstate((version, tuple(py_state), py_gauss))
