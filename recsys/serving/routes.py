"""The /v1 endpoints. Handlers are sync `def` (FastAPI runs them in its threadpool) because the
recommender does blocking numpy/faiss work; each grabs the live model once, so a reload never
changes the model under a running request.

Recommendation lists are serialised straight to JSON bytes (documented by the response models
in schemas.py) to avoid validating up to 1000 items per request.
"""


import logging
import re
from typing import Annotated, Any

import pydantic_core
from fastapi import APIRouter, Depends, Path, Query, Response

from recsys.serving.auth import admin_guard, path_under
from recsys.serving.errors import ApiError, error_responses
from recsys.serving.images import decode_image, store_image
from recsys.serving.protocol import user_id_type
from recsys.serving.schemas import (
    MAX_ID_LEN,
    MAX_LIST_LEN,
    AddItemRequest,
    HistoryRecommendationRequest,
    HistoryRecommendationResponse,
    ItemMutationResponse,
    ModelInfoResponse,
    SearchRequest,
    SearchResponse,
    SimilarItemsResponse,
    UserRecommendationResponse,
)
from recsys.serving.state import LoadedModel, ModelState

logger = logging.getLogger(__name__)

_INT_ID = re.compile(r"-?\d{1,19}")
_INT64_MAX = 2**63 - 1
# uvicorn's HTTP parser (h11) rejects request heads over 64 KiB and clients cap URLs too, so a
# query-string candidate list is kept well below that.
MAX_QUERY_CANDIDATES_LEN = 4_000


# ---------------------------------------------------------------- id / filter parsing


def parse_id(raw: Any, id_type: type, what: str = "id") -> Any:
    """Convert a client id (path string or JSON value) to the model's id type, or 422."""
    if id_type is int:
        if isinstance(raw, int) and not isinstance(raw, bool):
            value = raw
        elif isinstance(raw, str) and _INT_ID.fullmatch(raw.strip()):
            value = int(raw.strip())
        else:
            raise ApiError(422, "invalid_id", f"{what} must be an integer for this model, got {str(raw)[:50]!r}")
        if not -_INT64_MAX - 1 <= value <= _INT64_MAX:
            raise ApiError(422, "invalid_id", f"{what} is out of the 64-bit integer range")
        return value
    if isinstance(raw, str) and 0 < len(raw) <= MAX_ID_LEN:
        return raw
    if isinstance(raw, int) and not isinstance(raw, bool):
        return str(raw)  # lenient: JSON clients often send numeric-looking string ids as numbers
    raise ApiError(422, "invalid_id", f"{what} must be a non-empty string of at most {MAX_ID_LEN} characters")


def parse_ids(raws: list[Any] | None, id_type: type, what: str) -> list[Any] | None:
    if raws is None:
        return None
    return [parse_id(raw, id_type, what) for raw in raws]


def split_comma_list(values: list[str] | str | None) -> list[str] | None:
    """`?x=a,b&x=c` -> ['a', 'b', 'c']; blanks dropped; None when absent."""
    if values is None:
        return None
    if isinstance(values, str):
        values = [values]
    parts = [part.strip() for value in values for part in value.split(",")]
    return [part for part in parts if part]


def check_categories(model: LoadedModel, categories: list[str] | None) -> list[str] | None:
    """Unknown categories are a client error rather than a silently empty list."""
    if not categories:
        return None
    known = set(model.recommender.categories())
    unknown = [c for c in categories if c not in known]
    if unknown:
        raise ApiError(422, "unknown_category", f"unknown categories: {unknown[:10]}; known: {sorted(known)[:50]}")
    return categories


def check_k(k: int, max_k: int) -> int:
    if not 1 <= k <= max_k:
        raise ApiError(422, "validation_error", f"k must be between 1 and {max_k}")
    return k


# ---------------------------------------------------------------- fast serialisation


def _plain(values: Any) -> list:
    """numpy arrays / numpy scalars -> python lists of int/str/float (what JSON needs)."""
    if hasattr(values, "tolist"):
        return values.tolist()
    values = list(values)
    if values and hasattr(values[0], "item") and not isinstance(values[0], (int, float, str)):
        return [v.item() for v in values]
    return values


def recommendations_json(result: Any, k: int, model: LoadedModel, **extra: Any) -> Response:
    ids = _plain(result.item_ids)[:k]
    scores = _plain(result.scores)[:k]
    payload = {
        **extra,
        "items": [{"item_id": i, "score": float(s), "rank": r} for r, (i, s) in enumerate(zip(ids, scores), 1)],
        "model_version": model.model_version,
        "fallback": getattr(result, "fallback", None),
    }
    return Response(content=pydantic_core.to_json(payload), media_type="application/json")


# ---------------------------------------------------------------- router


def build_router(
    state: ModelState, max_k: int, require_admin=None, image_root=None, *, image_store=None, max_image_bytes: int = 0
) -> APIRouter:
    """All /v1 routes, bound to one app's model state and k limit. `require_admin` guards the routes
    that change the catalog (recsys.serving.auth); `image_root` is where a new item's image may lie;
    `image_store` keeps images sent as bytes (at most `max_image_bytes` each; 0: refused)."""
    if require_admin is None:
        require_admin = admin_guard(None)

    def live_model() -> LoadedModel:
        model = state.current  # read once: this request keeps this model even if a reload swaps
        if model is None:
            raise ApiError(503, "model_not_loaded", "no model loaded yet; see /readyz")
        return model

    Model = Annotated[LoadedModel, Depends(live_model)]
    KQuery = Annotated[int, Query(ge=1, le=max_k, description="Number of items to return.")]
    CategoryQuery = Annotated[
        list[str] | None,
        Query(description="Restrict to these categories; repeat the parameter or give a comma list.", examples=["Drama,Comedy"]),
    ]
    CandidatesQuery = Annotated[
        str | None,
        Query(
            max_length=MAX_QUERY_CANDIDATES_LEN,
            description="Comma list of item ids to rank among (URLs must stay short: at most "
            f"{MAX_QUERY_CANDIDATES_LEN} characters).",
            examples=["1,2,3"],
        ),
    ]

    router = APIRouter(prefix="/v1", responses=error_responses(500, 503))

    @router.get(
        "/users/{user_id}/recommendations",
        response_model=UserRecommendationResponse,
        responses=error_responses(422),
        summary="Top-k items for a known user (popular fallback for unknown users)",
        tags=["recommendations"],
    )
    def recommend_user(
        model: Model,
        user_id: Annotated[str, Path(max_length=MAX_ID_LEN, description="User id.", examples=["42"])],
        k: KQuery = 10,
        exclude_seen: Annotated[bool, Query(description="Drop items the user already interacted with.")] = True,
        category: CategoryQuery = None,
        candidates: CandidatesQuery = None,
    ) -> Response:
        rec = model.recommender
        uid = parse_id(user_id, user_id_type(rec), "user_id")
        result = rec.recommend_user(
            uid,
            k,
            exclude_seen=exclude_seen,
            candidates=_candidates(candidates, rec.id_type),
            categories=check_categories(model, split_comma_list(category)),
        )
        return recommendations_json(result, k, model, user_id=uid)

    @router.post(
        "/recommendations",
        response_model=HistoryRecommendationResponse,
        responses=error_responses(413, 422),
        summary="Top-k items for an anonymous history",
        tags=["recommendations"],
    )
    def recommend_history(model: Model, body: HistoryRecommendationRequest) -> Response:
        rec = model.recommender
        k = check_k(body.k, max_k)
        result = rec.recommend_history(
            parse_ids(body.history, rec.id_type, "history item"),
            k,
            # Only when sent: a recommender written before timestamps existed still serves plain histories.
            **({"times": body.timestamps} if body.timestamps is not None else {}),
            exclude=parse_ids(body.exclude, rec.id_type, "exclude item"),
            candidates=parse_ids(body.candidates, rec.id_type, "candidate"),
            categories=check_categories(model, body.categories),
        )
        return recommendations_json(result, k, model, unknown_items=_plain(getattr(result, "unknown_items", [])))

    @router.get(
        "/items/{item_id}/similar",
        response_model=SimilarItemsResponse,
        responses=error_responses(404, 422),
        summary="Items most similar to one item",
        tags=["recommendations"],
    )
    def similar_items(
        model: Model,
        item_id: Annotated[str, Path(max_length=MAX_ID_LEN, description="Item id.", examples=["7"])],
        k: KQuery = 10,
        category: CategoryQuery = None,
        candidates: CandidatesQuery = None,
    ) -> Response:
        rec = model.recommender
        iid = parse_id(item_id, rec.id_type, "item_id")
        if not rec.has_item(iid):
            raise ApiError(404, "item_not_found", f"unknown item id: {iid!r}")
        try:
            result = rec.similar_items(
                iid,
                k,
                candidates=_candidates(candidates, rec.id_type),
                categories=check_categories(model, split_comma_list(category)),
            )
        except KeyError:  # removed between the check and the call
            raise ApiError(404, "item_not_found", f"unknown item id: {iid!r}") from None
        return recommendations_json(result, k, model, item_id=iid)

    @router.post(
        "/search",
        response_model=SearchResponse,
        responses=error_responses(409, 413, 422),
        summary="Free-text search in the frozen text encoder's space, optionally re-ranked by a user's taste",
        tags=["recommendations"],
    )
    def search(model: Model, body: SearchRequest) -> Response:
        rec = model.recommender
        k = check_k(body.k, max_k)
        candidates = parse_ids(body.candidates, rec.id_type, "candidate")
        categories = check_categories(model, body.categories)
        try:
            uid = None if body.user_id is None else parse_id(body.user_id, user_id_type(rec), "user_id")
            result = rec.search(
                body.query, k, candidates=candidates, categories=categories, user_id=uid, taste_weight=body.taste_weight
            )
        except ValueError as exc:  # e.g. a query that is blank once normalised
            raise ApiError(422, "invalid_query", str(exc)) from None
        except RuntimeError as exc:  # the loaded bundle has no text encoder
            logger.warning("search unavailable on model %s: %s", model.model_version, exc)
            raise ApiError(409, "search_unavailable", str(exc)) from None
        return recommendations_json(result, k, model, query=body.query)

    @router.post(
        "/items",
        status_code=201,
        response_model=ItemMutationResponse,
        responses=error_responses(401, 403, 409, 413, 422),
        summary="Add a cold item (embedded from its content: text, categories and an image path or image bytes; "
        "no index rebuild). Admin token.",
        tags=["items"],
        dependencies=[Depends(require_admin)],
    )
    def add_item(model: Model, body: AddItemRequest) -> ItemMutationResponse:
        rec = model.recommender
        iid = parse_id(body.item_id, rec.id_type, "item_id")
        if rec.has_item(iid):
            raise ApiError(409, "item_exists", f"item {iid!r} already exists")
        image = None if body.image_path is None else str(path_under(body.image_path, image_root, "image"))
        if body.image_base64 is not None:
            decoded = decode_image(body.image_base64, max_image_bytes)
            if image_store is None:
                raise ApiError(403, "image_not_allowed", "this server keeps no images sent as bytes (no image store)")
            try:
                image = str(store_image(decoded, image_store))
            except OSError as exc:
                raise ApiError(503, "image_store_unwritable", f"image store not writable: {exc}") from None
        try:
            rec.add_item(iid, body.title, text=body.text, image_path=image, categories=body.categories)
        except ValueError as exc:
            if rec.has_item(iid):  # lost a race with a concurrent add
                raise ApiError(409, "item_exists", f"item {iid!r} already exists") from None
            raise ApiError(422, "invalid_item", str(exc)) from None
        except FileNotFoundError as exc:
            raise ApiError(422, "image_not_found", f"image not readable: {exc.filename}") from None
        except OSError as exc:  # the live catalog log could not be written: nothing was changed
            raise ApiError(503, "live_log_unwritable", f"live catalog log not writable: {exc}") from None
        logger.info("added item %r (model %s)", iid, model.model_version)
        return ItemMutationResponse(item_id=iid, status="added", model_version=model.model_version)

    @router.delete(
        "/items/{item_id}",
        response_model=ItemMutationResponse,
        responses=error_responses(401, 403, 404, 422),
        summary="Remove an item from retrieval. Admin token.",
        tags=["items"],
        dependencies=[Depends(require_admin)],
    )
    def remove_item(
        model: Model, item_id: Annotated[str, Path(max_length=MAX_ID_LEN, description="Item id.", examples=["7"])]
    ) -> ItemMutationResponse:
        rec = model.recommender
        iid = parse_id(item_id, rec.id_type, "item_id")
        try:
            rec.remove_item(iid)
        except KeyError:
            raise ApiError(404, "item_not_found", f"unknown item id: {iid!r}") from None
        except OSError as exc:  # the live catalog log could not be written: nothing was changed
            raise ApiError(503, "live_log_unwritable", f"live catalog log not writable: {exc}") from None
        logger.info("removed item %r (model %s)", iid, model.model_version)
        return ItemMutationResponse(item_id=iid, status="removed", model_version=model.model_version)

    @router.get("/model", response_model=ModelInfoResponse, summary="The served model", tags=["model"])
    def model_info(model: Model) -> ModelInfoResponse:
        return model_info_response(model)

    return router


def _candidates(raw: str | None, id_type: type) -> list | None:
    values = split_comma_list(raw)
    if values is None:
        return None
    if len(values) > MAX_LIST_LEN:
        raise ApiError(422, "validation_error", f"at most {MAX_LIST_LEN} candidates")
    return parse_ids(values, id_type, "candidate")


def model_info_response(model: LoadedModel) -> ModelInfoResponse:
    info: dict[str, Any] = dict(model.recommender.info())
    created = info.get("created_at")
    return ModelInfoResponse(
        model_version=model.model_version,
        schema_version=info.get("schema_version"),
        encoder_fingerprints={str(k): str(v) for k, v in (info.get("encoder_fingerprints") or {}).items()},
        n_items=info.get("n_items"),
        index_kind=info.get("index_kind"),
        dim=info.get("dim"),
        created_at=None if created is None else str(created),
        id_type="int" if model.recommender.id_type is int else "str",
        user_id_type="int" if user_id_type(model.recommender) is int else "str",
        source=model.source,
        loaded_at=model.loaded_at,
        live_changes=int(info.get("live_changes") or 0),
        live_log=info.get("live_log"),
    )

