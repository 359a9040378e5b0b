"""The demo's first run on a fresh cache, its second start until ``/readyz``, and the cache's size.

    python bench/demo_time.py [--preset default] [--json bench/results/demo_time.json]

1. ``birdsearch demo --no-serve`` with ``BIRDSEARCH_CACHE`` a new empty folder: wall time and the
   child's user and system CPU;
2. ``birdsearch demo`` again on that cache: seconds from start until ``/readyz`` answers 200, then
   a ``POST /query`` with ``min_conf`` (the demo's calibration) must answer 200;
3. the size of ``$BIRDSEARCH_CACHE/toy``.
The cache is deleted afterwards.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from service_latency import free_port, machine, wait_ready  # noqa: E402  (bench scripts are not a package)


def folder_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="default", help="toy world preset (default: %(default)s)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    demo = [sys.executable, "-m", "birdsearch.cli", "-q", "demo", "--preset", args.preset, "--device", "cpu"]
    with tempfile.TemporaryDirectory(prefix="birdsearch-demo-") as cache:
        env = {**os.environ, "BIRDSEARCH_CACHE": cache, "HF_HUB_OFFLINE": "1"}
        started = time.monotonic()
        subprocess.run([*demo, "--no-serve"], env=env, check=True, stdout=subprocess.DEVNULL)
        first_s = time.monotonic() - started
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        port = free_port()
        server = subprocess.Popen([*demo, "--port", str(port)], env=env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, start_new_session=True)  # fmt: skip
        try:
            url = f"http://127.0.0.1:{port}"
            second_s = wait_ready(url, server, 120, lambda: server.stderr.read().decode()[-2000:])
            query = sorted(glob.glob(f"{cache}/toy/{args.preset}-*/audio/query/*/*.ogg"))[0]
            with open(query, "rb") as f:
                answer = httpx.post(f"{url}/query", files={"audio": f}, data={"min_conf": "0.1"}, timeout=60)
            answer.raise_for_status()
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=60)
        report = {
            "preset": args.preset,
            "first_run_s": round(first_s, 1),
            "first_run_user_s": round(usage.ru_utime, 1),
            "first_run_system_s": round(usage.ru_stime, 1),
            "second_run_ready_s": round(second_s, 1),
            "toy_cache_mb": round(folder_bytes(Path(cache) / "toy") / 1e6),
            "machine": machine(),
        }
    print(json.dumps(report, indent=1))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
