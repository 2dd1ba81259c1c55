"""Evaluation protocols: seeded tie-breaking (never item-id order), sizes, no leakage, temporal cutoff."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from recsys.config import EvalConfig
from recsys.data import (
    cold_item_split,
    loo_split,
    make_split,
    order_interactions,
    temporal_split,
    validate_interactions,
)


@pytest.fixture()
def one_second_user(sample_interactions) -> pl.DataFrame:
    """A real user's first 8 items, all stamped with one timestamp, plus a second user for context."""
    first = sample_interactions.filter(pl.col("user_id") == sample_interactions["user_id"].min())
    tied = first.head(8).with_columns(pl.lit(880_000_000, dtype=pl.Int64).alias("timestamp"))
    other = sample_interactions.filter(pl.col("user_id") == sample_interactions["user_id"].max()).head(5)
    return pl.concat([tied, other])


def _order_of(df: pl.DataFrame, user: int) -> list[int]:
    return df.filter(pl.col("user_id") == user).sort("pos")["item_id"].to_list()


def test_tie_break_is_seeded_not_item_order(one_second_user):
    user = one_second_user["user_id"].min()
    by_id = sorted(one_second_user.filter(pl.col("user_id") == user)["item_id"].to_list())
    orders = {seed: _order_of(order_interactions(one_second_user, seed), user) for seed in range(5)}
    assert all(sorted(o) == by_id for o in orders.values())
    assert any(o != by_id for o in orders.values()), "tie order must not be item-id order"
    assert len({tuple(o) for o in orders.values()}) > 1, "different seeds should give different tie orders"
    assert _order_of(order_interactions(one_second_user, 3), user) == orders[3]  # reproducible
    shuffled = one_second_user.sample(fraction=1.0, shuffle=True, seed=7)
    assert _order_of(order_interactions(shuffled, 3), user) == orders[3]  # independent of input row order


def test_order_respects_time_and_pos(sample_interactions):
    ordered = order_interactions(sample_interactions, seed=0)
    assert ordered.schema["pos"] == pl.Int64
    check = ordered.group_by("user_id").agg(
        (pl.col("timestamp").diff().drop_nulls() >= 0).all().alias("monotone"),
        (pl.col("pos") == pl.int_range(pl.len())).all().alias("contiguous"),
    )
    assert check["monotone"].all() and check["contiguous"].all()


def test_real_ties_not_in_item_order(sample_interactions):
    """ml-100k files are sorted (user, timestamp, item_id); our order must not reproduce that inside ties."""
    ordered = order_interactions(sample_interactions, seed=0)
    ties = ordered.filter(pl.len().over("user_id", "timestamp") > 1)
    increasing = ties.group_by("user_id", "timestamp").agg((pl.col("item_id").diff().drop_nulls() > 0).all())
    assert 0 < increasing["item_id"].mean() < 0.9


def test_loo_sizes_and_targets(sample_interactions):
    split = loo_split(sample_interactions, seed=1)
    counts = sample_interactions.group_by("user_id").len()
    eligible = counts.filter(pl.col("len") >= 3)
    assert split.test.height == split.valid.height == eligible.height
    assert split.train.height + split.valid.height + split.test.height == sample_interactions.height
    assert split.candidate_items is None
    last = split.train.group_by("user_id").agg(pl.col("pos").max().alias("train_max"))
    joined = last.join(split.valid.select("user_id", pl.col("pos").alias("v")), on="user_id").join(
        split.test.select("user_id", pl.col("pos").alias("t")), on="user_id"
    )
    assert (joined["v"] == joined["train_max"] + 1).all() and (joined["t"] == joined["v"] + 1).all()


def test_loo_short_users_stay_in_train():
    df = validate_interactions(
        pl.DataFrame({"user_id": [1, 1, 2, 2, 2], "item_id": [10, 11, 10, 11, 12], "timestamp": [1, 2, 1, 2, 3]}), "t"
    )
    split = loo_split(df, seed=0)
    assert split.train["user_id"].to_list().count(1) == 2
    assert split.test["item_id"].to_list() == [12] and split.valid["item_id"].to_list() == [11]


def test_cold_item_no_leakage(sample_interactions, sample_catalog):
    extra_ids = [10_001, 10_002]  # catalog items without interactions are never held out
    item_ids = np.concatenate([sample_catalog["item_id"].to_numpy(), extra_ids])
    split = cold_item_split(sample_interactions, item_ids, fraction=0.2, seed=5)
    held = set(split.candidate_items.tolist())
    assert len(held) == round(0.2 * sample_catalog.height)
    assert not held & set(extra_ids)
    assert set(split.test["item_id"].unique().to_list()) == held
    assert not held & set(split.train["item_id"].to_list()) and not held & set(split.valid["item_id"].to_list())
    assert split.test.height == sample_interactions.filter(pl.col("item_id").is_in(list(held))).height
    assert split.train.height + split.valid.height + split.test.height == sample_interactions.height
    warm_max = pl.concat([split.train, split.valid]).group_by("user_id").agg(pl.col("pos").max())
    assert split.valid.select("user_id", "pos").sort("user_id").equals(
        warm_max.filter(pl.col("user_id").is_in(split.valid["user_id"].implode())).sort("user_id")
    )
    again = cold_item_split(sample_interactions, item_ids, fraction=0.2, seed=5)
    assert np.array_equal(again.candidate_items, split.candidate_items)
    other = cold_item_split(sample_interactions, item_ids, fraction=0.2, seed=6)
    assert not np.array_equal(other.candidate_items, split.candidate_items)


def test_cold_item_string_ids(sample_interactions):
    as_str = sample_interactions.with_columns(("m" + pl.col("item_id").cast(pl.String)).alias("item_id"))
    split = cold_item_split(as_str, as_str["item_id"].unique(), fraction=0.1, seed=0)
    assert split.candidate_items.size == round(0.1 * as_str["item_id"].n_unique())
    assert not set(split.candidate_items.tolist()) & set(split.train["item_id"].to_list())
    with pytest.raises(ValueError, match="type"):
        cold_item_split(sample_interactions, ["a", "b"], seed=0)


def test_temporal_cutoff_respected(sample_interactions):
    split = temporal_split(sample_interactions, quantile=0.8, seed=0)
    cutoff = split.meta["cutoff"]
    assert cutoff in sample_interactions["timestamp"].to_list()
    assert split.train["timestamp"].max() < cutoff and split.valid["timestamp"].max() < cutoff
    assert split.test["timestamp"].min() >= cutoff
    history_users = set(split.train["user_id"].to_list()) | set(split.valid["user_id"].to_list())
    assert set(split.test["user_id"].to_list()) <= history_users
    n_after = sample_interactions.filter(pl.col("timestamp") >= cutoff).height
    assert 0 < split.test.height <= n_after
    n_before = sample_interactions.filter(pl.col("timestamp") < cutoff).height
    assert split.train.height + split.valid.height == n_before
    valid_users_train_max = split.train.group_by("user_id").agg(pl.col("timestamp").max())
    joined = split.valid.join(valid_users_train_max, on="user_id", suffix="_train")
    assert (joined["timestamp"] >= joined["timestamp_train"]).all()


def test_temporal_validation_is_the_window_before_the_cut(sample_interactions):
    """Validation mirrors the test one cut earlier, so it rewards what the test rewards (recent items)."""
    split = temporal_split(sample_interactions, quantile=0.8, seed=0)
    valid_cutoff, cutoff = split.meta["valid_cutoff"], split.meta["cutoff"]
    assert split.train["timestamp"].max() < valid_cutoff <= split.valid["timestamp"].min()
    before = sample_interactions.filter(pl.col("timestamp") < cutoff)["timestamp"].to_numpy()
    assert valid_cutoff == int(np.quantile(before, 0.8, method="lower"))
    assert split.valid.height > 0.1 * before.size  # a window of time, not one row per user
    # every model learns train + valid before the test (peers and recsys alike)
    assert split.refits and not loo_split(sample_interactions, 0).refits
    learned = split.before_test()
    assert learned.height == before.size and learned["timestamp"].max() < cutoff
    assert learned.sort(["user_id", "pos"]).equals(learned)


def test_temporal_without_timestamps_fails(sample_interactions):
    flat = sample_interactions.with_columns(pl.lit(0, dtype=pl.Int64).alias("timestamp"))
    with pytest.raises(ValueError, match="no interaction before the cutoff"):
        temporal_split(flat)


def test_make_split_dispatch(sample_interactions, sample_catalog):
    cfg = EvalConfig(cold_fraction=0.1, temporal_quantile=0.7, seed=3, cold_valid_fraction=None)
    assert make_split("loo", sample_interactions, None, cfg).protocol == "loo"
    cold = make_split("cold", sample_interactions, sample_catalog["item_id"], cfg)
    assert cold.meta == {"seed": 3, "fraction": 0.1, "n_cold_items": 40}
    assert make_split("temporal", sample_interactions, None, cfg).meta["quantile"] == 0.7
    with pytest.raises(ValueError, match="unknown protocol 'random'"):
        make_split("random", sample_interactions, None, cfg)
    with pytest.raises(ValueError, match="item_ids"):
        make_split("cold", sample_interactions, None, cfg)


def test_cold_validation_is_cold_and_disjoint(sample_interactions, sample_catalog):
    split = cold_item_split(sample_interactions, sample_catalog["item_id"], fraction=0.2, seed=5, valid_fraction=0.1)
    test_items = set(split.candidate_items.tolist())
    valid_items = set(split.meta["valid_candidate_items"].tolist())
    assert len(valid_items) == round(0.1 * (sample_catalog.height - len(test_items)))
    assert not valid_items & test_items
    train_items = set(split.train["item_id"].to_list())
    # Neither the validation items nor the test items are ever trained on.
    assert not train_items & valid_items and not train_items & test_items
    assert set(split.valid["item_id"].to_list()) <= valid_items
    assert set(split.valid["user_id"].to_list()) <= set(split.train["user_id"].to_list())
    # Every interaction on a validation item by a user with training history is a target, so
    # train + valid + test covers every interaction of those users.
    users = split.train["user_id"].unique().implode()
    on_valid_items = sample_interactions.filter(
        pl.col("item_id").is_in(list(valid_items)) & pl.col("user_id").is_in(users)
    )
    assert split.valid.height == on_valid_items.height
