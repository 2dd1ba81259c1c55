"""`Recommender`: the service object over a loaded bundle, shared by the batch job, the API and MLflow.

Known users' vectors are computed once at load (their histories are fixed), so a request costs one
faiss search. Anonymous histories go through the user tower per request. New items are embedded by
the frozen encoders, projected by the item tower and added to the live index: recommendable at once,
no retraining. All public methods are thread-safe.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from recsys.bundle import Bundle, BundleError, load_bundle
from recsys.data.histories import Histories
from recsys.live_catalog import LiveCatalogLog
from recsys.model.two_tower import FeatureTensors, retrieval_items, retrieval_queries

logger = logging.getLogger(__name__)


@dataclass
class Recommendations:
    item_ids: list
    scores: list[float]
    fallback: str | None = None
    unknown_items: list = field(default_factory=list)


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


class Recommender:
    def __init__(self, bundle: Bundle, *, load_encoders: bool = False, live_log: str | Path | None = None):
        """`live_log`: the live catalog log (recsys.live_catalog) replayed now and appended to by
        add_item / remove_item; None keeps changes in memory only."""
        self.bundle = bundle
        self.model = bundle.model
        self.index = bundle.index
        self.model_version: str = bundle.model_version
        self.id_type: type = int if bundle.meta["id_type"] == "int" else str
        users = bundle.users
        self.user_id_type: type = int if users.schema["user_id"].is_integer() else str
        self._lock = threading.RLock()
        # Item rows: catalog order, then items added live.
        self._item_ids: list = [_plain(i) for i in np.asarray(bundle.features.item_ids).tolist()]
        self._row_of: dict = {item: row for row, item in enumerate(self._item_ids)}
        self._vectors = np.ascontiguousarray(bundle.item_vectors, dtype=np.float32)
        self._removed: set = set()
        # Category -> items, for filters.
        self._category_items: dict[str, set] = {}
        for item, cats in zip(bundle.catalog["item_id"].to_list(), bundle.catalog["categories"].to_list()):
            for cat in cats or []:
                self._category_items.setdefault(cat, set()).add(item)
        # Known users: history (item ids) and a precomputed vector.
        self._user_row: dict = {u: i for i, u in enumerate(users["user_id"].to_list())}
        self._user_history: list[list] = users["history"].to_list()
        # The item-item block ages a known user's items by their timestamps (ties share an age).
        all_times = users["history_times"].to_list() if "history_times" in users.columns else None
        histories = self._known_histories(self._user_history, all_times)
        # Queries are [u, 1] so that faiss's inner product with the index rows [v, b] is u.v + b.
        self._user_vectors = retrieval_queries(self.model.encode_histories(self._vectors, histories))
        popular = bundle.popularity.sort("count", descending=True)
        self._popular_ids: list = popular["item_id"].to_list()
        self._popular_scores: list[float] = [float(c) for c in popular["count"].to_list()]
        self._encoders: dict | None = None
        self._text_search = self._load_text_search(bundle)
        if load_encoders:
            self.encoders()
        self.live_log = None if live_log is None else LiveCatalogLog(live_log)
        self.live_changes = 0  # changes from the live log applied to this model, replayed or new
        if self.live_log is not None:
            self.live_changes = self.live_log.replay(self).applied

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_bundle(
        cls, bundle_dir: str | Path, *, load_encoders: bool = False, live_log: str | Path | None = None
    ) -> "Recommender":
        return cls(load_bundle(bundle_dir), load_encoders=load_encoders, live_log=live_log)

    def encoders(self) -> dict:
        """The frozen encoders the bundle was built with; refuses ones with other fingerprints."""
        with self._lock:
            if self._encoders is None:
                from recsys.encoders.features import load_encoders

                encoders = load_encoders(self.bundle.config.encoders)
                recorded = self.bundle.meta["encoder_fingerprints"]
                for modality, encoder in encoders.items():
                    if modality in recorded and recorded[modality] != encoder.fingerprint:
                        raise BundleError(
                            f"bundle {self.bundle.path}: {modality} encoder fingerprint {encoder.fingerprint!r} "
                            f"differs from the bundle's {recorded[modality]!r}"
                        )
                self._encoders = encoders
            return self._encoders

    @staticmethod
    def _load_text_search(bundle: Bundle):
        """Search rows for the catalog: its frozen text embeddings. None without a text encoder."""
        from recsys.search import TextSearch

        features = bundle.features
        if features.text is None:
            return None
        return TextSearch(features.text, features.text_mask)

    # ------------------------------------------------------------------ info
    def info(self) -> dict:
        meta = self.bundle.meta
        return {
            "model_version": self.model_version,
            "schema_version": meta["schema_version"],
            "encoder_fingerprints": meta["encoder_fingerprints"],
            "n_items": len(self.index),
            "index_kind": self.index.kind,
            "dim": self.model.dim,
            "created_at": meta["created_at"],
            "live_changes": self.live_changes,
            "live_log": None if self.live_log is None else str(self.live_log.path),
        }

    def has_user(self, user_id) -> bool:
        return user_id in self._user_row

    def has_item(self, item_id) -> bool:
        return item_id in self._row_of and item_id not in self._removed

    def categories(self) -> list[str]:
        return sorted(self._category_items)

    def seen_items(self, user_id) -> list:
        row = self._user_row.get(user_id)
        return [] if row is None else list(self._user_history[row])

    # ------------------------------------------------------------------ filters
    def _allowed(self, candidates: Iterable | None, categories: Sequence[str] | None) -> list | None:
        """Item ids a result may contain (None = any live item)."""
        allowed: set | None = None
        if candidates is not None:
            allowed = {c for c in candidates if c in self._row_of}
        if categories:
            in_categories = set().union(*(self._category_items.get(c, set()) for c in categories))
            allowed = in_categories if allowed is None else allowed & in_categories
        if allowed is None:
            return None
        return [i for i in allowed if i not in self._removed]

    def _search(self, vectors: np.ndarray, k: int, exclude: list[Iterable] | None, allowed: list | None) -> list[Recommendations]:
        if allowed is not None and not allowed:
            return [Recommendations([], []) for _ in range(len(vectors))]
        ids, scores = self.index.search(vectors, k, exclude=exclude, candidates=allowed)
        out = []
        sentinel = self.index.sentinel
        for row_ids, row_scores in zip(ids, scores):
            keep = row_ids != sentinel
            # tolist() gives plain Python ids and floats in one C call (a per-item _plain was most of a
            # batch job's time outside faiss).
            out.append(Recommendations(row_ids[keep].tolist(), row_scores[keep].tolist()))
        return out

    def _popular(self, k: int, exclude: Iterable = (), allowed: list | None = None) -> Recommendations:
        excluded = set(exclude) | self._removed
        allowed_set = None if allowed is None else set(allowed)
        items, scores = [], []
        for item, score in zip(self._popular_ids, self._popular_scores):
            if item in excluded or (allowed_set is not None and item not in allowed_set):
                continue
            items.append(item)
            scores.append(score)
            if len(items) == k:
                break
        return Recommendations(items, scores, fallback="popular")

    # ------------------------------------------------------------------ queries
    def recommend_user(self, user_id, k: int, *, exclude_seen: bool = True, candidates=None, categories=None) -> Recommendations:
        allowed = self._allowed(candidates, categories)
        row = self._user_row.get(user_id)
        if row is None:
            return self._popular(k, (), allowed)
        exclude = [self._user_history[row]] if exclude_seen else None
        return self._search(self._user_vectors[row : row + 1], k, exclude, allowed)[0]

    def recommend_users(
        self, user_ids: Sequence, k: int, *, exclude_seen: bool = True, candidates=None, categories=None
    ) -> list[Recommendations]:
        """Batched `recommend_user`: one faiss call for all known users of the chunk."""
        allowed = self._allowed(candidates, categories)
        rows = [self._user_row.get(u) for u in user_ids]
        known = [i for i, r in enumerate(rows) if r is not None]
        results: list[Recommendations | None] = [None] * len(user_ids)
        if known:
            vectors = self._user_vectors[[rows[i] for i in known]]
            exclude = [self._user_history[rows[i]] for i in known] if exclude_seen else None
            for i, rec in zip(known, self._search(vectors, k, exclude, allowed)):
                results[i] = rec
        popular = None
        for i, r in enumerate(rows):
            if r is None:
                popular = popular or self._popular(k, (), allowed)
                results[i] = popular
        return results  # type: ignore[return-value]

    def user_vector_for_history(
        self, history: Sequence, times: Sequence[int] | None = None
    ) -> tuple[np.ndarray | None, list, list]:
        """(vector or None, known item ids, unknown item ids) for an anonymous history (oldest first);
        `times`, one per item, lets the item-item block weigh items logged at the same time alike."""
        if times is not None and len(times) != len(history):
            raise ValueError(f"times: expected one per history item ({len(history)}), got {len(times)}")
        with self._lock:  # rows and vectors from one consistent state (add_item grows both)
            known = [i for i in history if i in self._row_of]
            unknown = [i for i in history if i not in self._row_of]
            if not known:
                return None, known, unknown
            vectors = self._vectors
            histories = self._known_histories([history], None if times is None else [times])
        return self.model.encode_histories(vectors, histories)[0], known, unknown

    def _known_histories(self, histories: Sequence[Sequence], times: Sequence[Sequence[int]] | None) -> Histories:
        """Rows of the items the model knows, per history, with those items' timestamps when given."""
        keeps = [[i in self._row_of for i in history] for history in histories]
        rows = [[self._row_of[i] for i, k in zip(history, keep) if k] for history, keep in zip(histories, keeps)]
        if times is None:
            return Histories(rows)
        return Histories(rows, [[t for t, k in zip(stamps, keep) if k] for stamps, keep in zip(times, keeps)])

    def recommend_history(
        self, history: Sequence, k: int, *, times=None, exclude=None, candidates=None, categories=None
    ) -> Recommendations:
        allowed = self._allowed(candidates, categories)
        vector, known, unknown = self.user_vector_for_history(list(history), None if times is None else list(times))
        excluded = list(known) + list(exclude or [])
        if vector is None:
            rec = self._popular(k, excluded, allowed)
        else:
            query = retrieval_queries(vector[None, :])
            rec = self._search(query, k, [[i for i in excluded if i in self._row_of]], allowed)[0]
        rec.unknown_items = unknown
        return rec

    def similar_items(self, item_id, k: int, *, candidates=None, categories=None) -> Recommendations:
        with self._lock:  # add_item registers the row before it grows _vectors
            if not self.has_item(item_id):
                raise KeyError(f"unknown item_id {item_id!r}")
            vector = self._vectors[self._row_of[item_id]].copy()
        # Item-to-item and text search are pure similarity: the bias (popularity prior) is left out.
        # With model.item_scale an item's length (how sharply it follows taste) still counts: the
        # score is what a user whose taste points exactly at the query would give, less popularity.
        # With an item-item block (model.item_item) the query also carries what the block expects
        # to follow this item (the model's similarity_queries).
        query = retrieval_queries(self.model.similarity_queries(vector[None, :]), with_bias=False)
        return self._search(query, k, [[item_id]], self._allowed(candidates, categories))[0]

    def search(self, query: str, k: int, *, candidates=None, categories=None, user_id=None, taste_weight: float = 0.1) -> Recommendations:
        """Items whose text matches `query`, in the frozen text encoder's own space (recsys.search),
        items added live included. With a known `user_id`, the `search_pool` best text matches are
        re-ranked by text similarity + taste_weight x the user's standardised taste score, so among
        similar matches the user's kind comes first (0 = pure text order)."""
        query = query.strip()
        if not query:
            raise ValueError("query must not be empty")
        encoder = self.encoders().get("text")
        if encoder is None or self._text_search is None:
            raise RuntimeError("this bundle has no text encoder; text search is unavailable")
        embedding, _ = encoder.encode([query])
        allowed = self._allowed(candidates, categories)
        with self._lock:
            scores = self._text_search.scores(embedding[0])
            if allowed is None:  # every live row: a mask over the rows, not a Python pass over every id
                keep = np.ones(len(self._item_ids), dtype=bool)
                keep[[self._row_of[item] for item in self._removed]] = False
                live = np.flatnonzero(keep)
            else:
                live = [self._row_of[item] for item in allowed]
            user_row = self._user_row.get(user_id) if user_id is not None else None
            if user_row is None or taste_weight == 0:
                rows, values = self._text_search.top(scores, k, live)
            else:
                pool, text_scores = self._text_search.top(scores, max(self.search_pool, k), live)
                taste = self._vectors[pool] @ self._user_vectors[user_row, : self._vectors.shape[1]]
                spread = float(taste.std()) or 1.0
                blended = text_scores + taste_weight * (taste - taste.mean()) / spread
                order = np.argsort(-blended, kind="stable")[:k]
                rows, values = pool[order], blended[order]
            ids = [self._item_ids[r] for r in rows]
        return Recommendations(ids, [float(v) for v in values])

    search_pool = 100  # text matches a user's taste may re-rank

    # ------------------------------------------------------------------ catalog changes
    def _item_features(self, catalog: pl.DataFrame):
        """Frozen features of new catalog rows (item_id, title, text, image, categories)."""
        from recsys.encoders.features import build_item_features

        # The row has title, text, image and categories whatever columns the training catalog had, so
        # its text is built from those (encoders.text.fields may name columns it has not).
        encoders_cfg = self.bundle.config.encoders
        encoders_cfg = encoders_cfg.model_copy(update={"text": encoders_cfg.text.model_copy(update={"fields": None})})
        return build_item_features(
            catalog,
            encoders_cfg,
            encoders=self.encoders(),
            store=None,
            category_vocab=list(self.bundle.features.category_vocab),
            show_progress=False,
        )

    def embed_items(self, catalog: pl.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """Item-tower (vectors, biases) for new catalog rows (item_id, title, text, image, categories)."""
        # Content only, even for an id the model once knew: an item added (or re-added) here is
        # described by the content given now, not by what the old item with that id learned.
        return self.model.encode_items_with_bias(FeatureTensors.from_features(self._item_features(catalog)))

    def add_item(
        self, item_id, title: str, text: str | None = None, image_path: str | None = None, categories=None, *, log: bool = True
    ) -> None:
        """Embed a new item from its content and add it to the live index (and, with `log`, to the
        live catalog log first, so an acknowledged add survives reloads and restarts)."""
        if self.has_item(item_id):
            raise ValueError(f"item_id {item_id!r} already exists")
        row = pl.DataFrame(
            {
                "item_id": [item_id],
                "title": [title],
                "text": [text],
                "image": [image_path],
                "categories": [list(categories or [])],
            },
            schema={"item_id": pl.Int64 if self.id_type is int else pl.String, "title": pl.String, "text": pl.String, "image": pl.String, "categories": pl.List(pl.String)},
        )
        features = self._item_features(row)
        vector, bias = self.model.encode_items_with_bias(FeatureTensors.from_features(features))
        text_row = None if features.text is None or not bool(features.text_mask[0]) else features.text[0]
        with self._lock:
            if self.has_item(item_id):  # added concurrently since the check above
                raise ValueError(f"item_id {item_id!r} already exists")
            if log and self.live_log is not None:
                self.live_log.append(
                    "add", _plain(item_id), title=title, text=text, image_path=image_path, categories=list(categories or [])
                )
                self.live_changes += 1
            if item_id in self._removed:  # re-adding a deleted id: give it fresh content
                self._removed.discard(item_id)
                self.index.remove([item_id]) if item_id in self.index else None
            if item_id in self._row_of:
                self._vectors[self._row_of[item_id]] = vector[0]
            else:
                self._row_of[item_id] = len(self._item_ids)
                self._item_ids.append(item_id)
                self._vectors = np.concatenate([self._vectors, vector])
            if self._text_search is not None:
                self._text_search.set_row(self._row_of[item_id], text_row)
            for cat in categories or []:
                self._category_items.setdefault(cat, set()).add(item_id)
            self.index.add([item_id], retrieval_items(vector, bias))
        logger.info("added item %r to the live index (%d items)", item_id, len(self.index))

    def remove_item(self, item_id, *, log: bool = True) -> None:
        with self._lock:
            if not self.has_item(item_id):
                raise KeyError(f"unknown item_id {item_id!r}")
            if log and self.live_log is not None:
                self.live_log.append("remove", _plain(item_id))
                self.live_changes += 1
            self.index.remove([item_id])
            self._removed.add(item_id)
        logger.info("removed item %r from results", item_id)

    # ------------------------------------------------------------------ batch job
    def write_recommendations(
        self,
        user_ids: Sequence,
        out_path: str | Path,
        k: int,
        *,
        exclude_seen: bool = True,
        candidates=None,
        chunk_size: int = 1024,
        show_progress: bool = True,
    ) -> Path:
        """Top-k per user to parquet (user_id, item_id, rank, score, fallback), chunk by chunk, resumably.

        Each finished chunk is a part file in `.<name>.parts/` beside the output (recsys.resume); a
        re-run of the same job (same model and live catalog, users, k, exclude_seen, candidates,
        chunk_size) computes only the chunks a killed run did not finish. The output appears, atomically,
        only when every chunk is done, byte-for-byte what an uninterrupted run writes."""
        from tqdm.auto import tqdm

        from recsys.resume import PartsJob

        out_path = Path(out_path)
        user_dtype = pl.Int64 if self.user_id_type is int else pl.String
        item_dtype = pl.Int64 if self.id_type is int else pl.String
        # fallback: null where the model ranked the items, "popular" for users it does not know (their
        # score is the item's interaction count, not a model score).
        schema = {"user_id": user_dtype, "item_id": item_dtype, "rank": pl.Int32, "score": pl.Float32, "fallback": pl.String}
        n_chunks = -(-len(user_ids) // chunk_size)
        job = self.batch_job(user_ids, k, exclude_seen=exclude_seen, candidates=candidates, chunk_size=chunk_size)
        with PartsJob(out_path, job, n_chunks) as parts:
            with tqdm(total=n_chunks, initial=parts.reused, desc="recommend", unit="chunk", disable=not show_progress) as bar:
                for chunk_index in parts.missing():
                    start = chunk_index * chunk_size
                    chunk = list(user_ids[start : start + chunk_size])
                    recs = self.recommend_users(chunk, k, exclude_seen=exclude_seen, candidates=candidates)
                    users, items, ranks, scores, fallbacks = [], [], [], [], []
                    for user, rec in zip(chunk, recs):
                        n = len(rec.item_ids)
                        users.extend([user] * n)
                        items.extend(rec.item_ids)
                        ranks.extend(range(1, n + 1))
                        scores.extend(rec.scores)
                        fallbacks.extend([rec.fallback] * n)
                    table = pl.DataFrame(
                        {"user_id": users, "item_id": items, "rank": ranks, "score": scores, "fallback": fallbacks}, schema=schema
                    ).to_arrow()
                    parts.write(chunk_index, table)
                    bar.update(1)
            return parts.finish(pl.DataFrame(schema=schema).to_arrow().schema)

    def batch_job(self, user_ids: Sequence, k: int, *, exclude_seen: bool, candidates, chunk_size: int) -> dict:
        """What decides a batch job's output, for its resume fingerprint: the bundle (its bundle.json,
        which records the weights' and vectors' hashes and the model version), the live catalog state
        (item ids, removed ids, every item vector: items added or removed through the live log or the
        API), the users in order, k, exclude_seen, the candidate set and the chunking."""
        from recsys import __version__
        from recsys.resume import values_digest

        with self._lock:
            removed = sorted(self._removed, key=lambda v: (type(v).__name__, v))
            state = hashlib.sha256(values_digest(self._item_ids).encode() + values_digest(removed).encode())
            # The vectors' buffer, not a bytes copy: at a million items a copy is 0.5 GB (4.6 GB with an
            # item-item block) on top of the job's peak memory; the digest is the same.
            state.update(memoryview(np.ascontiguousarray(self._vectors)).cast("B"))
            live = {"items": len(self._item_ids), "removed": len(removed), "state": state.hexdigest()}
        plain_candidates = None
        if candidates is not None:
            plain_candidates = sorted({_plain(c) for c in candidates}, key=lambda v: (type(v).__name__, v))
        return {
            "recsys_version": __version__,
            "bundle": {
                "model_version": self.model_version,
                "meta_sha256": hashlib.sha256(json.dumps(self.bundle.meta, sort_keys=True, default=str).encode()).hexdigest(),
            },
            "live_catalog": live,
            "users": {"count": len(user_ids), "sha256": values_digest(_plain(u) for u in user_ids)},
            "k": int(k),
            "exclude_seen": bool(exclude_seen),
            "candidates": None if plain_candidates is None else {"count": len(plain_candidates), "sha256": values_digest(plain_candidates)},
            "chunk_size": int(chunk_size),
        }
