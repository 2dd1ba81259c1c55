"""Evaluation protocols: leave-one-out, cold-item and global-temporal splits of an interaction log.

Ordering rule (shared by all protocols): a user's history is sorted by timestamp, and interactions that
share a timestamp are ordered by a seeded random permutation, never by item id (ml-100k has many ratings
within one second, and ml-1m has no timestamps at all; id order would leak catalog order into "last
item" targets). `pos` is the 0-based position in the user's full ordered sequence over *all* of their
interactions, so sorting any split frame by `pos` gives chronological order; a frame may have gaps in
`pos` (e.g. cold-item train misses the held-out interactions).

Every frame keeps all input columns plus `pos`; `Split.meta` records the protocol's parameters.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from recsys.config import EvalConfig

log = logging.getLogger(__name__)

PROTOCOLS = ("loo", "cold", "temporal")
_REQUIRED = ("user_id", "item_id", "timestamp", "weight")
_TIE = "__tie"
_N = "__n"


@dataclass
class Split:
    """Train/valid/test frames of one protocol; `candidate_items` None = the whole catalog is the candidate set."""

    protocol: str
    train: pl.DataFrame
    valid: pl.DataFrame
    test: pl.DataFrame
    candidate_items: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def sizes(self) -> dict[str, int]:
        return {"train": self.train.height, "valid": self.valid.height, "test": self.test.height}

    @property
    def refits(self) -> bool:
        """Models learn train + valid again, with what validation picked, before the test (temporal)."""
        return bool(self.meta.get("refit_before_test"))

    def before_test(self) -> pl.DataFrame:
        """The rows every model has learned from when it is tested: train, plus valid when `refits`
        (in `pos` order per user)."""
        if not self.refits:
            return self.train
        return pl.concat([self.train, self.valid], how="vertical_relaxed").sort(["user_id", "pos"])


def _check_columns(df: pl.DataFrame) -> None:
    missing = [c for c in _REQUIRED if c not in df.columns]
    if missing:
        raise ValueError(
            f"interactions: missing column(s) {missing} (validate with recsys.data.validate_interactions first)"
        )


def order_interactions(df: pl.DataFrame, seed: int) -> pl.DataFrame:
    """Sort by (user_id, timestamp, seeded random tie-break) and add Int64 `pos` within each user.

    Rows are first put in a canonical order so that the random key given to each row, and hence the
    result, depends only on the data and the seed, not on the input row order. The final order inside a
    timestamp tie is the random permutation, not the canonical (item id) order.
    """
    _check_columns(df)
    df = df.drop("pos", strict=False)
    canonical = df.sort(["user_id", "timestamp", "item_id"], maintain_order=True)
    tie = np.random.default_rng(seed).permutation(canonical.height)
    return (
        canonical.with_columns(pl.Series(_TIE, tie, dtype=pl.Int64))
        .sort(["user_id", "timestamp", _TIE])
        .drop(_TIE)
        .with_columns(pl.int_range(pl.len(), dtype=pl.Int64).over("user_id").alias("pos"))
    )


def _last_two_out(ordered: pl.DataFrame, min_count: int = 3) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """Per user (rows sorted by pos): last -> third frame, the one before -> second, rest -> first.

    Users with fewer than `min_count` rows stay wholly in the first frame.
    """
    rank = pl.int_range(pl.len(), dtype=pl.Int64).over("user_id")
    n = pl.len().over("user_id")
    tagged = ordered.sort(["user_id", "pos"]).with_columns(rank.alias("__r"), n.alias(_N))
    eligible = pl.col(_N) >= min_count
    last = eligible & (pl.col("__r") == pl.col(_N) - 1)
    before_last = eligible & (pl.col("__r") == pl.col(_N) - 2)
    drop = ["__r", _N]
    return (
        tagged.filter(~last & ~before_last).drop(drop),
        tagged.filter(before_last).drop(drop),
        tagged.filter(last).drop(drop),
    )


def loo_split(interactions: pl.DataFrame, seed: int) -> Split:
    """Leave-one-out: each user's last interaction -> test, the one before -> valid (users with >= 3)."""
    train, valid, test = _last_two_out(order_interactions(interactions, seed))
    split = Split("loo", train, valid, test, None, {"seed": seed})
    log.info("loo split: %s", split.sizes())
    return split


def _as_series(item_ids: Sequence[Any] | np.ndarray | pl.Series) -> pl.Series:
    if isinstance(item_ids, pl.Series):
        return item_ids.rename("item_id")
    return pl.Series("item_id", item_ids.tolist() if isinstance(item_ids, np.ndarray) else list(item_ids))


def cold_item_split(
    interactions: pl.DataFrame,
    item_ids: Sequence[Any] | np.ndarray | pl.Series,
    fraction: float = 0.2,
    seed: int = 42,
    valid_fraction: float | None = None,
) -> Split:
    """Hold out a seeded `fraction` of catalog items; test = all their interactions (cold-start items).

    With `valid_fraction`, validation is cold too: that fraction of the *warm* items is also held out
    of training, and every interaction on them (by users with training history) is a validation
    target, ranked among those items only (`meta["valid_candidate_items"]`). Early stopping and tuning then watch
    the quality that this protocol measures, never the test items.

    Held-out items are drawn among catalog items with >= 1 interaction (round(fraction * that count),
    at least 1), so the test set is never empty and `fraction` means a fraction of the *interacted*
    catalog. Warm interactions are split leave-one-out style: each user's last warm interaction -> valid
    (users with >= 3 warm interactions), the rest -> train. There is no warm test: the test is the
    cold one, scored against `candidate_items` (the held-out ids). Test users may have no train history;
    evaluators decide whether to score them.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"cold_item_split: fraction must be in (0, 1), got {fraction}")
    ordered = order_interactions(interactions, seed)
    catalog_ids = _as_series(item_ids)
    if catalog_ids.dtype != ordered.schema["item_id"] and not (
        catalog_ids.dtype.is_integer() and ordered.schema["item_id"].is_integer()
    ):
        raise ValueError(
            f"cold_item_split: catalog item ids have type {catalog_ids.dtype}, interactions item_id has type "
            f"{ordered.schema['item_id']}"
        )
    catalog_ids = catalog_ids.cast(ordered.schema["item_id"])
    interacted = ordered["item_id"].unique()
    pool = np.sort(catalog_ids.filter(catalog_ids.is_in(interacted.implode())).unique().to_numpy())
    if pool.size < 2:
        raise ValueError(f"cold_item_split: need >= 2 catalog items with interactions, found {pool.size}")
    n_hold = min(max(1, round(fraction * pool.size)), pool.size - 1)
    held = np.sort(np.random.default_rng(seed).choice(pool, size=n_hold, replace=False))
    is_cold = pl.col("item_id").is_in(pl.Series(held, dtype=ordered.schema["item_id"]).implode())
    test = ordered.filter(is_cold)
    warm = ordered.filter(~is_cold)
    meta: dict[str, Any] = {"seed": seed, "fraction": fraction, "n_cold_items": int(n_hold)}
    if valid_fraction:
        if not 0.0 < valid_fraction < 1.0:
            raise ValueError(f"cold_item_split: valid_fraction must be in (0, 1), got {valid_fraction}")
        warm_pool = np.setdiff1d(pool, held)
        n_valid = min(max(1, round(valid_fraction * warm_pool.size)), warm_pool.size - 1)
        valid_items = np.sort(np.random.default_rng(seed + 1).choice(warm_pool, size=n_valid, replace=False))
        is_valid_item = pl.col("item_id").is_in(pl.Series(valid_items, dtype=ordered.schema["item_id"]).implode())
        train = warm.filter(~is_valid_item)
        users_with_history = train["user_id"].unique().implode()
        # Every interaction on a validation item is a validation target (as the test does for the
        # held-out items), so train + valid is still each user's whole warm history at test time.
        valid = warm.filter(is_valid_item & pl.col("user_id").is_in(users_with_history)).sort(["user_id", "pos"])
        meta.update({"valid_fraction": valid_fraction, "n_valid_items": int(n_valid), "valid_candidate_items": valid_items})
    else:
        train_a, train_b, valid = _last_two_out(warm)  # last warm -> valid; the one before stays in train
        train = pl.concat([train_a, train_b]).sort(["user_id", "pos"])
    split = Split("cold", train, valid, test, held, meta)
    log.info("cold split: %d of %d interacted items held out, %s", n_hold, pool.size, split.sizes())
    return split


def temporal_split(interactions: pl.DataFrame, quantile: float = 0.8, seed: int = 42) -> Split:
    """Global time cutoff at the `quantile` of timestamps (an actual timestamp, numpy method 'lower').

    test = interactions at/after the cutoff of users with >= 1 interaction before it (others' post-cutoff
    rows are dropped: no history to predict from). Validation mirrors the test one step earlier: the
    same quantile of the before-cutoff timestamps is a second cutoff, and the interactions between the
    two are validation (users without history before the second cutoff are not queried, as in test,
    but their rows are kept for the refit); what is before the second cutoff is train. So validation
    rewards what the test rewards (what is bought next, recent items included), and
    `meta["refit_before_test"]` asks every model to learn train + valid again with its picked settings
    before the test: one trained only up to the second cutoff would be stale.
    """
    if not 0.0 < quantile < 1.0:
        raise ValueError(f"temporal_split: quantile must be in (0, 1), got {quantile}")
    ordered = order_interactions(interactions, seed)
    before, after, cutoff = _time_cut(ordered, quantile)
    if before.height == 0:
        raise ValueError(
            f"temporal_split: no interaction before the cutoff {cutoff} (quantile {quantile}); "
            "timestamps are all equal or missing (ml-1m has none) - use the loo or cold protocol"
        )
    test = after.filter(pl.col("user_id").is_in(before["user_id"].unique().implode()))
    train, valid, valid_cutoff = _time_cut(before, quantile)
    if train.height == 0 or not valid["user_id"].is_in(train["user_id"].unique().implode()).any():
        raise ValueError(
            f"temporal_split: nothing to validate on before the cutoff {cutoff}: no user has interactions on both "
            f"sides of the validation cutoff (quantile {quantile} of the {before.height} earlier interactions)"
        )
    split = Split("temporal", train, valid, test, None,
                  {"seed": seed, "quantile": quantile, "cutoff": cutoff, "valid_cutoff": valid_cutoff, "refit_before_test": True})
    log.info(
        "temporal split: cutoff %d, validation from %d, %d post-cutoff rows of users without history dropped, %s",
        cutoff, valid_cutoff, after.height - test.height, split.sizes(),
    )
    return split


def _time_cut(ordered: pl.DataFrame, quantile: float) -> tuple[pl.DataFrame, pl.DataFrame, int]:
    """(rows before the `quantile` timestamp, rows at or after it, that timestamp)."""
    cutoff = int(np.quantile(ordered["timestamp"].to_numpy(), quantile, method="lower"))
    return ordered.filter(pl.col("timestamp") < cutoff), ordered.filter(pl.col("timestamp") >= cutoff), cutoff


def make_split(
    protocol: str,
    interactions: pl.DataFrame,
    item_ids: Sequence[Any] | np.ndarray | pl.Series | None,
    cfg: EvalConfig,
) -> Split:
    """Dispatch on the protocol name ('loo', 'cold', 'temporal') with parameters from EvalConfig."""
    if protocol == "loo":
        return loo_split(interactions, cfg.seed)
    if protocol == "cold":
        if item_ids is None:
            raise ValueError("make_split('cold'): item_ids (all catalog item ids) are required")
        return cold_item_split(interactions, item_ids, cfg.cold_fraction, cfg.seed, valid_fraction=cfg.cold_valid_fraction)
    if protocol == "temporal":
        return temporal_split(interactions, cfg.temporal_quantile, cfg.seed)
    raise ValueError(f"unknown protocol {protocol!r}; expected one of {PROTOCOLS}")
