"""Tile states: the partial aggregate of one aggregation over one entity and
one tile of time, how states merge, and how a merged state becomes a value.

This module is the definition every engine follows. The batch engine (DuckDB),
the streaming engine (Flink SQL) and the server must agree on it bit for bit:
a tile written by either engine merges with a tile written by the other.

State columns
-------------
A state is one or more *state columns*. Each column is a reducer applied to
a per-row input, computed per (entity, tile) with a plain GROUP BY:

    reducer   per (entity, tile)                 merging tiles
    count     COUNT(input)  (0 over no rows)     sum of the counts
    sum       SUM(input)    (null over no rows)  sum of the non-null sums
    min/max   MIN/MAX(input) in value order      min/max of the non-null states
    set       the distinct non-null inputs,      union, sorted
              sorted in value order

Every input is null on rows where the aggregation's `where` is not true, and
(except `row`) where the argument x is null, so SQL's rules for nulls hold.
Per-row inputs, for an argument x of the aggregation:

    row       1                                      (count())
    value     x; a float64 zero of either sign is +0.0, so that min, max,
              first, last and count_distinct never depend on input order;
              a timestamp is its epoch microseconds
    int       x, an int64, summed exactly (128 bits is ample per tile)
    hi, lo    float64 x with |x| < 2**63 as fixed point: hi = trunc(x),
              lo = trunc((x - hi) * 2**62); both are exact integers and
              x ~= hi + lo / 2**62 (exactly x when x is a multiple of 2**-62,
              which every float64 with |x| >= 2**-10 is)
    out63     1 when float64 x is NaN, +-inf or |x| >= 2**63 (not representable
              by hi, lo)
    fixed     the fixed-point integer X of x for variance: x itself for int64,
              trunc(x * 2**32) for float64 with |x| < 2**31
    a2, ab, b2  with X = a * 2**32 + b, a = floor(X / 2**32), 0 <= b < 2**32:
              a*a, a*b and b*b (each fits in 64 bits; b*b unsigned), so that
              sum(X*X) = sum(a2) * 2**64 + 2 * sum(ab) * 2**32 + sum(b2) exactly
    out31     1 when float64 x is NaN, +-inf or |x| >= 2**31
    ts_value  the pair (event time in epoch microseconds, value)

Value order: numbers numerically, NaN above every number; strings by Unicode
code point (the order of their UTF-8 bytes); false < true; timestamps by time;
pairs lexicographically. The first (last) row of a tile is the smallest
(greatest) `ts_value`: ties on the timestamp go to the smaller (greater) value.

The states, per aggregation and argument type (the order of the columns is
the order of the JSON list; a single column is stored bare; where every
column of a view's states has a fixed width, `featurestore.layout.TileCodec`
stores them as binary 64-bit words instead):

    count()              n = count(row)
    count(x)             n = count(value)
    sum(int64)           S = sum(int)
    sum(float64)         [H, L, N_out] = [sum(hi), sum(lo), count(out63)]
    avg(int64)           [n, S] = [count(value), sum(int)]
    avg(float64)         [n, H, L, N_out] = [count(value), sum(hi), sum(lo), count(out63)]
    min(x), max(x)       min(value), max(value)
    first(x), last(x)    min(ts_value), max(ts_value): [ts, value] or null
    count_distinct(x)    set(value): a sorted JSON list, [] over no rows
    variance, stddev     [n, S, A, B, C] (int64) or [n, S, A, B, C, N_out]
                         (float64) = [count(value), sum(fixed), sum(a2),
                         sum(ab), sum(b2), count(out31)]

JSON integers are exact at any size; engines sum them in 128 bits (DuckDB
HUGEINT, Flink DECIMAL(38, 0)), ample for any tile.

Values (`Aggregation.value`, the one finalizer of the server and the export):

    count, count_distinct   an int64; 0 over no rows
    sum(int64)              S, or null when S is outside int64 (never wraps)
    sum(float64)            (H + L / 2**62) rounded once to the nearest float64
                            (ties to even); null over no inputs; NaN when any
                            input was out of range (N_out > 0)
    avg                     the exact mean of the fixed-point inputs, rounded
                            once; null over no inputs; NaN as for sum
    variance, stddev        the sample variance (n - 1 in the denominator,
                            SQL's VAR_SAMP) of the fixed-point inputs, exactly,
                            rounded once; stddev is the correctly rounded square
                            root of the exact variance. Null under two inputs
                            (one NaN included, as SQL's VAR_SAMP); from two
                            inputs on, NaN when any input was out of range
    min, max, first, last   the value; null over no inputs

Which tiles a window at time t reads is `featurestore.windows`' to say.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

FUNCTIONS = ("count", "sum", "avg", "min", "max", "first", "last", "count_distinct",
             "stddev", "variance")

SUM_FRACTION_BITS = 62          # resolution 2**-62 for float64 sum and avg
SUM_LIMIT = 2.0 ** 63           # |x| below this is exact for float64 sum and avg
VARIANCE_FRACTION_BITS = 32     # resolution 2**-32 for float64 variance and stddev
VARIANCE_LIMIT = 2.0 ** 31      # |x| below this is exact for float64 variance and stddev
INT64_MIN, INT64_MAX = -2 ** 63, 2 ** 63 - 1

_LO_SCALE = float(2 ** SUM_FRACTION_BITS)
_FIXED_SCALE = float(2 ** VARIANCE_FRACTION_BITS)


@dataclass(frozen=True)
class StateColumn:
    """One column of a state: `reduce` (count, sum, min, max, set) applied
    to the per-row `input` (see the module docstring for both vocabularies)."""
    name: str
    input: str
    reduce: str


# ------------------------------------------------------------- value order
def order_key(value: object):
    """Sort key of a value (or a [ts, value] pair) in value order."""
    if isinstance(value, float):
        return (1, 0.0) if value != value else (0, value)
    if isinstance(value, (list, tuple)):
        return tuple(order_key(v) for v in value)
    return value


def normalize(value: object) -> object:
    """The `value` input: a float64 zero of either sign becomes +0.0."""
    return value + 0.0 if isinstance(value, float) else value


# ------------------------------------------------------------- reducers
# The fast paths use Python's own sum/min/max (C loops) and fall back to the
# general form only when a state is null or a NaN makes Python's order wrong:
# the server merges hundreds of tiles per entity and feature.
def _count(column: Sequence) -> int:
    try:
        return sum(column)
    except TypeError:  # a null among the counts
        return sum(c for c in column if c is not None)


def _sum(column: Sequence):
    try:
        return sum(column) if column else None
    except TypeError:
        present = [c for c in column if c is not None]
        return sum(present) if present else None


def _min(column: Sequence):
    present = [c for c in column if c is not None]
    if not present:
        return None
    return min(present) if _python_order(present) else min(present, key=order_key)


def _max(column: Sequence):
    present = [c for c in column if c is not None]
    if not present:
        return None
    return max(present) if _python_order(present) else max(present, key=order_key)


def _python_order(values: list) -> bool:
    """True when Python's order of `values` is value order: no NaN among
    floats, also inside [ts, value] pairs."""
    first = values[0]
    if isinstance(first, list):
        if not isinstance(first[1], float):
            return True
        values = [v[1] for v in values]
    elif not isinstance(first, float):
        return True
    total = sum(values)
    return total == total  # NaN, or +inf with -inf, take the general path


def _union(column: Iterable) -> list:
    """Union of sorted distinct lists; NaN is one value, as in SQL's DISTINCT."""
    seen: dict = {}
    for values in column:
        for v in values or ():
            seen[order_key(v)] = v
    return [seen[k] for k in sorted(seen)]


_MERGE: dict[str, Callable[[Sequence], object]] = {
    "count": _count, "sum": _sum, "min": _min, "max": _max, "set": _union}


# ------------------------------------------------------------- per-row inputs
def _inputs(x: object, ts: int, input_type: str) -> dict[str, object]:
    """Every per-row input of the module docstring, for one non-null x."""
    inputs: dict[str, object] = {"row": 1, "value": normalize(x), "int": x,
                                 "ts_value": [ts, normalize(x)]}
    if input_type not in ("int64", "float64"):
        return inputs
    if input_type == "float64":
        finite_63 = abs(x) < SUM_LIMIT  # False for NaN
        hi = math.trunc(x) if finite_63 else None
        inputs["hi"] = hi
        inputs["lo"] = math.trunc((x - hi) * _LO_SCALE) if finite_63 else None
        inputs["out63"] = None if finite_63 else 1
        fixed = math.trunc(x * _FIXED_SCALE) if abs(x) < VARIANCE_LIMIT else None
        inputs["out31"] = None if fixed is not None else 1
    else:
        fixed = x
    inputs["fixed"] = fixed
    if fixed is not None:
        a, b = fixed >> 32, fixed & 0xFFFFFFFF
        inputs.update(a2=a * a, ab=a * b, b2=b * b)
    return inputs


# ------------------------------------------------------------- finalizers
def ratio_to_float(numerator: int, denominator: int) -> float:
    """numerator / denominator rounded once to the nearest float64, ties to
    even (Python's int division is correctly rounded)."""
    return numerator / denominator


def sqrt_ratio(numerator: int, denominator: int) -> float:
    """sqrt(numerator / denominator), correctly rounded, for integers >= 0, > 0."""
    if numerator == 0:
        return 0.0
    # Scale so that the integer root has >= 55 bits: then 2r+1 (r inexact)
    # rounds exactly as the true root does, whose doubled value lies in (2r, 2r+2).
    shift = max(0, 110 - (numerator.bit_length() - denominator.bit_length()))
    shift += shift & 1
    scaled, rest = divmod(numerator << shift, denominator)
    root = math.isqrt(scaled)
    exact = rest == 0 and root * root == scaled
    return (2 * root + (0 if exact else 1)) / (1 << (shift // 2 + 1))


def _count_value(n):
    return n or 0


def _sum_int_value(s):
    return s if s is not None and INT64_MIN <= s <= INT64_MAX else None


def _sum_float_value(state):
    h, lo, out = state
    if out:
        return math.nan
    return None if h is None else ratio_to_float(h * 2 ** SUM_FRACTION_BITS + lo,
                                                 2 ** SUM_FRACTION_BITS)


def _avg_int_value(state):
    n, s = state
    return ratio_to_float(s, n) if n else None


def _avg_float_value(state):
    n, h, lo, out = state
    if out:
        return math.nan
    if not n:
        return None
    return ratio_to_float(h * 2 ** SUM_FRACTION_BITS + lo, n * 2 ** SUM_FRACTION_BITS)


def _variance_parts(state, fraction_bits: int) -> tuple[int, int] | None | float:
    """(numerator, denominator) of the exact sample variance; None under two
    inputs (even out-of-range ones); else NaN when an input was out of range."""
    n, s, a2, ab, b2 = state[:5]
    if not n or n < 2:      # SQL's VAR_SAMP: null under two inputs, whatever they are
        return None
    if len(state) > 5 and state[5]:
        return math.nan
    squares = (a2 << 64) + (ab << 33) + b2
    return n * squares - s * s, n * (n - 1) << (2 * fraction_bits)


def _variance_value(fraction_bits: int, root: bool):
    def value(state):
        parts = _variance_parts(state, fraction_bits)
        if parts is None or isinstance(parts, float):
            return parts
        return sqrt_ratio(*parts) if root else ratio_to_float(*parts)
    return value


def _pair_value(pair):
    return None if pair is None else pair[1]


def _set_value(values):
    return len(values or ())


def _identity(value):
    return value


# ------------------------------------------------------------- aggregations
@dataclass(frozen=True)
class Aggregation:
    """The tile state of one aggregation function over one argument type."""
    function: str
    input_type: str | None           # the argument's type; None for count()
    columns: tuple[StateColumn, ...]
    finalize: Callable[[object], object]

    @property
    def bare(self) -> bool:
        """True when the state is its single column, not a list."""
        return len(self.columns) == 1

    def state(self, columns: Sequence[object]) -> object:
        """The state from its column values (as a GROUP BY returns them)."""
        return columns[0] if self.bare else list(columns)

    def state_of(self, rows: Iterable[tuple[int, object]]) -> object:
        """The state of (ts, x) rows, computed in plain Python: the executable
        form of the definitions above. Rows are those that passed the
        aggregation's `where`; x is None for count() and for null arguments."""
        per_column: list[list] = [[] for _ in self.columns]
        for ts, x in rows:
            if self.input_type is None:
                inputs = {"row": 1}
            elif x is None:
                continue
            else:
                inputs = _inputs(x, ts, self.input_type)
            for values, column in zip(per_column, self.columns):
                values.append(inputs.get(column.input))
        return self.state([_reduce_rows(c.reduce, v) for c, v in zip(self.columns, per_column)])

    def merge(self, states: Sequence[object]) -> object:
        """Merge tile states into one state (the state of all their rows)."""
        if self.bare:
            return _MERGE[self.columns[0].reduce](states)
        present = [s for s in states if s is not None]
        if not present:
            return self.state([_EMPTY[c.reduce] for c in self.columns])
        return [_MERGE[c.reduce](column) for c, column in zip(self.columns, zip(*present))]

    def value(self, state: object) -> object:
        """The feature value of a (merged) state; None is a null value."""
        return self.finalize(state)

    def folder(self) -> Callable[[Sequence[object]], object]:
        """`lambda states: value(merge(states))`, with the lookups done once:
        the server folds thousands of windows per request."""
        finalize = self.finalize
        if self.bare:
            reduce = _MERGE[self.columns[0].reduce]
            return lambda states: finalize(reduce(states))
        merge = self.merge
        return lambda states: finalize(merge(states))

    def empty(self) -> object:
        """The value over no rows: 0 for counts, null otherwise."""
        return self.value(self.merge([]))


_WIDE = {"float32": "float64", "int32": "int64"}
_EMPTY = {"count": 0, "sum": None, "min": None, "max": None, "set": []}


def _reduce_rows(reduce: str, values: list) -> object:
    """A reducer over per-row inputs (where counting counts non-null inputs)."""
    if reduce == "count":
        return sum(1 for v in values if v is not None)
    if reduce == "set":
        return _union([[v] for v in values if v is not None])
    return _MERGE[reduce](values)


def _columns(*specs: tuple[str, str, str]) -> tuple[StateColumn, ...]:
    return tuple(StateColumn(*s) for s in specs)


_N = ("n", "value", "count")
_FIXED_62 = (("h", "hi", "sum"), ("l", "lo", "sum"), ("n_out", "out63", "count"))
_SQUARES = (("s", "fixed", "sum"), ("a2", "a2", "sum"), ("ab", "ab", "sum"), ("b2", "b2", "sum"))


@functools.lru_cache(maxsize=None)
def aggregation(function: str, input_type: str | None) -> Aggregation:
    """The tile state of `function` over an argument of `input_type` (None for
    count()); ValueError for a combination no engine can compute. Narrow
    numbers aggregate as their wide type (float32 as float64, int32 as int64)."""
    input_type = _WIDE.get(input_type, input_type)
    floating, integer = input_type == "float64", input_type == "int64"
    specs: tuple | None = None
    finalize: Callable[[object], object] = _identity
    if function == "count":
        specs, finalize = (("n", "row" if input_type is None else "value", "count"),), _count_value
    elif function == "sum" and (integer or floating):
        specs = (("s", "int", "sum"),) if integer else _FIXED_62
        finalize = _sum_int_value if integer else _sum_float_value
    elif function == "avg" and (integer or floating):
        specs = (_N, ("s", "int", "sum")) if integer else (_N, *_FIXED_62)
        finalize = _avg_int_value if integer else _avg_float_value
    elif function in ("min", "max") and input_type is not None:
        specs = (("v", "value", function),)
    elif function in ("first", "last") and input_type is not None:
        specs = (("tv", "ts_value", "min" if function == "first" else "max"),)
        finalize = _pair_value
    elif function == "count_distinct" and input_type is not None:
        specs, finalize = (("set", "value", "set"),), _set_value
    elif function in ("variance", "stddev") and (integer or floating):
        specs = (_N, *_SQUARES, ("n_out", "out31", "count")) if floating else (_N, *_SQUARES)
        finalize = _variance_value(VARIANCE_FRACTION_BITS if floating else 0,
                                   root=function == "stddev")
    if specs is None:
        raise ValueError(f"aggregation {function}({input_type or ''}) has no tile state")
    return Aggregation(function, input_type, _columns(*specs), finalize)
