"""Loading and hot-swapping models: admin reloads and optional registry-alias polling.

A new recommender is built in a worker thread beside the old one; only when it is fully
loaded is it swapped in (one reference assignment). A failed load leaves the old model serving
and is recorded for /readyz.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from starlette.concurrency import run_in_threadpool

from recsys.serving.metrics import ServingMetrics
from recsys.serving.protocol import RecommenderLike, load_from_bundle
from recsys.serving.settings import is_model_uri
from recsys.serving.state import ModelState

logger = logging.getLogger(__name__)

Loader = Callable[[str], RecommenderLike]
Resolver = Callable[[str], Path]


def resolve_model_uri(uri: str) -> Path:
    """Registry URI -> local bundle directory (lazy import: MLflow is heavy and optional here)."""
    from recsys.tracking import resolve_model_uri as resolve

    return Path(resolve(uri))


def default_loader(reference: str, live_log: Path | None = None) -> RecommenderLike:
    """Bundle path or models:/ URI -> Recommender.from_bundle, with the live catalog log replayed."""
    path = resolve_model_uri(reference) if is_model_uri(reference) else Path(reference)
    return load_from_bundle(path, live_log)


class ReloadFailed(Exception):
    """The new model could not be loaded; the old one (if any) is still serving."""


@dataclass(frozen=True)
class ReloadResult:
    model_version: str
    previous_version: str | None
    source: str
    duration_ms: float


class Reloader:
    """Serialises loads (one at a time) and swaps the result into `state`."""

    def __init__(self, state: ModelState, metrics: ServingMetrics, loader: Loader, resolver: Resolver) -> None:
        self.state = state
        self.metrics = metrics
        self.loader = loader
        self.resolver = resolver
        self._lock = asyncio.Lock()
        self._failed_resolved: str | None = None  # polling skips a version that already failed

    def _load_sync(self, reference: str) -> tuple[RecommenderLike, str]:
        resolved = str(self.resolver(reference)) if is_model_uri(reference) else reference
        return self.loader(resolved), resolved

    async def reload(self, reference: str) -> ReloadResult:
        """Load `reference` off the event loop and swap it in; raise ReloadFailed on any error."""
        async with self._lock:
            start = time.perf_counter()
            try:
                recommender, resolved = await run_in_threadpool(self._load_sync, reference)
                for attr in ("model_version", "id_type", "recommend_user"):
                    if not hasattr(recommender, attr):
                        raise TypeError(f"loaded object lacks {attr!r}; not a Recommender")
            except Exception as exc:  # any loader failure must keep the old model serving
                message = f"loading {reference} failed: {type(exc).__name__}: {exc}"
                logger.error(message, exc_info=True)
                self.state.record_error(message)
                self.metrics.reloads.labels("failure").inc()
                raise ReloadFailed(message) from exc
            previous = self.state.swap(recommender, source=reference, resolved=resolved)
            current = self.state.current
            assert current is not None
            self.metrics.set_model_version(current.model_version, reference)
            self.metrics.reloads.labels("success").inc()
            self._failed_resolved = None
            return ReloadResult(
                model_version=current.model_version,
                previous_version=previous.model_version if previous else None,
                source=reference,
                duration_ms=(time.perf_counter() - start) * 1000,
            )

    async def poll(self, uri: str, period_s: float) -> None:
        """Follow a registry alias: reload whenever it resolves to a different bundle."""
        logger.info("polling %s every %.1fs", uri, period_s)
        while True:
            await asyncio.sleep(period_s)
            try:
                resolved = str(await run_in_threadpool(self.resolver, uri))
            except Exception as exc:
                logger.warning("could not resolve %s: %s", uri, exc)
                self.state.record_error(f"resolving {uri} failed: {type(exc).__name__}: {exc}")
                continue
            current = self.state.current
            if current is not None and current.resolved == resolved:
                continue
            if resolved == self._failed_resolved:
                continue  # don't reload a known-broken version every period
            logger.info("%s now resolves to %s; reloading", uri, resolved)
            try:
                await self.reload(uri)
            except ReloadFailed:
                self._failed_resolved = resolved
