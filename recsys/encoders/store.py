"""Embedding cache keyed by (item id, content hash, encoder fingerprint).

Re-running the embed step after editing 1% of a catalog re-encodes only that 1%: an item is encoded
again only when its content hash (text sha256 / image file bytes sha256) or the encoder fingerprint
changes. One .npz per fingerprint under root/<safe fingerprint>/, rewritten atomically.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from recsys.encoders.base import FrozenEncoder

log = logging.getLogger(__name__)

TABLE_FILE = "embeddings.npz"


def safe_fingerprint(fingerprint: str) -> str:
    """A folder name for a fingerprint: readable prefix + hash of the full string (no collisions)."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", fingerprint).strip("_")[:80]
    return f"{slug}-{hashlib.sha256(fingerprint.encode()).hexdigest()[:12]}"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write via a temp file in the same folder + os.replace, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def savez_atomic(path: Path, **arrays: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write_bytes(Path(path), buffer.getvalue())


@dataclass
class _Table:
    """The cached rows of one fingerprint."""

    ids: np.ndarray  # str
    hashes: np.ndarray  # str
    emb: np.ndarray  # float32 [n, dim]
    mask: np.ndarray  # bool [n]

    def index(self) -> dict[tuple[str, str], int]:
        return {(i, h): row for row, (i, h) in enumerate(zip(self.ids.tolist(), self.hashes.tolist()))}


class FeatureStore:
    """Content-hash embedding cache on disk; one instance per cache root."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    def table_path(self, fingerprint: str) -> Path:
        return self.root / safe_fingerprint(fingerprint) / TABLE_FILE

    def _read(self, fingerprint: str, dim: int) -> _Table:
        path = self.table_path(fingerprint)
        empty = _Table(np.array([], dtype=str), np.array([], dtype=str), np.zeros((0, dim), np.float32), np.zeros(0, bool))
        if not path.exists():
            return empty
        try:
            with np.load(path, allow_pickle=False) as data:
                table = _Table(data["ids"], data["hashes"], data["emb"], data["mask"])
                stored_fp = str(data["fingerprint"])
        except (OSError, KeyError, ValueError) as err:
            log.warning("embedding cache %s unreadable (%s); starting it again", path, err)
            return empty
        if stored_fp != fingerprint or table.emb.shape[1:] != (dim,):
            log.warning("embedding cache %s does not match encoder %s; starting it again", path, fingerprint)
            return empty
        return table

    def _write(self, fingerprint: str, table: _Table) -> None:
        savez_atomic(
            self.table_path(fingerprint),
            ids=table.ids.astype(str),
            hashes=table.hashes.astype(str),
            emb=table.emb.astype(np.float32),
            mask=table.mask.astype(bool),
            fingerprint=np.array(fingerprint),
        )

    def encode_with_cache(
        self,
        encoder: FrozenEncoder,
        item_ids: Sequence,
        inputs: Sequence[str | None],
        *,
        content_hashes: Sequence[str] | None = None,
        show_progress: bool = False,
    ) -> tuple[np.ndarray, np.ndarray, dict]:
        """Embeddings for `inputs`, encoding only (id, content hash) pairs not cached for this encoder.

        Returns (emb float32 [n, dim], mask bool [n], {"cached": n_hits, "encoded": n_new}).
        """
        if len(item_ids) != len(inputs):
            raise ValueError(f"{len(item_ids)} item ids but {len(inputs)} inputs")
        hashes = list(content_hashes) if content_hashes is not None else [encoder.content_hash(x) for x in inputs]
        if len(hashes) != len(inputs):
            raise ValueError(f"{len(hashes)} content hashes but {len(inputs)} inputs")
        keys = [(str(i), h) for i, h in zip(item_ids, hashes)]
        table = self._read(encoder.fingerprint, encoder.dim)
        known = table.index()

        new_keys: dict[tuple[str, str], int] = {}  # key -> first position among inputs
        for pos, key in enumerate(keys):
            if key not in known and key not in new_keys:
                new_keys[key] = pos
        if new_keys:
            positions = list(new_keys.values())
            emb_new, mask_new = encoder.encode(
                [inputs[p] for p in positions],
                ids=[item_ids[p] for p in positions],
                show_progress=show_progress,
            )
            start = len(table.ids)
            table = _Table(
                np.concatenate([table.ids, np.array([k[0] for k in new_keys], dtype=str)]),
                np.concatenate([table.hashes, np.array([k[1] for k in new_keys], dtype=str)]),
                np.concatenate([table.emb, emb_new.astype(np.float32)]),
                np.concatenate([table.mask, mask_new.astype(bool)]),
            )
            for offset, key in enumerate(new_keys):
                known[key] = start + offset
            self._write(encoder.fingerprint, table)
        rows = np.array([known[k] for k in keys], dtype=np.int64)
        stats = {"cached": len(keys) - len(new_keys), "encoded": len(new_keys)}
        log.info("%s: %d cached, %d encoded", encoder.fingerprint, stats["cached"], stats["encoded"])
        return table.emb[rows].copy(), table.mask[rows].copy(), stats
