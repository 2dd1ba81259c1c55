"""Who may change the service, and what a change may name.

The endpoints that change what is served (`POST /admin/reload`, `POST /v1/items`,
`DELETE /v1/items/{id}`) need the operator's bearer token; with no token configured they are disabled.
A reload may name only a bundle under the configured bundle root (or a registry URI), and a new item's
image only a file under the configured image root: a client never makes the server open a path of
its choosing.
"""

from __future__ import annotations

import hmac
import os
from pathlib import Path

from fastapi import Request

from recsys.serving.errors import ApiError

ADMIN_TOKEN_ENV = "RECSYS_ADMIN_TOKEN"


def read_admin_token(token_file: Path | None = None) -> str | None:
    """The operator's token: the first line of `token_file` when given, else $RECSYS_ADMIN_TOKEN; None
    (admin endpoints disabled) when neither is set or the value is blank."""
    if token_file is not None:
        try:
            value = Path(token_file).read_text().strip().splitlines()[:1]
        except OSError as err:
            raise ValueError(f"admin token file {token_file}: {err.strerror or err}") from None
        token = value[0].strip() if value else ""
        if not token:
            raise ValueError(f"admin token file {token_file} is empty")
        return token
    token = os.environ.get(ADMIN_TOKEN_ENV, "").strip()
    return token or None


def admin_guard(token: str | None):
    """A FastAPI dependency that lets a request through only with `Authorization: Bearer <token>`."""

    def require_admin(request: Request) -> None:
        if token is None:
            raise ApiError(403, "admin_disabled", f"admin endpoints are disabled: the operator has set no token ({ADMIN_TOKEN_ENV} or --admin-token-file)")
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            raise ApiError(401, "unauthorized", "this endpoint needs the header Authorization: Bearer <admin token>",
                           headers={"WWW-Authenticate": "Bearer"})
        if not hmac.compare_digest(given.strip().encode(), token.encode()):
            raise ApiError(403, "forbidden", "wrong admin token")

    return require_admin


def path_under(raw: str, root: Path | None, what: str) -> Path:
    """`raw` resolved (links followed) if it lies under `root`; else a 403 that names the setting."""
    if root is None:
        raise ApiError(403, f"{what}_not_allowed", f"{what} paths are not accepted: the operator has configured no {what} root")
    base = Path(root).resolve()
    path = (base / raw).resolve()  # an absolute `raw` replaces `base`
    if path != base and base not in path.parents:
        raise ApiError(403, f"{what}_not_allowed", f"{what} path {raw!r} is outside the configured {what} root")
    return path
