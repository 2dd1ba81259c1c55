"""Turning a Split into evaluation queries, and scoring any model on them the same way.

One code path for every model (two-tower, baselines) so numbers differ only by the model:
chunked full-catalog scoring, seen items excluded, optional candidate restriction (cold items),
and deterministic tie-breaking by a fixed random item permutation (breaking ties by item index
would leak catalog order, e.g. ids assigned by release date, into the metrics).
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
import polars as pl

from recsys.eval.metrics import catalog_coverage, hit_rate_at_k, ndcg_at_k, recall_at_k

log = logging.getLogger(__name__)

Stage = Literal["valid", "test"]


@dataclass
class EvalQueries:
    """Per-user inputs of one evaluation stage; all lists are aligned with `user_ids`."""

    user_ids: np.ndarray
    histories: list[np.ndarray]  # item indices, in time order
    targets: list[np.ndarray]  # item indices to retrieve
    exclude: list[np.ndarray]  # item indices never to recommend (the history)
    history_times: list[np.ndarray] | None = None  # each history's timestamps, where the log has them

    def __len__(self) -> int:
        return int(self.user_ids.shape[0])

    def subset(self, n: int | None, seed: int = 0) -> EvalQueries:
        """A fixed random subset of at most `n` users (e.g. for fast validation); None keeps all."""
        if n is None or n >= len(self):
            return self
        keep = np.sort(np.random.default_rng(seed).choice(len(self), size=n, replace=False))
        return EvalQueries(
            self.user_ids[keep],
            [self.histories[i] for i in keep],
            [self.targets[i] for i in keep],
            [self.exclude[i] for i in keep],
            None if self.history_times is None else [self.history_times[i] for i in keep],
        )


@runtime_checkable
class Scorer(Protocol):
    """Anything that scores every catalog item for a batch of users."""

    name: str

    def score(self, histories: list[np.ndarray], user_ids: np.ndarray, times: list[np.ndarray] | None = None) -> np.ndarray:
        """[n_users, n_items] float32 scores; higher is better. `times`: each history's timestamps, where
        the log has them (a scorer that reads only the order ignores them). A scorer whose `score`
        takes no `times` is called without them."""
        ...


def _takes_times(scorer: Scorer) -> bool:
    """Whether `scorer.score` accepts `times` (scorers written before it existed do not)."""
    try:
        parameters = inspect.signature(scorer.score).parameters
    except (TypeError, ValueError):
        return False
    return "times" in parameters or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())


def _index_frame(item_index: Mapping[Any, int], dtype: pl.DataType) -> pl.DataFrame:
    return pl.DataFrame(
        {"item_id": list(item_index.keys()), "_idx": list(item_index.values())},
        schema_overrides={"_idx": pl.Int64},
    ).with_columns(pl.col("item_id").cast(dtype))


def build_queries(split: Any, item_index: Mapping[Any, int], stage: Stage) -> EvalQueries:
    """Queries for `stage` of a Split (duck-typed: .train/.valid/.test polars frames).

    test:  history = train + valid rows of the user ordered by `pos`, targets = the user's test items;
    valid: history = train rows, targets = the user's valid items.
    exclude = the distinct history items. Users without history (or without known targets) are
    skipped and counted in the log; interactions with items missing from `item_index` are dropped.
    """
    if stage == "test":
        history_frames, target_frame = [split.train, split.valid], split.test
    elif stage == "valid":
        history_frames, target_frame = [split.train], split.valid
    else:
        raise ValueError(f"stage: expected 'valid' or 'test', got {stage!r}")
    for name, frame in [("train", split.train), ("valid", split.valid), ("test", split.test)]:
        missing = {"user_id", "item_id", "pos"} - set(frame.columns)
        if missing:
            raise ValueError(f"split.{name}: missing columns {sorted(missing)}")

    item_dtype = split.train.schema["item_id"]
    index_df = _index_frame(item_index, item_dtype)
    with_times = all("timestamp" in f.columns for f in history_frames)
    cols = ["user_id", "item_id", "pos"] + (["timestamp"] if with_times else [])
    history = pl.concat([f.select(cols) for f in history_frames if f.height], how="vertical_relaxed") \
        if any(f.height for f in history_frames) else split.train.select(cols).clear()
    targets = target_frame.select(cols)

    n_unknown = 0
    mapped = []
    for frame in (history, targets):
        joined = frame.join(index_df, on="item_id", how="inner")
        n_unknown += frame.height - joined.height
        mapped.append(joined)
    history, targets = mapped
    if n_unknown:
        log.warning("%s: dropped %d interactions with items missing from the item index", stage, n_unknown)

    hist_by_user = history.sort(["user_id", "pos"]).group_by("user_id", maintain_order=True).agg(
        pl.col("_idx").alias("history"), *([pl.col("timestamp").alias("history_times")] if with_times else [])
    )
    tgt_by_user = targets.sort(["user_id", "pos"]).group_by("user_id", maintain_order=True).agg(
        pl.col("_idx").alias("targets")
    )
    n_target_users = tgt_by_user.height
    joined = tgt_by_user.join(hist_by_user, on="user_id", how="inner").sort("user_id")
    skipped = n_target_users - joined.height
    if skipped:
        log.info("%s: skipped %d of %d users without history", stage, skipped, n_target_users)

    histories = [np.asarray(h, dtype=np.int64) for h in joined["history"].to_list()]
    return EvalQueries(
        user_ids=joined["user_id"].to_numpy(),
        histories=histories,
        targets=[np.unique(np.asarray(t, dtype=np.int64)) for t in joined["targets"].to_list()],
        exclude=[np.unique(h) for h in histories],
        history_times=[np.asarray(t, dtype=np.int64) for t in joined["history_times"].to_list()] if with_times else None,
    )


def top_k_with_ties(scores: np.ndarray, k: int, tie_order: np.ndarray) -> np.ndarray:
    """Top-k item indices per row [b, k], best first; equal scores ordered by `tie_order`.

    `tie_order` is a permutation of item indices: among equal scores the item that appears earlier
    in it wins. -inf scores (excluded items) are never returned: those slots are -1.
    """
    b, n = scores.shape
    k_eff = min(k, n)
    out = np.full((b, k), -1, dtype=np.int64)
    if b == 0 or k_eff == 0:
        return out
    s = scores[:, tie_order]  # column j = item tie_order[j]; earlier columns win ties
    kth = np.partition(s, n - k_eff, axis=1)[:, n - k_eff]  # k-th largest value per row
    greater = s > kth[:, None]
    equal = s == kth[:, None]
    need = k_eff - greater.sum(axis=1)
    take_equal = equal & (np.cumsum(equal, axis=1) <= need[:, None])
    chosen = greater | take_equal  # exactly k_eff per row
    cols = np.nonzero(chosen)[1].reshape(b, k_eff)  # ascending column = tie order
    chosen_scores = np.take_along_axis(s, cols, axis=1)
    order = np.argsort(-chosen_scores, axis=1, kind="stable")
    cols = np.take_along_axis(cols, order, axis=1)
    items = tie_order[cols]
    items[np.isneginf(np.take_along_axis(chosen_scores, order, axis=1))] = -1
    out[:, :k_eff] = items
    return out


def rank_items(
    scorer: Scorer,
    queries: EvalQueries,
    n_items: int,
    k: int,
    candidates: np.ndarray | None = None,
    batch_size: int = 1024,
    seed: int = 0,
) -> np.ndarray:
    """[n_users, k] recommended item indices (-1 padded), scoring users in chunks of `batch_size`."""
    if batch_size < 1:
        raise ValueError(f"batch_size: expected >= 1, got {batch_size}")
    tie_order = np.random.default_rng(seed).permutation(n_items)
    allowed = None
    if candidates is not None:
        cand = np.asarray(candidates, dtype=np.int64)
        if cand.size and (cand.min() < 0 or cand.max() >= n_items):
            raise ValueError(f"candidates: item indices must lie in [0, {n_items})")
        allowed = np.zeros(n_items, dtype=bool)
        allowed[cand] = True
    ranked = np.full((len(queries), k), -1, dtype=np.int64)
    pass_times = queries.history_times is not None and _takes_times(scorer)
    for start in range(0, len(queries), batch_size):
        stop = min(start + batch_size, len(queries))
        histories, user_ids = queries.histories[start:stop], queries.user_ids[start:stop]
        if pass_times:
            raw = scorer.score(histories, user_ids, times=queries.history_times[start:stop])
        else:
            raw = scorer.score(histories, user_ids)
        if raw.shape != (stop - start, n_items):
            raise ValueError(f"scorer {scorer.name!r}: expected scores of shape {(stop - start, n_items)}, "
                             f"got {raw.shape}")
        scores = np.array(raw, dtype=np.float32, copy=True)  # never mutate the scorer's array
        scores[np.isnan(scores)] = -np.inf
        if allowed is not None:
            scores[:, ~allowed] = -np.inf
        excl = queries.exclude[start:stop]
        lens = np.fromiter((e.size for e in excl), dtype=np.int64, count=len(excl))
        if lens.sum():
            scores[np.repeat(np.arange(len(excl)), lens), np.concatenate(excl)] = -np.inf
        ranked[start:stop] = top_k_with_ties(scores, k, tie_order)
    return ranked


def evaluate(
    scorer: Scorer,
    queries: EvalQueries,
    n_items: int,
    ks: Sequence[int] = (10, 20),
    candidates: np.ndarray | None = None,
    batch_size: int = 1024,
    seed: int = 0,
) -> dict[str, float]:
    """Recall/NDCG/HR/coverage at each k, plus n_users.

    Excluded (history) items and, when `candidates` (item indices) is given, every non-candidate
    item are scored -inf, so they are never recommended. Coverage is over the candidate set when
    given, else over the catalog.
    """
    if not ks or min(ks) < 1:
        raise ValueError(f"ks: expected positive cutoffs, got {ks!r}")
    started = time.perf_counter()
    max_k = max(ks)
    ranked = rank_items(scorer, queries, n_items, max_k, candidates, batch_size, seed)
    pool = n_items if candidates is None else max(int(np.unique(candidates).size), 1)
    out: dict[str, float] = {}
    for k in sorted(ks):
        out[f"recall@{k}"] = recall_at_k(ranked, queries.targets, k)
        out[f"ndcg@{k}"] = ndcg_at_k(ranked, queries.targets, k)
        out[f"hr@{k}"] = hit_rate_at_k(ranked, queries.targets, k)
        out[f"coverage@{k}"] = catalog_coverage(ranked[:, :k], pool)
    out["n_users"] = len(queries)
    log.info("evaluated %s on %d users in %.1fs: %s", scorer.name, len(queries), time.perf_counter() - started,
             {key: round(v, 4) for key, v in out.items()})
    return out
