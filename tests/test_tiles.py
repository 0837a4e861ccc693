"""Tile states merge exactly, and windows select the sawtooth range of tiles."""
from __future__ import annotations

from featurestore import tiles

T = 300_000_000  # a 5-minute tile


def test_window_start_is_floor_of_t_minus_window():
    t = 10 * T + 7
    assert tiles.window_start(t, T, 3 * T) == 7 * T
    assert tiles.window_start(10 * T, T, 3 * T) == 7 * T
    assert tiles.window_start(t, T, None) is None


def test_in_window_bounds_are_inclusive_and_exclude_future_tiles():
    lower = tiles.window_start(10 * T + 7, T, 3 * T)
    assert tiles.in_window(7 * T, 10 * T + 7, lower)
    assert not tiles.in_window(6 * T, 10 * T + 7, lower)
    assert tiles.in_window(10 * T, 10 * T + 7, lower)
    assert not tiles.in_window(11 * T, 10 * T + 7, lower)


def test_min_and_max_are_exact_across_tiles():
    assert tiles.merge("max", [3, None, 9, 4]) == 9
    assert tiles.merge("min", [3, None, -9, 4]) == -9
    assert tiles.merge("max", [None, None]) is None


def test_sum_is_null_without_inputs_and_count_is_zero():
    assert tiles.merge("sum", [None, None]) is None
    assert tiles.merge("sum", [None, 2, 3]) == 5
    assert tiles.empty("count") == 0
    assert tiles.empty("sum") is None


def test_avg_carries_sum_and_count():
    state = tiles.merge("avg", [[10.0, 2], [0.0, 0], [5.0, 3]])
    assert state == [15.0, 5]
    assert tiles.finalize("avg", state) == 3.0
    assert tiles.empty("avg") is None


def test_window_value_uses_only_tiles_in_window():
    data = [(6 * T, [100]), (7 * T, [1]), (9 * T, [2]), (10 * T, [4]), (11 * T, [1000])]
    assert tiles.window_value("count", 0, data, 10 * T + 1, 7 * T) == 7
