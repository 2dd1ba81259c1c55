"""Training on tiny real data: the loss falls, early stopping keeps the best epoch, the frozen
encoder is untouched, the negative samplers' logQ correction behaves, and validation is the test
ranking."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from recsys.data.splits import loo_split
from recsys.model.datamodule import training_windows
from recsys.eval.protocol import build_queries, evaluate
from recsys.model.module import TwoTowerModule, keep_random_positions
from recsys.model.negatives import InBatchAndUniform, WholeCatalog, negative_sampler
from recsys.model.train import fit_two_tower, item_index_of, prepare_training_data, validation_score
from recsys.model.two_tower import FeatureTensors, ModelScorer, TwoTowerEnsemble


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
    # each epoch records the wall time since the fit began (time-to-quality curves), growing
    seconds = [h["seconds"] for h in result.history]
    assert all(0 < a < b for a, b in zip(seconds, seconds[1:])) and seconds[-1] <= result.train_seconds
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


def test_logq_correction_is_inclusion_probability(tiny_features):
    n = len(tiny_features)
    popularity = np.arange(1, n + 1, dtype=np.float64)
    sampler = negative_sampler(popularity, 8)
    assert isinstance(sampler, InBatchAndUniform)
    targets = torch.tensor([0, 1, n - 1, n - 1])
    candidates, log_q = sampler.candidates(targets)
    assert set(targets.tolist()) <= set(candidates.tolist())
    assert len(candidates) == len(set(candidates.tolist()))
    p = popularity / popularity.sum()
    i = candidates.tolist().index(n - 1)
    expected = math.log(1 - (1 - p[n - 1]) ** 4 * (1 - 1 / n) ** 8)
    assert abs(log_q[i].item() - expected) < 1e-5
    # Popular items are likelier to be in the set, so they get the larger correction.
    j = candidates.tolist().index(0)
    assert log_q[i] > log_q[j]
    # A catalog no larger than the uniform draw is scored whole, and a full softmax needs no correction.
    whole = negative_sampler(popularity, n)
    assert isinstance(whole, WholeCatalog)
    all_items, none = whole.candidates(targets)
    assert none is None and all_items.tolist() == list(range(n))


def _module(model, tiny_features, cfg):
    return TwoTowerModule(model, FeatureTensors.from_features(tiny_features), cfg, WholeCatalog(len(tiny_features)))


def test_ema_validates_the_averaged_weights_and_trains_the_live_ones(tiny_features):
    from types import SimpleNamespace

    from recsys.config import ModelConfig, TrainConfig
    from recsys.model.two_tower import TwoTowerModel

    model = TwoTowerModel(ModelConfig(dim=8, head_hidden=0, max_history=4), {"text": 384, "categories": len(tiny_features.category_vocab)})
    module = _module(model, tiny_features, TrainConfig(ema_decay=0.9))
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
    plain = _module(model, tiny_features, TrainConfig())
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
    judge = prepare_training_data(tiny_features, split.train, split.valid, cfg).valid
    assert validation_score(single.model, tiny_features, judge, "ndcg@10") == pytest.approx(single.best_metric, abs=1e-6)
    assert 0.0 < result.best_metric <= 1.0


def test_validation_and_evaluation_give_the_same_number_on_the_same_model_and_queries(
    tiny_data, tiny_features, tmp_path, make_config
):
    _, interactions = tiny_data
    split = loo_split(interactions, seed=0)
    cfg = make_config(tmp_path, **{"train.epochs": 2, "train.valid_max_users": None})
    result = fit_two_tower(tiny_features, split.train, split.valid, cfg, show_progress=False)
    # Test queries built from the validation stage of the split: the same users, histories and targets.
    queries = build_queries(split, item_index_of(np.asarray(tiny_features.item_ids)), "valid")
    scorer = ModelScorer(result.model, result.model.feature_tensors(tiny_features))
    tested = evaluate(scorer, queries, len(tiny_features), ks=(10,))["ndcg@10"]
    assert result.best_metric == pytest.approx(tested, abs=1e-6)  # early stopping's copy went through a float32 log
    judge = prepare_training_data(tiny_features, split.train, split.valid, cfg).valid
    assert validation_score(result.model, tiny_features, judge, "ndcg@10") == pytest.approx(tested, abs=1e-12)
