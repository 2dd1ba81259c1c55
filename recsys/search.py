"""Free-text search in the frozen text encoder's own space.

Why not the trained space: the text head is trained to predict who interacts with an item, not what
the item is called or about, so a query pushed through it lands near popular items of a similar taste
(the README's "space adventure with robots" returned One Flew Over the Cuckoo's Nest). The sentence
encoder was trained for exactly this matching, so a query is compared with every item's frozen text
embedding (title, categories, description). Embedding the titles alone as well, and scoring the
better of the two cosines, found titles no better (recall@10 1.000 either way) and descriptions a
little worse (docs/serving.md), so the item's one text embedding is all the index holds.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _unit_rows(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)


class TextSearch:
    """Rows of frozen text embeddings that grow with live items.

    Row r is the caller's item row r (the Recommender keeps catalog order, then items added live), so
    results come back as rows. An item without any text has a zero row and never matches."""

    def __init__(self, text: np.ndarray, text_mask: np.ndarray | None = None):
        text = _unit_rows(text)
        if text_mask is not None:
            text[~np.asarray(text_mask, dtype=bool)] = 0.0
        self._text = text

    def __len__(self) -> int:
        return len(self._text)

    @property
    def dim(self) -> int:
        return self._text.shape[1]

    def set_row(self, row: int, text: np.ndarray | None) -> None:
        """Item `row` gets this embedding (a new row when row == len(self)); None = no text."""
        if row > len(self):
            raise IndexError(f"row {row} beyond the {len(self)} rows")
        if row == len(self):
            self._text = np.concatenate([self._text, np.zeros((1, self.dim), np.float32)])
        self._text[row] = 0.0 if text is None else _unit_rows(np.asarray(text)[None])[0]

    def scores(self, query: np.ndarray) -> np.ndarray:
        """[n_rows] cosine of the query with each row."""
        q = _unit_rows(np.asarray(query, dtype=np.float32).reshape(1, -1))[0]
        return self._text @ q

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
