"""The quality benchmark's pairing (bench/quality.py): recsys against each peer on the same test users,
with a bootstrap interval, and the per-query values it pairs being the ones the table's means come from."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from recsys.eval.protocol import EvalQueries, evaluate
from recsys.paths import repo_root

if str(repo_root()) not in sys.path:
    sys.path.insert(0, str(repo_root()))

from bench.peers import PEERS  # noqa: E402
from bench.quality import judge_test, paired_difference, paired_with_peers, render_section  # noqa: E402
from recsys.eval.protocol import RankingJudge  # noqa: E402


def test_a_clear_gap_is_outside_the_noise_and_a_coin_flip_is_not():
    rng = np.random.default_rng(0)
    theirs = rng.uniform(0, 1, 3000)
    better = paired_difference(theirs + 0.05 + rng.normal(0, 0.2, 3000), theirs)
    assert better["lo"] > 0 and better["lo"] < better["diff"] < better["hi"]
    assert better["diff"] == pytest.approx(0.05, abs=0.01) and better["n_users"] == 3000
    level = paired_difference(theirs + rng.normal(0, 0.2, 3000), theirs)
    assert level["lo"] < 0 < level["hi"]
    same = paired_difference(theirs, theirs)
    assert same == {"diff": 0.0, "lo": 0.0, "hi": 0.0, "n_users": 3000}


def test_queries_without_a_target_are_left_out_and_mismatched_queries_refused():
    ours, theirs = np.array([1.0, np.nan, 0.5, 0.0]), np.array([0.0, 0.2, np.nan, 0.0])
    out = paired_difference(ours, theirs)
    assert out["n_users"] == 2 and out["diff"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="different queries"):
        paired_difference(ours, theirs[:3])


def test_the_paired_values_are_the_ones_the_table_averages(real_slice):
    """judge_test returns what `evaluate` returns, and its per-query NDCG@10 averages to the table's NDCG@10."""
    data, train = real_slice
    rng = np.random.default_rng(1)
    histories = [rng.choice(90, size=5, replace=False) for _ in range(40)]
    targets = [np.array([int(rng.integers(0, 90))]) for _ in range(40)]
    queries = EvalQueries(np.arange(40), histories, targets, [np.unique(h) for h in histories])
    scorers = {name: PEERS[name].fit(data, {"l2": 100} if name == "ease" else {}, 0) for name in ("ease", "popularity")}
    per_query = {}
    for name, scorer in scorers.items():
        metrics, values = judge_test(RankingJudge(queries, data.n_items), scorer, (10, 20))
        assert metrics == evaluate(scorer, queries, data.n_items, ks=(10, 20))
        assert np.nanmean(values) == pytest.approx(metrics["ndcg@10"])
        per_query["recsys" if name == "ease" else name] = values
    paired = paired_with_peers(per_query)
    assert list(paired) == ["recsys"] and list(paired["recsys"]) == ["popularity"]
    block = {"models": {}, "split": "s", "n_test_users": 40, "candidates": "whole catalog", "created": "now", "machine": "m",
             "command": "c", "paired": paired}
    text = render_section("tiny", "loo", block)
    gap = paired["recsys"]["popularity"]
    assert f"popularity {gap['diff']:+.4f} [{gap['lo']:+.4f}, {gap['hi']:+.4f}]" in text
