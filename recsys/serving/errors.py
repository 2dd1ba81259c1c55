"""Uniform JSON errors: every non-2xx body is an `ErrorResponse`, and only genuine bugs give 500."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from recsys.serving.request_id import request_id_of
from recsys.serving.schemas import ErrorResponse

logger = logging.getLogger(__name__)

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    503: "model_not_loaded",
}


class ApiError(Exception):
    """Raised by handlers for an expected client-facing error."""

    def __init__(
        self, status_code: int, error: str, message: str, headers: dict[str, str] | None = None,
        details: list[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.error = error
        self.message = message
        self.headers = headers
        self.details = details


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` entries for the given error statuses, all documented as ErrorResponse."""
    descriptions = {
        401: "No admin token sent (Authorization: Bearer <token>).",
        403: "Wrong admin token, admin endpoints disabled, or a path outside the configured root.",
        404: "Unknown id.",
        409: "Conflict with the current state (duplicate item, failed reload).",
        413: "Request body larger than the configured limit.",
        422: "Invalid input: bad JSON, field out of range, id not parseable to the model's id type.",
        503: "No model loaded yet.",
        500: "Server bug (never caused by client input).",
    }
    return {code: {"model": ErrorResponse, "description": descriptions.get(code, "Error.")} for code in codes}


def _current_version(request: Request) -> str | None:
    state = getattr(request.app.state, "model_state", None)
    current = state.current if state is not None else None
    return current.model_version if current is not None else None


def _body(request: Request, error: str, message: str, details: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"error": error, "message": message, "details": details, "model_version": _current_version(request),
            "request_id": request_id_of(request.scope)}


def _answer(request: Request, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> JSONResponse:
    """The error response, and its line in the server log under the same request id."""
    logger.info("request %s: %s %s -> %d %s", body["request_id"], request.method, request.url.path, status, body["error"])
    return JSONResponse(body, status_code=status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    """Map every exception type to an ErrorResponse-shaped JSON body."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return _answer(request, exc.status_code, _body(request, exc.error, exc.message, exc.details), exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        # keep loc/msg/type only: `input` can echo a 1 MiB body and `ctx` may hold exception objects
        details = [
            {"loc": [str(part) for part in err.get("loc", ())], "msg": str(err.get("msg", "")), "type": str(err.get("type", ""))}
            for err in exc.errors()
        ]
        is_json_error = any(d["type"] == "json_invalid" for d in details)
        error, message = ("invalid_json", "request body is not valid JSON") if is_json_error else (
            "validation_error",
            "; ".join(f"{'.'.join(d['loc'])}: {d['msg']}" for d in details[:5]) or "invalid request",
        )
        return _answer(request, 422, _body(request, error, message, details))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        return _answer(request, exc.status_code, _body(request, code, str(exc.detail)), getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("request %s: unhandled error on %s %s", request_id_of(request.scope), request.method, request.url.path)
        return JSONResponse(_body(request, "internal_error", "internal server error"), status_code=500)
