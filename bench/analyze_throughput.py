"""``analyze`` throughput against the model path alone, in hours of audio per second, in one run.

Two rows, measured in one process one after the other, each repeated ``--rounds`` times
alternately (so that a change in background load hits both alike):

- **model path**: features + encoder on batches of 10 s windows already in memory, at each batch
  size of ``--batches``; the best is the row (the ceiling ``analyze`` could reach);
- **analyze**: ``birdsearch analyze`` in-process over a folder of FLAC recordings (decoding,
  resampling, windowing, shared forward passes at that best batch size, search, and writing all
  four formats), with the models and the index loaded once beforehand. Each round writes to a fresh
  folder, so that nothing is skipped.

Recordings are 32 kHz mono FLAC (a recorder's rate, so resampling is included), whole multiples of
10 s long, so that both rows do the same model work per hour of audio. Models have random weights in
the real architectures (timing does not depend on the weights): ``full`` is BioLingual's HTSAT-tiny
audio tower + projection into BioCLIP-2's 768-d space; ``toy`` is the toy world's student.

    python bench/analyze_throughput.py                      # full architecture on this CPU
    python bench/analyze_throughput.py --device cuda --batches 32,64,128 --minutes 60   # a GPU
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from service_latency import build_world, machine  # noqa: E402  (bench scripts are not a package)

RATE = 32_000


def write_recordings(folder: Path, minutes: float, seed: int = 0) -> float:
    """FLAC recordings of 10 to 120 s (multiples of 10 s) adding up to about ``minutes``; seconds written."""
    import soundfile as sf

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    total, i = 0.0, 0
    while total < minutes * 60:
        seconds = 10.0 * int(rng.integers(1, 13))
        t = np.arange(int(seconds * RATE)) / RATE
        chirps = 0.2 * np.sin(2 * np.pi * (2500 + 1500 * np.sin(2 * np.pi * rng.uniform(0.5, 4) * t)) * t)
        samples = (chirps + 0.05 * rng.standard_normal(len(t))).astype(np.float32)
        sf.write(folder / f"rec_{i:04d}.flac", samples, RATE, subtype="PCM_16")
        total += seconds
        i += 1
    return total


def model_path_rate(embedder: Any, batch: int, windows: int) -> float:
    """Hours of audio per second through features + encoder at ``batch`` (10 s windows in memory)."""
    import torch

    rng = np.random.default_rng(1)
    rows = (0.1 * rng.standard_normal((batch, embedder.front_end.window_samples))).astype(np.float32)
    embedder(rows)  # warm-up
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    started, done = time.perf_counter(), 0
    while done < windows:
        embedder(rows)
        done += batch
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return done * embedder.front_end.window_s / 3600 / (time.perf_counter() - started)


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    import torch

    from birdsearch.analyze.config import AnalyzeConfig
    from birdsearch.analyze.run import analyze, load_engine

    world = build_world(workdir / args.arch, args.arch, args.gallery_images)
    audio_s = write_recordings(workdir / "recordings", args.minutes)
    windows = int(audio_s // 10)

    def config(out: Path, batch: int) -> AnalyzeConfig:
        return AnalyzeConfig(inputs=[str(workdir / "recordings")], out=out, index_root=world["index"],
                             checkpoint=str(world["encoder"]), device=args.device, batch_size=batch,
                             workers=args.workers, progress=False, min_conf=args.min_conf)  # fmt: skip

    engine = load_engine(config(workdir / "unused", 1))
    batches = [int(b) for b in args.batches.split(",")]
    with torch.inference_mode():
        per_batch = {b: model_path_rate(engine.embedder, b, max(b, windows // 2)) for b in batches}
    best = max(per_batch, key=per_batch.get)
    print(f"model path, h audio/s by batch: {per_batch}; best batch {best}", file=sys.stderr)

    model_rates, analyze_rates, summary = [], [], None
    for r in range(args.rounds):
        with torch.inference_mode():
            model_rates.append(model_path_rate(engine.embedder, best, windows))
        summary = analyze(config(workdir / f"out{r}", best), engine)
        assert summary.analysed == summary.recordings and summary.failed == 0, summary
        analyze_rates.append(summary.audio_hours_per_s)
        print(
            f"round {r}: model {model_rates[-1]:.4f} h/s, analyze {analyze_rates[-1]:.4f} h/s",
            file=sys.stderr,
        )
    model_rate, analyze_rate = float(np.median(model_rates)), float(np.median(analyze_rates))
    return {
        "machine": machine(), "arch": args.arch, "device": args.device, "threads": torch.get_num_threads(),
        "recordings": summary.recordings, "audio_s": audio_s, "windows": windows, "batch": best,
        "model_path_by_batch": per_batch, "model_path_h_per_s": model_rate, "analyze_h_per_s": analyze_rate,
        "ratio": analyze_rate / model_rate, "rounds": args.rounds, "workers": args.workers,
        "analyze_stage_s": summary.stage_s, "analyze_wall_s": summary.wall_s,
    }  # fmt: skip


def table(r: dict[str, Any]) -> str:
    return "\n".join([
        f"machine: {r['machine']}; {r['arch']} architecture on {r['device']}, torch threads "
        f"{r['threads']}; {r['recordings']} FLAC recordings (32 kHz), {r['audio_s'] / 60:.0f} min, "
        f"{r['windows']} windows of 10 s; median of {r['rounds']} alternating rounds",
        "",
        "| path | batch | hours of audio per second | real-time factor |",
        "|---|---:|---:|---:|",
        f"| model path (features + encoder, windows in memory) | {r['batch']} | {r['model_path_h_per_s']:.4f} "
        f"| {r['model_path_h_per_s'] * 3600:.0f}× |",
        f"| `analyze` in-process (decode, resample, window, model, search, write 4 formats) | {r['batch']} "
        f"| {r['analyze_h_per_s']:.4f} | {r['analyze_h_per_s'] * 3600:.0f}× |",
        f"| analyze / model path | | **{r['ratio']:.2f}×** | |",
        "",
        f"analyze's last round, {r['analyze_wall_s']:.1f} s: "
        + ", ".join(f"{stage} {seconds:.1f} s" for stage, seconds in r["analyze_stage_s"].items())
        + " (decode summed over the reader threads; waiting: the model's thread waiting for them)",
    ])  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", choices=("toy", "full"), default="full")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--batches", default="1,4,8", help="model-path batch sizes tried (the best is used)")
    parser.add_argument("--minutes", type=float, default=6.0, help="minutes of audio analysed per round")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds of the two rows")
    parser.add_argument("--workers", type=int, default=0, help="analyze's decoding threads (0: usable cores)")
    parser.add_argument("--min-conf", type=float, default=0.1)
    parser.add_argument("--gallery-images", type=int, default=240)
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    with tempfile.TemporaryDirectory(prefix="birdsearch-analyze-bench-") as tmp:
        result = run(args, Path(tmp))
    print(table(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
