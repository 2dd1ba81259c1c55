"""The resumable batch job in-process (recsys.resume, Recommender.write_recommendations): a failed run
keeps its finished parts; the same job reuses them, another discards them; what the fingerprint
covers; unreadable parts; a second job on the same output; and what a killed bundle write leaves.
The same, with real SIGKILLed processes: tests/test_kill_resume.py."""

from __future__ import annotations

import logging
import os
import shutil

import pyarrow as pa
import pytest

from recsys.bundle import remove_stale_staging
from recsys.recommender import Recommender
from recsys.resume import ConcurrentJobError, PartsJob, work_dir_for


@pytest.fixture(scope="module")
def recommender(tiny_bundle) -> Recommender:
    return Recommender.from_bundle(tiny_bundle)


@pytest.fixture(scope="module")
def users(recommender) -> list:
    return recommender.bundle.users["user_id"].to_list()[:60] + [10_000_001]  # 61 users: 13 chunks of 5


@pytest.fixture(scope="module")
def uninterrupted(recommender, users, tmp_path_factory) -> bytes:
    out = tmp_path_factory.mktemp("uninterrupted") / "recs.parquet"
    recommender.write_recommendations(users, out, 7, chunk_size=5, show_progress=False)
    return out.read_bytes()


class Boom(RuntimeError):
    pass


def _fail_after(monkeypatch, n_parts: int) -> None:
    """Make the job raise after writing `n_parts` parts (a crash, without killing pytest)."""
    original, written = PartsJob.write, []

    def write(self, chunk, table):
        if len(written) == n_parts:
            raise Boom
        original(self, chunk, table)
        written.append(chunk)

    monkeypatch.setattr(PartsJob, "write", write)


def _write(recommender, users, out, k=7):
    return recommender.write_recommendations(users, out, k, chunk_size=5, show_progress=False)


def test_a_failed_run_keeps_its_parts_and_the_rerun_reuses_them(recommender, users, uninterrupted, tmp_path, monkeypatch, caplog):
    out = tmp_path / "recs.parquet"
    with monkeypatch.context() as patch:
        _fail_after(patch, 4)
        with pytest.raises(Boom):
            _write(recommender, users, out)
    assert not out.exists()
    assert len(list(work_dir_for(out).glob("part-*.parquet"))) == 4
    with caplog.at_level(logging.INFO, logger="recsys.resume"):
        _write(recommender, users, out)
    assert "4 of 13 chunks reused" in caplog.text
    assert out.read_bytes() == uninterrupted
    assert os.listdir(tmp_path) == ["recs.parquet"]


def test_another_job_discards_the_parts(recommender, users, tmp_path, monkeypatch, caplog):
    out = tmp_path / "recs.parquet"
    with monkeypatch.context() as patch:
        _fail_after(patch, 3)
        with pytest.raises(Boom):
            _write(recommender, users, out, k=7)
    with caplog.at_level(logging.INFO, logger="recsys.resume"):
        _write(recommender, users, out, k=4)  # k differs
    assert "discarding its 3 parts" in caplog.text and "reused" not in caplog.text
    fresh = tmp_path / "fresh.parquet"
    _write(recommender, users, fresh, k=4)
    assert out.read_bytes() == fresh.read_bytes()


def test_the_fingerprint_covers_what_decides_the_output(tiny_bundle, users):
    recommender = Recommender.from_bundle(tiny_bundle)  # its own: this test removes an item
    base = dict(k=7, exclude_seen=True, candidates=None, chunk_size=5)
    job = recommender.batch_job(users, **base)
    assert recommender.batch_job(list(users), **base) == job
    for change in ({"k": 8}, {"exclude_seen": False}, {"chunk_size": 6}, {"candidates": [users[0]]}):
        assert recommender.batch_job(users, **{**base, **change}) != job, change
    assert recommender.batch_job(users[::-1], **base) != job
    assert recommender.batch_job([str(u) for u in users], **base) != job  # 1 and "1" differ
    # Candidates count as a set.
    items = recommender.bundle.catalog["item_id"].to_list()[:10]
    assert recommender.batch_job(users, **{**base, "candidates": items}) == recommender.batch_job(users, **{**base, "candidates": items[::-1] + items[:2]})
    # The live catalog: an item removed (through the live log or the API) is another job.
    recommender.remove_item(items[0], log=False)
    assert recommender.batch_job(users, **base)["live_catalog"] != job["live_catalog"]


def test_the_live_state_digest_is_unchanged_by_hashing_the_vectors_in_place(recommender, users):
    """The vectors are hashed from their buffer (no bytes copy: 0.5 GB at a million items); the digest is
    the one a bytes copy gave, so parts written before still resume."""
    import hashlib

    import numpy as np

    from recsys.resume import values_digest

    job = recommender.batch_job(users, k=7, exclude_seen=True, candidates=None, chunk_size=5)
    removed = sorted(recommender._removed, key=lambda v: (type(v).__name__, v))
    before = hashlib.sha256(
        values_digest(recommender._item_ids).encode() + values_digest(removed).encode()
        + np.ascontiguousarray(recommender._vectors).tobytes()
    ).hexdigest()
    assert job["live_catalog"]["state"] == before


def test_an_unreadable_part_is_computed_again(recommender, users, uninterrupted, tmp_path, monkeypatch, caplog):
    out = tmp_path / "recs.parquet"
    with monkeypatch.context() as patch:
        _fail_after(patch, 5)
        with pytest.raises(Boom):
            _write(recommender, users, out)
    (work_dir_for(out) / "part-000002.parquet").write_bytes(b"not parquet")
    (work_dir_for(out) / ".part-000005.parquet.tmp-1").write_bytes(b"half")  # a killed write's temp file
    with caplog.at_level(logging.INFO, logger="recsys.resume"):
        _write(recommender, users, out)
    assert "4 of 13 chunks reused" in caplog.text
    assert out.read_bytes() == uninterrupted
    assert os.listdir(tmp_path) == ["recs.parquet"]


def test_a_second_job_on_the_same_output_is_refused(tmp_path):
    out = tmp_path / "recs.parquet"
    schema = pa.schema([("user_id", pa.int64())])
    with PartsJob(out, {"k": 1}, 1) as first:
        with pytest.raises(ConcurrentJobError, match="another job is writing"):
            PartsJob(out, {"k": 1}, 1).__enter__()
        first.write(0, pa.table({"user_id": [1]}, schema=schema))
        first.finish(schema)
    with PartsJob(out, {"k": 1}, 0) as again:  # the lock went with the work folder; a new job may start
        again.finish(schema)
    assert os.listdir(tmp_path) == ["recs.parquet"]


def test_no_users_give_an_empty_output(recommender, tmp_path):
    import polars as pl

    out = recommender.write_recommendations([], tmp_path / "recs.parquet", 5, show_progress=False)
    recs = pl.read_parquet(out)
    assert recs.height == 0 and recs.columns == ["user_id", "item_id", "rank", "score", "fallback"]
    assert os.listdir(tmp_path) == ["recs.parquet"]


def test_a_killed_bundle_write_is_cleared_and_a_cut_swap_is_undone(tmp_path):
    dead = 2**22 + 12345  # above the default pid_max: no such process
    out = tmp_path / "bundle"
    (tmp_path / f".bundle.staging-{dead}-abc").mkdir()
    (tmp_path / f".bundle.old-{dead}").mkdir()
    (tmp_path / f".bundle.old-{dead}" / "bundle.json").write_text("{}")
    alive = tmp_path / f".bundle.staging-{os.getppid()}-xyz"  # a running process's: left alone
    alive.mkdir()
    remove_stale_staging(out)
    # Killed between the swap's two renames: no bundle, the old one retired; it is put back.
    assert (out / "bundle.json").exists()
    assert sorted(os.listdir(tmp_path)) == sorted(["bundle", alive.name])
    shutil.rmtree(alive)
