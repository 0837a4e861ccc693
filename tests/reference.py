"""A brute-force reference of DESIGN.md's semantics, independent of the
product: for one label (entity, t) it scans the raw events of the entity and
computes each feature from its definition, with exact rational arithmetic.

It shares no code with featurestore: the definitions below are written from
the documented semantics (README "Semantics", featurestore/tiles.py's
docstring), so a bug in the engines cannot hide in a shared helper.

    window rows   floor(t, T) - W <= ts <= t, after the view's filter and the
                  aggregation's `where`; W is the window, else the ttl, else
                  all history
    row feature   its value on the latest row with ts <= t, ties on ts to the
                  row with the greater feature values (in order, null lowest,
                  then -0.0 above 0.0); null when ts <= t - ttl
    sums          exact sums of the inputs truncated to multiples of 2**-62
                  (float64, |x| < 2**63), rounded once; NaN if an input is out
                  of that range; sums of int64 are exact, null outside int64
    variance      sample variance of inputs truncated to multiples of 2**-32
                  (float64, |x| < 2**31) or exact (int64), rounded once;
                  stddev the correctly rounded root of the exact variance;
                  null under two inputs (even one out of range), else NaN
                  if an input is out of range
    min, max,     in value order: NaN above every number, -0.0 read as 0.0,
    first, last,  strings by code point; first/last by (ts, value)
    count_distinct
"""
from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Callable

Row = dict
Fn = Callable[[Row], object]


@dataclass(frozen=True)
class RefAggregation:
    name: str
    function: str
    arg: Fn | None           # None for count()
    arg_type: str | None
    where: Fn | None = None  # True keeps the row; False or None drops it
    window_us: int | None = None


@dataclass(frozen=True)
class RefView:
    name: str
    keys: tuple[str, ...]
    tile_us: int
    ttl_us: int | None
    filter: Fn | None
    row_features: tuple[tuple[str, Fn], ...] = ()
    aggregations: tuple[RefAggregation, ...] = field(default_factory=tuple)


def features_at(view: RefView, events: list[Row], key: tuple, t: int) -> dict[str, object]:
    """Every feature of `view` for entity `key` at time t (events carry `ts`
    in epoch microseconds)."""
    rows = [e for e in events if tuple(e[k] for k in view.keys) == key and e["ts"] <= t
            and (view.filter is None or view.filter(e) is True)]
    out = _row_features(view, rows, t)
    for agg in view.aggregations:
        width = agg.window_us or view.ttl_us
        lower = None if width is None else t - t % view.tile_us - width
        window = [e for e in rows if (lower is None or e["ts"] >= lower)
                  and (agg.where is None or agg.where(e) is True)]
        out[agg.name] = aggregate(agg, window)
    return out


def _row_features(view: RefView, rows: list[Row], t: int) -> dict[str, object]:
    names = [n for n, _ in view.row_features]
    if not rows:
        return dict.fromkeys(names)
    def rank(e):
        values = [fn(e) for _, fn in view.row_features]
        negative_zeros = [isinstance(v, float) and v == 0 and math.copysign(1, v) < 0 for v in values]
        return (e["ts"], *[_null_lowest(v) for v in values], *negative_zeros)
    latest = max(rows, key=rank)
    if view.ttl_us is not None and latest["ts"] <= t - view.ttl_us:
        return dict.fromkeys(names)
    return {n: fn(latest) for n, fn in view.row_features}


def _null_lowest(v):
    return (0, 0) if v is None else (1, _order(v))


def _order(v):
    """Value order: NaN above all numbers, -0.0 equal to 0.0."""
    if isinstance(v, float):
        return (1, 0.0) if math.isnan(v) else (0, v + 0.0)
    if isinstance(v, int) and not isinstance(v, bool):
        return (0, v)
    return v


def aggregate(agg: RefAggregation, rows: list[Row]) -> object:
    if agg.function == "count" and agg.arg is None:
        return len(rows)
    pairs = [(e["ts"], agg.arg(e)) for e in rows]
    values = [v for _, v in pairs if v is not None]
    f = agg.function
    if f == "count":
        return len(values)
    if f == "count_distinct":
        return len({_order(v) for v in values})
    if f in ("min", "max"):
        pick = min if f == "min" else max
        return _zero(pick(values, key=_order)) if values else None
    if f in ("first", "last"):
        present = [(ts, v) for ts, v in pairs if v is not None]
        pick = min if f == "first" else max
        return _zero(pick(present, key=lambda p: (p[0], _order(p[1])))[1]) if present else None
    if f == "sum":
        return _sum(values, agg.arg_type)
    if f == "avg":
        return _avg(values, agg.arg_type)
    if f in ("variance", "stddev"):
        return _variance(values, agg.arg_type, root=f == "stddev")
    raise ValueError(f)


def _zero(v):
    return v + 0.0 if isinstance(v, float) else v


def _fixed(x: float, bits: int) -> Fraction:
    """x truncated toward zero to a multiple of 2**-bits, exactly."""
    scaled = Fraction(x) * 2 ** bits
    whole = scaled.numerator // scaled.denominator
    if whole < 0 and whole * scaled.denominator != scaled.numerator:
        whole += 1  # floor -> toward zero
    return Fraction(whole, 2 ** bits)


def _in_range(values, limit: float) -> bool:
    return all(math.isfinite(v) and abs(v) < limit for v in values)


def _sum(values, arg_type):
    if not values:
        return None
    if arg_type == "int64":
        total = sum(values)
        return total if -2 ** 63 <= total < 2 ** 63 else None
    if not _in_range(values, 2.0 ** 63):
        return math.nan
    return float(sum(_fixed(v, 62) for v in values))


def _avg(values, arg_type):
    if not values:
        return None
    if arg_type == "int64":
        return float(Fraction(sum(values), len(values)))
    if not _in_range(values, 2.0 ** 63):
        return math.nan
    return float(sum(_fixed(v, 62) for v in values) / len(values))


def _variance(values, arg_type, root: bool):
    if len(values) < 2:
        return None
    if arg_type == "float64" and not _in_range(values, 2.0 ** 31):
        return math.nan
    xs = [Fraction(v) if arg_type == "int64" else _fixed(v, 32) for v in values]
    mean = sum(xs) / len(xs)
    variance = sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)
    return correctly_rounded_sqrt(variance) if root else float(variance)


def correctly_rounded_sqrt(v: Fraction) -> float:
    """The float nearest to sqrt(v) (ties to even), found by exact comparisons
    around the libm estimate."""
    if v == 0:
        return 0.0
    low = math.sqrt(float(v))
    while Fraction(low) ** 2 > v:
        low = math.nextafter(low, 0.0)
    while Fraction(math.nextafter(low, math.inf)) ** 2 <= v:
        low = math.nextafter(low, math.inf)
    high = math.nextafter(low, math.inf)
    if Fraction(low) ** 2 == v:
        return low
    mid = (Fraction(low) + Fraction(high)) / 2
    if v < mid * mid:
        return low
    if v > mid * mid:
        return high
    even = struct.unpack("<q", struct.pack("<d", low))[0] % 2 == 0
    return low if even else high
