"""Reference scorers that every trained model must beat, under the same `evaluate` protocol."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import polars as pl

from recsys.encoders.base import l2_normalize


class PopularityScorer:
    """Scores each item by its number of training interactions (the same list for every user).

    Items never seen in training (e.g. cold items) score 0, so they tie and are ordered by
    `evaluate`'s fixed random tie order.
    """

    def __init__(self, train_df: pl.DataFrame, item_index: Mapping[Any, int], name: str = "popularity") -> None:
        if "item_id" not in train_df.columns:
            raise ValueError("train_df: missing column 'item_id'")
        self.name = name
        self.n_items = len(item_index)
        counts = train_df.group_by("item_id").len()
        self.counts = np.zeros(self.n_items, dtype=np.float32)
        index_of = item_index.get
        for item, count in zip(counts["item_id"].to_list(), counts["len"].to_list()):
            idx = index_of(item)
            if idx is not None:
                self.counts[idx] = count

    @classmethod
    def from_counts(cls, counts: np.ndarray, name: str = "popularity") -> "PopularityScorer":
        """From training interactions per catalog row, already counted."""
        scorer = cls.__new__(cls)
        scorer.name, scorer.n_items = name, len(counts)
        scorer.counts = np.asarray(counts, dtype=np.float32)
        return scorer

    def score(self, histories: list[np.ndarray], user_ids: np.ndarray) -> np.ndarray:
        return np.broadcast_to(self.counts, (len(histories), self.n_items))


class ContentKNNScorer:
    """Cosine between the mean of the user's history item embeddings and every item embedding.

    Uses only frozen content features, so it is the natural "no training" baseline and works for
    cold items. Rows of `item_embeddings` should be L2-normalised (all-zero rows = no features);
    an empty history scores every item 0.
    """

    def __init__(self, item_embeddings: np.ndarray, name: str = "content_knn") -> None:
        emb = np.asarray(item_embeddings, dtype=np.float32)
        if emb.ndim != 2:
            raise ValueError(f"item_embeddings: expected [n_items, d], got shape {emb.shape}")
        self.name = name
        self.embeddings = emb

    def user_vectors(self, histories: list[np.ndarray]) -> np.ndarray:
        """Re-normalised mean history embedding per user, [n_users, d]."""
        out = np.zeros((len(histories), self.embeddings.shape[1]), dtype=np.float32)
        for u, hist in enumerate(histories):
            if len(hist):
                out[u] = self.embeddings[np.asarray(hist, dtype=np.int64)].mean(axis=0)
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(norms > 0, norms, 1.0)

    def score(self, histories: list[np.ndarray], user_ids: np.ndarray) -> np.ndarray:
        return self.user_vectors(histories) @ self.embeddings.T


class RandomScorer:
    """Uniform random scores: the floor every model must clear (needs `n_items`, unlike the others)."""

    def __init__(self, n_items: int, seed: int = 0, name: str = "random") -> None:
        if n_items < 1:
            raise ValueError(f"n_items: expected >= 1, got {n_items}")
        self.name = name
        self.n_items = n_items
        self._rng = np.random.default_rng(seed)

    def score(self, histories: list[np.ndarray], user_ids: np.ndarray) -> np.ndarray:
        return self._rng.random((len(histories), self.n_items), dtype=np.float32)


def frozen_content_embeddings(features, modalities: tuple[str, ...] = ("text", "image")) -> np.ndarray:
    """Item rows for content-kNN: the unit frozen embeddings of `modalities` (an `ItemFeatures`'
    attribute names), concatenated and re-normalised. A missing modality contributes zeros."""
    parts = [getattr(features, m) for m in modalities if getattr(features, m) is not None]
    if not parts:
        raise ValueError(f"content_knn needs frozen {' or '.join(modalities)} features")
    return l2_normalize(np.concatenate([l2_normalize(np.asarray(p, dtype=np.float32)) for p in parts], axis=1))
