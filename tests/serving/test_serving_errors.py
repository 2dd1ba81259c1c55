"""Client mistakes give 4xx JSON errors (never 500); only genuine bugs reach the catch-all."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from fake_recommender import ADMIN_HEADERS, ADMIN_TOKEN

from fake_recommender import FakeRecommender
from recsys.serving import ServingSettings, create_app
from recsys.serving.schemas import ErrorResponse


@pytest.mark.parametrize("k", [0, -1, 1001])
def test_k_out_of_range_is_422(client: TestClient, k: int) -> None:
    assert client.get(f"/v1/users/100/recommendations?k={k}").status_code == 422
    assert client.get(f"/v1/items/1/similar?k={k}").status_code == 422
    assert client.post("/v1/recommendations", json={"history": [1], "k": k}).status_code == 422
    r = client.post("/v1/search", json={"query": "x", "k": k})
    assert r.status_code == 422
    ErrorResponse.model_validate(r.json())


def test_k_boundaries_accepted(client: TestClient) -> None:
    assert client.get("/v1/users/100/recommendations?k=1").status_code == 200
    assert client.get("/v1/users/100/recommendations?k=1000").status_code == 200


def test_settings_max_k_lowers_limit() -> None:
    app = create_app(ServingSettings(bundle=Path("b/v1"), max_k=5, admin_token=ADMIN_TOKEN), lambda ref: FakeRecommender("v1"))
    with TestClient(app) as client:
        assert client.get("/v1/users/1/recommendations?k=6").status_code == 422
        assert client.post("/v1/recommendations", json={"history": [1], "k": 6}).status_code == 422
        assert client.post("/v1/recommendations", json={"history": [1], "k": 5}).status_code == 200


def test_malformed_json_is_422(client: TestClient) -> None:
    headers = {"content-type": "application/json"}
    r = client.post("/v1/recommendations", content=b'{"history": [1,', headers=headers)
    assert r.status_code == 422 and r.json()["error"] == "invalid_json"
    ErrorResponse.model_validate(r.json())
    assert client.post("/v1/search", content=b"not json", headers=headers).status_code == 422
    assert client.post("/admin/reload", content=b"{", headers=headers).status_code == 422


@pytest.mark.parametrize(
    "path,body",
    [
        ("/v1/recommendations", {}),
        ("/v1/recommendations", {"history": "1,2"}),
        ("/v1/recommendations", {"history": [1], "hsitory": [2]}),
        ("/v1/recommendations", {"history": [True]}),
        ("/v1/recommendations", {"history": [1.5]}),
        ("/v1/recommendations", {"history": [1], "k": "ten"}),
        ("/v1/recommendations", {"history": ["abc"]}),
        ("/v1/recommendations", {"history": [2**70]}),
        ("/v1/recommendations", {"history": [1], "categories": ["NoSuchCategory"]}),
        ("/v1/recommendations", [1, 2]),
        ("/v1/recommendations", {"history": [1, 2], "timestamps": [5]}),
        ("/v1/recommendations", {"history": [1], "timestamps": ["yesterday"]}),
        ("/v1/search", {"query": ""}),
        ("/v1/search", {"query": "   "}),
        ("/v1/search", {"k": 3}),
        ("/v1/items", {"item_id": 900}),
        ("/v1/items", {"item_id": "x", "title": "t"}),
        ("/v1/items", {"item_id": None, "title": "t"}),
        ("/admin/reload", {"bundle": "a", "model": "models:/x@y"}),
        ("/admin/reload", {"model": "not-a-uri"}),
        ("/admin/reload", {"bundle": ""}),
    ],
)
def test_bad_bodies_are_422(client: TestClient, path: str, body: object) -> None:
    r = client.post(path, json=body)
    assert r.status_code == 422, r.text
    ErrorResponse.model_validate(r.json())


@pytest.mark.parametrize(
    "url",
    [
        "/v1/users/abc/recommendations",
        "/v1/users/1.5/recommendations",
        "/v1/users/99999999999999999999999/recommendations",
        "/v1/users/1/recommendations?exclude_seen=maybe",
        "/v1/users/1/recommendations?candidates=1,x",
        "/v1/users/1/recommendations?category=Nope",
        "/v1/items/abc/similar",
    ],
)
def test_bad_path_or_query_is_422(client: TestClient, url: str) -> None:
    r = client.get(url)
    assert r.status_code == 422, r.text
    ErrorResponse.model_validate(r.json())


def test_wrong_or_missing_content_type_is_422_and_bad_length_400(client: TestClient) -> None:
    body = b'{"history": [1]}'
    assert client.post("/v1/recommendations", content=body, headers={"content-type": "text/plain"}).status_code == 422
    assert client.post("/v1/recommendations", data={"history": "1"}).status_code == 422
    assert client.post("/v1/recommendations", headers={"content-length": "abc"}).status_code == 400


def test_unparseable_delete_id_is_422(client: TestClient) -> None:
    assert client.delete("/v1/items/abc").status_code == 422


def test_similar_unknown_item_is_404(client: TestClient) -> None:
    r = client.get("/v1/items/12345/similar")
    assert r.status_code == 404
    assert r.json()["error"] == "item_not_found" and r.json()["model_version"] == "v1"


def test_unknown_route_and_method(client: TestClient) -> None:
    assert client.get("/v1/nothing").json()["error"] == "not_found"
    r = client.put("/v1/recommendations", json={})
    assert r.status_code == 405 and r.json()["error"] == "method_not_allowed"


def test_oversize_body_is_413(client: TestClient) -> None:  # limit in the fixture: 4096 bytes
    big = {"history": list(range(2000)), "k": 5}
    r = client.post("/v1/recommendations", json=big)
    assert r.status_code == 413 and r.json()["error"] == "payload_too_large"
    assert client.post("/v1/search", json={"query": "x" * 5000}).status_code == 413


def test_oversize_streamed_body_without_content_length_is_413(client: TestClient) -> None:
    def chunks():
        yield b'{"history": ['
        for _ in range(500):
            yield b"1, 2, 3, 4, 5, "
        yield b"1]}"

    r = client.post("/v1/recommendations", content=chunks(), headers={"content-type": "application/json"})
    assert "content-length" not in {k.lower() for k in r.request.headers}
    assert r.status_code == 413, r.text


def test_small_streamed_body_passes(client: TestClient) -> None:
    r = client.post(
        "/v1/recommendations", content=iter([b'{"history": [1, ', b"2]}"]), headers={"content-type": "application/json"}
    )
    assert r.status_code == 200, r.text


class BuggyRecommender(FakeRecommender):
    def recommend_user(self, *args, **kwargs):
        raise RuntimeError("genuine bug")


def test_genuine_bug_gives_500_json() -> None:
    app = create_app(ServingSettings(bundle=Path("b/v1"), admin_token=ADMIN_TOKEN), lambda ref: BuggyRecommender("v1"))
    with TestClient(app, raise_server_exceptions=False) as client:
        r = client.get("/v1/users/100/recommendations")
        assert r.status_code == 500
        assert r.json()["error"] == "internal_error" and "genuine bug" not in r.text  # no internals leaked
        assert client.get("/healthz").status_code == 200
        assert 'status="500"' in client.get("/metrics").text


def test_no_model_loaded_is_503() -> None:
    def broken(ref: str):
        raise OSError("disk on fire")

    with TestClient(create_app(ServingSettings(bundle=Path("b/v1"), admin_token=ADMIN_TOKEN), broken), headers=ADMIN_HEADERS) as client:
        r = client.get("/v1/users/1/recommendations")
        assert r.status_code == 503 and r.json()["error"] == "model_not_loaded"
        ready = client.get("/readyz")
        assert ready.status_code == 503 and "disk on fire" in ready.json()["last_error"]
        assert client.get("/healthz").status_code == 200


def test_every_error_carries_a_request_id_that_is_also_in_the_log(client: TestClient, caplog) -> None:
    import logging

    with caplog.at_level(logging.INFO, logger="recsys.serving"):
        r = client.get("/v1/items/12345/similar")  # 404 from a handler
        assert r.status_code == 404 and r.json()["request_id"] == r.headers["x-request-id"]
        assert f"request {r.json()['request_id']}: GET /v1/items/12345/similar -> 404 item_not_found" in caplog.text
        mine = client.get("/v1/users/1/recommendations?k=0", headers={"X-Request-ID": "shop-checkout-42"})  # 422
        assert mine.json()["request_id"] == "shop-checkout-42" == mine.headers["x-request-id"]
        odd = client.get("/v1/items/12345/similar", headers={"X-Request-ID": "no spaces\tor tabs " * 9})
        assert odd.json()["request_id"] != "no spaces" and len(odd.json()["request_id"]) == 32  # replaced
        big = client.post("/v1/search", content=b"x" * 5000, headers={"content-type": "application/json"})  # 413 before routing
        assert big.status_code == 413 and big.json()["request_id"] == big.headers["x-request-id"]
        assert f"request {big.json()['request_id']}: POST /v1/search -> 413 payload_too_large" in caplog.text
    assert client.get("/healthz").headers["x-request-id"]  # successes carry it too
