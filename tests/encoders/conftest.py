"""Session fixtures for encoder tests: a tiny real ml-100k catalog (the models live in tests/conftest.py)."""

from pathlib import Path

from recsys.paths import shared_data_dir

import polars as pl
import pytest

DATA = shared_data_dir()


@pytest.fixture(scope="session")
def small_catalog() -> pl.DataFrame:
    """First 40 ml-100k items in the catalog schema: item_id, title, text, image (abs path), categories."""
    items = pl.read_parquet(DATA / "ml-100k" / "items.parquet").head(40)
    return items.select(
        pl.col("item_id").cast(pl.Int64),
        "title",
        pl.col("description").alias("text"),
        pl.when(pl.col("poster_file").is_not_null())
        .then(pl.lit(str(DATA) + "/") + pl.col("poster_file"))
        .otherwise(None)
        .alias("image"),
        pl.col("genres").alias("categories"),
    )


@pytest.fixture(scope="session")
def poster_paths(small_catalog: pl.DataFrame) -> list[str]:
    paths = [p for p in small_catalog["image"].to_list() if p]
    assert len(paths) >= 8
    return paths
