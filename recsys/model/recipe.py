"""The default recipe: every model choice a config leaves unset, made on the data it is given.

Cheap choices follow the data's shape (`DataShape`: does the log have a time order, how large is the
catalog, which content do the items carry). Expensive ones are tried on validation, one stage at a
time, each candidate a full fit compared with the incumbent and kept only if it wins on validation
users that did not pick it (`recsys.model.grid.crossfit`), while `train.budget_minutes` lasts: which
content modalities feed the item tower, the identity residual, the vector width, the ensemble size;
the item-item block then runs its own cross-fitted search (recsys.model.item_item_fit).

A field the config sets (`pinned_fields`: YAML or `--set`) is never changed. Every choice and its reason
lands in `TrainResult.choices` (bundle metadata, the MLflow run, the log), and `TrainResult.config` is the
resolved config the bundle is saved and served with.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pytorch_lightning.loggers import Logger

from recsys.config import PipelineConfig
from recsys.data.histories import time_ordered_share
from recsys.encoders.features import ItemFeatures
from recsys.model.fitting import TowersFit, TrainingData, TrainResult, compose, validation_trial
from recsys.model.grid import FLOOR_WEIGHT, Trial, crossfit
from recsys.model.modalities import MODALITIES, feature_widths
from recsys.model.two_tower import TwoTowerEnsemble

logger = logging.getLogger(__name__)

ENSEMBLE_LIMIT = 3  # members the recipe may train; each must win its place on validation
# Each validation fit may take at most this share of train.budget_minutes (train.max_minutes pins it). The
# budget covers the whole training `recsys train` runs: the first fit, one trial and two more members, then the
# refit on every interaction of the (up to) three members kept: seven fits, less a tenth for what runs outside
# the capped epochs (setup, the item-item block's search, the last validation).
FIT_SHARE = 0.9 / 7
# Modalities the recipe tries without, in this order. Posters first: they are the modality most likely
# to let the item tower memorise warm items instead of learning what transfers to new ones.
DROP_ORDER = ("image", "text", "categories")
WIDER = {"model.dim": 128, "model.head_hidden": 512, "model.item_scale": True, "model.user_scale": True}


@dataclass
class Choice:
    """One setting of the resolved config and why it has its value."""

    key: str  # dotted config field ("model.user_pooling"), or "recipe.<what>" for a decision of the recipe
    value: Any
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {"key": self.key, "value": self.value, "reason": self.reason}


@dataclass(frozen=True)
class DataShape:
    """What the cheap choices read, measured on the training data."""

    n_items: int
    n_known_items: int  # items with at least one training interaction
    n_users: int
    n_interactions: int
    ordered_share: float  # share of training histories (2+ items) whose timestamps take 2+ values
    modalities: tuple[str, ...]  # the registered modalities the features carry for at least one item

    @property
    def ordered(self) -> bool:
        """The log has a usable time order (most histories are not a single moment)."""
        return self.ordered_share >= 0.5

    @classmethod
    def of(cls, features: ItemFeatures, data: TrainingData) -> "DataShape":
        widths = feature_widths(features)
        return cls(
            n_items=len(data.index), n_known_items=int((data.popularity > 0).sum()), n_users=len(data.sequences),
            n_interactions=int(data.popularity.sum()), ordered_share=float(time_ordered_share(data.sequences)),
            modalities=tuple(name for name, m in MODALITIES.items() if widths.get(name) and m.present(features).any()),
        )

    def describe(self) -> str:
        return (f"{self.n_users} users, {self.n_interactions} interactions, {self.n_known_items} of {self.n_items} items "
                f"interacted with, {self.ordered_share:.0%} of histories time-ordered, content: {', '.join(self.modalities) or 'none'}")


def pinned_fields(cfg: PipelineConfig) -> set[str]:
    """The model.* and train.* fields the config sets itself (YAML or --set): the recipe leaves them."""
    return {f"{section}.{name}" for section in ("model", "train") for name in getattr(cfg, section).model_fields_set}


def with_values(cfg: PipelineConfig, values: dict[str, Any]) -> PipelineConfig:
    """`cfg` with dotted fields replaced (the sections' set-field records are kept)."""
    out = cfg
    for dotted, value in values.items():
        section, name = dotted.split(".")
        out = out.model_copy(update={section: getattr(out, section).model_copy(update={name: value})})
    return out


def rank_for(n_known_items: int) -> int:
    """The item-item block's rank: about half the known items as a power of two, 32 to 2048 (a shaped ridge
    needs more of the spectrum than plain EASE: docs/results.md)."""
    if n_known_items <= 32:
        return n_known_items
    return int(min(2048, max(32, 2 ** round(math.log2(n_known_items / 2)))))


def shape_rules(shape: DataShape, cfg: PipelineConfig) -> list[tuple[dict[str, Any], str]]:
    """The cheap choices: (values, reason) from the data's shape alone."""
    rules: list[tuple[dict[str, Any], str]] = [
        ({"model.modalities": list(shape.modalities)}, "the content the catalog carries; validation may drop some below"),
    ]
    if shape.ordered:
        rules.append(({
            "model.user_pooling": "attention", "train.objective": "next_item", "model.max_history": 50,
            "train.item_item_pair_windows": [0.0, 50.0, 20.0],
            "train.item_item_decays": [1.0, 0.9, 0.85, 0.8, 0.75, 0.7, 0.6, 0.5],
        }, f"{shape.ordered_share:.0%} of histories are time-ordered: attention over the last 50 items predicts each "
           "next item; the item-item block tries order windows and recency decays"))
    else:
        rules.append(({
            "model.user_pooling": "mean", "train.objective": "all_but_one", "train.targets_per_window": 32,
            "model.max_history": 200, "train.item_item_pair_windows": [0.0], "train.item_item_decays": [1.0],
            "train.lr": 1e-3, "train.ema_decay": 0.99, "train.patience": 8, "train.valid_max_users": None,
        }, f"only {shape.ordered_share:.0%} of histories are time-ordered: a history is a set (mean of up to 200 "
           "items, each predicted from the others); the slower, averaged training that sets need"))
    ease_fits = 2 <= shape.n_known_items <= cfg.train.ease_max_items
    if ease_fits:
        rules.append(({"model.item_item": "ease", "model.item_item_rank": rank_for(shape.n_known_items)},
                      f"{shape.n_known_items} known items fit a closed-form EASE block (train.ease_max_items "
                      f"{cfg.train.ease_max_items}); its weight is searched on validation and it is dropped if it does not help"))
        if not shape.ordered:
            rules.append(({"train.teacher": "ease", "train.teacher_temperature": 0.05},
                          "without a time order the towers also learn EASE's item-item ranking (distillation)"))
        if {"text", "categories"} & set(shape.modalities):
            rules.append(({"model.item_item_new_items": "content"},
                          "new items get the block's item side from their text and categories"))
    else:
        rules.append(({"model.item_item": "none"}, f"{shape.n_known_items} known items: too many for EASE (train.ease_max_items)"))
    return rules


def clock() -> float:
    """The clock the budget reads (a test replaces it)."""
    return time.perf_counter()


@dataclass
class Budget:
    """Wall time of the whole training: the validation stages and, held in reserve, the refit on every
    interaction of each member they keep (`recsys train` runs it after the choices; estimated as the
    member's validation fit up to its best epoch, the epochs the refit runs). A stage runs only if its fits,
    and the refits it could add, still fit beside the reserve. A fit still to come is estimated by the fits of
    the kept config (`kept_fits`): the next trial and members start from it, and a trial that made fits faster
    (dropping the posters) makes the ones after it faster too; before anything is kept, the slowest fit so far."""

    seconds: float
    started: float = field(default_factory=lambda: clock())
    fits: list[float] = field(default_factory=list)  # seconds of each validation fit so far
    refits: list[float] = field(default_factory=list)  # the reserve: one estimate per kept member
    kept_fits: list[float] = field(default_factory=list)  # seconds of the validation fits of the kept config

    def left(self) -> float:
        """Seconds left for validation stages: the budget less what was spent and the refits reserved."""
        return self.seconds - (clock() - self.started) - sum(self.refits)

    @property
    def fit_minutes(self) -> float:
        """The cap of one validation fit (FIT_SHARE of the budget)."""
        return self.seconds * FIT_SHARE / 60

    @staticmethod
    def refit_seconds(fit_seconds: float, result: TrainResult) -> float:
        """A kept member's refit: its validation fit's time per epoch, for the epochs up to its best."""
        return fit_seconds * (result.best_epoch + 1) / max(result.epochs_run, result.best_epoch + 1, 1)

    def hold_refit(self, result: TrainResult, replacing_first: bool = False) -> None:
        """Hold the refit of the member the last fit made (in place of the first member's, when a trial replaced it)."""
        seconds = self.refit_seconds(self.fits[-1], result)
        if replacing_first:
            self.refits[0] = seconds
            self.kept_fits = [self.fits[-1]]  # a trial won: the config changed, and with it what a fit costs
        else:
            self.refits.append(seconds)
            self.kept_fits.append(self.fits[-1])

    def per_fit(self) -> float:
        """Seconds a fit still to come is expected to take: the slowest fit of the kept config (the slowest
        fit so far before one is kept). A refit runs at most as many epochs, so it is estimated the same."""
        return max(self.kept_fits or self.fits)

    def allows(self, fits: int = 1, refits: int = 0) -> bool:
        """`fits` fits still fit, and `refits` more refits if what they fit is kept."""
        return not self.fits or self.left() >= self.per_fit() * (fits + refits)

    def why_not(self, fits: int = 1, refits: int = 0) -> str:
        reserve = f", {sum(self.refits) / 60:.1f} held for the refit" if self.refits else ""
        need = f"; {fits} fit(s) and {refits} refit(s) of {self.per_fit() / 60:.1f} each" if self.fits else ""
        return f"budget: {max(self.left(), 0) / 60:.1f} of {self.seconds / 60:.0f} minutes left{reserve}{need}"


class RecipeFit:
    """The fit `recsys train` runs by default (train.tune): the recipe's choices, then the model they
    make, returned with `config` (resolved) and `choices` set."""

    def __init__(self, cfg: PipelineConfig, make_logger: Callable[[str], Logger | None] | None = None, show_progress: bool = True):
        self.cfg, self.make_logger, self.show_progress = cfg, make_logger, show_progress
        self.pinned = pinned_fields(cfg)
        self.choices: list[Choice] = []
        self.n_fits = 0

    # ----- decisions -----
    def decide(self, cfg: PipelineConfig, values: dict[str, Any], reason: str) -> PipelineConfig:
        """Apply the values the config does not pin; record each (a pinned one as pinned)."""
        free = {key: value for key, value in values.items() if key not in self.pinned}
        for key in values:
            if key in self.pinned:
                self.choices.append(Choice(key, _value_of(cfg, key), "pinned by the config"))
        for key, value in free.items():
            self.choices.append(Choice(key, value, reason))
        return with_values(cfg, free)

    def _fit_towers(self, cfg: PipelineConfig, features: ItemFeatures, data: TrainingData, budget: Budget, label: str) -> tuple[TrainResult, Trial]:
        self.n_fits += 1
        lightning_logger = self.make_logger(label) if self.make_logger else None
        started = clock()
        if "train.max_minutes" not in self.pinned:  # the cap of a validation fit; the refit runs its picked epochs
            cfg = with_values(cfg, {"train.max_minutes": budget.fit_minutes})
        result = TowersFit(cfg, lightning_logger, self.show_progress).fit(features, data)
        budget.fits.append(clock() - started)
        trial = validation_trial(result.model, features, data.valid, cfg.train.valid_metric)
        logger.info("recipe: %s: valid %s=%.4f (halves %.4f / %.4f) in %.0fs", label, cfg.train.valid_metric, trial.value,
                    *trial.halves, budget.fits[-1])
        return result, trial

    def _stages(self, cfg: PipelineConfig, shape: DataShape) -> list[tuple[str, dict[str, Any]]]:
        """(name, values) of each candidate tried against the incumbent, in order: the likeliest gains
        first, since the budget may stop the list."""
        drops = [] if "model.modalities" in self.pinned else [
            (f"without {name}", {"_drop": name}) for name in DROP_ORDER
        ]
        stages = drops[:1]
        if "model.item_id_embedding" not in self.pinned and shape.n_known_items:
            stages.append(("identity residual", {"model.item_id_embedding": True}))
        wider = {key: value for key, value in WIDER.items() if key not in self.pinned}
        if wider:
            stages.append(("wider towers", wider))
        return stages + drops[1:]

    # ----- the fit -----
    def shaped(self, features: ItemFeatures, data: TrainingData) -> tuple[DataShape, PipelineConfig]:
        """The data's shape and the config after the cheap choices (`shape_rules`): what the recipe's first
        fit ("recipe-base") trains, before anything is tried on validation."""
        shape = DataShape.of(features, data)
        logger.info("recipe: the data: %s", shape.describe())
        cfg = self.cfg
        for values, reason in shape_rules(shape, cfg):
            cfg = self.decide(cfg, values, reason)
        return shape, cfg

    def fit(self, features: ItemFeatures, data: TrainingData) -> TrainResult:
        shape, cfg = self.shaped(features, data)
        if data.valid is not None:  # the validation users the shape's rules ask for (fit_two_tower passes them all)
            data = dataclasses.replace(data, valid=data.valid.subset(cfg.train.valid_max_users, cfg.train.seed))
        if data.valid is None:  # nothing to choose on: the shape's choices and the config's defaults
            self.choices.append(Choice("recipe.validation", None, "no validation queries: nothing is tried"))
            result = compose(cfg, self.make_logger, self.show_progress).fit(features, data)
            return self._finish(result, cfg, data)
        budget = Budget(cfg.train.budget_minutes * 60)
        if "train.max_minutes" not in self.pinned:
            self.choices.append(Choice("recipe.fit_minutes", round(budget.fit_minutes, 2),
                                       f"each validation fit stops at {FIT_SHARE:.1%} of train.budget_minutes (keeping its best "
                                       "epoch), so the first fit, one trial, two ensemble members and the refit of three "
                                       "members on every interaction fit in the budget"))
        result, trial = self._fit_towers(cfg, features, data, budget, "recipe-base")
        budget.hold_refit(result)
        for name, values in self._stages(cfg, shape):
            if "_drop" in values:
                current = list(cfg.model.modalities)
                if values["_drop"] not in current or len(current) < 2:
                    continue
                values = {"model.modalities": [m for m in current if m != values["_drop"]]}
            # The ensemble's members usually add more than a further trial: their fits and refits are kept in reserve.
            reserved = 0 if "model.ensemble_size" in self.pinned else ENSEMBLE_LIMIT - 1
            if not budget.allows(fits=1 + reserved, refits=reserved):
                self.choices.append(Choice(f"recipe.{name}", None, f"not tried: {budget.why_not(1 + reserved, reserved)}"))
                continue
            candidate_cfg = with_values(cfg, values)
            candidate, candidate_trial = self._fit_towers(candidate_cfg, features, data, budget, f"recipe-{name.replace(' ', '-')}")
            verdict = crossfit([candidate_trial], trial)
            logger.info("recipe: %s %s (%.4f vs %.4f)", name, verdict.reason(cfg.train.valid_metric), candidate_trial.value, trial.value)
            if verdict.kept:
                cfg = self.decide(cfg, values, f"{name}: {verdict.reason(cfg.train.valid_metric)}")
                result, trial = candidate, candidate_trial
                budget.hold_refit(candidate, replacing_first=True)
            else:
                self.choices.append(Choice(f"recipe.{name}", False, verdict.reason(cfg.train.valid_metric)))
        result, cfg = self._ensemble(cfg, features, data, budget, result, trial)
        # 4 decimals (6 ms): a tiny catalog's refit must not round to "nothing held".
        self.choices.append(Choice("recipe.refit_minutes", round(sum(budget.refits) / 60, 4),
                                   "held in the budget for the refit on every interaction that `recsys train` runs: "
                                   "each kept member's validation fit up to its best epoch"))
        if cfg.model.item_item == "ease":
            from recsys.model.item_item_fit import ItemItemFit

            result = ItemItemFit(Fitted(result), cfg).fit(features, data)
            self.choices.append(Choice("recipe.item_item_block", bool(result.item_item.get("kept")),
                                       f"kept only if its search wins on held-out validation users (out-of-sample gain {result.item_item.get('crossfit_gain', float('nan')):+.4f})"))
            if result.item_item.get("kept"):
                picked = result.item_item
                mixed = picked["weight_relative"] != FLOOR_WEIGHT
                if math.isnan(picked["weight_gain"]):  # a grid without the floor weight, or only it
                    reason = "the best of train.item_item_weights on validation (no floor weight to compare it with)"
                elif mixed:
                    reason = ("the towers mixed in at this weight x spread: it beats the block alone on each half of validation "
                              f"(by at least {picked['weight_gain']:+.4f})")
                else:
                    reason = ("the floor weight: the block ranks and the towers order its near-ties, since no finite weight beats "
                              "the block alone on each half of validation")
                self.choices.append(Choice("recipe.item_item_weight", picked["weight_relative"], reason))
                if "gram_gain" in picked:
                    shaped = picked["user_power"] or picked["popularity_ridge"]
                    self.choices.append(Choice(
                        "recipe.item_item_gram", {"user_power": picked["user_power"], "popularity_ridge": picked["popularity_ridge"]},
                        ("a shaped Gram: " if shaped else "plain EASE: ") + "kept only if users weighted by history length or a "
                        f"ridge growing with popularity win on held-out validation users (out-of-sample gain {picked['gram_gain']:+.4f})"))
        result, cfg = self._content_knn(cfg, features, data, result)
        return self._finish(result, cfg, data)

    def _content_knn(self, cfg: PipelineConfig, features: ItemFeatures, data: TrainingData, result: TrainResult) -> tuple[TrainResult, PipelineConfig]:
        """Content-kNN's scores added to the model's where they win on held-out validation users, or as the
        floor where the model is below content-kNN itself (recsys.model.content_knn_fit)."""
        from recsys.model.content_knn_fit import ContentKNNFit

        pinned = "model.content_knn" in self.pinned
        if pinned and not cfg.model.content_knn:
            return result, cfg
        result = ContentKNNFit(Fitted(result), cfg, decide=not pinned).fit(features, data)
        picked = result.content_knn
        if not picked.get("kept"):
            if picked:
                self.choices.append(Choice("model.content_knn", False, f"the model ({picked['model_valid']:.4f}) is not below "
                                           f"content-kNN ({picked['content_knn_valid']:.4f}) and no weight of it beats the model "
                                           "alone on each half of validation"))
            return result, cfg
        reason = (f"the model ({picked['model_valid']:.4f}) is below content-kNN ({picked['content_knn_valid']:.4f}) on "
                  "validation: content-kNN ranks and the model orders its near-ties" if picked.get("floor") else
                  f"weight {picked['weight_relative']:g} x spread beats the model alone on each half of validation (by at "
                  f"least {picked['half_gain']:+.4f})")
        return result, self.decide(cfg, {"model.content_knn": True, "train.content_knn_weights": [picked["weight_relative"]]}, reason)

    def _ensemble(self, cfg: PipelineConfig, features: ItemFeatures, data: TrainingData, budget: Budget,
                  first: TrainResult, first_trial: Trial) -> tuple[TrainResult, PipelineConfig]:
        """Members with seeds train.seed + 1, ... beside the first, each kept only if the larger
        ensemble wins on held-out validation users (or up to a pinned model.ensemble_size)."""
        pinned = "model.ensemble_size" in self.pinned
        target = cfg.model.ensemble_size if pinned else ENSEMBLE_LIMIT
        members, trial = [first], first_trial
        while len(members) < target:
            if not pinned and not budget.allows(fits=1, refits=1):
                self.choices.append(Choice("recipe.ensemble_member", len(members) + 1, f"not tried: {budget.why_not(1, 1)}"))
                break
            member_cfg = with_values(cfg, {"train.seed": cfg.train.seed + len(members)})
            member, _ = self._fit_towers(member_cfg, features, data, budget, f"member{len(members) + 1}")
            ensemble = TwoTowerEnsemble([m.model for m in members + [member]])
            ensemble.eval()
            ensemble_trial = validation_trial(ensemble, features, data.valid, cfg.train.valid_metric)
            verdict = crossfit([ensemble_trial], trial)
            logger.info("recipe: ensemble of %d %s (%.4f vs %.4f)", len(members) + 1, verdict.reason(), ensemble_trial.value, trial.value)
            if not (verdict.kept or pinned):
                self.choices.append(Choice("recipe.ensemble_member", len(members) + 1, verdict.reason(cfg.train.valid_metric)))
                break
            members.append(member)
            budget.hold_refit(member)
            trial = ensemble_trial
        if not pinned:
            cfg = self.decide(cfg, {"model.ensemble_size": len(members)},
                              f"members kept while a larger ensemble won on held-out validation users (at most {ENSEMBLE_LIMIT})")
        if len(members) == 1:
            return first, cfg
        model = TwoTowerEnsemble([m.model for m in members])
        model.eval()
        epochs = [m.best_epoch for m in members]
        return dataclasses.replace(
            first, model=model, best_metric=trial.value, best_epoch=int(round(float(np.mean(epochs)))),
            epochs_run=sum(m.epochs_run for m in members), train_seconds=sum(m.train_seconds for m in members),
            history=[{"member": k, **entry} for k, m in enumerate(members, start=1) for entry in m.history],
            member_best_epochs=epochs,
        ), cfg

    def _finish(self, result: TrainResult, cfg: PipelineConfig, data: TrainingData) -> TrainResult:
        resolved = with_values(cfg, {"train.tune": False})
        for choice in self.choices:
            logger.info("recipe: %s = %r (%s)", choice.key, choice.value, choice.reason)
        return dataclasses.replace(result, config=resolved, choices=[c.as_dict() for c in self.choices],
                                   recipe_fits=self.n_fits)


@dataclass
class Fitted:
    """A fit already done (the recipe's chosen towers), for a wrapper that fits around it."""

    result: TrainResult

    def fit(self, features: ItemFeatures, data: TrainingData) -> TrainResult:
        return self.result


def _value_of(cfg: PipelineConfig, dotted: str) -> Any:
    section, name = dotted.split(".")
    return getattr(getattr(cfg, section), name)
