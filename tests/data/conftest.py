"""Shared fixtures for the data-layer tests: tiny real data (data/sample) and the shared MovieLens folder."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from recsys.paths import shared_data_dir

import polars as pl
import pytest

from recsys.data import load_movielens, read_catalog, read_interactions

REPO = Path(__file__).resolve().parents[2]
SAMPLE_DIR = REPO / "data" / "sample"
SHARED_DATA = shared_data_dir()


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    if not (SAMPLE_DIR / "catalog.parquet").is_file():
        pytest.skip(f"{SAMPLE_DIR} not built; run scripts/build_sample_data.py")
    return SAMPLE_DIR


@pytest.fixture(scope="session")
def sample_catalog(sample_dir: Path) -> pl.DataFrame:
    return read_catalog(sample_dir / "catalog.parquet")


@pytest.fixture(scope="session")
def sample_interactions(sample_dir: Path, sample_catalog: pl.DataFrame) -> pl.DataFrame:
    return read_interactions(sample_dir / "interactions.parquet", sample_catalog)


@pytest.fixture()
def raw_catalog(sample_dir: Path) -> pl.DataFrame:
    """Eight real catalog rows as stored on disk (relative image paths), for building bad files."""
    return pl.read_parquet(sample_dir / "catalog.parquet").head(8)


@pytest.fixture()
def raw_interactions(sample_dir: Path, raw_catalog: pl.DataFrame) -> pl.DataFrame:
    """Real ratings on the eight raw_catalog items."""
    df = pl.read_parquet(sample_dir / "interactions.parquet")
    return df.filter(pl.col("item_id").is_in(raw_catalog["item_id"].implode())).head(200)


@pytest.fixture()
def write(tmp_path: Path) -> Callable[[pl.DataFrame, str], Path]:
    """write(df, "name.parquet" | "name.csv") -> path under tmp_path."""

    def _write(df: pl.DataFrame, name: str) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if name.endswith(".csv"):
            df.write_csv(path)
        else:
            df.write_parquet(path)
        return path

    return _write


def _ml_folder(name: str) -> Path:
    folder = SHARED_DATA / name
    if not folder.is_dir():
        pytest.skip(f"shared MovieLens data not available at {folder}")
    return folder


@pytest.fixture(scope="session")
def ml100k() -> tuple[pl.DataFrame, pl.DataFrame]:
    return load_movielens(_ml_folder("ml-100k"))


@pytest.fixture(scope="session")
def ml1m_folder() -> Path:
    return _ml_folder("ml-1m")
