"""MovieLens adapters: turn the shared ml-100k / ml-1m folders into the normalised catalog + interactions.

`poster_file` in those tables is relative to the shared data root, i.e. the parent of the MovieLens
folder, so images are resolved against `folder.parent`.

ml-1m ships without timestamps (`ratings_notime.parquet`): every interaction gets timestamp 0, so
`splits.order_interactions` orders each user's history by the seeded random tie-break alone. Leave-one-out
on ml-1m is therefore a random leave-one-out, and a temporal split is impossible (it fails clearly).
"""

from __future__ import annotations

import logging
from pathlib import Path

import polars as pl

from recsys.data.schemas import DataValidationError, validate_catalog, validate_interactions

log = logging.getLogger(__name__)

LAYOUTS = {
    "ml-100k": ("items.parquet", "ratings.parquet"),
    "ml-1m": ("movies.parquet", "ratings_notime.parquet"),
}


def detect_layout(folder: Path) -> str:
    """'ml-100k' or 'ml-1m' from which files the folder holds."""
    for name, files in LAYOUTS.items():
        if all((folder / f).is_file() for f in files):
            return name
    raise DataValidationError(
        f"{folder}: not a MovieLens folder; expected one of "
        + "; ".join(f"{n}: {' + '.join(f)}" for n, f in LAYOUTS.items())
    )


def _catalog(items: pl.DataFrame, source: str, root: Path) -> pl.DataFrame:
    display_title = (
        pl.when(pl.col("clean_title").is_not_null() & pl.col("year").is_not_null())
        .then(pl.col("clean_title") + " (" + pl.col("year").cast(pl.String) + ")")
        .otherwise(pl.col("title"))
    )
    text = pl.col("description") if "description" in items.columns else pl.lit(None, dtype=pl.String)
    df = items.with_columns(
        pl.col("title").alias("original_title"),
        display_title.alias("title"),
        text.alias("text"),
        pl.col("poster_file").alias("image"),
        pl.col("genres").alias("categories"),
    ).drop("poster_file", "genres", *(["description"] if "description" in items.columns else []))
    return validate_catalog(df, source, base_dir=root)


def load_movielens(folder: str | Path) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(catalog, interactions) for an ml-100k or ml-1m folder of the shared data."""
    folder = Path(folder).resolve()
    if not folder.is_dir():
        raise DataValidationError(f"{folder}: MovieLens folder not found")
    layout = detect_layout(folder)
    items_file, ratings_file = (folder / f for f in LAYOUTS[layout])
    catalog = _catalog(pl.read_parquet(items_file), str(items_file), root=folder.parent)
    ratings = pl.read_parquet(ratings_file)
    if "timestamp" not in ratings.columns:
        log.warning(
            "%s: no timestamps; timestamp=0 for all (order within a user = seeded random tie-break)", ratings_file
        )
        ratings = ratings.with_columns(pl.lit(0, dtype=pl.Int64).alias("timestamp"))
    interactions = validate_interactions(ratings.select("user_id", "item_id", "timestamp", "rating"), str(ratings_file))
    log.info("%s (%s): %d items, %d interactions", folder, layout, catalog.height, interactions.height)
    return catalog, interactions
