"""`ItemItemFit`: the towers wrapped with the closed-form item-item block, and the fit that owns both.

It fits the towers it wraps (one model or an ensemble), then searches the block's Gram shape (user weighting
and a popularity-shaped ridge, kept only if they win on held-out validation users), pair window, ridge,
history decay, content map (model.item_item_new_items=content: its scaling, sharpness and ridge) and weight on the validation
queries, as one flat loop over a `Grid`; the towers are not changed. The block is kept only if the
search wins on validation users that did not pick its point (`crossfit`: on cold validation items it
has no rows, so without a content map it never does), and the towers are mixed in at a finite weight only
if that beats the block at the floor weight on each half of the validation users. On cold
validation the halves split the held-out items instead of the users (RankingJudge.item_halves): the towers
were early-stopped on those items, the block was not.
Without validation each range's first value is used. The math is in recsys.model.item_item.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from typing import Any

import numpy as np

from recsys.config import PipelineConfig
from recsys.data.histories import time_ordered_share, times_of
from recsys.encoders.features import ItemFeatures
from recsys.model.fitting import Fit, TrainingData, TrainResult, validation_score
from recsys.model.grid import FLOOR_WEIGHT, Grid, Trial, best, crossfit, search, wins_on_both_halves
from recsys.model.item_item import (
    ContentKernel,
    GramSpectrum,
    block_user_vectors,
    content_similarity_kernel,
    fit_content_map,
    predict_content_rows,
)
from recsys.model.two_tower import ItemItemBlend, ModelScorer

logger = logging.getLogger(__name__)

# The unseen items' content kernel to the known items is kept for the whole block search up to this many entries
# (200 MB in float32); above it each content map computes its rows in chunks.
UNSEEN_KERNEL_LIMIT = 50_000_000


def gram_of(point: dict[str, Any]) -> tuple[float, float, float]:
    """What a point's Gram spectrum depends on: (pair window, user power, popularity ridge)."""
    return point["pair_window"], point["user_power"], point["popularity_ridge"]


class BlockSearch:
    """Scores every grid point on the validation queries. Each level of the grid keeps its last result
    (an eigen-decomposition per window, factors and content maps per ridge, user vectors per decay), so
    the flat loop costs what nested loops would."""

    def __init__(self, data: TrainingData, designs: dict | None, histories: list, tower_scores: np.ndarray, cfg: PipelineConfig,
                 content_parts: int = 1):
        """`designs`: the content map's inputs per content norm ("unit", "raw"), None without a map;
        `content_parts`: the modalities in them (the kernel map's similarity is their mean cosine)."""
        self.data, self.designs, self.histories, self.tower_scores = data, designs, histories, tower_scores
        self.content_parts = content_parts
        self.content_sharpness = tuple(cfg.train.item_item_content_sharpness) if designs is not None else (None,)
        self.rank, self.max_items = cfg.model.item_item_rank, cfg.train.ease_max_items
        self.metric = cfg.train.valid_metric
        self.unseen = data.popularity == 0
        self.seen_rows = np.flatnonzero(~self.unseen)
        self.content_l2s = tuple(cfg.train.item_item_content_l2) if designs is not None else (None,)
        self.spectrum = functools.lru_cache(maxsize=1)(self._spectrum)
        self.factors = functools.lru_cache(maxsize=1)(self._factors)
        self.user_side = functools.lru_cache(maxsize=1)(self._user_side)
        self.block_scores = functools.lru_cache(maxsize=1)(self._block_scores)
        self.content_kernel = functools.lru_cache(maxsize=None)(self._content_kernel)

    def _content_kernel(self, norm: str, sharpness: float) -> tuple[ContentKernel, np.ndarray | None]:
        """The known items' content kernel and, where it is small enough to keep (UNSEEN_KERNEL_LIMIT entries), the
        unseen items' kernel to them, once per (content norm, sharpness) for the whole search."""
        known, unseen = self.designs[norm][self.seen_rows], self.designs[norm][self.unseen]
        cross = None
        if len(unseen) * len(known) <= UNSEEN_KERNEL_LIMIT:
            cross = content_similarity_kernel(unseen, known[:, :-1], sharpness, self.content_parts).astype(np.float32)
        return ContentKernel.of(known, sharpness, self.content_parts), cross

    def _kernel_rows(self, norm: str, sharpness: float, content_map: np.ndarray) -> np.ndarray:
        """The unseen items' rows a kernel map predicts (`predict_content_rows`, from the kept kernel when there is one)."""
        _, cross = self.content_kernel(norm, sharpness)
        if cross is None:
            known = self.designs[norm][self.seen_rows]
            return predict_content_rows(self.designs[norm][self.unseen], content_map, known[:, :-1], sharpness, self.content_parts)
        return cross @ content_map[:-1] + content_map[-1]

    def _spectrum(self, gram: tuple[float, float, float]) -> GramSpectrum:
        """`gram`: (pair window, user power, popularity ridge), the point's `gram_of`."""
        window, user_power, popularity_ridge = gram
        return GramSpectrum.of_sequences(self.data.sequences, len(self.data.index), self.max_items, window, user_power, popularity_ridge)

    def _factors(self, gram: tuple[float, float, float], l2: float) -> tuple[np.ndarray, np.ndarray, dict]:
        """(Q, s) of the known items (rows of unseen items zero) and, per (content norm, sharpness, content
        ridge), (map, the unseen items' Q rows)."""
        q, s = self.spectrum(gram).factors(l2, self.rank)
        q[self.unseen], s[self.unseen] = 0.0, 0.0  # only items seen in training carry a block
        maps: dict = {(None, None, None): (None, None)}
        for norm, design in (self.designs or {}).items():
            known, targets = design[self.seen_rows], q[self.seen_rows]
            for sharpness in self.content_sharpness:
                if sharpness == 0.0:
                    fitted = fit_content_map(known, targets, list(self.content_l2s))
                    maps.update({(norm, 0.0, l2_map): (m, design[self.unseen] @ m) for l2_map, m in zip(self.content_l2s, fitted)})
                    continue
                kernel = self.content_kernel(norm, sharpness)[0]
                maps.update({(norm, sharpness, l2_map): (m, self._kernel_rows(norm, sharpness, m))
                             for l2_map, m in zip(self.content_l2s, kernel.maps(targets, list(self.content_l2s)))})
        return q, s, maps

    def _user_side(self, gram: tuple[float, float, float], l2: float, decay: float) -> tuple[np.ndarray, np.ndarray, float]:
        """(block user vectors, the known items' block scores, tower spread / block spread)."""
        q, s, _ = self.factors(gram, l2)
        user_block = block_user_vectors(self.histories, q * s[:, None], decay)
        warm_scores = user_block @ q.T
        return user_block, warm_scores, float(self.tower_scores.std() / max(float(warm_scores.std()), 1e-12))

    def _block_scores(self, gram: tuple[float, float, float], l2: float, decay: float, content_norm: str | None,
                      content_sharpness: float | None, content_l2: float | None) -> tuple[np.ndarray, float]:
        """(the block's scores of every item, new items through the content map; the spread ratio)."""
        user_block, block_scores, spread = self.user_side(gram, l2, decay)
        unseen_rows = self.factors(gram, l2)[2][(content_norm, content_sharpness, content_l2)][1]
        if unseen_rows is not None and len(unseen_rows):
            block_scores = block_scores.copy()
            block_scores[:, self.unseen] = user_block @ unseen_rows.T
        return block_scores, spread

    def scores(self, point: dict[str, Any]) -> np.ndarray:
        """The blended scores of one grid point (the weight in units of the score spreads)."""
        block_scores, spread = self.block_scores(gram_of(point), point["l2"], point["decay"], point["content_norm"],
                                                 point["content_sharpness"], point["content_l2"])
        return self.tower_scores + point["weight"] * spread * block_scores

    def value(self, point: dict[str, Any]) -> tuple[float, tuple[float, float]]:
        """The point's validation value, and its values on the two halves of the queries (on cold
        validation, of the held-out items: RankingJudge.item_halves)."""
        value, first, second = self.data.valid.value_halves(self.scores(point), self.metric, by="items")
        return value, (first, second)


class ItemItemFit:
    """The wrapped towers' fit, then the block's (model.item_item=ease)."""

    def __init__(self, towers: Fit, cfg: PipelineConfig, keep_block: bool | None = None):
        """`keep_block`: without validation (a refit), whether the block was kept when it was chosen."""
        self.towers, self.cfg, self.keep_block = towers, cfg, keep_block

    def grid(self, histories: list, predicts_new_items: bool, data: TrainingData) -> Grid:
        train = self.cfg.train
        grid = Grid({
            "pair_window": tuple(train.item_item_pair_windows), "user_power": tuple(train.item_item_user_powers),
            "popularity_ridge": tuple(train.item_item_popularity_ridges), "l2": tuple(train.item_item_l2),
            "decay": tuple(train.item_item_decays),
            "content_norm": tuple(train.item_item_content_norms) if predicts_new_items else (None,),
            "content_sharpness": tuple(train.item_item_content_sharpness) if predicts_new_items else (None,),
            "content_l2": tuple(train.item_item_content_l2) if predicts_new_items else (None,),
            "weight": tuple(train.item_item_weights),
        })
        if predicts_new_items and data.valid is not None and not (data.popularity == 0).any():
            # Every catalog item has a block row: the map scores none of them, so nothing in validation can tell
            # maps apart and each range's first value stands for them all. (With unseen items it is searched even
            # when no validation target is new: the map decides how far unseen items reach into warm users' lists.)
            grid = grid.pin(content_norm=grid.ranges["content_norm"][0], content_sharpness=grid.ranges["content_sharpness"][0],
                            content_l2=grid.ranges["content_l2"][0])
        if times_of(histories) is not None and time_ordered_share(histories) == 0.0:
            # No history has two timestamps (ml-1m logs none): every item is age 0 and every decay the same.
            logger.info("item-item block: no validation history has a time order; decay %g stands for them all", grid.ranges["decay"][0])
            grid = grid.pin(decay=grid.ranges["decay"][0])
        if data.valid is not None and data.valid.candidates is not None:
            # Cold validation ranks only new items, which the Gram shapes reach only through the content map's targets:
            # they were developed and checked on known items only (docs/results.md), so plain EASE stands there.
            grid = grid.pin(user_power=grid.ranges["user_power"][0], popularity_ridge=grid.ranges["popularity_ridge"][0])
        return grid

    def fit(self, features: ItemFeatures, data: TrainingData) -> TrainResult:
        towers = self.towers.fit(features, data)
        started = time.perf_counter()
        model = ItemItemBlend(towers.model, np.asarray(features.item_ids)[data.popularity > 0], self.cfg.model.item_item_rank)
        model.eval()
        # Without validation the weight is still scaled by the score spreads, measured on training histories.
        histories = data.sequences[:2000] if data.valid is None else data.valid.queries.histories
        tower_scores = ModelScorer(towers.model, towers.model.feature_tensors(features)).score(histories)
        designs = None
        if model.predicts_new_items:
            tensors = model.feature_tensors(features)
            designs = {norm: model.content_design(tensors, unit=norm == "unit").numpy() for norm in self.cfg.train.item_item_content_norms}
        block = BlockSearch(data, designs, histories, tower_scores, self.cfg, model.content_parts)
        grid = self.grid(histories, model.predicts_new_items, data)
        gram_choice: dict = {}
        if data.valid is not None:
            grid, gram_choice = self.shaped_gram(grid, block)
            trials = search(grid, block.value)
            towers_valid, *halves = data.valid.value_halves(tower_scores, self.cfg.train.valid_metric, by="items")
            verdict = crossfit(trials, Trial({}, towers_valid, tuple(halves)))
            (chosen, weight_gain), keep, gain = self.weighed(trials), verdict.kept, verdict.gain
        else:
            keep = True if self.keep_block is None else self.keep_block
            trials, towers_valid, gain = [Trial(grid.first(), float("nan"))], float("nan"), float("nan")
            chosen, weight_gain = trials[0], float("nan")
        picked = {**self._install(model, block, chosen, towers_valid, keep, gain), "weight_gain": weight_gain, **gram_choice}
        picked.update(self._popularity_prior(model, block, block.scores(chosen.point) if keep else tower_scores, data))
        blended = validation_score(model, features, data.valid, self.cfg.train.valid_metric) if data.valid is not None else towers.best_metric
        self._log(len(trials), time.perf_counter() - started, blended, picked)
        return dataclasses.replace(
            towers, model=model, best_metric=blended, item_item=picked,
            train_seconds=towers.train_seconds + (time.perf_counter() - started),
        )

    @staticmethod
    def shaped_gram(grid: Grid, block: BlockSearch) -> tuple[Grid, dict]:
        """Pick the Gram matrix's user weighting and the ridge's popularity shape first (each range's first value,
        plain EASE by default, is the incumbent): every (pair window, user power, popularity ridge, ridge, decay)
        is scored with the block ranking alone (the floor weight; the content map at its first setting); a shaped
        Gram is kept only if it wins on validation users that did not pick it (`crossfit`). The full search then runs
        on the kept shape, so it costs one more decomposition per shape, not a grid times larger. A grid with one
        shape (pinned, or cold validation: `grid`) is returned as it is."""
        first = grid.first()
        plain = (first["user_power"], first["popularity_ridge"])
        if len(grid.ranges["user_power"]) * len(grid.ranges["popularity_ridge"]) == 1:
            return grid, {}
        weights = grid.ranges["weight"]
        stage = grid.pin(weight=FLOOR_WEIGHT if FLOOR_WEIGHT in weights else weights[0], content_norm=first["content_norm"],
                         content_sharpness=first["content_sharpness"], content_l2=first["content_l2"])
        trials = search(stage, block.value)
        incumbent = best([t for t in trials if (t.point["user_power"], t.point["popularity_ridge"]) == plain])
        verdict = crossfit([t for t in trials if (t.point["user_power"], t.point["popularity_ridge"]) != plain], incumbent)
        shape = {"user_power": verdict.winner.point["user_power"], "popularity_ridge": verdict.winner.point["popularity_ridge"]}
        logger.info("item-item block: Gram shape user power %g, popularity ridge %g (%d settings at the floor weight; "
                    "%s, out-of-sample gain %+.4f over user power %g, popularity ridge %g: %.4f vs %.4f)",
                    shape["user_power"], shape["popularity_ridge"], len(trials), "kept" if verdict.kept else "not kept",
                    verdict.gain, *plain, verdict.winner.value, incumbent.value)
        return grid.pin(**shape), {**shape, "gram_gain": verdict.gain}

    @staticmethod
    def weighed(trials: list[Trial]) -> tuple[Trial, float]:
        """The block's point: the best point at the floor weight (the block ranks, the towers order its
        near-ties) unless a finite weight (the towers mixed in) beats it on each half of the validation
        users (on cold, items): the best weight on all validation favours towers that were early-stopped on
        those same queries. Also the smaller half gain of the mix (0 when the floor stays)."""
        floor = [t for t in trials if t.point["weight"] == FLOOR_WEIGHT]
        mixed = [t for t in trials if t.point["weight"] != FLOOR_WEIGHT]
        if not floor or not mixed:
            return best(trials), float("nan")
        verdict = wins_on_both_halves(mixed, best(floor))
        return verdict.winner, verdict.gain

    def _install(self, model: ItemItemBlend, block: BlockSearch, chosen: Trial, towers_valid: float, keep: bool, gain: float) -> dict:
        """Set the chosen block in the model (weight 0 when it is not kept); the picks."""
        point = chosen.point
        q, s, maps = block.factors(gram_of(point), point["l2"])
        spread = block.user_side(gram_of(point), point["l2"], point["decay"])[2]
        weight = point["weight"] * spread if keep else 0.0
        rows = block.seen_rows
        content_map = maps[(point["content_norm"], point["content_sharpness"], point["content_l2"])][0]
        sharpness = point["content_sharpness"] or 0.0
        anchors = block.designs[point["content_norm"]][rows][:, :-1] if sharpness else None
        model.set_block(q[rows], s[rows], weight, point["decay"], content_map, content_unit=point["content_norm"] == "unit",
                        content_sharpness=sharpness, content_anchors=anchors)
        picked = {"pair_window": point["pair_window"], "user_power": point["user_power"],
                  "popularity_ridge": point["popularity_ridge"], "l2": point["l2"], "decay": point["decay"],
                  "weight_relative": point["weight"], "weight": weight, "kept": keep, "towers_valid": towers_valid,
                  "crossfit_gain": gain}
        if point["content_l2"] is None:
            return picked
        return {**picked, "content_l2": point["content_l2"], "content_unit": point["content_norm"] == "unit",
                "content_sharpness": point["content_sharpness"]}

    def _popularity_prior(self, model: ItemItemBlend, block: BlockSearch, blended: np.ndarray, data: TrainingData) -> dict:
        """Search the popularity prior on top of the installed blend (`blended`: its scores of the validation
        histories): its window (all-time counts, or counts fading with age, for logs whose recent items
        sell) and weight; keep a non-zero weight only if it wins on held-out validation users."""
        windows = tuple(self.cfg.train.item_item_popularity_days)
        if time_ordered_share(data.sequences) == 0.0:
            windows = windows[:1]  # no time order: nothing for a window to fade
        log_counts = {days: self._log_counts(data, block, days) for days in windows}
        spreads = {days: float(blended.std() / max(float(c.std()), 1e-12)) for days, c in log_counts.items()}
        grid = Grid({"days": windows, "weight": tuple(self.cfg.train.item_item_popularity_weights)})
        if data.valid is None:  # a refit: what validation picked (each range's first value)
            point, gain = grid.first(), float("nan")
        else:
            def value(point):
                prior = point["weight"] * spreads[point["days"]] * log_counts[point["days"]]
                total, first, second = data.valid.value_halves(blended + prior, self.cfg.train.valid_metric)
                return total, (first, second)

            trials = search(grid, value)
            incumbent = Trial({"days": windows[0], "weight": 0.0}, *value({"days": windows[0], "weight": 0.0}))
            verdict = crossfit([t for t in trials if t.point["weight"] != 0.0], incumbent)
            point, gain = verdict.winner.point, verdict.gain
            # The floor: a blend below popularity itself (all-time, or fading, whichever validates best) is
            # not shipped; that popularity ranks and the blend only orders items of equal count.
            metric = self.cfg.train.valid_metric
            alone = {days: data.valid.value(counts[None, :].repeat(len(blended), 0), metric) for days, counts in log_counts.items()}
            best_days = max(alone, key=alone.get)
            if verdict.winner.value < alone[best_days]:
                point = {"days": best_days, "weight": FLOOR_WEIGHT}
        days, weight = point["days"], point["weight"]
        model.set_popularity_prior(weight * spreads[days] * log_counts[days][block.seen_rows])
        return {"popularity_days": days, "popularity_weight_relative": weight, "popularity_weight": weight * spreads[days],
                "popularity_gain": gain}

    @staticmethod
    def _log_counts(data: TrainingData, block: BlockSearch, days: float) -> np.ndarray:
        """log(1 + count) per item over the training interactions, each counting exp(-age / days) with its
        age before the latest one (days 0: every interaction counts 1); 0 for unseen items."""
        if days == 0.0:
            counts = data.popularity.astype(np.float64)
        else:
            times = times_of(data.sequences)
            items = np.concatenate([np.asarray(h, dtype=np.int64) for h in data.sequences])
            stamps = np.concatenate([np.asarray(t, dtype=np.float64) for t in times])
            counts = np.bincount(items, weights=np.exp(-(stamps.max() - stamps) / (days * 86400.0)), minlength=len(data.popularity))
        out = np.log1p(counts).astype(np.float32)
        out[block.unseen] = 0.0
        return out

    def _log(self, n_tried: int, seconds: float, blended: float, picked: dict) -> None:
        if np.isnan(picked["towers_valid"]):  # no validation (a refit): the point picked before
            logger.info("item-item block (rank %d) set in %.1fs at the picked point (pair window %g, user power %g, popularity "
                        "ridge %g, l2 %g, decay %g, weight %g x spread%s; popularity prior %g x spread)", self.cfg.model.item_item_rank,
                        seconds, picked["pair_window"], picked["user_power"], picked["popularity_ridge"], picked["l2"], picked["decay"], picked["weight_relative"] if picked["kept"] else 0.0,
                        "" if picked["kept"] else ", block not kept", picked["popularity_weight_relative"])
            return
        logger.info(
            "item-item block (rank %d, %d combinations in %.1fs): %s=%.4f with the block (pair window %g, user power %g, "
            "popularity ridge %g, l2 %g, "
            "decay %g, weight %g x spread%s) vs %.4f for the towers alone%s",
            self.cfg.model.item_item_rank, n_tried, seconds, self.cfg.train.valid_metric, blended, picked["pair_window"],
            picked["user_power"], picked["popularity_ridge"],
            picked["l2"], picked["decay"], picked["weight_relative"],
            f", new items from {'unit-scaled ' if picked.get('content_unit') else ''}content with sharpness {picked['content_sharpness']:g}, "
            f"ridge {picked['content_l2']:g}" if "content_l2" in picked else "",
            picked["towers_valid"], "" if picked["kept"] else f": not kept (weight 0; out-of-sample gain {picked['crossfit_gain']:+.4f})",
        )
        logger.info("popularity prior: weight %g x spread, counts %s (out-of-sample gain %+.4f)", picked["popularity_weight_relative"],
                    f"fading over {picked['popularity_days']:g} days" if picked["popularity_days"] else "of all time", picked["popularity_gain"])
