"""Step `embed`: catalog -> frozen encoders -> item features file (content-hash cache makes re-runs cheap)."""

from __future__ import annotations

import logging
from pathlib import Path

import polars as pl

from recsys.config import PipelineConfig
from recsys.encoders.features import ItemFeatures, build_item_features
from recsys.encoders.store import FeatureStore
from recsys.encoders.text import free_text_columns, select_text_columns
from recsys.tracking import Tracker

logger = logging.getLogger(__name__)


def features_path(cfg: PipelineConfig) -> Path:
    return cfg.output_dir / "item_features.npz"


def free_text_coverage(catalog: pl.DataFrame, columns: list[str]) -> float:
    """Share of items with a non-empty value in any of `columns` (0 when there are none)."""
    if not columns or catalog.height == 0:
        return 0.0
    present = pl.any_horizontal(
        [pl.col(c).cast(pl.String).str.strip_chars().str.len_chars().fill_null(0) > 0 if catalog.schema[c] != pl.List(pl.String)
         else pl.col(c).list.len().fill_null(0) > 0 for c in columns]
    )
    return float(catalog.select(present.mean()).item())


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
        params = {f"fingerprint.{k}": v for k, v in features.fingerprints.items()}
        if features.text is not None:
            # The title alone makes text_coverage 1.0; this says how many items have more than a title.
            columns = select_text_columns(catalog, cfg.encoders.text.fields)
            stats["free_text_coverage"] = free_text_coverage(catalog, free_text_columns(columns))
            params["text_columns"] = ",".join(columns.used)
        tracker.log_metrics(stats)
        tracker.log_params(params)
        logger.info("embedded %d items -> %s (%s)", len(features), out, stats)
        return features
