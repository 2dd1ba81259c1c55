"""Step `evaluate`: for each protocol, train a fresh model on the protocol's split and score it on
the test targets beside the same-run baselines; write report.md / report.json.

The deployed model is never scored here: it saw every interaction, so its numbers would leak.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import polars as pl

from recsys import plots
from recsys.config import PipelineConfig
from recsys.data.splits import Split, make_split
from recsys.encoders.features import ItemFeatures
from recsys.eval.baselines import ContentKNNScorer, PopularityScorer, frozen_content_embeddings
from recsys.eval.protocol import RankingJudge, build_queries
from recsys.eval.report import write_report
from recsys.model.train import fit_two_tower, item_index_of, item_rows, refit_on_everything
from recsys.model.two_tower import ModelScorer
from recsys.tracking import Tracker

logger = logging.getLogger(__name__)


def evaluate_split(
    cfg: PipelineConfig, split: Split, features: ItemFeatures, tracker: Tracker, *, show_progress: bool = True,
    per_query: dict[str, np.ndarray] | None = None,
) -> dict[str, dict[str, float]]:
    """Train on the split (the recipe, or the config as written), then score its test queries with the model and the
    configured baselines. `per_query`, when given, receives each scorer's NDCG@10 per test query (for paired
    comparisons, bench/quality.py)."""
    item_index = item_index_of(np.asarray(features.item_ids))
    n_items = len(item_index)
    candidates = item_rows(split.candidate_items, item_index)
    valid_candidates = item_rows(split.meta.get("valid_candidate_items"), item_index)
    result = fit_two_tower(
        features,
        split.train,
        split.valid,
        cfg,
        make_logger=tracker.lightning_logger,
        show_progress=show_progress,
        valid_candidates=valid_candidates,
    )
    if split.refits:  # the temporal split: validation is the latest window of time before the test
        learned = split.before_test()
        logger.info("%s: refitting the chosen model on train + valid (%d interactions) before the test", split.protocol, learned.height)
        result = refit_on_everything(features, learned, result, make_logger=tracker.lightning_logger, show_progress=show_progress)
    queries = build_queries(split, item_index, "test")
    ks = tuple(cfg.eval.k)
    scorers = [ModelScorer(result.model, result.model.feature_tensors(features))]
    if "popularity" in cfg.eval.baselines:
        scorers.append(PopularityScorer(split.before_test(), item_index))
    if "content_knn" in cfg.eval.baselines:
        scorers.append(ContentKNNScorer(frozen_content_embeddings(features), name="content_knn"))
    metrics: dict[str, dict[str, float]] = {}
    judge = RankingJudge(queries, n_items, candidates)  # what `evaluate` ranks with; kept for the segment plots
    ranked: dict[str, np.ndarray] = {}
    for scorer in scorers:
        started = time.perf_counter()
        ranked[scorer.name] = judge.rank(scorer, max(ks))
        metrics[scorer.name] = {**judge.metrics(ranked[scorer.name], ks), "n_users": len(queries)}
        if per_query is not None:
            per_query[scorer.name] = judge.per_query(ranked[scorer.name], "ndcg@10")
        logger.info("evaluated %s on %d users in %.1fs: %s", scorer.name, len(queries), time.perf_counter() - started,
                    {key: round(v, 4) for key, v in metrics[scorer.name].items()})
        tracker.log_metrics({f"{scorer.name}.{k.replace('@', '_at_')}": v for k, v in metrics[scorer.name].items()})
    popularity = next((s.counts for s in scorers if isinstance(s, PopularityScorer)),
                      PopularityScorer(split.before_test(), item_index).counts)
    plots.log_evaluation_plots(tracker, split.protocol, queries, ranked, popularity, f"ndcg@{min(ks)}")
    metrics["recsys"]["train_seconds"] = round(result.train_seconds, 1)
    metrics["recsys"]["best_epoch"] = result.best_epoch
    metrics["recsys"]["epochs_run"] = result.epochs_run
    metrics["recsys"]["best_valid"] = result.best_metric  # what early stopping (and tuning) looked at
    if result.refit:
        metrics["recsys"]["refit_seconds"] = result.refit["seconds"]
    if result.item_item or result.content_knn:  # what the block and content-kNN picked on validation
        picked = result.picked_metrics()
        metrics["recsys"].update(picked)
        tracker.log_metrics({f"recsys.{key}": value for key, value in picked.items()})
    if result.choices:  # train.tune: what the recipe chose on this split's validation
        metrics["recsys"]["recipe"] = recipe_summary(result)
        metrics["recsys"]["recipe_fits"] = result.recipe_fits
    logger.info("%s: %s", split.protocol, {name: round(m.get("ndcg@10", float("nan")), 4) for name, m in metrics.items()})
    return metrics


def recipe_summary(result) -> str:
    """One line of the recipe's choices that matter most, for reports and benchmark tables."""
    model = result.config.model
    parts = [f"modalities {'+'.join(model.modalities)}", f"{model.user_pooling} pooling", f"dim {model.dim}",
             f"ensemble {model.ensemble_size}", f"identity {'on' if model.item_id_embedding else 'off'}"]
    if model.item_item == "ease":
        parts.append(f"item-item block {'kept' if result.item_item.get('kept') else 'dropped'}")
    if model.content_knn:
        parts.append("content-kNN floor" if result.content_knn.get("floor") else "content-kNN added")
    return ", ".join(parts)


def run_evaluate(
    cfg: PipelineConfig,
    interactions: pl.DataFrame,
    features: ItemFeatures,
    tracker: Tracker,
    out_dir: Path,
    *,
    show_progress: bool = True,
) -> tuple[Path, Path, dict]:
    """Every configured protocol, each as its own nested run; then one report."""
    results: dict[str, dict[str, dict[str, float]]] = {}
    split_meta: dict[str, dict] = {}
    for protocol in cfg.eval.protocols:
        with tracker.step(f"evaluate-{protocol}"):
            split = make_split(protocol, interactions, features.item_ids, cfg.eval)
            split_meta[protocol] = {**split.sizes(), **{k: v for k, v in split.meta.items() if np.isscalar(v)}}
            tracker.log_params({f"split.{k}": v for k, v in split_meta[protocol].items()})
            results[protocol] = evaluate_split(cfg, split, features, tracker, show_progress=show_progress)
    meta = {
        "protocols": split_meta,
        "eval": cfg.eval.model_dump(mode="json"),
        # With the recipe (train.tune) these are what it started from; each protocol's row says what it chose.
        "model": cfg.model.model_dump(mode="json"),
        "train": cfg.train.model_dump(mode="json"),
        **({"recipe": "train.tune: each protocol's model was chosen on its own validation split (column recipe)"}
           if cfg.train.tune else {}),
        "encoders": features.fingerprints,
        "n_items": len(features),
        "n_interactions": interactions.height,
    }
    md_path, json_path = write_report(results, out_dir, meta)
    tracker.log_artifact(md_path, "report")
    tracker.log_artifact(json_path, "report")
    plots.log_protocol_plots(tracker, results, f"ndcg@{min(cfg.eval.k)}")
    return md_path, json_path, results
