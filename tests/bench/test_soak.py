"""`bench/soak.py --smoke`: real and hostile uploads against a live server; no 5xx, every request answered."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Valid recordings may succeed (a 64 KB HTTP header is within what servers accept); every other kind must not.
MAY_SUCCEED = {"real", "huge_header"}


@pytest.mark.slow  # a benchmark's smoke run (~24 s on a 2-core EPYC); hostile uploads one by one:
# tests/service/test_bad_input.py
def test_the_soak_smoke_run_answers_everything_without_a_5xx(tmp_path):
    report_file = tmp_path / "soak.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "soak.py"), "--smoke", "--json", str(report_file)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    report = json.loads(report_file.read_text())
    assert report["requests_sent"] == report["requests_planned"] == 60 and report["clients"] == 4
    assert report["status_5xx"] == 0 and report["no_answer"] == 0 and report["server_alive"]
    statuses = {kind: {int(s) for s in counts} for kind, counts in report["statuses"].items()}
    assert {"empty", "truncated", "wrong_type", "random_bytes", "too_long", "oversize", "bad_params"} <= set(
        statuses
    )
    for kind, codes in statuses.items():
        if kind not in MAY_SUCCEED:
            assert all(400 <= code < 500 for code in codes), (kind, codes)
    assert 200 in statuses["real"]
    assert statuses["oversize"] == {413} and statuses["too_long"] == {413}
    assert report["rss_growth_mb"] < 50
