"""Core counts from the affinity mask and the cgroup quota, read from fake cgroup trees."""

from __future__ import annotations

from pathlib import Path

import pytest

from birdsearch import cpus


@pytest.fixture
def affinity(monkeypatch):
    """``affinity(n)``: the process's affinity mask holds ``n`` cores."""

    def make(n: int) -> None:
        monkeypatch.setattr(cpus.os, "sched_getaffinity", lambda pid: set(range(n)), raising=False)

    make(64)
    return make


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")


def no_proc(tmp_path: Path) -> Path:
    return tmp_path / "no-such-proc-file"


def test_v2_quota_of_eight_cores_on_a_64_core_host(tmp_path, affinity):
    write(tmp_path / "cpu.max", "800000 100000")
    assert cpus.available_cpus(tmp_path, no_proc(tmp_path)) == 8


def test_v2_without_a_quota_is_the_affinity(tmp_path, affinity):
    write(tmp_path / "cpu.max", "max 100000")
    affinity(6)
    assert cpus.available_cpus(tmp_path, no_proc(tmp_path)) == 6


def test_v1_quota(tmp_path, affinity):
    write(tmp_path / "cpu" / "cpu.cfs_quota_us", "400000")
    write(tmp_path / "cpu" / "cpu.cfs_period_us", "100000")
    assert cpus.available_cpus(tmp_path, no_proc(tmp_path)) == 4


def test_v1_quota_minus_one_is_no_quota(tmp_path, affinity):
    write(tmp_path / "cpu,cpuacct" / "cpu.cfs_quota_us", "-1")
    write(tmp_path / "cpu,cpuacct" / "cpu.cfs_period_us", "100000")
    affinity(3)
    assert cpus.available_cpus(tmp_path, no_proc(tmp_path)) == 3


def test_no_cgroup_files_at_all_is_the_affinity(tmp_path, affinity):
    affinity(5)
    assert cpus.available_cpus(tmp_path / "empty", no_proc(tmp_path)) == 5


def test_a_quota_above_the_affinity_leaves_the_affinity(tmp_path, affinity):
    write(tmp_path / "cpu.max", "1600000 100000")
    affinity(2)
    assert cpus.available_cpus(tmp_path, no_proc(tmp_path)) == 2


def test_a_fractional_quota_rounds_up_and_never_below_one(tmp_path, affinity):
    write(tmp_path / "cpu.max", "150000 100000")
    assert cpus.available_cpus(tmp_path, no_proc(tmp_path)) == 2
    write(tmp_path / "cpu.max", "10000 100000")
    assert cpus.available_cpus(tmp_path, no_proc(tmp_path)) == 1
    assert cpus.cgroup_quota(tmp_path, no_proc(tmp_path)) == pytest.approx(0.1)


def test_the_own_cgroup_and_its_ancestors_are_read_and_the_tightest_wins(tmp_path, affinity):
    proc = tmp_path / "proc-self-cgroup"
    write(proc, "0::/system.slice/app.service")
    root = tmp_path / "sys"
    write(root / "system.slice" / "cpu.max", "300000 100000")
    write(root / "system.slice" / "app.service" / "cpu.max", "max 100000")
    assert cpus.available_cpus(root, proc) == 3


def test_v1_path_from_proc_self_cgroup(tmp_path, affinity):
    proc = tmp_path / "proc-self-cgroup"
    write(proc, "4:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n0::/")
    root = tmp_path / "sys"
    write(root / "cpu,cpuacct" / "docker" / "abc" / "cpu.cfs_quota_us", "250000")
    write(root / "cpu,cpuacct" / "docker" / "abc" / "cpu.cfs_period_us", "100000")
    assert cpus.available_cpus(root, proc) == 3


def test_a_host_side_path_missing_in_the_container_falls_back_to_the_root(tmp_path, affinity):
    proc = tmp_path / "proc-self-cgroup"
    write(proc, "0::/kubepods/pod1/ctr")  # no cgroup namespace: the host's path, mounted at the root
    write(tmp_path / "sys" / "cpu.max", "200000 100000")
    assert cpus.available_cpus(tmp_path / "sys", proc) == 2


def test_garbage_in_a_quota_file_is_ignored(tmp_path, affinity, caplog):
    write(tmp_path / "cpu.max", "lots 100000")
    affinity(4)
    assert cpus.available_cpus(tmp_path, no_proc(tmp_path)) == 4
    assert "cpu.max" in caplog.text


def test_on_this_machine_the_count_is_positive_and_within_the_affinity():
    assert 1 <= cpus.available_cpus() <= cpus.affinity_cpus()
