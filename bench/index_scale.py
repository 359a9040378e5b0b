"""The index at scale: build time, peak memory, size on disk, recall and latency per index type, against N.

Synthetic clustered galleries stand in for BioCLIP-2 photo embeddings: species centroids nested
in genera and families (so that neighbouring species overlap, as related birds do), photos
scattered around their species' centroid. The queries the service really asks are audio
embeddings in the teacher's *text* space, a different distribution: modelled as the species'
centroids offset by one shared modality-gap vector, plus noise. Each index version holds the
teacher's text embedding of every species (one such query per species, drawn once); the indexer
tunes nprobe / efSearch / k_factor on those, and this bench measures recall on *held-out*
cross-modal queries (fresh noise), on self-queries (gallery vectors) and against exact search.

The gallery's vectors are generated once per size and streamed to a .npy on disk (10M x 768
float32 is 30.7 GB, more than a 24 GB machine's memory), with the exact neighbours of the held-out
queries computed once from it, block by block. Every index build then runs in its own process,
reading the file block by block (``VectorRows``) under ``--memory-budget-gb``, so its peak RSS
(``VmHWM``) is its own: the index, its training sample and the blocks being added. Searches go
through the searcher the service uses (``FaissSearcher``, with the re-rank store of an IVF-PQ index).

    python bench/index_scale.py --smoke                              # seconds; the test suite runs it
    python bench/index_scale.py --sizes 100000 1000000 --out bench/results/index_scale
    python bench/index_scale.py --sizes 100000 --reload-size 1000000 # + the hot-reload memory rows
    python bench/index_scale.py --sizes 100000 1000000 10000000 --types auto ivfpq ivf hnsw \
        --storage sq8 --storage-types ivf --limit hnsw=1000000 --memory-budget-gb 8 \
        --queries 500 --work /data --out bench/results/index_scale_10m  # ~2 h, 40 GB of disk

``auto`` builds what the indexer's ``auto`` builds under the budget; a forced type whose build
``auto`` would repeat at a size is not built twice. Writes ``OUT.json`` (every row, the fitted
cost slopes) and ``OUT.md`` (the tables BENCHMARKS.md quotes). The slopes are fitted on log(N)
against log(build seconds) and log(peak RSS) for each index kind and storage measured at two sizes
or more in the run.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("index_scale")

DIM = 768
PER_SPECIES = 40  # photos per species (200,000 photos -> 5,000 species, the issue's figure)
SPREAD = 1.0  # norm of a photo's offset from its species' centroid
GAP = 2.5  # norm of the shared modality gap between photos and the text/audio queries
QUERY_NOISE = 1.0  # norm of a query's own offset
HELD_OUT = 1000  # held-out cross-modal queries (and self-queries) measured per build (--queries)
LATENCY_SINGLE = 200  # queries timed one at a time (at most; see LATENCY_BUDGET_S)
LATENCY_BATCHES = 10  # batches of 64 timed (at most)
LATENCY_BUDGET_S = 20.0  # seconds each latency loop may take; it stops early, after 5 calls at least
BUILD_ORDER = ["auto", "flat", "ivf", "ivfpq", "hnsw"]
CENTROID_BLOCK = 1 << 16  # species centroids made at a time (a 10M gallery has 250,000)


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def normal(rng: np.random.Generator, rows: int, dim: int, norm: float) -> np.ndarray:
    """Gaussian rows whose expected norm is ``norm``."""
    return rng.standard_normal((rows, dim), dtype=np.float32) * np.float32(norm / np.sqrt(dim))


def centroids(species: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    """Species centroids nested in genera (5 species each) and families (20 genera each)."""
    genera = max(1, species // 5)
    families = max(1, genera // 20)
    family = unit(rng.standard_normal((families, dim), dtype=np.float32))
    genus = unit(rng.standard_normal((genera, dim), dtype=np.float32))
    genus_family = rng.integers(0, families, genera)
    species_genus = rng.integers(0, genera, species)
    out = np.empty((species, dim), dtype=np.float32)
    for start in range(0, species, CENTROID_BLOCK):  # in blocks: no (species, dim) temporaries
        of = species_genus[start : start + CENTROID_BLOCK]
        own = unit(rng.standard_normal((len(of), dim), dtype=np.float32))
        out[start : start + len(of)] = unit(family[genus_family[of]] + 0.8 * genus[of] + 0.6 * own)
    return out


def make_gallery(n: int, dim: int, folder: Path, seed: int = 0, held_out: int = HELD_OUT) -> dict[str, Any]:
    """Write vectors.npy (photos), species_text.npy (one per species), audio.npy and self.npy (held out),
    and truth.npy: the exact top 10 of the audio queries then the self-queries.

    The photos are written block by block with plain writes, never held whole nor mapped.
    """
    from birdsearch.indexer.faiss_index import exact_neighbours
    from birdsearch.indexer.store import BLOCK_ROWS, VectorRows, write_npy

    rng = np.random.default_rng(seed)
    species = max(2, n // PER_SPECIES)
    centre = centroids(species, dim, rng)
    labels = rng.integers(0, species, n)

    def photos() -> Any:
        for start in range(0, n, BLOCK_ROWS):
            rows = labels[start : start + BLOCK_ROWS]
            yield unit(centre[rows] + normal(rng, len(rows), dim, SPREAD))

    started = time.perf_counter()
    write_npy(folder / "vectors.npy", (n, dim), np.float32, photos())
    written_s = time.perf_counter() - started
    gap = unit(rng.standard_normal((1, dim), dtype=np.float32)) * np.float32(GAP)

    def cross_modal(rows: np.ndarray) -> np.ndarray:
        return unit(centre[rows] + gap + normal(rng, len(rows), dim, QUERY_NOISE))

    texts = (cross_modal(np.arange(a, min(a + BLOCK_ROWS, species))) for a in range(0, species, BLOCK_ROWS))
    write_npy(folder / "species_text.npy", (species, dim), np.float32, texts)  # 250,000 of them at 10M
    audio = cross_modal(rng.integers(0, species, held_out))
    vectors = VectorRows(folder / "vectors.npy")
    self_queries = vectors.take(np.sort(rng.choice(n, min(n, held_out), replace=False)))
    np.save(folder / "audio.npy", audio)
    np.save(folder / "self.npy", self_queries)
    started = time.perf_counter()
    np.save(folder / "truth.npy", exact_neighbours(np.concatenate([audio, self_queries]), vectors))
    return {
        "n": n,
        "dim": dim,
        "species": species,
        "write_s": round(written_s, 1),
        "truth_s": round(time.perf_counter() - started, 1),
        "vectors_bytes": (folder / "vectors.npy").stat().st_size,
    }


# -- one build, in its own process ---------------------------------------------------------------


def peak_rss_bytes() -> int:
    """This process's peak resident set (VmHWM).

    Not ``ru_maxrss``: Linux carries it over fork and exec, so a child would report its parent's
    peak (the gallery generator's) whenever that is higher. VmHWM belongs to the process's own
    address space, which exec replaces.
    """
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


def current_rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def percentiles_ms(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1000
    return {"p50": round(float(np.percentile(ms, 50)), 3), "p99": round(float(np.percentile(ms, 99)), 3)}


def timed_calls(searcher: Any, batches: list[np.ndarray]) -> list[float]:
    """Seconds of each ``searcher.search`` call, until the batches or LATENCY_BUDGET_S run out."""
    seconds: list[float] = []
    for batch in batches:
        start = time.perf_counter()
        searcher.search(batch, 10)
        seconds.append(time.perf_counter() - start)
        if len(seconds) >= 5 and sum(seconds) > LATENCY_BUDGET_S:
            break
    return seconds


def latency(searcher: Any, queries: np.ndarray) -> dict[str, Any]:
    """Search latency at batch 1 and at batch 64 (each figure is one whole call), and how many calls."""
    tiled = np.resize(queries, (64 * LATENCY_BATCHES, queries.shape[1]))
    single = timed_calls(searcher, [q[None, :] for q in queries[:LATENCY_SINGLE]])
    batched = timed_calls(searcher, [np.ascontiguousarray(b) for b in np.split(tiled, LATENCY_BATCHES)])
    return {
        "batch1_ms": percentiles_ms(single),
        "batch64_ms": percentiles_ms(batched),
        "latency_calls": [len(single), len(batched)],
    }


def build_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Build one index over the gallery in ``spec['data']`` and measure it (runs in a child process)."""
    import faiss

    from birdsearch.indexer.faiss_index import IndexOptions, build_index, recall_at_k
    from birdsearch.indexer.search import FaissSearcher
    from birdsearch.indexer.store import VectorRows

    data = Path(spec["data"])
    vectors = VectorRows(data / "vectors.npy")
    species_text = np.load(data / "species_text.npy", mmap_mode="r")  # one per species: sampled, not loaded
    audio, self_queries = np.load(data / "audio.npy"), np.load(data / "self.npy")
    truth = np.load(data / "truth.npy")
    options = IndexOptions(
        index_type=spec["type"], storage=spec["storage"], recall_queries=len(audio),
        memory_budget_bytes=spec["budget"],
    )  # fmt: skip
    folder = data / f"build-{spec['type']}-{spec['storage']}"
    folder.mkdir()
    rss_before = current_rss_bytes()
    built = build_index(vectors, options, {"species_text": species_text}, folder)
    faiss.write_index(built.index, str(folder / "index.faiss"))
    searcher = FaissSearcher(built.index, None, built.search_params, built.rerank)
    recall = {
        "self": recall_at_k(searcher.search(self_queries, 10)[1], truth[len(audio) :]),
        "cross_modal": recall_at_k(searcher.search(audio, 10)[1], truth[: len(audio)]),
        "species_text": built.recall_by_query.get("species_text", {}).get("recall_at_10", 1.0),
    }
    row = {
        "n": len(vectors),
        "type": built.plan.kind,
        "storage": built.plan.storage,
        "factory": built.factory,
        "index": built.plan.description,
        "search_params": built.search_params,
        "build_s": round(built.build_seconds, 2),
        "peak_rss_bytes": peak_rss_bytes(),
        "rss_before_build_bytes": rss_before,
        "planned_bytes": built.plan.peak_bytes,
        "budget_bytes": spec["budget"],
        "disk_bytes": (folder / "index.faiss").stat().st_size,
        "store_bytes": sum(f.stat().st_size for f in built.rerank_files),
        "tried": built.tried,
        "recall_at_10": {k: round(float(v), 4) for k, v in recall.items()},
        **latency(searcher, audio),
    }
    shutil.rmtree(folder)
    return row


# -- hot reload, in its own process ------------------------------------------------------------


def write_version(root: Path, vectors: np.ndarray, index_type: str) -> None:
    """Publish one index version of ``vectors`` through the writer (labels by row, 40 photos a species)."""
    from birdsearch.indexer.faiss_index import IndexOptions, build_index
    from birdsearch.indexer.store import ImageRow, SpeciesRecord
    from birdsearch.indexer.writer import VersionContent, new_staging_dir, publish, write_version_files

    n, dim = vectors.shape
    names = [f"Synthetica s{i:06d}" for i in range(max(1, n // PER_SPECIES))]
    label = np.arange(n) % len(names)
    rows = [
        ImageRow(key=f"{i:08d}.jpg", species=names[label[i]], width=1, height=1, content_hash=f"{i:064x}")
        for i in range(n)
    ]
    counts = np.bincount(label, minlength=len(names))
    species = [SpeciesRecord(name, image_count=int(c)) for name, c in zip(names, counts, strict=True)]
    text = unit(np.random.default_rng(1).standard_normal((len(names), dim), dtype=np.float32))
    staging = new_staging_dir(root)
    options = IndexOptions(index_type=index_type)
    built = build_index(vectors, options, {"species_text": text}, staging)
    manifest = {
        "teacher": {"id": "synthetic", "dim": dim, "weights_sha256": "", "preprocess": {}},
        **built.manifest(options.memory_budget_bytes),
        "source_hash": f"{n}-{time.time_ns()}",
        "species_text": {"format": "taxon_com", "templates": "openai"},
    }
    content = VersionContent(vectors, rows, species, text, built.index, manifest)
    write_version_files(staging, content)
    publish(root, staging)


def reload_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Serve version 1 (searches touch all of it); with ``reload``, hot-swap to version 2 and serve it."""
    import asyncio
    from unittest import mock

    from birdsearch.engine.index_state import IndexHolder, prepare
    from birdsearch.indexer import store

    root = Path(spec["root"])
    queries = np.load(Path(spec["data"]) / "audio.npy")
    read = store.read_faiss if spec["mmap"] else read_into_ram
    (root / store.POINTER_FILE).write_text("v0001\n")

    def serve(holder: IndexHolder) -> None:
        """Two batches of searches: enough to touch every page of a flat index."""
        assert holder.current is not None
        for start in (0, 64):
            holder.current.version.search(queries[start : start + 64], 10)

    async def main() -> dict[str, Any]:
        holder = IndexHolder(
            root, lambda name: store.IndexRoot(root).open(name), lambda v: prepare(v, None, None), 0
        )
        await holder.refresh()
        serve(holder)
        serving = current_rss_bytes()
        swapped = False
        if spec["reload"]:
            (root / store.POINTER_FILE).write_text("v0002\n")
            start = time.perf_counter()
            swapped = await holder.refresh()
            reload_s = time.perf_counter() - start
            serve(holder)
        return {
            "rss_serving_bytes": serving,
            "swapped": swapped,
            "reload_s": round(reload_s, 2) if swapped else None,
        }

    with mock.patch.object(store, "read_faiss", read):
        result = asyncio.run(main())
    return {
        "mode": "reload" if spec["reload"] else "serve",
        "mmap": spec["mmap"],
        "peak_rss_bytes": peak_rss_bytes(),
        **result,
    }


def read_into_ram(file: Path) -> Any:
    """What the store did before mapping: the whole index read into the process's memory."""
    import faiss

    return faiss.read_index(str(file))


# -- the parent: runs the children, fits, writes ---------------------------------------------------


def run_child(mode: str, spec: dict[str, Any], timeout_s: float | None) -> dict[str, Any] | None:
    """Run one measurement in a fresh interpreter; None (logged) when it fails or runs out of time."""
    command = [sys.executable, __file__, f"--{mode}", json.dumps(spec)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        log.warning("%s %s ran past %s s; left out", mode, spec, timeout_s)
        return None
    if done.returncode != 0:
        log.error("%s %s failed:\n%s", mode, spec, done.stderr[-3000:])
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def build_specs(args: argparse.Namespace, n: int) -> list[dict[str, Any]]:
    """The builds at size ``n``: auto's pick, then the forced types (with the --storage variants for
    --storage-types, else the type's own default), less any that would build what auto builds."""
    from birdsearch.indexer.faiss_index import IndexOptions, index_plans

    budget = int(args.memory_budget_gb * 2**30)

    def first(kind: str, storage: str) -> tuple[str, str]:
        planned = index_plans(
            n, args.dim, IndexOptions(index_type=kind, storage=storage, memory_budget_bytes=budget)
        )
        return planned[0].kind, planned[0].storage

    picked = first("auto", "auto")
    specs = (
        [{"type": "auto", "storage": "auto", "budget": budget, "auto": True}] if "auto" in args.types else []
    )
    for kind in sorted(
        {k for k in args.types if k != "auto" and n <= args.limit.get(k, n)}, key=BUILD_ORDER.index
    ):
        for storage in args.storage if kind in args.storage_types else ["auto"]:
            if not (specs and first(kind, storage) == picked):
                specs.append({"type": kind, "storage": storage, "budget": budget, "auto": False})
    return specs  # the slow HNSW builds last, so that a time box cuts them first


def fit_slopes(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """log-log slope of build time and peak RSS against N, per (type, storage) seen at two sizes or more."""
    slopes = {}
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(f"{row['type']}/{row['storage']}", []).append(row)
    for name, group in groups.items():
        sizes = sorted({r["n"] for r in group})
        if len(sizes) < 2:
            continue
        n = np.log([r["n"] for r in group])
        slopes[name] = {
            "build_time": round(
                float(np.polyfit(n, np.log([max(r["build_s"], 1e-3) for r in group]), 1)[0]), 2
            ),
            "peak_rss": round(float(np.polyfit(n, np.log([r["peak_rss_bytes"] for r in group]), 1)[0]), 2),
            "sizes": sizes,
        }
    return slopes


def ms(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}" if value >= 1 else f"{value:.2f}"


def gib(b: float) -> str:
    return f"{b / 2**30:.2f}"


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"Machine: {result['machine']}. Dimension {result['dim']}, {PER_SPECIES} photos a species; "
        f"recall@10 against exact search on {result['queries']} held-out queries of each kind "
        f"(species text: the tuning set, one per species, at most {result['queries']}); memory budget "
        f"{result.get('memory_budget_gb', 16):g} GiB (what auto chooses under).",
        "",
        "| N | index (storage) | auto | tuned | build s | peak RSS GiB | planned GiB | index GiB | store GiB "
        "| recall self | recall cross-modal | recall species text | p50 / p99 ms, batch 1 | p50 / p99 ms, batch 64 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        tuned = ", ".join(f"{k} {v}" for k, v in r["search_params"].items())
        tuned = tuned or ("exact" if r["factory"] == "Flat" else "no knob")
        rc = r["recall_at_10"]
        lines.append(
            f"| {r['n']:,} | {r['factory']} ({r['storage']}) | {'yes' if r['auto'] else ''} | {tuned} "
            f"| {r['build_s']} | {gib(r['peak_rss_bytes'])} | {gib(r.get('planned_bytes', 0))} "
            f"| {gib(r['disk_bytes'])} | {gib(r.get('store_bytes', 0))} | {rc['self']:.3f} | {rc['cross_modal']:.3f} "
            f"| {rc['species_text']:.3f} | {ms(r['batch1_ms']['p50'])} / {ms(r['batch1_ms']['p99'])} "
            f"| {ms(r['batch64_ms']['p50'])} / {ms(r['batch64_ms']['p99'])} |"
        )
    if result.get("galleries"):
        lines += ["", "| N | gallery written s | exact neighbours s | vectors GiB |", "|---|---|---|---|"]
        for g in result["galleries"]:
            lines.append(f"| {g['n']:,} | {g['write_s']} | {g['truth_s']} | {gib(g['vectors_bytes'])} |")
    if result["slopes"]:
        lines += [
            "",
            "| index/storage | sizes | slope of build time vs N | slope of peak RSS vs N |",
            "|---|---|---|---|",
        ]
        for name, s in result["slopes"].items():
            lines.append(
                f"| {name} | {', '.join(f'{n:,}' for n in s['sizes'])} | {s['build_time']} | {s['peak_rss']} |"
            )
    if result["reload"]:
        lines += [
            "",
            "| hot reload, N | FAISS index read | peak RSS GiB | vs serving one version |",
            "|---|---|---|---|",
        ]
        base = {r["mmap"]: r["peak_rss_bytes"] for r in result["reload"] if r["mode"] == "serve"}
        for r in result["reload"]:
            ratio = (
                f"{r['peak_rss_bytes'] / base[r['mmap']] - 1:+.0%}"
                if r["mode"] == "reload" and base.get(r["mmap"])
                else ""
            )
            lines.append(
                f"| {r['mode']}, {result['reload_size']:,} | {'memory-mapped' if r['mmap'] else 'into RAM'} "
                f"| {gib(r['peak_rss_bytes'])} | {ratio} |"
            )
    return "\n".join(lines) + "\n"


def merge(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Several runs' results as one (the first run's machine and settings), with slopes refitted."""
    merged = {**results[0], "rows": [], "reload": [], "reload_size": 0, "galleries": []}
    for result in results:
        merged["rows"] += result["rows"]
        merged["galleries"] += result.get("galleries", [])
        merged["reload"] += result["reload"]
        merged["reload_size"] = result.get("reload_size") or merged["reload_size"]
    merged["slopes"] = fit_slopes(merged["rows"])
    return merged


def save(out: Path | None, result: dict[str, Any]) -> str:
    """Write OUT.json and OUT.md (when OUT is given); returns the Markdown."""
    table = markdown({"slopes": {}, **result})
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".json").write_text(json.dumps(result, indent=2))
        out.with_suffix(".md").write_text(table)
    return table


def machine() -> str:
    with open("/proc/cpuinfo") as f:
        cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "?")
    return f"{os.cpu_count()} cores, {cpu}, {platform.machine()}, Python {platform.python_version()}"


def measure_reload(args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    """Peak RSS of serving one version, and of a hot reload to a second, with the index mapped and not."""
    data = work / f"reload-data-{args.reload_size}"
    data.mkdir()
    make_gallery(args.reload_size, args.dim, data, seed=7, held_out=128)
    root = work / "reload-root"
    vectors = np.load(data / "vectors.npy", mmap_mode="r")
    for shift in (0, 1):  # two versions of the same size, different content
        write_version(root, np.ascontiguousarray(np.roll(vectors, shift, axis=0)), args.reload_type)
    rows = []
    for mmap in (True, False) if not args.smoke else (True,):
        for reload in (False, True):
            spec = {"root": str(root), "data": str(data), "mmap": mmap, "reload": reload}
            row = run_child("reload-worker", spec, args.timeout)
            if row:
                rows.append(row)
                log.info("reload row %s", row)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[100_000, 1_000_000])
    parser.add_argument(
        "--queries", type=int, default=HELD_OUT, help="held-out queries of each kind per build"
    )
    parser.add_argument("--dim", type=int, default=DIM)
    parser.add_argument("--types", nargs="+", default=["auto", "ivfpq", "ivf", "hnsw"],
                        help="index types: auto (its pick at each size), flat, hnsw, ivf, ivfpq")  # fmt: skip
    parser.add_argument("--storage", nargs="+", default=["float32", "float16", "sq8"],
                        help="codes (flat, hnsw, ivf) or re-rank store (ivfpq) of the --storage-types")  # fmt: skip
    parser.add_argument("--storage-types", nargs="+", default=[],
                        help="index types built with each --storage (the others: their own default)")  # fmt: skip
    parser.add_argument("--memory-budget-gb", type=float, default=8.0,
                        help="the indexer's --memory-budget-gb: what auto chooses under (8)")  # fmt: skip
    parser.add_argument(
        "--reload-size", type=int, default=0, help="vectors per version of the hot-reload rows (0: none)"
    )
    parser.add_argument("--reload-type", default="flat", help="index type of the hot-reload versions")
    parser.add_argument(
        "--limit", nargs="*", default=[], metavar="TYPE=N",
        help="build TYPE only up to N vectors (e.g. hnsw=100000 where a larger HNSW build takes hours)",
    )  # fmt: skip
    parser.add_argument("--timeout", type=float, default=None, help="seconds allowed to one build")
    parser.add_argument("--out", type=Path, default=None, help="write OUT.json and OUT.md")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, runs in seconds")
    parser.add_argument(
        "--from-json", type=Path, nargs="+", default=None, metavar="JSON",
        help="measure nothing: merge these results (rows, reload rows), fit the slopes, write --out",
    )  # fmt: skip
    parser.add_argument("--build-worker", help=argparse.SUPPRESS)
    parser.add_argument("--reload-worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.limit = {k: int(v) for k, _, v in (item.partition("=") for item in args.limit)}
    for mode, worker in (("build_worker", build_worker), ("reload_worker", reload_worker)):
        if getattr(args, mode):
            logging.basicConfig(level=logging.WARNING)
            sys.stdout.write(json.dumps(worker(json.loads(getattr(args, mode)))) + "\n")
            return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.from_json:
        sys.stdout.write(save(args.out, merge([json.loads(p.read_text()) for p in args.from_json])))
        return 0
    if args.smoke:
        args.sizes, args.dim, args.reload_size, args.queries = [800, 1_600], 32, 1_000, 200
        args.types, args.storage, args.storage_types = (
            ["auto", "hnsw", "ivf", "ivfpq", "flat"],
            ["sq8"],
            ["flat"],
        )
    work = Path(tempfile.mkdtemp(prefix="index-scale-", dir=args.work))
    result: dict[str, Any] = {
        "queries": args.queries,
        "machine": machine(),
        "dim": args.dim,
        "memory_budget_gb": args.memory_budget_gb,
        "rows": [],
        "galleries": [],
        "reload": [],
        "reload_size": args.reload_size,
    }
    try:
        for n in args.sizes:
            data = work / f"data-{n}"
            data.mkdir()
            result["galleries"].append(make_gallery(n, args.dim, data, held_out=args.queries))
            log.info("gallery %s", result["galleries"][-1])
            for spec in build_specs(args, n):
                row = run_child("build-worker", {**spec, "data": str(data)}, args.timeout)
                if row:
                    result["rows"].append({**row, "auto": spec["auto"]})
                    log.info("row %s", json.dumps(result["rows"][-1]))
                    save(args.out, result)  # row by row: a run cut short keeps what it measured
            shutil.rmtree(data)
        result["slopes"] = fit_slopes(result["rows"])
        if args.reload_size:
            result["reload"] = measure_reload(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    sys.stdout.write(save(args.out, result))
    expected = sum(len(build_specs(args, n)) for n in args.sizes)
    return 0 if len(result["rows"]) == expected and (not args.reload_size or result["reload"]) else 1


if __name__ == "__main__":
    sys.exit(main())
