"""Prometheus exposition and OpenAPI completeness."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient


def _sample(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_metrics_count_requests_by_route_template(client: TestClient) -> None:
    for uid in (100, 101, 999):
        client.get(f"/v1/users/{uid}/recommendations")
    client.get("/v1/items/424242/similar")
    client.get("/no/such/path")
    text = client.get("/metrics").text
    route = "/v1/users/{user_id}/recommendations"
    assert _sample(text, "recsys_http_requests_total", endpoint=route, status="200") == 3
    assert _sample(text, "recsys_http_requests_total", endpoint="/v1/items/{item_id}/similar", status="404") == 1
    assert _sample(text, "recsys_http_requests_total", endpoint="<unmatched>", status="404") == 1
    assert "/v1/users/100" not in text, "raw paths must not become labels"
    assert _sample(text, "recsys_http_request_duration_seconds_count", endpoint=route) == 3
    assert _sample(text, "recsys_http_request_duration_seconds_bucket", endpoint=route, le="0.0005") >= 0
    assert 'le="0.001"' in text and 'le="1.0"' in text
    assert _sample(text, "recsys_model_info", model_version="v1") == 1
    assert _sample(text, "recsys_model_reloads_total", outcome="success") == 1


def test_metrics_count_413s(client: TestClient) -> None:
    client.post("/v1/search", json={"query": "x" * 10_000})
    text = client.get("/metrics").text
    assert _sample(text, "recsys_http_requests_total", endpoint="/v1/search", status="413") == 1


def test_openapi_complete(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    paths = spec["paths"]
    expected = {
        "/v1/users/{user_id}/recommendations": {"get"},
        "/v1/recommendations": {"post"},
        "/v1/items/{item_id}/similar": {"get"},
        "/v1/search": {"post"},
        "/v1/items": {"post"},
        "/v1/items/{item_id}": {"delete"},
        "/v1/model": {"get"},
        "/healthz": {"get"},
        "/readyz": {"get"},
        "/metrics": {"get"},
        "/admin/reload": {"post"},
    }
    for path, methods in expected.items():
        assert path in paths, path
        assert methods <= set(paths[path]), path
    for path, ops in paths.items():
        for method, op in ops.items():
            ok = [c for c in op["responses"] if c.startswith("2")]
            assert ok, f"{method} {path} documents no success response"
            for code, resp in op["responses"].items():
                if code.startswith(("4", "5")) and path != "/readyz":
                    ref = resp["content"]["application/json"]["schema"]["$ref"]
                    assert ref.endswith("/ErrorResponse"), (method, path, code)
    assert "HTTPValidationError" not in spec["components"]["schemas"], "422 must use our ErrorResponse"
    schemas = spec["components"]["schemas"]
    for name in ("UserRecommendationResponse", "HistoryRecommendationRequest", "SearchRequest", "ErrorResponse"):
        assert schemas[name].get("examples"), name
    rec = paths["/v1/users/{user_id}/recommendations"]["get"]
    ok_schema = rec["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    assert ok_schema.endswith("/UserRecommendationResponse")
    k_param = next(p for p in rec["parameters"] if p["name"] == "k")
    assert k_param["schema"]["minimum"] == 1 and k_param["schema"]["maximum"] == 1000
    assert re.search(r"413", str(paths["/v1/recommendations"]["post"]["responses"]))
