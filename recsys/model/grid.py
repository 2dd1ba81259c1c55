"""A hyper-parameter search as data: named ranges, one flat loop over their product, typed results,
and the one rule by which a choice made on validation is kept (`crossfit`)."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

# A weight (in units of the score spreads) at which an added reference scorer decides the ranking and the
# model only orders its near-ties: how a floor (popularity, content-kNN) is installed.
FLOOR_WEIGHT = 1000.0


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
    """One point of a grid and its validation value; `halves`: its values on the two fixed halves of
    the validation queries (RankingJudge.half), where measured."""

    point: dict[str, Any]
    value: float
    halves: tuple[float, float] | None = None


def search(grid: Grid, value_of: Callable[[dict[str, Any]], Any]) -> list[Trial]:
    """Every point of `grid` with its value, in grid order. `value_of` returns a value, or (value,
    (first half, second half))."""
    trials = []
    for point in grid.points():
        measured = value_of(point)
        if isinstance(measured, tuple):
            value, halves = measured
            trials.append(Trial(point, float(value), (float(halves[0]), float(halves[1]))))
        else:
            trials.append(Trial(point, float(measured)))
    return trials


@dataclass(frozen=True)
class Verdict:
    """What `crossfit` decided: `kept` (a candidate replaces the incumbent), the out-of-sample `gain`
    that decided it, and the `winner` (the best candidate on all validation queries when kept, else
    the incumbent)."""

    kept: bool
    gain: float
    winner: Trial

    def reason(self, metric: str = "ndcg@10") -> str:
        verb = "kept" if self.kept else "not kept"
        return f"{verb}: picked on each half of the validation users, it changes {metric} on the other half by {self.gain:+.4f} in sum"


def crossfit(candidates: list[Trial], incumbent: Trial) -> Verdict:
    """Keep a candidate over `incumbent` only if picking among them wins on validation users that did
    not pick it: the pick on the first half is judged on the second and vice versa (a half's pick
    that does not beat the incumbent there is no change); the candidates win if the sum of those
    two out-of-sample gains is positive and the best of them also beats the incumbent on all users.
    So a larger grid cannot win by chance. Every trial needs `halves`."""
    if not candidates:
        return Verdict(False, 0.0, incumbent)
    if incumbent.halves is None or any(t.halves is None for t in candidates):
        raise ValueError("crossfit: every trial needs its values on both halves")
    gain = 0.0
    for pick_on, judge_on in ((0, 1), (1, 0)):
        pick = max(candidates, key=lambda t: t.halves[pick_on])
        if pick.halves[pick_on] > incumbent.halves[pick_on]:
            gain += pick.halves[judge_on] - incumbent.halves[judge_on]
    top = best(candidates)
    kept = gain > 0 and top.value > incumbent.value
    return Verdict(kept, gain, top if kept else incumbent)


def wins_on_both_halves(candidates: list[Trial], incumbent: Trial) -> Verdict:
    """Keep the best candidate (on all validation queries) among those that beat `incumbent` on each
    half of the queries; `gain`: the smaller of its two half gains (else the incumbent and 0).

    For a graded choice (a weight) on few validation items, where `crossfit`'s pick on a half swings to
    the grid's ends: each candidate must hold on both halves by itself, so no single half picks it."""
    if incumbent.halves is None or any(t.halves is None for t in candidates):
        raise ValueError("wins_on_both_halves: every trial needs its values on both halves")
    holding = [t for t in candidates if all(t.halves[h] > incumbent.halves[h] for h in (0, 1))]
    if not holding:
        return Verdict(False, 0.0, incumbent)
    top = best(holding)
    return Verdict(True, min(top.halves[h] - incumbent.halves[h] for h in (0, 1)), top)


def best(trials: list[Trial]) -> Trial:
    """The trial of highest value; the earliest in grid order wins a tie."""
    if not trials:
        raise ValueError("search: no trials")
    return max(trials, key=lambda trial: trial.value)
