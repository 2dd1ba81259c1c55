"""Who may change the service: each admin endpoint without a token, with a wrong one and with the right
one; no token configured disables them; reloads and image paths stay under the operator's roots."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from fake_recommender import ADMIN_HEADERS, ADMIN_TOKEN, make_loader
from fastapi.testclient import TestClient

from recsys.serving import ServingSettings, create_app
from recsys.serving.auth import read_admin_token

ADMIN_CALLS = [
    ("post", "/admin/reload", {"bundle": "/bundles/v2"}, 200),
    ("post", "/v1/items", {"item_id": 901, "title": "a new item"}, 201),
    ("delete", "/v1/items/3", None, 200),
]


def _client(**settings) -> TestClient:
    loader, _ = make_loader()
    return TestClient(create_app(ServingSettings(**{"bundle": Path("/bundles/v1"), **settings}), loader))


def _call(client: TestClient, method: str, path: str, body, headers=None):
    return client.request(method, path, json=body, headers=headers or {})


@pytest.mark.parametrize("method, path, body, ok", ADMIN_CALLS)
def test_each_admin_endpoint_needs_the_right_token(method, path, body, ok) -> None:
    with _client(admin_token=ADMIN_TOKEN) as client:
        missing = _call(client, method, path, body)
        assert missing.status_code == 401 and missing.json()["error"] == "unauthorized"
        assert missing.headers["www-authenticate"] == "Bearer"
        for wrong in ({"Authorization": "Bearer nope"}, {"Authorization": f"Basic {ADMIN_TOKEN}"}, {"Authorization": "Bearer "}):
            r = _call(client, method, path, body, wrong)
            assert r.status_code in (401, 403) and r.json()["error"] in ("unauthorized", "forbidden"), wrong
        assert _call(client, method, path, body, {"Authorization": "Bearer nope"}).status_code == 403
        assert client.get("/v1/model").json()["model_version"] == "v1"  # nothing changed so far
        assert _call(client, method, path, body, ADMIN_HEADERS).status_code == ok
        # Reading needs no token.
        assert client.get("/v1/users/1/recommendations").status_code == 200


@pytest.mark.parametrize("method, path, body, ok", ADMIN_CALLS)
def test_without_a_configured_token_admin_endpoints_are_disabled(method, path, body, ok) -> None:
    with _client() as client:
        r = _call(client, method, path, body, ADMIN_HEADERS)
        assert r.status_code == 403 and r.json()["error"] == "admin_disabled" and "RECSYS_ADMIN_TOKEN" in r.json()["message"]


def test_a_reload_names_only_bundles_under_the_root_or_a_registry_uri(tmp_path) -> None:
    with _client(admin_token=ADMIN_TOKEN) as client:  # default root: the served bundle's folder, /bundles
        for outside in ("/etc", "/bundles/../etc/v2", "../v3"):
            r = _call(client, "post", "/admin/reload", {"bundle": outside}, ADMIN_HEADERS)
            assert r.status_code == 403 and r.json()["error"] == "bundle_not_allowed", outside
        assert _call(client, "post", "/admin/reload", {"bundle": "v4"}, ADMIN_HEADERS).json()["model_version"] == "v4"
        assert client.get("/readyz").json()["source"] == "/bundles/v4"
    root = tmp_path / "bundles"
    (root / "v5").mkdir(parents=True)
    (root / "escape").symlink_to(tmp_path)  # a link out of the root is followed, and refused
    with _client(admin_token=ADMIN_TOKEN, bundle_root=root) as client:
        assert _call(client, "post", "/admin/reload", {"bundle": str(root / "v5")}, ADMIN_HEADERS).status_code == 200
        assert _call(client, "post", "/admin/reload", {"bundle": "escape/x"}, ADMIN_HEADERS).status_code == 403
    loader, _ = make_loader()
    settings = ServingSettings(model_uri="models:/recsys@champion", admin_token=ADMIN_TOKEN)
    with TestClient(create_app(settings, loader, resolver=lambda uri: Path("/registry/v7")), headers=ADMIN_HEADERS) as client:
        assert client.post("/admin/reload", json={"bundle": "/registry/v8"}).status_code == 403  # no bundle root
        assert client.post("/admin/reload", json={"model": "models:/recsys@challenger"}).status_code == 200


def test_a_new_items_image_comes_from_the_image_root_only(tmp_path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    (images / "poster.jpg").write_bytes(b"\xff\xd8")
    (images / "out").symlink_to(tmp_path)
    with _client(admin_token=ADMIN_TOKEN) as client:  # no image root: no paths at all
        r = client.post("/v1/items", json={"item_id": 950, "title": "t", "image_path": str(images / "poster.jpg")}, headers=ADMIN_HEADERS)
        assert r.status_code == 403 and r.json()["error"] == "image_not_allowed"
    with _client(admin_token=ADMIN_TOKEN, image_root=images) as client:
        for i, outside in enumerate(("/etc/passwd", "../secret.jpg", "out/secret.jpg", str(tmp_path))):
            r = client.post("/v1/items", json={"item_id": 960 + i, "title": "t", "image_path": outside}, headers=ADMIN_HEADERS)
            assert r.status_code == 403 and "outside the configured image root" in r.json()["message"], outside
        r = client.post("/v1/items", json={"item_id": 970, "title": "t", "image_path": "poster.jpg"}, headers=ADMIN_HEADERS)
        assert r.status_code == 201
        recommender = client.app.state.model_state.current.recommender
        assert recommender.image_paths[970] == str((images / "poster.jpg").resolve())


def test_the_operator_token_comes_from_a_file_or_the_environment(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("RECSYS_ADMIN_TOKEN", raising=False)
    assert read_admin_token() is None
    monkeypatch.setenv("RECSYS_ADMIN_TOKEN", "  from-env ")
    assert read_admin_token() == "from-env"
    token_file = tmp_path / "token"
    token_file.write_text("from-file\nignored\n")
    assert read_admin_token(token_file) == "from-file"
    token_file.write_text("\n")
    with pytest.raises(ValueError, match="is empty"):
        read_admin_token(token_file)
    with pytest.raises(ValueError, match="admin token file .*missing"):
        read_admin_token(tmp_path / "missing")
    assert os.environ["RECSYS_ADMIN_TOKEN"] == "  from-env "
