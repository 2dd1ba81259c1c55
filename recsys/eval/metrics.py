"""Top-k ranking metrics on item *indices*.

Conventions (so numbers are comparable across models and protocols):
* `ranked` is [n_users, K] item indices, best first; negative entries are padding (no item) and
  never count as hits or as covered items.
* binary relevance: an item is relevant iff it is in the user's target set;
* Recall@k = hits in top-k / |targets| (the standard definition: a user with more targets than k
  cannot reach 1.0);
* NDCG@k = DCG / IDCG with gain 1/log2(rank+1) (rank from 1) and IDCG over min(|targets|, k) hits;
* HR@k = 1 if any target is in the top-k;
* users with an empty target set are skipped (they carry no signal); all-empty gives 0.0.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np


def _check(ranked: np.ndarray, targets: Sequence[Iterable[int]], k: int) -> np.ndarray:
    ranked = np.asarray(ranked)
    if ranked.ndim != 2:
        raise ValueError(f"ranked: expected [n_users, K], got shape {ranked.shape}")
    if len(targets) != ranked.shape[0]:
        raise ValueError(f"targets: expected {ranked.shape[0]} target sets, got {len(targets)}")
    if k < 1:
        raise ValueError(f"k: expected >= 1, got {k}")
    return ranked[:, :k]


def _hits(ranked: np.ndarray, targets: Sequence[Iterable[int]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Boolean hit matrix [n_users, k] and target-set sizes (duplicates in targets count once)."""
    top = _check(ranked, targets, k)
    hits = np.zeros(top.shape, dtype=bool)
    sizes = np.zeros(top.shape[0], dtype=np.int64)
    for u, tgt in enumerate(targets):
        tgt_arr = np.unique(np.asarray(list(tgt) if not isinstance(tgt, np.ndarray) else tgt, dtype=np.int64))
        sizes[u] = tgt_arr.size
        if tgt_arr.size:
            hits[u] = np.isin(top[u], tgt_arr) & (top[u] >= 0)
    return hits, sizes


def _mean_over_users(values: np.ndarray, sizes: np.ndarray) -> float:
    keep = sizes > 0
    return float(values[keep].mean()) if keep.any() else 0.0


def recall_at_k(ranked: np.ndarray, targets: Sequence[Iterable[int]], k: int) -> float:
    """Mean over users of |top-k ∩ targets| / |targets|."""
    hits, sizes = _hits(ranked, targets, k)
    return _mean_over_users(hits.sum(axis=1) / np.maximum(sizes, 1), sizes)


def hit_rate_at_k(ranked: np.ndarray, targets: Sequence[Iterable[int]], k: int) -> float:
    """Fraction of users with at least one target in the top-k."""
    hits, sizes = _hits(ranked, targets, k)
    return _mean_over_users(hits.any(axis=1).astype(np.float64), sizes)


def ndcg_at_k(ranked: np.ndarray, targets: Sequence[Iterable[int]], k: int) -> float:
    """Mean binary-relevance NDCG@k; ideal DCG places min(|targets|, k) hits at the top."""
    hits, sizes = _hits(ranked, targets, k)
    discounts = 1.0 / np.log2(np.arange(2, hits.shape[1] + 2))
    dcg = hits @ discounts
    ideal_cum = np.concatenate([[0.0], np.cumsum(1.0 / np.log2(np.arange(2, k + 2)))])
    idcg = ideal_cum[np.minimum(sizes, k)]
    return _mean_over_users(dcg / np.where(idcg > 0, idcg, 1.0), sizes)


def catalog_coverage(ranked: np.ndarray, n_items: int) -> float:
    """Distinct recommended items / n_items (pass the candidate-set size when candidates restrict)."""
    if n_items < 1:
        raise ValueError(f"n_items: expected >= 1, got {n_items}")
    ranked = np.asarray(ranked)
    return float(np.unique(ranked[ranked >= 0]).size / n_items)
