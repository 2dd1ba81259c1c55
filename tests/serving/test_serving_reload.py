"""Hot reload: success swaps, failure keeps the old model, in-flight requests finish on the old one."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from fastapi.testclient import TestClient
from fake_recommender import ADMIN_HEADERS, ADMIN_TOKEN

from fake_recommender import FakeRecommender, make_loader
from recsys.serving import ServingSettings, create_app


def test_reload_success_swaps_version(client: TestClient) -> None:
    r = client.post("/admin/reload", json={"bundle": "/bundles/v2"})
    assert r.status_code == 200, r.text
    assert r.json()["model_version"] == "v2" and r.json()["previous_version"] == "v1"
    assert client.get("/v1/users/100/recommendations").json()["model_version"] == "v2"
    assert client.get("/v1/model").json()["source"] == "/bundles/v2"
    assert 'model_version="v2"' in client.get("/metrics").text


def test_failing_reload_keeps_old_model_and_readyz_reports_it(client: TestClient) -> None:
    r = client.post("/admin/reload", json={"bundle": "/bundles/broken"})
    assert r.status_code == 409 and r.json()["error"] == "reload_failed"
    assert "no bundle at /bundles/broken" in r.json()["message"]
    assert client.get("/v1/users/100/recommendations").json()["model_version"] == "v1"
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["model_version"] == "v1"
    assert "no bundle at /bundles/broken" in ready.json()["last_error"]
    # a later good reload clears the error
    assert client.post("/admin/reload", json={"bundle": "/bundles/v3"}).status_code == 200
    assert client.get("/readyz").json()["last_error"] is None


def test_empty_reload_reloads_current_source() -> None:
    loader, calls = make_loader()
    with TestClient(create_app(ServingSettings(bundle=Path("/b/v1"), admin_token=ADMIN_TOKEN), loader), headers=ADMIN_HEADERS) as client:
        assert client.post("/admin/reload").status_code == 200
        assert client.post("/admin/reload", json={}).status_code == 200
    assert calls == ["/b/v1"] * 3


def test_model_uri_is_resolved_then_loaded() -> None:
    loader, calls = make_loader()
    settings = ServingSettings(model_uri="models:/recsys@champion", admin_token=ADMIN_TOKEN)
    app = create_app(settings, loader, resolver=lambda uri: Path("/registry/v7"))
    with TestClient(app, headers=ADMIN_HEADERS) as client:
        assert client.get("/v1/model").json()["source"] == "models:/recsys@champion"
        assert client.get("/v1/model").json()["model_version"] == "v7"
        r = client.post("/admin/reload", json={"model": "models:/recsys@challenger"})
        assert r.status_code == 200
    assert calls == ["/registry/v7", "/registry/v7"]


def test_polling_follows_alias_and_skips_broken_versions() -> None:
    loader, calls = make_loader()
    target = {"path": Path("/registry/v1")}
    settings = ServingSettings(model_uri="models:/recsys@champion", poll_seconds=0.02, admin_token=ADMIN_TOKEN)
    app = create_app(settings, loader, resolver=lambda uri: target["path"])

    def wait_for(predicate, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline, "timed out"
            time.sleep(0.01)

    with TestClient(app) as client:
        version = lambda: client.get("/healthz").json()["model_version"]  # noqa: E731
        assert version() == "v1"
        target["path"] = Path("/registry/v2")
        wait_for(lambda: version() == "v2")
        target["path"] = Path("/registry/broken")
        wait_for(lambda: client.get("/readyz").json()["last_error"] is not None)
        time.sleep(0.15)
        assert version() == "v2"
        assert calls.count("/registry/broken") == 1, "a failed version must not be retried every period"
        target["path"] = Path("/registry/v3")
        wait_for(lambda: version() == "v3")


class SlowRecommender(FakeRecommender):
    """Blocks inside recommend_user until released, to hold a request in flight."""

    entered = threading.Event()
    release = threading.Event()

    def recommend_user(self, *args, **kwargs):
        SlowRecommender.entered.set()
        assert SlowRecommender.release.wait(5)
        return super().recommend_user(*args, **kwargs)


def test_in_flight_request_finishes_on_old_model() -> None:
    def loader(ref: str) -> FakeRecommender:
        return SlowRecommender("old") if ref.endswith("old") else FakeRecommender("new")

    with TestClient(create_app(ServingSettings(bundle=Path("/b/old"), admin_token=ADMIN_TOKEN), loader), headers=ADMIN_HEADERS) as client:
        result: dict = {}
        worker = threading.Thread(target=lambda: result.update(client.get("/v1/users/100/recommendations").json()))
        worker.start()
        assert SlowRecommender.entered.wait(5)
        assert client.post("/admin/reload", json={"bundle": "/b/new"}).json()["model_version"] == "new"
        SlowRecommender.release.set()
        worker.join(5)
        assert result["model_version"] == "old"
        assert client.get("/v1/users/100/recommendations").json()["model_version"] == "new"
