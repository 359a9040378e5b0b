"""Distillation training throughput (clips/s) of the FULL-SIZE student, eager against torch.compile.

The full-size BioLingual architecture (transformers' ClapConfig defaults: HTSAT-tiny unfused + its
512-d projection) with random weights, a head into BioCLIP-2's 768-d space, the trainer's default
in-batch symmetric InfoNCE (``--objective class``: against S species' text embeddings), fused AdamW
on CUDA. One training step is exactly the trainer's
(``birdsearch.model.distill.trainer.forward_backward`` + ``optimizer_step``): 10 s waveforms at 48 kHz
already on the device -> log-mel on the device -> forward (bf16 autocast on CUDA) -> InfoNCE ->
backward -> gradient clipping -> AdamW. Decoding and resampling happen in loader workers in the real
run and are not timed here (they scale with CPU cores; BENCHMARKS.md, Distillation training throughput).

The naive way, for the ratio: the same step, eager (no torch.compile). Target on an H100 (bf16):
at least 2,000 training clips/s.

    python bench/distill_throughput.py                     # CPU: a small batch, a few steps
    python bench/distill_throughput.py --batch-size 256    # GPU: eager and compiled, bf16
    python bench/distill_throughput.py --compile off --json

Prints a Markdown table (and JSON with --json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch

from birdsearch.model.device import resolve_device
from birdsearch.model.distill.objectives import LogitScale
from birdsearch.model.distill.trainer import DistillModule, forward_backward, optimizer_step, parameter_groups
from birdsearch.model.encoder import DistilledAudioEncoder
from birdsearch.model.mel import FrontEndConfig, MelFrontEnd
from birdsearch.model.standins import build_student


def machine(device: torch.device) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = f", {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads{gpu}"


def build(device: torch.device, species: int, out_dim: int, compile_mode: str | None, config=None):
    """The trainable module, optimizer, mel front end and random species targets.

    ``config``: the student's ClapConfig; None is transformers' defaults, BioLingual's architecture.
    """
    from transformers import ClapConfig

    student = build_student(config or ClapConfig(), seed=0)  # random weights
    encoder = DistilledAudioEncoder.from_student(student, out_dim)
    del student
    module = DistillModule(encoder, LogitScale(), freeze_batchnorm=True).to(device).train()
    forward_module = torch.compile(module, mode=compile_mode) if compile_mode else module
    optimizer = torch.optim.AdamW(
        parameter_groups(module, 0.01), lr=1e-4, betas=(0.9, 0.98), eps=1e-6, fused=device.type == "cuda"
    )
    mel = MelFrontEnd(FrontEndConfig(), device)
    targets = torch.nn.functional.normalize(torch.randn(species, out_dim, device=device), dim=-1)
    return module, forward_module, optimizer, mel, targets


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(
    device, batch, steps, warmup, species, out_dim, compile_mode, objective="batch", config=None
) -> dict:
    module, forward_module, optimizer, mel, targets = build(device, species, out_dim, compile_mode, config)
    waves = 0.1 * torch.randn(batch, FrontEndConfig().window_samples, device=device)
    labels = torch.randint(0, species, (batch,), device=device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    began = time.perf_counter()
    for _ in range(warmup):  # compilation, autotuning, allocator warm-up
        forward_backward(forward_module, mel, waves, labels, targets, objective, device)
        optimizer_step(module, optimizer, None, 1.0)
    sync(device)
    warmup_s = time.perf_counter() - began
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        loss = forward_backward(forward_module, mel, waves, labels, targets, objective, device)
        optimizer_step(module, optimizer, None, 1.0)
        sync(device)
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return {
        "mode": f"compiled ({compile_mode})" if compile_mode else "eager",
        "precision": "bf16 autocast" if device.type == "cuda" else "fp32",
        "batch": batch,
        "clips_per_s": batch / median,
        "step_ms_p50": 1000 * median,
        "step_ms_max": 1000 * max(times),
        "warmup_s": warmup_s,
        "peak_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        "loss": float(loss),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=None, help="default: 256 on CUDA, 4 on CPU")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default: 20 on CUDA, 3 on CPU)")
    parser.add_argument(
        "--warmup", type=int, default=None, help="untimed steps first (default: 5 on CUDA, 1 on CPU)"
    )
    parser.add_argument("--species", type=int, default=5569, help="classes in the loss (iNatSounds: 5569)")
    parser.add_argument("--out-dim", type=int, default=768, help="teacher dimension (BioCLIP-2: 768)")
    parser.add_argument("--compile", default="auto", choices=["auto", "off", "on", "both"],
                        help="auto: eager and compiled on CUDA, eager only on CPU")  # fmt: skip
    parser.add_argument(
        "--compile-mode", default="default", help="torch.compile mode, e.g. max-autotune-no-cudagraphs"
    )
    parser.add_argument(
        "--objective", default="batch", choices=["batch", "class"], help="the loss (default: the trainer's)"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    batch = args.batch_size or (256 if cuda else 4)
    steps = args.steps or (20 if cuda else 3)
    warmup = args.warmup or (5 if cuda else 1)
    choice = args.compile if args.compile != "auto" else ("both" if cuda else "off")
    modes = {"off": [None], "on": [args.compile_mode], "both": [None, args.compile_mode]}[choice]
    rows = []
    for mode in modes:
        rows.append(measure(device, batch, steps, warmup, args.species, args.out_dim, mode, args.objective))
        if cuda:
            torch.cuda.empty_cache()
    eager = next((r["clips_per_s"] for r in rows if r["mode"] == "eager"), None)
    print(f"Distillation training step, full-size student, {args.objective} InfoNCE, {args.species} species, "
          f"on {machine(device)}\n")  # fmt: skip
    print(
        "| mode | precision | batch | clips/s | step p50 (ms) | step max (ms) | vs eager | peak GiB | warm-up (s) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        ratio = f"{r['clips_per_s'] / eager:.2f}×" if eager else "–"
        peak = f"{r['peak_gib']:.1f}" if r["peak_gib"] is not None else "–"
        print(f"| {r['mode']} | {r['precision']} | {r['batch']} | {r['clips_per_s']:,.1f} | {r['step_ms_p50']:.0f} | "
              f"{r['step_ms_max']:.0f} | {ratio} | {peak} | {r['warmup_s']:.0f} |")  # fmt: skip
    if args.json:
        print(json.dumps({"machine": machine(device), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
