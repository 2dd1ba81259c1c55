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


class TargetSets:
    """Every user's target set, deduplicated once (sizes and the concatenated items), for a judge that
    measures many rankings of the same queries (a validation search)."""

    def __init__(self, targets: Sequence[Iterable[int]]):
        sets = [np.unique(np.asarray(t if isinstance(t, np.ndarray) else list(t), dtype=np.int64)) for t in targets]
        self.sizes = np.fromiter((s.size for s in sets), dtype=np.int64, count=len(sets))
        self.flat = np.concatenate(sets) if sets else np.zeros(0, np.int64)

    def __len__(self) -> int:
        return len(self.sizes)


def _hits(ranked: np.ndarray, targets: Sequence[Iterable[int]] | TargetSets, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Boolean hit matrix [n_users, k] and target-set sizes (duplicates in targets count once).
    One membership test over (user, item) keys for all users at once."""
    top = _check(ranked, targets, k)
    table = targets if isinstance(targets, TargetSets) else TargetSets(targets)
    sizes, flat = table.sizes, table.flat
    if not sizes.sum() or top.size == 0:
        return np.zeros(top.shape, dtype=bool), sizes
    width = int(max(flat.max(), top.max())) + 1
    target_keys = np.repeat(np.arange(len(sizes), dtype=np.int64), sizes) * width + flat
    top_keys = np.arange(top.shape[0], dtype=np.int64)[:, None] * width + top
    return np.isin(top_keys, target_keys) & (top >= 0), sizes


def per_user(kind: str, ranked: np.ndarray, targets: Sequence[Iterable[int]] | TargetSets, k: int) -> np.ndarray:
    """Each user's value of metric `kind` ("recall", "ndcg", "hr") at k; NaN for a user without
    targets. The means below average these; validation picks compare them on subsets of users."""
    hits, sizes = _hits(ranked, targets, k)
    if kind == "recall":
        values = hits.sum(axis=1) / np.maximum(sizes, 1)
    elif kind == "hr":
        values = hits.any(axis=1).astype(np.float64)
    elif kind == "ndcg":
        discounts = 1.0 / np.log2(np.arange(2, hits.shape[1] + 2))
        ideal_cum = np.concatenate([[0.0], np.cumsum(1.0 / np.log2(np.arange(2, k + 2)))])
        idcg = ideal_cum[np.minimum(sizes, k)]
        values = (hits @ discounts) / np.where(idcg > 0, idcg, 1.0)
    else:
        raise ValueError(f"metric kind: expected recall, ndcg or hr, got {kind!r}")
    return np.where(sizes > 0, values, np.nan)


def mean_over_users(values: np.ndarray) -> float:
    """The mean of per-user values, users without targets (NaN) skipped; 0.0 when none has any."""
    keep = ~np.isnan(values)
    return float(values[keep].mean()) if keep.any() else 0.0


def recall_at_k(ranked: np.ndarray, targets: Sequence[Iterable[int]], k: int) -> float:
    """Mean over users of |top-k ∩ targets| / |targets|."""
    return mean_over_users(per_user("recall", ranked, targets, k))


def hit_rate_at_k(ranked: np.ndarray, targets: Sequence[Iterable[int]], k: int) -> float:
    """Fraction of users with at least one target in the top-k."""
    return mean_over_users(per_user("hr", ranked, targets, k))


def ndcg_at_k(ranked: np.ndarray, targets: Sequence[Iterable[int]], k: int) -> float:
    """Mean binary-relevance NDCG@k; ideal DCG places min(|targets|, k) hits at the top."""
    return mean_over_users(per_user("ndcg", ranked, targets, k))


def catalog_coverage(ranked: np.ndarray, n_items: int) -> float:
    """Distinct recommended items / n_items (pass the candidate-set size when candidates restrict)."""
    if n_items < 1:
        raise ValueError(f"n_items: expected >= 1, got {n_items}")
    ranked = np.asarray(ranked)
    return float(np.unique(ranked[ranked >= 0]).size / n_items)
