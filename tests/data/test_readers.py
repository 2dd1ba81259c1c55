"""Readers: Parquet and CSV give the same validated frames; paths resolve against the file's folder."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from recsys.config import DataConfig
from recsys.data import (
    DataFileNotFoundError,
    DataValidationError,
    load_dataset,
    read_catalog,
    read_interactions,
    read_table,
    write_table,
)


def test_csv_and_parquet_agree(raw_catalog, raw_interactions, write):
    csv_catalog = raw_catalog.with_columns(pl.col("categories").list.join("|"))
    from_csv = read_catalog(write(csv_catalog, "c/catalog.csv"))
    from_parquet = read_catalog(write(raw_catalog, "c/catalog.parquet"))
    assert from_csv.select("item_id", "title", "text", "image", "categories").equals(
        from_parquet.select("item_id", "title", "text", "image", "categories")
    )
    a = read_interactions(write(raw_interactions, "i.csv"), from_csv)
    b = read_interactions(write(raw_interactions, "i.parquet"), from_parquet)
    assert a.equals(b.with_columns(pl.col("rating").cast(a.schema["rating"])))


def test_csv_iso_datetimes_parsed(raw_interactions, tmp_path):
    path = tmp_path / "log.csv"
    raw_interactions.with_columns(pl.from_epoch("timestamp", time_unit="s")).write_csv(path)
    assert read_interactions(path)["timestamp"].to_list() == raw_interactions["timestamp"].to_list()


def test_unsupported_suffix_and_missing_file(tmp_path):
    bad = tmp_path / "catalog.json"
    bad.write_text("{}")
    with pytest.raises(DataValidationError, match=r"catalog\.json: unsupported file type '\.json'"):
        read_table(bad)
    with pytest.raises(DataFileNotFoundError, match=r"nope\.parquet: file not found"):
        read_table(tmp_path / "nope.parquet")
    with pytest.raises(FileNotFoundError):
        read_catalog(tmp_path / "nope.csv")


def test_corrupt_parquet(tmp_path):
    bad = tmp_path / "broken.parquet"
    bad.write_bytes(b"not parquet at all")
    with pytest.raises(DataValidationError, match=r"broken\.parquet: cannot be read as parquet"):
        read_table(bad)


def test_relative_image_paths_resolve_against_catalog_folder(raw_catalog, write, tmp_path):
    images = ["posters/1.jpg", str(tmp_path / "abs.jpg"), "", None, "./x/../y.jpg", "a.jpg", "b.jpg", "c.jpg"]
    path = write(raw_catalog.with_columns(pl.Series("image", images)), "deep/folder/catalog.parquet")
    out = read_catalog(path)["image"].to_list()
    folder = (tmp_path / "deep" / "folder").resolve()
    assert out[0] == str(folder / "posters" / "1.jpg")
    assert out[1] == str(tmp_path / "abs.jpg")
    assert out[2] is None and out[3] is None
    assert out[4] == str(folder / "y.jpg")


def test_sample_images_exist(sample_catalog):
    paths = [Path(p) for p in sample_catalog["image"].drop_nulls().to_list()]
    assert paths and all(p.is_absolute() and p.is_file() for p in paths)


def test_write_table_is_atomic_and_roundtrips(raw_catalog, tmp_path):
    path = write_table(raw_catalog, tmp_path / "out" / "c.parquet")
    assert pl.read_parquet(path).equals(raw_catalog)
    assert [p.name for p in path.parent.iterdir()] == ["c.parquet"]  # no temp file left behind


def test_load_dataset_from_files_with_min_rating(sample_dir, sample_interactions):
    cfg = DataConfig(
        catalog=sample_dir / "catalog.parquet", interactions=sample_dir / "interactions.parquet", min_rating=4
    )
    catalog, interactions = load_dataset(cfg)
    assert catalog.height == 400
    assert interactions["rating"].min() >= 4
    assert interactions.height == sample_interactions.filter(pl.col("rating") >= 4).height


def test_load_dataset_unknown_items(sample_dir, sample_catalog, write):
    small = pl.read_parquet(sample_dir / "catalog.parquet").head(100)
    cat = write(small, "cat.parquet")
    cfg = DataConfig(catalog=cat, interactions=sample_dir / "interactions.parquet")
    with pytest.raises(DataValidationError, match="not in the catalog"):
        load_dataset(cfg)
    _, kept = load_dataset(cfg.model_copy(update={"drop_unknown_items": True}))
    assert set(kept["item_id"].unique().to_list()) <= set(small["item_id"].to_list())


def test_load_dataset_needs_a_source():
    with pytest.raises(DataValidationError, match="data.movielens"):
        load_dataset(DataConfig())


def test_csv_that_is_not_utf8_names_line_column_and_value(tmp_path):
    bad = tmp_path / "catalog.csv"
    bad.write_bytes("item_id,title,text\n1,Toy Story,fun\n2,Heat,caf\xe9 talk\n".encode("latin-1"))
    with pytest.raises(DataValidationError) as err:
        read_table(bad)
    message = str(err.value)
    assert message.startswith(f"{bad}: cannot be read as csv: column 'text': not valid UTF-8 (byte 0xe9) on line 3")
    assert "'caf\\xe9 talk'" in message and "\n" not in message
