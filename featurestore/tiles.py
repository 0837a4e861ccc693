"""Partial aggregation states per tile, and how tiles merge into a window value.

A tile holds, for one entity and one tile of time, one partial state per
aggregation. States merge exactly: counts add, sums add, min is the min of
minima (never a sum of them), avg carries (sum, count).

    count   int                     rows (where the condition holds)
    sum     number | null           null while no non-null input was seen
    avg     [sum, n]                n non-null inputs
    min/max value | null

Window at time t with tile size T and window W (DESIGN.md, the sawtooth):
tiles whose start s satisfies floor(t, T) - W <= s <= t.
"""
from __future__ import annotations

from typing import Iterable, Sequence

SUPPORTED = ("count", "sum", "avg", "min", "max")


def window_start(t_us: int, tile_us: int, window_us: int | None) -> int | None:
    """Lowest tile start inside the window at t; None means unbounded."""
    if window_us is None:
        return None
    return (t_us // tile_us) * tile_us - window_us


def in_window(tile_start_us: int, t_us: int, lower_us: int | None) -> bool:
    return tile_start_us <= t_us and (lower_us is None or tile_start_us >= lower_us)


def merge(function: str, states: Iterable[object]) -> object:
    """Merge per-tile states of one aggregation into one state."""
    if function == "count":
        return sum(states)
    if function == "sum":
        total = None
        for s in states:
            if s is not None:
                total = s if total is None else total + s
        return total
    if function == "avg":
        total, n = 0.0, 0
        for s, c in states:
            if c:
                total += s
                n += c
        return [total, n]
    if function in ("min", "max"):
        pick = min if function == "min" else max
        best = None
        for s in states:
            if s is not None:
                best = s if best is None else pick(best, s)
        return best
    raise ValueError(f"unsupported aggregation {function!r}")


def finalize(function: str, state: object) -> object:
    """The feature value of a merged state (None is a null value)."""
    if function == "avg":
        total, n = state
        return total / n if n else None
    return state


def empty(function: str) -> object:
    return finalize(function, merge(function, ()))


def window_value(function: str, index: int, tiles: Sequence[tuple[int, list]],
                 t_us: int, lower_us: int | None) -> object:
    """Finalized value of aggregation `index` over `tiles` ((start, states) pairs)."""
    return finalize(function, merge(function, (states[index] for start, states in tiles
                                               if in_window(start, t_us, lower_us))))
