"""Retrieval API: FastAPI app factory over a hot-swappable Recommender (see app.create_app)."""

from recsys.serving.app import create_app, serve
from recsys.serving.settings import ServingSettings

__all__ = ["ServingSettings", "create_app", "serve"]
