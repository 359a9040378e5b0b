"""One GPU run: every GPU figure of BENCHMARKS.md from one command, each row under its own time limit.

Rows, each run by the bench script that owns the measurement (imported, not copied):

- ``index-nvjpeg``, ``index-pil``: JPEG files to stored vectors with ``run_index``
  (``bench/index_throughput.py``: its photos, teacher and pipeline call), BioCLIP-2's ViT-L/14
  architecture with random weights (``model/standins.py``), bf16 on CUDA, thumbnails off; JPEGs
  decoded on the GPU by nvJPEG, or by PIL in the decoding workers.
- ``query``, ``query-compiled``: the query model path in-process, features + encoder + search
  (``bench/service_latency.py``'s ``model_path``), BioLingual's full-size architecture with random
  weights, at batch 1, 64 and 256, eager and ``torch.compile``d.
- ``http``: ``birdsearch serve`` with several worker processes, 64 connections from 4 client
  processes, 10 s Ogg clips (``service_latency``'s ``Server`` and ``compare``): queries/s, p50, p99.
- ``distill``, ``distill-compiled``: one training step of the full-size student, eager and compiled
  (``bench/distill_throughput.py``'s ``measure``).
- ``search``: exact search over 1M and 10M random unit vectors of 768-d, stored as float16, through
  ``birdsearch.indexer.search.make_searcher(backend="torch")``: the searcher the service builds for
  an index version on CUDA when faiss-gpu is not installed.
- ``search-sharded``: the largest of those sizes cut into shards on the one GPU
  (``birdsearch.indexer.search.torch_shards``, FAISS ``IndexShards``' way: each shard's best k, merged
  on the host): what sharding costs against one block, the step before several GPUs.

Each row runs in its own process (its own CUDA context and compile caches) under its own time limit
and the run's overall budget; a row that fails or overruns is recorded with its error and costs only
itself. Results go to ``gpu.json`` (written after every row, so a killed run keeps what it measured),
``gpu.md`` (the rows for BENCHMARKS.md) and ``gpu.log`` (every row's output) in ``--out``.

    bench/gpu.sh                         # the GPU run (installs carried wheels first; see gpu.sh)
    python bench/gpu.py --out /tmp/gpu   # the same, in an environment that has the packages
    python bench/gpu.py --smoke          # every row on the CPU, tiny sizes and stand-ins: seconds
    python bench/gpu.py --rows search,distill

``--smoke`` checks that every row runs and yields numbers; its figures mean nothing. It runs the rows
one after another in one process (one set of imports), each in ``try``/``except`` so that a failing
row is recorded and the others still run, and the compiled rows with ``TORCH_COMPILE_DISABLE=1``
(their code path, executed eagerly): compiling on two CPU cores takes minutes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
LOG_TAIL = 3000  # characters of a failed row's stderr kept in the JSON


@dataclass(frozen=True)
class Sizes:
    """How big each row runs: the GPU run's sizes, or ``--smoke``'s."""

    index_model: str  # index_throughput's --model: 'full' (ViT-L/14, 224 px) or 'small'
    index_images: int
    index_workers: int | None  # decoding workers (None: the pipeline's default)
    query_arch: str  # service_latency's arch: 'full' (BioLingual, 768-d) or 'toy'
    query_batches: tuple[int, ...]  # batch 1 is measured beside the first
    query_clips: int
    gallery_images: int  # photos in the query rows' index (search cost is negligible at this size)
    http_workers: int
    http_connections: int
    http_client_procs: int
    http_requests: int
    http_rounds: int
    http_max_batch: int
    distill_full: bool  # the full-size student (transformers' ClapConfig()) or a tiny one
    distill_batch: int
    distill_steps: int
    distill_warmup: int
    distill_species: int
    distill_dim: int
    search_sizes: tuple[int, ...]
    search_dim: int
    search_batches: tuple[int, ...]
    search_repeats: int
    search_shards: int  # shards of the largest search size in the sharded row


GPU = Sizes(
    index_model="full", index_images=8_000, index_workers=None,
    query_arch="full", query_batches=(64, 256), query_clips=6144, gallery_images=480,
    http_workers=8, http_connections=64, http_client_procs=4, http_requests=4000, http_rounds=2,
    http_max_batch=256,
    distill_full=True, distill_batch=256, distill_steps=20, distill_warmup=5, distill_species=5569,
    distill_dim=768,
    search_sizes=(1_000_000, 10_000_000), search_dim=768, search_batches=(1, 64, 256), search_repeats=20,
    search_shards=4,
)  # fmt: skip
SMOKE = Sizes(
    index_model="small", index_images=8, index_workers=1,
    query_arch="toy", query_batches=(4,), query_clips=8, gallery_images=12,
    http_workers=2, http_connections=2, http_client_procs=1, http_requests=8, http_rounds=1,
    http_max_batch=8,
    distill_full=False, distill_batch=2, distill_steps=1, distill_warmup=1, distill_species=50,
    distill_dim=32,
    search_sizes=(2_000, 20_000), search_dim=64, search_batches=(1, 64), search_repeats=3,
    search_shards=3,
)  # fmt: skip


@dataclass(frozen=True)
class Row:
    title: str
    limit_s: float  # the row's own time limit on the GPU run
    target: str  # BENCHMARKS.md's target for the row's headline figures ('' where none is set)


# The run's order: the rows without compilation first (about 220 s together on an H100-class machine,
# by estimate: no GPU has run this yet), then the compiled ones, which spend most of their time
# compiling and get what is left of the budget, each up to its own limit.
ROWS: dict[str, Row] = {
    "search": Row("exact search, torch", 100, ""),
    "search-sharded": Row("exact search, torch, sharded on one GPU", 150, ""),
    "index-nvjpeg": Row("indexing, JPEGs decoded by nvJPEG", 120, "≥ 2,400 images/s"),
    "index-pil": Row("indexing, JPEGs decoded by PIL in the workers", 80, "≥ 2,400 images/s"),
    "query": Row("query model path (features, encoder, search), eager", 75, ""),
    "distill": Row("distillation step, eager", 60, "≥ 2,000 clips/s"),
    "http": Row("HTTP queries", 100, "≥ 500 q/s, p50 ≤ 30 ms"),
    "query-compiled": Row("query model path, torch.compile", 180, "≥ 5,000 clips/s at batch 256"),
    "distill-compiled": Row("distillation step, torch.compile", 180, "≥ 2,000 clips/s"),
}


# -- what the rows share -------------------------------------------------------------------------


@dataclass
class Context:
    """What a row's process is given."""

    sizes: Sizes
    device: str  # 'cuda' or 'cpu'
    workdir: Path  # shared by the run's rows: photos, teacher and world are made once


def figure(setting: str, value: float, unit: str, **details: Any) -> dict[str, Any]:
    return {"setting": setting, "value": float(value), "unit": unit, **details}


def made_once(workdir: Path, name: str, make: Callable[[Path], Any]) -> Any:
    """``make(folder)``'s JSON-able result, made by the first row that needs it and reused after.

    A row killed half-way leaves no marker, so the next row makes it again from scratch.
    """
    import shutil

    folder = workdir / name
    marker = workdir / f"{name}.json"
    if marker.is_file():
        return json.loads(marker.read_text())
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    result = make(folder)
    marker.write_text(json.dumps(result))
    return result


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def machine(device: str) -> dict[str, Any]:
    import platform

    import torch

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError, StopIteration), open("/proc/cpuinfo") as f:
        cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    gpu = torch.cuda.get_device_name() if device.startswith("cuda") else None
    return {"cpu": cpu, "cores": os.cpu_count(), "gpu": gpu, "torch": torch.__version__, "device": device}


# -- indexing ------------------------------------------------------------------------------------


def photos(ctx: Context) -> Path:
    """index_throughput's synthetic photos, drawn in parallel parts and gathered into one gallery."""
    from multiprocessing import get_context

    import index_throughput

    def make(folder: Path) -> str:
        parts = max(1, min(os.cpu_count() or 1, ctx.sizes.index_images // 8))
        counts = [
            ctx.sizes.index_images // parts + (i < ctx.sizes.index_images % parts) for i in range(parts)
        ]
        jobs = [(folder / f"part{i}", n, (500, 375), i) for i, n in enumerate(counts)]
        with get_context("spawn").Pool(parts) as pool:
            pool.starmap(index_throughput.make_photos, jobs)
        gallery = folder / "gallery"
        for i in range(parts):  # part{i}/<species>/photoN.jpg -> gallery/<species>/p{i}-photoN.jpg
            for photo in sorted((folder / f"part{i}").rglob("*.jpg")):
                target = gallery / photo.parent.name / f"p{i}-{photo.name}"
                target.parent.mkdir(parents=True, exist_ok=True)
                photo.rename(target)
        return str(gallery)

    return Path(made_once(ctx.workdir, "photos", make))


def row_index(ctx: Context, decode: str) -> dict[str, Any]:
    import index_throughput

    gallery = photos(ctx)
    args = argparse.Namespace(
        model=ctx.sizes.index_model, teacher=None, device=ctx.device, images=ctx.sizes.index_images,
        batch_size=None, workers=ctx.sizes.index_workers,
    )  # fmt: skip
    spec = made_once(ctx.workdir, "teacher", lambda folder: index_throughput.teacher_spec(args, folder))
    total, stage = index_throughput.pipeline(
        spec, gallery, ctx.workdir / f"index-{decode}", args, thumbnails=0, jpeg_decode=decode
    )
    arch = "ViT-L/14 (BioCLIP-2's architecture)" if ctx.sizes.index_model == "full" else "small ViT"
    precision = "bf16" if ctx.device.startswith("cuda") else "fp32"
    setting = f"{arch}, {precision}, {args.images:,} photos 500×375, thumbnails off"
    return {
        "figures": [
            figure(f"{setting}: end to end (teacher load included)", total, "images/s"),
            figure(f"{setting}: embedding stage", stage, "images/s"),
        ]
    }


# -- query model path and HTTP -------------------------------------------------------------------


def query_world(ctx: Context) -> dict[str, Path]:
    """service_latency's encoder (random weights) and an index it can query, made once per run."""
    import service_latency

    def make(folder: Path) -> dict[str, str]:
        world = service_latency.build_world(folder, ctx.sizes.query_arch, ctx.sizes.gallery_images)
        return {name: str(path) for name, path in world.items()}

    return {name: Path(path) for name, path in made_once(ctx.workdir, "world", make).items()}


def row_query(ctx: Context, compiled: bool) -> dict[str, Any]:
    import service_latency

    world = query_world(ctx)
    arch = "BioLingual architecture (HTSAT-tiny), 768-d" if ctx.sizes.query_arch == "full" else "toy student"
    mode = "torch.compile" if compiled else "eager"
    figures = []
    for batch in ctx.sizes.query_batches:
        rates = service_latency.model_path(world, ctx.device, batch, ctx.sizes.query_clips, compiled)
        if not figures:  # batch 1 is timed beside every batch; the first call's figure is kept
            figures.append(figure(f"{arch}, {mode}, batch 1", rates["single_clips_s"], "clips/s"))
        figures.append(figure(f"{arch}, {mode}, batch {batch}", rates["batched_clips_s"], "clips/s"))
    return {"figures": figures}


def row_http(ctx: Context) -> dict[str, Any]:
    import service_latency

    s = ctx.sizes
    world = query_world(ctx)
    load = argparse.Namespace(
        concurrency=s.http_connections, rounds=s.http_rounds, client_procs=s.http_client_procs
    )
    with service_latency.Server(world, ctx.device, s.http_workers, s.http_max_batch, 5.0) as server:
        result = service_latency.compare(
            {"batched": server}, service_latency.CLIP.read_bytes(), load, s.http_requests
        )["batched"]
    setting = (
        f"{s.http_workers} workers, micro-batched (max {s.http_max_batch}, 5 ms), {s.http_connections} connections "
        f"from {s.http_client_procs} processes, {result['requests']} × 10 s Ogg clips"
    )
    if result["failed"]:
        raise RuntimeError(
            f"{result['failed']} of {result['requests']} requests failed ({setting}; {result['qps']:.0f} q/s, "
            f"p50 {result['p50_ms']:.0f} ms)"
        )
    return {
        "figures": [
            figure(f"{setting}: throughput", result["qps"], "q/s"),
            figure(f"{setting}: p50 (steady part)", result["p50_ms"], "ms"),
            figure(f"{setting}: p99 (steady part)", result["p99_ms"], "ms"),
            figure(f"{setting}: p99 (every request)", result["p99_all_ms"], "ms"),
        ],
        "details": result,
    }


# -- distillation --------------------------------------------------------------------------------


def row_distill(ctx: Context, compiled: bool) -> dict[str, Any]:
    import distill_throughput
    import torch

    from birdsearch.model.standins import tiny_clap_config

    s = ctx.sizes
    device = torch.device(ctx.device)
    if device.type == "cuda":  # as distill_throughput's main sets them
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    config = None if s.distill_full else tiny_clap_config()
    result = distill_throughput.measure(
        device, s.distill_batch, s.distill_steps, s.distill_warmup, s.distill_species, s.distill_dim,
        "default" if compiled else None, config=config,
    )  # fmt: skip
    arch = "full-size student (BioLingual architecture)" if s.distill_full else "tiny student"
    setting = f"{arch}, {result['mode']}, {result['precision']}, batch {result['batch']}"
    return {
        "figures": [
            figure(f"{setting}: training clips/s", result["clips_per_s"], "clips/s"),
            figure(f"{setting}: step p50", result["step_ms_p50"], "ms"),
            figure(f"{setting}: warm-up (compilation included)", result["warmup_s"], "s"),
        ],
        "details": result,
    }


# -- exact search --------------------------------------------------------------------------------


def unit_vectors(count: int, dim: int, device: str, seed: int = 0):
    """(count, dim) float16 unit vectors in host memory, drawn on ``device`` in chunks (fast on a GPU)."""
    import numpy as np
    import torch

    out = np.empty((count, dim), dtype=np.float16)
    generator = torch.Generator(device=device).manual_seed(seed)
    chunk = 1 << 20
    for start in range(0, count, chunk):
        n = min(chunk, count - start)
        block = torch.randn(n, dim, device=device, generator=generator)
        out[start : start + n] = torch.nn.functional.normalize(block, dim=1).half().cpu().numpy()
    return out


def no_faiss_index() -> Any:
    raise RuntimeError("the torch backend was asked for: no FAISS index is read")


def timed_searches(searcher: Any, queries: Any, batches: tuple[int, ...], repeats: int) -> dict[int, float]:
    """Median milliseconds per batch of each size (results come back as host arrays: the device is done)."""
    import numpy as np

    out = {}
    for batch in batches:
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            searcher.search(queries[:batch], 10)
            times.append(time.perf_counter() - started)
        out[batch] = 1000 * float(np.median(times))
    return out


def self_found_first(searcher: Any, vectors: Any, count: int, probes: int) -> tuple[Any, Any, float]:
    """Queries drawn from the stored vectors, and how often each finds itself first; a stored vector
    must be its own nearest neighbour, else what is timed is a bug."""
    import numpy as np

    probe = np.random.default_rng(0).choice(count, size=probes, replace=False)
    queries = vectors[probe].astype(np.float32)
    _, found = searcher.search(queries, 10)
    found_first = float(np.mean(found[:, 0] == probe))
    if found_first < 0.99:
        raise RuntimeError(f"exact search found a stored vector first for only {found_first:.1%} of queries")
    return queries, found, found_first


def free_device(ctx: Context) -> None:
    import gc

    import torch

    gc.collect()
    if ctx.device.startswith("cuda"):
        torch.cuda.empty_cache()


def row_search(ctx: Context) -> dict[str, Any]:
    from birdsearch.indexer.search import make_searcher

    s, figures, details = ctx.sizes, [], {}
    for count in s.search_sizes:
        vectors = unit_vectors(count, s.search_dim, ctx.device)
        started = time.perf_counter()
        searcher = make_searcher(no_faiss_index, vectors, {}, backend="torch", device=ctx.device)
        sync(ctx.device)
        load_s = time.perf_counter() - started
        held = str(searcher.vectors.dtype).replace("torch.", "")  # what the searcher keeps on the device
        queries, _, found_first = self_found_first(searcher, vectors, count, max(s.search_batches))
        details[str(count)] = {
            "stored": "float16",
            "searched_as": held,
            "load_s": load_s,
            "self_found": found_first,
            "device_gib": searcher.vectors.nbytes / 2**30,  # the vectors as the searcher holds them
        }
        for batch, ms in timed_searches(searcher, queries, s.search_batches, s.search_repeats).items():
            setting = (
                f"{count:,} × {s.search_dim}-d, stored float16 (searched as {held}), k 10, batch {batch}"
            )
            figures.append(figure(setting, ms, "ms per batch", queries_per_s=1000 * batch / ms))
        del searcher, vectors
        free_device(ctx)
    return {"figures": figures, "details": details}


def row_search_sharded(ctx: Context) -> dict[str, Any]:
    """The largest search size as ``search_shards`` shards on the one device, against one block,
    both timed in this row on the same queries (the neighbours must agree)."""
    import numpy as np

    from birdsearch.indexer.search import TorchSearcher, torch_shards

    s = ctx.sizes
    count = max(s.search_sizes)
    vectors = unit_vectors(count, s.search_dim, ctx.device)
    figures, details = [], {}
    previous = None
    for shards in (1, s.search_shards):
        started = time.perf_counter()
        searcher = (
            TorchSearcher(vectors, ctx.device) if shards == 1 else torch_shards(vectors, shards, [ctx.device])
        )
        sync(ctx.device)
        load_s = time.perf_counter() - started
        queries, found, found_first = self_found_first(searcher, vectors, count, max(s.search_batches))
        if previous is not None and not np.array_equal(found[:, 0], previous[:, 0]):
            raise RuntimeError("the sharded search's first neighbours differ from one block's")
        previous = found
        details[str(shards)] = {"load_s": load_s, "self_found": found_first}
        for batch, ms in timed_searches(searcher, queries, s.search_batches, s.search_repeats).items():
            setting = f"{count:,} × {s.search_dim}-d float32, {shards} shard{'s' if shards > 1 else ''}, k 10, batch {batch}"
            figures.append(figure(setting, ms, "ms per batch", queries_per_s=1000 * batch / ms))
        del searcher
        free_device(ctx)
    return {"figures": figures, "details": details}


RUNNERS: dict[str, Callable[[Context], dict[str, Any]]] = {
    "search": row_search,
    "search-sharded": row_search_sharded,
    "index-nvjpeg": lambda ctx: row_index(ctx, "device"),
    "index-pil": lambda ctx: row_index(ctx, "workers"),
    "query": lambda ctx: row_query(ctx, compiled=False),
    "distill": lambda ctx: row_distill(ctx, compiled=False),
    "http": row_http,
    "query-compiled": lambda ctx: row_query(ctx, compiled=True),
    "distill-compiled": lambda ctx: row_distill(ctx, compiled=True),
}


def row_result(name: str, ctx: Context) -> dict[str, Any]:
    """Run one row here: its figures, the time it took, the machine."""
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))  # the bench scripts whose code the rows call
    started = time.perf_counter()
    out = RUNNERS[name](ctx)
    out["seconds_in_row"] = time.perf_counter() - started
    out["machine"] = machine(ctx.device)
    return out


# -- the run ---------------------------------------------------------------------------------------


def run_row_process(
    name: str, args: argparse.Namespace, workdir: Path, limit: float, log: Any
) -> dict[str, Any]:
    """The GPU run's way: one row in its own process group (its own CUDA context), killed whole
    (servers, workers) past ``limit`` seconds."""
    result = workdir / f"{name}.result.json"
    result.unlink(missing_ok=True)
    command = [sys.executable, str(Path(__file__).resolve()), "--row", name, "--workdir", str(workdir),
               "--result", str(result), "--device", args.device] + (["--smoke"] if args.smoke else [])  # fmt: skip
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with tempfile.TemporaryFile("w+") as stderr:
        started = time.perf_counter()
        process = subprocess.Popen(
            command, stdout=stderr, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        try:
            code = process.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            code = None
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)  # whatever the row left behind
            process.wait()
        seconds = time.perf_counter() - started
        stderr.seek(0)
        output = stderr.read()
    log.write(f"===== {name} ({seconds:.0f} s, exit {code}) =====\n{output}\n")
    if code is None:
        return {"status": "timeout", "seconds": seconds, "error": f"over its {limit:.0f} s limit",
                "log_tail": output[-LOG_TAIL:]}  # fmt: skip
    if code != 0 or not result.is_file():
        last = [line for line in output.strip().splitlines() if line.strip()][-1:] or [f"exit code {code}"]
        return {"status": "failed", "seconds": seconds, "error": last[0], "log_tail": output[-LOG_TAIL:]}
    return {"status": "ok", "seconds": seconds, **json.loads(result.read_text())}


def run_row_inline(name: str, args: argparse.Namespace, workdir: Path, log: Any) -> dict[str, Any]:
    """The smoke run's way: the row in this process (one set of imports for all), its exception recorded."""
    import traceback

    started = time.perf_counter()
    try:
        out = row_result(name, Context(SMOKE, args.device, workdir))
    except Exception as e:  # any failure is the row's result; the other rows still run
        trace = traceback.format_exc()
        log.write(f"===== {name} (failed) =====\n{trace}\n")
        return {"status": "failed", "seconds": time.perf_counter() - started,
                "error": f"{type(e).__name__}: {e}", "log_tail": trace[-LOG_TAIL:]}  # fmt: skip
    log.write(f"===== {name} ({time.perf_counter() - started:.0f} s, ok) =====\n")
    return {"status": "ok", "seconds": time.perf_counter() - started, **out}


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every row asked for, in order, within ``args.budget`` seconds; the JSON rewritten after each."""
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    report: dict[str, Any] = {
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "smoke": args.smoke,
        "device": args.device,
        "budget_s": args.budget,
        "sizes": asdict(SMOKE if args.smoke else GPU),
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "rows": {},
    }
    with tempfile.TemporaryDirectory(prefix="birdsearch-gpu-") as tmp, open(args.out / "gpu.log", "w") as log:
        workdir = Path(tmp)
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ.setdefault("BIRDSEARCH_CACHE", str(workdir / "cache"))
        if args.smoke:  # compiling on a CPU takes minutes: the compiled rows' code runs eagerly
            os.environ["TORCH_COMPILE_DISABLE"] = "1"
        for name in args.rows:
            limit = min(ROWS[name].limit_s, args.budget - (time.perf_counter() - started))
            if limit < 10:
                result = {
                    "status": "skipped",
                    "seconds": 0.0,
                    "error": f"the run's {args.budget:.0f} s budget was spent",
                }
            elif args.smoke:
                result = run_row_inline(name, args, workdir, log)
            else:
                result = run_row_process(name, args, workdir, limit, log)
            log.flush()
            report["rows"][name] = result
            report["machine"] = report.get("machine") or result.get("machine")
            report["wall_s"] = time.perf_counter() - started
            (args.out / "gpu.json").write_text(json.dumps(report, indent=1))
            print(
                f"{name}: {result['status']} in {result['seconds']:.0f} s {result.get('error') or ''}",
                file=sys.stderr,
            )
    (args.out / "gpu.md").write_text(markdown(report))
    return report


def number(value: float, unit: str) -> str:
    if unit == "ms" or unit.startswith("ms "):
        return f"{value:,.1f} {unit}" if value < 100 else f"{value:,.0f} {unit}"
    return f"{value:,.2f} {unit}" if value < 10 else f"{value:,.0f} {unit}"


def markdown(report: dict[str, Any]) -> str:
    """The rows for BENCHMARKS.md: one line per figure, and one per row that failed."""
    m = report.get("machine") or {}
    where = f"{m.get('gpu') or 'CPU only'}, {m.get('cores')} cores ({m.get('cpu')}), torch {m.get('torch')}"
    lines = [
        f"`bench/gpu.sh{' --smoke' if report['smoke'] else ''}` on {where}, {report['date_utc']} UTC; "
        f"wall {report.get('wall_s', 0):.0f} s{' (smoke run: sizes tiny, figures meaningless)' if report['smoke'] else ''}",
        "",
        "| row | setting | figure | target | row time |",
        "|---|---|---:|---|---:|",
    ]
    for name, result in report["rows"].items():
        row = ROWS[name]
        if result["status"] != "ok":
            lines.append(
                f"| {row.title} | | **{result['status']}**: {result['error']} | {row.target} | {result['seconds']:.0f} s |"
            )
            continue
        for i, f in enumerate(result["figures"]):
            extra = f" ({f['queries_per_s']:,.0f} q/s)" if "queries_per_s" in f else ""
            lines.append(
                f"| {row.title if i == 0 else ''} | {f['setting']} | {number(f['value'], f['unit'])}{extra} "
                f"| {row.target if i == 0 else ''} | {result['seconds']:.0f} s |"
            )
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="every row on the CPU, tiny sizes: seconds")
    parser.add_argument(
        "--out", type=Path, default=Path("out/gpu"), help="folder for gpu.json, gpu.md, gpu.log"
    )
    parser.add_argument(
        "--rows", default=",".join(ROWS), help=f"comma-separated, in order (default: {','.join(ROWS)})"
    )
    parser.add_argument("--budget", type=float, default=None,
                        help="seconds for all the rows (default: 450 on a GPU, so that the run with its installs "
                        "fits 8 minutes; 900 for --smoke)")  # fmt: skip
    parser.add_argument("--device", default=None, help="default: cuda (cpu for --smoke)")
    parser.add_argument("--row", help=argparse.SUPPRESS)  # a row's own process
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = [r for r in args.rows if r not in ROWS]
    if unknown or not args.rows:
        parser.error(f"unknown rows {unknown or args.rows}: choose from {', '.join(ROWS)}")
    args.device = args.device or ("cpu" if args.smoke else "cuda")
    args.budget = args.budget if args.budget is not None else (900.0 if args.smoke else 450.0)
    if not math.isfinite(args.budget) or args.budget <= 0:
        parser.error(f"--budget must be a positive number of seconds, not {args.budget}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.row:
        ctx = Context(SMOKE if args.smoke else GPU, args.device, args.workdir)
        args.result.write_text(json.dumps(row_result(args.row, ctx), indent=1))
        return 0
    if args.device.startswith("cuda") and not args.smoke:
        import torch

        if not torch.cuda.is_available():
            print("no CUDA device here: `bench/gpu.sh --smoke` runs every row on the CPU", file=sys.stderr)
            return 2
    report = run(args)
    print((args.out / "gpu.md").read_text())
    return 0 if all(r["status"] == "ok" for r in report["rows"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
