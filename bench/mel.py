"""Log-mel front end throughput: transformers.ClapFeatureExtractor (numpy) against our torch LogMel.

Measured in one run, same 10 s clips, on the CPU (and on the GPU when there is one). The naive way is
what a user of transformers does: the extractor, one call per batch of clips. Prints a Markdown table.

    python bench/mel.py [--clips 64] [--batch 32] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import torch

from birdsearch.model.mel import FrontEndConfig, LogMel, MelFrontEnd, NumpyLogMel


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads{gpu}"


def clips_per_second(fn, clips: np.ndarray, batch: int, repeats: int = 3, sync=lambda: None) -> float:
    fn(clips[:batch])  # warm-up: allocations, kernel selection
    sync()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for i in range(0, len(clips), batch):
            fn(clips[i : i + batch])
        sync()
        best = min(best, time.perf_counter() - start)
    return len(clips) / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--gpu-clips", type=int, default=4096)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    config = FrontEndConfig()
    rng = np.random.default_rng(0)
    clips = (0.1 * rng.standard_normal((args.clips, config.window_samples))).astype(np.float32)
    reference = NumpyLogMel(config)
    cpu_mel = LogMel(config)
    rows = [
        ("ClapFeatureExtractor (numpy), CPU", clips_per_second(reference, clips, args.batch)),
        (
            "LogMel (torch), CPU, the whole batch in one call",
            clips_per_second(lambda x: cpu_mel(torch.from_numpy(x)), clips, args.batch),
        ),
        (
            "MelFrontEnd (torch, window by window), CPU: what birdsearch runs",
            clips_per_second(MelFrontEnd(config, "cpu"), clips, args.batch),
        ),
    ]
    if torch.cuda.is_available():
        gpu_mel = LogMel(config).cuda()
        gpu_clips = torch.from_numpy(clips).cuda().repeat(max(1, args.gpu_clips // len(clips)), 1)
        rows.append(
            (
                "LogMel (torch), GPU, on-device clips",
                clips_per_second(gpu_mel, gpu_clips, 256, sync=torch.cuda.synchronize),
            )
        )

    base = rows[0][1]
    print(f"Machine: {machine()}. Clips: 10 s at 48 kHz, batch {args.batch}; best of 3.\n")
    print("| implementation | clips/s | × extractor |")
    print("|---|---:|---:|")
    for name, rate in rows:
        print(f"| {name} | {rate:,.1f} | {rate / base:.1f}× |")


if __name__ == "__main__":
    main()
