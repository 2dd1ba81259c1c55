"""Resumable chunked parquet output: a batch job killed at any point loses at most the chunk it was on.

Each finished chunk is its own part file in a work folder beside the output,
`.<name>.parts/part-000123.parquet`, written to a temp file, fsync'ed and renamed into place, so a
part that exists is complete. `manifest.json` (written the same way, before any part) fingerprints
the job: everything that decides the output (the caller's `job` dict: model identity, users, k, ...)
plus the chunk count. A re-run whose fingerprint matches keeps the finished parts and computes only
the missing chunks; any other fingerprint discards every part first. At the end the parts are
concatenated, in chunk order, into a temp file in the work folder, which is renamed onto the output;
then the work folder is removed. An uninterrupted run takes exactly the same path (parts, then
concatenation), so a resumed run's output is byte-for-byte the uninterrupted one's.

A lock (`flock` on `.<name>.parts/lock`) refuses a second job on the same output while one runs; the
kernel drops it when its holder dies, even by SIGKILL.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from recsys.hooks import pause_point
from recsys.paths import fsync_dir

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
LOCK = "lock"
FORMAT = 1
_PART = re.compile(r"^part-(\d{6,})\.parquet$")


class ConcurrentJobError(RuntimeError):
    """Another live process is writing the same output."""


def values_digest(values: Iterable[Any]) -> str:
    """sha256 of a sequence of ids, order and type included (1 and "1" differ)."""
    digest = hashlib.sha256()
    block: list = []
    for value in values:
        block.append(value)
        if len(block) == 65_536:
            digest.update(json.dumps(block, default=str).encode())
            block = []
    digest.update(json.dumps(block, default=str).encode())
    return digest.hexdigest()


def job_fingerprint(job: dict) -> str:
    return hashlib.sha256(json.dumps(job, sort_keys=True, default=str).encode()).hexdigest()


def work_dir_for(out_path: str | Path) -> Path:
    out_path = Path(out_path)
    return out_path.with_name(f".{out_path.name}.parts")


def _write_table(table: pa.Table, path: Path) -> None:
    """`table` to `path` atomically and durably: a temp file beside it, fsync, rename."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            pq.write_table(table, handle, compression="zstd")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class PartsJob:
    """`with PartsJob(out, job, n_chunks) as parts:` then `parts.done` (chunk indices already written),
    `parts.write(i, table)` for each missing chunk, and `parts.finish(schema)` for the output."""

    def __init__(self, out_path: str | Path, job: dict, n_chunks: int):
        self.out_path = Path(out_path)
        self.work = work_dir_for(self.out_path)
        self.n_chunks = int(n_chunks)
        self.job = {"format": FORMAT, **job, "n_chunks": self.n_chunks}
        self.fingerprint = job_fingerprint(self.job)
        self.done: set[int] = set()
        self.reused = 0
        self._lock_fd: int | None = None

    # ------------------------------------------------------------------ setup
    def __enter__(self) -> "PartsJob":
        self.out_path.parent.mkdir(parents=True, exist_ok=True)
        self._lock()
        try:
            self.done = self._prepare()
        except BaseException:
            self._unlock()
            raise
        self.reused = len(self.done)
        return self

    def __exit__(self, *exc) -> None:
        self._unlock()

    def _lock(self) -> None:
        for _ in range(5):  # the folder may be removed by a job finishing just now: then lock the new one
            self.work.mkdir(parents=True, exist_ok=True)
            path = self.work / LOCK
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                os.close(fd)
                if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise ConcurrentJobError(
                        f"another job is writing {self.out_path} right now (it holds {path}); wait for it or stop it"
                    ) from err
                raise
            try:
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self._lock_fd = fd
                return
            os.close(fd)
        raise ConcurrentJobError(f"could not lock {self.work / LOCK}: it keeps being removed")

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing drops the flock
            self._lock_fd = None

    def part_path(self, chunk: int) -> Path:
        return self.work / f"part-{chunk:06d}.parquet"

    def _read_manifest(self) -> dict | None:
        try:
            return json.loads((self.work / MANIFEST).read_text())
        except (OSError, ValueError):
            return None

    def _existing_parts(self) -> dict[int, Path]:
        found = {}
        for path in self.work.iterdir():
            match = _PART.match(path.name)
            if match:
                found[int(match.group(1))] = path
        return found

    def _clear(self, keep_manifest: bool) -> None:
        """Everything in the work folder but the lock (and the manifest, with `keep_manifest`)."""
        keep = {LOCK, MANIFEST} if keep_manifest else {LOCK}
        for path in self.work.iterdir():
            if path.name in keep:
                continue
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)

    def _prepare(self) -> set[int]:
        manifest = self._read_manifest()
        if manifest is not None and manifest.get("fingerprint") == self.fingerprint:
            done = set()
            for chunk, path in self._existing_parts().items():
                if chunk < self.n_chunks and self._readable(path):
                    done.add(chunk)
                else:
                    path.unlink(missing_ok=True)
            for path in self.work.iterdir():  # temp files a killed run left
                if path.name in (LOCK, MANIFEST) or _PART.match(path.name):
                    continue
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
            logger.info(
                "resuming %s: %d of %d chunks reused from %s, %d to compute",
                self.out_path, len(done), self.n_chunks, self.work, self.n_chunks - len(done),
            )
            return done
        stale = len(self._existing_parts())
        if manifest is not None or stale:
            old = (manifest or {}).get("fingerprint", "unreadable")
            logger.info(
                "%s: the job differs from the one that left %s (fingerprint %s != %s); discarding its %d parts",
                self.out_path, self.work, str(old)[:12], self.fingerprint[:12], stale,
            )
        # Manifest first, then the parts: a kill in between leaves parts with no manifest, never old
        # parts under a new fingerprint.
        (self.work / MANIFEST).unlink(missing_ok=True)
        self._clear(keep_manifest=False)
        manifest_path = self.work / MANIFEST
        tmp = self.work / f".{MANIFEST}.tmp-{os.getpid()}"
        with open(tmp, "w") as handle:
            json.dump({"fingerprint": self.fingerprint, "job": self.job, "output": str(self.out_path)}, handle, indent=2, default=str)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, manifest_path)
        fsync_dir(self.work)
        return set()

    @staticmethod
    def _readable(path: Path) -> bool:
        try:
            pq.read_metadata(path)
            return True
        except Exception:  # noqa: BLE001 - any unreadable part is simply computed again
            logger.warning("%s is unreadable; its chunk is computed again", path)
            return False

    # ------------------------------------------------------------------ work
    def missing(self) -> list[int]:
        return [i for i in range(self.n_chunks) if i not in self.done]

    def write(self, chunk: int, table: pa.Table) -> None:
        _write_table(table, self.part_path(chunk))
        self.done.add(chunk)
        pause_point(f"recommend:part:{chunk}")

    def finish(self, schema: pa.Schema) -> Path:
        """Concatenate the parts in chunk order into the output (atomically), then remove the work folder."""
        missing = self.missing()
        if missing:
            raise RuntimeError(f"{self.out_path}: chunks {missing[:5]} are not written yet")
        tmp = self.work / f"{self.out_path.name}.tmp"
        writer = None
        try:
            with open(tmp, "wb") as handle:
                writer = pq.ParquetWriter(handle, schema, compression="zstd")
                for chunk in range(self.n_chunks):
                    # ParquetFile, not pq.read_table: read_table imports pyarrow.dataset and with it
                    # pandas (~0.7 s and ~60 MB in a process that has not loaded them) to read one file.
                    with pq.ParquetFile(self.part_path(chunk)) as part:
                        writer.write_table(part.read())
                    pause_point(f"recommend:concat:{chunk + 1}")
                if self.n_chunks == 0:
                    writer.write_table(schema.empty_table())
                writer.close()
                writer = None
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.out_path)
            fsync_dir(self.out_path.parent)
        finally:
            if writer is not None:
                writer.close()
            tmp.unlink(missing_ok=True)
        pause_point("recommend:replaced")
        shutil.rmtree(self.work, ignore_errors=True)
        return self.out_path
