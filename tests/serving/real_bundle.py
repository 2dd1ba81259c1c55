"""Build a TINY real bundle from a slice of ml-100k with the real text encoder and real training.

Used by the real-bundle serving tests (and the schemathesis fuzz test). A uniquely named module
(not conftest) so imports cannot pick up another directory's helpers.

Item ids are made strings ("m<id>") while user ids stay integers, so the API's separate parsing of
user ids (`user_id_type`) and item ids (`id_type`) is exercised for real.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import polars as pl

from recsys.paths import shared_data_dir

ML100K = shared_data_dir() / "ml-100k"

N_ITEMS = 150
N_USERS = 120

logging.getLogger("lightning").setLevel(logging.WARNING)
logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)


@dataclass
class TinyBundles:
    first: Path  # bundle trained with seed 1
    second: Path  # same data, seed 2 (a different model_version)
    catalog: pl.DataFrame  # item_id (str), title, text, image, categories
    interactions: pl.DataFrame  # user_id (int), item_id (str), timestamp, rating


def tiny_data() -> tuple[pl.DataFrame, pl.DataFrame]:
    """The N_ITEMS most-rated items and the first N_USERS users who rated them; item ids as str."""
    from recsys.data.movielens import load_movielens

    catalog, interactions = load_movielens(ML100K)
    top = interactions.group_by("item_id").len().sort(["len", "item_id"], descending=[True, False]).head(N_ITEMS)
    interactions = interactions.filter(pl.col("item_id").is_in(top["item_id"].implode()))
    users = interactions["user_id"].unique().sort().head(N_USERS)
    interactions = interactions.filter(pl.col("user_id").is_in(users.implode()))
    catalog = catalog.filter(pl.col("item_id").is_in(top["item_id"].implode()))
    as_str = (pl.lit("m") + pl.col("item_id").cast(pl.String)).alias("item_id")
    return catalog.with_columns(as_str), interactions.with_columns(as_str)


def tiny_config(tmp: Path, seed: int):
    from recsys.config import PipelineConfig

    return PipelineConfig.model_validate(
        {
            "encoders": {"image": {"enabled": False}, "cache_dir": str(tmp / "features")},
            "model": {"modalities": ["text", "categories"], "dim": 32, "head_hidden": 64},
            "train": {"epochs": 1, "batch_size": 256, "num_uniform_negatives": 64, "seed": seed, "patience": 1, "tune": False},
            "tracking": {"enabled": False},
            "output_dir": str(tmp / "run"),
        }
    )


def build_tiny_bundle(tmp: Path, seed: int, data: tuple[pl.DataFrame, pl.DataFrame] | None = None) -> Path:
    """One real bundle over the tiny catalog, trained with `seed`, at tmp/bundle<seed> (features cached in tmp)."""
    from pipelines.train import build_bundle, holdout_last
    from recsys.encoders.features import build_item_features
    from recsys.encoders.store import FeatureStore
    from recsys.model.train import fit_two_tower

    catalog, interactions = data if data is not None else tiny_data()
    cfg = tiny_config(tmp, seed)
    features = build_item_features(catalog, cfg.encoders, store=FeatureStore(tmp / "features"), show_progress=False)
    train, valid = holdout_last(interactions, cfg.train.seed)
    result = fit_two_tower(features, train, valid, cfg, show_progress=False)
    return build_bundle(cfg, tmp / f"bundle{seed}", catalog, interactions, features, result)


def build_tiny_bundles(tmp: Path) -> TinyBundles:
    """Two real bundles (seeds 1 and 2) over the same tiny catalog; ~10-30 s on 2 CPU cores."""
    catalog, interactions = tiny_data()
    first, second = (build_tiny_bundle(tmp, seed, (catalog, interactions)) for seed in (1, 2))
    return TinyBundles(first, second, catalog, interactions)


N_IMAGE_ITEMS = 40


@dataclass
class ImageBundle:
    path: Path
    catalog: pl.DataFrame  # item_id (str), title, text, image (poster path), categories


def build_image_bundle(tmp: Path) -> ImageBundle:
    """A real bundle whose item tower reads posters: the N_IMAGE_ITEMS most-rated items of the tiny slice,
    modalities image + categories (EfficientNet-Lite0 on the shared posters; no text encoder), 1 epoch.
    For the image-bytes test of POST /v1/items; ~10 s on 2 CPU cores."""
    from pipelines.train import build_bundle, holdout_last
    from recsys.config import PipelineConfig
    from recsys.encoders.features import build_item_features
    from recsys.model.train import fit_two_tower

    catalog, interactions = tiny_data()
    top = interactions.group_by("item_id").len().sort(["len", "item_id"], descending=[True, False]).head(N_IMAGE_ITEMS)
    catalog = catalog.filter(pl.col("item_id").is_in(top["item_id"].implode()))
    interactions = interactions.filter(pl.col("item_id").is_in(top["item_id"].implode()))
    cfg = PipelineConfig.model_validate(
        {
            "encoders": {"text": {"enabled": False}, "image": {"batch_size": 8}, "cache_dir": str(tmp / "features")},
            "model": {"modalities": ["image", "categories"], "dim": 16, "head_hidden": 32},
            "train": {"epochs": 1, "batch_size": 256, "num_uniform_negatives": 16, "seed": 1, "patience": 1, "tune": False},
            "tracking": {"enabled": False},
            "output_dir": str(tmp / "run"),
        }
    )
    features = build_item_features(catalog, cfg.encoders, store=None, show_progress=False)
    train, valid = holdout_last(interactions, cfg.train.seed)
    result = fit_two_tower(features, train, valid, cfg, show_progress=False)
    return ImageBundle(build_bundle(cfg, tmp / "bundle_images", catalog, interactions, features, result), catalog)


if __name__ == "__main__":  # `python tests/serving/real_bundle.py OUT_DIR`: build by hand
    import sys
    import time

    start = time.perf_counter()
    bundles = build_tiny_bundles(Path(sys.argv[1]))
    print(bundles.first, bundles.second, f"{time.perf_counter() - start:.1f}s")
