"""Serving configuration: where the model comes from and the request limits."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from recsys.serving.schemas import MAX_K

MODEL_URI_PREFIX = "models:/"


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

    model_config = ConfigDict(frozen=True, protected_namespaces=())

    @model_validator(mode="after")
    def _exactly_one_source(self) -> "ServingSettings":
        if (self.bundle is None) == (self.model_uri is None):
            raise ValueError("set exactly one of bundle or model_uri")
        if self.poll_seconds and self.model_uri is None:
            raise ValueError("poll_seconds needs model_uri (a bundle path has no alias to follow)")
        return self

    @property
    def reference(self) -> str:
        """The initial model reference as one string (bundle path or models:/ URI)."""
        return self.model_uri if self.model_uri is not None else str(self.bundle)
