"""The closed-form item-item block (model.item_item): its factors are EASE, exactly at full rank, and
training picks it on validation only where it helps."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from recsys.data.splits import cold_item_split, loo_split
from recsys.model.item_item import (
    ContentKernel,
    GramSpectrum,
    block_user_vectors,
    content_similarity_kernel,
    fit_content_map,
    predict_content_rows,
    history_ages,
    history_weights,
    windowed_gram,
)
from recsys.data.histories import Histories
from recsys.model.teacher import ease_weights
from recsys.model.train import fit_two_tower, prepare_training_data, validation_score
from recsys.model.grid import FLOOR_WEIGHT
from recsys.model.item_item_fit import ItemItemFit
from recsys.model.two_tower import ItemItemBlend


def _ease_scores(sequences, n, l2, history_weights_by_item):
    x = np.zeros(n)
    for item, weight in history_weights_by_item.items():
        x[item] += weight
    return x @ ease_weights(sequences, n, l2, max_items=1000).numpy().astype(np.float64)


def test_full_rank_block_scores_every_item_outside_the_history_as_ease_does():
    rng = np.random.default_rng(0)
    n = 12  # items 10 and 11 are never seen in training
    sequences = [rng.choice(10, size=int(rng.integers(2, 7)), replace=False) for _ in range(40)]
    spectrum = GramSpectrum.of_sequences(sequences, n, max_items=100)
    vectors, scale = spectrum.factors(l2=5.0, rank=n)
    inputs = vectors * scale[:, None]
    history = np.array([0, 3, 4])
    outside = np.setdiff1d(np.arange(n), history)
    as_set = block_user_vectors([history], inputs, decay=1.0) @ vectors.T
    np.testing.assert_allclose(as_set[0, outside], _ease_scores(sequences, n, 5.0, {0: 1, 3: 1, 4: 1})[outside], atol=1e-5)
    # Recency: the latest item weighs 1, each step back `decay` times less.
    assert history_weights([3], 0.5)[0].tolist() == [0.25, 0.5, 1.0]
    recent = block_user_vectors([history], inputs, decay=0.5) @ vectors.T
    expected = _ease_scores(sequences, n, 5.0, {0: 0.25, 3: 0.5, 4: 1.0})
    np.testing.assert_allclose(recent[0, outside], expected[outside], atol=1e-5)
    assert not np.abs(vectors[10:]).max() > 1e-6  # unseen items: no collaborative vector
    # Truncation keeps the configured width (unused columns are zero), and the ranking mostly survives.
    wide, _ = spectrum.factors(l2=5.0, rank=20)
    assert wide.shape == (n, 20) and not wide[:, n:].any()
    low, low_scale = spectrum.factors(l2=5.0, rank=6)
    truncated = block_user_vectors([history], low * low_scale[:, None], 1.0) @ low.T
    assert np.corrcoef(truncated[0, outside[:7]], as_set[0, outside[:7]])[0, 1] > 0.8
    with pytest.raises(ValueError, match="train.ease_max_items=5"):
        GramSpectrum.of_sequences(sequences, n, max_items=5)


def test_items_logged_at_the_same_time_share_an_age():
    """Ages count distinct timestamps after an item's own: the order inside a tie (random in the protocol)
    does not change a weight; without times, or with all times distinct, ages are positions."""
    assert history_ages(4).tolist() == [3, 2, 1, 0]
    assert history_ages(4, np.array([5, 9, 9, 12])).tolist() == [2, 1, 1, 0]
    assert history_ages(3, np.array([1, 2, 3])).tolist() == history_ages(3).tolist()
    assert history_ages(3, np.zeros(3)).tolist() == [0, 0, 0]  # no time order at all (ml-1m): a set
    assert history_weights([3], 0.5, [np.array([7, 8, 8])])[0].tolist() == [0.5, 1.0, 1.0]
    rng = np.random.default_rng(2)
    inputs = rng.normal(size=(6, 4)).astype(np.float32)
    histories, times = [np.array([0, 3, 5, 1]), np.array([2, 4])], [np.array([1, 4, 4, 4]), np.array([3, 8])]
    got = block_user_vectors(Histories(histories, times), inputs, 0.5, chunk_size=1)
    np.testing.assert_allclose(got[0], 0.5 * inputs[0] + inputs[3] + inputs[5] + inputs[1], rtol=1e-6)
    np.testing.assert_allclose(got[1], 0.5 * inputs[2] + inputs[4], rtol=1e-6)
    # Reordering inside the tie changes nothing; by position it would.
    swapped = [np.array([0, 1, 5, 3]), histories[1]]
    np.testing.assert_allclose(block_user_vectors(Histories(swapped, times), inputs, 0.5), got, rtol=1e-6)
    assert not np.allclose(block_user_vectors(swapped, inputs, 0.5), block_user_vectors(histories, inputs, 0.5))
    with pytest.raises(ValueError, match="history times: expected 3 timestamps"):
        history_ages(3, np.array([1, 2]))
    with pytest.raises(ValueError, match="one array per history"):
        Histories(histories, times[:1])
    with pytest.raises(ValueError, match="history 0 has 4 items but 3 timestamps"):
        Histories(histories, [times[0][:3], times[1]])


def test_pair_window_counts_items_consumed_close_together_more_and_keeps_the_ease_identity():
    gram = windowed_gram([np.array([2, 0, 1, 2])], n_items=4, window=2.0)  # item 2 repeated: counts once, first
    near, far = np.exp(-1 / 2.0), np.exp(-2 / 2.0)  # first positions: item 2 at 0, item 0 at 1, item 1 at 2
    expected = np.array([[1, near, near, 0], [near, 1, far, 0], [near, far, 1, 0], [0, 0, 0, 0]])
    np.testing.assert_allclose(gram, expected)
    rng = np.random.default_rng(1)
    n = 10
    sequences = [rng.choice(n, size=int(rng.integers(2, 9)), replace=False) for _ in range(30)]
    windowed = windowed_gram(sequences, n, window=3.0)
    assert np.linalg.eigvalsh(windowed).min() > -1e-9  # a sum of X^T K X with K positive semi-definite
    # The block of a windowed Gram is still exactly that Gram's EASE model outside the history.
    spectrum = GramSpectrum.of_sequences(sequences, n, max_items=100, pair_window=3.0)
    vectors, scale = spectrum.factors(l2=4.0, rank=n)
    precision = np.linalg.inv(windowed + 4.0 * np.eye(n))
    ease = precision / -np.diag(precision)
    history = np.array([1, 5])
    outside = np.setdiff1d(np.arange(n), history)
    block = block_user_vectors([history], vectors * scale[:, None], decay=1.0) @ vectors.T
    np.testing.assert_allclose(block[0, outside], ease[history].sum(axis=0)[outside], atol=1e-5)
    with pytest.raises(ValueError, match="window must be > 0"):
        windowed_gram(sequences, n, window=0.0)


def test_shaped_ridge_and_weighted_users_are_exactly_that_ease_model_at_full_rank():
    """EASE with item i's ridge l2 * (1 + a count_i / mean count) on X^T W X, W = each user's (distinct items)^-g
    scaled to keep the trace, solved by inversion, is what the factors score outside the history."""
    rng = np.random.default_rng(3)
    n = 12
    sequences = [rng.choice(10, size=int(rng.integers(2, 9)), replace=False) for _ in range(40)]
    lengths = np.array([len(s) for s in sequences], dtype=np.float64)
    weights = lengths**-0.5 * lengths.sum() / (lengths**-0.5 * lengths).sum()
    x = np.zeros((len(sequences), n))
    for u, items in enumerate(sequences):
        x[u, items] = 1.0
    gram = x.T @ (x * weights[:, None])
    assert np.isclose(np.trace(gram), lengths.sum())  # the ridge values keep their meaning
    counts = np.diag(gram)
    ridge = 4.0 * (1.0 + 0.5 * counts / counts[counts > 0].mean())
    precision = np.linalg.inv(gram + np.diag(ridge))
    ease = precision / -np.diag(precision)
    spectrum = GramSpectrum.of_sequences(sequences, n, max_items=100, user_power=0.5, popularity_ridge=0.5)
    vectors, scale = spectrum.factors(l2=4.0, rank=n)
    history = np.array([0, 6, 7])
    outside = np.setdiff1d(np.arange(10), history)
    block = block_user_vectors([history], vectors * scale[:, None], decay=1.0) @ vectors.T
    np.testing.assert_allclose(block[0, outside], ease[history].sum(axis=0)[outside], atol=1e-5)
    full = spectrum.ease_weights(4.0, np.float64)
    np.testing.assert_allclose(full[np.ix_(history, outside)], ease[np.ix_(history, outside)], atol=1e-8)
    assert not np.abs(vectors[10:]).max() > 1e-6  # unseen items still have no collaborative vector
    # The same shaping on a windowed Gram, and plain EASE when both are 0.
    windowed = GramSpectrum.of_sequences(sequences, n, max_items=100, pair_window=3.0, user_power=0.5)
    np.testing.assert_allclose(windowed.eigenvalues.sum(), np.trace(windowed_gram(sequences, n, 3.0, weights)), rtol=1e-9)
    plain = GramSpectrum.of_sequences(sequences, n, max_items=100)
    assert plain.ridge_shape is None
    assert not np.allclose(plain.ease_weights(4.0), spectrum.ease_weights(4.0), atol=1e-3)


def test_training_keeps_the_block_where_validation_rises_and_drops_it_on_cold_items(
    tiny_data, tiny_features, tmp_path, make_config
):
    _, interactions = tiny_data
    cfg = make_config(tmp_path, **{"model.item_item": "ease", "model.item_item_rank": 16, "train.item_item_l2": [10.0, 50.0],
                                   "train.item_item_pair_windows": [0.0, 5.0]})
    split = loo_split(interactions, seed=0)
    result = fit_two_tower(tiny_features, split.train, split.valid, cfg, show_progress=False)
    assert isinstance(result.model, ItemItemBlend) and result.model.dim == cfg.model.dim + 16 + 1
    picked = result.item_item
    assert picked["l2"] in (10.0, 50.0) and picked["decay"] in cfg.train.item_item_decays and picked["pair_window"] in (0.0, 5.0)
    assert "gram_gain" in picked  # warm validation chooses the Gram's shape (ItemItemFit.shaped_gram)
    assert picked["user_power"] in cfg.train.item_item_user_powers and picked["popularity_ridge"] in cfg.train.item_item_popularity_ridges
    # On these warm users the block lifts validation well above the towers alone (2 epochs of training).
    assert picked["kept"] and picked["weight"] > 0 and result.best_metric > picked["towers_valid"] + 0.02
    # The reported score is the blended model's, ranked exactly as early stopping ranks.
    judge = prepare_training_data(tiny_features, split.train, split.valid, cfg).valid
    score = validation_score(result.model, tiny_features, judge, "ndcg@10")
    assert score == pytest.approx(result.best_metric, abs=1e-6)
    # The served model ages a history by the timestamps it carries, as the search did.
    queries = judge.queries.histories
    assert queries.times is not None and all(len(t) == len(h) for t, h in zip(queries.times, queries))
    vectors, _ = result.model.encode_items_with_bias(result.model.feature_tensors(tiny_features))
    history, times = queries[0], queries.times[0]
    tied = Histories([history], [np.full(len(history), times[-1])])  # one bulk log: every item the latest
    model = result.model
    model.block_decay.fill_(1.0)  # decay 1 reads the history as a set: the same as every item tied
    np.testing.assert_allclose(model.encode_histories(vectors, tied), model.encode_histories(vectors, [history]))
    model.block_decay.fill_(0.5)  # with recency, a tie weighs its items alike, positions would not
    assert not np.allclose(model.encode_histories(vectors, tied), model.encode_histories(vectors, [history]))

    # Cold validation items were held out of training: no block rows, no gain, so the weight is 0.
    cold = cold_item_split(interactions, tiny_features.item_ids, fraction=0.2, seed=0, valid_fraction=0.2)
    index = {item: row for row, item in enumerate(np.asarray(tiny_features.item_ids).tolist())}
    valid_candidates = np.asarray([index[i] for i in cold.meta["valid_candidate_items"]])
    result = fit_two_tower(tiny_features, cold.train, cold.valid, cfg, show_progress=False, valid_candidates=valid_candidates)
    assert not result.item_item["kept"] and float(result.model.block_weight) == 0.0
    assert result.best_metric == pytest.approx(result.item_item["towers_valid"], abs=1e-6)
    # Cold validation ranks new items only: plain EASE, no shape chosen there.
    assert "gram_gain" not in result.item_item and result.item_item["user_power"] == 0.0 and result.item_item["popularity_ridge"] == 0.0


def test_without_validation_the_block_takes_the_first_value_of_each_grid(tiny_data, tiny_features, tmp_path, make_config):
    _, interactions = tiny_data
    cfg = make_config(tmp_path, **{"model.item_item": "ease", "model.item_item_rank": 8, "train.epochs": 1,
                                   "train.item_item_l2": [20.0, 50.0], "train.item_item_decays": [0.9, 1.0]})
    split = loo_split(interactions, seed=0)
    result = fit_two_tower(tiny_features, split.train, split.valid.head(0), cfg, show_progress=False)
    picked = result.item_item
    assert picked["kept"] and (picked["l2"], picked["decay"], picked["weight_relative"]) == (20.0, 0.9, 0.5)
    assert float(result.model.block_decay) == pytest.approx(0.9) and picked["weight"] > 0


def test_content_map_is_the_ridge_solution_for_every_ridge_value():
    rng = np.random.default_rng(0)
    design, targets = rng.normal(size=(30, 5)), rng.normal(size=(30, 3))
    maps = fit_content_map(design, targets, [0.5, 20.0])
    for l2, found in zip((0.5, 20.0), maps):
        # The normal equations of |D W - T|^2 + l2 |W|^2 hold.
        np.testing.assert_allclose(design.T @ (design @ found - targets) + l2 * found, 0.0, atol=1e-4)
    # More ridge, a smaller map; a single value gives a single map.
    assert np.linalg.norm(maps[1]) < np.linalg.norm(maps[0])
    np.testing.assert_allclose(fit_content_map(design, targets, 0.5), maps[0])


def test_kernel_content_map_solves_kernel_ridge_and_draws_new_rows_from_the_nearest_known_items():
    rng = np.random.default_rng(0)

    def unit(x):
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    # Designs as the block builds them: two unit-scaled modalities and a bias column.
    design = np.concatenate([unit(rng.normal(size=(40, 6))), unit(rng.normal(size=(40, 3))), np.ones((40, 1))], axis=1)
    targets = rng.normal(size=(40, 4))
    anchors = design[:, :-1]
    kernel = content_similarity_kernel(design, anchors, 2.0, n_parts=2)
    # Identical content scores 1; the mean cosine over the two modalities sets the rest.
    np.testing.assert_allclose(np.diag(kernel), 1.0, atol=1e-12)
    np.testing.assert_allclose(kernel[0, 1], np.exp(2.0 * ((design[0, :-1] @ design[1, :-1]) / 2 - 1)))
    maps = ContentKernel.of(design, 2.0, n_parts=2).maps(targets, [0.1, 10.0])
    mean = targets.mean(0)
    for l2, found in zip((0.1, 10.0), maps):
        assert found.shape == (41, 4)
        np.testing.assert_allclose(found[-1], mean, atol=1e-5)
        # (K + l2 I) A = targets - mean: the kernel ridge normal equations.
        np.testing.assert_allclose((kernel + l2 * np.eye(40)) @ found[:-1], targets - mean, atol=1e-4)
        np.testing.assert_allclose(predict_content_rows(design, found, anchors, 2.0, 2), kernel @ found[:-1] + mean, atol=1e-4)
    # More ridge: predictions pulled towards the mean row.
    spread = [np.abs(predict_content_rows(design, m, anchors, 2.0, 2) - mean).mean() for m in maps]
    assert spread[1] < spread[0]
    # Rows in chunks are the rows at once.
    np.testing.assert_allclose(predict_content_rows(design, maps[0], anchors, 2.0, 2, chunk_size=7),
                               predict_content_rows(design, maps[0], anchors, 2.0, 2), atol=1e-10)
    # A sharp kernel draws a new item's row from the known item with the same content; a linear map of
    # the content cannot (40 targets, 10 content dimensions).
    sharp = ContentKernel.of(design, 50.0, n_parts=2).maps(targets, [1e-3])[0]
    copy = design[[3]]
    np.testing.assert_allclose(predict_content_rows(copy, sharp, anchors, 50.0, 2)[0], targets[3], atol=0.05)
    linear = fit_content_map(design, targets, 1e-3)
    assert np.abs(predict_content_rows(copy, linear, None, 0.0, 2)[0] - targets[3]).max() > 0.1


@pytest.mark.parametrize("keep_unseen_kernel", [True, False], ids=["unseen-kernel-kept", "unseen-rows-in-chunks"])
def test_a_content_map_lets_the_block_score_cold_validation_items(tiny_data, tiny_features, tmp_path, make_config, monkeypatch,
                                                                 keep_unseen_kernel):
    """model.item_item_new_items=content: on cold validation the held-out items get predicted block rows,
    so the block can raise validation there; the reported score is the served model's (whether the search kept
    the unseen items' kernel or, for a large catalog, computed their rows in chunks)."""
    import recsys.model.item_item_fit as item_item_fit

    if not keep_unseen_kernel:
        monkeypatch.setattr(item_item_fit, "UNSEEN_KERNEL_LIMIT", 0)
    _, interactions = tiny_data
    cfg = make_config(tmp_path, **{"model.item_item": "ease", "model.item_item_rank": 16, "model.item_item_new_items": "content",
                                   "train.item_item_l2": [10.0], "train.item_item_content_l2": [1.0, 10.0]})
    cold = cold_item_split(interactions, tiny_features.item_ids, fraction=0.2, seed=0, valid_fraction=0.2)
    index = {item: row for row, item in enumerate(np.asarray(tiny_features.item_ids).tolist())}
    valid_candidates = np.asarray([index[i] for i in cold.meta["valid_candidate_items"]])
    result = fit_two_tower(tiny_features, cold.train, cold.valid, cfg, show_progress=False, valid_candidates=valid_candidates)
    picked = result.item_item
    assert picked["content_l2"] in (1.0, 10.0) and picked["content_sharpness"] in cfg.train.item_item_content_sharpness
    assert result.model.block_content_map.abs().sum() > 0
    # The default map is a kernel map: its anchors are the known items' content rows.
    n_known = len(result.model.item_id_vocab)
    assert float(result.model.block_content_sharpness) == picked["content_sharpness"] > 0
    assert result.model.block_content_anchors.shape[0] == n_known == result.model.block_content_map.shape[0] - 1
    judge = prepare_training_data(tiny_features, cold.train, cold.valid, cfg, valid_candidates).valid
    score = validation_score(result.model, tiny_features, judge, "ndcg@10")
    assert score == pytest.approx(result.best_metric, abs=1e-6)
    # On these items the map's rows lift cold validation above the towers alone, so the block is kept.
    assert picked["kept"] and score > picked["towers_valid"]
    # Held-out items now carry a nonzero block row in the served vectors, with s = 0.
    vectors, _ = result.model.encode_items_with_bias(result.model.feature_tensors(tiny_features))
    block = vectors[valid_candidates, cfg.model.dim : cfg.model.dim + 16]
    assert np.abs(block).sum() > 0 and not vectors[valid_candidates, -1].any()


def test_without_a_time_order_the_decay_search_is_skipped(tiny_data, tiny_features, tmp_path, make_config, caplog):
    """Logs without timestamps (ml-1m: all 0) give every item age 0, so every decay is the same model:
    only the first is tried, and the block reads each history as a set."""
    import logging

    import polars as pl

    _, interactions = tiny_data
    cfg = make_config(tmp_path, **{"model.item_item": "ease", "model.item_item_rank": 8, "train.epochs": 1,
                                   "train.item_item_l2": [20.0], "train.item_item_decays": [0.7, 0.9, 1.0]})
    untimed = interactions.with_columns(pl.lit(0, dtype=pl.Int64).alias("timestamp"))
    split = loo_split(untimed, seed=0)
    with caplog.at_level(logging.INFO, logger="recsys.model.item_item_fit"):
        result = fit_two_tower(tiny_features, split.train, split.valid, cfg, show_progress=False)
    assert result.item_item["decay"] == 0.7 and "decay 0.7 stands for them all" in caplog.text
    n_combinations = len(cfg.train.item_item_pair_windows) * len(cfg.train.item_item_weights)  # one ridge, one decay
    assert f"rank 8, {n_combinations} combinations" in caplog.text
    judge = prepare_training_data(tiny_features, split.train, split.valid, cfg).valid
    assert all(np.unique(t).tolist() == [0] for t in judge.queries.histories.times)
    score = validation_score(result.model, tiny_features, judge, "ndcg@10")
    assert score == pytest.approx(result.best_metric, abs=1e-6)


def test_a_block_saved_before_the_popularity_prior_loads_without_one(tiny_data, tiny_features, tmp_path, make_config):
    _, interactions = tiny_data
    cfg = make_config(tmp_path, **{"model.item_item": "ease", "model.item_item_rank": 8, "train.epochs": 1})
    split = loo_split(interactions, seed=0)
    model = fit_two_tower(tiny_features, split.train, split.valid, cfg, show_progress=False).model
    assert isinstance(model, ItemItemBlend)
    state = {key: value for key, value in model.state_dict().items() if key != "block_popularity"}
    fresh = ItemItemBlend(model.base, model.item_id_vocab, model.rank)
    fresh.load_state_dict(state)  # strict: the missing prior is filled with zeros, nothing else differs
    assert float(fresh.block_popularity.abs().sum()) == 0.0


def test_content_maps_are_searched_wherever_the_catalog_has_unseen_items(tiny_data, tiny_features, tmp_path, make_config):
    """loo validation has no new-item targets, but the map still decides how far unseen items reach into warm
    users' lists, so its settings are searched while the catalog has unseen items; where every item has a
    block row the map scores nothing, and the first norm and ridge stand for them all."""
    _, interactions = tiny_data
    cfg = make_config(tmp_path, **{"model.item_item": "ease", "model.item_item_rank": 8, "train.epochs": 1,
                                   "model.item_item_new_items": "content", "train.item_item_content_l2": [10.0, 1.0],
                                   "train.item_item_content_norms": ["raw", "unit"]})
    split = loo_split(interactions, seed=0)
    data = prepare_training_data(tiny_features, split.train, split.valid, cfg)
    histories = data.valid.queries.histories
    assert (data.popularity > 0).all()  # the tiny log touches every item: the map scores none
    pinned = ItemItemFit(None, cfg).grid(histories, True, data)
    targets = np.concatenate([np.asarray(t) for t in data.valid.queries.targets])
    popularity = data.popularity.copy()
    popularity[np.setdiff1d(np.arange(len(popularity)), targets)[0]] = 0  # one unseen item, still no new target
    searched = ItemItemFit(None, cfg).grid(histories, True, dataclasses.replace(data, popularity=popularity))
    assert searched.ranges["content_l2"] == (10.0, 1.0) and searched.ranges["content_norm"] == ("raw", "unit")
    assert pinned.ranges["content_l2"] == (10.0,) and pinned.ranges["content_norm"] == ("raw",)
    first_sharpness = cfg.train.item_item_content_sharpness[0]
    assert searched.ranges["content_sharpness"] == tuple(cfg.train.item_item_content_sharpness)
    assert pinned.ranges["content_sharpness"] == (first_sharpness,)


def test_towers_that_learned_nothing_leave_the_ranking_to_the_block(tiny_data, tiny_features, tmp_path, make_config):
    """Untrained towers (learning rate ~0) mixed in at any finite weight only blur the block; the weight grid ends
    at the floor weight, where the block ranks and the towers order its near-ties, and validation picks it: the
    blend then validates as the block alone does."""
    _, interactions = tiny_data
    cfg = make_config(tmp_path, **{"model.item_item": "ease", "model.item_item_rank": 16, "train.item_item_l2": [10.0],
                                   "train.item_item_decays": [1.0], "train.epochs": 1, "train.lr": 1e-9,
                                   "train.item_item_weights": [0.5, 2.0, FLOOR_WEIGHT], "train.item_item_popularity_weights": [0.0]})
    split = loo_split(interactions, seed=0)
    result = fit_two_tower(tiny_features, split.train, split.valid, cfg, show_progress=False)
    picked = result.item_item
    assert picked["kept"] and picked["weight_relative"] == FLOOR_WEIGHT, picked
    data = prepare_training_data(tiny_features, split.train, split.valid, cfg)
    q, s = GramSpectrum.of_sequences(data.sequences, len(data.index), 10_000).factors(10.0, 16)
    block_alone = data.valid.value(block_user_vectors(data.valid.queries.histories, q * s[:, None], 1.0) @ q.T, "ndcg@10")
    assert result.best_metric > picked["towers_valid"] + 0.02
    assert result.best_metric == pytest.approx(block_alone, abs=0.01)


def test_the_towers_join_the_block_only_if_that_wins_on_both_halves():
    """The block's weight is a choice like the others: a finite weight (the towers mixed in) replaces the floor
    weight (the block ranks) only if it beats the floor on each half of validation, not just on all of it."""
    from recsys.model.grid import Trial

    floor = Trial({"weight": FLOOR_WEIGHT, "l2": 500}, 0.440, (0.452, 0.428))
    # the best on all validation, but only through one half: it loses on the other
    overfit = [Trial({"weight": 8.0, "l2": 500}, 0.445, (0.470, 0.420)), Trial({"weight": 1.0, "l2": 500}, 0.41, (0.43, 0.39))]
    chosen, gain = ItemItemFit.weighed([*overfit, floor])
    assert chosen is floor and gain == 0.0
    helps = [Trial({"weight": 4.0, "l2": 500}, 0.455, (0.472, 0.438)), *overfit]
    chosen, gain = ItemItemFit.weighed([*helps, floor])
    assert chosen.point["weight"] == 4.0 and gain == pytest.approx(0.010)  # the smaller of its half gains
    # a grid without the floor weight (pinned by a user) keeps the best point
    chosen, gain = ItemItemFit.weighed(overfit)
    assert chosen is overfit[0] and np.isnan(gain)


def test_a_shaped_gram_is_kept_only_where_it_wins_on_validation_users_that_did_not_pick_it():
    """`ItemItemFit.shaped_gram`: plain EASE (the ranges' first values) is the incumbent; a user weighting or
    popularity ridge replaces it only if its gain holds on the held-out half, and the full search then runs
    on the kept shape alone."""
    from recsys.model.grid import Grid

    grid = Grid({"pair_window": (0.0,), "user_power": (0.0, 0.25), "popularity_ridge": (0.0, 0.5), "l2": (10.0, 20.0),
                 "decay": (1.0,), "content_norm": (None,), "content_sharpness": (None,), "content_l2": (None,),
                 "weight": (1.0, FLOOR_WEIGHT)})

    class Block:
        def __init__(self, halves_of):
            self.halves_of, self.seen = halves_of, []

        def value(self, point):
            self.seen.append(point)
            first, second = self.halves_of(point)
            return (first + second) / 2, (first, second)

    def plain_or(shape, first, second):
        return lambda p: (first, second) if (p["user_power"], p["popularity_ridge"]) == shape else (0.10, 0.10)

    # The popularity ridge wins on both halves: kept, and the grid is pinned to it.
    block = Block(plain_or((0.0, 0.5), 0.12, 0.12))
    pinned, choice = ItemItemFit.shaped_gram(grid, block)
    assert choice["user_power"] == 0.0 and choice["popularity_ridge"] == 0.5 and choice["gram_gain"] > 0
    assert pinned.ranges["popularity_ridge"] == (0.5,) and pinned.ranges["user_power"] == (0.0,)
    assert pinned.ranges["l2"] == (10.0, 20.0) and pinned.ranges["weight"] == (1.0, FLOOR_WEIGHT)
    assert {p["weight"] for p in block.seen} == {FLOOR_WEIGHT} and len(block.seen) == 8  # 4 shapes x 2 ridges
    # A shape that wins one half by as much as it loses the other: plain EASE stays.
    block = Block(plain_or((0.25, 0.0), 0.14, 0.07))
    pinned, choice = ItemItemFit.shaped_gram(grid, block)
    assert (choice["user_power"], choice["popularity_ridge"]) == (0.0, 0.0) and choice["gram_gain"] <= 0
    assert pinned.ranges["user_power"] == (0.0,) and pinned.ranges["popularity_ridge"] == (0.0,)
    # One shape only (pinned by the user): nothing to choose, nothing scored.
    block = Block(plain_or((0.0, 0.0), 0.1, 0.1))
    single = grid.pin(user_power=0.25, popularity_ridge=0.0)
    assert ItemItemFit.shaped_gram(single, block) == (single, {}) and not block.seen
