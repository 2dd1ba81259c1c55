"""Fixtures for the serving tests; the FakeRecommender lives in fake_recommender.py, the tiny real
bundle builder in real_bundle.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from fake_recommender import ADMIN_HEADERS, ADMIN_TOKEN, FakeRecommender, Recommendations, make_loader  # noqa: F401  (re-exported)
from recsys.serving import ServingSettings, create_app


@pytest.fixture
def settings() -> ServingSettings:
    return ServingSettings(bundle=Path("/bundles/v1"), max_body_bytes=4096, admin_token=ADMIN_TOKEN)


@pytest.fixture
def client(settings: ServingSettings):
    """A client of the fake-model app that sends the admin token (tests/serving/test_serving_auth.py
    covers requests without it)."""
    loader, _ = make_loader()
    with TestClient(create_app(settings, loader), headers=ADMIN_HEADERS) as test_client:
        yield test_client


@pytest.fixture(scope="session")
def tiny_bundles(tmp_path_factory):
    """Two real bundles (seeds 1, 2) over 150 ml-100k items: real text encoder, real 1-epoch training.
    Built once per session (~20 s on 2 cores)."""
    from real_bundle import build_tiny_bundles

    return build_tiny_bundles(tmp_path_factory.mktemp("tiny_bundles"))


@pytest.fixture(scope="session")
def image_bundle(tmp_path_factory):
    """A real bundle whose item tower reads posters (real_bundle.build_image_bundle; ~5 s once the
    training stack is imported)."""
    from real_bundle import build_image_bundle

    return build_image_bundle(tmp_path_factory.mktemp("image_bundle"))
