"""User histories as the model layer reads them, and the one builder from interactions to them.

A history is an array of item indices, oldest first. `Histories` is a list of them that may also
carry each history's timestamps: the one scorer that reads time (the item-item block, which gives
items logged at the same time one age) finds them there, and every other scorer reads it as a plain
list. So no scoring signature grows a `times` argument for the sake of one model.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import polars as pl


class Histories(list):
    """list[np.ndarray] of item indices (oldest first), with `times`: one int64 array of timestamps
    per history, aligned item for item, or None where the log has no time. Slicing and `take` keep
    the two aligned."""

    def __init__(self, histories: Iterable = (), times: Iterable | None = None):
        super().__init__(np.asarray(h, dtype=np.int64) for h in histories)
        self.times: list[np.ndarray] | None = None
        if times is not None:
            self.times = [np.asarray(t, dtype=np.int64) for t in times]
            if len(self.times) != len(self):
                raise ValueError(f"history times: expected one array per history ({len(self)}), got {len(self.times)}")
            for row, (history, stamps) in enumerate(zip(self, self.times)):
                if stamps.shape != history.shape:
                    raise ValueError(
                        f"history times: history {row} has {len(history)} items but {stamps.size} timestamps"
                    )

    def __getitem__(self, key):
        if isinstance(key, slice):
            return Histories(list.__getitem__(self, key), None if self.times is None else self.times[key])
        return list.__getitem__(self, key)

    def take(self, rows: Iterable[int]) -> "Histories":
        """The histories (and times) at `rows`, in that order."""
        rows = list(rows)
        return Histories([list.__getitem__(self, i) for i in rows], None if self.times is None else [self.times[i] for i in rows])


def times_of(histories: list) -> list[np.ndarray] | None:
    """The timestamps a list of histories carries (a `Histories`), or None (a plain list)."""
    return getattr(histories, "times", None)


def time_ordered_share(histories: list) -> float:
    """The share of histories (of 2+ items) whose timestamps take 2+ values; 0 without timestamps."""
    multi = [t for t in times_of(histories) or [] if len(t) > 1]
    return sum(np.unique(t).size > 1 for t in multi) / len(multi) if multi else 0.0


def histories_by_user(frame: pl.DataFrame, item_index: Mapping[Any, int]) -> tuple[np.ndarray, Histories]:
    """(user ids, their histories) from interactions (user_id, item_id, and `pos` and `timestamp` where
    present): items in `pos` order, mapped to catalog rows by `item_index`; items missing from it are
    dropped, and a user left with no item is left out. Histories carry timestamps when the frame has them.
    Training sequences, validation and test queries are all built here."""
    if frame.is_empty():
        return np.array([]), Histories()
    ordered = frame.sort(["user_id", "pos"], maintain_order=True) if "pos" in frame.columns else frame
    mapped = ordered.with_columns(
        pl.col("item_id").replace_strict(dict(item_index), default=-1, return_dtype=pl.Int64).alias("_idx")
    ).filter(pl.col("_idx") >= 0)
    has_times = "timestamp" in mapped.columns
    grouped = mapped.group_by("user_id", maintain_order=True).agg(pl.col("_idx"), *([pl.col("timestamp")] if has_times else []))
    times = grouped["timestamp"].to_list() if has_times else None
    return grouped["user_id"].to_numpy(), Histories(grouped["_idx"].to_list(), times)
