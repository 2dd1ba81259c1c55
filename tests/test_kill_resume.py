"""Kill and re-run, with real processes: `recsys recommend` and `recsys train` are SIGKILLed at chosen
points (the RECSYS_TEST_PAUSE_AT test hook, recsys/hooks.py, holds them there), then run again.

What must hold (docs/reliability.md, "Kill and re-run"):
- a killed batch job leaves no output file, only its work folder; the re-run reuses the finished parts
  and its output is byte-for-byte the uninterrupted run's; no temp file or work folder remains;
- a killed training leaves either no bundle or the previous complete one, never a half-written one;
  the re-run writes the same bundle (every file but bundle.json's timestamps byte-equal, the same
  recommendations) as an uninterrupted run, and clears what the killed run left.

The subprocesses get this checkout on PYTHONPATH: the shared virtualenv's editable install may point
at another checkout.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import polars as pl
import pytest

from recsys.hooks import PAUSE_ENV
from recsys.paths import repo_root
from tiny_settings import cli_overrides

REPO = repo_root()
TRAIN_FAST = cli_overrides(tracking__enabled=False)
CHUNK_SIZE, N_CHUNKS = 5, 30  # 150 users


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in (PAUSE_ENV, "_RECSYS_OMP_SET")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def _command(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "recsys.cli", *args, "--threads", "1"]


def _run(args: list[str]) -> subprocess.CompletedProcess:
    done = subprocess.run(_command(args), env=_env(), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    return done


def _kill_at(args: list[str], point: str, timeout: float = 300) -> str:
    """Run the CLI until it reports the pause at `point`, SIGKILL it there; its stderr so far."""
    proc = subprocess.Popen(
        _command(args), env=_env(**{PAUSE_ENV: point}), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    watchdog = threading.Timer(timeout, proc.kill)
    watchdog.start()
    lines = []
    try:
        for line in proc.stderr:
            lines.append(line)
            if f"paused at {point} " in line:
                os.kill(proc.pid, signal.SIGKILL)
                break
        proc.wait(timeout=60)
    finally:
        watchdog.cancel()
        proc.stderr.close()
    stderr = "".join(lines)
    assert proc.returncode == -signal.SIGKILL, f"not killed at {point} (exit {proc.returncode}):\n{stderr[-4000:]}"
    return stderr


@pytest.fixture(scope="module")
def work(tiny_data, tmp_path_factory) -> dict[str, Path]:
    catalog, interactions = tiny_data
    root = tmp_path_factory.mktemp("kill")
    paths = {"root": root, "catalog": root / "catalog.parquet", "interactions": root / "interactions.csv"}
    catalog.write_parquet(paths["catalog"])
    interactions.select("user_id", "item_id", "timestamp", "rating").write_csv(paths["interactions"])
    return paths


def _train_args(work: dict[str, Path], out: Path) -> list[str]:
    root = work["root"]
    return ["train", "--catalog", str(work["catalog"]), "--interactions", str(work["interactions"]), "--out", str(out),
            "--no-register", "-s", f"encoders.cache_dir={root / 'cache'}", "-s", f"output_dir={root / 'out'}", *TRAIN_FAST]


@pytest.fixture(scope="module")
def bundle(work) -> Path:
    """The uninterrupted training run: the reference bundle, and the batch job's model."""
    out = work["root"] / "reference" / "bundle"
    _run(_train_args(work, out))
    return out


def _recommend_args(bundle: Path, out: Path) -> list[str]:
    return ["recommend", "--bundle", str(bundle), "--out", str(out), "--k", "10", "--exclude-seen", "--chunk-size", str(CHUNK_SIZE)]


@pytest.fixture(scope="module")
def reference_recs(bundle, work) -> bytes:
    out = work["root"] / "reference" / "recs.parquet"
    _run(_recommend_args(bundle, out))
    assert pl.read_parquet(bundle / "users.parquet").height == CHUNK_SIZE * N_CHUNKS
    return out.read_bytes()


@pytest.mark.parametrize(
    "kills",
    [
        # After the first part, then (that re-run killed too) at about half.
        [("recommend:part:0", 1), ("recommend:part:14", 15)],
        # While concatenating the parts into the output, then (re-run) after the output's rename,
        # before the work folder is removed.
        [("recommend:concat:20", N_CHUNKS), ("recommend:replaced", N_CHUNKS)],
    ],
    ids=["part0-then-half", "concat-then-replaced"],
)
def test_killed_batch_job_resumes_to_the_uninterrupted_output(bundle, reference_recs, tmp_path, kills):
    out = tmp_path / "recs.parquet"
    folder = tmp_path / ".recs.parquet.parts"
    reused = 0
    for point, parts_left in kills:
        stderr = _kill_at(_recommend_args(bundle, out), point)
        if reused:
            assert f"{reused} of {N_CHUNKS} chunks reused" in stderr
        parts = sorted(p.name for p in folder.glob("part-*.parquet"))
        assert parts == [f"part-{i:06d}.parquet" for i in range(parts_left)]
        manifest = json.loads((folder / "manifest.json").read_text())
        assert manifest["job"]["n_chunks"] == N_CHUNKS and manifest["job"]["k"] == 10
        if point == "recommend:replaced":
            assert out.read_bytes() == reference_recs  # the rename is the last step that matters
        else:
            assert not out.exists(), "a killed batch job left an output file"
        reused = parts_left

    rerun = _run(_recommend_args(bundle, out))
    assert f"{reused} of {N_CHUNKS} chunks reused" in rerun.stderr
    assert out.read_bytes() == reference_recs  # byte-for-byte
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recs.parquet"], "temp files or the work folder remain"


def test_a_changed_job_discards_the_killed_runs_parts(bundle, reference_recs, tmp_path):
    out = tmp_path / "recs.parquet"
    _kill_at(_recommend_args(bundle, out), "recommend:part:2")
    rerun = _run([*_recommend_args(bundle, out)[:-2], "--chunk-size", "7"])
    assert "discarding its 3 parts" in rerun.stderr and "chunks reused" not in rerun.stderr
    # Other chunks, so other row groups: the same frame, not the same bytes.
    assert pl.read_parquet(out).equals(pl.read_parquet(io.BytesIO(reference_recs)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recs.parquet"]


def _same_bundle(a: Path, b: Path) -> None:
    """Every file byte-equal but bundle.json, whose only differences are its timestamps and timings."""
    files_a = sorted(str(p.relative_to(a)) for p in a.rglob("*") if p.is_file())
    assert files_a == sorted(str(p.relative_to(b)) for p in b.rglob("*") if p.is_file())
    for name in files_a:
        if name != "bundle.json":
            assert (a / name).read_bytes() == (b / name).read_bytes(), f"{name} differs"
    meta_a, meta_b = json.loads((a / "bundle.json").read_text()), json.loads((b / "bundle.json").read_text())
    for meta in (meta_a, meta_b):  # when and how long: the only run-dependent fields
        for key in ("created_at", "train_seconds"):
            meta.pop(key)
        meta["refit"].pop("seconds")
    differs = {key for key in meta_a.keys() | meta_b.keys() if meta_a.get(key) != meta_b.get(key)}
    assert differs <= {"model_version"}, differs  # a timestamp, then the weights' hash
    assert meta_a["model_version"].split("-")[1] == meta_b["model_version"].split("-")[1]  # the weights' hash


def _recommendations(path: Path) -> pl.DataFrame:
    from recsys.recommender import Recommender

    recommender = Recommender.from_bundle(path)
    users = recommender.bundle.users["user_id"].to_list()
    rows = []
    for user, rec in zip(users, recommender.recommend_users(users, 10, exclude_seen=True)):
        rows.extend((user, item, score) for item, score in zip(rec.item_ids, rec.scores))
    return pl.DataFrame(rows, schema=["user_id", "item_id", "score"], orient="row")


def test_killed_training_leaves_no_bundle_or_the_old_one_and_the_rerun_matches(bundle, work, tmp_path):
    from recsys.bundle import load_bundle

    out = tmp_path / "bundle"
    # 1. Killed in the middle of training (validation fit done, refit not begun): nothing is written.
    _kill_at(_train_args(work, out), "train:fitted")
    assert list(tmp_path.iterdir()) == [], "a training killed mid-way left files beside its bundle"

    # 2. Over an existing bundle, killed with the new one fully staged but not yet renamed: the old
    #    bundle stays in place, complete; the staging folder is the only leftover.
    shutil.copytree(bundle, out)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    _kill_at(_train_args(work, out), "bundle:staged")
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    load_bundle(out)
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "bundle"]
    assert len(leftovers) == 1 and leftovers[0].startswith(".bundle.staging-"), leftovers

    # 3. The re-run clears the leftover and writes the uninterrupted run's bundle.
    rerun = _run(_train_args(work, out))
    assert "left by a bundle write that did not finish" in rerun.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]
    assert (out / "bundle.json").read_bytes() != before["bundle.json"]  # a new bundle, not the copy
    _same_bundle(out, bundle)
    assert _recommendations(out).equals(_recommendations(bundle))
