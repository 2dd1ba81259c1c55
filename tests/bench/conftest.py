"""Shared fixtures of the peer tests: a tiny real slice of data/sample with fake frozen features."""

from __future__ import annotations

import sys

import numpy as np
import polars as pl
import pytest

from recsys.encoders.features import ItemFeatures
from recsys.paths import repo_root

if str(repo_root()) not in sys.path:
    sys.path.insert(0, str(repo_root()))

SAMPLE = repo_root() / "data" / "sample"


def fake_features(item_ids: np.ndarray, seed: int = 0) -> ItemFeatures:
    rng = np.random.default_rng(seed)
    n = len(item_ids)
    return ItemFeatures(
        item_ids=np.asarray(item_ids),
        text=rng.standard_normal((n, 8)).astype(np.float32),
        text_mask=np.ones(n, bool),
        image=rng.standard_normal((n, 6)).astype(np.float32),
        image_mask=np.ones(n, bool),
        categories=np.zeros((n, 1), np.float32),
        category_vocab=["x"],
    )


@pytest.fixture(scope="module")
def real_slice():
    """100 items of data/sample and their interactions; the last 10 items are kept out of training."""
    from bench.peers import PeerData

    catalog = pl.read_parquet(SAMPLE / "catalog.parquet").sort("item_id").head(100)
    inter = pl.read_parquet(SAMPLE / "interactions.parquet").filter(
        pl.col("item_id").is_in(catalog["item_id"].implode())
    )
    cold = catalog["item_id"].tail(10)
    train = inter.filter(~pl.col("item_id").is_in(cold.implode()))
    ids = catalog["item_id"].to_numpy()
    item_index = {int(i): k for k, i in enumerate(ids.tolist())}
    return PeerData(train, item_index, catalog=catalog, features=fake_features(ids)), train
