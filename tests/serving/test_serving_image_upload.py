"""POST /v1/items with the image itself (`image_base64`): kept in the image store, size-limited (413),
checked as an image (422 naming the field), never together with image_path. The FakeRecommender
records the path the server handed it; test_serving_real_bundle.py embeds real bytes end to end."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
from fake_recommender import ADMIN_HEADERS, ADMIN_TOKEN, make_loader
from fastapi.testclient import TestClient
from PIL import Image

from recsys.serving import ServingSettings, create_app


def image_bytes(fmt: str = "PNG", size: tuple[int, int] = (16, 12), seed: int = 0, mode: str = "RGB") -> bytes:
    """A small real image, noisy so each seed is a different file."""
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "L": 1}[mode]
    pixels = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    image = Image.fromarray(pixels[..., 0] if channels == 1 else pixels, mode)
    out = io.BytesIO()
    image.save(out, format=fmt)
    return out.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture
def settings(tmp_path: Path) -> ServingSettings:
    return ServingSettings(
        bundle=Path("/bundles/v1"), max_body_bytes=4096, max_image_bytes=3000, live_log=tmp_path / "live.jsonl",
        admin_token=ADMIN_TOKEN,
    )


@pytest.fixture
def client(settings: ServingSettings):
    loader, _ = make_loader()
    with TestClient(create_app(settings, loader), headers=ADMIN_HEADERS) as test_client:
        yield test_client


def _recommender(client: TestClient):
    return client.app.state.model_state.current.recommender


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_image_bytes_are_kept_and_handed_to_the_recommender_as_a_file(client: TestClient, settings, fmt: str) -> None:
    data = image_bytes(fmt)
    r = client.post("/v1/items", json={"item_id": 901, "title": "with a poster", "image_base64": b64(data)})
    assert r.status_code == 201, r.text
    stored = Path(_recommender(client).image_paths[901])
    assert stored.parent == settings.image_store == settings.live_log.with_name("live_images")
    assert stored.read_bytes() == data and stored.suffix == f".{fmt.lower()}"
    with Image.open(stored) as image:
        assert image.format == fmt and image.size == (16, 12)
    assert not [p for p in stored.parent.iterdir() if p.name.startswith(".upload-")]  # no temp file left
    # the same picture again (as a data URL with line breaks) is the same file; it is usable at once
    text = b64(data)
    data_url = "data:image/" + fmt.lower() + ";base64," + "\n".join(text[i : i + 76] for i in range(0, len(text), 76))
    assert client.post("/v1/items", json={"item_id": 902, "title": "twin", "image_base64": data_url}).status_code == 201
    assert _recommender(client).image_paths[902] == str(stored)
    assert client.get("/v1/items/901/similar", params={"k": 3}).status_code == 200


def test_too_large_image_is_413_with_the_request_id(client: TestClient, settings) -> None:
    data = image_bytes("PNG", (40, 40))  # noise: ~4.8 KB, over the fixture's 3000 bytes
    assert len(data) > settings.max_image_bytes
    r = client.post("/v1/items", json={"item_id": 903, "title": "big", "image_base64": b64(data)}, headers={"X-Request-ID": "upload-1"})
    assert r.status_code == 413, r.text
    body = r.json()
    assert body["error"] == "image_too_large" and body["request_id"] == "upload-1" == r.headers["x-request-id"]
    assert body["message"].startswith("image_base64: ") and "3000 bytes allowed (--max-image-bytes)" in body["message"]
    assert body["details"][0]["loc"] == ["body", "image_base64"]
    assert not _recommender(client).has_item(903) and not settings.image_store.exists()
    # far beyond: refused by the body limit of POST /v1/items before the handler reads it
    huge = client.post("/v1/items", json={"item_id": 904, "title": "huge", "image_base64": "A" * (settings.items_body_limit + 10)})
    assert huge.status_code == 413 and huge.json()["error"] == "payload_too_large" and huge.json()["request_id"]
    # other routes keep the general limit
    assert client.post("/v1/search", json={"query": "x" * 5000}).status_code == 413


def test_too_many_pixels_is_413(client: TestClient, tmp_path) -> None:
    # 6000 x 6000 grey zeros: a ~40 KB PNG that would decode to 36 M pixels
    out = io.BytesIO()
    Image.new("L", (6000, 6000)).save(out, format="PNG", optimize=True)
    settings = ServingSettings(bundle=Path("/bundles/v1"), max_image_bytes=1 << 20, live_log=tmp_path / "l.jsonl", admin_token=ADMIN_TOKEN)
    loader, _ = make_loader()
    with TestClient(create_app(settings, loader), headers=ADMIN_HEADERS) as big_client:
        r = big_client.post("/v1/items", json={"item_id": 905, "title": "bomb", "image_base64": b64(out.getvalue())})
        assert r.status_code == 413 and r.json()["error"] == "image_too_large" and "6000x6000 pixels" in r.json()["message"]


@pytest.mark.parametrize(
    "payload, reason",
    [
        ("this is not base64!", "not valid base64"),
        (b64(b"just some text, not a picture"), "not a decodable"),
        (b64(image_bytes("PNG")[:60]), "not a decodable"),  # truncated PNG
        (b64(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 1 1\n"), "not a decodable"),  # EPS: never decoded here
        ("", "empty"),
    ],
    ids=["not-base64", "text-bytes", "truncated-png", "eps", "empty"],
)
def test_garbage_bytes_are_422_naming_the_field(client: TestClient, settings, payload: str, reason: str) -> None:
    r = client.post("/v1/items", json={"item_id": 906, "title": "garbage", "image_base64": payload})
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["error"] == "invalid_image" and body["message"].startswith("image_base64: ") and reason in body["message"]
    assert body["details"][0]["loc"] == ["body", "image_base64"] and body["request_id"] == r.headers["x-request-id"]
    assert not _recommender(client).has_item(906) and not settings.image_store.exists()


def test_image_path_and_image_base64_together_is_422(tmp_path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    (images / "poster.png").write_bytes(image_bytes())
    settings = ServingSettings(bundle=Path("/bundles/v1"), image_root=images, live_log=tmp_path / "l.jsonl", admin_token=ADMIN_TOKEN)
    loader, _ = make_loader()
    with TestClient(create_app(settings, loader), headers=ADMIN_HEADERS) as client:
        body = {"item_id": 907, "title": "both", "image_path": "poster.png", "image_base64": b64(image_bytes())}
        r = client.post("/v1/items", json=body)
        assert r.status_code == 422 and r.json()["error"] == "validation_error"
        assert "image_path and image_base64: give one of them, not both" in r.json()["message"]
        assert not _recommender(client).has_item(907)
        assert client.post("/v1/items", json={**body, "image_base64": None}).status_code == 201  # either alone is fine


def test_uploads_can_be_switched_off_and_need_the_admin_token(tmp_path) -> None:
    loader, _ = make_loader()
    off = ServingSettings(bundle=Path("/bundles/v1"), max_image_bytes=0, live_log=tmp_path / "l.jsonl", admin_token=ADMIN_TOKEN)
    with TestClient(create_app(off, loader)) as client:
        body = {"item_id": 908, "title": "t", "image_base64": b64(image_bytes())}
        assert client.post("/v1/items", json=body).status_code == 401  # the token is checked first
        r = client.post("/v1/items", json=body, headers=ADMIN_HEADERS)
        assert r.status_code == 413 and "image uploads are disabled" in r.json()["message"]


def test_openapi_documents_the_field(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()["components"]["schemas"]["AddItemRequest"]["properties"]
    assert "image_base64" in schema and "max-image-bytes" in str(schema["image_base64"])


def test_an_unwritable_image_store_is_503_and_adds_nothing(tmp_path) -> None:
    (tmp_path / "a-file").write_text("not a folder")
    settings = ServingSettings(bundle=Path("/bundles/v1"), live_log=tmp_path / "a-file" / "live.jsonl", admin_token=ADMIN_TOKEN)
    loader, _ = make_loader()
    with TestClient(create_app(settings, loader), headers=ADMIN_HEADERS) as client:
        r = client.post("/v1/items", json={"item_id": 909, "title": "t", "image_base64": b64(image_bytes())})
        assert r.status_code == 503 and r.json()["error"] == "image_store_unwritable", r.text
        assert not _recommender(client).has_item(909)
