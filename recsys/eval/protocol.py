"""Turning a Split into evaluation queries, and scoring any model on them the same way.

One code path for every model (two-tower, baselines) so numbers differ only by the model:
chunked full-catalog scoring, seen items excluded, optional candidate restriction (cold items),
and one tie rule (a fixed random item permutation); validation ranks through the same `RankingJudge`.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
import polars as pl

from recsys.data.histories import Histories, histories_by_user
from recsys.eval.metrics import TargetSets, catalog_coverage, hit_rate_at_k, mean_over_users, ndcg_at_k, per_user, recall_at_k

log = logging.getLogger(__name__)

Stage = Literal["valid", "test"]
TIE_SEED = 0  # the tie order of every ranking in the project
HALF_SEED = 1  # which half of the validation queries each query falls in (RankingJudge.half)
_METRICS = {"recall": recall_at_k, "ndcg": ndcg_at_k, "hr": hit_rate_at_k}


@dataclass
class EvalQueries:
    """Per-user inputs of one evaluation stage; all lists are aligned with `user_ids`. `histories`
    carry their timestamps where the log has them (`Histories.times`)."""

    user_ids: np.ndarray
    histories: Histories  # item indices, in time order
    targets: list[np.ndarray]  # item indices to retrieve
    exclude: list[np.ndarray]  # item indices never to recommend (the history)

    def __post_init__(self) -> None:
        if not isinstance(self.histories, Histories):
            self.histories = Histories(self.histories)

    def __len__(self) -> int:
        return int(self.user_ids.shape[0])

    def subset(self, n: int | None, seed: int = 0) -> EvalQueries:
        """A fixed random subset of at most `n` users (e.g. for fast validation); None keeps all."""
        if n is None or n >= len(self):
            return self
        keep = np.sort(np.random.default_rng(seed).choice(len(self), size=n, replace=False))
        return EvalQueries(
            self.user_ids[keep], self.histories.take(keep), [self.targets[i] for i in keep], [self.exclude[i] for i in keep],
        )


@runtime_checkable
class Scorer(Protocol):
    """Anything that scores every catalog item for a batch of users."""

    name: str

    def score(self, histories: list[np.ndarray], user_ids: np.ndarray) -> np.ndarray:
        """[n_users, n_items] float32 scores; higher is better. `histories` may be a `Histories`
        carrying timestamps, for a scorer that reads them."""
        ...


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

    with_times = all("timestamp" in f.columns for f in history_frames)
    cols = ["user_id", "item_id", "pos"] + (["timestamp"] if with_times else [])
    history = pl.concat([f.select(cols) for f in history_frames], how="vertical_relaxed")
    return queries_from(history, target_frame, item_index, stage)


def queries_from(history: pl.DataFrame, targets: pl.DataFrame, item_index: Mapping[Any, int], name: str = "queries") -> EvalQueries:
    """One query per user of `targets` who has a history: the user's `history` rows (in `pos` order, with
    timestamps where the frame has them) and their distinct target items. Rows of items missing from
    `item_index` are dropped and counted in the log. Validation (while training) and test build theirs here."""
    history_users, histories = histories_by_user(history, item_index)
    target_users, target_items = histories_by_user(targets.select([c for c in ("user_id", "item_id", "pos") if c in targets.columns]), item_index)
    n_unknown = history.height + targets.height - sum(map(len, histories)) - sum(map(len, target_items))
    if n_unknown:
        log.warning("%s: dropped %d interactions with items missing from the item index", name, n_unknown)
    row_of = {user: row for row, user in enumerate(history_users.tolist())}
    pairs = sorted(((user, row_of[user], t) for user, t in zip(target_users.tolist(), target_items) if user in row_of),
                   key=lambda pair: pair[0])
    skipped = len(target_users) - len(pairs)
    if skipped:
        log.info("%s: skipped %d of %d users without history", name, skipped, len(target_users))
    kept = histories.take([row for _, row, _ in pairs])
    return EvalQueries(
        user_ids=np.asarray([user for user, _, _ in pairs]) if pairs else history_users[:0],
        histories=kept,
        targets=[np.unique(t) for _, _, t in pairs],
        exclude=[np.unique(h) for h in kept],
    )


class RankingJudge:
    """Ranks score matrices of one set of queries, and measures the ranking, the one way the project
    does it: each query's history (`exclude`) and, when `candidates` (item indices) is given, every
    other item are never ranked; equal scores follow a fixed random item order (`tie_order`). Test
    (`evaluate`) and validation (early stopping, every pick made on validation) both go through it,
    so a validation number and a test number on the same queries are the same number."""

    def __init__(self, queries: EvalQueries, n_items: int, candidates: np.ndarray | None = None, seed: int = TIE_SEED):
        self.queries, self.n_items, self.candidates, self.seed = queries, n_items, candidates, seed
        self.order = tie_order(n_items, seed)
        self.allowed = None
        self.pool = n_items
        # The columns ranked, in tie order: every item, or only the candidates (a cold ranking then sorts
        # its few hundred items, not the catalog).
        self._columns = self.order
        if candidates is not None:
            cand = np.asarray(candidates, dtype=np.int64)
            if cand.size and (cand.min() < 0 or cand.max() >= n_items):
                raise ValueError(f"candidates: item indices must lie in [0, {n_items})")
            self.allowed = np.zeros(n_items, dtype=bool)
            self.allowed[cand] = True
            self.pool = max(int(np.unique(cand).size), 1)
            self._columns = self.order[self.allowed[self.order]]
        self._position = np.full(n_items, -1, dtype=np.int64)  # item -> its column (-1: not ranked)
        self._position[self._columns] = np.arange(self._columns.size)
        # A fixed random half of the queries: a choice picked on one half is confirmed on the other (on a
        # candidate set, halves of the items can be asked for instead: `item_halves`).
        self.half = np.random.default_rng(HALF_SEED).permutation(len(queries)) % 2 == 1
        lengths = np.fromiter((np.asarray(e).size for e in queries.exclude), dtype=np.int64, count=len(queries))
        self._offsets = np.concatenate([[0], np.cumsum(lengths)])
        self._excluded = np.concatenate([np.asarray(e, dtype=np.int64) for e in queries.exclude]) if len(queries) else np.zeros(0, np.int64)

    @functools.cached_property
    def _target_sets(self) -> TargetSets:
        return TargetSets(self.queries.targets)

    def subset(self, n: int | None, seed: int = 0) -> "RankingJudge":
        """The same ranking over a fixed random subset of at most `n` queries (EvalQueries.subset)."""
        queries = self.queries.subset(n, seed)
        return self if queries is self.queries else RankingJudge(queries, self.n_items, self.candidates, self.seed)

    def top_k(self, scores: np.ndarray, k: int, start: int = 0) -> np.ndarray:
        """[b, k] item indices, best first (-1 padded), of `scores` [b, n_items] for queries start..start+b."""
        stop = start + scores.shape[0]
        # One copy of the ranked columns, already in tie order (column j = item columns[j]); the caller's
        # array is never mutated.
        permuted = np.asarray(scores, dtype=np.float32)[:, self._columns]
        permuted[np.isnan(permuted)] = -np.inf
        lo, hi = self._offsets[start], self._offsets[stop]
        if hi > lo:
            rows = np.repeat(np.arange(stop - start), np.diff(self._offsets[start : stop + 1]))
            columns = self._position[self._excluded[lo:hi]]
            ranked = columns >= 0  # excluded items that are not candidates are not ranked anyway
            permuted[rows[ranked], columns[ranked]] = -np.inf
        return top_k_of_permuted(permuted, k, self._columns)

    def measure(self, ranked: np.ndarray, names: Sequence[str]) -> dict[str, float]:
        """The named metrics ("ndcg@10", "recall@20", "hr@10", "coverage@10") of `ranked` (every
        query's top items); coverage is over the candidates, else the catalog. Only what is named is
        computed: the block search asks for one metric per combination."""
        out: dict[str, float] = {}
        for name in names:
            kind, k = name.split("@")[0], metric_cutoff(name)
            if kind == "coverage":
                out[name] = catalog_coverage(ranked[:, :k], self.pool)
            else:
                out[name] = _METRICS[kind](ranked, self._target_sets, k)
        return out

    def per_query(self, ranked: np.ndarray, metric: str) -> np.ndarray:
        """Each query's value of `metric` ("ndcg@10"; NaN for a query without targets)."""
        kind = metric.split("@")[0]
        if kind not in _METRICS:
            raise ValueError(f"per-query metric: expected one of {sorted(_METRICS)}@k, got {metric!r}")
        return per_user(kind, ranked, self._target_sets, metric_cutoff(metric))

    def halves(self, values: np.ndarray) -> tuple[float, float]:
        """The mean of per-query `values` on each half of the queries (`self.half` False, True)."""
        return mean_over_users(values[~self.half]), mean_over_users(values[self.half])

    @functools.cached_property
    def item_halves(self) -> tuple[tuple[np.ndarray, "RankingJudge"], tuple[np.ndarray, "RankingJudge"]] | None:
        """On a candidate set of at least two items (held-out cold items): a fixed random half of the
        candidates each, as (rows of the queries with a target there, the judge ranking that half's
        items with those targets only); None without candidates.

        Why items: cold validation users share the few held-out items, so a pick that fits those items
        (towers early-stopped on them, mixed into a model that was not) wins on both halves of the users
        alike; judged on items that did not pick it, it cannot win that way. Two tower fits compared with
        each other were both stopped on those items, so their choices keep the halves of the users,
        which are less noisy on a few items."""
        if self.candidates is None:
            return None
        items = np.unique(np.asarray(self.candidates, dtype=np.int64))
        if items.size < 2:
            return None
        second = np.zeros(self.n_items, dtype=bool)
        second[items[np.random.default_rng(HALF_SEED).permutation(items.size) % 2 == 1]] = True
        out = []
        for in_half in (~second & self.allowed, second):
            rows, targets = [], []
            for row, t in enumerate(self.queries.targets):
                t = np.asarray(t, dtype=np.int64)
                if (kept := t[in_half[t]]).size:
                    rows.append(row)
                    targets.append(kept)
            rows = np.asarray(rows, dtype=np.int64)
            queries = EvalQueries(self.queries.user_ids[rows], self.queries.histories.take(rows), targets,
                                  [self.queries.exclude[r] for r in rows])
            out.append((rows, RankingJudge(queries, self.n_items, np.flatnonzero(in_half), self.seed)))
        return out[0], out[1]

    def value_halves(self, scores: np.ndarray, metric: str, by: Literal["users", "items"] = "users") -> tuple[float, float, float]:
        """(all queries, first half, second half) values of `metric` for a full score matrix; the halves
        split the queries, or with `by="items"` on a candidate set its items (`item_halves`)."""
        values = self.per_query(self.top_k(scores, metric_cutoff(metric)), metric)
        if by == "users" or self.item_halves is None:
            return (mean_over_users(values), *self.halves(values))
        (rows_a, judge_a), (rows_b, judge_b) = self.item_halves
        return mean_over_users(values), judge_a.value(scores[rows_a], metric), judge_b.value(scores[rows_b], metric)

    def metrics(self, ranked: np.ndarray, ks: Sequence[int]) -> dict[str, float]:
        """Recall, NDCG, HR and coverage at each k of `ranked`."""
        return self.measure(ranked, [f"{kind}@{k}" for k in sorted(ks) for kind in ("recall", "ndcg", "hr", "coverage")])

    def value(self, scores: np.ndarray, metric: str) -> float:
        """One metric ("ndcg@10") of a full score matrix [n_queries, n_items]."""
        return self.measure(self.top_k(scores, metric_cutoff(metric)), [metric])[metric]

    def rank(self, scorer: Scorer, k: int, batch_size: int = 1024) -> np.ndarray:
        """[n_queries, k] item indices from `scorer`, scoring the queries in chunks of `batch_size`."""
        if batch_size < 1:
            raise ValueError(f"batch_size: expected >= 1, got {batch_size}")
        queries = self.queries
        ranked = np.full((len(queries), k), -1, dtype=np.int64)
        for start in range(0, len(queries), batch_size):
            stop = min(start + batch_size, len(queries))
            raw = scorer.score(queries.histories[start:stop], queries.user_ids[start:stop])
            if raw.shape != (stop - start, self.n_items):
                raise ValueError(f"scorer {scorer.name!r}: expected scores of shape {(stop - start, self.n_items)}, "
                                 f"got {raw.shape}")
            ranked[start:stop] = self.top_k(raw, k, start)
        return ranked

    def evaluate(self, scorer: Scorer, ks: Sequence[int], batch_size: int = 1024) -> dict[str, float]:
        """`metrics` of `scorer`'s ranking at each k, plus n_users."""
        if not ks or min(ks) < 1:
            raise ValueError(f"ks: expected positive cutoffs, got {ks!r}")
        return {**self.metrics(self.rank(scorer, max(ks), batch_size), ks), "n_users": len(self.queries)}


def rank_items(
    scorer: Scorer,
    queries: EvalQueries,
    n_items: int,
    k: int,
    candidates: np.ndarray | None = None,
    batch_size: int = 1024,
    seed: int = TIE_SEED,
) -> np.ndarray:
    """[n_users, k] recommended item indices (-1 padded), scoring users in chunks of `batch_size`."""
    return RankingJudge(queries, n_items, candidates, seed).rank(scorer, k, batch_size)


def evaluate(
    scorer: Scorer,
    queries: EvalQueries,
    n_items: int,
    ks: Sequence[int] = (10, 20),
    candidates: np.ndarray | None = None,
    batch_size: int = 1024,
    seed: int = TIE_SEED,
) -> dict[str, float]:
    """Recall/NDCG/HR/coverage at each k, plus n_users (`RankingJudge`).

    Excluded (history) items and, when `candidates` (item indices) is given, every non-candidate
    item are scored -inf, so they are never recommended. Coverage is over the candidate set when
    given, else over the catalog.
    """
    started = time.perf_counter()
    out = RankingJudge(queries, n_items, candidates, seed).evaluate(scorer, ks, batch_size)
    log.info("evaluated %s on %d users in %.1fs: %s", scorer.name, len(queries), time.perf_counter() - started,
             {key: round(v, 4) for key, v in out.items()})
    return out


def metric_cutoff(metric: str) -> int:
    """The k of a metric name ("ndcg@10" -> 10)."""
    return int(metric.split("@")[1])


def valid_monitor(metric: str) -> str:
    """The logged key of a validation metric ("ndcg@10" -> "valid/ndcg_at_10")."""
    return f"valid/{metric.replace('@', '_at_')}"


def tie_order(n_items: int, seed: int = TIE_SEED) -> np.ndarray:
    """A permutation of item indices: among equal scores the item that appears earlier wins (ordering
    ties by item index would leak catalog order, such as ids assigned by release date, into metrics)."""
    return np.random.default_rng(seed).permutation(n_items)


def top_k_with_ties(scores: np.ndarray, k: int, order: np.ndarray) -> np.ndarray:
    """Top-k item indices per row [b, k], best first; equal scores ordered by `order` (`tie_order`).
    -inf scores (excluded items) are never returned: those slots are -1."""
    return top_k_of_permuted(np.asarray(scores)[:, order], k, order)


def top_k_of_permuted(s: np.ndarray, k: int, order: np.ndarray) -> np.ndarray:
    """`top_k_with_ties` of scores already permuted to tie order (column j = item order[j]; earlier
    columns win ties). Every validation pick ranks through this, so it avoids whole-matrix passes
    where it can: rows whose k-th value is not tied take the k largest directly."""
    b, n = s.shape
    k_eff = min(k, n)
    out = np.full((b, k), -1, dtype=np.int64)
    if b == 0 or k_eff == 0:
        return out
    kth = np.partition(s, n - k_eff, axis=1)[:, n - k_eff]  # k-th largest value per row
    chosen = s >= kth[:, None]
    n_chosen = chosen.sum(axis=1)
    tied = np.flatnonzero(n_chosen > k_eff)  # rows where the k-th value is shared beyond the k slots
    if tied.size:
        rows = s[tied]
        greater, equal = rows > kth[tied, None], rows == kth[tied, None]
        need = k_eff - greater.sum(axis=1)
        chosen[tied] = greater | (equal & (np.cumsum(equal, axis=1) <= need[:, None]))  # the earliest ties
    cols = np.nonzero(chosen)[1].reshape(b, k_eff)  # ascending column = tie order
    chosen_scores = np.take_along_axis(s, cols, axis=1)
    best_first = np.argsort(-chosen_scores, axis=1, kind="stable")
    cols = np.take_along_axis(cols, best_first, axis=1)
    items = order[cols]
    items[np.isneginf(np.take_along_axis(chosen_scores, best_first, axis=1))] = -1
    out[:, :k_eff] = items
    return out
