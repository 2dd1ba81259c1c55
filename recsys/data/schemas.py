"""Input schemas for catalogs and interaction logs, checked and normalised with polars.

Every later step (encoders, splits, training, serving) relies on the normalised shape produced
here, so bad input fails once, early, with a message naming the file, the column and the first
offending rows instead of failing deep inside training.

Normalised catalog: `item_id` (Int64 or String), `title` (String), `text` (String, nullable),
`image` (absolute path String, nullable), `categories` (List[String]), then any other columns.
Normalised interactions: `user_id`, `item_id` (Int64 or String), `timestamp` (Int64 unix seconds),
`weight` (Float32), `rating` if given, then any other columns.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import polars as pl

log = logging.getLogger(__name__)

MAX_SHOWN_ROWS = 5
ROW_COL = "row"

CATALOG_REQUIRED = ("item_id", "title")
INTERACTIONS_REQUIRED = ("user_id", "item_id", "timestamp")


class DataValidationError(ValueError):
    """Input data breaks the schema; the message names the source file, column and first bad rows."""


def _show_rows(df: pl.DataFrame, mask: pl.Expr | None = None, columns: list[str] | None = None) -> str:
    """Render the first offending rows (0-based data row number in column `row`)."""
    indexed = df.with_row_index(ROW_COL)
    if mask is not None:
        indexed = indexed.filter(mask)
    if columns is not None:
        indexed = indexed.select([ROW_COL, *[c for c in columns if c in indexed.columns]])
    with pl.Config(tbl_rows=MAX_SHOWN_ROWS, tbl_cols=8, fmt_str_lengths=60, tbl_hide_dataframe_shape=True):
        return str(indexed.head(MAX_SHOWN_ROWS))


def _fail(source: str, column: str | None, problem: str, rows: str | None = None) -> DataValidationError:
    where = f"{source}: column {column!r}: " if column else f"{source}: "
    text = where + problem
    if rows:
        text += f"\nfirst offending rows (row = 0-based data row):\n{rows}"
    return DataValidationError(text)


def _require_rows(df: pl.DataFrame, source: str) -> None:
    if df.height == 0:
        raise _fail(source, None, f"no rows (file is empty); columns seen: {df.columns}")


def _require_columns(df: pl.DataFrame, source: str, required: tuple[str, ...]) -> None:
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise _fail(source, missing[0], f"missing required column(s) {missing}; columns present: {df.columns}")


def _is_stringish(dtype: pl.DataType) -> bool:
    return dtype == pl.String or dtype == pl.Categorical or isinstance(dtype, pl.Enum)


def _normalise_id(df: pl.DataFrame, column: str, source: str) -> pl.DataFrame:
    """Integer ids -> Int64, string ids stay String; nulls are an error."""
    dtype = df.schema[column]
    if dtype.is_integer() or dtype == pl.Null:
        df = df.with_columns(pl.col(column).cast(pl.Int64))
    elif _is_stringish(dtype):
        df = df.with_columns(pl.col(column).cast(pl.String))
    else:
        raise _fail(source, column, f"has type {dtype}; expected integer or string ids", _show_rows(df, None, [column]))
    nulls = df[column].null_count()
    if nulls:
        raise _fail(source, column, f"{nulls} null id(s)", _show_rows(df, pl.col(column).is_null(), [column]))
    return df


def _optional_string(df: pl.DataFrame, column: str, source: str) -> pl.DataFrame:
    if column not in df.columns:
        return df.with_columns(pl.lit(None, dtype=pl.String).alias(column))
    dtype = df.schema[column]
    if dtype == pl.Null or _is_stringish(dtype):
        return df.with_columns(pl.col(column).cast(pl.String))
    raise _fail(source, column, f"has type {dtype}; expected string", _show_rows(df, None, [column]))


def _resolve_path(path: str | None, base_dir: Path) -> str | None:
    if path is None or not path.strip():
        return None
    p = Path(path.strip())
    return os.path.normpath(p if p.is_absolute() else base_dir / p)


def _resolve_images(df: pl.DataFrame, source: str, base_dir: Path | None) -> pl.DataFrame:
    df = _optional_string(df, "image", source)
    if df["image"].null_count() == df.height:
        return df
    base = (base_dir if base_dir is not None else Path.cwd()).resolve()
    resolved = [_resolve_path(p, base) for p in df["image"].to_list()]
    return df.with_columns(pl.Series("image", resolved, dtype=pl.String))


def _normalise_categories(df: pl.DataFrame, source: str) -> pl.DataFrame:
    """List[str] kept; a '|'-separated string is split; absent or null -> empty list."""
    if "categories" not in df.columns:
        return df.with_columns(pl.lit([], dtype=pl.List(pl.String)).alias("categories"))
    dtype = df.schema["categories"]
    col = pl.col("categories")
    if _is_stringish(dtype) or dtype == pl.Null:
        col = col.cast(pl.String).str.split("|")
    elif isinstance(dtype, pl.List) and (_is_stringish(dtype.inner) or dtype.inner == pl.Null):
        col = col.cast(pl.List(pl.String))
    else:
        raise _fail(
            source, "categories", f"has type {dtype}; expected list of strings or a '|'-separated string",
            _show_rows(df, None, ["categories"]),
        )
    cleaned = (
        col.list.eval(pl.element().str.strip_chars().filter(pl.element().is_not_null() & (pl.element() != "")))
        .fill_null(pl.lit([], dtype=pl.List(pl.String)))
    )
    return df.with_columns(cleaned.alias("categories"))


def _check_unique(df: pl.DataFrame, column: str, source: str) -> None:
    dup = pl.col(column).is_duplicated()
    n_dup = df.filter(dup)[column].n_unique()
    if n_dup:
        raise _fail(source, column, f"{n_dup} duplicated id(s)", _show_rows(df, dup, [column]))


def _reorder(df: pl.DataFrame, first: list[str]) -> pl.DataFrame:
    return df.select([*first, *[c for c in df.columns if c not in first]])


def validate_catalog(df: pl.DataFrame, source: str, base_dir: Path | None = None) -> pl.DataFrame:
    """Check and normalise a catalog table; `base_dir` resolves relative `image` paths (None = cwd)."""
    _require_rows(df, source)
    _require_columns(df, source, CATALOG_REQUIRED)
    df = _normalise_id(df, "item_id", source)
    _check_unique(df, "item_id", source)
    title_dtype = df.schema["title"]
    if not (_is_stringish(title_dtype) or title_dtype == pl.Null):
        rows = _show_rows(df, None, ["item_id", "title"])
        raise _fail(source, "title", f"has type {title_dtype}; expected string", rows)
    df = df.with_columns(pl.col("title").cast(pl.String))
    bad_title = pl.col("title").is_null() | (pl.col("title").str.strip_chars() == "")
    n_bad = df.filter(bad_title).height
    if n_bad:
        raise _fail(source, "title", f"{n_bad} null or empty title(s)", _show_rows(df, bad_title, ["item_id", "title"]))
    df = _optional_string(df, "text", source)
    df = _resolve_images(df, source, base_dir)
    df = _normalise_categories(df, source)
    return _reorder(df, ["item_id", "title", "text", "image", "categories"])


def _parse_timestamp_strings(df: pl.DataFrame, source: str) -> pl.DataFrame:
    """Text timestamps: unix seconds as digits, or ISO 8601 dates/datetimes (a CSV column that had one
    unparseable value stays text). The error names exactly the rows that parse as neither."""
    text = pl.col("timestamp").cast(pl.String).str.strip_chars()
    parsed = pl.coalesce(
        text.cast(pl.Int64, strict=False),
        text.str.to_datetime(strict=False, time_unit="us").dt.epoch("s"),
        text.str.to_date(strict=False).cast(pl.Datetime("us")).dt.epoch("s"),
    )
    bad = parsed.is_null() & pl.col("timestamp").is_not_null()
    n_bad = df.select(bad.sum()).item()
    if n_bad:
        raise _fail(
            source, "timestamp", f"{n_bad} value(s) are neither unix seconds nor an ISO 8601 date or datetime",
            _show_rows(df, bad, ["user_id", "item_id", "timestamp"]),
        )
    return df.with_columns(parsed.cast(pl.Int64).alias("timestamp"))


def _normalise_timestamp(df: pl.DataFrame, source: str) -> pl.DataFrame:
    """Integer unix seconds -> Int64; datetime/date (or their ISO 8601 text) -> Int64 epoch seconds;
    nulls and unparseable text are errors that name their rows."""
    dtype = df.schema["timestamp"]
    if dtype.is_integer():
        df = df.with_columns(pl.col("timestamp").cast(pl.Int64))
    elif dtype == pl.Date or isinstance(dtype, pl.Datetime):
        df = df.with_columns(pl.col("timestamp").dt.epoch("s").cast(pl.Int64))
    elif _is_stringish(dtype):
        df = _parse_timestamp_strings(df, source)
    else:
        raise _fail(
            source, "timestamp", f"has type {dtype}; expected integer unix seconds, datetime or date",
            _show_rows(df, None, ["user_id", "item_id", "timestamp"]),
        )
    nulls = df["timestamp"].null_count()
    if nulls:
        raise _fail(source, "timestamp", f"{nulls} null timestamp(s)",
                    _show_rows(df, pl.col("timestamp").is_null(), ["user_id", "item_id", "timestamp"]))
    return df


def _numeric(df: pl.DataFrame, column: str, source: str) -> None:
    dtype = df.schema[column]
    if not dtype.is_numeric():
        rows = _show_rows(df, None, ["user_id", "item_id", column])
        raise _fail(source, column, f"has type {dtype}; expected numeric", rows)
    bad = pl.col(column).is_null() | ~pl.col(column).cast(pl.Float64).is_finite()
    n_bad = df.filter(bad).height
    if n_bad:
        rows = _show_rows(df, bad, ["user_id", "item_id", column])
        raise _fail(source, column, f"{n_bad} null or non-finite value(s)", rows)


def validate_interactions(df: pl.DataFrame, source: str) -> pl.DataFrame:
    """Check and normalise an interaction log; weight comes from `weight`, else `rating`, else 1.0."""
    _require_rows(df, source)
    _require_columns(df, source, INTERACTIONS_REQUIRED)
    df = _normalise_id(df, "user_id", source)
    df = _normalise_id(df, "item_id", source)
    df = _normalise_timestamp(df, source)
    if "rating" in df.columns:
        _numeric(df, "rating", source)
    if "weight" in df.columns:
        _numeric(df, "weight", source)
        df = df.with_columns(pl.col("weight").cast(pl.Float32))
    elif "rating" in df.columns:
        df = df.with_columns(pl.col("rating").cast(pl.Float32).alias("weight"))
    else:
        df = df.with_columns(pl.lit(1.0, dtype=pl.Float32).alias("weight"))
    first = ["user_id", "item_id", "timestamp", "weight"] + (["rating"] if "rating" in df.columns else [])
    return _reorder(df, first)


def check_items_in_catalog(
    interactions: pl.DataFrame, catalog: pl.DataFrame, source: str, drop_unknown: bool = False
) -> pl.DataFrame:
    """Fail on (or, with `drop_unknown`, drop and warn about) interactions whose item is not in the catalog."""
    i_type, c_type = interactions.schema["item_id"], catalog.schema["item_id"]
    if i_type != c_type:
        raise _fail(
            source, "item_id",
            f"type {i_type} in the interactions disagrees with type {c_type} in the catalog "
            "(one uses integer ids, the other string ids); make both the same",
        )
    unknown = ~pl.col("item_id").is_in(catalog["item_id"].implode())
    bad = interactions.filter(unknown)
    if bad.height == 0:
        return interactions
    n_items = bad["item_id"].n_unique()
    message = f"{bad.height} interaction(s) on {n_items} item id(s) not in the catalog"
    if not drop_unknown:
        raise _fail(
            source, "item_id", message + " (set data.drop_unknown_items=true to drop them)",
            _show_rows(interactions, unknown, ["user_id", "item_id", "timestamp"]),
        )
    log.warning("%s: dropping %s", source, message)
    return interactions.filter(~unknown)
