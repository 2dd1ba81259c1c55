"""In-memory FakeRecommender obeying the Recommender protocol (re-exported by conftest.py).

A uniquely named module rather than `conftest` itself, so `import` in tests can't pick up some
other directory's conftest when the whole suite runs.

The fake is deliberately simple but honest: deterministic item vectors, dot-product scores,
popularity fallback, history exclusion, candidate/category filters, thread-safe mutations.
"""

from __future__ import annotations

import threading
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

DIM = 8
ADMIN_TOKEN = "test-admin-token"  # what the serving tests configure as the operator's token
ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@dataclass
class Recommendations:
    item_ids: list
    scores: list[float]
    fallback: str | None = None
    unknown_items: list = field(default_factory=list)


def _vector(key: str) -> np.ndarray:
    rng = np.random.default_rng(zlib.crc32(key.encode()))
    v = rng.standard_normal(DIM).astype(np.float32)
    return v / np.linalg.norm(v)


class FakeRecommender:
    """20 items (ids 1..20, or "i1".. for str ids), 3 users, 3 categories."""

    def __init__(self, model_version: str = "1", id_type: type = int) -> None:
        self.model_version = model_version
        self.id_type = id_type
        self._lock = threading.Lock()
        self._items: dict[Any, dict] = {}
        self.image_paths: dict[Any, str | None] = {}
        for n in range(1, 21):
            cat = ["Drama", "Comedy", "Action"][n % 3]
            self._add(self._id(n), f"item {n} {cat.lower()}", [cat])
        self._users = {
            self._id(100): [self._id(1), self._id(2), self._id(3)],
            self._id(101): [self._id(4)],
            self._id(102): [self._id(5), self._id(6)],
        }
        # popularity: lower numbers are more popular
        self._popularity = {iid: 100 - n for n, iid in enumerate(self._items)}

    def _id(self, n: int) -> Any:
        return n if self.id_type is int else f"i{n}"

    def _add(self, item_id: Any, title: str, categories: list[str] | None, text: str | None = None) -> None:
        self._items[item_id] = {
            "title": title,
            "text": text or "",
            "categories": list(categories or []),
            "vector": _vector(f"{title} {text or ''}"),
        }

    @classmethod
    def from_bundle(cls, bundle_dir: Path) -> "FakeRecommender":
        return cls(model_version=Path(bundle_dir).name)

    # ---- protocol
    def info(self) -> dict:
        return {
            "model_version": self.model_version,
            "schema_version": 1,
            "encoder_fingerprints": {"text": "fake-text@0"},
            "n_items": len(self._items),
            "index_kind": "flat_ip",
            "dim": DIM,
            "created_at": "2025-01-01T00:00:00+00:00",
        }

    def has_user(self, user_id: Any) -> bool:
        return user_id in self._users

    def has_item(self, item_id: Any) -> bool:
        return item_id in self._items

    def categories(self) -> list[str]:
        with self._lock:
            return sorted({c for item in self._items.values() for c in item["categories"]})

    def _rank(self, query: np.ndarray | None, k: int, exclude: set, candidates: list | None, categories: list[str] | None) -> Recommendations:
        with self._lock:
            pool = [i for i in (candidates if candidates is not None else self._items) if i in self._items]
            pool = [i for i in pool if i not in exclude]
            if categories:
                wanted = set(categories)
                pool = [i for i in pool if wanted & set(self._items[i]["categories"])]
            if query is None:
                scored = [(float(self._popularity.get(i, 0)), i) for i in pool]
            else:
                scored = [(float(self._items[i]["vector"] @ query), i) for i in pool]
        scored.sort(key=lambda t: -t[0])
        top = scored[:k]
        return Recommendations(item_ids=[i for _, i in top], scores=[s for s, _ in top])

    def _mean(self, ids: list) -> np.ndarray:
        return np.mean([self._items[i]["vector"] for i in ids], axis=0)

    def recommend_user(self, user_id, k, *, exclude_seen=True, candidates=None, categories=None) -> Recommendations:
        history = self._users.get(user_id)
        if not history:
            result = self._rank(None, k, set(), candidates, categories)
            result.fallback = "popular"
            return result
        known = [i for i in history if i in self._items]
        return self._rank(self._mean(known), k, set(history) if exclude_seen else set(), candidates, categories)

    def recommend_history(self, history, k, *, times=None, exclude=None, candidates=None, categories=None) -> Recommendations:
        known = [i for i in history if i in self._items]
        unknown = [i for i in history if i not in self._items]
        excluded = set(history) | set(exclude or [])
        if not known:
            result = self._rank(None, k, excluded, candidates, categories)
            result.fallback = "popular"
        else:
            result = self._rank(self._mean(known), k, excluded, candidates, categories)
        result.unknown_items = unknown
        return result

    def similar_items(self, item_id, k, *, candidates=None, categories=None) -> Recommendations:
        if item_id not in self._items:
            raise KeyError(item_id)
        return self._rank(self._items[item_id]["vector"], k, {item_id}, candidates, categories)

    def search(self, query, k, *, candidates=None, categories=None, user_id=None, taste_weight=0.1) -> Recommendations:
        words = set(query.lower().split())
        with self._lock:
            overlap = {i: len(words & set(f"{v['title']} {v['text']}".lower().split())) for i, v in self._items.items()}
        result = self._rank(_vector(query), len(self._items), set(), candidates, categories)
        pairs = sorted(zip(result.item_ids, result.scores), key=lambda t: (-overlap[t[0]], -t[1]))[:k]
        return Recommendations(item_ids=[i for i, _ in pairs], scores=[overlap[i] + s for i, s in pairs])

    def add_item(self, item_id, title, text=None, image_path=None, categories=None) -> None:
        with self._lock:
            if item_id in self._items:
                raise ValueError(f"item {item_id!r} exists")
            self._add(item_id, title, categories, text)
            self.image_paths[item_id] = image_path  # what the server let through, for the path tests

    def remove_item(self, item_id) -> None:
        with self._lock:
            del self._items[item_id]  # KeyError if unknown


def make_loader(id_type: type = int) -> tuple[Callable[[str], FakeRecommender], list[str]]:
    """Loader: the reference's last path part is the model version; 'broken*' fails to load."""
    calls: list[str] = []

    def loader(reference: str) -> FakeRecommender:
        calls.append(reference)
        name = Path(reference).name
        if name.startswith("broken"):
            raise FileNotFoundError(f"no bundle at {reference}")
        return FakeRecommender(model_version=name, id_type=id_type)

    return loader, calls
