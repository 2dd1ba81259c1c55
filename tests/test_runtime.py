"""Thread pools follow the CPUs a process may use and the user's explicit setting (recsys.runtime)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from recsys.runtime import THREADS_ENV, cgroup_cpu_quota, plan_threads, usable_cpus

PROBE = (
    "import json, os, recsys, torch, faiss\n"
    "from threadpoolctl import threadpool_info\n"
    "print(json.dumps({'torch': torch.get_num_threads(), 'faiss': faiss.omp_get_max_threads(),"
    " 'blas': sorted({p['num_threads'] for p in threadpool_info() if p['user_api'] == 'blas'}),"
    " 'wait': os.environ.get('OMP_WAIT_POLICY')}))"
)


def _probe(env_updates: dict[str, str] | None = None, cpus: set[int] | None = None) -> dict:
    """Thread counts seen by a fresh interpreter that imports recsys, then torch, faiss and numpy."""
    env = {k: v for k, v in os.environ.items() if k not in (THREADS_ENV, "OMP_NUM_THREADS", "_RECSYS_OMP_SET")}
    env.update(env_updates or {})
    preexec = (lambda: os.sched_setaffinity(0, cpus)) if cpus is not None else None
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, preexec_fn=preexec, capture_output=True, text=True, check=True, timeout=120
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_pools_default_to_the_usable_cpus_and_sleep_when_idle():
    seen = _probe()
    n = len(os.sched_getaffinity(0))
    assert seen["torch"] == n and seen["faiss"] == n and seen["blas"] == [n]
    assert seen["wait"] == "PASSIVE"


def test_pools_follow_an_explicit_setting():
    seen = _probe({THREADS_ENV: "1"})
    assert seen["torch"] == 1 and seen["faiss"] == 1 and seen["blas"] == [1]


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs to restrict the affinity to fewer")
def test_pools_follow_a_restricted_affinity():
    first = min(os.sched_getaffinity(0))
    seen = _probe(cpus={first})
    assert seen["torch"] == 1 and seen["faiss"] == 1 and seen["blas"] == [1]
    # A value set by a parent recsys process is not mistaken for the user's: the child re-plans.
    inherited = _probe({"OMP_NUM_THREADS": "2", "_RECSYS_OMP_SET": "2"}, cpus={first})
    assert inherited["torch"] == 1


def test_cli_threads_flag_is_applied_and_logged(tmp_path: Path):
    out = subprocess.run(
        [sys.executable, "-m", "recsys.cli", "index", "--bundle", str(tmp_path / "missing"), "--threads", "1"],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 2
    assert "threads: 1 (from --threads" in out.stderr


def test_a_malformed_thread_count_is_one_clear_error(tmp_path: Path):
    env = {**os.environ, THREADS_ENV: "many"}
    out = subprocess.run(
        [sys.executable, "-m", "recsys.cli", "index", "--bundle", str(tmp_path)], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 2
    assert "error: RECSYS_THREADS must be a whole number >= 1, got 'many'" in out.stderr
    assert "Traceback" not in out.stderr


def test_plan_precedence():
    assert plan_threads(3, environ={THREADS_ENV: "2", "OMP_NUM_THREADS": "4"}).source == "--threads"
    plan = plan_threads(environ={THREADS_ENV: "2", "OMP_NUM_THREADS": "4"})
    assert (plan.threads, plan.source) == (2, THREADS_ENV)
    plan = plan_threads(environ={"OMP_NUM_THREADS": "4"})
    assert (plan.threads, plan.source) == (4, "OMP_NUM_THREADS")
    plan = plan_threads(role_default=1, environ={})
    assert (plan.threads, plan.source) == (1, "role default")
    plan = plan_threads(environ={})
    assert (plan.threads, plan.source) == (usable_cpus(cgroup_cpu_quota()), "usable CPUs")
    with pytest.raises(ValueError, match="--threads must be a whole number >= 1"):
        plan_threads(0, environ={})


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_cgroup_v2_quota_is_the_tightest_of_the_process_cgroups(tmp_path: Path):
    proc = tmp_path / "proc_cgroup"
    _write(proc, "0::/jobs/batch\n")
    _write(tmp_path / "cg" / "cpu.max", "max 100000\n")
    _write(tmp_path / "cg" / "jobs" / "cpu.max", "300000 100000\n")
    _write(tmp_path / "cg" / "jobs" / "batch" / "cpu.max", "150000 100000\n")
    assert cgroup_cpu_quota(tmp_path / "cg", proc) == pytest.approx(1.5)
    _write(tmp_path / "cg" / "jobs" / "batch" / "cpu.max", "max 100000\n")
    assert cgroup_cpu_quota(tmp_path / "cg", proc) == pytest.approx(3.0)


def test_cgroup_v1_quota_and_no_quota(tmp_path: Path):
    _write(tmp_path / "v1" / "cpu" / "cpu.cfs_quota_us", "50000\n")
    _write(tmp_path / "v1" / "cpu" / "cpu.cfs_period_us", "100000\n")
    assert cgroup_cpu_quota(tmp_path / "v1", tmp_path / "none") == pytest.approx(0.5)
    _write(tmp_path / "v1" / "cpu" / "cpu.cfs_quota_us", "-1\n")
    assert cgroup_cpu_quota(tmp_path / "v1", tmp_path / "none") is None
    assert cgroup_cpu_quota(tmp_path / "empty", tmp_path / "none") is None


def test_a_quota_caps_the_affinity():
    assert usable_cpus(0.5) == 1
    assert usable_cpus(None) == len(os.sched_getaffinity(0))
    assert usable_cpus(1000.0) == len(os.sched_getaffinity(0))
