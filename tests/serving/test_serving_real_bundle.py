"""Every endpoint end to end against a REAL tiny bundle (real text encoder, real training, faiss).

The app is built with the default loader (`Recommender.from_bundle(path, load_encoders=True)`), the
same one `recsys serve` uses. Items are str ids ("m50") and users int ids, as built by real_bundle.py.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from fastapi.testclient import TestClient
from fake_recommender import ADMIN_HEADERS, ADMIN_TOKEN

from recsys.bundle import SCHEMA_VERSION
from recsys.serving import ServingSettings, create_app

pytestmark = pytest.mark.slow


def _version(bundle: Path) -> str:
    return json.loads((bundle / "bundle.json").read_text())["model_version"]


@pytest.fixture(scope="module")
def client(tiny_bundles):
    with TestClient(create_app(ServingSettings(bundle=tiny_bundles.first, admin_token=ADMIN_TOKEN)), headers=ADMIN_HEADERS) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def histories(tiny_bundles) -> dict[int, list[str]]:
    users = pl.read_parquet(tiny_bundles.first / "users.parquet")
    return dict(zip(users["user_id"].to_list(), users["history"].to_list()))


def _ids(response) -> list:
    assert response.status_code == 200, response.text
    return [item["item_id"] for item in response.json()["items"]]


def test_default_loader_loads_encoders_at_startup(client: TestClient, tiny_bundles) -> None:
    recommender = client.app.state.model_state.current.recommender
    assert type(recommender).__name__ == "Recommender"
    assert recommender._encoders is not None and "text" in recommender._encoders  # no lazy load on first search


def test_model_info(client: TestClient, tiny_bundles) -> None:
    info = client.get("/v1/model").json()
    assert info["model_version"] == _version(tiny_bundles.first)
    assert info["id_type"] == "str" and info["user_id_type"] == "int"
    assert info["n_items"] == tiny_bundles.catalog.height
    assert info["index_kind"] == "flat" and info["dim"] == 32 and info["schema_version"] == SCHEMA_VERSION
    assert set(info["encoder_fingerprints"]) == {"text"}
    assert info["source"] == str(tiny_bundles.first) and info["created_at"]


def test_known_user_gets_unseen_items(client: TestClient, histories) -> None:
    user, seen = min(histories.items(), key=lambda kv: abs(len(kv[1]) - 40))  # leaves >= 100 unseen
    r = client.get(f"/v1/users/{user}/recommendations", params={"k": 20})
    ids = _ids(r)
    body = r.json()
    assert body["user_id"] == user and body["fallback"] is None and len(ids) == 20
    assert not set(ids) & set(seen), "seen items must be excluded"
    assert [item["rank"] for item in body["items"]] == list(range(1, 21))
    scores = [item["score"] for item in body["items"]]
    assert scores == sorted(scores, reverse=True)
    # exclude_seen=false may return seen items (the user's own favourites rank high)
    all_ids = _ids(client.get(f"/v1/users/{user}/recommendations", params={"k": 150, "exclude_seen": "false"}))
    assert set(seen) <= set(all_ids)


def test_unknown_user_falls_back_to_popular(client: TestClient, tiny_bundles) -> None:
    r = client.get("/v1/users/999999/recommendations", params={"k": 5})
    assert r.json()["fallback"] == "popular"
    counts = tiny_bundles.interactions.group_by("item_id").len().sort(["len", "item_id"], descending=[True, False])
    top_counts = counts["len"].to_list()[:5]
    assert [item["score"] for item in r.json()["items"]] == [float(c) for c in top_counts]
    assert set(_ids(r)) <= set(counts["item_id"].to_list()[: 5 + top_counts.count(top_counts[-1])])


def test_user_ids_parse_with_user_id_type_not_item_id_type(client: TestClient) -> None:
    # items are str here, users int: a non-integer user id is a client error, not an unknown str user
    r = client.get("/v1/users/abc/recommendations")
    assert r.status_code == 422 and r.json()["error"] == "invalid_id"
    assert client.get("/v1/users/%2042/recommendations").status_code == 200  # " 42" still parses as int


def test_category_and_candidate_filters(client: TestClient, tiny_bundles, histories) -> None:
    user = next(iter(histories))
    drama = set(tiny_bundles.catalog.filter(pl.col("categories").list.contains("Drama"))["item_id"].to_list())
    ids = _ids(client.get(f"/v1/users/{user}/recommendations", params={"k": 10, "category": "Drama"}))
    assert ids and set(ids) <= drama
    ids = _ids(client.get(f"/v1/users/{user}/recommendations", params={"k": 10, "candidates": "m1,m50,m100,nope"}))
    assert set(ids) <= {"m1", "m50", "m100"}
    assert client.get(f"/v1/users/{user}/recommendations", params={"category": "NoSuchGenre"}).status_code == 422


def test_history_recommendations_list_unknown_ids(client: TestClient) -> None:
    r = client.post("/v1/recommendations", json={"history": ["m50", "m181", "nope", 7], "k": 10, "exclude": ["m1"]})
    ids = _ids(r)
    body = r.json()
    assert body["unknown_items"] == ["nope", "7"]  # 7 parses to the str id "7", which the model lacks
    assert body["fallback"] is None and len(ids) == 10
    assert not {"m50", "m181", "m1"} & set(ids)


def test_history_with_timestamps_is_served_as_the_recommender_scores_it(client: TestClient) -> None:
    body = {"history": ["m50", "m181", "nope"], "timestamps": [10, 10, 12], "k": 5}
    r = client.post("/v1/recommendations", json=body)
    recommender = client.app.state.model_state.current.recommender
    expected = recommender.recommend_history(body["history"], 5, times=body["timestamps"])
    assert _ids(r) == list(expected.item_ids) and r.json()["unknown_items"] == ["nope"]
    r = client.post("/v1/recommendations", json={"history": ["m50", "m181"], "timestamps": [10], "k": 3})
    assert r.status_code == 422 and "timestamps: expected one per history item (2), got 1" in r.text


def test_history_of_only_unknown_items_falls_back(client: TestClient) -> None:
    r = client.post("/v1/recommendations", json={"history": ["x1", "x2"], "k": 3})
    assert r.json()["fallback"] == "popular" and r.json()["unknown_items"] == ["x1", "x2"] and len(_ids(r)) == 3


def test_similar_items(client: TestClient, tiny_bundles) -> None:
    r = client.get("/v1/items/m50/similar", params={"k": 5})
    ids = _ids(r)
    assert r.json()["item_id"] == "m50" and len(ids) == 5 and "m50" not in ids
    missing = client.get("/v1/items/nope/similar")
    assert missing.status_code == 404 and missing.json()["error"] == "item_not_found"


def test_search_returns_items(client: TestClient) -> None:
    r = client.post("/v1/search", json={"query": "a space opera about rebels fighting an evil empire", "k": 7})
    ids = _ids(r)
    assert len(ids) == 7 and len(set(ids)) == 7 and r.json()["query"].startswith("a space opera")
    ids = _ids(client.post("/v1/search", json={"query": "war", "k": 3, "candidates": ["m1", "m50"]}))
    assert set(ids) <= {"m1", "m50"}


def test_cold_item_add_is_recommendable_then_delete_hides_it(client: TestClient, tiny_bundles) -> None:
    source = tiny_bundles.catalog.filter(pl.col("item_id") == "m50").row(0, named=True)  # Star Wars
    body = {"item_id": "new-star-wars", "title": source["title"], "text": source["text"], "categories": source["categories"]}
    n_before = client.get("/v1/model").json()["n_items"]

    r = client.post("/v1/items", json=body)
    assert r.status_code == 201, r.text
    assert r.json() == {"item_id": "new-star-wars", "status": "added", "model_version": _version(tiny_bundles.first)}
    assert client.get("/v1/model").json()["n_items"] == n_before + 1
    assert client.post("/v1/items", json=body).status_code == 409

    # same content through the frozen encoder + item tower -> the same vector as its twin
    similar = client.get("/v1/items/new-star-wars/similar", params={"k": 3}).json()["items"]
    assert similar[0]["item_id"] == "m50" and similar[0]["score"] > 0.999
    assert "new-star-wars" in _ids(client.get("/v1/items/m50/similar", params={"k": 1}))
    # usable in an anonymous history at once
    r = client.post("/v1/recommendations", json={"history": ["new-star-wars"], "k": 5})
    assert r.json()["unknown_items"] == [] and r.json()["fallback"] is None
    # a title-only item is embedded exactly like a search for its title: search finds it first
    title = "Zorblax and the interstellar accordion heist"
    assert client.post("/v1/items", json={"item_id": "new-title-only", "title": title}).status_code == 201
    hits = client.post("/v1/search", json={"query": title, "k": 3}).json()["items"]
    assert hits[0]["item_id"] == "new-title-only" and hits[0]["score"] > 0.99
    assert client.delete("/v1/items/new-title-only").status_code == 200
    assert "new-title-only" not in _ids(client.post("/v1/search", json={"query": title, "k": 10}))

    r = client.delete("/v1/items/new-star-wars")
    assert r.status_code == 200 and r.json()["status"] == "removed"
    assert client.get("/v1/model").json()["n_items"] == n_before
    assert client.get("/v1/items/new-star-wars/similar").status_code == 404
    assert "new-star-wars" not in _ids(client.get("/v1/items/m50/similar", params={"k": 10}))
    assert client.delete("/v1/items/new-star-wars").status_code == 404


def test_delete_catalog_item_hides_it_from_users(client: TestClient, histories) -> None:
    user = next(iter(histories))
    target = _ids(client.get(f"/v1/users/{user}/recommendations", params={"k": 1}))[0]
    assert client.delete(f"/v1/items/{target}").status_code == 200
    assert target not in _ids(client.get(f"/v1/users/{user}/recommendations", params={"k": 20}))
    assert target not in _ids(client.get("/v1/users/999999/recommendations", params={"k": 150}))


def test_add_item_validates_ids_for_the_model(client: TestClient) -> None:
    r = client.post("/v1/items", json={"item_id": "", "title": "x"})
    assert r.status_code == 422
    r = client.post("/v1/items", json={"item_id": "m-extra", "title": "x", "bogus": 1})
    assert r.status_code == 422


def test_reload_swaps_and_broken_reload_keeps_serving(tiny_bundles, tmp_path: Path) -> None:
    first, second = tiny_bundles.first, tiny_bundles.second
    assert _version(first) != _version(second)
    broken = tmp_path / "broken"
    shutil.copytree(second, broken)
    (broken / "model.pt").write_bytes(b"not a model")  # sha256 no longer matches bundle.json

    root = Path(os.path.commonpath([first, tmp_path]))  # where the operator keeps bundles: both sit under it
    settings = ServingSettings(bundle=first, admin_token=ADMIN_TOKEN, bundle_root=root)
    with TestClient(create_app(settings), headers=ADMIN_HEADERS) as client:
        r = client.post("/admin/reload", json={"bundle": str(second)})
        assert r.status_code == 200, r.text
        assert r.json()["model_version"] == _version(second) and r.json()["previous_version"] == _version(first)
        assert client.get("/v1/model").json()["model_version"] == _version(second)
        assert client.get("/v1/users/1/recommendations").json()["model_version"] == _version(second)

        for bad in (broken, tmp_path / "does-not-exist"):
            r = client.post("/admin/reload", json={"bundle": str(bad)})
            assert r.status_code == 409 and r.json()["error"] == "reload_failed", r.text
            assert r.json()["model_version"] == _version(second)
            assert client.get("/v1/users/1/recommendations").json()["model_version"] == _version(second)
            ready = client.get("/readyz").json()
            assert ready["ready"] and ready["model_version"] == _version(second) and str(bad) in ready["last_error"]
        assert client.post("/v1/search", json={"query": "comedy", "k": 2}).status_code == 200


def test_image_bytes_are_embedded_like_the_same_image_file(image_bundle, tmp_path: Path) -> None:
    """A real bundle whose item tower reads posters: an item added with a poster's bytes gets the same
    vector as its catalog twin (embedded from the poster file) and as an item added by image_path, keeps
    it across a reload (the live log names the stored file), and differs from the item without it."""
    twin = image_bundle.catalog.row(0, named=True)
    poster = Path(twin["image"])
    settings = ServingSettings(
        bundle=image_bundle.path, live_log=tmp_path / "live.jsonl", admin_token=ADMIN_TOKEN, image_root=poster.parent
    )
    with TestClient(create_app(settings), headers=ADMIN_HEADERS) as client:
        first = client.app.state.model_state.current.recommender
        assert "image" in first.encoders() and "text" not in first.encoders()

        def vector(item_id: str) -> np.ndarray:
            current = client.app.state.model_state.current.recommender
            return current._vectors[current._row_of[item_id]]

        content = {"title": "uploaded twin", "categories": twin["categories"]}
        encoded = base64.b64encode(poster.read_bytes()).decode()
        r = client.post("/v1/items", json={"item_id": "by-bytes", **content, "image_base64": encoded})
        assert r.status_code == 201, r.text
        assert client.post("/v1/items", json={"item_id": "by-path", **content, "image_path": poster.name}).status_code == 201
        assert client.post("/v1/items", json={"item_id": "no-image", **content}).status_code == 201
        np.testing.assert_allclose(vector("by-bytes"), vector(twin["item_id"]), atol=1e-5)
        np.testing.assert_allclose(vector("by-bytes"), vector("by-path"), atol=1e-6)
        assert np.abs(vector("no-image") - vector("by-bytes")).max() > 1e-3, "the image must matter to this model"
        assert _ids(client.get("/v1/items/by-bytes/similar", params={"k": 2}))[:2] in (
            [twin["item_id"], "by-path"], ["by-path", twin["item_id"]]
        )

        record = json.loads(settings.live_log.read_text().splitlines()[0])
        stored = Path(record["image_path"])
        assert record["item_id"] == "by-bytes" and stored.parent == settings.image_store
        assert stored.read_bytes() == poster.read_bytes()
        before = vector("by-bytes").copy()
        assert client.post("/admin/reload").status_code == 200  # a fresh model replays the live log
        assert client.app.state.model_state.current.recommender is not first
        np.testing.assert_allclose(vector("by-bytes"), before, atol=1e-6)
