"""The demo and the test suite on this machine: first answer, full evaluation, second start, suite.

    python bench/demo_time.py [--preset default] [--isa avx2] [--no-suite] [--json bench/results/demo_time.json]

Each demo step on a fresh ``BIRDSEARCH_CACHE`` (deleted afterwards):

1. ``birdsearch demo``: seconds from its start until ``POST /query`` with one of the world's example
   recordings answers 200 (the first answer), then until ``GET /evaluation`` holds the evaluation
   that ran in the background meanwhile;
2. ``birdsearch demo --no-serve`` on another fresh cache: wall time, the children's user and system CPU;
3. ``birdsearch demo`` again on the first cache: seconds until ``/readyz`` answers 200, then a query
   with ``min_conf`` (the shipped calibration) must answer 200;
4. the size of ``$BIRDSEARCH_CACHE/toy``;
5. the default test suite (``pytest`` from the repository root, as ``make test`` runs it): wall time
   and its summary line (``--no-suite`` leaves it out: it takes minutes).

``--isa avx2`` runs every child as on a CPU without AVX-512 (on one that has it): torch's kernels
(``ATEN_CPU_CAPABILITY``), MKL (``MKL_ENABLE_INSTRUCTIONS``), oneDNN (``ONEDNN_MAX_CPU_ISA``),
numpy's own loops (``NPY_DISABLE_CPU_FEATURES``: the AVX-512 groups this numpy found) and its
OpenBLAS (``OPENBLAS_CORETYPE=Haswell``, the kernels an AMD Zen gets). The output names the CPU and
what the children's torch and numpy report using.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from service_latency import free_port  # noqa: E402  (bench scripts are not a package)

REPO = Path(__file__).resolve().parents[1]
SUMMARY = re.compile(r"^=*\s*(\d+ passed.*) in ([\d.]+)s")
DURATION = re.compile(r"^\s*[\d.]+s (call|setup|teardown)\s+\S")  # a line of --durations


def isa_env(isa: str) -> dict[str, str]:
    """Environment variables that make torch, MKL, oneDNN, numpy and OpenBLAS use ``isa`` at most."""
    if isa == "native":
        return {}
    from numpy._core._multiarray_umath import __cpu_dispatch__, __cpu_features__

    found = [name for name in __cpu_dispatch__ if __cpu_features__.get(name)]
    avx512 = [name for name in found if name.startswith("AVX512") or name == "X86_V4"]
    return {
        "ATEN_CPU_CAPABILITY": "avx2",
        "MKL_ENABLE_INSTRUCTIONS": "AVX2",
        "ONEDNN_MAX_CPU_ISA": "AVX2",
        "NPY_DISABLE_CPU_FEATURES": " ".join(avx512),
        "OPENBLAS_CORETYPE": "Haswell",
    }


def machine(env: dict[str, str]) -> dict[str, str]:
    """The CPU, and the vector units the children's torch and numpy use under ``env``."""
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        found = re.search(r"^model name\s*:\s*(.+)$", cpuinfo.read_text(), re.M)
        model = found.group(1) if found else model
        flags = re.search(r"^flags\s*:\s*(.+)$", cpuinfo.read_text(), re.M)
        model += ", AVX-512" if flags and " avx512f" in flags.group(1) else ", no AVX-512"
    probe = (
        "import numpy, torch; from numpy._core._multiarray_umath import __cpu_features__ as f, "
        "__cpu_dispatch__ as d; print(torch.backends.cpu.get_cpu_capability(), "
        "'numpy:' + ','.join(n for n in d if f.get(n)), 'torch', torch.__version__)"
    )
    used = subprocess.run(
        [sys.executable, "-c", probe], env={**os.environ, **env}, capture_output=True, text=True
    )
    return {
        "cpu": f"{model}, {os.cpu_count()} cores",
        "used": used.stdout.strip(),
        "emulation": " ".join(f"{k}={v}" for k, v in env.items()) or "none",
    }


def demo_command(preset: str, *args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "birdsearch.cli",
        "-q",
        "demo",
        "--preset",
        preset,
        "--device",
        "cpu",
        *args,
    ]


@contextlib.contextmanager
def served_demo(preset: str, env: dict[str, str]):
    """The demo serving on a free loopback port: (its URL, its process, when it started); stopped after."""
    port = free_port()
    started = time.monotonic()
    server = subprocess.Popen(demo_command(preset, "--port", str(port)), env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, start_new_session=True)  # fmt: skip
    try:
        yield f"http://127.0.0.1:{port}", server, started
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)


def first_run(preset: str, env: dict[str, str]) -> dict[str, float]:
    """Step 1: seconds until the first answer, and until the page's evaluation is there."""
    with served_demo(preset, env) as (url, server, started):
        examples = Path(env["BIRDSEARCH_CACHE"]) / "toy"
        first = poll(lambda: query(url, examples, {}), server, 900)
        answer_s = time.monotonic() - started
        poll(lambda: httpx.get(f"{url}/evaluation", timeout=10).json()["ready"], server, 1800)
        evaluation_s = time.monotonic() - started
    assert first
    return {"first_answer_s": round(answer_s, 1), "evaluation_on_page_s": round(evaluation_s, 1)}


def query(url: str, cache_toy: Path, form: dict[str, str]) -> bool:
    """One example recording through ``POST /query``: True on 200 (False while none is drawn or served)."""
    examples = sorted(cache_toy.glob("*/examples/*"))
    if not examples:
        return False
    with open(examples[0], "rb") as f:
        return httpx.post(f"{url}/query", files={"audio": f}, data=form, timeout=120).status_code == 200


def poll(check, process: subprocess.Popen, timeout_s: float):
    """``check()`` until it is true (transport errors count as not yet); fails when ``process`` exits."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the demo exited: {process.stderr.read().decode()[-3000:]}")
        try:
            if result := check():
                return result
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"not done in {timeout_s:.0f} s")


def no_serve(preset: str, env: dict[str, str]) -> dict[str, float]:
    """Step 2: ``demo --no-serve`` on a fresh cache."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    subprocess.run(demo_command(preset, "--no-serve"), env=env, check=True, stdout=subprocess.DEVNULL)
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {
        "no_serve_s": round(wall, 1),
        "no_serve_user_s": round(after.ru_utime - before.ru_utime, 1),
        "no_serve_system_s": round(after.ru_stime - before.ru_stime, 1),
    }


def second_start(preset: str, env: dict[str, str]) -> dict[str, float]:
    """Step 3: the demo again on a cache that holds everything."""
    with served_demo(preset, env) as (url, server, started):
        poll(lambda: httpx.get(f"{url}/readyz", timeout=2).status_code == 200, server, 120)
        ready_s = time.monotonic() - started
        assert query(url, Path(env["BIRDSEARCH_CACHE"]) / "toy", {"min_conf": "0.1"}), (
            "no answer with min_conf"
        )
    return {"second_start_ready_s": round(ready_s, 1)}


def suite(env: dict[str, str]) -> dict[str, object]:
    """Step 5: the default suite, as ``make test`` runs it."""
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--durations=20"],
                          cwd=REPO, env=env, capture_output=True, text=True)  # fmt: skip
    wall = time.monotonic() - started
    lines = done.stdout.splitlines()
    summary = [line for line in lines if SUMMARY.match(line)]
    slowest = [line.strip() for line in lines if DURATION.match(line)]  # what dominates the suite here
    return {"suite_s": round(wall, 1), "suite_summary": summary[-1].strip("= ") if summary else done.stdout[-500:],
            "suite_exit_code": done.returncode, "suite_slowest": slowest}  # fmt: skip


def folder_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="default", help="toy world preset (default: %(default)s)")
    parser.add_argument("--isa", choices=("native", "avx2"), default="native",
                        help="avx2: run every child as on a CPU without AVX-512 (default: %(default)s)")  # fmt: skip
    parser.add_argument("--no-suite", action="store_true", help="leave the test suite out")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    isa = isa_env(args.isa)
    report: dict[str, object] = {"preset": args.preset, "isa": args.isa, "machine": machine(isa)}
    print(json.dumps(report["machine"]), file=sys.stderr)
    with (
        tempfile.TemporaryDirectory(prefix="birdsearch-demo-") as served,
        tempfile.TemporaryDirectory(prefix="birdsearch-demo-") as printed,
    ):
        env = {**os.environ, **isa, "HF_HUB_OFFLINE": "1", "BIRDSEARCH_CACHE": served}
        report.update(first_run(args.preset, env))
        print(json.dumps(report), file=sys.stderr)
        report.update(no_serve(args.preset, {**env, "BIRDSEARCH_CACHE": printed}))
        print(json.dumps(report), file=sys.stderr)
        report.update(second_start(args.preset, env))
        report["toy_cache_mb"] = round(folder_bytes(Path(served) / "toy") / 1e6)
    if not args.no_suite:
        report.update(suite({**os.environ, **isa}))
    print(json.dumps(report, indent=1))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
