"""build_queries / evaluate / baselines / report on small synthetic splits."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import polars as pl
import pytest

from recsys.eval import (
    ContentKNNScorer,
    EvalQueries,
    PopularityScorer,
    RandomScorer,
    build_queries,
    evaluate,
    rank_items,
    top_k_with_ties,
    write_report,
)


@dataclass
class FakeSplit:
    """Mirrors the Split contract of recsys.data.splits (not imported on purpose)."""

    protocol: str
    train: pl.DataFrame
    valid: pl.DataFrame
    test: pl.DataFrame
    candidate_items: np.ndarray | None


def _frame(rows: list[tuple[int, str, int]]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "user_id": [r[0] for r in rows],
            "item_id": [r[1] for r in rows],
            "timestamp": [r[2] * 10 for r in rows],
            "weight": [1.0] * len(rows),
            "pos": [r[2] for r in rows],
        },
        schema={"user_id": pl.Int64, "item_id": pl.Utf8, "timestamp": pl.Int64, "weight": pl.Float32,
                "pos": pl.Int64},
    )


ITEMS = ["a", "b", "c", "d", "e", "f"]
ITEM_INDEX = {item: i for i, item in enumerate(ITEMS)}


@pytest.fixture()
def split() -> FakeSplit:
    # train rows deliberately out of order; user 3 has only a test row (no history)
    train = _frame([(1, "b", 1), (1, "a", 0), (2, "a", 0), (2, "c", 1), (2, "a", 2), (4, "zzz", 0)])
    valid = _frame([(1, "c", 2), (2, "d", 3)])
    test = _frame([(1, "d", 3), (2, "e", 4), (3, "a", 0), (4, "b", 1)])
    return FakeSplit("loo", train, valid, test, None)


class FixedScorer:
    """Returns a given [n_items] score vector for everyone."""

    def __init__(self, scores: np.ndarray, name: str = "fixed") -> None:
        self.name = name
        self.scores = np.asarray(scores, dtype=np.float32)

    def score(self, histories, user_ids):
        return np.tile(self.scores, (len(histories), 1))


def test_build_queries_test_stage(split) -> None:
    q = build_queries(split, ITEM_INDEX, "test")
    assert q.user_ids.tolist() == [1, 2]  # user 3: no history; user 4: only an unknown item
    assert [h.tolist() for h in q.histories] == [[0, 1, 2], [0, 2, 0, 3]]  # ordered by pos
    assert [t.tolist() for t in q.targets] == [[3], [4]]
    assert [e.tolist() for e in q.exclude] == [[0, 1, 2], [0, 2, 3]]
    # Each history's timestamps ride along, aligned item for item (the item-item block ages by them).
    assert [t.tolist() for t in q.histories.times] == [[0, 10, 20], [0, 10, 20, 30]]
    assert [t.tolist() for t in q.subset(1, seed=0).histories.times] in ([[0, 10, 20]], [[0, 10, 20, 30]])


def test_scorers_receive_histories_carrying_the_times_of_their_chunk(split) -> None:
    q = build_queries(split, ITEM_INDEX, "test")
    seen = []

    class Recording(FixedScorer):
        def score(self, histories, user_ids):
            seen.append([t.tolist() for t in histories.times])
            return super().score(histories, user_ids)

    evaluate(Recording(np.arange(len(ITEMS), dtype=np.float32)), q, len(ITEMS), ks=(2,), batch_size=1)
    assert seen == [[[0, 10, 20]], [[0, 10, 20, 30]]]


def test_ties_follow_one_fixed_order_in_validation_and_test(split) -> None:
    """Every item scores the same: the tie order alone ranks them, and a target is not favoured by a tie.
    The judge that validation uses and `evaluate` give one number."""
    from recsys.eval.protocol import RankingJudge, tie_order

    q = build_queries(split, ITEM_INDEX, "test")
    flat = FixedScorer(np.zeros(len(ITEMS), dtype=np.float32))
    ranked = rank_items(flat, q, len(ITEMS), k=len(ITEMS))
    order = [i for i in tie_order(len(ITEMS)).tolist()]
    for row, excluded in enumerate(q.exclude):
        assert [i for i in ranked[row].tolist() if i >= 0] == [i for i in order if i not in excluded.tolist()]
    judge = RankingJudge(q, len(ITEMS))
    scores = np.zeros((len(q), len(ITEMS)), dtype=np.float32)
    assert judge.value(scores, "ndcg@2") == evaluate(flat, q, len(ITEMS), ks=(2,))["ndcg@2"]


def test_build_queries_valid_stage(split) -> None:
    q = build_queries(split, ITEM_INDEX, "valid")
    assert q.user_ids.tolist() == [1, 2]
    assert [h.tolist() for h in q.histories] == [[0, 1], [0, 2, 0]]
    assert [t.tolist() for t in q.targets] == [[2], [3]]
    with pytest.raises(ValueError, match="stage"):
        build_queries(split, ITEM_INDEX, "train")


def test_exclusion_never_recommends_history(split) -> None:
    q = build_queries(split, ITEM_INDEX, "test")
    # the scorer loves history items most; they must still never appear
    scorer = FixedScorer([10, 9, 8, 7, 1, 0])
    ranked = rank_items(scorer, q, len(ITEMS), 6)
    for row, excl in zip(ranked.tolist(), q.exclude):
        shown = [i for i in row if i >= 0]
        assert not set(shown) & set(excl.tolist())
        assert len(shown) == len(ITEMS) - len(excl)  # everything else is still ranked
    assert ranked[0, :3].tolist() == [3, 4, 5]
    metrics = evaluate(scorer, q, len(ITEMS), ks=(1, 2))
    assert metrics["hr@1"] == pytest.approx(0.5)  # user 1 gets d (hit) first; user 2 gets b first
    assert metrics["recall@2"] == pytest.approx(1.0)  # user 2's target e comes second
    assert metrics["n_users"] == 2


def test_candidate_restriction(split) -> None:
    q = build_queries(split, ITEM_INDEX, "test")
    scorer = FixedScorer([10, 9, 8, 7, 6, 5])
    ranked = rank_items(scorer, q, len(ITEMS), 3, candidates=np.array([4, 5]))
    assert set(ranked[ranked >= 0].tolist()) == {4, 5}
    assert (ranked[:, 2] == -1).all()  # only 2 candidates: padded
    m = evaluate(scorer, q, len(ITEMS), ks=(2,), candidates=np.array([4, 5]))
    assert m["coverage@2"] == pytest.approx(1.0)  # over the candidate set, not the catalog
    assert m["recall@2"] == pytest.approx(0.5)  # user 2's target e is a candidate; user 1's d is not


def test_ties_broken_by_fixed_permutation_not_index() -> None:
    n = 50
    scores = np.zeros((1, n), dtype=np.float32)
    a = top_k_with_ties(scores, 10, np.random.default_rng(0).permutation(n))
    b = top_k_with_ties(scores, 10, np.random.default_rng(0).permutation(n))
    np.testing.assert_array_equal(a, b)  # deterministic
    assert a[0].tolist() != list(range(10))  # not item-index order
    # a strictly better item always wins over tied ones, and ties keep the permutation's order
    scores[0, 7] = 1.0
    order = np.random.default_rng(1).permutation(n)
    top = top_k_with_ties(scores, 4, order)[0].tolist()
    assert top[0] == 7 and top[1:] == [i for i in order.tolist() if i != 7][:3]


def test_the_judge_ranks_as_a_plain_sort_does() -> None:
    """The judge's fast top-k (one permuted copy, a tie pass only for rows whose k-th value is shared) equals
    the definition: allowed, non-excluded items sorted by score, equal scores in tie order, NaN and -inf never
    ranked, short lists padded with -1. Scores with many ties, NaNs and -inf; candidates on and off."""
    from recsys.eval.protocol import RankingJudge

    rng = np.random.default_rng(7)
    for trial in range(60):
        b, n, k = int(rng.integers(1, 20)), int(rng.integers(1, 40)), int(rng.integers(1, 12))
        scores = rng.integers(0, 4, size=(b, n)).astype(np.float32) if trial % 2 else rng.standard_normal((b, n)).astype(np.float32)
        scores[rng.random((b, n)) < 0.1] = np.nan
        scores[rng.random((b, n)) < 0.1] = -np.inf
        histories = [rng.choice(n, size=int(rng.integers(0, n)), replace=False) for _ in range(b)]
        candidates = rng.choice(n, size=max(1, n // 2), replace=False) if trial % 3 == 0 else None
        queries = EvalQueries(np.arange(b), histories, [np.array([0])] * b, [np.unique(h) for h in histories])
        judge = RankingJudge(queries, n, candidates)
        position = {item: j for j, item in enumerate(judge.order.tolist())}
        for row in range(b):
            banned = set(histories[row].tolist()) | (set() if candidates is None else set(range(n)) - set(candidates.tolist()))
            ranked = sorted((i for i in range(n) if i not in banned and np.isfinite(scores[row, i]) or
                             (i not in banned and scores[row, i] == np.inf)), key=lambda i: (-scores[row, i], position[i]))
            expected = (ranked + [-1] * k)[:k]
            assert judge.top_k(scores[row : row + 1], k, start=row)[0].tolist() == expected, (trial, row)


def test_chunking_does_not_change_results(split) -> None:
    q = build_queries(split, ITEM_INDEX, "test")
    emb = np.random.default_rng(0).standard_normal((len(ITEMS), 4)).astype(np.float32)
    scorer = ContentKNNScorer(emb / np.linalg.norm(emb, axis=1, keepdims=True))
    assert evaluate(scorer, q, len(ITEMS), batch_size=1) == evaluate(scorer, q, len(ITEMS), batch_size=100)


def test_popularity_ranks_by_count(split) -> None:
    scorer = PopularityScorer(split.train, ITEM_INDEX)
    assert scorer.name == "popularity"
    assert scorer.counts.tolist() == [3, 1, 1, 0, 0, 0]  # "zzz" (unknown) ignored
    empty = EvalQueries(np.array([9]), [np.array([], dtype=np.int64)], [np.array([0])], [np.array([], dtype=np.int64)])
    assert rank_items(scorer, empty, len(ITEMS), 1)[0, 0] == 0


def test_content_knn_prefers_identical_item() -> None:
    rng = np.random.default_rng(2)
    emb = rng.standard_normal((20, 8)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    emb[5] = emb[3]  # item 5 duplicates the history item 3
    emb[9] = 0.0  # an item without features
    scorer = ContentKNNScorer(emb)
    scores = scorer.score([np.array([3])], np.array([1]))
    assert scores.shape == (1, 20) and scores[0, 9] == 0.0
    q = EvalQueries(np.array([1]), [np.array([3])], [np.array([5])], [np.array([3])])
    assert rank_items(scorer, q, 20, 1)[0, 0] == 5
    assert evaluate(scorer, q, 20, ks=(1,))["ndcg@1"] == pytest.approx(1.0)
    np.testing.assert_allclose(scorer.score([np.array([], dtype=np.int64)], np.array([0])), 0.0)


def test_random_scorer_is_seeded_and_weaker_than_oracle() -> None:
    a = RandomScorer(30, seed=1).score([np.array([0])] * 2, np.array([0, 1]))
    b = RandomScorer(30, seed=1).score([np.array([0])] * 2, np.array([0, 1]))
    np.testing.assert_array_equal(a, b)
    assert a.shape == (2, 30) and a.dtype == np.float32


def test_scorer_with_wrong_shape_fails(split) -> None:
    q = build_queries(split, ITEM_INDEX, "test")
    with pytest.raises(ValueError, match="shape"):
        evaluate(FixedScorer(np.zeros(3)), q, len(ITEMS))


def test_report_contains_every_protocol_and_model(tmp_path) -> None:
    results = {
        "loo": {"two_tower": {"recall@10": 0.3, "ndcg@10": 0.2, "n_users": 5},
                "popularity": {"recall@10": 0.1, "ndcg@10": 0.25, "n_users": 5}},
        "cold": {"content_knn": {"recall@10": 0.05, "n_users": 3}},
    }
    md, js = write_report(results, tmp_path / "rep", {"dataset": "ml-100k", "seed": 42})
    text = md.read_text()
    for name in ["loo", "cold", "two_tower", "popularity", "content_knn", "ml-100k"]:
        assert name in text
    assert "**0.3000**" in text and "**0.2500**" in text and "**0.1000**" not in text
    assert "**5**" not in text  # counts are not "best"
    payload = json.loads(js.read_text())
    assert payload["results"] == results and payload["meta"]["seed"] == 42
    assert not [p for p in (tmp_path / "rep").iterdir() if p.name.startswith(".")]


def test_cold_validation_halves_split_the_items_so_a_gain_on_one_item_is_not_confirmed() -> None:
    """Cold validation users share the few held-out items. A scorer that lifts one item (as towers early-stopped
    on that item would) wins on both halves of the users, but on halves of the items only where that item
    is, so `crossfit` does not keep it; a gain on every item is kept. Without candidates there are no items
    to split and the halves stay halves of the users."""
    from recsys.eval.protocol import RankingJudge
    from recsys.model.grid import Trial, crossfit

    n_items, n_users = 30, 400
    candidates = np.arange(10, 30)  # 20 held-out items; items 0-9 are the histories
    rng = np.random.default_rng(3)
    targets = [rng.choice(candidates, size=2, replace=False) for _ in range(n_users)]
    queries = EvalQueries(np.arange(n_users), [np.array([u % 10]) for u in range(n_users)], targets,
                          [np.array([u % 10]) for u in range(n_users)])
    judge = RankingJudge(queries, n_items, candidates)
    (rows_a, judge_a), (rows_b, judge_b) = judge.item_halves
    items_a, items_b = set(np.flatnonzero(judge_a.allowed).tolist()), set(np.flatnonzero(judge_b.allowed).tolist())
    assert items_a | items_b == set(candidates.tolist()) and not items_a & items_b and len(items_a) == 10
    for rows, half, items in ((rows_a, judge_a, items_a), (rows_b, judge_b, items_b)):
        assert [set(t.tolist()) for t in half.queries.targets] == [set(targets[r].tolist()) & items for r in rows]
    assert len(set(rows_a.tolist()) | set(rows_b.tolist())) == n_users  # every user has a target in some half

    base = rng.standard_normal((n_users, n_items)).astype(np.float32)
    lucky_item = next(iter(items_a))
    lucky = base.copy()
    lucky[:, lucky_item] += 10.0  # ranked first for everyone: right for the users who hold it
    everywhere = base.copy()
    for u, t in enumerate(targets):
        everywhere[u, t] += 10.0  # every target first: a real gain on every item

    def trial(scores):
        value, first, second = judge.value_halves(scores, "ndcg@10", by="items")
        return Trial({}, value, (first, second))

    def user_halves(scores):
        value, first, second = judge.value_halves(scores, "ndcg@10")
        values = judge.per_query(judge.top_k(scores, 10), "ndcg@10")
        assert (first, second) == judge.halves(values)
        return Trial({}, value, (first, second))

    incumbent = trial(base)
    assert trial(lucky).value > incumbent.value  # it does win on all validation
    assert crossfit([user_halves(lucky)], user_halves(base)).kept  # and on both halves of the users
    assert not crossfit([trial(lucky)], incumbent).kept  # not on the half of the items that did not pick it
    assert crossfit([trial(everywhere)], incumbent).kept
    warm = RankingJudge(queries, n_items)
    assert warm.item_halves is None
    assert warm.value_halves(base, "ndcg@10", by="items") == warm.value_halves(base, "ndcg@10")  # no items to split
