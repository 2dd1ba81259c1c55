"""Free-text search in the frozen text encoder's own space.

Why not the trained space: the text head is trained to predict who interacts with an item, not what
the item is called or about, so a query pushed through it lands near popular items of a similar taste
(the README's "space adventure with robots" returned One Flew Over the Cuckoo's Nest). The sentence
encoder was trained for exactly this matching, so a query is compared with every item's frozen text
embedding (title, categories, description) and with its title alone (a short query matches a short
title better than a long description), and an item scores the better of the two cosines.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _unit_rows(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)


class TextSearch:
    """Rows of frozen text embeddings (full text, and title where known) that grow with live items.

    Row r is the caller's item row r (the Recommender keeps catalog order, then items added live), so
    results come back as rows. An item without any text has zero rows and never matches."""

    def __init__(self, text: np.ndarray, text_mask: np.ndarray | None = None, titles: np.ndarray | None = None):
        text = _unit_rows(text)
        if text_mask is not None:
            text[~np.asarray(text_mask, dtype=bool)] = 0.0
        if titles is not None and len(titles) != len(text):
            raise ValueError(f"{len(titles)} title embeddings for {len(text)} items")
        self._text = text
        self._titles = None if titles is None else _unit_rows(titles)

    def __len__(self) -> int:
        return len(self._text)

    @property
    def has_titles(self) -> bool:
        return self._titles is not None

    @property
    def dim(self) -> int:
        return self._text.shape[1]

    def set_row(self, row: int, text: np.ndarray | None, title: np.ndarray | None = None) -> None:
        """Item `row` gets these embeddings (a new row when row == len(self)); None = no such text."""
        if row > len(self):
            raise IndexError(f"row {row} beyond the {len(self)} rows")
        if row == len(self):
            self._text = np.concatenate([self._text, np.zeros((1, self.dim), np.float32)])
            if self._titles is not None:
                self._titles = np.concatenate([self._titles, np.zeros((1, self.dim), np.float32)])
        self._text[row] = 0.0 if text is None else _unit_rows(np.asarray(text)[None])[0]
        if self._titles is not None:
            self._titles[row] = 0.0 if title is None else _unit_rows(np.asarray(title)[None])[0]

    def scores(self, query: np.ndarray) -> np.ndarray:
        """[n_rows] cosine of the query with each row: the better of full text and title."""
        q = _unit_rows(np.asarray(query, dtype=np.float32).reshape(1, -1))[0]
        scores = self._text @ q
        if self._titles is not None:
            scores = np.maximum(scores, self._titles @ q)
        return scores

    def top(self, scores: np.ndarray, k: int, rows: Sequence[int] | np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(rows, scores) of the k best among `rows` (None = all), best first; ties by row."""
        pool = np.arange(len(scores)) if rows is None else np.asarray(rows, dtype=np.int64)
        if len(pool) == 0 or k <= 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        values = scores[pool]
        k = min(k, len(pool))
        best = np.argpartition(-values, k - 1)[:k] if k < len(pool) else np.arange(len(pool))
        order = best[np.lexsort((pool[best], -values[best]))]
        return pool[order], values[order].astype(np.float32)


def embed_titles(encoder, item_ids: Sequence, titles: Sequence[str | None], store=None) -> np.ndarray:
    """Frozen text embeddings of the titles alone [n, dim] (zero rows for missing titles). With a
    FeatureStore they are cached like the item texts (keyed "title:<id>" so the two never collide)."""
    inputs = [None if t is None or not str(t).strip() else str(t).strip() for t in titles]
    if store is not None:
        vectors, mask, _ = store.encode_with_cache(encoder, [f"title:{i}" for i in item_ids], inputs)
    else:
        vectors, mask = encoder.encode(inputs)
    vectors = np.asarray(vectors, dtype=np.float32)
    vectors[~np.asarray(mask, dtype=bool)] = 0.0
    return vectors
