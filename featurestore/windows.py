"""The time rules of a view, in one place: how far its windows reach, how long
its keys live, which rollup tiles it keeps, and which tiles a window reads.

Batch materialize, the streaming job and its writers, the training export and
the server all take these rules from here, so that what one engine writes is
what another reads. The functions take anything with `tile_us`, `ttl_us` and
`aggregations` (each with `window_us`): the compiler's `dsl.plan.View` and the
server's `featurestore.manifest.ViewSpec` alike. Standard library only.

The sawtooth window (DESIGN.md): an aggregation over W in a view with tile
size T, at time t, reads the tiles whose start s satisfies
`floor(t, T) - W <= s <= t`. A window without `over` spans the view's ttl;
with no ttl either, all history.

Rollups. Besides its tiles of size T, a view keeps *rollup tiles* of 1 hour
and 1 day (`levels`): the merged state of every tile inside them, written by
batch and stream alike. A window reads the fewest whole tiles that cover it
(`cover`): fine tiles up to the first hour boundary, hours up to the first day
boundary, days, then hours and fine tiles back down to the current tile. A
7-day window on 5-minute tiles reads at most 11 + 23 + 6 + 23 + 12 = 75 tiles
instead of 2017, and merging them gives exactly the state of those 2017 tiles
(every state of `featurestore.tiles` merges associatively).
"""
from __future__ import annotations

import bisect
from typing import Iterable, Sequence

HOUR_US = 3_600_000_000
DAY_US = 24 * HOUR_US
ROLLUP_SPANS_US = (HOUR_US, DAY_US)   # candidate rollup sizes, finest first
MAX_FUTURE_US = HOUR_US               # the stream drops events further ahead of its clock
# Tiles are kept this long beyond the longest window, so that a request may
# ask for values as of a time up to this far in the past (`as_of`).
AS_OF_HORIZON_US = HOUR_US


def reach_us(view, aggregation) -> int | None:
    """The span of an aggregation's window: its `over`, else the view's ttl;
    None for all history."""
    return aggregation.window_us if aggregation.window_us is not None else view.ttl_us


def retention_us(view) -> int | None:
    """How far back (from the start of the current tile) any window of the
    view reaches; None when some aggregation keeps all history."""
    spans = [reach_us(view, a) for a in view.aggregations]
    return None if any(s is None for s in spans) else max(spans, default=0)


def history_us(view) -> int | None:
    """How far back from the start of the current tile the view's tiles are
    kept (written, not pruned, not dropped as late): the longest window plus
    AS_OF_HORIZON_US; None for all history."""
    keep = retention_us(view)
    return None if keep is None else keep + AS_OF_HORIZON_US


def tiles_keep_us(view) -> int | None:
    """A tiles key lives this long after its newest tile (two tiles of slack
    beyond the history, for clocks that disagree by a little)."""
    keep = history_us(view)
    return None if keep is None else keep + 2 * view.tile_us


def rows_keep_us(view) -> int | None:
    """A latest row lives this long after its event: twice the ttl, so that a
    row past its ttl reads as OUTSIDE_MAX_AGE for a while before it is gone."""
    return None if view.ttl_us is None else 2 * view.ttl_us


def levels(view) -> tuple[int, ...]:
    """The tile sizes the view keeps, finest first: its tile, then each
    rollup span that is a multiple of the previous size and that its longest
    window spans at least twice (a shorter window gains little from it)."""
    out = [view.tile_us]
    keep = retention_us(view)
    for span in ROLLUP_SPANS_US:
        if span > out[-1] and span % out[-1] == 0 and (keep is None or keep >= 2 * span):
            out.append(span)
    return tuple(out)


def window_start(t_us: int, tile_us: int, span_us: int | None) -> int | None:
    """Lowest tile start inside the window at t; None means unbounded."""
    if span_us is None:
        return None
    return (t_us // tile_us) * tile_us - span_us


def in_window(tile_start_us: int, t_us: int, lower_us: int | None) -> bool:
    return tile_start_us <= t_us and (lower_us is None or tile_start_us >= lower_us)


def window_slice(starts: Sequence[int], t_us: int, lower_us: int | None) -> slice:
    """The tiles of ascending `starts` inside the window [lower_us, t_us]."""
    lo = 0 if lower_us is None else bisect.bisect_left(starts, lower_us)
    return slice(lo, bisect.bisect_right(starts, t_us))


def cover(lower_us: int, t_us: int, sizes: Sequence[int]) -> list[tuple[int, int]]:
    """The fewest whole tiles, as (size, start), whose union is exactly the
    fine tiles with starts in [lower_us, t_us] (`lower_us` a multiple of the
    finest size). `sizes` ascending, each a multiple of the one before; a
    tile of size S starts at a multiple of S."""
    fine = sizes[0]
    lo, hi = lower_us, (t_us // fine) * fine + fine   # [lo, hi): starts of whole fine tiles
    if hi <= lo:
        return []
    left: list[tuple[int, int]] = []
    right: list[tuple[int, int]] = []
    size = fine
    for coarser in sizes[1:]:
        a, b = -(-lo // coarser) * coarser, (hi // coarser) * coarser
        if a >= b:
            break
        left += [(size, s) for s in range(lo, a, size)]
        right += [(size, s) for s in range(b, hi, size)]
        lo, hi, size = a, b, coarser
    return left + [(size, s) for s in range(lo, hi, size)] + right[::-1]


def rollup_starts(tile_start_us: int, sizes: Iterable[int]) -> list[tuple[int, int]]:
    """(size, start) of every tile of `sizes` that contains the fine tile at
    `tile_start_us` (the fine tile itself included)."""
    return [(size, tile_start_us - tile_start_us % size) for size in sizes]


def as_of_instant(t_us: int, tile_sizes: Iterable[int]) -> int:
    """The latest instant at or before t that ends a tile of every size: an
    as-of request is answered there, where whole tiles hold exactly the events
    up to it (a tile holds no event after the instant its window ends)."""
    sizes = set(tile_sizes)
    while True:
        aligned = t_us
        for size in sizes:
            aligned = ((aligned + 1) // size) * size - 1
        if aligned == t_us:
            return t_us
        t_us = aligned
