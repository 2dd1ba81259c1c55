"""Validation rules: each bad input fails with the file, column and offending rows named."""

from __future__ import annotations

import datetime as dt
import logging

import polars as pl
import pytest

from recsys.data import (
    DataValidationError,
    check_items_in_catalog,
    read_catalog,
    read_interactions,
    validate_catalog,
    validate_interactions,
)


def test_valid_catalog_is_normalised(raw_catalog, tmp_path):
    out = validate_catalog(raw_catalog.with_columns(pl.col("item_id").cast(pl.Int32)), "cat.parquet", tmp_path)
    assert out.columns[:5] == ["item_id", "title", "text", "image", "categories"]
    assert out.schema["item_id"] == pl.Int64
    assert "year" in out.columns  # other columns kept
    assert out.height == raw_catalog.height


def test_empty_file_rejected(raw_catalog, write):
    path = write(raw_catalog.head(0), "empty.parquet")
    with pytest.raises(DataValidationError, match=r"empty\.parquet.*no rows"):
        read_catalog(path)


def test_empty_csv_rejected(tmp_path):
    path = tmp_path / "empty.csv"
    path.write_text("")
    with pytest.raises(DataValidationError, match=r"empty\.csv.*empty"):
        read_catalog(path)


def test_missing_column_named(raw_catalog, write):
    path = write(raw_catalog.drop("title"), "notitle.parquet")
    with pytest.raises(DataValidationError, match=r"notitle\.parquet: column 'title': missing"):
        read_catalog(path)


def test_mistyped_id_column(raw_catalog, write):
    path = write(raw_catalog.with_columns(pl.col("item_id").cast(pl.Float64) + 0.5), "floatid.parquet")
    with pytest.raises(DataValidationError, match=r"floatid\.parquet: column 'item_id': has type Float64") as err:
        read_catalog(path)
    assert "1.5" in str(err.value)  # first rows shown


def test_mistyped_timestamp_column(raw_interactions, write):
    path = write(raw_interactions.with_columns(pl.col("timestamp").cast(pl.Float64)), "ts.parquet")
    with pytest.raises(DataValidationError, match=r"ts\.parquet: column 'timestamp': has type Float64"):
        read_interactions(path)


def test_null_item_id_shows_rows(raw_catalog, write):
    bad = raw_catalog.with_columns(
        pl.when(pl.int_range(pl.len()) == 3).then(None).otherwise(pl.col("item_id")).alias("item_id")
    )
    with pytest.raises(DataValidationError, match=r"nullid\.parquet: column 'item_id': 1 null id") as err:
        read_catalog(write(bad, "nullid.parquet"))
    assert "row 3 (item_id=null)" in str(err.value)  # the offending 0-based row number


def test_null_user_id_rejected(raw_interactions):
    bad = raw_interactions.with_columns(pl.lit(None, dtype=pl.Int64).alias("user_id"))
    with pytest.raises(DataValidationError, match=r"column 'user_id': \d+ null id"):
        validate_interactions(bad, "log.csv")


def test_duplicate_item_id(raw_catalog, write):
    dup_id = raw_catalog["item_id"][0]
    bad = pl.concat([raw_catalog, raw_catalog.head(1)])
    with pytest.raises(DataValidationError, match=r"dup\.parquet: column 'item_id': 1 duplicated id") as err:
        read_catalog(write(bad, "dup.parquet"))
    assert str(dup_id) in str(err.value)


def test_null_or_empty_title(raw_catalog):
    bad = raw_catalog.with_columns(
        pl.when(pl.int_range(pl.len()) == 0).then(pl.lit("  ")).when(pl.int_range(pl.len()) == 5).then(None)
        .otherwise(pl.col("title")).alias("title")
    )
    with pytest.raises(DataValidationError, match=r"column 'title': 2 null or empty"):
        validate_catalog(bad, "c.parquet")


def test_string_ids_stay_strings(raw_catalog):
    out = validate_catalog(raw_catalog.with_columns(("m" + pl.col("item_id").cast(pl.String)).alias("item_id")), "c")
    assert out.schema["item_id"] == pl.String


def test_categories_string_split_and_absent(raw_catalog):
    piped = raw_catalog.with_columns(pl.col("categories").list.join("|"))
    out = validate_catalog(piped, "c")
    assert out["categories"].to_list() == raw_catalog["categories"].to_list()
    out = validate_catalog(raw_catalog.drop("categories", "text"), "c")
    assert out["categories"].to_list() == [[]] * raw_catalog.height
    assert out["text"].null_count() == raw_catalog.height


def test_weight_from_weight_rating_or_one(raw_interactions):
    from_rating = validate_interactions(raw_interactions, "x")
    assert from_rating.schema["weight"] == pl.Float32
    assert from_rating["weight"].to_list() == raw_interactions["rating"].cast(pl.Float32).to_list()
    assert "rating" in from_rating.columns
    explicit = validate_interactions(raw_interactions.with_columns(pl.lit(2).alias("weight")), "x")
    assert set(explicit["weight"].to_list()) == {2.0}
    plain = validate_interactions(raw_interactions.drop("rating"), "x")
    assert set(plain["weight"].to_list()) == {1.0}


def test_nan_weight_rejected(raw_interactions):
    bad = raw_interactions.with_columns(pl.lit(float("nan")).alias("weight"))
    with pytest.raises(DataValidationError, match="column 'weight'.*non-finite"):
        validate_interactions(bad, "x")


def test_datetime_and_date_timestamps_become_epoch_seconds(raw_interactions):
    as_dt = raw_interactions.with_columns(pl.from_epoch("timestamp", time_unit="s").alias("timestamp"))
    out = validate_interactions(as_dt, "x")
    assert out.schema["timestamp"] == pl.Int64
    assert out["timestamp"].to_list() == raw_interactions["timestamp"].to_list()
    as_date = raw_interactions.with_columns(pl.lit(dt.date(1998, 1, 2)).alias("timestamp"))
    assert set(validate_interactions(as_date, "x")["timestamp"].to_list()) == {883699200}


def test_unknown_items_raise_or_drop(raw_catalog, raw_interactions, caplog):
    catalog = validate_catalog(raw_catalog, "c")
    log_ = validate_interactions(raw_interactions, "i")
    missing = catalog["item_id"][0]
    n_missing = log_.filter(pl.col("item_id") == missing).height
    assert n_missing > 0
    smaller = catalog.filter(pl.col("item_id") != missing)
    with pytest.raises(DataValidationError, match=rf"i: column 'item_id': {n_missing} interaction\(s\) on 1 item"):
        check_items_in_catalog(log_, smaller, "i", drop_unknown=False)
    with caplog.at_level(logging.WARNING):
        kept = check_items_in_catalog(log_, smaller, "i", drop_unknown=True)
    assert kept.height == log_.height - n_missing
    assert missing not in kept["item_id"].to_list()
    assert f"{n_missing} interaction(s)" in caplog.text


def test_item_id_type_mismatch(raw_catalog, raw_interactions):
    catalog = validate_catalog(raw_catalog.with_columns(pl.col("item_id").cast(pl.String)), "c")
    with pytest.raises(DataValidationError, match="disagrees"):
        check_items_in_catalog(validate_interactions(raw_interactions, "i"), catalog, "i")


def test_text_timestamps_parse_and_garbage_names_its_own_rows():
    from recsys.data.schemas import DataValidationError, validate_interactions

    good = ["2026-11-01T08:00:00"] * 6
    frame = pl.DataFrame({"user_id": ["u"] * 8, "item_id": [f"i{k}" for k in range(8)],
                          "timestamp": [*good, "next tuesday", "1700000000"]})
    with pytest.raises(DataValidationError) as err:
        validate_interactions(frame, "events.csv")
    message = str(err.value)
    assert "events.csv: column 'timestamp': 1 value(s) are neither unix seconds nor an ISO 8601" in message
    assert "next tuesday" in message and "2026-11-01" not in message  # the bad row, not the first five
    parsed = validate_interactions(frame.filter(pl.col("timestamp") != "next tuesday"), "events.csv")
    assert parsed["timestamp"].to_list()[-2:] == [1793520000, 1700000000]


def _events(timestamps: list[int]) -> pl.DataFrame:
    return pl.DataFrame({"user_id": [1] * len(timestamps), "item_id": list(range(len(timestamps))), "timestamp": timestamps})


@pytest.mark.parametrize(("factor", "unit"), [(10**3, "milliseconds"), (10**6, "microseconds"), (10**9, "nanoseconds")])
def test_finer_timestamp_units_become_seconds_with_a_warning(factor, unit, caplog):
    seconds = [881250949, 891717742, 878887116]
    with caplog.at_level(logging.WARNING):
        parsed = validate_interactions(_events([s * factor for s in seconds]), "events.csv")
    assert parsed["timestamp"].to_list() == seconds
    assert f"read as {unit} and divided by {factor}" in caplog.text


def test_mixed_timestamp_units_name_the_odd_rows():
    with pytest.raises(DataValidationError, match=r"column 'timestamp': 1 value\(s\) are not in seconds") as err:
        validate_interactions(_events([881250949, 891717742000, 878887116]), "events.csv")
    assert "row 1 (user_id=1, item_id=1, timestamp=891717742000)" in str(err.value)


def test_future_timestamps_are_dropped_and_counted(monkeypatch, caplog):
    from recsys.data import schemas

    monkeypatch.setattr(schemas, "_now", lambda: 1_700_000_000)
    events = _events([1_699_000_000, 1_700_050_000, 1_800_000_000])  # past, within a day, a year ahead
    with caplog.at_level(logging.WARNING):
        kept = validate_interactions(events, "events.csv")
    assert kept["timestamp"].to_list() == [1_699_000_000, 1_700_050_000]
    assert "dropping 1 of 3 interaction(s) dated in the future" in caplog.text
    with pytest.raises(DataValidationError, match="every one of the 1 timestamp"):
        validate_interactions(_events([1_800_000_000]), "events.csv")


def test_a_model_needs_one_user_with_two_interactions():
    from recsys.data.schemas import require_sequences

    frame = pl.DataFrame({"user_id": [1, 2], "item_id": [5, 6], "timestamp": [1, 2]})
    with pytest.raises(DataValidationError, match=r"events\.csv: column 'user_id': every one of the 2 user"):
        require_sequences(frame, "events.csv")
    require_sequences(pl.concat([frame, frame.head(1)]), "events.csv")


def test_text_in_a_numeric_column_names_the_values_that_are_not_numbers(raw_interactions):
    bad = raw_interactions.with_columns(pl.col("rating").cast(pl.String)).with_columns(
        pl.when(pl.int_range(pl.len()) == 2).then(pl.lit("five")).otherwise(pl.col("rating")).alias("rating")
    )
    with pytest.raises(DataValidationError, match=r"'rating': has type String; expected numeric; 1 value\(s\)") as err:
        validate_interactions(bad, "i.csv")
    assert "row 2 (" in str(err.value) and "rating='five'" in str(err.value)
    assert "\n" not in str(err.value)  # one line


def test_other_column_names_are_read_and_data_columns_wins():
    """Common names of other tools (MovieLens' userId/movieId, a shop's sku/name) are read as recsys'
    columns; data.columns names any other; a name that could be two columns is an error naming both."""
    from recsys.data.schemas import validate_catalog, validate_interactions

    log = pl.DataFrame({"userId": [1, 1, 2], "movieId": [10, 11, 10], "ts": [5, 6, 7], "score": [4.0, 3.0, 5.0]})
    out = validate_interactions(log, "ratings.csv")
    assert out.columns[:5] == ["user_id", "item_id", "timestamp", "weight", "rating"]
    assert out["weight"].to_list() == [4.0, 3.0, 5.0]
    shop = pl.DataFrame({"buyer": ["a", "b"], "sku": ["x", "y"], "when": ["2026-01-01", "2026-01-02"]})
    with pytest.raises(DataValidationError, match="column 'user_id': missing required"):
        validate_interactions(shop, "orders.csv")
    out = validate_interactions(shop, "orders.csv", columns={"user_id": "buyer", "timestamp": "when"})
    assert out["user_id"].to_list() == ["a", "b"] and out["item_id"].to_list() == ["x", "y"]
    assert out["timestamp"].to_list() == [1767225600, 1767312000]
    catalog = validate_catalog(pl.DataFrame({"id": [1, 2], "name": ["A", "B"], "genres": ["x|y", "z"]}), "items.csv")
    assert catalog["item_id"].to_list() == [1, 2] and catalog["title"].to_list() == ["A", "B"]
    assert catalog["categories"].to_list() == [["x", "y"], ["z"]]
    with pytest.raises(DataValidationError, match=r"items.csv: column 'item_id': missing, and columns \['id', 'sku'\] could each be it"):
        validate_catalog(pl.DataFrame({"id": [1], "sku": [2], "title": ["A"]}), "items.csv")


def test_a_log_without_time_is_read_as_unordered():
    from recsys.data.schemas import validate_interactions

    out = validate_interactions(pl.DataFrame({"user_id": [1, 1], "item_id": [3, 4]}), "buys.csv")
    assert out["timestamp"].to_list() == [0, 0]
