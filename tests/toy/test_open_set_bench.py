"""``bench/open_set.py`` on the tiny world: each mode's figures on validation and test, and its tables.

The figures of so small a world mean nothing; what is checked is that the bench runs end to end from
a fresh work folder and reports, for every mode asked for, what BENCHMARKS' "Open set" section reads.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GROUPS = {"in_gallery", "background", "out_of_gallery", "non_bird", "shifted"}


@pytest.mark.slow  # bench/open_set.py end to end (~30 s on a 2-core EPYC): a benchmark; the gate's
# behaviour is in tests/engine/test_gate.py and tests/analyze/test_runners.py
def test_the_open_set_bench_reports_every_mode_on_validation_and_test(toy_cache, tmp_path):
    out = tmp_path / "open_set.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "open_set.py"), "--preset", "tiny", "--work", str(tmp_path / "work"),
         "--modes", "distilled,classifier", "--json", str(out)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert set(report["modes"]) == {"distilled", "classifier"}
    for mode, result in report["modes"].items():
        assert result["validation"]["gate"]["signal"], mode
        for figures in (result["validation"]["after"], result["test"]["after"]):
            assert set(figures["windows_detected"]) >= GROUPS, mode
            assert all(0 <= share <= 1 for share in figures["windows_detected"].values()), mode
            assert set(figures["best_score_median"]) >= GROUPS, mode
        assert "soundscape" in result["test"]["after"]["windows_detected"]
        assert result["test"]["windows"]["background"] > 0
        assert f"| {mode} | after |" in done.stdout
