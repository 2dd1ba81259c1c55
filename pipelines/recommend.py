"""Step `recommend`: bundle + users -> top-K parquet (user_id, item_id, rank, score), chunked, atomic."""

from __future__ import annotations

import logging
from pathlib import Path

import polars as pl

from recsys.data.readers import read_table
from recsys.data.schemas import DataValidationError
from recsys.live_catalog import LOG_NAME
from recsys.recommender import Recommender

logger = logging.getLogger(__name__)


def read_id_column(path: Path, column: str) -> list:
    """The `column` of a parquet/CSV file as a de-duplicated list, with a clear error when absent."""
    frame = read_table(path)
    if column not in frame.columns:
        raise DataValidationError(f"{path}: column '{column}': missing (found: {', '.join(frame.columns)})")
    if frame[column].null_count():
        rows = frame.with_row_index("row").filter(pl.col(column).is_null())["row"].head(5).to_list()
        raise DataValidationError(f"{path}: column '{column}': {frame[column].null_count()} null value(s); first bad rows (0-based): {rows}")
    return frame[column].unique(maintain_order=True).to_list()


def as_id_type(values: list, id_type: type, path: Path, column: str) -> list:
    """Ids read from a file, in the bundle's id type: ints become strings for a string-id bundle, digit
    strings become ints for an int-id one; anything else is a clear error naming the file and column."""
    if id_type is str:
        return [str(v) for v in values]
    out, bad = [], []
    for value in values:
        if isinstance(value, int) and not isinstance(value, bool):
            out.append(value)
        elif isinstance(value, str) and value.strip().lstrip("-").isdigit():
            out.append(int(value.strip()))
        else:
            bad.append(value)
    if bad:
        raise DataValidationError(
            f"{path}: column '{column}': {len(bad)} value(s) are not integers, but the bundle's {column}s are; "
            f"first: {bad[:5]}"
        )
    return out


def run_recommend(
    bundle_dir: Path,
    out_path: Path,
    *,
    k: int,
    users_path: Path | None = None,
    candidates_path: Path | None = None,
    exclude_seen: bool = False,
    chunk_size: int = 1024,
    recommender: Recommender | None = None,
    show_progress: bool = True,
    live_log: Path | None = None,
) -> Path:
    """All known users (or those in `users_path`) -> `out_path`. Unknown users get popular items.
    Items added or removed through the API count too: the live catalog log (`live_log`, default the
    bundle's live_catalog.jsonl where it exists) is replayed first."""
    if recommender is None:
        live_log = live_log or (Path(bundle_dir) / LOG_NAME)
        if not live_log.exists():
            live_log = None
        recommender = Recommender.from_bundle(bundle_dir, live_log=live_log)
    n_items = len(recommender.index)
    if k > n_items:
        logger.warning("k=%d is more than the %d items in the index; each user gets at most %d", k, n_items, n_items)
    if users_path is not None:
        users = as_id_type(read_id_column(users_path, "user_id"), recommender.user_id_type, users_path, "user_id")
        unknown = [u for u in users if not recommender.has_user(u)]
        if unknown:
            logger.warning("%d of %d users are unknown to the model and get popular items, e.g. %s", len(unknown), len(users), unknown[:5])
    else:
        users = recommender.bundle.users["user_id"].to_list()
    candidates = None
    if candidates_path is not None:
        candidates = as_id_type(read_id_column(candidates_path, "item_id"), recommender.id_type, candidates_path, "item_id")
        missing = [c for c in candidates if not recommender.has_item(c)]
        if missing:
            logger.warning("%d candidate items are not in the index and are ignored, e.g. %s", len(missing), missing[:5])
    path = recommender.write_recommendations(
        users, out_path, k, exclude_seen=exclude_seen, candidates=candidates, chunk_size=chunk_size, show_progress=show_progress
    )
    logger.info("wrote top-%d for %d users to %s", k, len(users), path)
    return path


def summarise(path: Path) -> dict:
    frame = pl.read_parquet(path)
    return {"rows": frame.height, "users": frame["user_id"].n_unique(), "distinct_items": frame["item_id"].n_unique()}
