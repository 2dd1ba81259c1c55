"""A hyper-parameter search as data: named ranges, one flat loop over their product, typed results."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Grid:
    """Named ranges; `points()` walks their product with the first name varying slowest, so a search
    can keep the expensive work of a slow name (an eigen-decomposition per window) while the fast
    names (a weight) vary."""

    ranges: dict[str, tuple]

    def __post_init__(self) -> None:
        for name, values in self.ranges.items():
            if len(values) == 0:
                raise ValueError(f"search grid: {name} has no values")

    def points(self) -> Iterator[dict[str, Any]]:
        names = list(self.ranges)
        for values in itertools.product(*self.ranges.values()):
            yield dict(zip(names, values))

    def first(self) -> dict[str, Any]:
        """Each range's first value: what is used when there is nothing to search on."""
        return {name: values[0] for name, values in self.ranges.items()}

    def pin(self, **values: Any) -> "Grid":
        """The same grid with these names held at one value each."""
        return Grid({name: (values[name],) if name in values else tuple(v) for name, v in self.ranges.items()})

    def __len__(self) -> int:
        size = 1
        for values in self.ranges.values():
            size *= len(values)
        return size


@dataclass(frozen=True)
class Trial:
    """One point of a grid and its validation value."""

    point: dict[str, Any]
    value: float


def search(grid: Grid, value_of: Callable[[dict[str, Any]], float]) -> list[Trial]:
    """Every point of `grid` with its value, in grid order."""
    return [Trial(point, float(value_of(point))) for point in grid.points()]


def best(trials: list[Trial]) -> Trial:
    """The trial of highest value; the earliest in grid order wins a tie."""
    if not trials:
        raise ValueError("search: no trials")
    return max(trials, key=lambda trial: trial.value)
