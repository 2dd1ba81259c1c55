"""Serving configuration: where the model comes from and the request limits."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from recsys.serving.schemas import MAX_K

MODEL_URI_PREFIX = "models:/"
DEFAULT_MAX_IMAGE_BYTES = 4 << 20  # 4 MiB: a large poster JPEG is a few hundred KB


def is_model_uri(reference: str) -> bool:
    """True for MLflow registry references such as `models:/recsys@champion`."""
    return reference.startswith(MODEL_URI_PREFIX)


class ServingSettings(BaseModel):
    """Exactly one of `bundle` / `model_uri` names the model to serve."""

    bundle: Path | None = None
    model_uri: str | None = Field(default=None, pattern=r"^models:/.+")
    max_body_bytes: int = Field(default=1 << 20, ge=1, description="Requests with larger bodies get 413.")
    poll_seconds: float = Field(default=0.0, ge=0, description="Registry alias polling period; 0 = off.")
    max_k: int = Field(default=MAX_K, ge=1, le=MAX_K, description="Largest k a client may ask for.")
    live_log: Path | None = Field(
        default=None,
        description="Live catalog log (recsys.live_catalog): items added or removed through the API, replayed on "
        "every load. None: live_catalog.jsonl in the bundle directory, or for a models:/ URI "
        "$RECSYS_HOME/live/<name>.jsonl.",
    )

    admin_token: SecretStr | None = Field(
        default=None, description="Bearer token of the admin endpoints (reload, add and delete items); None disables them."
    )
    bundle_root: Path | None = Field(
        default=None,
        description="A reload may name only bundles under this folder (registry URIs always). None: the served "
        "bundle's parent folder, or no bundle paths at all when serving a models:/ URI.",
    )
    image_root: Path | None = Field(
        default=None, description="A new item's image_path must lie under this folder; None: image paths are refused."
    )
    max_image_bytes: int = Field(
        default=DEFAULT_MAX_IMAGE_BYTES, ge=0,
        description="Largest decoded image_base64 of a new item (larger: 413); 0 refuses image bytes. POST /v1/items "
        "may carry a body this much (base64-encoded) larger than max_body_bytes.",
    )
    graceful_timeout_s: float | None = Field(
        default=30.0, gt=0,
        description="On SIGTERM/SIGINT: stop accepting connections, let in-flight requests finish for at most this "
        "long, then exit (0). None: wait for them however long they take.",
    )

    model_config = ConfigDict(frozen=True, protected_namespaces=())

    @model_validator(mode="after")
    def _exactly_one_source(self) -> "ServingSettings":
        if (self.bundle is None) == (self.model_uri is None):
            raise ValueError("set exactly one of bundle or model_uri")
        if self.poll_seconds and self.model_uri is None:
            raise ValueError("poll_seconds needs model_uri (a bundle path has no alias to follow)")
        return self

    @property
    def live_log_path(self) -> Path:
        """Where this server keeps its live catalog changes, across reloads and restarts."""
        from recsys.live_catalog import LOG_NAME
        from recsys.paths import recsys_home

        if self.live_log is not None:
            return self.live_log
        if self.bundle is not None:
            return self.bundle / LOG_NAME
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", self.model_uri.removeprefix(MODEL_URI_PREFIX)).strip("_")
        return recsys_home() / "live" / f"{slug}.jsonl"

    @property
    def image_store(self) -> Path:
        """Where images sent as bytes (image_base64) are kept, one file per distinct image named by its
        sha256, beside the live catalog log: the log records this path and every load replays it."""
        log = self.live_log_path
        return log.with_name(f"{log.stem}_images")

    @property
    def items_body_limit(self) -> int:
        """Body limit of POST /v1/items: the general limit plus room for the largest allowed image in base64."""
        return self.max_body_bytes + 4 * -(-self.max_image_bytes // 3)

    @property
    def reload_root(self) -> Path | None:
        """Where bundles named by a reload may live."""
        if self.bundle_root is not None:
            return self.bundle_root
        return None if self.bundle is None else Path(self.bundle).resolve().parent

    @property
    def reference(self) -> str:
        """The initial model reference as one string (bundle path or models:/ URI)."""
        return self.model_uri if self.model_uri is not None else str(self.bundle)
