"""How many CPU cores this process may keep busy: its CPU affinity and its cgroup's quota, whichever is less.

``os.cpu_count()`` counts the host's cores. A container started with ``cpus: 8`` on a 64-core host
gets a CFS quota of 8 cores' time and may still see 64 cores; threads sized from the host's count
then take turns on the quota and each parallel region waits for threads that have been throttled.
``taskset``/``cpuset`` limits show in the affinity mask instead. Every place that sizes threads or
workers asks ``available_cpus()``.

The quota is read from cgroup v2 (``cpu.max``: ``"max 100000"`` or ``"<quota> <period>"``) and from
cgroup v1's ``cpu`` controller (``cpu.cfs_quota_us``, -1 for none, over ``cpu.cfs_period_us``), in
the process's own cgroup and each of its ancestors, since a parent's limit binds its children.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

log = logging.getLogger(__name__)

CGROUP_ROOT = Path("/sys/fs/cgroup")
SELF_CGROUP = Path("/proc/self/cgroup")
V1_CPU_MOUNTS = ("cpu", "cpu,cpuacct", "cpuacct,cpu")  # how distributions name the v1 cpu controller's mount


def available_cpus(cgroup_root: Path = CGROUP_ROOT, self_cgroup: Path = SELF_CGROUP) -> int:
    """Cores this process may use: min(affinity, cgroup quota), a fractional quota rounded up, at least 1.

    Args:
        cgroup_root: where the cgroup file systems are mounted (tests pass a folder of fake files).
        self_cgroup: the process's ``/proc/self/cgroup``, naming its cgroup in each hierarchy; when
            missing, only the root's own files are read (a container with its own cgroup namespace).
    """
    cores = float(affinity_cpus())
    quota = cgroup_quota(cgroup_root, self_cgroup)
    if quota is not None:
        cores = min(cores, quota)
    return max(1, math.ceil(cores))


def affinity_cpus() -> int:
    """Cores in the process's affinity mask (the host's count where the platform has no masks)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS and Windows have no sched_getaffinity
        return os.cpu_count() or 1


def cgroup_quota(cgroup_root: Path = CGROUP_ROOT, self_cgroup: Path = SELF_CGROUP) -> float | None:
    """The tightest CPU quota, in cores, over the process's cgroups (v2 and v1); None when unlimited."""
    v2_path, v1_path = own_cgroups(self_cgroup)
    quotas = [q for folder in lineage(cgroup_root, v2_path) if (q := v2_quota(folder)) is not None]
    for mount in V1_CPU_MOUNTS:
        quotas += [
            q for folder in lineage(cgroup_root / mount, v1_path) if (q := v1_quota(folder)) is not None
        ]
    return min(quotas) if quotas else None


def own_cgroups(self_cgroup: Path) -> tuple[str, str]:
    """The process's cgroup paths (v2, v1 cpu controller) from ``/proc/self/cgroup``; "/" when unknown."""
    v2, v1 = "/", "/"
    try:
        lines = self_cgroup.read_text().splitlines()
    except OSError:
        return v2, v1
    for line in lines:
        parts = line.split(":", 2)  # "hierarchy-id:controllers:path"
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":
            v2 = path
        elif "cpu" in controllers.split(","):
            v1 = path
    return v2, v1


def lineage(mount: Path, path: str) -> list[Path]:
    """``mount/path`` and each of its ancestors down to ``mount`` itself, those that exist.

    Without a cgroup namespace a container sees its host-side path in /proc/self/cgroup but its own
    cgroup mounted at the root; the folders that do not exist are skipped and the root is read.
    """
    parts = [p for p in path.split("/") if p and p not in (".", "..")]
    folders = [mount.joinpath(*parts[:depth]) for depth in range(len(parts), -1, -1)]
    return [folder for folder in folders if folder.is_dir()]


def v2_quota(folder: Path) -> float | None:
    """Cores allowed by ``folder/cpu.max`` ("max 100000": none; "150000 100000": 1.5)."""
    text = read_small(folder / "cpu.max")
    if text is None:
        return None
    fields = text.split()
    if not fields or fields[0] == "max":
        return None
    period = fields[1] if len(fields) > 1 else "100000"  # the kernel's default period
    return ratio(fields[0], period, folder / "cpu.max")


def v1_quota(folder: Path) -> float | None:
    """Cores allowed by ``cpu.cfs_quota_us`` over ``cpu.cfs_period_us`` in ``folder``; quota -1: none."""
    quota = read_small(folder / "cpu.cfs_quota_us")
    period = read_small(folder / "cpu.cfs_period_us")
    if quota is None or period is None or quota.strip().startswith("-"):
        return None
    return ratio(quota, period, folder / "cpu.cfs_quota_us")


def ratio(quota: str, period: str, source: Path) -> float | None:
    """quota / period as cores; a file that does not parse is logged and ignored, never fatal."""
    try:
        q, p = int(quota), int(period)
    except ValueError:
        log.warning("ignoring the CPU quota in %s: %r / %r are not numbers", source, quota, period)
        return None
    if q <= 0 or p <= 0:
        return None
    return q / p


def read_small(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:  # absent (no such controller), or unreadable: no limit known there
        return None
