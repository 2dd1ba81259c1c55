"""The Recommender over a real tiny bundle: batch output schema, seen-item exclusion, candidate
restriction, fallbacks, and items added or removed live."""

from __future__ import annotations

import polars as pl
import pytest

from recsys.recommender import Recommender


@pytest.fixture(scope="module")
def recommender(tiny_bundle) -> Recommender:
    return Recommender.from_bundle(tiny_bundle)


@pytest.fixture(scope="module")
def seen(tiny_data) -> dict:
    _, interactions = tiny_data
    grouped = interactions.group_by("user_id").agg("item_id")
    return dict(zip(grouped["user_id"].to_list(), grouped["item_id"].to_list()))


def test_batch_output_schema_and_ranks(recommender, seen, tmp_path):
    users = recommender.bundle.users["user_id"].to_list()[:40] + [10_000_001]
    out = recommender.write_recommendations(users, tmp_path / "recs.parquet", k=7, exclude_seen=True, chunk_size=16, show_progress=False)
    recs = pl.read_parquet(out)
    assert recs.columns == ["user_id", "item_id", "rank", "score", "fallback"]
    assert recs.schema["rank"] == pl.Int32 and recs.schema["score"] == pl.Float32
    per_user = recs.group_by("user_id", maintain_order=True).agg("rank", "score")
    n_items = len(recommender.bundle.catalog)
    # Every user gets min(k, unseen items) rows; a user who has seen everything gets none.
    expected = {u: min(7, n_items - len(set(seen.get(u, [])))) for u in users}
    assert recs["user_id"].value_counts().sort("user_id").rows() == sorted((u, n) for u, n in expected.items() if n)
    for ranks, scores in zip(per_user["rank"].to_list(), per_user["score"].to_list()):
        assert ranks == list(range(1, len(ranks) + 1))
        assert scores == sorted(scores, reverse=True)
    assert not list(tmp_path.glob(".*tmp*")), "temporary file left behind"


def test_exclude_seen_never_returns_seen_items(recommender, seen):
    for user in list(seen)[:30]:
        items = recommender.recommend_user(user, 20, exclude_seen=True).item_ids
        assert not set(items) & set(seen[user])
    # Without exclusion, a heavy user's history does show up (the check above is not vacuous).
    heavy = max(seen, key=lambda u: len(seen[u]))
    assert set(recommender.recommend_user(heavy, 50, exclude_seen=False).item_ids) & set(seen[heavy])


def test_candidates_restrict_results(recommender):
    all_items = recommender.bundle.catalog["item_id"].to_list()
    candidates = all_items[::7]
    user = recommender.bundle.users["user_id"][0]
    items = recommender.recommend_user(user, 10, exclude_seen=False, candidates=candidates).item_ids
    assert items and set(items) <= set(candidates)
    batch = recommender.recommend_users([user, 999_999], 5, candidates=candidates)
    assert all(set(r.item_ids) <= set(candidates) for r in batch)


def test_category_filter(recommender):
    cats = dict(zip(recommender.bundle.catalog["item_id"].to_list(), recommender.bundle.catalog["categories"].to_list()))
    category = "Drama"
    assert category in recommender.categories()
    user = recommender.bundle.users["user_id"][0]
    items = recommender.recommend_user(user, 10, exclude_seen=False, categories=[category]).item_ids
    assert items and all(category in cats[i] for i in items)


def test_unknown_user_gets_popular_items(recommender):
    rec = recommender.recommend_user(123_456_789, 5)
    assert rec.fallback == "popular"
    top = recommender.bundle.popularity.sort("count", descending=True)["item_id"].to_list()[:5]
    assert rec.item_ids == top


def test_anonymous_history(recommender):
    history = recommender.bundle.catalog["item_id"].to_list()[:3]
    rec = recommender.recommend_history(history + [987_654], 5)
    assert rec.fallback is None
    assert rec.unknown_items == [987_654]
    assert not set(rec.item_ids) & set(history)
    empty = recommender.recommend_history([987_654], 5)
    assert empty.fallback == "popular"


def test_new_item_is_recommendable_without_retraining(tiny_bundle):
    rec = Recommender.from_bundle(tiny_bundle)
    rec.add_item(50_000, "Galactic Heist (2024)", text="A crew of thieves robs a space station.")
    assert rec.has_item(50_000)
    assert 50_000 in rec.similar_items(rec.bundle.catalog["item_id"][0], len(rec.index)).item_ids
    # Search projects the query with the same trained text head as the item tower: the item's own
    # text finds it first, with cosine ~1.
    hits = rec.search("Galactic Heist (2024). A crew of thieves robs a space station.", 3)
    assert hits.item_ids[0] == 50_000 and hits.scores[0] == pytest.approx(1.0, abs=1e-4)
    with_category = 50_001
    rec.add_item(with_category, "Space Thieves", text="Thieves in orbit.", categories=["Sci-Fi"])
    assert with_category in rec.recommend_user(rec.bundle.users["user_id"][0], len(rec.index), categories=["Sci-Fi"]).item_ids
    with pytest.raises(ValueError):
        rec.add_item(50_000, "duplicate")
    rec.remove_item(50_000)
    assert 50_000 not in rec.similar_items(rec.bundle.catalog["item_id"][0], len(rec.index) + 5).item_ids
    with pytest.raises(KeyError):
        rec.remove_item(50_000)
