"""How each scoring component is fit: one contract, `fit(features, data) -> TrainResult`.

A component owns its own fit, and a wrapper owns the fit of what it wraps (as `implicit` wraps a model
in another that owns its fit): `EnsembleFit` fits its members, `ItemItemFit`
(recsys.model.item_item_fit) fits the towers it wraps and then its block. `model_fit(cfg)` composes
them from the config; `recsys.model.train.fit_two_tower` prepares the data once and calls it.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import pytorch_lightning as pl_lightning
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.loggers import Logger

from recsys.config import PipelineConfig
from recsys.data.histories import Histories
from recsys.encoders.features import ItemFeatures
from recsys.eval.metrics import mean_over_users
from recsys.eval.protocol import RankingJudge, metric_cutoff, valid_monitor
from recsys.model.datamodule import SequenceDataModule
from recsys.model.grid import Trial
from recsys.model.modalities import feature_widths
from recsys.model.module import TwoTowerModule
from recsys.model.negatives import negative_sampler
from recsys.model.teacher import DistillationTerm, ease_weights
from recsys.model.two_tower import ModelScorer, RetrievalModel, TwoTowerEnsemble, TwoTowerModel

logger = logging.getLogger(__name__)


@dataclass
class TrainingData:
    """What every component's fit reads, prepared once (shared by ensemble members and the block)."""

    index: dict  # item id -> catalog row
    user_ids: np.ndarray  # the training users, in the order of `sequences`
    sequences: Histories  # their training histories (catalog rows, oldest first; timestamps where logged)
    popularity: np.ndarray  # training interactions per catalog row
    valid: RankingJudge | None  # the validation queries and the one way they are ranked; None: no validation
    _teachers: dict = field(default_factory=dict, repr=False)

    def ease_teacher(self, l2: float, max_items: int):
        """The EASE weights of the training sequences (computed once per ridge)."""
        if l2 not in self._teachers:
            self._teachers[l2] = ease_weights(self.sequences, len(self.index), l2, max_items)
        return self._teachers[l2]


@dataclass
class TrainResult:
    """For an ensemble (model.ensemble_size > 1): best_metric is the ensemble's own validation score,
    best_epoch the members' mean, epochs_run and train_seconds their sums, and history holds every
    member's epochs (with a "member" key, 1..K as in the logs and the MLflow keys)."""

    model: RetrievalModel
    user_ids: np.ndarray  # the training users
    best_metric: float
    best_epoch: int
    epochs_run: int
    train_seconds: float
    valid_metric_name: str
    history: list[dict] = field(default_factory=list)
    member_best_epochs: list[int] = field(default_factory=list)
    # model.item_item: what was picked on validation (ridge, decay, weight) and the towers' own score.
    item_item: dict = field(default_factory=dict)
    # model.content_knn (or the recipe's try of it): the weight picked on validation, kept or not, and why.
    content_knn: dict = field(default_factory=dict)
    # The same validation metric for the reference scorers (popularity, content_knn), same queries.
    baselines: dict = field(default_factory=dict)
    # The config the model was built with: the recipe's resolved one (train.tune), else the given one.
    config: PipelineConfig | None = None
    # What the recipe chose and why ({"key", "value", "reason"} each), and how many fits it ran.
    choices: list[dict] = field(default_factory=list)
    recipe_fits: int = 0
    # `recsys train`: the deployed model was refit on every interaction (interactions, epochs, seconds).
    refit: dict = field(default_factory=dict)

    def losing_to(self) -> list[str]:
        """The baselines this model does not beat on validation (empty: it beats them all)."""
        return [name for name, value in self.baselines.items() if not self.best_metric > value]

    def picked_metrics(self) -> dict[str, float]:
        """What the item-item block and content-kNN picked on validation, as numbers, for MLflow and the
        benchmark tables ("item_item_l2", "content_knn_weight", ...)."""
        return {f"{prefix}_{key}": float(value) for prefix, picked in (("item_item", self.item_item), ("content_knn", self.content_knn))
                for key, value in picked.items()}


class Fit(Protocol):
    def fit(self, features: ItemFeatures, data: TrainingData) -> TrainResult: ...


def validation_score(model: RetrievalModel, features: ItemFeatures, judge: RankingJudge, metric: str) -> float:
    """`metric` ("ndcg@10") of `model` on the validation queries of `judge`: what early stopping and
    every pick on validation read, for any model, ranked exactly as test ranks."""
    return validation_trial(model, features, judge, metric).value


def validation_trial(model: RetrievalModel, features: ItemFeatures, judge: RankingJudge, metric: str) -> Trial:
    """`model`'s validation value of `metric`, on all queries and on each half (what `crossfit` compares)."""
    scorer = ModelScorer(model, model.feature_tensors(features))
    values = judge.per_query(judge.rank(scorer, metric_cutoff(metric)), metric)
    return Trial({}, mean_over_users(values), judge.halves(values))


class _KeepBest(Callback):
    """Keeps the best weights in memory and stops after `patience` epochs without improvement. Each
    history entry records "seconds": wall time from the start of the fit to the end of that epoch's
    validation (or of its training, without validation), for time-to-quality curves."""

    def __init__(self, monitor: str, patience: int):
        self.monitor, self.patience = monitor, patience
        self.best, self.best_epoch = -float("inf"), -1
        self.best_state: dict | None = None
        self.history: list[dict] = []
        self.started = time.perf_counter()

    def on_fit_start(self, trainer, module) -> None:
        self.started = time.perf_counter()

    def _entry(self, epoch: int) -> dict:
        if not self.history or self.history[-1]["epoch"] != epoch:
            self.history.append({"epoch": epoch})
        return self.history[-1]

    def on_validation_end(self, trainer, module) -> None:
        # on_validation_end runs after the module has logged this epoch's validation metrics.
        if trainer.sanity_checking:
            return
        entry = self._entry(trainer.current_epoch)
        entry.update({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("valid/")})
        entry["seconds"] = round(time.perf_counter() - self.started, 3)
        value = entry.get(self.monitor)
        if value is None:
            return
        if value > self.best:
            self.best, self.best_epoch = value, trainer.current_epoch
            self.best_state = copy.deepcopy(module.model.state_dict())
        elif trainer.current_epoch - self.best_epoch >= self.patience:
            logger.info("early stop at epoch %d: best %s=%.4f at epoch %d", trainer.current_epoch, self.monitor, self.best, self.best_epoch)
            trainer.should_stop = True

    def on_train_epoch_end(self, trainer, module) -> None:
        for key, value in trainer.callback_metrics.items():
            if key.startswith("train/"):  # the loss, and each optional term's part
                self._entry(trainer.current_epoch)[key] = float(value)
        self._entry(trainer.current_epoch).setdefault("seconds", round(time.perf_counter() - self.started, 3))


class TowersFit:
    """One two-tower model, trained by gradient descent with early stopping on validation."""

    def __init__(self, cfg: PipelineConfig, lightning_logger: Logger | None = None, show_progress: bool = True):
        self.cfg, self.lightning_logger, self.show_progress = cfg, lightning_logger, show_progress

    def build(self, features: ItemFeatures, data: TrainingData) -> TwoTowerModel:
        """The untrained model for these features; identity rows (hybrid model) for the items seen in training."""
        seen_items = np.asarray(features.item_ids)[data.popularity > 0]
        return TwoTowerModel(self.cfg.model, feature_widths(features), item_id_vocab=seen_items)

    def module(self, model: TwoTowerModel, features: ItemFeatures, data: TrainingData) -> TwoTowerModule:
        """The Lightning module: the negative sampler, the optional loss terms and the validation ranking."""
        train = self.cfg.train
        tensors = model.feature_tensors(features)
        terms = []
        if train.teacher == "ease":
            weights = data.ease_teacher(train.teacher_l2, train.ease_max_items)
            terms.append(DistillationTerm(weights, data.popularity > 0, train.teacher_weight, train.teacher_temperature, train.objective))
        validate = None
        if data.valid is not None:
            ks = sorted({10, metric_cutoff(train.valid_metric)})
            names = [f"{kind}@{k}" for k in ks for kind in ("recall", "ndcg")]  # what the epoch logs
            validate = lambda m: data.valid.measure(data.valid.rank(ModelScorer(m, tensors), max(ks)), names)  # noqa: E731
        return TwoTowerModule(model, tensors, train, negative_sampler(data.popularity, train.num_uniform_negatives), validate, terms)

    def trainer(self, keeper: _KeepBest, validate: bool) -> pl_lightning.Trainer:
        train = self.cfg.train
        return pl_lightning.Trainer(
            max_epochs=train.epochs, max_time={"minutes": train.max_minutes} if train.max_minutes else None,
            accelerator="cpu", devices=1, logger=self.lightning_logger if self.lightning_logger is not None else False,
            callbacks=[keeper], enable_checkpointing=False, enable_progress_bar=self.show_progress,
            enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=1.0 if validate else 0,
            deterministic=False, log_every_n_steps=10,
        )

    def fit(self, features: ItemFeatures, data: TrainingData) -> TrainResult:
        train = self.cfg.train
        pl_lightning.seed_everything(train.seed, workers=True, verbose=False)
        model = self.build(features, data)
        module = self.module(model, features, data)
        windows = SequenceDataModule(data.sequences, self.cfg.model.max_history, train.batch_size, train.seed, data.valid is not None)
        monitor = valid_monitor(train.valid_metric)
        keeper = _KeepBest(monitor, train.patience)
        trainer = self.trainer(keeper, data.valid is not None)
        started = time.perf_counter()
        trainer.fit(module, datamodule=windows)
        seconds = time.perf_counter() - started
        if keeper.best_state is not None:
            model.load_state_dict(keeper.best_state)
        model.eval()
        logger.info("trained %d epochs in %.1fs; best %s=%.4f at epoch %d", trainer.current_epoch, seconds, monitor, keeper.best, keeper.best_epoch)
        return TrainResult(model, data.user_ids, keeper.best, keeper.best_epoch, trainer.current_epoch, seconds, monitor, keeper.history)


class EnsembleFit:
    """K two-tower models with seeds train.seed .. train.seed + K - 1, each early-stopped on its own
    validation score, scored by the mean of their scores (TwoTowerEnsemble)."""

    def __init__(self, cfg: PipelineConfig, make_logger: Callable[[str], Logger | None] | None, show_progress: bool):
        self.cfg, self.make_logger, self.show_progress = cfg, make_logger, show_progress

    def fit(self, features: ItemFeatures, data: TrainingData) -> TrainResult:
        cfg, n_members = self.cfg, self.cfg.model.ensemble_size
        members = []
        for k in range(n_members):
            member_cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"seed": cfg.train.seed + k})})
            logger.info("ensemble member %d/%d (seed %d)", k + 1, n_members, member_cfg.train.seed)
            member_logger = self.make_logger(f"member{k + 1}") if self.make_logger else None
            members.append(TowersFit(member_cfg, member_logger, self.show_progress).fit(features, data))
        model = TwoTowerEnsemble([m.model for m in members])
        model.eval()
        best = float("nan")
        if data.valid is not None:
            best = validation_score(model, features, data.valid, cfg.train.valid_metric)
            logger.info("ensemble of %d: %s=%.4f (members %s)", n_members, valid_monitor(cfg.train.valid_metric), best,
                        ", ".join(f"{m.best_metric:.4f}" for m in members))
        best_epochs = [m.best_epoch for m in members]
        return TrainResult(
            model=model, user_ids=data.user_ids, best_metric=best, best_epoch=int(round(float(np.mean(best_epochs)))),
            epochs_run=sum(m.epochs_run for m in members), train_seconds=sum(m.train_seconds for m in members),
            valid_metric_name=valid_monitor(cfg.train.valid_metric),
            history=[{"member": k, **entry} for k, m in enumerate(members, start=1) for entry in m.history],
            member_best_epochs=best_epochs,
        )


def model_fit(
    cfg: PipelineConfig, make_logger: Callable[[str], Logger | None] | None = None, show_progress: bool = True
) -> Fit:
    """The fit of `cfg`: the recipe (recsys.model.recipe) when train.tune is on, which chooses what the
    config leaves unset; else the config's components as they are (`compose`)."""
    if cfg.train.tune:
        from recsys.model.recipe import RecipeFit

        return RecipeFit(cfg, make_logger, show_progress)
    return compose(cfg, make_logger, show_progress)


def compose(
    cfg: PipelineConfig, make_logger: Callable[[str], Logger | None] | None = None, show_progress: bool = True
) -> Fit:
    """The components of `cfg` composed into one fit: the towers (one model or an ensemble), wrapped
    by the item-item block when model.item_item is set, and by content-kNN when model.content_knn is."""
    from recsys.model.item_item_fit import ItemItemFit

    if cfg.model.ensemble_size == 1:
        towers: Fit = TowersFit(cfg, make_logger("") if make_logger else None, show_progress)
    else:
        towers = EnsembleFit(cfg, make_logger, show_progress)
    fit = ItemItemFit(towers, cfg) if cfg.model.item_item == "ease" else towers
    if cfg.model.content_knn:
        from recsys.model.content_knn_fit import ContentKNNFit

        fit = ContentKNNFit(fit, cfg, decide=False)
    return fit
