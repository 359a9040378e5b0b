"""bench/gpu.sh, the one GPU run: its smoke run on the CPU yields every row with numbers.

The figures of a smoke run mean nothing (tiny sizes and stand-ins); what is checked is that every
row's code path runs end to end through the wrapper, the row processes and the report.
"""

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def load_gpu_module():
    spec = importlib.util.spec_from_file_location("bench_gpu", ROOT / "bench" / "gpu.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_gpu"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


gpu = load_gpu_module()


@pytest.mark.slow  # every row of the GPU run on the CPU (~35 s on a 2-core EPYC): a benchmark
def test_smoke_run_gives_every_row_with_numbers(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable}
    env.pop("OUT", None)
    done = subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu.sh"), "--smoke", "--out", str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    report = json.loads((tmp_path / "gpu.json").read_text())
    assert done.returncode == 0, (done.stderr[-3000:], (tmp_path / "gpu.log").read_text()[-6000:])
    assert report["smoke"] and list(report["rows"]) == list(gpu.ROWS)
    for name, row in report["rows"].items():
        assert row["status"] == "ok", (name, row.get("error"), row.get("log_tail"))
        assert row["figures"], name
        for f in row["figures"]:
            assert math.isfinite(f["value"]) and f["value"] > 0, (name, f)
            assert f["unit"] and f["setting"], (name, f)
    # The query rows cover batch 1 beside the others; search covers every size and batch.
    settings = [f["setting"] for f in report["rows"]["query"]["figures"]]
    assert [s.rsplit("batch ", 1)[1] for s in settings] == ["1"] + [str(b) for b in gpu.SMOKE.query_batches]
    assert len(report["rows"]["search"]["figures"]) == len(gpu.SMOKE.search_sizes) * len(
        gpu.SMOKE.search_batches
    )
    table = (tmp_path / "gpu.md").read_text()
    assert all(row.title in table for row in gpu.ROWS.values())
    assert "===== http" in (tmp_path / "gpu.log").read_text()


def test_a_row_process_writes_its_figures_and_one_past_its_limit_is_killed(tmp_path):
    args = gpu.parse_args(["--smoke", "--rows", "search"])
    with open(tmp_path / "log", "w") as log:
        done = gpu.run_row_process("search", args, tmp_path, 120, log)
        killed = gpu.run_row_process("search", args, tmp_path, 0.5, log)
    assert done["status"] == "ok", done
    assert len(done["figures"]) == len(gpu.SMOKE.search_sizes) * len(gpu.SMOKE.search_batches)
    assert killed["status"] == "timeout" and "limit" in killed["error"], killed
    assert killed["seconds"] < 30


def test_failed_and_skipped_rows_are_reported_not_dropped():
    report = {
        "smoke": False,
        "date_utc": "2026-01-01 00:00",
        "wall_s": 400.0,
        "machine": {"gpu": "NVIDIA H200", "cores": 16, "cpu": "x", "torch": "2.11"},
        "rows": {
            "search": {
                "status": "ok",
                "seconds": 30.0,
                "figures": [
                    gpu.figure("1,000,000 × 768-d, batch 1", 2.5, "ms per batch", queries_per_s=400.0)
                ],
            },
            "http": {"status": "timeout", "seconds": 100.0, "error": "over its 100 s limit"},
            "distill-compiled": {
                "status": "skipped",
                "seconds": 0.0,
                "error": "the run's 450 s budget was spent",
            },
        },
    }
    table = gpu.markdown(report)
    assert "2.5 ms per batch (400 q/s)" in table
    assert "**timeout**: over its 100 s limit" in table and "**skipped**" in table
    assert "NVIDIA H200, 16 cores" in table


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--rows", "search,nope"], "unknown rows"),
        (["--smoke", "--budget", "0"], "positive number"),
    ],
)
def test_bad_arguments_are_refused_by_name(argv, message, capsys):
    with pytest.raises(SystemExit):
        gpu.parse_args(argv)
    assert message in capsys.readouterr().err
