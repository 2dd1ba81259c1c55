"""Happy paths of every /v1 endpoint against the FakeRecommender."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient
from fake_recommender import ADMIN_HEADERS, ADMIN_TOKEN

from fake_recommender import make_loader
from recsys.serving import ServingSettings, create_app
from recsys.serving.schemas import (
    HistoryRecommendationResponse,
    ModelInfoResponse,
    SearchResponse,
    SimilarItemsResponse,
    UserRecommendationResponse,
)


def _ids(body: dict) -> list:
    return [item["item_id"] for item in body["items"]]


def test_user_recommendations(client: TestClient) -> None:
    r = client.get("/v1/users/100/recommendations", params={"k": 5})
    assert r.status_code == 200, r.text
    body = UserRecommendationResponse.model_validate(r.json())  # fast path matches the documented schema
    assert body.user_id == 100 and body.model_version == "v1" and body.fallback is None
    assert len(body.items) == 5 and [i.rank for i in body.items] == [1, 2, 3, 4, 5]
    assert not {1, 2, 3} & set(_ids(r.json())), "seen items must be excluded by default"
    scores = [i.score for i in body.items]
    assert scores == sorted(scores, reverse=True)


def test_user_recommendations_include_seen_and_filters(client: TestClient) -> None:
    r = client.get("/v1/users/100/recommendations?k=20&exclude_seen=false")
    assert {1, 2, 3} <= set(_ids(r.json()))
    r = client.get("/v1/users/100/recommendations?k=20&category=Drama&category=Comedy")
    assert r.status_code == 200 and len(r.json()["items"]) > 0
    r2 = client.get("/v1/users/100/recommendations?k=20&category=Drama,Comedy")
    assert _ids(r2.json()) == _ids(r.json())
    r = client.get("/v1/users/100/recommendations?k=20&candidates=4,5,6,1")
    assert set(_ids(r.json())) == {4, 5, 6}


def test_unknown_user_gets_popular_fallback(client: TestClient) -> None:
    r = client.get("/v1/users/999/recommendations?k=3")
    assert r.status_code == 200
    assert r.json()["fallback"] == "popular"
    assert _ids(r.json()) == [1, 2, 3]


def test_history_recommendations_lists_unknown_items(client: TestClient) -> None:
    r = client.post("/v1/recommendations", json={"history": [1, 2, 555, 777], "k": 4, "exclude": [5]})
    assert r.status_code == 200, r.text
    body = HistoryRecommendationResponse.model_validate(r.json())
    assert body.unknown_items == [555, 777] and body.fallback is None
    assert not {1, 2, 5} & set(_ids(r.json()))


def test_history_with_timestamps_is_served_and_a_count_mismatch_is_named(client: TestClient) -> None:
    r = client.post("/v1/recommendations", json={"history": [1, 2, 555], "timestamps": [10, 10, 12], "k": 3})
    assert r.status_code == 200, r.text
    assert r.json()["unknown_items"] == [555]
    r = client.post("/v1/recommendations", json={"history": [1, 2], "timestamps": [10], "k": 3})
    assert r.status_code == 422 and "timestamps: expected one per history item (2), got 1" in r.text


def test_history_all_unknown_falls_back(client: TestClient) -> None:
    r = client.post("/v1/recommendations", json={"history": [555], "k": 2})
    assert r.json()["fallback"] == "popular" and r.json()["unknown_items"] == [555]


def test_history_accepts_numeric_strings_for_int_ids(client: TestClient) -> None:
    r = client.post("/v1/recommendations", json={"history": ["1", 2], "k": 2, "candidates": ["3", "4", "9"]})
    assert r.status_code == 200 and set(_ids(r.json())) <= {3, 4, 9}


def test_similar_items(client: TestClient) -> None:
    r = client.get("/v1/items/7/similar?k=4")
    assert r.status_code == 200
    body = SimilarItemsResponse.model_validate(r.json())
    assert body.item_id == 7 and len(body.items) == 4 and 7 not in _ids(r.json())


def test_search(client: TestClient) -> None:
    r = client.post("/v1/search", json={"query": "item 13", "k": 3})
    assert r.status_code == 200, r.text
    body = SearchResponse.model_validate(r.json())
    assert body.query == "item 13" and body.items[0].item_id == 13


def test_add_then_recommend_then_delete(client: TestClient) -> None:
    r = client.post("/v1/items", json={"item_id": 500, "title": "brand new", "categories": ["Horror"]})
    assert r.status_code == 201 and r.json() == {"item_id": 500, "status": "added", "model_version": "v1"}
    r = client.post("/v1/items", json={"item_id": 500, "title": "again"})
    assert r.status_code == 409 and r.json()["error"] == "item_exists"
    assert _ids(client.get("/v1/users/100/recommendations?k=5&category=Horror").json()) == [500]
    r = client.post("/v1/search", json={"query": "brand new", "k": 1})
    assert _ids(r.json()) == [500]
    assert client.get("/v1/items/500/similar?k=2").status_code == 200

    r = client.delete("/v1/items/500")
    assert r.status_code == 200 and r.json()["status"] == "removed"
    assert client.get("/v1/items/500/similar").status_code == 404
    assert 500 not in _ids(client.get("/v1/users/100/recommendations?k=1000").json())
    assert client.delete("/v1/items/500").status_code == 404


def test_model_info_health_ready(client: TestClient) -> None:
    info = ModelInfoResponse.model_validate(client.get("/v1/model").json())
    assert info.model_version == "v1" and info.n_items == 20 and info.id_type == "int"
    assert info.source == "/bundles/v1" and info.loaded_at is not None
    assert client.get("/healthz").json() == {"status": "ok", "model_version": "v1"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["ready"] is True and ready.json()["last_error"] is None


def test_string_ids() -> None:
    loader, _ = make_loader(id_type=str)
    with TestClient(create_app(ServingSettings(bundle=Path("b/v9"), admin_token=ADMIN_TOKEN), loader), headers=ADMIN_HEADERS) as client:
        r = client.get("/v1/users/i100/recommendations?k=2")
        assert r.status_code == 200 and r.json()["user_id"] == "i100" and r.json()["fallback"] is None
        assert client.get("/v1/items/i3/similar?k=2").status_code == 200
        assert client.get("/v1/items/3/similar").status_code == 404
        r = client.post("/v1/recommendations", json={"history": ["i1", "nope"], "k": 2})
        assert r.json()["unknown_items"] == ["nope"]
