"""Fixtures for the serving tests; the FakeRecommender lives in fake_recommender.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from fake_recommender import FakeRecommender, Recommendations, make_loader  # noqa: F401  (re-exported)
from recsys.serving import ServingSettings, create_app


@pytest.fixture
def settings() -> ServingSettings:
    return ServingSettings(bundle=Path("/bundles/v1"), max_body_bytes=4096)


@pytest.fixture
def client(settings: ServingSettings):
    loader, _ = make_loader()
    with TestClient(create_app(settings, loader)) as test_client:
        yield test_client
