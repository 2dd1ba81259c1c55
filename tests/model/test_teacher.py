"""The EASE teacher (train.teacher=ease): its closed form is the ridge regression it claims to be,
its loss is a KL that vanishes only when the student agrees, and a run trained with it learns."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recsys.data.splits import loo_split
from recsys.model.item_item import interaction_gram
from recsys.model.teacher import DistillationTerm, distillation_loss, ease_weights
from recsys.model.train import fit_two_tower


def test_gram_counts_co_occurrences_once_per_user():
    gram = interaction_gram([np.array([0, 2]), np.array([2, 1, 2]), np.array([], dtype=np.int64)], 3, users_per_chunk=1)
    expected = np.array([[1, 0, 1], [0, 1, 1], [1, 1, 2]], dtype=np.float64)
    np.testing.assert_array_equal(gram, expected)


def test_ease_is_the_zero_diagonal_ridge_regression_of_each_item_on_the_others():
    rng = np.random.default_rng(0)
    n_users, n_items, l2 = 60, 7, 3.0
    sequences = [rng.choice(n_items, size=rng.integers(1, n_items), replace=False) for _ in range(n_users)]
    weights = ease_weights(sequences, n_items, l2=l2, max_items=100).double().numpy()
    x = np.zeros((n_users, n_items))
    for u, items in enumerate(sequences):
        x[u, items] = 1.0
    assert np.allclose(np.diag(weights), 0.0)
    # Column j is argmin ||x_j - x_{-j} w||^2 + l2 ||w||^2 over the other items' weights.
    for j in range(n_items):
        others = [i for i in range(n_items) if i != j]
        a = x[:, others]
        direct = np.linalg.solve(a.T @ a + l2 * np.eye(n_items - 1), a.T @ x[:, j])
        np.testing.assert_allclose(weights[others, j], direct, rtol=1e-4, atol=1e-5)


def test_ease_refuses_a_catalog_above_its_limit_by_name():
    with pytest.raises(ValueError, match="train.ease_max_items=5"):
        ease_weights([np.array([0, 1])], 6, l2=1.0, max_items=5)


def test_distillation_loss_is_zero_only_when_the_student_agrees_and_ignores_excluded_items():
    teacher = torch.tensor([[2.0, 0.0, -1.0, 5.0]])
    excluded = torch.tensor([[False, False, False, True]])
    assert distillation_loss(teacher.clone(), teacher, excluded).item() == pytest.approx(0.0, abs=1e-6)
    # A shift of all logits is the same distribution; an excluded entry may be anything.
    shifted = teacher + 3.0
    shifted[0, 3] = -100.0
    assert distillation_loss(shifted, teacher, excluded).item() == pytest.approx(0.0, abs=1e-6)
    student = torch.tensor([[0.0, 2.0, -1.0, 5.0]], requires_grad=True)
    loss = distillation_loss(student, teacher, excluded)
    assert loss.item() > 0.1
    loss.backward()
    assert torch.isfinite(student.grad).all() and student.grad[0, 3] == 0
    # The gradient raises the item the teacher prefers and lowers the one it does not.
    assert student.grad[0, 0] < 0 < student.grad[0, 1]


def test_training_with_the_ease_teacher_lowers_both_losses(tiny_data, tiny_features, tmp_path, make_config):
    _, interactions = tiny_data
    split = loo_split(interactions, seed=0)
    cfg = make_config(tmp_path, **{
        "train.epochs": 4, "model.user_pooling": "mean", "train.objective": "all_but_one", "train.teacher": "ease",
        "train.teacher_l2": 10.0,
    })
    result = fit_two_tower(tiny_features, split.train, split.valid, cfg, show_progress=False)
    distill = [h["train/distill_loss"] for h in result.history if "train/distill_loss" in h]
    losses = [h["train/loss"] for h in result.history if "train/loss" in h]
    assert len(distill) == 4 and distill[-1] < distill[0]
    assert losses[-1] < losses[0]
    assert not any(name.startswith("teacher") for name in result.model.state_dict())  # never served


def _step(windows, inputs, seen, use, candidates, labels):
    from recsys.model.module import Step

    return Step(windows, inputs, seen, use, candidates, labels, torch.zeros(len(labels), len(candidates)), None)


def test_teacher_scores_each_target_from_the_rest_of_its_window_as_the_tower_saw_it(tiny_features, monkeypatch):
    import recsys.model.teacher as teacher_lib

    n = len(tiny_features)
    known = np.ones(n, dtype=bool)
    known[n - 1] = False  # an item with no training interactions: the teacher knows nothing of it
    weights = torch.randn(n, n)
    term = DistillationTerm(weights, known, weight=0.5, temperature=0.5, objective="all_but_one")
    captured = {}
    monkeypatch.setattr(teacher_lib, "distillation_loss",
                        lambda s, t, e: captured.update(teacher=t, excluded=e) or torch.tensor(0.0))
    inputs = torch.tensor([[-1, 0, 1, 2, 3], [4, 5, 6, 7, 8]])
    seen = inputs >= 0
    seen[1, 0] = False  # item 4 hidden from the tower this step
    use = torch.zeros_like(seen)
    use[0, 2] = use[1, 0] = use[1, 3] = True  # targets 1, 4 (hidden), 7
    candidates = torch.tensor([0, 1, 4, 7, 9, n - 1])
    term(_step(inputs, inputs, seen, use, candidates, torch.tensor([1, 2, 3])))
    expected = torch.stack([
        weights[[0, 2, 3]][:, candidates].sum(0),     # target 1: the rest of window 0
        weights[[5, 6, 7, 8]][:, candidates].sum(0),  # target 4 was hidden: the whole seen window
        weights[[5, 6, 8]][:, candidates].sum(0),     # target 7: item 4 is hidden, 7 is the target
    ]) / 0.5
    torch.testing.assert_close(captured["teacher"], expected)
    # Out of both distributions: the window's other items and the unknown item; the target stays in.
    assert captured["excluded"].tolist() == [
        [True, False, False, False, False, True],
        [False, False, False, True, False, True],
        [False, False, True, False, False, True],
    ]

    # next_item: a target's state is the seen items before it, and the teacher scores that prefix.
    next_item = DistillationTerm(weights, known, weight=0.5, temperature=0.5, objective="next_item")
    windows = torch.tensor([[-1, 0, 1, 2, 3], [4, 5, 6, 7, 8]])
    inputs, seen = windows[:, :-1], windows[:, :-1] >= 0
    seen[1, 1] = False  # item 5 hidden
    use = torch.zeros_like(seen)
    use[0, 1] = use[1, 3] = True  # targets 1 (after item 0) and 8 (after 4, 5, 6, 7)
    candidates = torch.tensor([0, 1, 4, 7, 8, n - 1])
    next_item(_step(windows, inputs, seen, use, candidates, torch.tensor([1, 4])))
    expected = torch.stack([weights[[0]][:, candidates].sum(0), weights[[4, 6, 7]][:, candidates].sum(0)]) / 0.5
    torch.testing.assert_close(captured["teacher"], expected)
    assert captured["excluded"].tolist() == [
        [True, False, False, False, False, True],
        [False, False, True, True, False, True],
    ]


def test_training_with_the_ease_teacher_on_next_items(tiny_data, tiny_features, tmp_path, make_config):
    _, interactions = tiny_data
    split = loo_split(interactions, seed=0)
    cfg = make_config(tmp_path, **{"train.epochs": 3, "train.teacher": "ease", "train.teacher_l2": 10.0})
    result = fit_two_tower(tiny_features, split.train, split.valid, cfg, show_progress=False)
    distill = [h["train/distill_loss"] for h in result.history if "train/distill_loss" in h]
    assert len(distill) == 3 and distill[-1] < distill[0]


def test_distillation_loss_matches_autograd_through_the_plain_formula():
    """The closed-form gradient (softmax(student) - p_teacher, per row) equals autograd's through the
    KL as written, with excluded entries and a row whose target is the only candidate left."""
    gen = torch.Generator().manual_seed(0)
    student = torch.randn(6, 9, generator=gen, dtype=torch.float64)
    teacher = torch.randn(6, 9, generator=gen, dtype=torch.float64)
    excluded = torch.rand(6, 9, generator=gen) < 0.3
    excluded[0] = True
    excluded[0, 4] = False
    plain = student.clone().requires_grad_(True)
    t_log_p = torch.log_softmax(teacher.masked_fill(excluded, -1e9), dim=-1)
    s_log_p = torch.log_softmax(plain.masked_fill(excluded, -1e9), dim=-1)
    expected = (t_log_p.exp() * (t_log_p - s_log_p)).sum(dim=-1).mean()
    expected.backward()
    fast = student.clone().requires_grad_(True)
    loss = distillation_loss(fast, teacher, excluded)
    (2.0 * loss).backward()  # the upstream gradient is applied
    assert loss.item() == pytest.approx(expected.item(), rel=1e-12)
    torch.testing.assert_close(fast.grad, 2.0 * plain.grad)
    assert (fast.grad[excluded] == 0).all()
