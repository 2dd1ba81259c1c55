"""The quality benchmark's peer wrappers (bench/peers.py): shapes on a tiny real slice, and the ID
models beating random on an easy synthetic pattern. Skipped without the `bench` extra (implicit,
lightfm), which CI does not install."""

from __future__ import annotations

import sys

import numpy as np
import polars as pl
import pytest

from recsys.eval.baselines import RandomScorer
from recsys.eval.protocol import EvalQueries, evaluate
from recsys.paths import repo_root

pytest.importorskip("implicit")
pytest.importorskip("lightfm")

if str(repo_root()) not in sys.path:
    sys.path.insert(0, str(repo_root()))

from bench.peers import PEERS, PeerData, hybrid_item_features, title_tokens  # noqa: E402

FAST = {  # one small, quick point per tunable peer
    "als": {"factors": 16, "regularization": 0.01, "iterations": 10},
    "bpr": {"factors": 16, "learning_rate": 0.05, "iterations": 50},
    "lightfm_warp": {"no_components": 16, "epochs": 10},
    "lightfm_hybrid": {"no_components": 16, "epochs": 10},
    "sasrec": {"epochs": 2, "max_len": 20},
}


@pytest.mark.parametrize("name", sorted(PEERS))
def test_peer_fits_and_scores_real_slice(real_slice, name):
    data, train = real_slice
    scorer = PEERS[name].fit(data, FAST.get(name, {}), 0)
    users = train["user_id"].unique().sort().head(7).to_numpy()
    histories = [np.array([0, 3, 5]), np.array([1]), np.array([2, 4])] + [np.array([7])] * 4
    user_ids = np.append(users[:6], -1)  # -1: unknown to every ID model
    scores = np.asarray(scorer.score(histories, user_ids))
    assert scores.shape == (7, data.n_items)
    assert np.isfinite(scores).all()
    assert scorer.name == name


@pytest.mark.parametrize("name", ["als", "bpr", "lightfm_warp"])
def test_id_models_rank_untrained_items_last(real_slice, name):
    data, train = real_slice
    scorer = PEERS[name].fit(data, FAST[name], 0)
    users = train["user_id"].unique().sort().head(3).to_numpy()
    scores = scorer.score([np.array([0, 1])] * 3, users)
    seen = data.seen_items()
    assert not seen[-10:].any()
    assert (scores[:, ~seen].max(axis=1) < scores[:, seen].min(axis=1)).all()


def test_hybrid_features_identity_only_for_seen_items(real_slice):
    data, _ = real_slice
    seen = data.seen_items()
    mat, names = hybrid_item_features(data.catalog, data.item_index, seen)
    assert mat.shape == (data.n_items, len(names))
    identity = np.array([n.startswith("item:") for n in names])
    assert identity.sum() == seen.sum()
    assert mat[~seen][:, identity].nnz == 0  # cold items: content features only
    np.testing.assert_allclose(np.asarray(mat.sum(axis=1)).ravel()[np.asarray(mat.getnnz(axis=1)) > 0], 1.0, rtol=1e-5)
    assert title_tokens("Toy Story (1995)") == ["toy", "story", "1995"]


def _synthetic(n_blocks: int = 4, items_per_block: int = 25, users_per_block: int = 40, hist: int = 10, seed: int = 0):
    """Each user likes items of one block; test target = one more item of that block."""
    rng = np.random.default_rng(seed)
    rows, histories, targets, user_ids = [], [], [], []
    for b in range(n_blocks):
        block = np.arange(b * items_per_block, (b + 1) * items_per_block)
        for u in range(users_per_block):
            user = b * users_per_block + u
            picked = rng.choice(block, size=hist + 1, replace=False)
            rows += [(user, int(i)) for i in picked[:hist]]
            histories.append(picked[:hist].astype(np.int64))
            targets.append(picked[hist:].astype(np.int64))
            user_ids.append(user)
    n_items = n_blocks * items_per_block
    train = pl.DataFrame(rows, schema={"user_id": pl.Int64, "item_id": pl.Int64}, orient="row")
    catalog = pl.DataFrame({
        "item_id": np.arange(n_items),
        "title": [f"Film {i}" for i in range(n_items)],
        "categories": [[f"genre{i // items_per_block}"] for i in range(n_items)],
    })
    queries = EvalQueries(np.asarray(user_ids), histories, targets, [np.unique(h) for h in histories])
    return PeerData(train, {i: i for i in range(n_items)}, catalog=catalog), queries


@pytest.mark.parametrize("name", ["als", "bpr", "lightfm_warp", "lightfm_hybrid"])
def test_id_models_beat_random_on_block_pattern(name):
    data, queries = _synthetic()
    scorer = PEERS[name].fit(data, FAST[name], 0)
    model = evaluate(scorer, queries, data.n_items, ks=(10,))
    chance = evaluate(RandomScorer(data.n_items, seed=0), queries, data.n_items, ks=(10,))
    assert model["recall@10"] > 2 * chance["recall@10"] + 0.05, (model, chance)


def test_hybrid_scores_cold_items_from_genres():
    """Items never seen in training are still ranked by their genre: the hybrid beats random on them."""
    data, queries = _synthetic(seed=1)
    cold_items = np.array([b * 25 + j for b in range(4) for j in range(20, 25)])
    data = PeerData(data.train.filter(~pl.col("item_id").is_in(cold_items.tolist())), data.item_index, catalog=data.catalog)
    # targets: the user's block's cold items
    targets = [cold_items[(cold_items // 25) == (u // 40)] for u in queries.user_ids.tolist()]
    cold_q = EvalQueries(queries.user_ids, queries.histories, targets, queries.exclude)
    scorer = PEERS["lightfm_hybrid"].fit(data, FAST["lightfm_hybrid"], 0)
    model = evaluate(scorer, cold_q, data.n_items, ks=(5,), candidates=cold_items)
    chance = evaluate(RandomScorer(data.n_items, seed=0), cold_q, data.n_items, ks=(5,), candidates=cold_items)
    assert model["ndcg@5"] > chance["ndcg@5"] + 0.2, (model, chance)
