"""FastAPI app factory for the retrieval API, plus `serve()` for the CLI.

The model is loaded in the lifespan handler (never at import), held in a `ModelState`, and
hot-swapped by POST /admin/reload or by registry polling.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from pathlib import Path
from typing import AsyncIterator

from fastapi import Depends, FastAPI, Response
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.routing import BaseRoute

from recsys import __version__
from recsys.serving.auth import admin_guard, path_under
from recsys.serving.errors import ApiError, error_responses, install_error_handlers
from recsys.serving.limits import BodySizeLimitMiddleware
from recsys.serving.metrics import MetricsMiddleware, ServingMetrics
from recsys.serving.request_id import RequestIdMiddleware
from recsys.serving.reloader import Loader, ReloadFailed, Reloader, Resolver, default_loader, resolve_model_uri
from recsys.serving.routes import build_router
from recsys.serving.schemas import HealthResponse, ReadyResponse, ReloadRequest, ReloadResponse
from recsys.serving.settings import ServingSettings
from recsys.serving.state import ModelState

logger = logging.getLogger(__name__)


def create_app(
    settings: ServingSettings, loader: Loader | None = None, *, resolver: Resolver | None = None
) -> FastAPI:
    """Build the app. `loader(reference)` returns a Recommender; models:/ URIs are first turned
    into bundle directories by `resolver` (default: recsys.tracking.resolve_model_uri)."""
    state = ModelState()
    metrics = ServingMetrics()
    if loader is None:
        live_log = settings.live_log_path
        logger.info("live catalog log: %s", live_log)

        def loader(reference: str):
            return default_loader(reference, live_log)

    reloader = Reloader(state, metrics, loader, resolver or resolve_model_uri)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            await reloader.reload(settings.reference)
        except ReloadFailed:
            logger.error("starting without a model; /readyz answers 503 until a reload succeeds")
        poller = None
        if settings.poll_seconds and settings.model_uri:
            poller = asyncio.create_task(reloader.poll(settings.model_uri, settings.poll_seconds))
        try:
            yield
        finally:
            if poller is not None:
                poller.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await poller

    app = FastAPI(
        title="recsys retrieval API",
        version=__version__,
        description="Recommendations from frozen transferred embeddings and a trained two-tower model.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.model_state = state
    app.state.metrics = metrics
    app.state.reloader = reloader

    install_error_handlers(app)
    # added last = outermost: metrics also time/count the 413s produced by the size limit
    app.add_middleware(
        BodySizeLimitMiddleware,
        max_body_bytes=settings.max_body_bytes,
        route_limits={("POST", "/v1/items"): settings.items_body_limit},  # room for image_base64
    )
    known_routes: list[BaseRoute] = []  # filled below; lets metrics label requests rejected before routing
    app.add_middleware(MetricsMiddleware, metrics=metrics, routes=known_routes)
    app.add_middleware(RequestIdMiddleware)  # outermost: every answer, the early 413s too, carries the id
    token = settings.admin_token.get_secret_value() if settings.admin_token is not None else None
    require_admin = admin_guard(token)
    if token is None:
        logger.warning("admin endpoints (reload, add and delete items) are disabled: no admin token is configured")
    v1 = build_router(
        state, settings.max_k, require_admin, settings.image_root,
        image_store=settings.image_store, max_image_bytes=settings.max_image_bytes,
    )
    app.include_router(v1)

    @app.get("/healthz", response_model=HealthResponse, tags=["ops"], summary="Liveness: the process answers")
    async def healthz() -> HealthResponse:
        current = state.current
        return HealthResponse(model_version=current.model_version if current else None)

    @app.get(
        "/readyz",
        response_model=ReadyResponse,
        responses={503: {"model": ReadyResponse, "description": "No model loaded; `last_error` says why."}},
        tags=["ops"],
        summary="Readiness: a model is loaded (and the last reload error, if any)",
    )
    async def readyz() -> JSONResponse:
        current = state.current
        body = ReadyResponse(
            ready=current is not None,
            model_version=current.model_version if current else None,
            source=current.source if current else None,
            loaded_at=current.loaded_at if current else None,
            last_error=state.last_error,
            last_error_at=state.last_error_at,
        )
        return JSONResponse(body.model_dump(mode="json"), status_code=200 if current else 503)

    @app.get(
        "/metrics",
        response_class=Response,
        responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text exposition."}},
        tags=["ops"],
        summary="Prometheus metrics",
    )
    async def prometheus_metrics() -> Response:
        payload, content_type = metrics.render()
        return Response(content=payload, media_type=content_type)

    @app.post(
        "/admin/reload",
        response_model=ReloadResponse,
        responses=error_responses(401, 403, 409, 413, 422),
        tags=["ops"],
        summary="Load a bundle (under the bundle root) or registry model beside the current one and swap atomically. Admin token.",
        dependencies=[Depends(require_admin)],
    )
    async def admin_reload(body: ReloadRequest | None = None) -> ReloadResponse:
        current = state.current
        if body is not None and body.bundle is not None:
            reference = str(path_under(body.bundle, settings.reload_root, "bundle"))
        else:
            reference = (body.model if body else None) or (current.source if current else settings.reference)
        try:
            result = await reloader.reload(reference)
        except ReloadFailed as exc:
            raise ApiError(409, "reload_failed", f"{exc}; still serving {current.model_version if current else 'nothing'}") from None
        return ReloadResponse(
            model_version=result.model_version,
            previous_version=result.previous_version,
            source=result.source,
            duration_ms=round(result.duration_ms, 3),
        )

    known_routes.extend(v1.routes)
    known_routes.extend(route for route in app.router.routes if isinstance(route, APIRoute))
    return app


EXIT_ABANDONED = 1  # status when the graceful timeout ran out with requests still running


def run_server(
    app: FastAPI, host: str, port: int, *, log_level: str = "info", graceful_timeout_s: float | None = 30.0
) -> None:
    """uvicorn, one worker, with a clean stop: on SIGTERM or SIGINT it stops accepting connections at
    once, lets in-flight requests finish (for at most `graceful_timeout_s`; None: however long they
    take), runs the lifespan shutdown and returns, and the process then exits with status 0.

    uvicorn re-raises the signal it caught once it has shut down (so that a default handler would kill
    the process with it, status -15 / 143); the handler installed here turns that into a plain exit(0),
    since the shutdown was graceful. A signal that arrives before uvicorn has installed its own
    handlers exits (0) at once: nothing was being served yet.

    When the timeout runs out, uvicorn cancels the requests still running (their clients get a 500),
    but a sync handler's worker thread cannot be stopped, and the interpreter would wait for it on the
    way out. So a thread still busy once uvicorn is done makes the process exit at once with status
    EXIT_ABANDONED (1), and say so in the log.
    """
    import signal
    import threading

    import uvicorn  # lazy: only the server entry point needs it

    def exit_cleanly(signum, frame) -> None:
        logger.info("stopped by %s after a graceful shutdown", signal.Signals(signum).name)
        raise SystemExit(0)

    config = uvicorn.Config(
        app, host=host, port=port, workers=1, log_level=log_level, access_log=False,
        timeout_graceful_shutdown=graceful_timeout_s,  # type: ignore[arg-type]  (annotated int; any number works)
    )
    handled = (signal.SIGTERM, signal.SIGINT)
    previous = {sig: signal.signal(sig, exit_cleanly) for sig in handled}
    try:
        uvicorn.Server(config).run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        # idle worker threads were told to stop when the event loop ended; a busy one is a request
        # the graceful timeout gave up on
        deadline = time.monotonic() + 1.0
        busy = []
        for thread in threading.enumerate():
            if thread is threading.current_thread() or thread.daemon:
                continue
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                busy.append(thread.name)
        if busy:
            logger.error(
                "graceful shutdown gave up after %ss on %d request(s) still running (%s); exiting with status %d",
                graceful_timeout_s, len(busy), ", ".join(busy), EXIT_ABANDONED,
            )
            logging.shutdown()  # flush the log before the hard exit
            os._exit(EXIT_ABANDONED)


def serve(
    bundle: Path | None = None,
    model_uri: str | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    poll_seconds: float = 0.0,
    max_body_bytes: int = 1 << 20,
    max_image_bytes: int | None = None,
    graceful_timeout_s: float | None = 30.0,
    log_level: str = "info",
    threads: int | None = None,
    live_log: Path | None = None,
    admin_token: str | None = None,
    bundle_root: Path | None = None,
    image_root: Path | None = None,
) -> None:
    """Run the API with uvicorn (one worker: the model lives in this process's memory).

    Per-request work is tiny (one faiss search; a small user-tower pass for anonymous histories),
    so intra-op parallelism only adds thread wake-ups and contention: torch and faiss (OpenMP) run
    single-threaded here; concurrency comes from the request threadpool. Measured on 2 shared cores:
    a known-user request was several times slower with 2 OpenMP threads than with 1 (docs/serving.md).
    `threads` (or $RECSYS_THREADS) overrides; see recsys.runtime. SIGTERM stops it cleanly (run_server).
    """
    from recsys.runtime import configure_threads

    configure_threads(threads, role_default=1)
    limits = {} if max_image_bytes is None else {"max_image_bytes": max_image_bytes}
    settings = ServingSettings(
        bundle=bundle, model_uri=model_uri, poll_seconds=poll_seconds, max_body_bytes=max_body_bytes, live_log=live_log,
        admin_token=admin_token, bundle_root=bundle_root, image_root=image_root, graceful_timeout_s=graceful_timeout_s,
        **limits,
    )
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run_server(create_app(settings), host, port, log_level=log_level, graceful_timeout_s=settings.graceful_timeout_s)
