"""A faiss item index that speaks item ids, not faiss row ids.

Why a wrapper: serving needs per-user exclusion (seen items), candidate subsets, adding new (cold)
items without a rebuild and removing items, on three index kinds with different faiss abilities.
This class hides those differences behind one `search` contract:

* every vector gets a stable int64 *row id* (its insertion number); faiss stores row ids
  (`IndexIDMap2` around Flat/HNSW, native ids for IVF) and `_row_items[row]` maps back to the item id;
* removal: Flat and IVF really remove (`remove_ids`); HNSW cannot, so its rows stay in faiss and
  are masked out of results (`_live[row] is False`), with over-fetching to still return k;
* results are padded when fewer than k items qualify: id sentinel -1 (int ids) or "" (str ids),
  score -inf.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import faiss
import numpy as np

from recsys.config import IndexConfig

log = logging.getLogger(__name__)

IndexKind = Literal["flat", "hnsw", "ivf"]
FORMAT_VERSION = 1
INT_SENTINEL = -1
STR_SENTINEL = ""

_INDEX_FILE = "index.faiss"
_IDS_FILE = "item_ids.npy"
_LIVE_FILE = "live.npy"
_META_FILE = "meta.json"


class ItemIndexError(ValueError):
    """Bad input to the item index (the message names the argument)."""


def resolve_kind(n_items: int, cfg: IndexConfig) -> IndexKind:
    """'auto' -> exact flat search for small catalogs, IVF above `cfg.flat_max_items`.

    IVF rather than HNSW (bench/index_scale.py, docs/benchmarks.md figure 4): at a million items on two
    cores an IVF index builds in about a minute and answers one query in about a millisecond at recall@10
    >= 0.95, where HNSW with its parameters here would build for most of an hour; IVF also really
    removes items. HNSW stays available as kind='hnsw'."""
    if cfg.kind == "auto":
        return "flat" if n_items <= cfg.flat_max_items else "ivf"
    return cfg.kind


def default_nlist(n_items: int) -> int:
    """~4*sqrt(n) lists, but never so many that a list gets < 39 training points (faiss's minimum)."""
    return max(1, min(int(round(4 * math.sqrt(max(n_items, 1)))), n_items // 39 or 1))


def _as_vectors(vectors: Any, name: str, dim: int | None = None) -> np.ndarray:
    arr = np.ascontiguousarray(np.asarray(vectors, dtype=np.float32))
    if arr.ndim == 1 and dim is not None and arr.shape[0] == dim:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise ItemIndexError(f"{name}: expected a 2-D array [n, d], got shape {arr.shape}")
    if dim is not None and arr.shape[1] != dim:
        raise ItemIndexError(f"{name}: expected dimension {dim}, got {arr.shape[1]}")
    if not np.isfinite(arr).all():
        raise ItemIndexError(f"{name}: contains NaN or inf")
    return arr


def _id_kind(ids: np.ndarray) -> Literal["int", "str"]:
    if ids.dtype.kind in "iu":
        return "int"
    if ids.dtype.kind in "UO" and all(isinstance(x, str) for x in ids.tolist()):
        return "str"
    raise ItemIndexError(f"item_ids: expected int64 or str ids, got dtype {ids.dtype}")


class ItemIndex:
    """Item-id-keyed nearest-neighbour index (inner product on L2-normalised vectors = cosine).

    Thread-safe: one lock guards add/remove/search, so a server may mutate it while serving.
    """

    #: candidate subsets up to this size are scored exactly with numpy (faster and exact; a very
    #: selective faiss IDSelector makes HNSW miss results).
    exact_candidates_max: int = 20_000

    def __init__(
        self,
        faiss_index: faiss.Index,
        kind: IndexKind,
        dim: int,
        row_items: np.ndarray,
        live: np.ndarray,
        id_kind: Literal["int", "str"],
        cfg: IndexConfig,
    ) -> None:
        """Low-level constructor; use `ItemIndex.build` or `ItemIndex.load`."""
        self._index = faiss_index
        self._kind: IndexKind = kind
        self._dim = dim
        self._row_items = row_items
        self._live = live
        self._id_kind = id_kind
        self._cfg = cfg
        self._lock = threading.RLock()
        self._sorted: tuple[np.ndarray, np.ndarray] | None = None  # int ids: _sorted_live()'s cache
        self._item_to_row: dict[int | str, int] = {
            self._key(item): row for row, item in enumerate(row_items.tolist()) if live[row]
        }

    # ------------------------------------------------------------------ construction
    @classmethod
    def build(cls, vectors: np.ndarray, item_ids: Sequence[Any] | np.ndarray, cfg: IndexConfig) -> ItemIndex:
        """Build an index over `vectors` [n, d] (L2-normalised) keyed by `item_ids` (int64 or str)."""
        vecs = _as_vectors(vectors, "vectors")
        ids = np.asarray(item_ids)
        if ids.ndim != 1 or ids.shape[0] != vecs.shape[0]:
            raise ItemIndexError(f"item_ids: expected {vecs.shape[0]} ids (one per vector row), got shape {ids.shape}")
        id_kind = _id_kind(ids) if ids.size else ("int" if ids.dtype.kind in "iuf" else "str")
        ids = ids.astype(np.int64) if id_kind == "int" else ids.astype(str)
        cls._check_ids(ids, id_kind)
        if np.unique(ids).size != ids.size:
            raise ItemIndexError("item_ids: contains duplicates")
        n, dim = vecs.shape
        norms = np.linalg.norm(vecs, axis=1) if n else np.ones(0)
        if n and not np.allclose(norms, 1.0, atol=1e-3):
            log.warning("index vectors are not L2-normalised (norms %.3f..%.3f); scores are not cosines",
                        norms.min(), norms.max())
        kind = resolve_kind(n, cfg)
        index = cls._new_faiss_index(kind, dim, n, cfg, vecs)
        index.add_with_ids(vecs, np.arange(n, dtype=np.int64))
        log.info("built %s index: %d items, dim %d", kind, n, dim)
        return cls(index, kind, dim, ids, np.ones(n, dtype=bool), id_kind, cfg)

    @staticmethod
    def _new_faiss_index(kind: IndexKind, dim: int, n: int, cfg: IndexConfig, train: np.ndarray) -> faiss.Index:
        if kind == "flat":
            return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        if kind == "hnsw":
            hnsw = faiss.IndexHNSWFlat(dim, cfg.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            hnsw.hnsw.efConstruction = cfg.hnsw_ef_construction
            hnsw.hnsw.efSearch = cfg.hnsw_ef_search
            return faiss.IndexIDMap2(hnsw)
        if kind == "ivf":
            if n == 0:
                raise ItemIndexError("vectors: an 'ivf' index needs training vectors, got none")
            nlist = cfg.ivf_nlist or default_nlist(n)
            if nlist > n:
                raise ItemIndexError(f"index.ivf_nlist: {nlist} lists need at least as many vectors, got {n}")
            ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
            # k-means on a sample of at most ivf_train_per_list vectors per list (faiss's own default, 256,
            # makes a million-item build spend minutes in k-means for no measurable recall).
            ivf.cp.max_points_per_centroid = cfg.ivf_train_per_list
            ivf.train(train)
            ivf.nprobe = cfg.ivf_nprobe
            # IVF keeps our row ids natively (an IDMap would break after remove_ids); a hashtable
            # direct map makes reconstruct() work and survives removals.
            ivf.set_direct_map_type(faiss.DirectMap.Hashtable)
            return ivf
        raise ItemIndexError(f"index.kind: unknown kind {kind!r}")

    # ------------------------------------------------------------------ properties
    @property
    def kind(self) -> IndexKind:
        return self._kind

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def item_ids(self) -> np.ndarray:
        """Live item ids, in insertion order."""
        with self._lock:
            return self._row_items[self._live].copy()

    @property
    def sentinel(self) -> int | str:
        """The id used to pad result rows with fewer than k hits."""
        return INT_SENTINEL if self._id_kind == "int" else STR_SENTINEL

    def __len__(self) -> int:
        with self._lock:
            return len(self._item_to_row)

    def __contains__(self, item_id: object) -> bool:
        with self._lock:
            return self._key(item_id) in self._item_to_row

    def __repr__(self) -> str:
        return f"ItemIndex(kind={self._kind!r}, dim={self._dim}, items={len(self)})"

    # ------------------------------------------------------------------ id helpers
    def _key(self, item_id: Any) -> int | str:
        if self._id_kind == "int":
            return int(item_id)
        return str(item_id)

    @staticmethod
    def _check_ids(ids: np.ndarray, id_kind: str) -> None:
        if id_kind == "int" and (ids == INT_SENTINEL).any():
            raise ItemIndexError(f"item_ids: {INT_SENTINEL} is reserved as the padding sentinel")
        if id_kind == "str" and (ids == STR_SENTINEL).any():
            raise ItemIndexError("item_ids: the empty string is reserved as the padding sentinel")

    def _rows_of(self, item_ids: Iterable[Any]) -> np.ndarray:
        """Rows of the known, live ids among `item_ids` (unknown ids are ignored), in their order."""
        if self._id_kind == "int":
            try:
                wanted = np.asarray(item_ids if isinstance(item_ids, (list, tuple, np.ndarray)) else list(item_ids), dtype=np.int64)
            except (TypeError, ValueError, OverflowError):
                wanted = None
            if wanted is not None and wanted.ndim == 1:
                # vectorised: a batch job looks up every user's history, one dict lookup per id was most of its time
                ids, rows = self._sorted_live()
                if ids.size == 0:
                    return np.zeros(0, dtype=np.int64)
                pos = np.minimum(np.searchsorted(ids, wanted), ids.size - 1)
                return rows[pos[ids[pos] == wanted]]
        get = self._item_to_row.get
        rows = [get(self._key(i)) for i in item_ids]
        return np.asarray([r for r in rows if r is not None], dtype=np.int64)

    def _sorted_live(self) -> tuple[np.ndarray, np.ndarray]:
        """(live int ids sorted, their rows), rebuilt after a change (caller holds the lock)."""
        if self._sorted is None:
            rows = np.fromiter(self._item_to_row.values(), dtype=np.int64, count=len(self._item_to_row))
            ids = self._row_items[rows]
            order = np.argsort(ids, kind="stable")
            self._sorted = (ids[order], rows[order])
        return self._sorted

    def _coerce_new_ids(self, item_ids: Sequence[Any] | np.ndarray) -> np.ndarray:
        ids = np.asarray(item_ids)
        if ids.ndim != 1:
            raise ItemIndexError(f"item_ids: expected a 1-D array, got shape {ids.shape}")
        if ids.size and _id_kind(ids) != self._id_kind:
            raise ItemIndexError(f"item_ids: this index holds {self._id_kind} ids, got dtype {ids.dtype}")
        return ids.astype(np.int64) if self._id_kind == "int" else ids.astype(str)

    # ------------------------------------------------------------------ mutation
    def add(self, item_ids: Sequence[Any] | np.ndarray, vectors: np.ndarray) -> None:
        """Add new items without a rebuild. Duplicate (live) ids fail; a removed id may come back."""
        vecs = _as_vectors(vectors, "vectors", self._dim)
        ids = self._coerce_new_ids(item_ids)
        if ids.shape[0] != vecs.shape[0]:
            raise ItemIndexError(f"item_ids: expected {vecs.shape[0]} ids (one per vector row), got {ids.shape[0]}")
        self._check_ids(ids, self._id_kind)
        if np.unique(ids).size != ids.size:
            raise ItemIndexError("item_ids: contains duplicates")
        with self._lock:
            dupes = [i for i in ids.tolist() if self._key(i) in self._item_to_row]
            if dupes:
                raise ItemIndexError(f"item_ids: already in the index: {dupes[:5]}")
            start = self._row_items.shape[0]
            rows = np.arange(start, start + ids.shape[0], dtype=np.int64)
            self._index.add_with_ids(vecs, rows)
            self._row_items = np.concatenate([self._row_items, ids])
            self._live = np.concatenate([self._live, np.ones(ids.shape[0], dtype=bool)])
            for item, row in zip(ids.tolist(), rows.tolist()):
                self._item_to_row[self._key(item)] = row
            self._sorted = None
        log.debug("added %d items to %s index", ids.shape[0], self._kind)

    def remove(self, item_ids: Iterable[Any]) -> int:
        """Hide items from results; returns how many were live. Unknown ids are ignored."""
        with self._lock:
            rows = self._rows_of(item_ids)
            rows = np.unique(rows)
            if rows.size == 0:
                return 0
            if self._kind != "hnsw":  # HNSW cannot delete: its rows stay in faiss, masked by _live
                # IVF's hashtable direct map only accepts an IDSelectorArray; `rows` outlives the call
                sel = faiss.IDSelectorArray(rows) if self._kind == "ivf" else faiss.IDSelectorBatch(rows)
                self._index.remove_ids(sel)
            self._live[rows] = False
            for row in rows.tolist():
                del self._item_to_row[self._key(self._row_items[row])]
            self._sorted = None
            return int(rows.size)

    def vector(self, item_id: Any) -> np.ndarray:
        """The stored vector of a live item (KeyError when unknown or removed)."""
        with self._lock:
            row = self._item_to_row.get(self._key(item_id))
            if row is None:
                raise KeyError(f"item_id {item_id!r} is not in the index")
            return np.asarray(self._index.reconstruct(int(row)), dtype=np.float32)

    # ------------------------------------------------------------------ search
    def search(
        self,
        queries: np.ndarray,
        k: int,
        *,
        exclude: Sequence[Iterable[Any]] | None = None,
        candidates: np.ndarray | Sequence[Any] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k items by inner product for each query row.

        queries: [q, d] (a single [d] vector is accepted as q=1).
        exclude: one iterable of item ids per query (e.g. the user's seen items), never returned.
        candidates: item ids; when given, only these can be returned (same subset for all queries).
        Returns (item_ids [q, k], scores [q, k] float32), best first. Rows with fewer than k
        eligible items are padded with the sentinel id (-1 for int ids, "" for str ids) and -inf.
        """
        if not isinstance(k, (int, np.integer)) or k < 1:
            raise ItemIndexError(f"k: expected a positive int, got {k!r}")
        k = int(k)
        q = _as_vectors(queries, "queries", self._dim)
        if exclude is not None and len(exclude) != q.shape[0]:
            raise ItemIndexError(f"exclude: expected one iterable per query ({q.shape[0]}), got {len(exclude)}")
        with self._lock:
            excl_rows = [self._rows_of(e) for e in exclude] if exclude is not None else None
            if candidates is not None:
                cand_rows = np.unique(self._rows_of(np.asarray(candidates).tolist()))
                if cand_rows.size <= self.exact_candidates_max:
                    rows, scores = self._search_exact_subset(q, k, cand_rows, excl_rows)
                else:
                    rows, scores = self._search_faiss(q, k, excl_rows, cand_rows)
            else:
                rows, scores = self._search_faiss(q, k, excl_rows, None)
            return self._to_item_ids(rows), scores

    def _to_item_ids(self, rows: np.ndarray) -> np.ndarray:
        valid = rows >= 0
        out = self._row_items[np.where(valid, rows, 0)] if self._row_items.size else None
        if out is None:
            out = np.full(rows.shape, self.sentinel, dtype=np.int64 if self._id_kind == "int" else "<U1")
        out = out.copy()
        out[~valid] = self.sentinel
        return out

    def _search_exact_subset(
        self, q: np.ndarray, k: int, cand_rows: np.ndarray, excl_rows: list[np.ndarray] | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Exact scoring of a candidate subset with numpy (vectors reconstructed from faiss)."""
        n_q = q.shape[0]
        rows_out = np.full((n_q, k), -1, dtype=np.int64)
        scores_out = np.full((n_q, k), -np.inf, dtype=np.float32)
        if cand_rows.size == 0:
            return rows_out, scores_out
        cand_vecs = self._index.reconstruct_batch(cand_rows)
        scores = q @ cand_vecs.T  # [q, c]
        if excl_rows is not None:
            pos = {int(r): j for j, r in enumerate(cand_rows.tolist())}
            for i, ex in enumerate(excl_rows):
                cols = [pos[r] for r in ex.tolist() if r in pos]
                scores[i, cols] = -np.inf
        m = min(k, cand_rows.size)
        top = np.argpartition(-scores, m - 1, axis=1)[:, :m]
        top_scores = np.take_along_axis(scores, top, axis=1)
        order = np.argsort(-top_scores, axis=1, kind="stable")
        top = np.take_along_axis(top, order, axis=1)
        top_scores = np.take_along_axis(top_scores, order, axis=1)
        rows = cand_rows[top]
        rows[~np.isfinite(top_scores)] = -1
        rows_out[:, :m] = rows
        scores_out[:, :m] = top_scores
        return rows_out, scores_out

    def _search_params(
        self, cand_rows: np.ndarray | None
    ) -> tuple[faiss.SearchParameters | None, faiss.IDSelector | None]:
        """Per-kind search parameters; the selector is returned too so the caller keeps it alive."""
        sel = faiss.IDSelectorBatch(cand_rows) if cand_rows is not None else None
        if self._kind == "hnsw":
            params = faiss.SearchParametersHNSW(efSearch=self._cfg.hnsw_ef_search)
        elif self._kind == "ivf":
            params = faiss.SearchParametersIVF(nprobe=self._cfg.ivf_nprobe)
        else:
            params = faiss.SearchParameters() if sel is not None else None
        if sel is not None and params is not None:
            params.sel = sel
        return params, sel

    def _search_faiss(
        self, q: np.ndarray, k: int, excl_rows: list[np.ndarray] | None, cand_rows: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """faiss search, post-filtering excluded and masked (HNSW-removed) rows; widens until k.

        Each query fetches k + its own exclusions (+ masked rows), rounded up to a power of two, and queries
        are searched in groups of equal fetch: one user with a long history must not make faiss return
        thousands of rows for every query of a batch (the batch job's chunks; docs/benchmarks.md figure 4).
        The filtered top k is the same whatever the fetch, as long as k remain after filtering."""
        n_q = q.shape[0]
        rows_out = np.full((n_q, k), -1, dtype=np.int64)
        scores_out = np.full((n_q, k), -np.inf, dtype=np.float32)
        ntotal = int(self._index.ntotal)
        if ntotal == 0 or n_q == 0:
            return rows_out, scores_out
        params, _sel = self._search_params(cand_rows)  # _sel must outlive the searches below
        n_dead = int(ntotal - len(self._item_to_row)) if self._kind == "hnsw" else 0
        n_excl = np.asarray([e.size for e in excl_rows], dtype=np.int64) if excl_rows is not None else np.zeros(n_q, np.int64)
        need = k + n_excl + n_dead
        fetches = np.minimum(ntotal, 2 ** np.ceil(np.log2(need)).astype(np.int64))
        groups: dict[int, np.ndarray] = {int(f): np.flatnonzero(fetches == f) for f in np.unique(fetches)}
        while groups:
            fetch = min(groups)
            pending = groups.pop(fetch)
            dist, labels = self._index.search(q[pending], fetch, params=params)
            short = []
            for j, i in enumerate(pending.tolist()):
                lab = labels[j]
                ok = lab >= 0
                ok[ok] = self._live[lab[ok]]
                if excl_rows is not None and excl_rows[i].size:
                    ok &= ~np.isin(lab, excl_rows[i])
                got = lab[ok][:k]
                rows_out[i, : got.size] = got
                scores_out[i, : got.size] = dist[j][ok][:k]
                # fewer than k and faiss may have more to give: widen for this query
                if got.size < k and fetch < ntotal and (lab >= 0).all():
                    short.append(i)
            if short:
                wider = min(ntotal, fetch * 2)
                groups[wider] = np.union1d(groups.get(wider, np.zeros(0, np.int64)), short)
        return rows_out, scores_out

    # ------------------------------------------------------------------ persistence
    def save(self, directory: str | Path) -> Path:
        """Write index + ids + live mask + meta to `directory`, atomically (temp dir, then rename)."""
        target = Path(directory)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        try:
            with self._lock:
                faiss.write_index(self._index, str(tmp / _INDEX_FILE))
                np.save(tmp / _IDS_FILE, self._row_items, allow_pickle=False)
                np.save(tmp / _LIVE_FILE, self._live, allow_pickle=False)
                meta = {
                    "format_version": FORMAT_VERSION,
                    "kind": self._kind,
                    "dim": self._dim,
                    "id_kind": self._id_kind,
                    "n_rows": int(self._row_items.shape[0]),
                    "n_live": len(self._item_to_row),
                    "config": self._cfg.model_dump(mode="json"),
                    "faiss_version": faiss.__version__,
                }
            (tmp / _META_FILE).write_text(json.dumps(meta, indent=2))
            old = None
            if target.exists():
                old = target.with_name(f".{target.name}.old-{os.getpid()}-{threading.get_ident()}")
                os.replace(target, old)
            os.replace(tmp, target)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        log.info("saved %s index (%d items) to %s", self._kind, len(self), target)
        return target

    @classmethod
    def load(cls, directory: str | Path) -> ItemIndex:
        """Load an index written by `save`; fails loudly on a missing file or a format mismatch."""
        src = Path(directory)
        for name in (_INDEX_FILE, _IDS_FILE, _LIVE_FILE, _META_FILE):
            if not (src / name).is_file():
                raise FileNotFoundError(f"item index at {src}: missing {name}")
        meta = json.loads((src / _META_FILE).read_text())
        if meta.get("format_version") != FORMAT_VERSION:
            raise ItemIndexError(f"{src / _META_FILE}: format_version {meta.get('format_version')!r}, "
                              f"expected {FORMAT_VERSION}")
        index = faiss.read_index(str(src / _INDEX_FILE))
        row_items = np.load(src / _IDS_FILE, allow_pickle=False)
        live = np.load(src / _LIVE_FILE, allow_pickle=False)
        if index.d != meta["dim"] or row_items.shape != live.shape or row_items.shape[0] != meta["n_rows"]:
            raise ItemIndexError(f"item index at {src}: files disagree (dim {index.d} vs {meta['dim']}, "
                              f"{row_items.shape[0]} ids, {live.shape[0]} mask rows, meta n_rows {meta['n_rows']})")
        cfg = IndexConfig.model_validate(meta["config"])
        return cls(index, meta["kind"], int(meta["dim"]), row_items, live, meta["id_kind"], cfg)
