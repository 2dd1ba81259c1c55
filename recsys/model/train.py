"""Fit a model on ordered interactions, with early stopping on held-out next items.

`fit_two_tower` prepares the training data once (`TrainingData`: histories, popularity, the validation
queries and how they are ranked) and hands it to the components the config composes
(recsys.model.fitting.model_fit); then it scores the reference baselines on the same validation.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import polars as pl
from pytorch_lightning.loggers import Logger

from recsys.config import PipelineConfig
from recsys.data.histories import histories_by_user
from recsys.encoders.features import ItemFeatures
from recsys.eval.protocol import RankingJudge, metric_cutoff, queries_from
from recsys.model.fitting import TrainingData, TrainResult, model_fit, validation_score

__all__ = ["TrainResult", "TrainingData", "fit_two_tower", "item_index_of", "item_rows", "prepare_training_data",
           "refit_on_everything", "repeat_seeds", "validation_baselines", "validation_score"]


def item_index_of(item_ids: np.ndarray) -> dict:
    return {item: i for i, item in enumerate(item_ids.tolist())}


def item_rows(item_ids: np.ndarray | None, item_index: dict) -> np.ndarray | None:
    """Sorted catalog rows of a set of item ids (ids not in the catalog dropped); None stays None,
    which the protocol reads as "rank the whole catalog"."""
    if item_ids is None:
        return None
    return np.asarray(sorted(item_index[i] for i in np.asarray(item_ids).tolist() if i in item_index))


def repeat_seeds(cfg: PipelineConfig, n: int) -> list[int]:
    """train.seed of n independent repeats of a fit (benchmarks' model seeds). An ensemble's members
    take train.seed .. train.seed + K - 1, so repeats step by K (the recipe's largest K when it
    chooses the ensemble) and never share a member."""
    from recsys.model.recipe import ENSEMBLE_LIMIT

    step = cfg.model.ensemble_size
    if cfg.train.tune and "model.ensemble_size" not in cfg.model.model_fields_set:
        step = max(step, ENSEMBLE_LIMIT)
    return [cfg.train.seed + i * step for i in range(n)]


def prepare_training_data(
    features: ItemFeatures, train: pl.DataFrame, valid: pl.DataFrame, cfg: PipelineConfig,
    valid_candidates: np.ndarray | None = None,
) -> TrainingData:
    """Training histories and popularity from `train`; from `valid`, the validation queries (at most
    train.valid_max_users of them, a fixed random sample) ranked among `valid_candidates` (catalog
    rows) when given, else the whole catalog."""
    index = item_index_of(np.asarray(features.item_ids))
    user_ids, sequences = histories_by_user(train, index)
    flat = np.concatenate(sequences) if len(sequences) else np.zeros(0, np.int64)
    popularity = np.bincount(flat, minlength=len(index))
    judge = None
    if not valid.is_empty():
        queries = queries_from(train, valid, index, "validation").subset(cfg.train.valid_max_users, cfg.train.seed)
        if len(queries):
            judge = RankingJudge(queries, len(index), valid_candidates)
    return TrainingData(index, user_ids, sequences, popularity, judge)


def fit_two_tower(
    features: ItemFeatures,
    train: pl.DataFrame,
    valid: pl.DataFrame,
    cfg: PipelineConfig,
    *,
    make_logger: Callable[[str], Logger | None] | None = None,
    show_progress: bool = True,
    valid_candidates: np.ndarray | None = None,
) -> TrainResult:
    """Train on `train` (user_id, item_id, pos[, timestamp]), early-stop on `valid` (held-out items).

    `valid_candidates` (item indices) restricts validation ranking to a subset, e.g. held-out cold
    items, so early stopping watches the quality that matters for that protocol. `make_logger(prefix)`
    gives the Lightning logger of a fit ("" for a single model, "member1" .. "memberK" for ensemble members).
    """
    # The recipe decides train.valid_max_users from the data's shape (every user for logs without a time
    # order): it gets every validation query and takes its own sample (RecipeFit.fit).
    recipe_caps = cfg.train.tune and "valid_max_users" not in cfg.train.model_fields_set
    prepared_cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"valid_max_users": None})}) if recipe_caps else cfg
    data = prepare_training_data(features, train, valid, prepared_cfg, valid_candidates)
    result = model_fit(cfg, make_logger, show_progress).fit(features, data)
    if result.config is None:
        result.config = cfg
    if data.valid is not None:  # the baselines on the queries the model was judged on
        judged = dataclasses.replace(data, valid=data.valid.subset(result.config.train.valid_max_users, cfg.train.seed))
        result.baselines = validation_baselines(features, judged, cfg.train.valid_metric)
    return result


def validation_baselines(features: ItemFeatures, data: TrainingData, metric: str) -> dict[str, float]:
    """`metric` of popularity (training counts) and content-kNN (frozen embeddings) on the validation
    queries the model was early-stopped on, ranked as the model was: what a trained model must beat
    before it is worth serving."""
    from recsys.eval.baselines import ContentKNNScorer, PopularityScorer, frozen_content_embeddings

    scorers = [PopularityScorer.from_counts(data.popularity)]
    if features.text is not None or features.image is not None:
        scorers.append(ContentKNNScorer(frozen_content_embeddings(features)))
    return {scorer.name: data.valid.evaluate(scorer, (metric_cutoff(metric),))[metric] for scorer in scorers}


def refit_on_everything(
    features: ItemFeatures, interactions: pl.DataFrame, chosen: TrainResult, *,
    make_logger: Callable[[str], Logger | None] | None = None, show_progress: bool = True,
) -> TrainResult:
    """The chosen model trained again on every interaction (`interactions` with `pos`), so the served
    model has seen each user's latest ones: the same settings (`chosen.config`), each member for the
    epochs validation picked for it, the item-item block at its picked point; no validation."""
    from recsys.model.fitting import TowersFit
    from recsys.model.item_item_fit import ItemItemFit
    from recsys.model.recipe import Fitted, with_values
    from recsys.model.two_tower import TwoTowerEnsemble

    cfg = chosen.config
    data = prepare_training_data(features, interactions, interactions.clear(), cfg)
    # Each member's best epoch (0-based) on validation; a fit that had no validation ran train.epochs.
    epochs = [e + 1 if e >= 0 else cfg.train.epochs for e in chosen.member_best_epochs or [chosen.best_epoch]]
    members = []
    for k, n_epochs in enumerate(epochs):
        member_cfg = with_values(cfg, {"train.seed": cfg.train.seed + k, "train.epochs": n_epochs})
        logger_k = make_logger(f"refit{k + 1}" if len(epochs) > 1 else "refit") if make_logger else None
        members.append(TowersFit(member_cfg, logger_k, show_progress).fit(features, data))
    towers = members[0]
    if len(members) > 1:
        ensemble = TwoTowerEnsemble([m.model for m in members])
        ensemble.eval()
        towers = dataclasses.replace(towers, model=ensemble, train_seconds=sum(m.train_seconds for m in members),
                                     epochs_run=sum(m.epochs_run for m in members))
    result = towers
    block = chosen.item_item
    prior = block.get("popularity_weight_relative", 0.0)
    if cfg.model.item_item == "ease" and (block.get("kept") or prior):
        pinned = with_values(cfg, {
            "train.item_item_pair_windows": [block["pair_window"]], "train.item_item_l2": [block["l2"]],
            "train.item_item_user_powers": [block.get("user_power", 0.0)],
            "train.item_item_popularity_ridges": [block.get("popularity_ridge", 0.0)],
            "train.item_item_decays": [block["decay"]], "train.item_item_weights": [block["weight_relative"]],
            "train.item_item_popularity_weights": [prior], "train.item_item_popularity_days": [block.get("popularity_days", 0.0)],
            **({"train.item_item_content_l2": [block["content_l2"]],
                "train.item_item_content_norms": ["unit" if block.get("content_unit") else "raw"],
                "train.item_item_content_sharpness": [block.get("content_sharpness", 0.0)]} if "content_l2" in block else {}),
        })
        result = ItemItemFit(Fitted(towers), pinned, keep_block=bool(block.get("kept"))).fit(features, data)
    elif cfg.model.item_item == "ease":  # neither the block nor the prior helped on validation: the towers alone
        cfg = with_values(cfg, {"model.item_item": "none"})
    if cfg.model.content_knn:
        from recsys.model.content_knn_fit import ContentKNNFit

        weight = chosen.content_knn.get("weight_relative", cfg.train.content_knn_weights[0])
        pinned = with_values(cfg, {"train.content_knn_weights": [weight]})
        result = ContentKNNFit(Fitted(result), pinned, decide=False).fit(features, data)
    return dataclasses.replace(
        chosen, model=result.model, config=cfg, train_seconds=chosen.train_seconds + result.train_seconds,
        refit={"interactions": int(data.popularity.sum()), "epochs": epochs,
               "seconds": round(result.train_seconds, 1)},
    )
