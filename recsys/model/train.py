"""Fit the two-tower model on ordered interactions, with early stopping on a held-out next item."""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import polars as pl
import pytorch_lightning as pl_lightning
import torch
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.loggers import Logger

from recsys.config import PipelineConfig
from recsys.encoders.features import ItemFeatures
from recsys.model.datamodule import SequenceDataModule, ValidationQueries
from recsys.model.module import TwoTowerModule, exclusion_mask, ranking_metrics, target_ranks, valid_monitor
from recsys.model.item_item import GramSpectrum, block_user_vectors, fit_content_map
from recsys.model.teacher import ease_weights
from recsys.model.two_tower import ItemItemBlend, RetrievalModel, TwoTowerEnsemble, TwoTowerModel

logger = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """For an ensemble (model.ensemble_size > 1): best_metric is the ensemble's own validation score,
    best_epoch the members' mean, epochs_run and train_seconds their sums, and history holds every
    member's epochs (with a "member" key, 1..K as in the logs and the MLflow keys)."""

    model: RetrievalModel
    user_ids: np.ndarray  # user_ids[i] has user-embedding index i + 1 (0 = unknown)
    best_metric: float
    best_epoch: int
    epochs_run: int
    train_seconds: float
    valid_metric_name: str
    history: list[dict] = field(default_factory=list)
    member_best_epochs: list[int] = field(default_factory=list)
    # model.item_item: what was picked on validation (ridge, decay, weight) and the towers' own score.
    item_item: dict = field(default_factory=dict)
    # The same validation metric for the reference scorers (popularity, content_knn), same queries.
    baselines: dict = field(default_factory=dict)

    def losing_to(self) -> list[str]:
        """The baselines this model does not beat on validation (empty: it beats them all)."""
        return [name for name, value in self.baselines.items() if not self.best_metric > value]

    def item_item_metrics(self) -> dict[str, float]:
        """The item-item picks as numbers, for MLflow and the benchmark tables ("item_item_l2", ...)."""
        return {f"item_item_{key}": float(value) for key, value in self.item_item.items()}


class _KeepBest(Callback):
    """Keeps the best weights in memory and stops after `patience` epochs without improvement."""

    def __init__(self, monitor: str, patience: int):
        self.monitor = monitor
        self.patience = patience
        self.best = -float("inf")
        self.best_epoch = -1
        self.best_state: dict | None = None
        self.history: list[dict] = []

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
        value = entry.get(self.monitor)
        if value is None:
            return
        if value > self.best:
            self.best, self.best_epoch = value, trainer.current_epoch
            self.best_state = copy.deepcopy(module.model.state_dict())
        elif trainer.current_epoch - self.best_epoch >= self.patience:
            logger.info(
                "early stop at epoch %d: best %s=%.4f at epoch %d",
                trainer.current_epoch, self.monitor, self.best, self.best_epoch,
            )
            trainer.should_stop = True

    def on_train_epoch_end(self, trainer, module) -> None:
        for key, value in trainer.callback_metrics.items():
            if key.startswith("train/"):  # the loss, and its content-only part for a hybrid model
                self._entry(trainer.current_epoch)[key] = float(value)


def item_index_of(item_ids: np.ndarray) -> dict:
    return {item: i for i, item in enumerate(item_ids.tolist())}


def item_rows(item_ids: np.ndarray | None, item_index: dict) -> np.ndarray | None:
    """Sorted catalog rows of a set of item ids (ids not in the catalog dropped); None stays None,
    which the protocol reads as "rank the whole catalog"."""
    if item_ids is None:
        return None
    return np.asarray(sorted(item_index[i] for i in np.asarray(item_ids).tolist() if i in item_index))


def sequences_by_user(
    frame: pl.DataFrame, item_index: dict
) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray] | None]:
    """(user ids, per-user item-index arrays in `pos` order, their timestamps or None when the frame has
    no timestamp column); items missing from the index are dropped."""
    if frame.is_empty():
        return np.array([]), [], None
    ordered = frame.sort(["user_id", "pos"]) if "pos" in frame.columns else frame
    mapped = ordered.with_columns(
        pl.col("item_id").replace_strict(item_index, default=-1, return_dtype=pl.Int64).alias("_idx")
    ).filter(pl.col("_idx") >= 0)
    has_times = "timestamp" in mapped.columns
    grouped = mapped.group_by("user_id", maintain_order=True).agg(pl.col("_idx"), *([pl.col("timestamp")] if has_times else []))
    users = grouped["user_id"].to_numpy()
    seqs = [np.asarray(s, dtype=np.int64) for s in grouped["_idx"].to_list()]
    times = [np.asarray(t, dtype=np.int64) for t in grouped["timestamp"].to_list()] if has_times else None
    return users, seqs, times


def repeat_seeds(cfg: PipelineConfig, n: int) -> list[int]:
    """train.seed of n independent repeats of a fit (benchmarks' model seeds). An ensemble's members
    take train.seed .. train.seed + K - 1, so repeats step by K and never share a member."""
    return [cfg.train.seed + i * cfg.model.ensemble_size for i in range(n)]


@dataclass
class _Prepared:
    """Everything a fit needs that does not depend on the model seed (shared by ensemble members)."""

    index: dict
    user_ids: np.ndarray
    sequences: list[np.ndarray]
    popularity: np.ndarray
    valid_queries: ValidationQueries | None
    exclude: list[np.ndarray] | None
    teacher: torch.Tensor | None


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
    """Train on `train` (user_id, item_id, pos), early-stop on `valid` (one next item per user).

    `valid_candidates` (item indices) restricts validation ranking to a subset, e.g. held-out cold
    items, so early stopping watches the quality that matters for that protocol. `make_logger(prefix)`
    gives the Lightning logger of a fit ("" for a single model, "member1" .. "memberK" for ensemble members).
    With `model.ensemble_size` K > 1, K models are fit one after another with seeds train.seed + k,
    each early-stopped on its own validation score, and combined (TwoTowerEnsemble).
    """
    prepared = _prepare(features, train, valid, cfg, valid_candidates)
    result = _fit_towers(features, cfg, prepared, make_logger, show_progress)
    if cfg.model.item_item == "ease":
        result = _add_item_item_block(result, features, cfg, prepared)
    if prepared.valid_queries is not None:
        result.baselines = validation_baselines(features, prepared, cfg.train.valid_metric)
    return result


def validation_baselines(features: ItemFeatures, prepared: "_Prepared", metric: str, batch_size: int = 1024) -> dict[str, float]:
    """`metric` of popularity (training counts) and content-kNN (frozen embeddings) on the validation
    queries the model was early-stopped on, ranked as validation_score ranks: what a trained model
    must beat before it is worth serving."""
    from recsys.eval.baselines import ContentKNNScorer, frozen_content_embeddings

    queries, k = prepared.valid_queries, int(metric.split("@")[1])
    excluded = prepared.exclude if prepared.exclude is not None else queries.histories
    targets = torch.as_tensor(np.asarray(queries.targets))
    popularity = prepared.popularity.astype(np.float32)
    scorers = {"popularity": lambda rows: np.tile(popularity, (len(range(len(targets))[rows]), 1))}
    if features.text is not None or features.image is not None:
        knn = ContentKNNScorer(frozen_content_embeddings(features))
        scorers["content_knn"] = lambda rows: knn.score(list(queries.histories[rows]), np.asarray(queries.user_index[rows]))
    out = {}
    for name, scores in scorers.items():
        ranks = []
        for start in range(0, len(targets), batch_size):
            rows = slice(start, start + batch_size)
            ranks.append(target_ranks(torch.from_numpy(np.array(scores(rows), dtype=np.float32)), targets[rows], excluded[rows]))
        out[name] = ranking_metrics(torch.cat(ranks), (k,))[metric]
    return out


def _fit_towers(
    features: ItemFeatures,
    cfg: PipelineConfig,
    prepared: "_Prepared",
    make_logger: Callable[[str], Logger | None] | None,
    show_progress: bool,
) -> TrainResult:
    """The two-tower model, or an ensemble of `model.ensemble_size` of them."""
    n_members = cfg.model.ensemble_size
    if n_members == 1:
        return _fit_one(features, cfg, prepared, make_logger("") if make_logger else None, show_progress)
    members = []
    for k in range(n_members):
        member_cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"seed": cfg.train.seed + k})})
        logger.info("ensemble member %d/%d (seed %d)", k + 1, n_members, member_cfg.train.seed)
        member_logger = make_logger(f"member{k + 1}") if make_logger else None
        members.append(_fit_one(features, member_cfg, prepared, member_logger, show_progress))
    model = TwoTowerEnsemble([m.model for m in members])
    model.eval()
    monitor = valid_monitor(cfg.train.valid_metric)
    best = float("nan")
    if prepared.valid_queries is not None:
        best = validation_score(model, features, prepared.valid_queries, prepared.exclude, cfg.train.valid_metric)
        logger.info(
            "ensemble of %d: %s=%.4f (members %s)", n_members, monitor, best,
            ", ".join(f"{m.best_metric:.4f}" for m in members),
        )
    best_epochs = [m.best_epoch for m in members]
    return TrainResult(
        model=model,
        user_ids=prepared.user_ids,
        best_metric=best,
        best_epoch=int(round(float(np.mean(best_epochs)))),
        epochs_run=sum(m.epochs_run for m in members),
        train_seconds=sum(m.train_seconds for m in members),
        valid_metric_name=monitor,
        history=[{"member": k, **entry} for k, m in enumerate(members, start=1) for entry in m.history],
        member_best_epochs=best_epochs,
    )


def _add_item_item_block(
    result: TrainResult, features: ItemFeatures, cfg: PipelineConfig, prepared: "_Prepared"
) -> TrainResult:
    """Wrap the trained towers with the closed-form item-item block (model.item_item) and pick its pair
    window, ridge, history decay, weight (and content-map ridge, model.item_item_new_items=content) on the
    validation queries; the towers are not changed. The block is kept only if it raises validation (on
    cold validation items it has no rows, so without a content map it never does). Without validation
    the first value of each grid is used."""
    started = time.perf_counter()
    tcfg, rank = cfg.train, cfg.model.item_item_rank
    seen_rows = np.flatnonzero(prepared.popularity > 0)
    unseen = prepared.popularity == 0
    queries = prepared.valid_queries
    model = ItemItemBlend(result.model, np.asarray(features.item_ids)[seen_rows], rank)
    model.eval()
    times = None  # the histories' timestamps, where known and the blend ages by them (ties share an age)
    if queries is None:  # the weight is still scaled by the score spreads, measured on training histories
        histories = prepared.sequences[:2000]
        user_index = np.arange(1, len(histories) + 1)
    else:
        histories, user_index = list(queries.histories), np.asarray(queries.user_index)
        times = model.block_times(queries.times)
    vectors, bias = result.model.encode_items_with_bias(result.model.feature_tensors(features))
    tower_scores = result.model.encode_histories(vectors, histories, user_index) @ vectors.T + bias
    k = int(tcfg.valid_metric.split("@")[1])

    if queries is not None:  # every combination below ranks the same queries: mask their exclusions once
        excluded = exclusion_mask(prepared.exclude if prepared.exclude is not None else queries.histories, len(prepared.index))
        targets = torch.as_tensor(np.asarray(queries.targets))

    def validation_of(scores: np.ndarray) -> float:
        """The validation metric of a score matrix over the validation queries, ranked as validation_score ranks."""
        ranks = target_ranks(torch.from_numpy(np.array(scores, dtype=np.float32)), targets, excluded)
        return ranking_metrics(ranks, (k,))[tcfg.valid_metric]

    grids = (tcfg.item_item_pair_windows, tcfg.item_item_l2, tcfg.item_item_decays, tcfg.item_item_weights)
    if queries is None:
        grids = tuple(grid[:1] for grid in grids)
    windows, l2s, decays, weights = grids
    if times is not None and all(np.unique(t).size <= 1 for t in times):
        # No history has two timestamps (ml-1m logs none): every item is age 0 and every decay the same.
        logger.info("item-item block: no validation history has a time order; decay %g stands for them all", decays[0])
        decays = decays[:1]
    # model.item_item_new_items=content: a ridge map from content to the block's item side, fit on the
    # seen items, predicts the rows of the unseen ones (its ridge is one more choice on validation).
    content_l2s: list[float | None] = [None]
    if model.predicts_new_items:
        design = model.content_design(model.feature_tensors(features)).numpy()
        content_l2s = list(tcfg.item_item_content_l2) if queries is not None else list(tcfg.item_item_content_l2[:1])
    best: tuple[float, dict] = (-float("inf"), {})
    n_tried = 0
    for window in windows:
        spectrum = GramSpectrum.of_sequences(prepared.sequences, len(prepared.index), tcfg.item_item_max_items, window)
        for l2 in l2s:
            q, s = spectrum.factors(l2, rank)
            q[unseen], s[unseen] = 0.0, 0.0  # only items seen in training carry a block
            maps = fit_content_map(design[seen_rows], q[seen_rows], content_l2s) if content_l2s != [None] else [None]
            predicted = [None if m is None else design[unseen] @ m for m in maps]  # the unseen items' Q rows
            for decay in decays:
                user_block = block_user_vectors(histories, q * s[:, None], decay, times=times)
                warm_scores = user_block @ q.T
                # The weight is in units of the spreads of the known items' block scores, whatever the map.
                spread = float(tower_scores.std() / max(float(warm_scores.std()), 1e-12))
                for content_l2, content_map, unseen_rows in zip(content_l2s, maps, predicted):
                    block_scores = warm_scores
                    if unseen_rows is not None and len(unseen_rows):
                        block_scores = warm_scores.copy()
                        block_scores[:, unseen] = user_block @ unseen_rows.T
                    for w in weights:
                        n_tried += 1
                        value = validation_of(tower_scores + w * spread * block_scores) if queries is not None else 0.0
                        if value > best[0]:
                            best = (value, {"pair_window": window, "l2": l2, "decay": decay, "weight_relative": w,
                                            "weight": w * spread, "factors": (q, s, content_map),
                                            **({} if content_l2 is None else {"content_l2": content_l2})})
    chosen = best[1]
    towers_valid = validation_of(tower_scores) if queries is not None else float("nan")
    keep = queries is None or best[0] > towers_valid
    q, s, content_map = chosen.pop("factors")
    model.set_block(q[seen_rows], s[seen_rows], chosen["weight"] if keep else 0.0, chosen["decay"], content_map)
    blended = validation_score(model, features, queries, prepared.exclude, tcfg.valid_metric) if queries is not None else float("nan")
    logger.info(
        "item-item block (rank %d, %d combinations in %.1fs): %s=%.4f with the block (pair window %g, l2 %g, decay %g, "
        "weight %g x spread%s) vs %.4f for the towers alone%s",
        rank, n_tried, time.perf_counter() - started, valid_monitor(tcfg.valid_metric), blended, chosen["pair_window"],
        chosen["l2"], chosen["decay"], chosen["weight_relative"],
        f", new items from content with ridge {chosen['content_l2']:g}" if "content_l2" in chosen else "",
        towers_valid, "" if keep else ": not kept (weight 0)",
    )
    picked = {**chosen, "weight": chosen["weight"] if keep else 0.0, "kept": keep, "towers_valid": towers_valid}
    return TrainResult(
        model=model,
        user_ids=result.user_ids,
        best_metric=blended if queries is not None else result.best_metric,
        best_epoch=result.best_epoch,
        epochs_run=result.epochs_run,
        train_seconds=result.train_seconds + (time.perf_counter() - started),
        valid_metric_name=result.valid_metric_name,
        history=result.history,
        member_best_epochs=result.member_best_epochs,
        item_item=picked,
    )


def validation_score(
    model: RetrievalModel,
    features: ItemFeatures,
    queries: ValidationQueries,
    exclude: list[np.ndarray] | None,
    metric: str,
    batch_size: int = 1024,
) -> float:
    """`metric` ("ndcg@10" or "recall@10") of the validation targets, full ranking, each query's
    `exclude` rows (default: its history) left out: what early stopping reads, for any model."""
    k = int(metric.split("@")[1])
    vectors, bias = model.encode_items_with_bias(model.feature_tensors(features))
    excluded = exclude if exclude is not None else queries.histories
    targets = torch.as_tensor(np.asarray(queries.targets))
    ranks = []
    for start in range(0, len(targets), batch_size):
        rows = slice(start, start + batch_size)
        times = None if queries.times is None else list(queries.times[rows])
        users = model.encode_histories(vectors, list(queries.histories[rows]), np.asarray(queries.user_index[rows]), times=times)
        scores = torch.from_numpy(np.ascontiguousarray(users @ vectors.T + bias))
        ranks.append(target_ranks(scores, targets[rows], excluded[rows]))
    return ranking_metrics(torch.cat(ranks), (k,))[metric]


def _prepare(
    features: ItemFeatures, train: pl.DataFrame, valid: pl.DataFrame, cfg: PipelineConfig, valid_candidates
) -> _Prepared:
    index = item_index_of(np.asarray(features.item_ids))
    user_ids, sequences, sequence_times = sequences_by_user(train, index)
    user_position = {u: i + 1 for i, u in enumerate(user_ids.tolist())}
    popularity = np.bincount(np.concatenate(sequences) if sequences else np.zeros(0, np.int64), minlength=len(index))

    valid_queries = None
    exclude = None
    if not valid.is_empty():
        history_of = dict(zip(user_ids.tolist(), sequences))
        times_of = dict(zip(user_ids.tolist(), sequence_times)) if sequence_times is not None else None
        rows = valid.with_columns(
            pl.col("item_id").replace_strict(index, default=-1, return_dtype=pl.Int64).alias("_idx")
        ).filter(pl.col("_idx") >= 0)
        histories, targets, owners, times = [], [], [], []
        for user, target in zip(rows["user_id"].to_list(), rows["_idx"].to_list()):
            history = history_of.get(user)
            if history is None or len(history) == 0:
                continue
            histories.append(history)
            targets.append(target)
            owners.append(user_position[user])
            times.append(times_of[user] if times_of is not None else None)
        if cfg.train.valid_max_users and len(targets) > cfg.train.valid_max_users:
            keep = np.random.default_rng(cfg.train.seed).choice(len(targets), cfg.train.valid_max_users, replace=False)
            keep.sort()
            histories = [histories[i] for i in keep]
            targets = [targets[i] for i in keep]
            owners = [owners[i] for i in keep]
            times = [times[i] for i in keep]
        if targets:
            valid_queries = ValidationQueries(
                histories, np.asarray(targets), np.asarray(owners), times if times_of is not None else None
            )
            exclude = list(histories)
            if valid_candidates is not None:
                outside = np.setdiff1d(np.arange(len(index)), valid_candidates)
                exclude = [np.union1d(h, outside) for h in histories]

    teacher = None
    if cfg.train.teacher == "ease":
        teacher = ease_weights(sequences, len(index), cfg.train.teacher_l2, cfg.train.teacher_max_items)
    return _Prepared(index, user_ids, sequences, popularity, valid_queries, exclude, teacher)


def _fit_one(
    features: ItemFeatures, cfg: PipelineConfig, prepared: _Prepared, lightning_logger: Logger | None, show_progress: bool
) -> TrainResult:
    """One two-tower model, seeded with cfg.train.seed."""
    pl_lightning.seed_everything(cfg.train.seed, workers=True, verbose=False)
    index, user_ids, sequences = prepared.index, prepared.user_ids, prepared.sequences
    popularity, valid_queries = prepared.popularity, prepared.valid_queries
    fdims = {
        "text": None if features.text is None else features.text.shape[1],
        "image": None if features.image is None else features.image.shape[1],
    }
    n_categories = 0 if features.categories is None else features.categories.shape[1]
    seen_items = np.asarray(features.item_ids)[popularity > 0]  # identity rows (hybrid model only)
    model = TwoTowerModel(
        cfg.model, fdims["text"], fdims["image"], n_categories, n_users=len(user_ids), item_id_vocab=seen_items
    )
    module = TwoTowerModule(
        model,
        model.feature_tensors(features),
        cfg.train,
        popularity,
        valid=valid_queries,
        exclude_in_valid=prepared.exclude,
        valid_ks=tuple(sorted({10, int(cfg.train.valid_metric.split("@")[-1])})),
        teacher_weights=prepared.teacher,
    )
    data = SequenceDataModule(
        sequences, np.arange(1, len(user_ids) + 1), valid_queries, cfg.model.max_history, cfg.train.batch_size, cfg.train.seed
    )
    monitor = valid_monitor(cfg.train.valid_metric)
    keeper = _KeepBest(monitor, cfg.train.patience)
    trainer = pl_lightning.Trainer(
        max_epochs=cfg.train.epochs,
        max_time={"minutes": cfg.train.max_minutes} if cfg.train.max_minutes else None,
        accelerator="cpu",
        devices=1,
        logger=lightning_logger if lightning_logger is not None else False,
        callbacks=[keeper],
        enable_checkpointing=False,
        enable_progress_bar=show_progress,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=1.0 if valid_queries is not None else 0,
        deterministic=False,
        log_every_n_steps=10,
    )
    started = time.perf_counter()
    trainer.fit(module, datamodule=data)
    seconds = time.perf_counter() - started
    if keeper.best_state is not None:
        model.load_state_dict(keeper.best_state)
    model.eval()
    logger.info("trained %d epochs in %.1fs; best %s=%.4f at epoch %d", trainer.current_epoch, seconds, monitor, keeper.best, keeper.best_epoch)
    return TrainResult(
        model=model,
        user_ids=user_ids,
        best_metric=keeper.best,
        best_epoch=keeper.best_epoch,
        epochs_run=trainer.current_epoch,
        train_seconds=seconds,
        valid_metric_name=monitor,
        history=keeper.history,
    )
