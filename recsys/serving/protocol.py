"""The slice of `recsys.recommender.Recommender` that the API relies on.

Serving codes against this structural protocol (not the concrete class) so the app can be
tested with an in-memory fake and never imports the model stack at import time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class RecommendationsLike(Protocol):
    """Result of one recommender call: parallel ids/scores plus fallback and ignored ids."""

    item_ids: Any  # list or 1-d array of ids
    scores: Any  # list[float] or 1-d float array
    fallback: str | None
    unknown_items: list


@runtime_checkable
class RecommenderLike(Protocol):
    """Thread-safe recommender service object (see recsys.recommender.Recommender)."""

    model_version: str
    id_type: type  # type of item ids (int or str)
    # `user_id_type` (type of user ids) is optional: routes fall back to `id_type` when it is absent.

    def info(self) -> dict: ...
    def has_user(self, user_id: Any) -> bool: ...
    def has_item(self, item_id: Any) -> bool: ...
    def categories(self) -> list[str]: ...

    def recommend_user(
        self,
        user_id: Any,
        k: int,
        *,
        exclude_seen: bool = True,
        candidates: list | None = None,
        categories: list[str] | None = None,
    ) -> RecommendationsLike: ...

    def recommend_history(
        self,
        history: list,
        k: int,
        *,
        times: list[int] | None = None,
        exclude: list | None = None,
        candidates: list | None = None,
        categories: list[str] | None = None,
    ) -> RecommendationsLike: ...

    def similar_items(
        self, item_id: Any, k: int, *, candidates: list | None = None, categories: list[str] | None = None
    ) -> RecommendationsLike: ...

    def search(
        self,
        query: str,
        k: int,
        *,
        candidates: list | None = None,
        categories: list[str] | None = None,
        user_id: Any = None,
        taste_weight: float = 0.1,
    ) -> RecommendationsLike: ...

    def add_item(
        self,
        item_id: Any,
        title: str,
        text: str | None = None,
        image_path: str | None = None,
        categories: list[str] | None = None,
    ) -> None: ...

    def remove_item(self, item_id: Any) -> None: ...


def user_id_type(recommender: RecommenderLike) -> type:
    """Type of user ids; a model may key users by int while its items are str (or the reverse)."""
    return getattr(recommender, "user_id_type", None) or recommender.id_type


def load_from_bundle(bundle_dir: Path, live_log: Path | None = None) -> RecommenderLike:
    """Import the real Recommender lazily (torch/faiss are heavy) and load a bundle.

    The frozen encoders are loaded here too (in the reload worker thread, before the swap), so the
    first /v1/search or POST /v1/items after a (re)load is not slowed by a model load. `live_log`
    (the server's live catalog log) is replayed onto the new model before it is swapped in.
    """
    from recsys.recommender import Recommender  # lazy: keeps `import recsys.serving` cheap

    return Recommender.from_bundle(Path(bundle_dir), load_encoders=True, live_log=live_log)
