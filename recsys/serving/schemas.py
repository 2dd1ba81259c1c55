"""Wire schemas of the retrieval API (pydantic v2).

Every request and response is a model here so /openapi.json is complete. Recommendation
responses are *documented* with these models but serialised by a fast path in
`routes.py` (no per-item validation), so the two must stay in sync; tests check that.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, field_validator, model_validator

MAX_K = 1000  # hard ceiling; ServingSettings.max_k may only lower it
MAX_LIST_LEN = 10_000  # longest history / exclude / candidates list accepted in a body
MAX_ID_LEN = 256

ItemId = Annotated[
    StrictInt | Annotated[StrictStr, Field(min_length=1, max_length=MAX_ID_LEN)],
    Field(description="Item id; int or str depending on the loaded model (see GET /v1/model)."),
]
K = Annotated[int, Field(ge=1, le=MAX_K, description="Number of items to return.")]
Category = Annotated[str, Field(min_length=1, max_length=200)]


class _Strict(BaseModel):
    """Request base: unknown fields are an error (catches client typos such as `hsitory`)."""

    model_config = ConfigDict(extra="forbid")


class ErrorResponse(BaseModel):
    """Every non-2xx answer has this shape."""

    error: str = Field(description="Stable machine-readable code, e.g. `item_not_found`.")
    message: str = Field(description="Human-readable reason.")
    details: list[dict[str, Any]] | None = Field(default=None, description="Per-field validation errors.")
    model_version: str | None = None
    request_id: str | None = Field(default=None, description="Also in the X-Request-ID header and the server log.")

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"error": "item_not_found", "message": "unknown item id: 42", "details": None, "model_version": "7",
                 "request_id": "3f2b9c0e8d1a4b6c9e7f5a2d1c0b8a9e"}
            ]
        }
    )


class ScoredItem(BaseModel):
    item_id: ItemId
    score: float = Field(description="Similarity score; higher is better. Comparable only within one response.")
    rank: int = Field(ge=1, description="1-based position in the list.")


class RecommendationResponse(BaseModel):
    items: list[ScoredItem]
    model_version: str
    fallback: str | None = Field(
        default=None, description="Set (e.g. `popular`) when personalisation was impossible and a fallback was used."
    )


_ITEMS_EXAMPLE = [{"item_id": 12, "score": 0.83, "rank": 1}, {"item_id": 7, "score": 0.79, "rank": 2}]


class UserRecommendationResponse(RecommendationResponse):
    user_id: ItemId = Field(description="User id as parsed for the loaded model (see `user_id_type` in GET /v1/model).")

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"user_id": 3, "items": _ITEMS_EXAMPLE, "model_version": "7", "fallback": None}]
        }
    )


class HistoryRecommendationRequest(_Strict):
    history: list[ItemId] = Field(max_length=MAX_LIST_LEN, description="Items the (anonymous) user interacted with, oldest first.")
    timestamps: list[StrictInt] | None = Field(
        default=None,
        max_length=MAX_LIST_LEN,
        description="When each history item happened (unix seconds), one per item. Optional: with them, items "
        "logged at the same time weigh alike in the item-item block's recency weights; without, the list "
        "order is the time order.",
    )
    k: K = 10
    exclude: list[ItemId] | None = Field(default=None, max_length=MAX_LIST_LEN)
    categories: list[Category] | None = Field(default=None, max_length=100)
    candidates: list[ItemId] | None = Field(default=None, max_length=MAX_LIST_LEN)

    @model_validator(mode="after")
    def _one_timestamp_per_item(self) -> "HistoryRecommendationRequest":
        if self.timestamps is not None and len(self.timestamps) != len(self.history):
            raise ValueError(
                f"timestamps: expected one per history item ({len(self.history)}), got {len(self.timestamps)}"
            )
        return self

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"history": [12, 7, 99], "k": 5, "exclude": [3], "categories": ["Drama"]}]},
    )


class HistoryRecommendationResponse(RecommendationResponse):
    unknown_items: list[ItemId] = Field(description="History ids the model does not know; they were ignored.")

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"items": _ITEMS_EXAMPLE, "model_version": "7", "fallback": None, "unknown_items": [99]}]
        }
    )


class SimilarItemsResponse(RecommendationResponse):
    item_id: ItemId

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"item_id": 3, "items": _ITEMS_EXAMPLE, "model_version": "7", "fallback": None}]}
    )


class SearchRequest(_Strict):
    query: str = Field(min_length=1, max_length=2000, description="Free text; must not be blank.")
    k: K = 10
    user_id: ItemId | None = Field(
        default=None,
        description="Optional known user: the best text matches are re-ranked by text similarity plus this user's "
        "taste (taste_weight); an unknown user gets the plain text order.",
    )
    taste_weight: float = Field(default=0.1, ge=0.0, le=10.0, description="Weight of the user's taste (0 = text order).")
    categories: list[Category] | None = Field(default=None, max_length=100)
    candidates: list[ItemId] | None = Field(default=None, max_length=MAX_LIST_LEN)

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"query": "space opera with robots", "k": 5}]})

    @field_validator("query")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        value = value.strip()
        if not value:
            raise ValueError("query must not be blank")
        return value


class SearchResponse(RecommendationResponse):
    query: str

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"query": "space opera", "items": _ITEMS_EXAMPLE, "model_version": "7", "fallback": None}]
        }
    )


class AddItemRequest(_Strict):
    item_id: ItemId
    title: str = Field(min_length=1, max_length=1000)
    text: str | None = Field(default=None, max_length=100_000)
    image_path: str | None = Field(
        default=None, max_length=4096,
        description="An image file under the server's image root (--image-root); relative paths are read from that root.",
    )
    image_base64: str | None = Field(
        default=None,
        description="The image itself, base64 (standard alphabet; a `data:image/...;base64,` prefix and line breaks "
        "are accepted): JPEG, PNG, WebP, GIF or BMP of at most --max-image-bytes decoded bytes (413 above). "
        "Not together with image_path. Kept by the server beside its live catalog log.",
        json_schema_extra={"contentEncoding": "base64"},
    )
    categories: list[Category] | None = Field(default=None, max_length=100)

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"item_id": 5001, "title": "A new film", "text": "Plot summary ...", "categories": ["Drama"]}]
        },
    )

    @model_validator(mode="after")
    def _one_image(self) -> "AddItemRequest":
        if self.image_path is not None and self.image_base64 is not None:
            raise ValueError("image_path and image_base64: give one of them, not both")
        return self


class ItemMutationResponse(BaseModel):
    item_id: ItemId
    status: Literal["added", "removed"]
    model_version: str

    model_config = ConfigDict(json_schema_extra={"examples": [{"item_id": 5001, "status": "added", "model_version": "7"}]})


class ModelInfoResponse(BaseModel):
    model_version: str
    schema_version: int | str | None = None
    encoder_fingerprints: dict[str, str] = Field(default_factory=dict)
    n_items: int | None = None
    index_kind: str | None = None
    dim: int | None = None
    created_at: str | None = None
    id_type: Literal["int", "str"] = Field(description="Type of item ids.")
    user_id_type: Literal["int", "str"] = Field(description="Type of user ids (may differ from the item ids').")
    source: str | None = Field(default=None, description="Bundle path or models:/ URI the model was loaded from.")
    loaded_at: datetime | None = None
    live_changes: int = Field(default=0, description="Items added or removed through the API that this model carries "
                              "(replayed from the live catalog log at load, or made since).")
    live_log: str | None = Field(default=None, description="The live catalog log those changes are kept in.")

    model_config = ConfigDict(
        protected_namespaces=(),
        json_schema_extra={
            "examples": [
                {
                    "model_version": "7",
                    "schema_version": 1,
                    "encoder_fingerprints": {"text": "all-MiniLM-L6-v2@ab12"},
                    "n_items": 3706,
                    "index_kind": "flat_ip",
                    "dim": 64,
                    "created_at": "2025-01-01T00:00:00Z",
                    "id_type": "int",
                    "user_id_type": "int",
                    "source": "models:/recsys@champion",
                    "loaded_at": "2025-01-01T00:01:00Z",
                }
            ]
        },
    )


class HealthResponse(BaseModel):
    status: Literal["ok"] = "ok"
    model_version: str | None = None


class ReadyResponse(BaseModel):
    ready: bool
    model_version: str | None = None
    source: str | None = None
    loaded_at: datetime | None = None
    last_error: str | None = Field(default=None, description="Reason the latest (re)load failed, if it did.")
    last_error_at: datetime | None = None

    model_config = ConfigDict(protected_namespaces=())


class ReloadRequest(_Strict):
    bundle: str | None = Field(default=None, min_length=1, max_length=4096, description="Bundle directory on the server.")
    model: str | None = Field(
        default=None, max_length=1000, pattern=r"^models:/.+", description="Registry URI, e.g. models:/recsys@champion."
    )

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"model": "models:/recsys@champion"}, {"bundle": "artifacts/bundle"}, {}]}
    )

    @model_validator(mode="after")
    def _at_most_one(self) -> "ReloadRequest":
        if self.bundle is not None and self.model is not None:
            raise ValueError("give either bundle or model, not both (neither = reload the current source)")
        return self


class ReloadResponse(BaseModel):
    model_version: str
    previous_version: str | None
    source: str
    duration_ms: float

    model_config = ConfigDict(
        protected_namespaces=(),
        json_schema_extra={
            "examples": [{"model_version": "8", "previous_version": "7", "source": "models:/recsys@champion", "duration_ms": 840.0}]
        },
    )
