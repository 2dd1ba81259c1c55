"""MovieLens adapters on the real shared data (skipped when /work/shared/data is absent)."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from recsys.config import DataConfig
from recsys.data import DataValidationError, load_dataset, load_movielens


def test_ml100k_counts_and_schema(ml100k):
    catalog, interactions = ml100k
    assert catalog.height == 1682
    assert interactions.height == 100_000
    assert interactions["user_id"].n_unique() == 943
    assert interactions.columns[:5] == ["user_id", "item_id", "timestamp", "weight", "rating"]
    assert interactions["weight"].to_list()[:50] == interactions["rating"].cast(pl.Float32).to_list()[:50]
    for col in ("year", "director", "cast", "original_title"):
        assert col in catalog.columns


def test_ml100k_titles_text_and_images(ml100k):
    catalog, _ = ml100k
    toy = catalog.filter(pl.col("item_id") == 1).row(0, named=True)
    assert toy["title"] == "Toy Story (1995)"
    assert toy["text"] and "Animation" in toy["categories"]
    shawshank = catalog.filter(pl.col("original_title") == "Shawshank Redemption, The (1994)").row(0, named=True)
    assert shawshank["title"] == "The Shawshank Redemption (1994)"
    assert catalog.filter(pl.col("item_id") == 267)["title"].item() == "unknown"  # no year: original title kept
    assert catalog["text"].null_count() == 1682 - 1463  # README: description coverage 1,463 items
    images = catalog["image"].drop_nulls()
    assert images.len() == 1668  # README: poster coverage 1,668 items
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in images.head(20).to_list())


def test_ml1m_has_zero_timestamps(ml1m_folder):
    catalog, interactions = load_movielens(ml1m_folder)
    assert catalog.height == 3883
    assert interactions.height == 1_000_209
    assert interactions["timestamp"].unique().to_list() == [0]
    assert catalog["text"].null_count() == catalog.height


def test_load_dataset_movielens(ml1m_folder):
    _, interactions = load_dataset(DataConfig(movielens=ml1m_folder.parent / "ml-100k", min_rating=5))
    assert interactions.height == 21_201  # ml-100k ratings of 5
    assert interactions["rating"].min() == 5


def test_not_a_movielens_folder(tmp_path):
    with pytest.raises(DataValidationError, match="not a MovieLens folder"):
        load_movielens(tmp_path)
    with pytest.raises(DataValidationError, match="not found"):
        load_movielens(tmp_path / "missing")
