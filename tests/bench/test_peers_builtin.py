"""The quality benchmark's built-in peers (bench/peers.py) that need only numpy/scipy/torch/polars:
ease, ease_content, sasrec and recent_popularity. Unlike tests/bench/test_peers.py these run without
the `bench` extra."""

from __future__ import annotations

import sys

import numpy as np
import polars as pl
import pytest
import scipy.sparse as sp

from recsys.encoders.features import ItemFeatures
from recsys.eval.baselines import RandomScorer
from recsys.eval.protocol import EvalQueries, evaluate
from recsys.paths import repo_root

if str(repo_root()) not in sys.path:
    sys.path.insert(0, str(repo_root()))

from bench.peers import PEERS, PeerData, ease_weights  # noqa: E402

BUILTIN = ("ease", "ease_content", "sasrec", "recent_popularity")
FAST = {  # one small, quick point per peer
    "ease": {"l2": 100},
    "ease_content": {"l2": 100, "alpha": 10},
    "sasrec": {"epochs": 2, "max_len": 20},
    "recent_popularity": {"days": 28},
}


@pytest.mark.parametrize("name", BUILTIN)
def test_builtin_peer_fits_and_scores_real_slice(real_slice, name):
    spec = PEERS[name]
    assert spec.needs == "" and spec.available()
    data, train = real_slice
    scorer = spec.fit(data, FAST[name], 0)
    users = train["user_id"].unique().sort().head(7).to_numpy()
    histories = [np.array([0, 3, 5]), np.array([1]), np.array([2, 4]), np.array([95, 7])]
    histories += [np.array([7])] * 2 + [np.array([], np.int64)]
    user_ids = np.append(users[:6], -1)  # -1: a user never seen in training
    scores = np.asarray(scorer.score(histories, user_ids))
    assert scores.shape == (7, data.n_items)
    assert scores.dtype == np.float32
    assert np.isfinite(scores[:, data.seen_items()]).all()
    assert scorer.name == name


@pytest.mark.parametrize("name", ["ease", "sasrec"])
def test_id_peers_rank_untrained_items_last(real_slice, name):
    data, train = real_slice
    scorer = PEERS[name].fit(data, FAST[name], 0)
    scores = scorer.score([np.array([0, 1]), np.array([2, 3, 4])], train["user_id"].unique().sort().head(2).to_numpy())
    seen = data.seen_items()
    assert not seen[-10:].any()
    assert (scores[:, ~seen].max(axis=1) < scores[:, seen].min(axis=1)).all()


# --------------------------------------------------------------------------- ease


X_TOY = np.array([[1, 1, 0, 0], [0, 1, 1, 0], [1, 0, 1, 1], [0, 0, 1, 1], [1, 1, 1, 0]], dtype=np.float32)


def test_ease_matches_the_per_column_ridge_definition():
    """EASE's column j is the ridge regression of item j's column on the other items' columns (its own
    weight fixed at 0); the closed form must give exactly that."""
    l2 = 2.0
    got = ease_weights(sp.csr_matrix(X_TOY), l2)
    x = X_TOY.astype(np.float64)
    for j in range(4):
        others = [i for i in range(4) if i != j]
        a = x[:, others]
        b = np.linalg.solve(a.T @ a + l2 * np.eye(3), a.T @ x[:, j])
        np.testing.assert_allclose(got[others, j], b, rtol=1e-10, atol=1e-12)
        assert got[j, j] == 0.0
    # a hand-computed entry: G + 2I = [[5,2,2,1],[2,5,2,0],[2,2,6,2],[1,0,2,4]]; B[0,1] = -P[0,1] / P[1,1]
    g = np.array([[5, 2, 2, 1], [2, 5, 2, 0], [2, 2, 6, 2], [1, 0, 2, 4]], dtype=np.float64)
    p = np.linalg.inv(g)
    assert got[0, 1] == pytest.approx(-p[0, 1] / p[1, 1])


def test_ease_peer_scores_histories_with_the_closed_form():
    train = pl.DataFrame(
        [(u, 10 + i) for u, row in enumerate(X_TOY) for i in np.flatnonzero(row).tolist()],
        schema={"user_id": pl.Int64, "item_id": pl.Int64}, orient="row",
    )
    data = PeerData(train, {10 + i: i for i in range(4)} | {99: 4})  # item id 99 (row 4): never in training
    scorer = PEERS["ease"].fit(data, {"l2": 2.0}, 0)
    scores = scorer.score([np.array([0, 2]), np.array([3])], np.array([0, 1]))
    b = ease_weights(sp.csr_matrix(X_TOY), 2.0)
    np.testing.assert_allclose(scores[:, :4], np.stack([b[0] + b[2], b[3]]), rtol=1e-5, atol=1e-6)
    assert (scores[:, 4] < scores[:, :4].min(axis=1)).all()  # the untrained item ranks last


def test_ease_refuses_huge_catalogs():
    train = pl.DataFrame({"user_id": [0, 0], "item_id": [0, 1]})
    data = PeerData(train, {i: i for i in range(20_001)})
    with pytest.raises(ValueError, match="20,000"):
        PEERS["ease"].fit(data, {"l2": 100}, 0)


# --------------------------------------------------------------------------- ease_content


def _block_data(n_blocks: int = 4, per_block: int = 25, users_per_block: int = 40, hist: int = 10, seed: int = 0):
    """Users like the items of one block; an item's features are its block's (genre one-hot + a block
    text vector) plus noise. The last 5 items of every block never appear in training."""
    rng = np.random.default_rng(seed)
    n_items = n_blocks * per_block
    block_of = np.arange(n_items) // per_block
    new_items = np.array([b * per_block + j for b in range(n_blocks) for j in range(per_block - 5, per_block)])
    rows, histories, user_ids = [], [], []
    for b in range(n_blocks):
        warm = np.setdiff1d(np.arange(b * per_block, (b + 1) * per_block), new_items)
        for u in range(users_per_block):
            user = b * users_per_block + u
            picked = rng.choice(warm, size=hist, replace=False)
            rows += [(user, int(i)) for i in picked]
            histories.append(picked.astype(np.int64))
            user_ids.append(user)
    train = pl.DataFrame(rows, schema={"user_id": pl.Int64, "item_id": pl.Int64}, orient="row")
    centres = rng.standard_normal((n_blocks, 16))
    text = (centres[block_of] + 0.5 * rng.standard_normal((n_items, 16))).astype(np.float32)
    features = ItemFeatures(
        item_ids=np.arange(n_items), text=text, text_mask=np.ones(n_items, bool), image=None, image_mask=None,
        categories=np.eye(n_blocks, dtype=np.float32)[block_of], category_vocab=[f"g{b}" for b in range(n_blocks)],
    )
    targets = [new_items[block_of[new_items] == u // users_per_block] for u in user_ids]
    queries = EvalQueries(np.asarray(user_ids), histories, targets, [np.unique(h) for h in histories])
    return PeerData(train, {i: i for i in range(n_items)}, features=features), queries, new_items


def test_ease_content_ranks_new_items_from_their_content():
    data, queries, new_items = _block_data()
    scorer = PEERS["ease_content"].fit(data, {"l2": 10, "alpha": 1}, 0)
    model = evaluate(scorer, queries, data.n_items, ks=(5,), candidates=new_items)
    chance = evaluate(RandomScorer(data.n_items, seed=0), queries, data.n_items, ks=(5,), candidates=new_items)
    assert model["ndcg@5"] > chance["ndcg@5"] + 0.3, (model, chance)
    # known items keep their real EASE columns
    plain = PEERS["ease"].fit(data, {"l2": 10}, 0)
    known = np.flatnonzero(data.seen_items())
    hist = [np.array([0, 1, 30])]
    np.testing.assert_allclose(scorer.score(hist, np.array([0]))[:, known], plain.score(hist, np.array([0]))[:, known], rtol=1e-5)


def test_ease_content_copies_the_column_of_a_known_item_with_the_same_features():
    """A new item whose features equal known item j's gets a column close to j's: of all known items'
    EASE columns, j's is (nearly always) the one its predicted column correlates with most, well above
    the other items of the same block (which share its genre and, up to noise, its text)."""
    data, _, new_items = _block_data(seed=1)
    f = data.features
    twin_of = {int(n): int(n) - 5 for n in new_items}  # a known item of the same block
    text = f.text.copy()
    for new, known in twin_of.items():
        text[new] = text[known]
    data = PeerData(data.train, data.item_index, features=ItemFeatures(
        item_ids=f.item_ids, text=text, text_mask=f.text_mask, image=None, image_mask=None,
        categories=f.categories, category_vocab=f.category_vocab))
    scorer = PEERS["ease_content"].fit(data, {"l2": 10, "alpha": 0.1}, 0)
    known = np.flatnonzero(data.seen_items())
    cols = scorer.weights  # [n_known, n_items]
    twin_corr, block_corr, twin_rank = [], [], []
    for new, twin in twin_of.items():
        corr = np.array([np.corrcoef(cols[:, new], cols[:, j])[0, 1] for j in known])
        same_block = (known // 25 == new // 25) & (known != twin)
        twin_corr.append(corr[known == twin][0])
        block_corr.append(corr[same_block].mean())
        twin_rank.append(int((corr > corr[known == twin][0]).sum()))
    assert np.mean(twin_corr) > np.mean(block_corr) + 0.15, (np.mean(twin_corr), np.mean(block_corr))
    assert np.mean(np.array(twin_rank) == 0) >= 0.7, twin_rank


# --------------------------------------------------------------------------- sasrec


def test_sasrec_learns_a_deterministic_successor_pattern():
    """Item i is always followed by i + 1 (mod n): after a short training the successor of the last
    history item is ranked first for most users."""
    n_items, length = 30, 12
    rng = np.random.default_rng(0)
    starts = rng.integers(0, n_items, size=200)
    rows = [(u, int((s + t) % n_items), t) for u, s in enumerate(starts.tolist()) for t in range(length)]
    train = pl.DataFrame(rows, schema={"user_id": pl.Int64, "item_id": pl.Int64, "pos": pl.Int64}, orient="row")
    data = PeerData(train.sample(fraction=1.0, shuffle=True, seed=0), {i: i for i in range(n_items)})  # order from `pos`
    scorer = PEERS["sasrec"].fit(data, {"epochs": 15, "max_len": 10, "hidden": 32, "layers": 1}, 0)
    test_starts = rng.integers(0, n_items, size=100)
    histories = [np.arange(s, s + 5) % n_items for s in test_starts.tolist()]
    scores = scorer.score(histories, np.arange(100))
    hits = np.mean(scores.argmax(axis=1) == (test_starts + 5) % n_items)
    assert hits > 0.8, hits


def test_sasrec_is_seeded():
    n_items = 15
    rows = [(u, (u + t) % n_items, t) for u in range(40) for t in range(8)]
    train = pl.DataFrame(rows, schema={"user_id": pl.Int64, "item_id": pl.Int64, "pos": pl.Int64}, orient="row")
    data = PeerData(train, {i: i for i in range(n_items)})
    params = {"epochs": 2, "max_len": 8, "hidden": 16, "layers": 1}
    hist = [np.array([1, 2, 3])]
    a = PEERS["sasrec"].fit(data, params, 3).score(hist, np.array([0]))
    b = PEERS["sasrec"].fit(data, params, 3).score(hist, np.array([0]))
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="unknown parameters"):
        PEERS["sasrec"].fit(data, {"epoch": 2}, 0)


# --------------------------------------------------------------------------- recent_popularity


DAY = 86_400


def _timed_train(with_times: bool = True) -> PeerData:
    t_end = 1_000 * DAY
    rows = (
        [(u, 0, t_end - 200 * DAY) for u in range(20)]  # item 0: popular long ago
        + [(100 + u, 1, t_end - u * DAY) for u in range(5)]  # item 1: a few recent interactions
        + [(200, 2, t_end - 1 * DAY)] + [(201 + u, 2, t_end - 300 * DAY) for u in range(3)]  # item 2: 1 recent + 3 old
        + [(300, 3, t_end - 2 * DAY)]  # item 3: 1 recent only
    )
    train = pl.DataFrame(rows, schema={"user_id": pl.Int64, "item_id": pl.Int64, "timestamp": pl.Int64}, orient="row")
    if not with_times:
        train = train.with_columns(pl.lit(0, dtype=pl.Int64).alias("timestamp"))
    return PeerData(train, {i: i for i in range(5)})  # item 4: never interacted with


def test_recent_popularity_prefers_recent_interactions():
    scorer = PEERS["recent_popularity"].fit(_timed_train(), {"days": 7}, 0)
    s = scorer.score([np.array([], np.int64)] * 2, np.array([0, 1]))
    assert s.shape == (2, 5)
    assert s[0, 1] > s[0, 2] > s[0, 3] > s[0, 0] > s[0, 4]  # recent first, all-time counts break ties
    np.testing.assert_array_equal(s[0], s[1])
    # a window long enough to reach the old interactions: all-time popularity again
    wide = PEERS["recent_popularity"].fit(_timed_train(), {"days": 1_000}, 0).score([np.array([1])], np.array([0]))[0]
    assert list(np.argsort(-wide)) == [0, 1, 2, 3, 4]


def test_recent_popularity_falls_back_to_popularity_without_timestamps():
    counts = np.array([20, 5, 4, 1, 0])
    for data in (_timed_train(with_times=False), PeerData(_timed_train().train.drop("timestamp"), {i: i for i in range(5)})):
        s = PEERS["recent_popularity"].fit(data, {"days": 7}, 0).score([np.array([0])], np.array([0]))[0]
        assert list(np.argsort(-s)) == list(np.argsort(-counts))
        assert s[3] > s[4]
