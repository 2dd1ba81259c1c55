"""Shared session fixtures: heavy frozen models are loaded once per test session."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def text_encoder():
    """all-MiniLM-L6-v2 from the local wheel (via load_encoders, so library code reuses the instance)."""
    from recsys.config import EncodersConfig
    from recsys.encoders import load_encoders

    return load_encoders(EncodersConfig.model_validate({"image": {"enabled": False}}))["text"]


@pytest.fixture(scope="session")
def image_encoder():
    """EfficientNet-Lite0 from the local wheel (via load_encoders, so library code reuses the instance)."""
    from recsys.config import EncodersConfig
    from recsys.encoders import load_encoders

    return load_encoders(EncodersConfig.model_validate({"text": {"enabled": False}}))["image"]
