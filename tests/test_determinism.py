"""Determinism on CPU: the same seed, data and thread count train the same model bit for bit
(validation metric, weights, recommendations), with torch's deterministic-algorithms check on or off.
Another thread count sums in another order: the same validation metric and rankings, weights within
1e-6 except two parameters without gradient signal, and scores shifted by one constant (GAUGE below).
docs/reliability.md, "Determinism". Across processes, tests/test_kill_resume.py shows a re-run
training writing byte-equal files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pipelines.train import build_bundle, holdout_last
from recsys.model.train import fit_two_tower
from recsys.recommender import Recommender


def _train(tiny_data, tiny_features, tmp: Path, make_config, threads: int = 1, deterministic: bool = False):
    catalog, interactions = tiny_data
    cfg = make_config(tmp)  # train.tune=false, seed train.seed
    train, valid = holdout_last(interactions, cfg.train.seed)
    before = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic)
    try:
        result = fit_two_tower(tiny_features, train, valid, cfg, show_progress=False)
    finally:
        torch.set_num_threads(before[0])
        torch.use_deterministic_algorithms(before[1])
    return result, build_bundle(cfg, tmp / "bundle", catalog, interactions, tiny_features, result)


def _recommendations(bundle: Path) -> tuple[list, np.ndarray]:
    recommender = Recommender.from_bundle(bundle)
    users = recommender.bundle.users["user_id"].to_list()
    recs = recommender.recommend_users(users, 10, exclude_seen=True)
    return [r.item_ids for r in recs], np.array([s for r in recs for s in r.scores])


@pytest.fixture(scope="module")
def first(tiny_data, tiny_features, tmp_path_factory, make_config):
    return _train(tiny_data, tiny_features, tmp_path_factory.mktemp("first"), make_config)


def test_same_seed_same_model_and_recommendations(first, tiny_data, tiny_features, tmp_path, make_config):
    # The second run with torch's deterministic-algorithms check on: no kernel on this path is flagged
    # as nondeterministic (it would raise), and the result is the same as without the check.
    second = _train(tiny_data, tiny_features, tmp_path, make_config, deterministic=True)
    (result_a, bundle_a), (result_b, bundle_b) = first, second
    assert result_a.best_metric == result_b.best_metric
    assert result_a.best_epoch == result_b.best_epoch
    state_a, state_b = result_a.model.state_dict(), result_b.model.state_dict()
    assert state_a.keys() == state_b.keys()
    for name in state_a:
        assert torch.equal(state_a[name], state_b[name]), name
    ids_a, scores_a = _recommendations(bundle_a)
    ids_b, scores_b = _recommendations(bundle_b)
    assert ids_a == ids_b
    np.testing.assert_allclose(scores_a, scores_b, rtol=0, atol=1e-6)
    assert (bundle_a / "model.pt").read_bytes() == (bundle_b / "model.pt").read_bytes()


# Parameters with no gradient signal: the constant term of the item bias (a softmax over items is blind
# to a shift of every score) and the attention key bias (each query's softmax is blind to it). Their
# gradients are rounding noise, which Adam scales up to full steps: they wander with the summation
# order, so with the thread count. Rankings and validation do not see them; score values shift by the
# item bias's constant.
GAUGE = {"item_tower.bias.bias"}


def test_another_thread_count_changes_the_last_bits_and_a_score_offset(first, tiny_data, tiny_features, tmp_path, make_config):
    result_a, bundle_a = first
    result_b, bundle_b = _train(tiny_data, tiny_features, tmp_path, make_config, threads=2)
    assert result_a.best_metric == result_b.best_metric
    state_a, state_b = result_a.model.state_dict(), result_b.model.state_dict()
    for name in state_a:
        a, b = state_a[name], state_b[name]
        if name in GAUGE:
            continue
        if name.endswith("self_attn.in_proj_bias"):  # [query, key, value] biases: leave the key's out
            third = a.shape[0] // 3
            a, b = torch.cat([a[:third], a[2 * third :]]), torch.cat([b[:third], b[2 * third :]])
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=name)
    ids_a, scores_a = _recommendations(bundle_a)
    ids_b, scores_b = _recommendations(bundle_b)
    assert ids_a == ids_b
    offset = scores_a - scores_b
    assert np.ptp(offset) < 1e-5  # one constant: the item bias's
    bias_shift = float(state_a["item_tower.bias.bias"] - state_b["item_tower.bias.bias"])
    assert abs(float(np.mean(offset)) - bias_shift) < 1e-5
