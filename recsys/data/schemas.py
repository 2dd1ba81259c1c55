"""Input schemas for catalogs and interaction logs, checked and normalised with polars.

Every later step (encoders, splits, training, serving) relies on the normalised shape produced
here, so bad input fails once, early, with a message naming the file, the column and the first
offending rows instead of failing deep inside training.

Normalised catalog: `item_id` (Int64 or String), `title` (String), `text` (String, nullable),
`image` (absolute path String, nullable), `categories` (List[String]), then any other columns.
Normalised interactions: `user_id`, `item_id` (Int64 or String), `timestamp` (Int64 unix seconds),
`weight` (Float32), `rating` if given, then any other columns.

An error is one line: `<file>: column '<name>': <problem>; first bad rows (0-based): row 3 (col=value, ...)`.
Two things are repaired with a warning instead of stopping: integer timestamps that are all in
milliseconds (or micro-/nanoseconds) are converted to seconds, and interactions dated more than a day
in the future are dropped (counted). See docs/reliability.md, "Bad input".
"""

from __future__ import annotations

import logging
import os
import time
from datetime import datetime, timezone
from pathlib import Path

import polars as pl

log = logging.getLogger(__name__)

MAX_SHOWN_ROWS = 5
MAX_SHOWN_CHARS = 60
ROW_COL = "row"

CATALOG_REQUIRED = ("item_id", "title")
INTERACTIONS_REQUIRED = ("user_id", "item_id", "timestamp")


class DataValidationError(ValueError):
    """Input data breaks the schema; the message names the source file, column and first bad rows."""


def _cell(value: object) -> str:
    text = repr(value) if isinstance(value, str) else ("null" if value is None else str(value))
    return text if len(text) <= MAX_SHOWN_CHARS else text[: MAX_SHOWN_CHARS - 3] + "..."


def _show_rows(df: pl.DataFrame, mask: pl.Expr | None = None, columns: list[str] | None = None) -> str:
    """The first offending rows on one line: `row 3 (item_id=null), row 7 (...)` (0-based data rows)."""
    indexed = df.with_row_index(ROW_COL)
    if mask is not None:
        indexed = indexed.filter(mask)
    if columns is not None:
        indexed = indexed.select([ROW_COL, *[c for c in columns if c in indexed.columns]])
    shown = []
    for record in indexed.head(MAX_SHOWN_ROWS).iter_rows(named=True):
        row = record.pop(ROW_COL)
        shown.append(f"row {row} (" + ", ".join(f"{k}={_cell(v)}" for k, v in record.items()) + ")")
    return ", ".join(shown)


def _fail(source: str, column: str | None, problem: str, rows: str | None = None) -> DataValidationError:
    where = f"{source}: column {column!r}: " if column else f"{source}: "
    text = where + problem
    if rows:
        text += f"; first bad rows (0-based): {rows}"
    return DataValidationError(text)


def _require_rows(df: pl.DataFrame, source: str) -> None:
    if df.height == 0:
        raise _fail(source, None, f"no rows; columns seen: {df.columns}")


def _require_columns(df: pl.DataFrame, source: str, required: tuple[str, ...]) -> None:
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise _fail(source, missing[0], f"missing required column(s) {missing}; columns present: {df.columns}")


# Names other tools and public data sets give the columns (compared without case, '_', '-' or spaces).
# A file that lacks a column but has exactly one of its names is read with that column renamed (logged);
# `data.columns` names a file's own column explicitly and wins.
COLUMN_ALIASES: dict[str, tuple[str, ...]] = {
    "user_id": ("user", "userid", "customer", "customerid", "visitor", "visitorid", "member", "memberid",
                "client", "clientid", "account", "accountid", "uid"),
    "item_id": ("item", "itemid", "movie", "movieid", "product", "productid", "sku", "article", "articleid",
                "track", "trackid", "book", "bookid", "asin", "contentid", "iid"),
    "timestamp": ("ts", "time", "datetime", "date", "eventtime", "eventtimestamp", "createdat", "unixtime",
                  "timestamps", "eventdate"),
    "title": ("name", "itemname", "productname", "movietitle", "trackname", "booktitle"),
    "rating": ("score", "stars", "ratings"),
    "categories": ("genres", "genre", "category"),
    "image": ("imagepath", "imagefile", "poster", "posterpath", "picture", "img"),
}
CATALOG_ID_ALIASES = ("id",)  # a catalog's plain "id" is its item id (an interaction log's is not)


def _squash(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch not in "_- ")


def adopt_column_names(df: pl.DataFrame, source: str, wanted: tuple[str, ...], columns: dict[str, str] | None = None,
                       extra: dict[str, tuple[str, ...]] | None = None) -> pl.DataFrame:
    """Rename a file's columns to the names recsys reads: first `columns` (canonical name -> the file's
    name, from data.columns), then, for a canonical column the file lacks, the one known alias it has
    (COLUMN_ALIASES). Two aliases of one column are an error that names both."""
    renames: dict[str, str] = {}
    for canonical, own in (columns or {}).items():
        if own in df.columns and canonical not in df.columns:
            renames[own] = canonical
    for canonical in wanted:
        if canonical in df.columns or canonical in renames.values():
            continue
        names = {_squash(a) for a in (*COLUMN_ALIASES.get(canonical, ()), *(extra or {}).get(canonical, ()))}
        found = [c for c in df.columns if _squash(c) in names and c not in renames]
        if len(found) > 1:
            raise _fail(source, canonical, f"missing, and columns {found} could each be it; rename one to "
                        f"'{canonical}' or set data.columns.{canonical}")
        if found:
            renames[found[0]] = canonical
    if renames:
        log.warning("%s: reading %s", source, ", ".join(f"column '{own}' as {canonical}" for own, canonical in renames.items()))
        df = df.rename(renames)
    return df


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


def validate_catalog(df: pl.DataFrame, source: str, base_dir: Path | None = None,
                     columns: dict[str, str] | None = None) -> pl.DataFrame:
    """Check and normalise a catalog table; `base_dir` resolves relative `image` paths (None = cwd);
    `columns` (data.columns) maps canonical names to the file's own (see adopt_column_names)."""
    _require_rows(df, source)
    df = adopt_column_names(df, source, (*CATALOG_REQUIRED, "image", "categories"), columns, {"item_id": CATALOG_ID_ALIASES})
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
    if not (dtype == pl.Date or isinstance(dtype, pl.Datetime)):  # numbers (or digits): which unit?
        df = _to_seconds(df, source)
    return _drop_future(df, source)


# Unix seconds stay below 1e11 until the year 5138, so bigger numbers are a finer unit: the smallest
# unit whose range holds the value (ms up to 1e14, us up to 1e17, else ns).
_UNITS = ((10**11, 1, "seconds"), (10**14, 10**3, "milliseconds"), (10**17, 10**6, "microseconds"),
          (None, 10**9, "nanoseconds"))
FUTURE_TOLERANCE_S = 86_400  # clocks and time zones disagree by hours, not by more than a day


def _now() -> float:
    return time.time()


def _to_seconds(df: pl.DataFrame, source: str) -> pl.DataFrame:
    """Integer timestamps in one finer unit (every value > 1e11: milliseconds, micro- or nanoseconds)
    are divided down to seconds with a warning; a column mixing units is an error naming its rows."""
    magnitude = pl.col("timestamp").abs()
    unit = pl.lit(len(_UNITS) - 1)
    for k in range(len(_UNITS) - 2, -1, -1):
        unit = pl.when(magnitude < _UNITS[k][0]).then(pl.lit(k)).otherwise(unit)
    units = df.select(unit.alias("unit"))["unit"]
    counts = units.value_counts(sort=True)
    if counts.height == 1:
        k = int(counts["unit"][0])
        if k == 0:
            return df
        _, factor, name = _UNITS[k]
        log.warning("%s: column 'timestamp': every value is above 1e11, so they are read as %s and divided by %d "
                    "to unix seconds (%d rows)", source, name, factor, df.height)
        return df.with_columns(pl.col("timestamp").floordiv(factor))
    common = int(counts["unit"][0])
    n_common = int(counts["count"][0])
    raise _fail(
        source, "timestamp",
        f"{df.height - n_common} value(s) are not in {_UNITS[common][2]} like the other {n_common} (above 1e11 reads as "
        "milliseconds or finer, below as unix seconds); use one unit for the whole column",
        _show_rows(df, unit != common, ["user_id", "item_id", "timestamp"]),
    )


def _drop_future(df: pl.DataFrame, source: str) -> pl.DataFrame:
    """Interactions dated more than a day after now are dropped with a warning that counts them: kept,
    they would be every user's newest interaction (the validation target, the recency anchor)."""
    limit = int(_now()) + FUTURE_TOLERANCE_S
    future = pl.col("timestamp") > limit
    n_future = df.select(future.sum()).item()
    if not n_future:
        return df
    when = datetime.fromtimestamp(limit, tz=timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    rows = _show_rows(df, future, ["user_id", "item_id", "timestamp"])
    if n_future == df.height:
        raise _fail(source, "timestamp", f"every one of the {n_future} timestamp(s) is in the future (after {when})",
                    rows)
    log.warning("%s: column 'timestamp': dropping %d of %d interaction(s) dated in the future (after %s, now + 1 day); "
                "first: %s", source, n_future, df.height, when, rows)
    return df.filter(~future)


def _numeric(df: pl.DataFrame, column: str, source: str) -> None:
    dtype = df.schema[column]
    if not dtype.is_numeric():
        # Text: name the values that are not numbers (a CSV column with one such value is read as text).
        not_number = pl.col(column).cast(pl.String).str.strip_chars().cast(pl.Float64, strict=False).is_null()
        mask = not_number & pl.col(column).is_not_null() if _is_stringish(dtype) else None
        n_bad = df.filter(mask).height if mask is not None else df.height
        rows = _show_rows(df, mask, ["user_id", "item_id", column])
        what = f"; {n_bad} value(s) are not numbers" if mask is not None else ""
        raise _fail(source, column, f"has type {dtype}; expected numeric{what}", rows)
    bad = pl.col(column).is_null() | ~pl.col(column).cast(pl.Float64).is_finite()
    n_bad = df.filter(bad).height
    if n_bad:
        rows = _show_rows(df, bad, ["user_id", "item_id", column])
        raise _fail(source, column, f"{n_bad} null or non-finite value(s)", rows)


def validate_interactions(df: pl.DataFrame, source: str, columns: dict[str, str] | None = None) -> pl.DataFrame:
    """Check and normalise an interaction log; weight comes from `weight`, else `rating`, else 1.0.
    `columns` (data.columns) maps canonical names to the file's own (see adopt_column_names). A log
    without any time column is read as one without a time order (every timestamp 0, with a warning):
    the splits then order each user's history at random (seeded) and the recipe treats it as unordered."""
    _require_rows(df, source)
    df = adopt_column_names(df, source, (*INTERACTIONS_REQUIRED, "rating"), columns)
    if "timestamp" not in df.columns and all(c in df.columns for c in ("user_id", "item_id")):
        log.warning("%s: no timestamp column (nor ts, time, date, ...; columns present: %s): the log is read without a "
                    "time order (every timestamp 0); the temporal protocol needs one", source, df.columns)
        df = df.with_columns(pl.lit(0, dtype=pl.Int64).alias("timestamp"))
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


def require_sequences(interactions: pl.DataFrame, source: str) -> None:
    """A model that learns what a user picks next needs one user with 2 or more interactions; when every
    user has one, stop with that said (users with one interaction are fine beside others: they train
    the item side and get served, but are not validation queries)."""
    per_user = interactions.group_by("user_id").len()
    if per_user.height and int(per_user["len"].max()) >= 2:
        return
    raise _fail(
        source, "user_id",
        f"every one of the {per_user.height} user(s) has a single interaction; training learns what a user picks "
        "next from what they picked before, so at least one user needs 2 or more",
        _show_rows(interactions, None, ["user_id", "item_id", "timestamp"]),
    )
