"""Tile states merge exactly and in any order, finalize to the value the
brute-force reference computes, and windows select the sawtooth range."""
from __future__ import annotations

import math
import random
import struct
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from featurestore import layout, tiles, windows
from tests import reference
from tests.reference import RefAggregation

T = 300_000_000  # a 5-minute tile


def test_window_start_is_floor_of_t_minus_window():
    t = 10 * T + 7
    assert windows.window_start(t, T, 3 * T) == 7 * T
    assert windows.window_start(10 * T, T, 3 * T) == 7 * T
    assert windows.window_start(t, T, None) is None


def test_in_window_bounds_are_inclusive_and_exclude_future_tiles():
    lower = windows.window_start(10 * T + 7, T, 3 * T)
    assert windows.in_window(7 * T, 10 * T + 7, lower)
    assert not windows.in_window(6 * T, 10 * T + 7, lower)
    assert windows.in_window(10 * T, 10 * T + 7, lower)
    assert not windows.in_window(11 * T, 10 * T + 7, lower)


def test_window_slice_picks_the_tiles_in_window():
    starts = [6 * T, 7 * T, 9 * T, 10 * T, 11 * T]
    assert starts[windows.window_slice(starts, 10 * T + 1, 7 * T)] == [7 * T, 9 * T, 10 * T]
    assert starts[windows.window_slice(starts, 10 * T + 1, None)] == [6 * T, 7 * T, 9 * T, 10 * T]
    assert starts[windows.window_slice(starts, 5 * T, None)] == []


def agg(function, input_type=None):
    return tiles.aggregation(function, input_type)


def test_min_and_max_are_exact_across_tiles():
    assert agg("max", "int64").merge([3, None, 9, 4]) == 9
    assert agg("min", "int64").merge([3, None, -9, 4]) == -9
    assert agg("max", "float64").merge([1.0, math.nan, 2.0]) != agg("max", "float64").merge([1.0])
    assert agg("max", "int64").merge([None, None]) is None


def test_empty_windows_count_zero_and_are_null_otherwise():
    for function in tiles.FUNCTIONS:
        input_type = None if function == "count" else "float64"
        expected = 0 if function in ("count", "count_distinct") else None
        assert agg(function, input_type).empty() == expected, function


def test_float_sums_are_exact_sums_rounded_once():
    a = agg("sum", "float64")
    state = a.merge([a.state_of([(1, 0.1)]), a.state_of([(2, 0.2)]), a.state_of([(3, -0.3)])])
    assert a.value(state) == float(Fraction(0.1) + Fraction(0.2) + Fraction(-0.3))  # not 5.55e-17
    assert a.value(a.state_of([(1, 1e16), (2, 1.0), (3, -1e16)])) == 1.0         # no cancellation
    assert math.isnan(a.value(a.state_of([(1, math.inf), (2, 1.0)])))            # out of range
    assert a.value(a.state_of([(1, None)])) is None


@pytest.mark.parametrize("function", ["variance", "stddev"])
def test_variance_of_one_input_is_null_even_out_of_range(function):
    a = agg(function, "float64")
    for x in (math.nan, math.inf, 2.0 ** 31, 1.5):
        assert a.value(a.state_of([(1, x)])) is None, x
        assert a.value(a.state_of([(1, x), (2, None)])) is None, x
    assert math.isnan(a.value(a.state_of([(1, math.nan), (2, 1.0)])))


def test_int_sums_are_exact_and_null_beyond_int64():
    a = agg("sum", "int64")
    assert a.value(a.state_of([(1, 2 ** 62), (2, 2 ** 62), (3, -2 ** 62)])) == 2 ** 62
    assert a.value(a.state_of([(1, 2 ** 63 - 1), (2, 1)])) is None


def test_first_and_last_break_timestamp_ties_by_value():
    last, first = agg("last", "string"), agg("first", "string")
    tiles_ = [last.state_of([(5, "b"), (1, "z")]), last.state_of([(5, "c"), (5, "a")])]
    assert last.value(last.merge(tiles_)) == "c"
    assert first.value(first.state_of([(5, "b"), (5, "a"), (9, "0")])) == "a"
    assert last.value(last.state_of([(5, None)])) is None


def test_count_distinct_counts_nan_and_signed_zeros_once():
    a = agg("count_distinct", "float64")
    state = a.merge([a.state_of([(1, math.nan), (2, 0.0)]), a.state_of([(3, math.nan), (4, -0.0)])])
    assert a.value(state) == 2
    assert layout.encode_tile([state]) == b"[[0.0,NaN]]"


def test_sqrt_ratio_is_correctly_rounded():
    rng = random.Random(3)
    cases = [(1, 1), (2, 1), (1, 3), (10 ** 40 + 1, 7), (1, 2 ** 200), (9, 4)]
    cases += [(rng.getrandbits(rng.randrange(1, 300)), rng.getrandbits(rng.randrange(1, 200)) + 1)
              for _ in range(2000)]
    for p, q in cases:
        assert tiles.sqrt_ratio(p, q) == reference.correctly_rounded_sqrt(Fraction(p, q)), (p, q)


floats = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False, min_value=-1e9, max_value=1e9),
    st.sampled_from([0.0, -0.0, 2.0 ** -10, 1e-30, 0.1, 2.0 ** 40, -3e9]),
    st.integers(-10 ** 6, 10 ** 6).map(lambda i: i / 100))
ints = st.integers(-2 ** 63, 2 ** 63 - 1)


def _bits(x):
    return struct.pack("<d", x) if isinstance(x, float) else x


@pytest.mark.parametrize("function", ["sum", "avg", "variance", "stddev", "min", "max", "first",
                                      "last", "count_distinct", "count"])
@pytest.mark.parametrize("input_type", ["float64", "int64"])
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_merged_tiles_equal_the_reference_in_any_order(function, input_type, data):
    values = data.draw(st.lists(st.one_of(st.none(), floats if input_type == "float64" else ints),
                                max_size=12))
    rows = [(data.draw(st.integers(0, 5)), v) for v in values]
    a = agg(function, input_type)
    cut = sorted(data.draw(st.lists(st.integers(0, len(rows)), max_size=3)))
    pieces = [rows[i:j] for i, j in zip([0, *cut], [*cut, len(rows)])]
    states = [a.state_of(piece) for piece in pieces]
    random.Random(len(rows)).shuffle(states)
    merged = a.merge(states)
    assert merged == a.state_of(rows)
    want = reference.aggregate(RefAggregation("f", function, lambda e: e["x"], input_type),
                               [{"ts": ts, "x": x} for ts, x in rows])
    got = a.value(merged)
    assert _bits(got) == _bits(want) or (got != got and want != want), (rows, got, want)
    assert layout.decode_tile(layout.encode_tile([merged])) == [merged]
