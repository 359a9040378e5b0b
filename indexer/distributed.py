"""The embedding stage on Ray Data: the same reader and mapper as the local run, over a cluster.

``decode_batch`` (the reader, ``decode_task`` on each row) runs as Ray tasks on CPUs;
``ImageEmbedder`` (the mapper) runs in an actor pool, one model per actor and one GPU each where
GPUs exist (``map_batches`` with ``concurrency``). Vectors stream back to the driver, which saves
them in the same resumable cache as a local run, so the index a Ray run builds is the local one.
Needs the ``distributed`` extra (``pip install 'birdsearch[distributed]'``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

import numpy as np

from birdsearch.errors import ConfigError
from birdsearch.indexer.embed import (
    DecodeConfig,
    EmbedTask,
    ImageEmbedder,
    OnBatch,
    decode_task,
    preprocess_from_config,
)

log = logging.getLogger(__name__)


def import_ray() -> Any:
    """The ray module, or a ConfigError saying how to install it."""
    try:
        import ray
    except ImportError as e:
        raise ConfigError("--runner ray needs Ray Data: pip install 'birdsearch[distributed]'") from e
    return ray


@contextmanager
def ray_session(ray: Any, address: str | None) -> Iterator[None]:
    """Connected to Ray for the duration: to ``address``, to the Ray this process already runs, or to
    a local one started here (and stopped again on the way out)."""
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        yield
    finally:
        if started_here:
            ray.shutdown()


def ray_uses_gpus(ray: Any, device: Any) -> bool:
    """Whether each Ray actor takes a GPU: a device other than the CPU is asked for and the cluster has GPUs."""
    return str(device) != "cpu" and ray.cluster_resources().get("GPU", 0) > 0


@lru_cache(maxsize=4)
def cached_preprocess(preprocess_json: str) -> Any:
    return preprocess_from_config(json.loads(preprocess_json))


def decode_batch(
    batch: dict[str, np.ndarray], preprocess_json: str, decode: DecodeConfig
) -> dict[str, np.ndarray]:
    """Ray task: decode a batch of rows {'content_hash', 'path'} with ``decode_task``; failures keep a row."""
    preprocess = cached_preprocess(preprocess_json)
    size = json.loads(preprocess_json)["size"]
    height, width = (size, size) if isinstance(size, int) else size
    results = [
        decode_task(EmbedTask(str(h), str(p)), preprocess, decode)
        for h, p in zip(batch["content_hash"], batch["path"], strict=True)
    ]
    blank = np.zeros((3, height, width), dtype=np.uint8)
    return {
        "content_hash": np.array([r.content_hash for r in results]),
        "pixels": np.stack([r.pixels if r.pixels is not None else blank for r in results]),
        "ok": np.array([r.pixels is not None for r in results]),
        "width": np.array([r.width for r in results], dtype=np.int64),
        "height": np.array([r.height for r in results], dtype=np.int64),
        "error": np.array([r.error or "" for r in results]),
    }


def embed_ray(
    tasks: list[EmbedTask],
    config: Any,
    teacher: dict[str, Any],
    decode: DecodeConfig,
    on_batch: OnBatch,
    batch_size: int,
) -> None:
    """Run the embedding stage on Ray Data; ``on_batch`` as in ``embed_local``."""
    ray = import_ray()
    if not tasks:
        return
    with ray_session(ray, config.ray_address):
        use_gpu = ray_uses_gpus(ray, config.device)
        rows = [{"content_hash": t.content_hash, "path": t.path} for t in tasks]
        dataset = ray.data.from_items(rows).map_batches(
            decode_batch,
            fn_kwargs={
                "preprocess_json": json.dumps(teacher["preprocess"], sort_keys=True),
                "decode": decode,
            },
            batch_size=batch_size,
        )
        embedded = dataset.map_batches(
            ImageEmbedder,
            fn_constructor_kwargs={"teacher_spec": config.teacher, "device": "cuda" if use_gpu else "cpu"},
            batch_size=batch_size,
            concurrency=config.ray_actors,
            num_gpus=1 if use_gpu else 0,
        )
        for batch in embedded.iter_batches(batch_size=None, batch_format="numpy"):
            ok = np.asarray(batch["ok"], dtype=bool)
            hashes = [str(h) for h in batch["content_hash"][ok]]
            sizes = [(int(w), int(h)) for w, h in zip(batch["width"][ok], batch["height"][ok], strict=True)]
            failures = [
                (str(h), str(e)) for h, e in zip(batch["content_hash"][~ok], batch["error"][~ok], strict=True)
            ]
            on_batch(hashes, np.asarray(batch["vector"][ok], dtype=np.float32), sizes, failures)
