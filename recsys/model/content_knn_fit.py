"""`ContentKNNFit`: a fitted model wrapped with content-kNN's scores (`ContentKNNBlend`), and the fit
that decides whether that is worth serving.

The weight (train.content_knn_weights, in units of the model's score spread over content-kNN's) is
searched on the validation queries and kept only if it beats the model alone on each half of validation
(`wins_on_both_halves`; on cold validation the halves split the held-out items, RankingJudge.item_halves:
the model's settings were picked on those same items, so halves of the users, who share them, would both
favour whatever fits them). The floor: a model below content-kNN itself on validation is not shipped; content-kNN
ranks and the model only breaks its near-ties (weight `FLOOR_WEIGHT`). Where neither holds the fit
returns the model unwrapped, so catalogs the towers serve well keep their narrower vectors.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from recsys.config import PipelineConfig
from recsys.encoders.features import ItemFeatures
from recsys.eval.baselines import ContentKNNScorer, frozen_content_embeddings
from recsys.model.fitting import Fit, TrainingData, TrainResult, validation_score
from recsys.model.grid import FLOOR_WEIGHT, Grid, Trial, search, wins_on_both_halves
from recsys.model.two_tower import ContentKNNBlend, ModelScorer

logger = logging.getLogger(__name__)


class ContentKNNFit:
    """The wrapped fit, then content-kNN's weight on top of its model."""

    def __init__(self, inner: Fit, cfg: PipelineConfig, decide: bool = True):
        """`decide`: whether validation may drop the wrapper (the recipe); False keeps it (model.content_knn
        set by the config, or a refit of a model that has it), at weight 0 when no weight wins."""
        self.inner, self.cfg, self.decide = inner, cfg, decide

    def fit(self, features: ItemFeatures, data: TrainingData) -> TrainResult:
        result = self.inner.fit(features, data)
        if features.text is None and features.image is None:
            logger.info("content-kNN: the catalog has no frozen text or image embeddings; not added")
            return result
        model = ContentKNNBlend(result.model)
        model.eval()
        histories = data.sequences[:2000] if data.valid is None else data.valid.queries.histories
        base_scores = ModelScorer(result.model, result.model.feature_tensors(features)).score(histories)
        content_scores = ContentKNNScorer(frozen_content_embeddings(features, model.content_names)).score(histories, None)
        spread = float(base_scores.std() / max(float(content_scores.std()), 1e-12))
        grid = Grid({"weight": tuple(self.cfg.train.content_knn_weights)})
        picked: dict = {"spread": spread}
        if data.valid is None:  # a refit: the weight validation picked (the first value)
            relative, kept = grid.first()["weight"], True
        else:
            metric = self.cfg.train.valid_metric

            def value(point):
                total, first, second = data.valid.value_halves(base_scores + point["weight"] * spread * content_scores, metric,
                                                               by="items")
                return total, (first, second)

            trials = search(grid, value)
            incumbent = Trial({"weight": 0.0}, *value({"weight": 0.0}))
            verdict = wins_on_both_halves(trials, incumbent)
            alone = data.valid.value(content_scores, metric)
            relative, kept = verdict.winner.point["weight"], verdict.kept
            picked.update(model_valid=incumbent.value, content_knn_valid=alone, half_gain=verdict.gain)
            if verdict.winner.value < alone:
                relative, kept = FLOOR_WEIGHT, True
                picked["floor"] = True
            logger.info("content-kNN: model %s=%.4f, content-kNN alone %.4f; %s", metric, incumbent.value, alone,
                        "below content-kNN: content-kNN ranks, the model orders its near-ties" if picked.get("floor")
                        else f"weight {relative:g} x spread kept: it beats the model alone on each half of validation (by at least "
                             f"{verdict.gain:+.4f})" if verdict.kept else "not added: no weight beats the model alone on each half of validation")
        if not kept and self.decide:
            return dataclasses.replace(result, content_knn={**picked, "kept": False, "weight_relative": 0.0})
        model.set_weight(relative * spread)
        picked.update(kept=True, weight_relative=relative, weight=relative * spread)
        blended = validation_score(model, features, data.valid, self.cfg.train.valid_metric) if data.valid is not None else result.best_metric
        return dataclasses.replace(result, model=model, best_metric=blended, content_knn=picked)
