"""Metrics on hand-computed examples."""

from __future__ import annotations

import math

import numpy as np
import pytest

from recsys.eval import catalog_coverage, hit_rate_at_k, ndcg_at_k, recall_at_k


def test_ndcg_single_target_by_rank() -> None:
    ranked = np.array([[5, 1, 2], [1, 5, 2], [1, 2, 3]])
    targets = [{5}]
    assert ndcg_at_k(ranked[:1], targets, 3) == pytest.approx(1.0)
    assert ndcg_at_k(ranked[1:2], targets, 3) == pytest.approx(1 / math.log2(3))
    assert ndcg_at_k(ranked[2:3], targets, 3) == 0.0
    assert ndcg_at_k(ranked, [{5}, {5}, {5}], 3) == pytest.approx((1 + 1 / math.log2(3)) / 3)


def test_ndcg_ideal_uses_min_targets_k() -> None:
    # 3 targets, k=2, hits at ranks 1 and 2: ideal DCG over min(3, 2)=2 -> 1.0
    assert ndcg_at_k(np.array([[7, 8, 0]]), [{7, 8, 9}], 2) == pytest.approx(1.0)
    # 2 targets, one hit at rank 2: (1/log2 3) / (1 + 1/log2 3)
    expected = (1 / math.log2(3)) / (1 + 1 / math.log2(3))
    assert ndcg_at_k(np.array([[0, 7, 1]]), [{7, 9}], 3) == pytest.approx(expected)


def test_recall_is_hits_over_all_targets() -> None:
    ranked = np.array([[1, 2, 3], [4, 5, 6]])
    targets = [{1, 9, 10, 11}, {5, 6}]
    # user 0: 1/4 (not 1/min(4,3)); user 1: 2/2
    assert recall_at_k(ranked, targets, 3) == pytest.approx((0.25 + 1.0) / 2)
    assert recall_at_k(ranked, targets, 1) == pytest.approx((0.25 + 0.0) / 2)


def test_hit_rate_and_padding_never_counts() -> None:
    ranked = np.array([[-1, -1], [3, -1]])
    assert hit_rate_at_k(ranked, [{-1}, {3}], 2) == pytest.approx(0.5)
    assert hit_rate_at_k(ranked, [{3}, {0}], 2) == 0.0


def test_users_without_targets_are_skipped() -> None:
    ranked = np.array([[1, 2], [1, 2]])
    assert recall_at_k(ranked, [{1}, set()], 2) == pytest.approx(1.0)
    assert ndcg_at_k(ranked[:1], [set()], 2) == 0.0


def test_coverage() -> None:
    ranked = np.array([[0, 1], [1, 2], [2, -1]])
    assert catalog_coverage(ranked, 10) == pytest.approx(0.3)
    assert catalog_coverage(ranked, 3) == pytest.approx(1.0)


def test_bad_shapes_fail() -> None:
    with pytest.raises(ValueError, match="targets"):
        recall_at_k(np.zeros((2, 3), dtype=int), [{1}], 3)
    with pytest.raises(ValueError, match="ranked"):
        ndcg_at_k(np.zeros(3, dtype=int), [{1}], 3)
