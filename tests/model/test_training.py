"""Training on tiny real data: the loss falls, early stopping keeps the best epoch, the frozen
encoder is untouched, and the sampled-softmax logQ correction behaves."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from recsys.data.splits import loo_split
from recsys.model.datamodule import training_windows
from recsys.model.module import TwoTowerModule, exclusion_mask, keep_random_positions, ranking_metrics, target_ranks
from recsys.model.train import fit_two_tower, validation_score
from recsys.model.two_tower import FeatureTensors, TwoTowerEnsemble


def test_validation_ranks_leave_out_excluded_items_and_count_only_strictly_higher_scores():
    scores = torch.tensor([[0.9, 0.5, 0.7, 0.5], [0.1, 0.8, 0.3, 0.2]])
    # Row 0: target 1 (0.5); item 0 is excluded, item 2 outranks it, item 3 ties (a tie does not count).
    # Row 1: target 2 (0.3); nothing excluded, item 1 outranks it.
    excluded = [np.array([0]), np.array([], dtype=np.int64)]
    rank = target_ranks(scores.clone(), torch.tensor([1, 2]), excluded)
    assert rank.tolist() == [1, 1]
    # The same exclusions as a precomputed mask rank identically.
    mask = exclusion_mask(excluded, 4)
    assert mask.tolist() == [[True, False, False, False], [False] * 4]
    assert target_ranks(scores.clone(), torch.tensor([1, 2]), mask).tolist() == [1, 1]
    metrics = ranking_metrics(torch.tensor([0, 1, 10]), (1, 10))
    assert metrics["recall@1"] == pytest.approx(1 / 3)
    assert metrics["recall@10"] == pytest.approx(2 / 3)
    assert metrics["ndcg@10"] == pytest.approx((1 + 1 / math.log2(3)) / 3)


def test_training_windows_cover_every_position():
    windows = training_windows([np.arange(7)], max_history=3)
    # Windows of 4 stepping back by 3 from the newest: [3..6], [0..3], and nothing shorter than 2 left.
    assert windows.tolist() == [[3, 4, 5, 6], [0, 1, 2, 3]]
    short = training_windows([np.array([5])], max_history=3)
    assert short.shape == (0, 4)


def test_fit_improves_validation_and_keeps_best(tiny_data, tiny_features, tmp_path, make_config):
    _, interactions = tiny_data
    split = loo_split(interactions, seed=0)
    cfg = make_config(tmp_path, **{"train.epochs": 4, "train.patience": 10})
    result = fit_two_tower(tiny_features, split.train, split.valid, cfg, show_progress=False)
    losses = [h["train/loss"] for h in result.history if "train/loss" in h]
    assert len(losses) == 4
    assert losses[-1] < losses[0]
    metrics = [h[result.valid_metric_name] for h in result.history]
    assert result.best_metric == max(metrics)
    assert result.best_epoch == int(np.argmax(metrics))
    assert 0.0 < result.best_metric <= 1.0


def test_training_leaves_the_frozen_encoder_unchanged(tiny_data, tiny_features, text_encoder, tmp_path, make_config):
    catalog, interactions = tiny_data
    texts = ["A heist goes wrong in Los Angeles.", "Toy Story (1995)"]
    before, _ = text_encoder.encode(texts)
    params_before = [p.detach().clone() for p in text_encoder.model.parameters()]
    assert not any(p.requires_grad for p in text_encoder.model.parameters())
    split = loo_split(interactions, seed=1)
    fit_two_tower(tiny_features, split.train, split.valid, make_config(tmp_path), show_progress=False)
    after, _ = text_encoder.encode(texts)
    np.testing.assert_array_equal(before, after)
    for p0, p1 in zip(params_before, text_encoder.model.parameters()):
        assert torch.equal(p0, p1)


def test_learning_rate_decays_only_after_a_stalled_epoch(tiny_data, tiny_features, tmp_path, make_config):
    _, interactions = tiny_data
    split = loo_split(interactions, seed=0)
    # A rate so small that validation barely moves: the plateau rule must fire, and only where it should.
    cfg = make_config(tmp_path, **{"train.epochs": 5, "train.patience": 10, "train.lr": 1e-6,
                                   "train.lr_decay_factor": 0.5, "train.lr_decay_patience": 0})
    result = fit_two_tower(tiny_features, split.train, split.valid, cfg, show_progress=False)
    rates = [h["train/lr"] for h in result.history]
    metrics = [h[result.valid_metric_name] for h in result.history]
    assert rates[0] == pytest.approx(1e-6) and len(rates) == 5  # logged as float32
    best = -math.inf
    for epoch in range(4):
        improved = metrics[epoch] > best * (1 + 1e-4)  # ReduceLROnPlateau's default relative threshold
        best = max(best, metrics[epoch])
        assert rates[epoch + 1] == pytest.approx(rates[epoch] * (1.0 if improved else 0.5), rel=1e-5), epoch
    assert rates[-1] < rates[0]
    # Off by default: a constant rate.
    plain = fit_two_tower(tiny_features, split.train, split.valid, make_config(tmp_path, **{"train.epochs": 3}), show_progress=False)
    assert [h["train/lr"] for h in plain.history] == pytest.approx([make_config(tmp_path).train.lr] * 3)


def test_logq_correction_is_inclusion_probability(tiny_features):
    from recsys.config import ModelConfig, TrainConfig
    from recsys.model.two_tower import TwoTowerModel

    n = len(tiny_features)
    popularity = np.arange(1, n + 1, dtype=np.float64)
    cfg = TrainConfig(num_uniform_negatives=8)
    model = TwoTowerModel(ModelConfig(dim=8, head_hidden=0, max_history=4), 384, None, len(tiny_features.category_vocab))
    module = TwoTowerModule(model, FeatureTensors.from_features(tiny_features), cfg, popularity)
    targets = torch.tensor([0, 1, n - 1, n - 1])
    candidates, log_q = module._candidates(targets)
    assert set(targets.tolist()) <= set(candidates.tolist())
    assert len(candidates) == len(set(candidates.tolist()))
    p = popularity / popularity.sum()
    i = candidates.tolist().index(n - 1)
    expected = math.log(1 - (1 - p[n - 1]) ** 4 * (1 - 1 / n) ** 8)
    assert abs(log_q[i].item() - expected) < 1e-5
    # Popular items are likelier to be in the set, so they get the larger correction.
    j = candidates.tolist().index(0)
    assert log_q[i] > log_q[j]
    # A full softmax needs no correction.
    full = TwoTowerModule(model, FeatureTensors.from_features(tiny_features), TrainConfig(num_uniform_negatives=-1), popularity)
    all_items, none = full._candidates(targets)
    assert none is None and len(all_items) == n


def test_ema_validates_the_averaged_weights_and_trains_the_live_ones(tiny_features):
    from types import SimpleNamespace

    from recsys.config import ModelConfig, TrainConfig
    from recsys.model.two_tower import TwoTowerModel

    model = TwoTowerModel(ModelConfig(dim=8, head_hidden=0, max_history=4), 384, None, len(tiny_features.category_vocab))
    module = TwoTowerModule(model, FeatureTensors.from_features(tiny_features), TrainConfig(ema_decay=0.9), np.ones(len(tiny_features)))
    trainer = SimpleNamespace(sanity_checking=False, global_step=1000)
    module._trainer = trainer
    module.on_fit_start()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    name = next(k for k, v in start.items() if v.dtype.is_floating_point and v.abs().sum() > 0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)  # an optimizer step
    module.on_train_batch_end(None, None, 0)
    live = {k: v.clone() for k, v in model.state_dict().items()}
    module.on_validation_start()
    # Validation sees 0.9 * start + 0.1 * live (the warm-up is over at step 1000).
    assert torch.allclose(model.state_dict()[name], 0.9 * start[name] + 0.1 * live[name], atol=1e-6)
    module.on_validation_end()
    assert torch.equal(model.state_dict()[name], live[name])
    # Off by default: nothing is swapped.
    plain = TwoTowerModule(model, FeatureTensors.from_features(tiny_features), TrainConfig(), np.ones(len(tiny_features)))
    plain._trainer = trainer
    plain.on_fit_start()
    plain.on_validation_start()
    assert torch.equal(model.state_dict()[name], live[name])


def test_all_but_one_objective_trains_a_mean_tower(tiny_data, tiny_features, tmp_path, make_config):
    _, interactions = tiny_data
    split = loo_split(interactions, seed=0)
    cfg = make_config(tmp_path, **{"train.epochs": 3, "model.user_pooling": "mean", "train.objective": "all_but_one"})
    result = fit_two_tower(tiny_features, split.train, split.valid, cfg, show_progress=False)
    losses = [h["train/loss"] for h in result.history if "train/loss" in h]
    assert len(losses) == 3 and losses[-1] < losses[0]


def test_keep_random_positions_keeps_k_of_the_used_positions_per_row():
    torch.manual_seed(0)
    use = torch.zeros(3, 10, dtype=torch.bool)
    use[0, 2:] = True   # 8 used: keep 4
    use[1, 7:] = True   # 3 used: keep all 3
    # row 2: none used, none kept
    kept = keep_random_positions(use, 4)
    assert kept.sum(dim=1).tolist() == [4, 3, 0]
    assert not (kept & ~use).any()
    # Uniform over the used positions: every one of row 0's 8 is drawn about half the time.
    counts = sum(keep_random_positions(use, 4)[0].long() for _ in range(2000))
    assert counts[:2].sum() == 0
    assert ((counts[2:] > 850) & (counts[2:] < 1150)).all(), counts
    assert torch.equal(keep_random_positions(use, 10), use)


def test_training_on_a_sample_of_targets_per_window(tiny_data, tiny_features, tmp_path, make_config, monkeypatch):
    import recsys.model.module as module

    kept_per_row: list[int] = []

    def spy(use, k):
        kept = keep_random_positions(use, k)
        kept_per_row.extend(kept.sum(dim=1).tolist())
        return kept

    monkeypatch.setattr(module, "keep_random_positions", spy)
    _, interactions = tiny_data
    split = loo_split(interactions, seed=0)
    cfg = make_config(tmp_path, **{
        "train.epochs": 3, "model.user_pooling": "mean", "train.objective": "all_but_one", "train.targets_per_window": 4,
    })
    result = fit_two_tower(tiny_features, split.train, split.valid, cfg, show_progress=False)
    losses = [h["train/loss"] for h in result.history if "train/loss" in h]
    assert len(losses) == 3 and losses[-1] < losses[0]
    assert kept_per_row and max(kept_per_row) == 4


def test_all_but_one_objective_needs_a_mean_tower(tmp_path, make_config):
    import pytest

    from recsys.config import ConfigError

    with pytest.raises(ConfigError, match="user_pooling=mean"):
        make_config(tmp_path, **{"train.objective": "all_but_one"})


def test_hybrid_model_can_also_train_its_content_path_alone(tiny_data, tiny_features, tmp_path, make_config):
    _, interactions = tiny_data
    split = loo_split(interactions, seed=0)
    cfg = make_config(
        tmp_path, **{"train.epochs": 3, "model.item_id_embedding": True, "train.content_loss_weight": 0.5}
    )
    result = fit_two_tower(tiny_features, split.train, split.valid, cfg, show_progress=False)
    content_losses = [h["train/content_loss"] for h in result.history if "train/content_loss" in h]
    assert len(content_losses) == 3 and content_losses[-1] < content_losses[0]
    assert result.model.item_tower.id_embedding is not None
    # Off by default: a hybrid model trains on the hybrid loss only.
    plain = fit_two_tower(
        tiny_features, split.train, split.valid,
        make_config(tmp_path, **{"train.epochs": 1, "model.item_id_embedding": True}), show_progress=False,
    )
    assert not any("train/content_loss" in h for h in plain.history)


def test_history_dropout_hides_about_that_share_of_the_items_from_the_tower(
    tiny_data, tiny_features, tmp_path, make_config, monkeypatch
):
    import recsys.model.module as module
    from recsys.model.towers import UserTower

    targets, seen = [], []
    monkeypatch.setattr(module, "keep_random_positions", lambda use, k: targets.append(use) or use)
    real = UserTower.leave_one_out
    monkeypatch.setattr(UserTower, "leave_one_out", lambda self, h, valid, u=None: seen.append(valid) or real(self, h, valid, u))
    _, interactions = tiny_data
    split = loo_split(interactions, seed=0)
    cfg = make_config(tmp_path, **{
        "train.epochs": 3, "model.user_pooling": "mean", "train.objective": "all_but_one",
        "train.targets_per_window": 1000, "train.history_dropout": 0.5,
    })
    result = fit_two_tower(tiny_features, split.train, split.valid, cfg, show_progress=False)
    losses = [h["train/loss"] for h in result.history if "train/loss" in h]
    assert len(losses) == 3 and losses[-1] < losses[0]
    assert len(seen) == len(targets) > 0
    # Every item is still a target; about half of them are visible to the tower in a given step.
    visible = sum(int((v & t).sum()) for v, t in zip(seen, targets)) / sum(int(t.sum()) for t in targets)
    assert 0.4 < visible < 0.6, visible


def test_ensemble_members_train_with_their_own_seeds_and_are_scored_together(
    tiny_data, tiny_features, tmp_path, make_config
):
    _, interactions = tiny_data
    split = loo_split(interactions, seed=0)
    single = fit_two_tower(tiny_features, split.train, split.valid, make_config(tmp_path, **{"train.epochs": 3}), show_progress=False)
    cfg = make_config(tmp_path, **{"train.epochs": 3, "model.ensemble_size": 2})
    prefixes = []  # each member's curves get their own MLflow keys, numbered as in the logs
    result = fit_two_tower(
        tiny_features, split.train, split.valid, cfg, show_progress=False, make_logger=lambda p: prefixes.append(p)
    )
    assert prefixes == ["member1", "member2"]
    assert isinstance(result.model, TwoTowerEnsemble) and result.model.dim == 2 * cfg.model.dim
    first, second = (dict(m.named_parameters()) for m in result.model.members)
    assert any(not torch.equal(first[name], second[name]) for name in first)  # seeds 42 and 43
    assert [h["member"] for h in result.history] == [1, 1, 1, 2, 2, 2]
    assert len(result.member_best_epochs) == 2 and result.epochs_run == 6
    # The ensemble's validation score is computed the way early stopping computes a single model's.
    assert validation_score(single.model, tiny_features, *_valid_queries(tiny_features, split, cfg), "ndcg@10") == (
        pytest.approx(single.best_metric, abs=1e-6)
    )
    assert 0.0 < result.best_metric <= 1.0


def _valid_queries(features, split, cfg):
    from recsys.model.train import _prepare

    prepared = _prepare(features, split.train, split.valid, cfg, None)
    return prepared.valid_queries, prepared.exclude
