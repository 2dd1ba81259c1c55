"""Thread pools sized to the CPUs this process may actually use, decided in one place.

Why: torch, faiss (OpenMP) and numpy (OpenBLAS) size their pools from the host's core count and, by
default, spin while they wait for a core. A batch job rarely owns its machine: beside one other busy
process an OpenMP pool of 2 threads on 2 cores spends most of its time spinning for the core the
other process holds (docs/benchmarks.md). So every entry point takes its thread count from the CPUs
it may run on (affinity mask and cgroup CPU quota), lets the user set it (`--threads`, or the
`RECSYS_THREADS` environment variable), and makes idle OpenMP workers sleep (`OMP_WAIT_POLICY=PASSIVE`)
instead of spinning. The pools read these variables when their libraries load, so `import recsys`
sets them (never overriding what the user exported), and `configure_threads` re-applies the count to
libraries already loaded.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

THREADS_ENV = "RECSYS_THREADS"
POOL_SIZE_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
CGROUP_ROOT = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class ThreadPlan:
    """How many threads each pool gets, and why."""

    threads: int
    source: str  # "--threads", "RECSYS_THREADS", "OMP_NUM_THREADS", "role default" or "usable CPUs"
    usable_cpus: int
    host_cpus: int
    cpu_quota: float | None  # cgroup CPU limit in CPUs, None when there is none

    def describe(self) -> str:
        quota = "no cgroup CPU quota" if self.cpu_quota is None else f"cgroup quota {self.cpu_quota:g} CPUs"
        return (
            f"threads: {self.threads} (from {self.source}; usable CPUs {self.usable_cpus} of {self.host_cpus} on the "
            f"host, {quota}; OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}; set with --threads "
            f"or {THREADS_ENV})"
        )


def _cgroup_v2_dirs(root: Path, proc_cgroup: Path) -> list[Path]:
    """The process's cgroup v2 directory and its ancestors up to `root` (innermost first)."""
    relative = ""
    try:
        for line in proc_cgroup.read_text().splitlines():
            if line.startswith("0::"):
                relative = line[3:].strip().lstrip("/")
    except OSError:
        pass
    here = root / relative if relative else root
    dirs = [here]
    while here != root and root in here.parents:
        here = here.parent
        dirs.append(here)
    return dirs


def cgroup_cpu_quota(root: Path = CGROUP_ROOT, proc_cgroup: Path = Path("/proc/self/cgroup")) -> float | None:
    """The tightest CPU limit (in CPUs) of this process's cgroups, v2 (`cpu.max`) or v1
    (`cpu.cfs_quota_us` / `cpu.cfs_period_us`); None when no limit is set or readable."""
    limits: list[float] = []
    for directory in _cgroup_v2_dirs(root, proc_cgroup):
        try:
            quota, period = (directory / "cpu.max").read_text().split()[:2]
        except (OSError, ValueError):
            continue
        if quota != "max" and float(period) > 0:
            limits.append(float(quota) / float(period))
    for v1 in (root / "cpu", root / "cpu,cpuacct"):
        try:
            quota_us = float((v1 / "cpu.cfs_quota_us").read_text())
            period_us = float((v1 / "cpu.cfs_period_us").read_text())
        except (OSError, ValueError):
            continue
        if quota_us > 0 and period_us > 0:
            limits.append(quota_us / period_us)
    return min(limits) if limits else None


def affinity_cpus() -> int:
    """CPUs in this process's affinity mask (what `taskset` or a container's cpuset allows)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def usable_cpus(quota: float | None = None) -> int:
    """CPUs this process may use: its affinity mask, capped by the cgroup quota (rounded up, at least 1)."""
    cpus = affinity_cpus()
    if quota is not None:
        cpus = min(cpus, max(1, math.ceil(quota)))
    return max(1, cpus)


def _positive_int(value: str | int, name: str) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = 0
    if number < 1:
        raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")
    return number


def plan_threads(
    requested: int | None = None, *, role_default: int | None = None, environ: Mapping[str, str] | None = None
) -> ThreadPlan:
    """The thread count, first of: `requested` (--threads), $RECSYS_THREADS, an exported
    $OMP_NUM_THREADS, `role_default` (the server's 1), the usable CPUs. Never more than the usable CPUs
    unless asked for explicitly."""
    env = os.environ if environ is None else environ
    quota = cgroup_cpu_quota()
    usable = usable_cpus(quota)
    host = os.cpu_count() or usable
    if requested is not None:
        threads, source = _positive_int(requested, "--threads"), "--threads"
    elif env.get(THREADS_ENV):
        threads, source = _positive_int(env[THREADS_ENV], THREADS_ENV), THREADS_ENV
    elif env.get("OMP_NUM_THREADS") and env.get("_RECSYS_OMP_SET") != env.get("OMP_NUM_THREADS"):
        threads, source = _positive_int(env["OMP_NUM_THREADS"].split(",")[0], "OMP_NUM_THREADS"), "OMP_NUM_THREADS"
    elif role_default is not None:
        threads, source = min(role_default, usable), "role default"
    else:
        threads, source = usable, "usable CPUs"
    return ThreadPlan(threads, source, usable, host, quota)


def _set_pool_env(threads: int) -> None:
    """What the pools read when their libraries load. `_RECSYS_OMP_SET` marks the value as ours, so a
    later plan tells it apart from one the user exported."""
    for name in POOL_SIZE_VARS:
        os.environ[name] = str(threads)
    os.environ["_RECSYS_OMP_SET"] = str(threads)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def configure_threads(requested: int | None = None, *, role_default: int | None = None, log: bool = False) -> ThreadPlan:
    """Size every pool from `plan_threads` and apply it to torch, faiss and BLAS where already loaded.

    Idempotent and cheap; `import recsys` calls it once with no arguments (so the variables are set
    before any pool starts), and entry points call it again with the user's `--threads`."""
    plan = plan_threads(requested, role_default=role_default)
    _set_pool_env(plan.threads)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(plan.threads)
    if "faiss" in sys.modules:
        sys.modules["faiss"].omp_set_num_threads(plan.threads)
    if "numpy" in sys.modules:
        try:
            from threadpoolctl import threadpool_limits

            threadpool_limits(plan.threads, user_api="blas")
        except Exception:  # noqa: BLE001 - an optional nicety: OPENBLAS_NUM_THREADS covers a later numpy load
            pass
    if log:
        logger.info(plan.describe())
    return plan
