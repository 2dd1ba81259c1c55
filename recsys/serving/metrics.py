"""Prometheus metrics with a per-app registry (several apps can live in one process/test run).

Requests are labelled by the *route template* (`/v1/items/{item_id}/similar`), never the raw
path, so label cardinality stays bounded whatever clients send.
"""

from __future__ import annotations

import time
from typing import Sequence

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, Info, generate_latest
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# ms resolution at the low end (p99 target is 10 ms), up to 1 s for reloads / cold paths
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
UNMATCHED_ROUTE = "<unmatched>"


class ServingMetrics:
    """All collectors of one app, registered in its own CollectorRegistry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "recsys_http_requests",
            "HTTP requests by route template, method and status.",
            ("endpoint", "method", "status"),
            registry=self.registry,
        )
        self.latency = Histogram(
            "recsys_http_request_duration_seconds",
            "Request latency by route template and method.",
            ("endpoint", "method"),
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.model = Info("recsys_model", "Currently served model.", registry=self.registry)
        self.reloads = Counter(
            "recsys_model_reloads", "Model (re)load attempts by outcome.", ("outcome",), registry=self.registry
        )

    def set_model_version(self, version: str, source: str) -> None:
        self.model.info({"model_version": version, "source": source})

    def render(self) -> tuple[bytes, str]:
        """Prometheus text exposition and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class MetricsMiddleware:
    """Pure ASGI middleware (cheaper than BaseHTTPMiddleware): counts and times every request."""

    def __init__(self, app: ASGIApp, metrics: ServingMetrics, routes: Sequence[BaseRoute] = ()) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = routes  # to label requests answered before routing (e.g. early 413s)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # if the app raises before answering, that is what the client sees

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            endpoint = self._endpoint(scope)
            method = scope.get("method", "")
            self.metrics.requests.labels(endpoint, method, str(status)).inc()
            self.metrics.latency.labels(endpoint, method).observe(time.perf_counter() - start)

    def _endpoint(self, scope: Scope) -> str:
        """Route template set by the router; else match it here (only for requests it never saw)."""
        path = getattr(scope.get("route"), "path", None)
        if path:
            return path
        for route in self.routes:
            match, child_scope = route.matches(scope)
            if match is not Match.NONE:  # included routers report the inner route in child_scope
                return getattr(child_scope.get("route", route), "path", None) or UNMATCHED_ROUTE
        return UNMATCHED_ROUTE
