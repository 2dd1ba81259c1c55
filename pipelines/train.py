"""Step `train`: features + interactions -> two-tower model -> bundle (index included) -> registry."""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

import polars as pl

from recsys import plots
from recsys.bundle import save_bundle
from recsys.config import PipelineConfig
from recsys.data.readers import data_fingerprint
from recsys.data.schemas import require_sequences
from recsys.data.splits import loo_split, order_interactions
from recsys.encoders.features import ItemFeatures
from recsys.encoders.text import select_text_columns
from recsys.hooks import pause_point
from recsys.index import ItemIndex
from recsys.model.train import TrainResult, fit_two_tower, refit_on_everything
from recsys.model.two_tower import retrieval_items
from recsys.tracking import RegistrationResult, Tracker

logger = logging.getLogger(__name__)


def holdout_last(interactions: pl.DataFrame, seed: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Each user's last interaction (by time, seeded tie-break) is the validation target; the rest trains."""
    split = loo_split(interactions, seed=seed)
    return pl.concat([split.train, split.valid]), split.test


def user_histories(ordered: pl.DataFrame) -> pl.DataFrame:
    """user_id, history (item ids oldest first), history_times (their timestamps: the item-item block
    ages items by them)."""
    return ordered.sort(["user_id", "pos"]).group_by("user_id", maintain_order=True).agg(
        pl.col("item_id").alias("history"), pl.col("timestamp").alias("history_times")
    )


def build_bundle(
    cfg: PipelineConfig,
    out_dir: Path,
    catalog: pl.DataFrame,
    interactions: pl.DataFrame,
    features: ItemFeatures,
    result: TrainResult,
    fingerprint: str | None = None,
) -> Path:
    """Everything serving needs, from a trained model, into `out_dir` (atomically). The bundle keeps the
    config the model was built with (`result.config`: the recipe's resolved one)."""
    cfg = result.config or cfg
    item_vectors, item_bias = result.model.encode_items_with_bias(result.model.feature_tensors(features))
    index = ItemIndex.build(retrieval_items(item_vectors, item_bias), features.item_ids, cfg.index)
    ordered = order_interactions(interactions, cfg.train.seed)
    counts = ordered.group_by("item_id").len("count")
    popularity = (
        catalog.select("item_id")
        .join(counts, on="item_id", how="left")
        .with_columns(pl.col("count").fill_null(0).cast(pl.Int64))
    )
    return save_bundle(
        out_dir,
        config=cfg,
        model=result.model,
        features=features,
        index=index,
        item_vectors=item_vectors,
        item_bias=item_bias,
        users=user_histories(ordered),
        catalog=catalog.select("item_id", "title", "categories"),
        popularity=popularity,
        extra_meta={
            "valid": {result.valid_metric_name: result.best_metric},
            "valid_baselines": result.baselines,
            **({"text_columns": select_text_columns(catalog, cfg.encoders.text.fields).used} if features.text is not None else {}),
            **({"data_fingerprint": fingerprint} if fingerprint else {}),
            **({"item_item": result.item_item} if result.item_item else {}),
            **({"content_knn": result.content_knn} if result.content_knn else {}),
            **({"recipe": result.choices, "recipe_fits": result.recipe_fits} if result.choices else {}),
            **({"refit": result.refit} if result.refit else {}),
            "best_epoch": result.best_epoch,
            "train_seconds": round(result.train_seconds, 2),
            "n_train_users": int(len(result.user_ids)),
            "n_interactions": int(interactions.height),
        },
    )


def run_train(
    cfg: PipelineConfig,
    catalog: pl.DataFrame,
    interactions: pl.DataFrame,
    features: ItemFeatures,
    tracker: Tracker,
    out_dir: Path,
    *,
    register: bool = True,
    show_progress: bool = True,
) -> tuple[Path, TrainResult, RegistrationResult | None]:
    """Choose and validate on each user's last interaction held out, then train the chosen model again
    on every interaction (`refit_on_everything`), bundle, register."""
    require_sequences(interactions, str(cfg.data.interactions or cfg.data.movielens or "interactions"))
    with tracker.step("train"):
        train, valid = holdout_last(interactions, cfg.train.seed)
        tracker.log_params({"train.rows": train.height, "valid.users": valid.height})
        result = fit_two_tower(
            features, train, valid, cfg, make_logger=tracker.lightning_logger, show_progress=show_progress
        )
        record_choices(result, tracker)
        pause_point("train:fitted")
        validated = result
        if not valid.is_empty():
            logger.info("refitting the chosen model on all %d interactions", interactions.height)
            result = refit_on_everything(features, order_interactions(interactions, cfg.train.seed), result,
                                         make_logger=tracker.lightning_logger, show_progress=show_progress)
            tracker.log_metrics({"refit_seconds": result.refit["seconds"]})
            held = next((c["value"] for c in result.choices if c["key"] == "recipe.refit_minutes"), None)
            logger.info("refit on every interaction in %.1f min%s", result.refit["seconds"] / 60,
                        "" if held is None else f" (the recipe's budget held {held:.1f} min for it)")
        # Curves, baselines and segments of the model chosen on validation, on the queries it was judged on.
        plots.log_validation_plots(tracker, features, train, valid, validated)
        tracker.log_metrics(
            {"best_valid": result.best_metric, "best_epoch": result.best_epoch, "train_seconds": result.train_seconds,
             **result.picked_metrics(), **{f"baseline_valid.{name}": value for name, value in result.baselines.items()}}
        )
        report_against_baselines(result)
        fingerprint = data_fingerprint(catalog, interactions)
        tracker.set_tags({"data_fingerprint": fingerprint})
        bundle_dir = build_bundle(cfg, out_dir, catalog, interactions, features, result, fingerprint)
        logger.info("bundle written to %s", bundle_dir)
        plots.log_model_plots(tracker, catalog, features, interactions, result.model, seed=cfg.train.seed)
        registration = None
        if register:  # the registered model carries the bundle as its artifact
            registration = tracker.register_bundle(
                bundle_dir, result.valid_metric_name, result.best_metric, name=cfg.tracking.model_name(cfg.data),
                data_fingerprint=fingerprint, baselines=result.baselines,
            )
        else:
            tracker.log_artifacts(bundle_dir, "bundle")
        return bundle_dir, result, registration


def record_choices(result: TrainResult, tracker: Tracker) -> None:
    """The recipe's choices in the MLflow run: each as a `chosen.` param (the value) and all of them,
    with their reasons, as recipe.json."""
    if not result.choices:
        return
    tracker.log_params({f"chosen.{c['key']}": c["value"] for c in result.choices})
    tracker.log_metrics({"recipe_fits": result.recipe_fits})
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "recipe.json"
        path.write_text(json.dumps(result.choices, indent=2, default=str))
        tracker.log_artifact(path, "recipe")


def report_against_baselines(result: TrainResult) -> None:
    """Log the model beside the same-split baselines; loudly when it does not beat one of them."""
    if not result.baselines:
        return
    table = ", ".join(f"{name} {value:.4f}" for name, value in result.baselines.items())
    losing = result.losing_to()
    if losing:
        logger.warning(
            "THE MODEL DOES NOT BEAT %s ON VALIDATION: %s=%.4f vs baselines %s. It is written and logged, but "
            "will not become the registry's champion; more interactions per user, another config, or the "
            "baseline itself may serve better.",
            " AND ".join(losing).upper(), result.valid_metric_name, result.best_metric, table,
        )
    else:
        logger.info("validation %s=%.4f beats every baseline (%s)", result.valid_metric_name, result.best_metric, table)
