"""Shared session fixtures. Heavy frozen models load once per session; the tiny dataset is a real
slice of the bundled demo sample (data/sample, MovieLens 100K), so tests need no network or GPU."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if "RECSYS_HOME" not in os.environ:  # state a test does not place itself goes to a scratch folder, not the repo
    import atexit
    import shutil
    import tempfile

    os.environ["RECSYS_HOME"] = tempfile.mkdtemp(prefix="recsys-test-home-")
    atexit.register(shutil.rmtree, os.environ["RECSYS_HOME"], True)

from pathlib import Path  # noqa: E402

import polars as pl  # noqa: E402
import pytest  # noqa: E402

from recsys.config import PipelineConfig, load_config  # noqa: E402
from recsys.paths import repo_root  # noqa: E402
from tiny_settings import TINY_TRAINING  # noqa: E402

SAMPLE = repo_root() / "data" / "sample"


@pytest.fixture(scope="session")
def text_encoder():
    """all-MiniLM-L6-v2 from the local wheel (via load_encoders, so library code reuses the instance)."""
    from recsys.config import EncodersConfig
    from recsys.encoders import load_encoders

    return load_encoders(EncodersConfig.model_validate({"image": {"enabled": False}}))["text"]


@pytest.fixture(scope="session")
def image_encoder():
    """EfficientNet-Lite0 from the local wheel (via load_encoders, so library code reuses the instance)."""
    from recsys.config import EncodersConfig
    from recsys.encoders import load_encoders

    return load_encoders(EncodersConfig.model_validate({"text": {"enabled": False}}))["image"]


def tiny_config(tmp: Path, **overrides) -> PipelineConfig:
    """A small, fast config rooted in `tmp` (text encoder only, 2 epochs, no recipe, tracking off)."""
    base = {
        **TINY_TRAINING,
        "encoders.cache_dir": str(tmp / "features"),
        "train.batch_size": 64,
        "tracking.enabled": False,
        "output_dir": str(tmp / "out"),
    }
    base.update(overrides)
    return load_config(None, base)


@pytest.fixture(scope="session")
def make_config():
    """Factory for `tiny_config`, for tests that need their own variant."""
    return tiny_config


@pytest.fixture(scope="session")
def tiny_data() -> tuple[pl.DataFrame, pl.DataFrame]:
    """120 sample items and the interactions on them of 150 users (real MovieLens rows)."""
    from recsys.data import read_catalog, read_interactions

    catalog = read_catalog(SAMPLE / "catalog.parquet").head(120)
    interactions = read_interactions(SAMPLE / "interactions.parquet")
    interactions = interactions.filter(pl.col("item_id").is_in(catalog["item_id"].implode()))
    users = interactions["user_id"].unique().sort().head(150)
    return catalog, interactions.filter(pl.col("user_id").is_in(users.implode()))


@pytest.fixture(scope="session")
def tiny_features(tiny_data, text_encoder, tmp_path_factory):
    from recsys.encoders.features import build_item_features

    catalog, _ = tiny_data
    cfg = tiny_config(tmp_path_factory.mktemp("features"))
    return build_item_features(catalog, cfg.encoders, encoders={"text": text_encoder}, show_progress=False)


@pytest.fixture(scope="session")
def tiny_bundle(tiny_data, tiny_features, tmp_path_factory) -> Path:
    """A real bundle trained for 2 epochs on the tiny data. Treat it as read-only."""
    from pipelines.train import build_bundle, holdout_last
    from recsys.model.train import fit_two_tower

    catalog, interactions = tiny_data
    tmp = tmp_path_factory.mktemp("bundle")
    cfg = tiny_config(tmp)
    train, valid = holdout_last(interactions, cfg.train.seed)
    result = fit_two_tower(tiny_features, train, valid, cfg, show_progress=False)
    return build_bundle(cfg, tmp / "bundle", catalog, interactions, tiny_features, result)
