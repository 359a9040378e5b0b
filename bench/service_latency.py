"""Query service latency and throughput: micro-batched against one request at a time, in one run.

What it measures, for each model architecture asked for:

- **HTTP path**: two ``birdsearch serve`` subprocesses, micro-batched (``max_batch``/``max_wait_ms``
  as given) and one at a time (``max_batch=1``: every forward pass serves one request, requests
  queue for the model); clients POST a 10 s compressed clip (Ogg/Vorbis, 16 kHz: decoding and
  resampling included) from ``--concurrency`` connections (over ``--client-procs`` processes), in
  rounds alternating between the two servers so that background load hits both alike. Queries/s
  over the whole rounds; p50/p99 latency of each round's steady part (every connection busy, past
  the opening burst when all connections send at once, before they run out of work), and the p99
  of every request. ``--all-cores-row`` adds a third server, micro-batched with torch on
  every core for every model call (``BIRDSEARCH_COMPUTE_THREADS``), against the default that gives
  a model call only the cores no other query is using.
- **Model path** (in-process, no HTTP): features + encoder + search for batches of 10 s windows
  (``--model-batch``) against batch 1, in clips/s.
- **Single clip, end to end**: one client, sequential requests of the 10 s clip; p50/p99 (``full``).

Models: random weights in the real architectures (timing is independent of the weights):
``toy`` = the toy world's student audio tower (birdsearch.toy StudentTrainConfig) into a 128-d
teacher space; ``full`` = BioLingual's HTSAT-tiny audio tower + projection into BioCLIP-2's 768-d
space. The index is built by the indexer from a gallery of drawn photos with a small random teacher
of the right dimension (search cost at this size is negligible next to the model).

    python bench/service_latency.py                           # toy + full on this CPU
    python bench/service_latency.py --arch toy --concurrency 32
    python bench/service_latency.py --preset h100             # an H100 machine (16 cores): full arch, CUDA

Everything prints as one Markdown table (and ``--json FILE``); numbers are for the machine named
in the table's header.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import math
import multiprocessing
import os
import platform
import re
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CLIP = ROOT / "tests" / "data" / "audio" / "perch_21100_36_48_16k_10s.ogg"  # 10 s, 16 kHz, Ogg/Vorbis, 45 KB
TEACHER_DIMS = {"toy": 128, "full": 768}


# -- models and index ------------------------------------------------------------------------


def audio_config(arch: str) -> tuple[dict[str, Any], int]:
    """(ClapAudioConfig dict, projection dim) of the architecture."""
    if arch == "toy":
        from birdsearch.toy.config import StudentTrainConfig
        from birdsearch.toy.student_model import student_clap_config

        config = student_clap_config(StudentTrainConfig())
    else:
        from transformers import ClapConfig

        config = ClapConfig()  # transformers' defaults are BioLingual's architecture (HTSAT-tiny, 512-d)
    return config.audio_config.to_dict(), int(config.projection_dim)


def draw_gallery(root: Path, images: int, seed: int = 0) -> Path:
    """Small drawn photos, ``images`` in all, spread over species of the indexer's bird table."""
    from PIL import Image, ImageDraw

    with open(ROOT / "indexer" / "data" / "birds.csv") as f:
        names = [row["scientific"] for row in csv.DictReader(f)][:24]
    rng = np.random.default_rng(seed)
    for i in range(images):
        folder = root / names[i % len(names)].replace(" ", "_")
        folder.mkdir(parents=True, exist_ok=True)
        image = Image.new("RGB", (96, 72), tuple(int(c) for c in rng.integers(100, 255, 3)))
        x, y = int(rng.integers(5, 45)), int(rng.integers(5, 35))
        ImageDraw.Draw(image).ellipse(
            (x, y, x + 40, y + 28), fill=tuple(int(c) for c in rng.integers(0, 160, 3))
        )
        image.save(folder / f"p{i:05d}.jpg", quality=90)
    return root


def build_world(workdir: Path, arch: str, gallery_images: int) -> dict[str, Path]:
    """A distilled encoder of ``arch`` (random weights) and an index it can query."""
    import torch

    from birdsearch.indexer.pipeline import IndexConfig, run_index
    from birdsearch.model.encoder import DistilledAudioEncoder, EncoderCard, save_encoder
    from birdsearch.model.hub import weights_sha256
    from birdsearch.model.mel import FrontEndConfig
    from birdsearch.model.standins import TINY_TEACHER_CFG, build_teacher, save_teacher

    dim = TEACHER_DIMS[arch]
    teacher_cfg = {**TINY_TEACHER_CFG, "embed_dim": dim}
    teacher_dir = save_teacher(build_teacher(teacher_cfg), workdir / "teacher", teacher_cfg)
    gallery = draw_gallery(workdir / "gallery", gallery_images)
    index_root = workdir / "index"
    run_index(
        IndexConfig(
            gallery=gallery, out=index_root, teacher=f"local-dir:{teacher_dir}", device="cpu", progress=False
        )
    )
    config, projection_dim = audio_config(arch)
    torch.manual_seed(0)
    encoder = DistilledAudioEncoder(config, projection_dim, dim)
    card = EncoderCard(
        base_student=f"random {arch} architecture",
        audio_config=config,
        projection_dim=projection_dim,
        teacher={"id": f"local-dir:{teacher_dir}", "dim": dim,
                 "weights_sha256": weights_sha256(teacher_dir / "open_clip_model.safetensors")},
        text_format="taxon_com",
        templates="openai",
        front_end=FrontEndConfig().to_dict(),
    )  # fmt: skip
    return {"encoder": save_encoder(encoder, card, workdir / "encoder"), "index": index_root}


# -- the server -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, process: subprocess.Popen, timeout_s: float, log_tail: Callable[[], str]) -> float:
    """Poll ``url``/readyz until it answers 200; the seconds it took. Fails when ``process`` exits."""
    import httpx

    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if process.poll() is not None:
            raise RuntimeError(f"server exited: {log_tail()}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return time.monotonic() - started
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"server not ready in {timeout_s:.0f} s: {log_tail()}")


class Server:
    """``birdsearch serve`` in a subprocess, stopped by its pid."""

    def __init__(
        self,
        world: dict[str, Path],
        device: str,
        workers: int,
        max_batch: int,
        max_wait_ms: float,
        compile: bool = False,
        compute_threads: int = 0,
    ):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "BIRDSEARCH_INDEX_ROOT": str(world["index"]),
            "BIRDSEARCH_CHECKPOINT": str(world["encoder"]),
            "BIRDSEARCH_CASCADE": "never",
            "BIRDSEARCH_DEVICE": device,
            "BIRDSEARCH_MAX_BATCH": str(max_batch),
            "BIRDSEARCH_MAX_WAIT_MS": str(max_wait_ms),
            "BIRDSEARCH_WORKERS": str(workers),
            "BIRDSEARCH_RELOAD_INTERVAL_S": "0",
            "BIRDSEARCH_COMPILE": "1" if compile else "0",
            "BIRDSEARCH_COMPUTE_THREADS": str(compute_threads),
        }
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> Server:

        command = [
            sys.executable,
            "-m",
            "birdsearch.cli",
            "-q",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
        ]
        self.process = subprocess.Popen(
            command, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        wait_ready(self.url, self.process, 600, lambda: self.process.stderr.read().decode()[-2000:])
        return self

    def cpu_seconds(self) -> float:
        """CPU time (user + system) of the server and its worker processes so far (Linux /proc)."""
        tick = os.sysconf("SC_CLK_TCK")
        stats = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                stats[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)
        tree, total = {self.process.pid}, 0.0
        for _ in range(3):  # the server, its workers, their helpers
            tree |= {pid for pid, (ppid, _) in stats.items() if ppid in tree}
        for pid in tree:
            total += stats.get(pid, (0, 0.0))[1]
        return total

    def batches(self) -> tuple[float, float]:
        """(forward passes, windows) counted by the server's /metrics."""
        import httpx

        text = httpx.get(f"{self.url}/metrics", timeout=30).text

        def value(name: str) -> float:
            return sum(
                float(v) for v in re.findall(re.escape(name) + r'\{mode="distilled"\} ([0-9.e+-]+)', text)
            )

        return value("birdsearch_batch_windows_count"), value("birdsearch_batch_windows_sum")

    def __exit__(self, *exc: Any) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()


# -- clients ------------------------------------------------------------------------------------


@dataclass
class Round:
    """One load round's requests, on the wall clock shared by the client processes."""

    spans: list[tuple[float, float]]  # (sent, answered) per request
    failures: int
    drained_at: float  # when the first connection found no request left: concurrency falls after it
    concurrency: int


async def client_loop(url: str, clip: bytes, concurrency: int, requests: int) -> Round:
    """``requests`` POSTs from ``concurrency`` connections."""
    import httpx

    spans: list[tuple[float, float]] = []
    failures = 0
    remaining = requests
    drained_at = math.inf

    async def worker(http: httpx.AsyncClient) -> None:
        nonlocal remaining, failures, drained_at
        while remaining > 0:
            remaining -= 1
            sent = time.time()
            r = await http.post("/query", files={"audio": ("clip.ogg", clip)}, data={"k": "12"})
            spans.append((sent, time.time()))
            failures += r.status_code != 200
        drained_at = min(drained_at, time.time())

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as http:
        await asyncio.gather(*(worker(http) for _ in range(concurrency)))
    return Round(spans, failures, drained_at, concurrency)


def client_process(args: tuple[str, bytes, int, int, Any]) -> Round:
    url, clip, concurrency, requests, start_at = args
    while time.time() < start_at:  # every client process starts together
        time.sleep(0.001)
    return asyncio.run(client_loop(url, clip, concurrency, requests))


def steady_window(r: Round) -> tuple[float, float]:
    """The part of a round with every connection busy, past the opening burst.

    A round opens with all connections sending at once, which no steady load does, and ends with
    connections running out of work, when fewer clients compete. The window starts when as many
    requests have been answered as there are connections (each has finished its burst request)
    and ends when the first connection finds nothing left to send.
    """
    answered = sorted(end for _, end in r.spans)
    start = answered[min(r.concurrency, len(answered)) - 1]
    return start, max(start, r.drained_at)


def merge(rounds: list[Round]) -> dict[str, float]:
    """One summary of several rounds: throughput over the whole rounds; latency percentiles of
    their steady parts, and the p99 of every request (opening burst and tail included)."""
    steady = []
    for r in rounds:
        start, end = steady_window(r)
        steady += [b - a for a, b in r.spans if start <= a <= end]  # by send time: slow answers count too
    every = [b - a for r in rounds for a, b in r.spans]
    if len(steady) < 20:  # rounds too short to have a steady part: every request counts
        steady = every
    seconds = sum(max(b for _, b in r.spans) - min(a for a, _ in r.spans) for r in rounds)
    return {
        "requests": len(every),
        "steady_requests": len(steady),
        "failed": sum(r.failures for r in rounds),
        "qps": len(every) / seconds,
        "p50_ms": 1000 * float(np.percentile(steady, 50)),
        "p99_ms": 1000 * float(np.percentile(steady, 99)),
        "p99_all_ms": 1000 * float(np.percentile(every, 99)),
    }


def load_round(url: str, clip: bytes, concurrency: int, requests: int, procs: int) -> Round:
    """``requests`` from ``concurrency`` connections over ``procs`` processes, as one round."""
    procs = max(1, min(procs, concurrency))
    shares = [
        (concurrency // procs + (i < concurrency % procs), requests // procs + (i < requests % procs))
        for i in range(procs)
    ]
    start_at = time.time() + (1.0 if procs > 1 else 0.0)
    jobs = [(url, clip, c, n, start_at) for c, n in shares]
    if procs == 1:
        results = [client_process(jobs[0])]
    else:
        with multiprocessing.get_context("spawn").Pool(procs) as pool:
            results = pool.map(client_process, jobs)
    return Round(
        spans=[span for r in results for span in r.spans],
        failures=sum(r.failures for r in results),
        drained_at=min(r.drained_at for r in results),
        concurrency=concurrency,
    )


def compare(
    servers: dict[str, Server], clip: bytes, args: argparse.Namespace, requests: int
) -> dict[str, dict[str, float]]:
    """Alternate rounds between the servers, so that a change in background load hits both alike.

    Besides wall-clock figures, each server's CPU time per query is recorded: on a machine shared
    with other work it is the steadier measure of what micro-batching saves.
    """
    for server in servers.values():  # warm-up
        asyncio.run(client_loop(server.url, clip, min(args.concurrency, 8), min(args.concurrency, 8) * 2))
    rounds: dict[str, list] = {name: [] for name in servers}
    cpu = dict.fromkeys(servers, 0.0)
    before = {name: server.batches() for name, server in servers.items()}
    per_round = max(4 * args.concurrency, requests // args.rounds)  # long enough for a steady part
    for _ in range(args.rounds):
        for name, server in servers.items():
            started = server.cpu_seconds()
            rounds[name].append(load_round(server.url, clip, args.concurrency, per_round, args.client_procs))
            cpu[name] += server.cpu_seconds() - started
    out = {}
    for name, server in servers.items():
        out[name] = merge(rounds[name])
        out[name]["cpu_ms_per_query"] = 1000 * cpu[name] / out[name]["requests"]
        passes, windows = (a - b for a, b in zip(server.batches(), before[name], strict=True))
        out[name]["mean_batch"] = windows / passes if passes else 0.0
    return out


# -- model path ---------------------------------------------------------------------------------


def model_path(
    world: dict[str, Path], device: str, batch: int, clips: int, compile: bool = False
) -> dict[str, float]:
    """Features + encoder + search in-process: clips/s at ``batch`` and at batch 1."""
    import torch

    from birdsearch.engine.embedders import DistilledEmbedder
    from birdsearch.indexer.store import IndexRoot
    from birdsearch.model.device import resolve_device

    embedder = DistilledEmbedder.load(str(world["encoder"]), device)
    if compile:
        embedder.compile()
    search_device = "cuda" if resolve_device(device).type == "cuda" else "cpu"
    version = IndexRoot(world["index"]).open_current(device=search_device)
    rng = np.random.default_rng(0)
    windows = (0.1 * rng.standard_normal((batch, embedder.front_end.window_samples))).astype(np.float32)

    def run(rows: np.ndarray) -> None:
        if embedder.staging is not None:  # as the service's batcher does: stack into pinned memory
            staged = embedder.staging(rows.shape, rows.dtype)
            np.copyto(staged, rows)
            rows = staged
        vectors = embedder(rows)[:, : embedder.facts.dim]  # the embeddings; the tower's features follow
        version.search(vectors, 12)

    def timed(size: int, n: int) -> tuple[int, float]:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        started = time.perf_counter()
        done = 0
        while done < n:
            run(windows[:size])
            done += size
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return done, time.perf_counter() - started

    run(windows[:batch])  # warm-up (CUDA kernels, compilation, allocator)
    run(windows[:1])
    totals = {batch: [0, 0.0], 1: [0, 0.0]}
    single_clips = max(4, min(clips // 8, 64))
    for _ in range(3):  # alternate, so that a change in background load hits both alike
        for size, n in ((batch, clips // 3), (1, single_clips // 3)):
            done, seconds = timed(size, max(n, size))
            totals[size][0] += done
            totals[size][1] += seconds
    return {
        "batched_clips_s": totals[batch][0] / totals[batch][1],
        "single_clips_s": totals[1][0] / totals[1][1],
    }


def single_clip_latency(url: str, clip: bytes, requests: int) -> dict[str, float]:
    import httpx

    latencies = []
    with httpx.Client(base_url=url, timeout=300) as http:
        for i in range(requests + 3):
            started = time.perf_counter()
            r = http.post("/query", files={"audio": ("clip.ogg", clip)})
            if i >= 3:  # the first few warm the server up
                latencies.append(time.perf_counter() - started)
            assert r.status_code == 200, r.text
    return {
        "p50_ms": 1000 * float(np.percentile(latencies, 50)),
        "p99_ms": 1000 * float(np.percentile(latencies, 99)),
    }


# -- the run ------------------------------------------------------------------------------------


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    return f"{platform.node()}: {os.cpu_count()} cores ({cpu}){gpu}, torch {torch.__version__}"


def bench_arch(arch: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    from birdsearch.cpus import available_cpus

    world = build_world(workdir / arch, arch, args.gallery_images)
    clip = CLIP.read_bytes()
    out: dict[str, Any] = {"arch": arch}
    out["model"] = model_path(world, args.device, args.model_batch, args.model_clips, args.compile)
    print(f"[{arch}] model path: {out['model']}", file=sys.stderr)
    concurrency = args.concurrency or (32 if arch == "toy" or args.device != "cpu" else 8)
    args = argparse.Namespace(**{**vars(args), "concurrency": concurrency})
    out["concurrency"] = concurrency
    requests = args.requests or (16 * concurrency)
    settings = (args.device, args.workers)
    with ExitStack() as stack:
        servers = {
            "batched": Server(world, *settings, args.max_batch, args.max_wait_ms, args.compile_servers),
            "one_at_a_time": Server(world, *settings, 1, 0.0, args.compile_servers),
        }
        if args.all_cores_row:  # the same micro-batched server with torch on every core, busy or not
            every_core = max(1, available_cpus() // args.workers)
            servers["all_cores"] = Server(
                world, *settings, args.max_batch, args.max_wait_ms, args.compile_servers, every_core
            )
        servers = {name: stack.enter_context(server) for name, server in servers.items()}
        out.update(compare(servers, clip, args, requests))
        out["single_clip"] = single_clip_latency(servers["batched"].url, clip, args.single_requests)
    print(f"[{arch}] {out}", file=sys.stderr)
    out["speedup"] = out["batched"]["qps"] / out["one_at_a_time"]["qps"]
    out["cpu_saving"] = out["one_at_a_time"]["cpu_ms_per_query"] / out["batched"]["cpu_ms_per_query"]
    return out


def table(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    lines = [
        f"machine: {machine()}; device {args.device}; {args.workers} worker(s); "
        f"max_batch {args.max_batch}, max_wait {args.max_wait_ms} ms; OMP_WAIT_POLICY {args.omp_wait_policy}",
        "",
        "| arch | path | setting | p50 ms | p99 ms | p99 ms, all | throughput | server CPU ms/query | mean batch |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    labels = {
        "batched": "micro-batched",
        "one_at_a_time": "one at a time",
        "all_cores": "micro-batched, torch on every core",
    }
    for r in results:
        for name, label in labels.items():
            if name not in r:
                continue
            x = r[name]
            failed = f" ({x['failed']} failed)" if x["failed"] else ""
            lines.append(
                f"| {r['arch']} | HTTP, {x['requests']} × 10 s ogg, {r['concurrency']} connections | {label} | {x['p50_ms']:.0f} | {x['p99_ms']:.0f} | {x['p99_all_ms']:.0f} "
                f"| {x['qps']:.1f} q/s{failed} | {x['cpu_ms_per_query']:.0f} | {x['mean_batch']:.1f} |"
            )
        lines.append(
            f"| {r['arch']} | HTTP | micro-batched / one at a time | | | | **{r['speedup']:.2f}×** | **{r['cpu_saving']:.2f}×** less | |"
        )
        s = r["single_clip"]
        lines.append(
            f"| {r['arch']} | HTTP, one client, 10 s clip | end to end | {s['p50_ms']:.0f} | {s['p99_ms']:.0f} | | | | |"
        )
        m = r["model"]
        lines.append(
            f"| {r['arch']} | model path (features+encoder+search) | batch {args.model_batch} | | | | {m['batched_clips_s']:.1f} clips/s | | |"
        )
        lines.append(f"| {r['arch']} | model path | batch 1 | | | | {m['single_clips_s']:.1f} clips/s | | |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", choices=("toy", "full", "both"), default="both")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--workers", type=int, default=1, help="server worker processes")
    parser.add_argument(
        "--concurrency", type=int, default=0, help="concurrent connections (0: 32; 8 for full on a CPU)"
    )
    parser.add_argument(
        "--client-procs", type=int, default=1, help="client processes sharing the connections"
    )
    parser.add_argument("--requests", type=int, default=0, help="requests per HTTP measurement (0: by arch)")
    parser.add_argument("--rounds", type=int, default=4, help="alternating rounds per HTTP measurement")
    parser.add_argument(
        "--single-requests", type=int, default=20, help="sequential requests for the single-clip latency"
    )
    parser.add_argument("--max-batch", type=int, default=64)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument(
        "--model-batch", type=int, default=32, help="windows per forward pass on the model path"
    )
    parser.add_argument("--model-clips", type=int, default=96, help="clips timed on the model path")
    parser.add_argument("--gallery-images", type=int, default=480)
    parser.add_argument("--compile", action="store_true", help="torch.compile the encoder on the model path")
    parser.add_argument(
        "--compile-servers",
        action="store_true",
        help="BIRDSEARCH_COMPILE=1 for the servers (each worker compiles)",
    )
    parser.add_argument(
        "--omp-wait-policy",
        choices=("default", "PASSIVE", "ACTIVE"),
        default="default",
        help="OpenMP idle threads: libgomp's default (spin briefly, then sleep: what `birdsearch serve` "
        "runs with), sleep at once (PASSIVE) or spin forever (ACTIVE)",
    )
    parser.add_argument(
        "--all-cores-row",
        action="store_true",
        help="also measure the micro-batched server with BIRDSEARCH_COMPUTE_THREADS = every core "
        "(the default gives model calls only the cores no decode is using)",
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument(
        "--preset",
        choices=("h100",),
        help="h100: full architecture on CUDA (model path compiled), 8 workers, 64 connections from 4 client processes, "
        "4000 requests, model path at batch 256 (flags given explicitly still win)",
    )
    args = parser.parse_args()
    if args.rounds < 1 or args.concurrency < 0 or args.requests < 0:
        parser.error("--rounds must be at least 1, --concurrency and --requests at least 0")
    # Servers and model path alike; before torch loads.
    if args.omp_wait_policy == "default":
        os.environ.pop("OMP_WAIT_POLICY", None)
    else:
        os.environ["OMP_WAIT_POLICY"] = args.omp_wait_policy
    if args.preset == "h100":
        given = {a.split("=")[0] for a in sys.argv[1:] if a.startswith("--")}
        preset = {"arch": "full", "device": "cuda", "compile": True, "workers": 8, "concurrency": 64, "client_procs": 4,
                  "requests": 4000, "model_batch": 256, "model_clips": 8192, "max_batch": 256, "single_requests": 50}  # fmt: skip
        for name, value in preset.items():
            if f"--{name.replace('_', '-')}" not in given:
                setattr(args, name, value)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    archs = ("toy", "full") if args.arch == "both" else (args.arch,)
    with tempfile.TemporaryDirectory(prefix="birdsearch-bench-") as tmp:
        os.environ.setdefault("BIRDSEARCH_CACHE", str(Path(tmp) / "cache"))
        results = [bench_arch(arch, args, Path(tmp)) for arch in archs]
    print(table(results, args))
    if args.json:
        args.json.write_text(
            json.dumps(
                {"machine": machine(), "args": vars(args) | {"json": str(args.json)}, "results": results},
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
