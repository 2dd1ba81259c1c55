"""Behaviour of ItemIndex: exactness, recall, filters, mutation, persistence, kind choice."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from recsys.config import IndexConfig
from recsys.index import ItemIndex, ItemIndexError

DIM = 16


def _unit(rng: np.random.Generator, n: int, d: int = DIM) -> np.ndarray:
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _brute_force(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-(queries @ vectors.T), axis=1, kind="stable")[:, :k]


FLAT = IndexConfig(kind="flat")
HNSW = IndexConfig(kind="hnsw", hnsw_m=16, hnsw_ef_construction=100, hnsw_ef_search=64)
IVF = IndexConfig(kind="ivf", ivf_nlist=8, ivf_nprobe=8)  # nprobe = nlist: exhaustive, so exact


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    vectors = _unit(rng, 500)
    ids = np.arange(1000, 1500, dtype=np.int64)
    queries = _unit(rng, 20)
    return vectors, ids, queries


@pytest.mark.parametrize("cfg", [FLAT, IVF], ids=["flat", "ivf"])
def test_exact_topk_matches_brute_force(data, cfg) -> None:
    vectors, ids, queries = data
    index = ItemIndex.build(vectors, ids, cfg)
    got_ids, got_scores = index.search(queries, 10)
    expected = ids[_brute_force(vectors, queries, 10)]
    np.testing.assert_array_equal(got_ids, expected)
    np.testing.assert_allclose(got_scores, np.sort(queries @ vectors.T, axis=1)[:, ::-1][:, :10], rtol=1e-5)
    assert got_scores.dtype == np.float32


def test_hnsw_recall_at_10_vs_exact() -> None:
    rng = np.random.default_rng(1)
    vectors = _unit(rng, 5000, 32)
    queries = _unit(rng, 200, 32)
    ids = np.arange(5000, dtype=np.int64)
    index = ItemIndex.build(vectors, ids, IndexConfig(kind="hnsw"))
    assert index.kind == "hnsw"
    got, _ = index.search(queries, 10)
    exact = _brute_force(vectors, queries, 10)
    recall = np.mean([len(set(g) & set(e)) / 10 for g, e in zip(got.tolist(), exact.tolist())])
    assert recall >= 0.95


@pytest.mark.parametrize("cfg", [FLAT, HNSW, IVF], ids=["flat", "hnsw", "ivf"])
def test_exclusion_removes_seen_and_still_returns_k(data, cfg) -> None:
    vectors, ids, queries = data
    index = ItemIndex.build(vectors, ids, cfg)
    top, _ = index.search(queries[:3], 30)
    seen = [top[0, :25].tolist(), [], top[2, ::2].tolist()]
    got, scores = index.search(queries[:3], 10, exclude=seen)
    for row, excluded in zip(got.tolist(), seen):
        assert len(row) == 10 and -1 not in row
        assert not set(row) & set(excluded)
    assert np.isfinite(scores).all()
    # the unfiltered query is unaffected by the other rows' exclusions
    np.testing.assert_array_equal(got[1], top[1, :10])


@pytest.mark.parametrize("cfg", [FLAT, IVF], ids=["flat", "ivf"])
def test_exclusions_of_very_different_sizes_in_one_batch_are_exact(data, cfg) -> None:
    """Each query fetches for its own exclusions (grouped by fetch size): a long history beside short
    ones in one batch still gives every query the exact top k of what it may see."""
    vectors, ids, queries = data
    index = ItemIndex.build(vectors, ids, cfg)
    order = np.argsort(-(queries[:4] @ vectors.T), axis=1, kind="stable")
    seen = [ids[order[0, :300]].tolist(), [], ids[order[2, :3]].tolist(), np.asarray(ids[order[3, 1:40:2]])]
    got, _ = index.search(queries[:4], 10, exclude=seen)
    for row, excluded, ranked in zip(got.tolist(), seen, order):
        blocked = set(np.asarray(excluded).tolist())
        assert row == [i for i in ids[ranked].tolist() if i not in blocked][:10]


def test_exclusion_ids_in_any_form_and_after_changes(data) -> None:
    """Exclusions given as a list, a numpy array, a set or a generator, with unknown and repeated ids, hit
    the same rows; after add/remove the lookup sees the new state."""
    vectors, ids, queries = data
    index = ItemIndex.build(vectors, ids, FLAT)
    top = index.search(queries[:1], 3)[0][0].tolist()
    forms = [top[:2] + [top[0], 77_777], np.asarray(top[:2]), set(top[:2]), (i for i in top[:2])]
    for form in forms:
        assert index.search(queries[:1], 1, exclude=[form])[0][0, 0] == top[2]
    index.remove([top[2]])
    assert index.search(queries[:1], 1, exclude=[top[:2]])[0][0, 0] not in top
    index.add([top[2]], vectors[ids == top[2]])
    assert index.search(queries[:1], 1, exclude=[top[:2]])[0][0, 0] == top[2]
    assert index.search(queries[:1], 1, exclude=[[top[0], top[1], top[2]]])[0][0, 0] not in top


def test_ivf_trains_on_a_capped_sample(data) -> None:
    vectors, ids, queries = data
    cfg = IndexConfig(kind="ivf", ivf_nlist=4, ivf_nprobe=4, ivf_train_per_list=40)
    index = ItemIndex.build(vectors, ids, cfg)
    assert index._index.cp.max_points_per_centroid == 40  # 160 of the 500 vectors train k-means
    np.testing.assert_array_equal(index.search(queries, 10)[0], ids[_brute_force(vectors, queries, 10)])
    with pytest.raises(ValueError):
        IndexConfig(ivf_train_per_list=10)  # faiss needs >= 39 per list


@pytest.mark.parametrize("cfg", [FLAT, HNSW, IVF], ids=["flat", "hnsw", "ivf"])
@pytest.mark.parametrize("exact_max", [20_000, 0], ids=["numpy-subset", "faiss-selector"])
def test_candidates_restrict_results(data, cfg, exact_max) -> None:
    vectors, ids, queries = data
    index = ItemIndex.build(vectors, ids, cfg)
    index.exact_candidates_max = exact_max
    subset = ids[::5]  # 100 candidates
    got, _ = index.search(queries, 5, candidates=subset, exclude=[[int(subset[0])]] * len(queries))
    assert set(got.ravel().tolist()) <= set(subset.tolist()) - {int(subset[0])}
    if cfg.kind != "hnsw":  # exact kinds: equal to brute force on the subset
        sub_vecs = vectors[::5]
        scores = queries @ sub_vecs.T
        scores[:, 0] = -np.inf
        np.testing.assert_array_equal(got, subset[np.argsort(-scores, axis=1, kind="stable")[:, :5]])


def test_fewer_candidates_than_k_pads_with_sentinel(data) -> None:
    vectors, ids, queries = data
    index = ItemIndex.build(vectors, ids, FLAT)
    got, scores = index.search(queries[:2], 5, candidates=ids[:3])
    assert (got[:, 3:] == -1).all() and np.isneginf(scores[:, 3:]).all()
    assert set(got[:, :3].ravel().tolist()) == set(ids[:3].tolist())


@pytest.mark.parametrize("cfg", [FLAT, HNSW, IVF], ids=["flat", "hnsw", "ivf"])
def test_add_makes_item_findable_and_remove_hides_it(data, cfg) -> None:
    vectors, ids, queries = data
    index = ItemIndex.build(vectors, ids, cfg)
    q = queries[:1]
    index.add(np.array([9999]), q)  # identical to the query: must rank first
    got, scores = index.search(q, 3)
    assert got[0, 0] == 9999 and scores[0, 0] == pytest.approx(1.0, abs=1e-5)
    assert len(index) == 501 and 9999 in index
    np.testing.assert_allclose(index.vector(9999), q[0], rtol=1e-6)

    first_real = got[0, 1]
    assert index.remove([9999, first_real, 424242]) == 2  # unknown id ignored
    got, _ = index.search(q, 10)
    assert 9999 not in got and first_real not in got and len(set(got[0].tolist())) == 10
    assert len(index) == 499 and 9999 not in index.item_ids
    with pytest.raises(KeyError):
        index.vector(9999)

    index.add([9999], q)  # a removed id may come back
    assert index.search(q, 1)[0][0, 0] == 9999


def test_add_rejects_duplicates_and_bad_shapes(data) -> None:
    vectors, ids, _ = data
    index = ItemIndex.build(vectors, ids, FLAT)
    with pytest.raises(ItemIndexError, match="already in the index"):
        index.add([int(ids[0])], vectors[:1])
    with pytest.raises(ItemIndexError, match="dimension"):
        index.add([1], np.ones((1, DIM + 1), dtype=np.float32))
    with pytest.raises(ItemIndexError, match="item_ids"):
        ItemIndex.build(vectors[:2], np.array([1, 1]), FLAT)
    with pytest.raises(ItemIndexError, match="int ids"):
        index.add(["x"], vectors[:1])


@pytest.mark.parametrize("cfg", [FLAT, HNSW, IVF], ids=["flat", "hnsw", "ivf"])
def test_save_load_round_trip(tmp_path, data, cfg) -> None:
    vectors, ids, queries = data
    index = ItemIndex.build(vectors, ids, cfg)
    index.remove(ids[:7])
    index.add([7777], vectors[:1])
    before = index.search(queries, 10, exclude=[[int(ids[10])]] * len(queries))
    path = index.save(tmp_path / "idx")
    index.save(tmp_path / "idx")  # overwriting an existing save works
    loaded = ItemIndex.load(path)
    after = loaded.search(queries, 10, exclude=[[int(ids[10])]] * len(queries))
    np.testing.assert_array_equal(before[0], after[0])
    np.testing.assert_array_equal(before[1], after[1])
    assert (loaded.kind, loaded.dim, len(loaded)) == (index.kind, index.dim, len(index))
    np.testing.assert_array_equal(loaded.item_ids, index.item_ids)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left behind


def test_load_missing_file_fails_loudly(tmp_path, data) -> None:
    vectors, ids, _ = data
    path = ItemIndex.build(vectors, ids, FLAT).save(tmp_path / "idx")
    (path / "live.npy").unlink()
    with pytest.raises(FileNotFoundError, match="live.npy"):
        ItemIndex.load(path)


def test_auto_chooses_by_size(data) -> None:
    vectors, ids, _ = data
    cfg = IndexConfig(kind="auto", flat_max_items=100)
    assert ItemIndex.build(vectors[:100], ids[:100], cfg).kind == "flat"
    assert ItemIndex.build(vectors[:101], ids[:101], cfg).kind == "ivf"


def test_string_ids_and_padding(tmp_path) -> None:
    rng = np.random.default_rng(3)
    vectors = _unit(rng, 4)
    ids = np.array(["a", "bb", "ccc", "d"])
    index = ItemIndex.build(vectors, ids, FLAT)
    got, scores = index.search(vectors[:1], 6, exclude=[["bb"]])
    assert got[0, 0] == "a" and "bb" not in got[0].tolist()
    assert got[0, 3:].tolist() == ["", "", ""] and np.isneginf(scores[0, 3:]).all()
    new = _unit(rng, 1)
    index.add(["a-much-longer-id"], new)
    assert index.search(new, 1)[0][0, 0] == "a-much-longer-id"
    loaded = ItemIndex.load(index.save(tmp_path / "s"))
    assert "a-much-longer-id" in loaded


def test_concurrent_add_and_search_do_not_corrupt() -> None:
    rng = np.random.default_rng(4)
    vectors = _unit(rng, 200)
    index = ItemIndex.build(vectors, np.arange(200), FLAT)
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            for i in range(50):
                index.add([1000 + i], _unit(rng, 1))
                index.remove([i])
        except BaseException as err:  # pragma: no cover - surfaced below
            errors.append(err)

    thread = threading.Thread(target=writer)
    thread.start()
    for _ in range(50):
        got, _ = index.search(vectors[:4], 5)
        assert (got >= 0).all()
    thread.join()
    assert not errors and len(index) == 200
