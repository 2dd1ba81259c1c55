"""The default recipe (recsys.model.recipe): its choices follow the data, each one is recorded, a
pinned field is never changed, and a candidate is kept only when it wins on held-out validation users.

The modality tests use a synthetic catalog whose content is built to carry (or not carry) the signal:
users each like one of 8 clusters of items, and a modality's vectors either encode the cluster or are
noise. Everything but the modalities is pinned, so each test runs a handful of small fits. The modality
choice is judged as the cold protocol judges it (new items ranked from their content): on warm items,
noise vectors act as item identities and can help a little, which is why the recipe's choice follows
the validation it is given.)"""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from recsys.data.splits import loo_split, make_split, order_interactions
from recsys.encoders.features import ItemFeatures
from recsys.model.grid import Trial, crossfit, wins_on_both_halves
from recsys.model.recipe import DataShape, RecipeFit, pinned_fields, rank_for, shape_rules
from recsys.model.train import fit_two_tower, item_index_of, item_rows, prepare_training_data, refit_on_everything
from recsys.eval.baselines import ContentKNNScorer, frozen_content_embeddings
from recsys.model.two_tower import ContentKNNBlend, ModelScorer

N_ITEMS, N_CLUSTERS, N_USERS, PER_USER = 160, 8, 320, 12
PIN_ALL_BUT_MODALITIES = {
    "model.item_id_embedding": False, "model.dim": 16, "model.head_hidden": 0, "model.item_scale": False,
    "model.user_scale": False, "model.ensemble_size": 1, "model.item_item": "none",
    "train.epochs": 6, "train.patience": 3, "train.batch_size": 64, "train.lr": 0.01,
}


def _synthetic(image_signal: bool, timestamps: bool = True) -> tuple[ItemFeatures, pl.DataFrame]:
    rng = np.random.default_rng(0)
    cluster = np.arange(N_ITEMS) % N_CLUSTERS
    centroids = rng.standard_normal((N_CLUSTERS, 16))
    signal = (centroids[cluster] + 0.7 * rng.standard_normal((N_ITEMS, 16))).astype(np.float32)
    noise = rng.standard_normal((N_ITEMS, 64)).astype(np.float32)
    ones = np.ones(N_ITEMS, bool)
    features = ItemFeatures(
        item_ids=np.arange(N_ITEMS), text=noise if image_signal else signal, text_mask=ones,
        image=signal if image_signal else noise, image_mask=ones,
        categories=np.zeros((N_ITEMS, 0), np.float32), category_vocab=[],
    )
    rows = []
    for user in range(N_USERS):
        liked = np.flatnonzero(cluster == user % N_CLUSTERS)
        for t, item in enumerate(rng.choice(liked, size=PER_USER, replace=False)):
            rows.append((user, int(item), t * 60 if timestamps else 0, 1.0))
    interactions = pl.DataFrame(
        rows, schema={"user_id": pl.Int64, "item_id": pl.Int64, "timestamp": pl.Int64, "weight": pl.Float32}, orient="row"
    )
    return features, interactions


def _recipe_fit(make_config, tmp_path, features, interactions, protocol="loo", **pins):
    """The recipe on a protocol's split, validating as that protocol does (cold: held-out items ranked
    among themselves, where content is all a model has)."""
    cfg = make_config(tmp_path, **{"train.tune": True, "encoders.image.enabled": True, **PIN_ALL_BUT_MODALITIES, **pins})
    split = make_split(protocol, interactions, features.item_ids, cfg.eval)
    index = item_index_of(np.asarray(features.item_ids))
    return fit_two_tower(features, split.train, split.valid, cfg, show_progress=False,
                         valid_candidates=item_rows(split.meta.get("valid_candidate_items"), index))


def _choice(result, key):
    values = [c["value"] for c in result.choices if c["key"] == key]
    return values[-1] if values else None


@pytest.mark.parametrize("image_signal", [True, False], ids=["images-carry-the-signal", "images-are-noise"])
def test_image_branch_kept_only_when_images_carry_the_signal(make_config, tmp_path, image_signal):
    features, interactions = _synthetic(image_signal)
    result = _recipe_fit(make_config, tmp_path, features, interactions, protocol="cold")
    modalities = result.config.model.modalities
    assert ("image" in modalities) == image_signal, (modalities, result.choices)
    assert ("text" in modalities) != image_signal, (modalities, result.choices)  # the noisy one goes
    # every choice comes with its reason, and the pinned fields kept the config's values
    assert all(c["reason"] for c in result.choices)
    assert result.config.model.dim == 16 and result.config.model.ensemble_size == 1
    assert not result.config.train.tune  # the resolved config is used as it is when reloaded


def test_a_log_without_timestamps_gets_mean_pooling(make_config, tmp_path):
    features, interactions = _synthetic(image_signal=False, timestamps=False)
    result = _recipe_fit(make_config, tmp_path, features, interactions, **{"model.modalities": ["text"]})
    assert result.config.model.user_pooling == "mean"
    assert result.config.train.objective == "all_but_one"
    assert _choice(result, "model.modalities") == ["text"]  # pinned: recorded as pinned, not tried
    assert [c["reason"] for c in result.choices if c["key"] == "model.modalities"] == ["pinned by the config"]
    assert result.recipe_fits == 1  # nothing left to try: the one fit

    ordered = _synthetic(image_signal=False, timestamps=True)
    data = prepare_training_data(ordered[0], *_train_valid(ordered[1]), make_config(tmp_path))
    shape = DataShape.of(ordered[0], data)
    assert shape.ordered and shape.modalities == ("text", "image")
    rules = dict((k, v) for values, _ in shape_rules(shape, make_config(tmp_path)) for k, v in values.items())
    assert rules["model.user_pooling"] == "attention" and rules["train.objective"] == "next_item"
    # RecipeFit.shaped: the config the recipe's first fit trains (what bench/training.py times), pins kept
    recipe = RecipeFit(make_config(tmp_path, **{"model.max_history": 7}), show_progress=False)
    _, base = recipe.shaped(ordered[0], data)
    assert base.model.user_pooling == "attention" and base.train.objective == "next_item" and base.model.max_history == 7


def _train_valid(interactions):
    split = loo_split(interactions, seed=0)
    return split.train, split.valid


def test_pinned_fields_are_what_the_config_sets(make_config, tmp_path):
    cfg = make_config(tmp_path, **{"model.user_pooling": "attention"})
    assert {"model.user_pooling", "model.dim", "train.epochs", "train.tune"} <= pinned_fields(cfg)
    assert "model.modalities" not in pinned_fields(cfg) and "train.objective" not in pinned_fields(cfg)


def test_rank_for_catalog_sizes():
    assert rank_for(10) == 10
    assert rank_for(1682) == 1024 and rank_for(3706) == 2048 and rank_for(200_000) == 2048


def test_crossfit_keeps_only_what_wins_on_the_other_half():
    incumbent = Trial({}, 0.50, (0.50, 0.50))
    assert crossfit([Trial({"x": 1}, 0.55, (0.56, 0.54))], incumbent).kept
    # wins big on one half, loses on the other: picked on the first, judged on the second it loses
    lucky = Trial({"x": 2}, 0.51, (0.60, 0.42))
    verdict = crossfit([lucky], incumbent)
    assert not verdict.kept and verdict.winner is incumbent and verdict.gain < 0
    # a larger grid of noise: each half's pick is a different point, each loses on the other half
    noise = [Trial({"x": i}, 0.5, (0.5 + d, 0.5 - d)) for i, d in enumerate([0.05, -0.05, 0.02])]
    assert not crossfit(noise, incumbent).kept
    with pytest.raises(ValueError, match="halves"):
        crossfit([Trial({}, 0.5)], incumbent)


def test_a_graded_choice_is_kept_only_where_it_holds_on_both_halves():
    incumbent = Trial({}, 0.50, (0.50, 0.50))
    # weights whose halves pull to opposite ends of the grid: crossfit's per-half picks lose on the other half,
    # but a middle weight that beats the incumbent on both halves is kept
    graded = [Trial({"w": 0.5}, 0.51, (0.56, 0.46)), Trial({"w": 2}, 0.515, (0.52, 0.51)), Trial({"w": 8}, 0.52, (0.47, 0.57))]
    assert not crossfit(graded, incumbent).kept
    verdict = wins_on_both_halves(graded, incumbent)
    assert verdict.kept and verdict.winner.point == {"w": 2} and verdict.gain == pytest.approx(0.01)
    # none holds on both halves: the incumbent stays, even though a candidate is best on all queries
    verdict = wins_on_both_halves([graded[0], graded[2]], incumbent)
    assert not verdict.kept and verdict.winner is incumbent and verdict.gain == 0.0
    with pytest.raises(ValueError, match="halves"):
        wins_on_both_halves([Trial({}, 0.5)], incumbent)


@pytest.mark.parametrize("block", ["searched", "weak"])
def test_a_catalog_where_popularity_is_the_signal_is_not_served_below_popularity(make_config, tmp_path, block):
    """A small shop whose users mostly take the best-sellers and whose content says nothing: the shipped
    model stays at or above popularity on validation, through the item-item block or, when the block is
    weak (an extreme ridge, pinned), through the blend's popularity prior (kept only on held-out users)."""
    rng = np.random.default_rng(1)
    n_items, n_users = 200, 300
    ones = np.ones(n_items, bool)
    features = ItemFeatures(
        item_ids=np.arange(n_items), text=rng.standard_normal((n_items, 16)).astype(np.float32), text_mask=ones,
        image=None, image_mask=None, categories=np.zeros((n_items, 0), np.float32), category_vocab=[],
    )
    popularity = 1.0 / np.arange(1, n_items + 1) ** 1.2
    rows = [(user, int(item), t, 1.0) for user in range(n_users)
            for t, item in enumerate(rng.choice(n_items, size=10, replace=False, p=popularity / popularity.sum()))]
    interactions = pl.DataFrame(rows, schema={"user_id": pl.Int64, "item_id": pl.Int64, "timestamp": pl.Int64, "weight": pl.Float32}, orient="row")
    pins = {key: value for key, value in PIN_ALL_BUT_MODALITIES.items() if key != "model.item_item"}
    pins |= {"model.modalities": ["text"], "train.item_item_pair_windows": [0.0], "train.item_item_decays": [1.0]}
    if block == "weak":
        pins |= {"train.item_item_l2": [1e9], "train.item_item_weights": [0.01]}
    cfg = make_config(tmp_path, **{"train.tune": True, **pins})
    split = loo_split(interactions, seed=0)
    result = fit_two_tower(features, split.train, split.valid, cfg, show_progress=False)
    assert result.config.model.item_item == "ease"
    assert result.best_metric >= result.baselines["popularity"], (result.best_metric, result.baselines, result.item_item)
    if block == "weak":
        assert result.item_item["popularity_weight_relative"] > 0, result.item_item
    if block == "searched" or result.item_item["kept"]:  # the block's weight is recorded with its reason: mixed, the floor, or the only one
        weight = [c for c in result.choices if c["key"] == "recipe.item_item_weight"]
        assert len(weight) == 1 and weight[0]["value"] == result.item_item["weight_relative"]
        assert ("no floor weight" in weight[0]["reason"]) == (block == "weak"), weight


def test_a_modality_no_item_has_is_not_carried(make_config, tmp_path):
    """A catalog whose image column names no readable file has image features of zeros: not a modality."""
    features, interactions = _synthetic(image_signal=False)
    features.image_mask = np.zeros(N_ITEMS, bool)
    data = prepare_training_data(features, *_train_valid(interactions), make_config(tmp_path))
    assert DataShape.of(features, data).modalities == ("text",)


def test_a_shop_whose_recent_items_sell_gets_a_fading_popularity_prior(make_config, tmp_path):
    """Each day has its own best-sellers and users come back over the days: counts that fade with age
    (train.item_item_popularity_days) beat all-time counts on the users' latest interactions."""
    rng = np.random.default_rng(2)
    n_items, n_users, n_days = 200, 400, 20
    ones = np.ones(n_items, bool)
    features = ItemFeatures(
        item_ids=np.arange(n_items), text=rng.standard_normal((n_items, 16)).astype(np.float32), text_mask=ones,
        image=None, image_mask=None, categories=np.zeros((n_items, 0), np.float32), category_vocab=[],
    )
    rows = []
    for user in range(n_users):
        for day in np.sort(rng.choice(n_days, size=8, replace=False)):
            hot = np.arange(10 * day, 10 * day + 10)
            item = int(rng.choice(hot)) if rng.random() < 0.8 else int(rng.integers(n_items))
            rows.append((user, item, int(day) * 86400 + int(rng.integers(3600)), 1.0))
    interactions = pl.DataFrame(rows, schema={"user_id": pl.Int64, "item_id": pl.Int64, "timestamp": pl.Int64, "weight": pl.Float32}, orient="row")
    interactions = interactions.unique(["user_id", "item_id"], keep="first")
    pins = {key: value for key, value in PIN_ALL_BUT_MODALITIES.items() if key != "model.item_item"}
    pins |= {"model.modalities": ["text"], "train.item_item_pair_windows": [0.0], "train.item_item_decays": [1.0],
             "train.item_item_l2": [1e9], "train.item_item_weights": [0.01]}
    cfg = make_config(tmp_path, **{"train.tune": True, **pins})
    split = loo_split(interactions, seed=0)
    result = fit_two_tower(features, split.train, split.valid, cfg, show_progress=False)
    assert result.item_item["popularity_days"] > 0 and result.item_item["popularity_weight_relative"] > 0, result.item_item
    assert result.best_metric > result.baselines["popularity"], (result.best_metric, result.baselines)


def test_a_model_below_content_knn_is_not_shipped_and_one_above_stays_narrow(make_config, tmp_path):
    """The content-kNN floor: towers that learned nothing (a learning rate of ~0) validate below
    content-kNN on a catalog whose text carries the signal, so the recipe adds content-kNN at the floor
    weight and ships a model at least as good as content-kNN on validation. Towers that learned the
    clusters beat it, and adding content-kNN is then kept only if it wins on held-out users."""
    features, interactions = _synthetic(image_signal=False)
    features.image, features.image_mask = None, None
    pins = {"model.modalities": ["text"], "train.epochs": 1}
    weak = _recipe_fit(make_config, tmp_path / "weak", features, interactions, **pins, **{"train.lr": 1e-9})
    assert weak.config.model.content_knn and weak.content_knn["floor"], weak.content_knn
    assert weak.content_knn["model_valid"] < weak.baselines["content_knn"]
    assert weak.best_metric >= weak.baselines["content_knn"] - 1e-9, (weak.best_metric, weak.baselines)
    assert _choice(weak, "model.content_knn") is True
    # The deployed model, refit on every interaction, keeps content-kNN at the weight validation picked.
    refit = refit_on_everything(features, order_interactions(interactions, 0), weak, show_progress=False)
    assert isinstance(refit.model, ContentKNNBlend) and refit.config.model.content_knn
    histories = [np.asarray(h) for h in prepare_training_data(features, order_interactions(interactions, 0), interactions.clear(), refit.config).sequences[:50]]
    served = ModelScorer(refit.model, refit.model.feature_tensors(features)).score(histories)
    content = ContentKNNScorer(frozen_content_embeddings(features)).score(histories, None)
    assert (served.argmax(axis=1) == content.argmax(axis=1)).mean() > 0.9  # content-kNN ranks
    # Text that is noise: content-kNN is near random, the towers learn the items' identities from it.
    noisy, interactions = _synthetic(image_signal=True)
    noisy.image, noisy.image_mask = None, None
    trained = _recipe_fit(make_config, tmp_path / "trained", noisy, interactions, **{"model.modalities": ["text"]})
    assert trained.content_knn["model_valid"] > trained.baselines["content_knn"], (trained.content_knn, trained.baselines)
    assert not trained.content_knn.get("floor")
    assert trained.config.model.content_knn == trained.content_knn["kept"]
    assert isinstance(trained.model, ContentKNNBlend) == trained.content_knn["kept"]
    assert trained.best_metric >= trained.baselines["content_knn"]


@pytest.mark.parametrize("timestamps", [False, True], ids=["unordered-log", "ordered-log"])
def test_the_recipe_validates_on_the_users_its_shape_rules_ask_for(make_config, tmp_path, timestamps):
    """train.valid_max_users is the recipe's to choose: a log without a time order validates on every user
    (the rule sets None), an ordered one keeps the default sample. Here the default is 50 users, so the
    two differ on the synthetic log's 320; the model's validation score and the baselines are measured on
    the same users."""
    from recsys.model.fitting import validation_score

    features, interactions = _synthetic(image_signal=False, timestamps=timestamps)
    features.image, features.image_mask = None, None
    cfg = make_config(tmp_path, **{"train.tune": True, **PIN_ALL_BUT_MODALITIES, "model.modalities": ["text"], "train.epochs": 2})
    cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"valid_max_users": 50})})
    cfg.train.__pydantic_fields_set__.discard("valid_max_users")  # as if 50 were the default
    split = loo_split(interactions, seed=0)
    result = fit_two_tower(features, split.train, split.valid, cfg, show_progress=False)
    expected = None if not timestamps else 50
    assert result.config.train.valid_max_users == expected
    everyone = prepare_training_data(features, split.train, split.valid, result.config.model_copy(
        update={"train": result.config.train.model_copy(update={"valid_max_users": expected})}))
    assert len(everyone.valid.queries) == (N_USERS if expected is None else 50)
    assert result.best_metric == pytest.approx(validation_score(result.model, features, everyone.valid, "ndcg@10"), abs=1e-6)


def test_each_validation_fit_stops_at_its_share_of_the_budget(make_config, tmp_path, monkeypatch):
    """One slow fit cannot spend the whole budget: each validation fit gets train.max_minutes = a share of
    train.budget_minutes (a pinned train.max_minutes wins); the resolved config keeps no cap, so the refit
    runs the epochs validation picked."""
    import recsys.model.recipe as recipe_module

    caps = []

    class RecordingTowersFit(recipe_module.TowersFit):
        def fit(self, features, data):
            caps.append(self.cfg.train.max_minutes)
            return super().fit(features, data)

    monkeypatch.setattr(recipe_module, "TowersFit", RecordingTowersFit)
    features, interactions = _synthetic(image_signal=False)
    result = _recipe_fit(make_config, tmp_path, features, interactions, **{"model.modalities": ["text"], "train.budget_minutes": 8.0})
    assert caps == [8.0 * recipe_module.FIT_SHARE]
    assert _choice(result, "recipe.fit_minutes") == pytest.approx(8.0 * recipe_module.FIT_SHARE, abs=0.01)
    assert result.config.train.max_minutes is None

    caps.clear()
    result = _recipe_fit(make_config, tmp_path, features, interactions,
                         **{"model.modalities": ["text"], "train.budget_minutes": 8.0, "train.max_minutes": 0.5})
    assert caps == [0.5] and _choice(result, "recipe.fit_minutes") is None
    assert result.config.train.max_minutes == 0.5


def test_the_budget_holds_the_refit_of_each_kept_member(make_config, tmp_path, monkeypatch):
    """train.budget_minutes covers the whole training: a stage runs only if its fits, and the refits on
    every interaction of what it could keep, still fit beside the refits already held for the kept members.
    Each fit here takes 60 s of a fake clock; in a 5-minute budget the first fit holds 60 s for its refit,
    so no trial (its fit and two members' fits and refits: 300 s) fits in the 180 s left, one member (120 s)
    does, and nothing more after it. Without the reserve a trial would run."""
    import dataclasses

    import recsys.model.recipe as recipe_module

    now = [0.0]
    monkeypatch.setattr(recipe_module, "clock", lambda: now[0])

    class SixtySecondFit(recipe_module.TowersFit):
        def fit(self, features, data):
            result = super().fit(features, data)
            now[0] += 60.0
            return dataclasses.replace(result, best_epoch=result.epochs_run - 1)  # the refit runs every epoch

    monkeypatch.setattr(recipe_module, "TowersFit", SixtySecondFit)
    features, interactions = _synthetic(image_signal=False)
    pins = {key: value for key, value in PIN_ALL_BUT_MODALITIES.items() if key != "model.ensemble_size"}
    cfg = make_config(tmp_path, **{"train.tune": True, "encoders.image.enabled": True, **pins, "train.budget_minutes": 5.0})
    split = loo_split(interactions, seed=0)
    result = fit_two_tower(features, split.train, split.valid, cfg, show_progress=False)

    assert result.recipe_fits == 2, result.choices
    skipped = [c for c in result.choices if c["key"] == "recipe.without image"]
    assert skipped and skipped[0]["value"] is None and "held for the refit" in skipped[0]["reason"]
    held = _choice(result, "recipe.refit_minutes") * 60
    assert held == 60.0 * result.config.model.ensemble_size
    assert now[0] + held <= 5.0 * 60  # the fits spent and the refits held stay within the budget


def test_fits_to_come_are_estimated_by_the_kept_configs_fits(monkeypatch):
    """A trial that made fits faster (dropping the posters) lets later stages use the time it freed: what is
    still to come is estimated by the kept config's fits, not the slowest fit so far (the first fit, with
    posters, stopped at its cap). A slower trial that lost does not raise the estimate."""
    import recsys.model.recipe as recipe_module
    from recsys.model.recipe import Budget

    now = [0.0]
    monkeypatch.setattr(recipe_module, "clock", lambda: now[0])

    class Fit:  # the refit runs every epoch: it costs what the fit did
        best_epoch, epochs_run = 9, 10

    budget = Budget(900.0)
    assert budget.allows(fits=3, refits=2)  # nothing measured yet
    now[0] += 240.0
    budget.fits.append(240.0)  # the first fit, with posters
    budget.hold_refit(Fit())
    assert budget.per_fit() == 240.0 and not budget.allows(fits=3, refits=2)  # 5 x 240 s > 420 s left
    now[0] += 60.0
    budget.fits.append(60.0)  # the trial without posters, kept
    budget.hold_refit(Fit(), replacing_first=True)
    assert budget.refits == [60.0] and budget.per_fit() == 60.0
    assert budget.left() == 900.0 - 300.0 - 60.0
    assert budget.allows(fits=3, refits=2)  # 5 x 60 s fit in the 540 s left; at the first fit's 240 s they would not
    now[0] += 200.0
    budget.fits.append(200.0)  # a slower trial (wider towers) that lost: the kept config is unchanged
    assert budget.per_fit() == 60.0
    assert "of 1.0 each" in budget.why_not(fits=5, refits=2)
    now[0] += 90.0
    budget.fits.append(90.0)  # an ensemble member of the kept config, kept: its fits set the estimate too
    budget.hold_refit(Fit())
    assert budget.per_fit() == 90.0 and budget.refits == [60.0, 90.0]


def test_a_refit_is_estimated_by_the_epochs_it_runs():
    """A member's refit runs its best epoch's count: its fit's time per epoch times those epochs."""
    from recsys.model.recipe import Budget

    class Fit:
        best_epoch, epochs_run = 4, 10

    assert Budget.refit_seconds(100.0, Fit()) == 50.0


def test_the_block_weight_grid_reaches_the_floor_by_default():
    """The default block weights end at the floor weight (the block ranks, the towers order its near-ties),
    so weak towers never hold the blend below the block alone on validation."""
    from recsys.config import TrainConfig
    from recsys.model.grid import FLOOR_WEIGHT

    weights = TrainConfig().item_item_weights
    assert weights[-1] == FLOOR_WEIGHT and weights[:-1] == sorted(weights[:-1])


def test_content_knn_is_judged_on_halves_of_the_held_out_items_on_cold(tiny_data, tiny_features, make_config, tmp_path, monkeypatch):
    """On cold validation the model's settings were picked on the few held-out items every user shares, so
    halves of the users both favour whatever fits those items: adding content-kNN is judged on halves of the
    items instead (RankingJudge.item_halves), and kept only if a weight beats the model alone on each."""
    from recsys.data.splits import cold_item_split
    from recsys.eval.protocol import RankingJudge
    from recsys.model.content_knn_fit import ContentKNNFit
    from recsys.model.recipe import Fitted

    _, interactions = tiny_data
    cfg = make_config(tmp_path, **{"train.epochs": 1})
    cold = cold_item_split(interactions, tiny_features.item_ids, fraction=0.2, seed=0, valid_fraction=0.2)
    index = item_index_of(np.asarray(tiny_features.item_ids))
    candidates = item_rows(cold.meta["valid_candidate_items"], index)
    towers = fit_two_tower(tiny_features, cold.train, cold.valid, cfg, show_progress=False, valid_candidates=candidates)
    data = prepare_training_data(tiny_features, cold.train, cold.valid, cfg, candidates)
    assert data.valid.item_halves is not None
    asked, value_halves = [], RankingJudge.value_halves

    def spy(self, scores, metric, by="users"):
        asked.append(by)
        return value_halves(self, scores, metric, by)

    monkeypatch.setattr(RankingJudge, "value_halves", spy)
    result = ContentKNNFit(Fitted(towers), cfg).fit(tiny_features, data)
    assert asked and set(asked) == {"items"}
    picked = result.content_knn
    grid_points = len(cfg.train.content_knn_weights) + 1  # each weight and the model alone
    assert len(asked) == grid_points and "half_gain" in picked
    # Kept only with a positive gain on the closer half; otherwise the model ships unwrapped.
    assert picked["kept"] == (picked["half_gain"] > 0 or bool(picked.get("floor"))), picked
