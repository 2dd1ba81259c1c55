"""Read catalogs and interaction logs from Parquet/CSV (or a MovieLens folder) into validated frames.

Readers only parse files; all checking lives in `schemas`, so a table built in memory and a table read
from disk pass the same rules.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import polars as pl

from recsys.config import DataConfig
from recsys.data.schemas import DataValidationError, check_items_in_catalog, validate_catalog, validate_interactions

log = logging.getLogger(__name__)

SUPPORTED_SUFFIXES = (".parquet", ".csv")


class DataFileNotFoundError(DataValidationError, FileNotFoundError):
    """A configured data file does not exist (also a FileNotFoundError)."""


def read_table(path: str | Path) -> pl.DataFrame:
    """Read a .parquet or .csv file (CSV: header row, ISO dates parsed to datetimes)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise DataValidationError(
            f"{path}: unsupported file type {suffix or '(none)'!r}; expected one of {SUPPORTED_SUFFIXES}"
        )
    if not path.is_file():
        raise DataFileNotFoundError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise DataValidationError(f"{path}: file is empty (0 bytes)")
    try:
        if suffix == ".parquet":
            return pl.read_parquet(path)
        return pl.read_csv(path, try_parse_dates=True)
    except (pl.exceptions.PolarsError, OSError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if suffix == ".csv" and ("utf-8" in reason.lower() or "utf8" in reason.lower()):
            reason = _utf8_problem(path) or reason
        raise DataValidationError(f"{path}: cannot be read as {suffix[1:]}: {reason}") from err


def _utf8_problem(path: Path) -> str | None:
    """Where a CSV stops being UTF-8: its line, column and the undecodable value, or None if it is UTF-8."""
    import csv
    import io

    data = path.read_bytes()
    try:
        data.decode("utf-8")
        return None
    except UnicodeDecodeError as err:
        start = data.rfind(b"\n", 0, err.start) + 1
        line_no = data.count(b"\n", 0, err.start) + 1
        end = data.find(b"\n", err.start)
        bad_line = data[start : end if end >= 0 else len(data)].decode("utf-8", errors="backslashreplace")
        byte = data[err.start]
    header = next(csv.reader(io.StringIO(data[: data.find(b"\n")].decode("utf-8", errors="replace"))), [])
    fields = next(csv.reader(io.StringIO(bad_line)), [])
    column = next((header[i] for i, v in enumerate(fields) if "\\x" in v and i < len(header)), None)
    value = next((v for v in fields if "\\x" in v), bad_line)
    where = f"column {column!r}: " if column else ""
    return (f"{where}not valid UTF-8 (byte 0x{byte:02x}) on line {line_no} (data row {line_no - 2}, 0-based): "
            f"'{value[:60]}'; save the file as UTF-8")


def write_table(df: pl.DataFrame, path: str | Path) -> Path:
    """Write Parquet/CSV atomically (temp file in the same folder, then os.replace)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise ValueError(f"{path}: unsupported file type {suffix!r}; expected one of {SUPPORTED_SUFFIXES}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        if suffix == ".parquet":
            df.write_parquet(tmp, compression="zstd")
        else:
            df.write_csv(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_catalog(path: str | Path, columns: dict[str, str] | None = None) -> pl.DataFrame:
    """Read and validate a catalog; relative `image` paths resolve against the file's folder; `columns`
    names the file's own columns (data.columns)."""
    path = Path(path)
    df = validate_catalog(read_table(path), str(path), base_dir=path.resolve().parent, columns=columns)
    log.info("catalog %s: %d items", path, df.height)
    return df


def read_interactions(
    path: str | Path, catalog: pl.DataFrame | None = None, drop_unknown_items: bool = False,
    columns: dict[str, str] | None = None,
) -> pl.DataFrame:
    """Read and validate interactions; with a catalog, unknown items fail (or are dropped if asked);
    `columns` names the file's own columns (data.columns)."""
    path = Path(path)
    df = validate_interactions(read_table(path), str(path), columns=columns)
    if catalog is not None:
        df = check_items_in_catalog(df, catalog, str(path), drop_unknown=drop_unknown_items)
    log.info("interactions %s: %d rows, %d users", path, df.height, df["user_id"].n_unique())
    return df


def apply_min_rating(interactions: pl.DataFrame, min_rating: float | None, source: str) -> pl.DataFrame:
    """Keep interactions with rating >= min_rating (None keeps all)."""
    if min_rating is None:
        return interactions
    if "rating" not in interactions.columns:
        raise DataValidationError(
            f"{source}: column 'rating': data.min_rating={min_rating} is set but there is no rating column"
        )
    kept = interactions.filter(pl.col("rating") >= min_rating)
    log.info("%s: min_rating=%s keeps %d of %d interactions", source, min_rating, kept.height, interactions.height)
    if kept.height == 0:
        raise DataValidationError(f"{source}: column 'rating': no interaction has rating >= {min_rating}")
    return kept


def load_dataset(cfg: DataConfig) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(catalog, interactions) from a MovieLens folder or a catalog + interactions file pair."""
    if cfg.movielens is not None:
        from recsys.data.movielens import load_movielens

        catalog, interactions = load_movielens(cfg.movielens)
        source = str(cfg.movielens)
    else:
        if cfg.catalog is None or cfg.interactions is None:
            raise DataValidationError(
                "config: set data.movielens, or both data.catalog and data.interactions "
                f"(got catalog={cfg.catalog}, interactions={cfg.interactions})"
            )
        catalog = read_catalog(cfg.catalog, cfg.columns)
        interactions = read_interactions(cfg.interactions, columns=cfg.columns)
        source = str(cfg.interactions)
    interactions = check_items_in_catalog(interactions, catalog, source, drop_unknown=cfg.drop_unknown_items)
    interactions = apply_min_rating(interactions, cfg.min_rating, source)
    return catalog, interactions


def data_fingerprint(catalog: pl.DataFrame, interactions: pl.DataFrame) -> str:
    """sha256 of the catalog's items (id, title) and the interactions (user, item, time), order-free:
    two models compare on validation only when this matches (their validation splits are the same)."""
    import hashlib

    digest = hashlib.sha256()
    for frame, columns in ((catalog, ["item_id", "title"]), (interactions, ["user_id", "item_id", "timestamp"])):
        present = [c for c in columns if c in frame.columns]
        digest.update(frame.select(present).sort(present).write_csv().encode())
    return digest.hexdigest()
