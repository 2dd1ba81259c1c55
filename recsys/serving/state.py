"""Holder of the live recommender, swapped atomically on reload.

Requests read `ModelState.current` once (one attribute read of an immutable snapshot), so a
request that started on the old model finishes on it even if a reload swaps mid-flight.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import datetime, timezone

from recsys.serving.protocol import RecommenderLike

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedModel:
    """Immutable snapshot: the recommender plus where and when it came from."""

    recommender: RecommenderLike
    model_version: str
    source: str  # what was asked for: bundle path or models:/ URI
    resolved: str  # what was actually loaded (bundle directory); equals source for paths
    loaded_at: datetime


class ModelState:
    """Current model + last load error. Writers take a lock; readers just read the reference."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._current: LoadedModel | None = None
        self.last_error: str | None = None
        self.last_error_at: datetime | None = None

    @property
    def current(self) -> LoadedModel | None:
        return self._current  # single reference read: atomic under the GIL

    def swap(self, recommender: RecommenderLike, *, source: str, resolved: str) -> LoadedModel | None:
        """Install a freshly loaded recommender; returns the previous snapshot."""
        loaded = LoadedModel(
            recommender=recommender,
            model_version=str(recommender.model_version),
            source=source,
            resolved=resolved,
            loaded_at=datetime.now(timezone.utc),
        )
        with self._lock:
            previous, self._current = self._current, loaded
            self.last_error = None
            self.last_error_at = None
        logger.info(
            "serving model %s from %s (previous: %s)",
            loaded.model_version,
            resolved,
            previous.model_version if previous else None,
        )
        return previous

    def record_error(self, message: str) -> None:
        """Remember why a (re)load failed; the current model, if any, keeps serving."""
        with self._lock:
            self.last_error = message
            self.last_error_at = datetime.now(timezone.utc)
