"""Data layer: schemas + validation, readers (Parquet/CSV/MovieLens) and evaluation splits (polars)."""

from recsys.data.movielens import detect_layout, load_movielens
from recsys.data.readers import (
    DataFileNotFoundError,
    apply_min_rating,
    load_dataset,
    read_catalog,
    read_interactions,
    read_table,
    write_table,
)
from recsys.data.schemas import (
    DataValidationError,
    check_items_in_catalog,
    validate_catalog,
    validate_interactions,
)
from recsys.data.splits import (
    PROTOCOLS,
    Split,
    cold_item_split,
    loo_split,
    make_split,
    order_interactions,
    temporal_split,
)

__all__ = [
    "PROTOCOLS",
    "DataFileNotFoundError",
    "DataValidationError",
    "Split",
    "apply_min_rating",
    "check_items_in_catalog",
    "cold_item_split",
    "detect_layout",
    "load_dataset",
    "load_movielens",
    "loo_split",
    "make_split",
    "order_interactions",
    "read_catalog",
    "read_interactions",
    "read_table",
    "temporal_split",
    "validate_catalog",
    "validate_interactions",
    "write_table",
]
