"""Step `embed`: catalog -> frozen encoders -> item features file (content-hash cache makes re-runs cheap)."""

from __future__ import annotations

import logging
from pathlib import Path

import polars as pl

from recsys.config import PipelineConfig
from recsys.encoders.features import ItemFeatures, build_item_features
from recsys.encoders.store import FeatureStore
from recsys.tracking import Tracker

logger = logging.getLogger(__name__)


def features_path(cfg: PipelineConfig) -> Path:
    return cfg.output_dir / "item_features.npz"


def run_embed(cfg: PipelineConfig, catalog: pl.DataFrame, tracker: Tracker, *, show_progress: bool = True) -> ItemFeatures:
    """Embed every catalog item (only changed items hit the encoders) and write the features file."""
    with tracker.step("embed"):
        store = FeatureStore(cfg.encoders.cache_dir)
        features = build_item_features(catalog, cfg.encoders, store=store, show_progress=show_progress)
        out = features_path(cfg)
        out.parent.mkdir(parents=True, exist_ok=True)
        features.save(out)
        stats = {"items": len(features)}
        for modality in ("text", "image"):
            mask = getattr(features, f"{modality}_mask")
            if mask is not None:
                stats[f"{modality}_coverage"] = float(mask.mean())
        tracker.log_metrics(stats)
        tracker.log_params({f"fingerprint.{k}": v for k, v in features.fingerprints.items()})
        logger.info("embedded %d items -> %s (%s)", len(features), out, stats)
        return features
