"""The streaming job's Redis writers, fed by hand as Flink feeds them (plain
columns), against a real redis-server: tile states as featurestore.tiles
defines them, latest rows, dropped counts, expiry, and the last update of a
batch winning."""
from __future__ import annotations

import dataclasses
import math
import struct
import time

import pytest
import redis

from dsl.plan import Aggregation, Column, RowFeature, View
from featurestore import layout, tiles, windows
from streaming import flink_sql, sink, wire
from streaming.wire import INT_OFFSET as OFFSET_63
from streaming.wire import TS_OFFSET as OFFSET_62

US, MIN, HOUR, DAY = 1_000_000, 60_000_000, 3_600_000_000, 86_400_000_000
TILE = 5 * MIN
# Near the real time: Redis expires keys by its own clock.
NOW = time.time_ns() // 1000 // TILE * TILE + 2 * MIN + 3   # mid-tile
CURRENT = NOW - NOW % TILE
AMOUNT, CATEGORY, N = Column("amount", "float64"), Column("category", "string"), Column("n", "int64")
VIEW = View("spend", "user", (("user_id", "string"),), "s", None, TILE, HOUR,
            (RowFeature("amount", AMOUNT, "float64"), RowFeature("category", CATEGORY, "string"),
             RowFeature("n", N, "int64")),
            (Aggregation("count", "count", None, None, HOUR, "int64"),
             Aggregation("total", "sum", AMOUNT, None, HOUR, "float64"),
             Aggregation("top", "max", AMOUNT, None, HOUR, "float64"),
             Aggregation("first_category", "first", CATEGORY, None, HOUR, "string"),
             Aggregation("ns", "count_distinct", N, None, HOUR, "int64")))
OUT = flink_sql.view_output(VIEW)


def _halves(v: int | None) -> tuple:
    return (None, None) if v is None else (v >> 32, v & 0xFFFFFFFF)


def _tile_row(user: str, tile: int, *, count: int, amounts: list[float], nan: bool,
              first: tuple[int, str], ns: list[int]) -> dict:
    """The field values Flink sends for one tile (names of sink.input_fields)."""
    hi = sum(int(a) for a in amounts)
    lo = sum(int((a - int(a)) * 2.0 ** 62) for a in amounts)
    return {"k0": user, "tile": tile, "__sr_count_row": count,
            "__s1_sum_hi_h": _halves(hi)[0], "__s1_sum_hi_l": _halves(hi)[1],
            "__s1_sum_lo_h": _halves(lo)[0], "__s1_sum_lo_l": _halves(lo)[1],
            "__s1_count_out63": 0,
            "__s1_max_value": max(amounts), "__s1_max_value_nan": int(nan),
            "__s3_min_ts_value": f"{first[0] + OFFSET_62:019d}{first[1]}",
            "__s4_set_value": ns}


def _columns(part: str, rows: list[dict], out: sink.ViewOutput = OUT) -> list[list]:
    """Rows as the columns of sink.input_fields, null flags included."""
    columns = []
    for f in sink.input_fields(out, part):
        if f.name.endswith("__null"):
            columns.append([row.get(f.name[:-6]) is None for row in rows])
        else:
            columns.append([row.get(f.name) if row.get(f.name) is not None else
                            (0 if f.kind in ("int", "float") else None) for row in rows])
    return columns


def _sink(store, part: str, out: sink.ViewOutput = OUT) -> sink.RedisSink:
    return sink.RedisSink("t", out, part, store, clock=lambda: NOW)


def _codec(out: sink.ViewOutput = OUT) -> layout.TileCodec:
    return layout.tile_codec([tiles.aggregation(s.function, s.input_type) for s in out.states])


def _decode(raw: bytes, out: sink.ViewOutput = OUT) -> list:
    """The states of a tile value, binary or JSON, by the view's codec."""
    return _codec(out).decode(raw)


def test_tiles_are_written_as_featurestore_tiles_states(store):
    writer = _sink(store.target, sink.TILES)
    row = _tile_row("u|1", CURRENT, count=3, amounts=[1.5, 2.25], nan=True,
                    first=(CURRENT + 5, "a\0b"), ns=[7, -2, 7 * 10 ** 17])
    assert writer.write(_columns(sink.TILES, [row])) == 2          # HSET and PEXPIREAT
    r = store.client
    key = layout.tiles_key("t", "spend", VIEW.fingerprint(), layout.encode_entity_key(["u|1"]))
    states = _decode(r.hget(key, layout.tile_field(CURRENT)))
    lo = int(0.5 * 2 ** 62) + int(0.25 * 2 ** 62)
    assert states[:2] == [3, [3, lo, 0]]
    assert math.isnan(states[2])                        # a NaN was seen: above every number
    assert states[3:] == [[CURRENT + 5, "a\0b"], [-2, 7, 7 * 10 ** 17]]
    expire_ms = (CURRENT + OUT.future_us + OUT.tiles_keep_us) // 1000
    assert r.pexpiretime(key) == expire_ms


def test_the_last_update_of_a_tile_in_a_batch_wins(redis_url):
    writer = _sink(redis_url, sink.TILES)
    rows = [_tile_row("u", CURRENT, count=n, amounts=[float(n)], nan=False,
                      first=(CURRENT, "x"), ns=[]) for n in (1, 2)]
    assert writer.write(_columns(sink.TILES, rows)) == 2
    assert writer.stats.superseded == 1
    key = layout.tiles_key("t", "spend", VIEW.fingerprint(), "u")
    assert _decode(redis.Redis.from_url(redis_url).hget(key, str(CURRENT)))[0] == 2
    # the same expiry again is not sent again
    assert writer.write(_columns(sink.TILES, rows[:1])) == 1


def test_tiles_out_of_reach_of_every_window_are_not_written(redis_url):
    writer = _sink(redis_url, sink.TILES)
    old = CURRENT - OUT.tiles_keep_us
    row = _tile_row("u", old, count=1, amounts=[1.0], nan=False, first=(old, "x"), ns=[])
    assert writer.write(_columns(sink.TILES, [row])) == 0
    assert writer.stats.expired == 1 and redis.Redis.from_url(redis_url).dbsize() == 0


# The same view with windows of two days: rollups of an hour and of a day
ROLLUP_VIEW = dataclasses.replace(VIEW, ttl_us=2 * DAY, aggregations=tuple(
    dataclasses.replace(a, window_us=2 * DAY) for a in VIEW.aggregations))
ROLLUP_OUT = flink_sql.view_output(ROLLUP_VIEW)


def _group_rows(user: str, events: list[tuple], sizes: tuple[int, ...]) -> list[dict]:
    """What the tiles GROUP BY sends for (ts, amount, category, n) events:
    one row per size and tile of that size, of the events inside it."""
    groups: dict[tuple[int, int], list[tuple]] = {}
    for e in events:
        for size in sizes:
            groups.setdefault((size, e[0] - e[0] % size), []).append(e)
    return [dict(_tile_row(user, start, count=len(g), amounts=[e[1] for e in g], nan=False,
                           first=min((e[0], e[2]) for e in g), ns=sorted({e[3] for e in g})),
                 size=size)
            for (size, start), g in groups.items()]


def test_rollups_hold_the_merged_states_of_their_tiles(redis_url):
    """Each rollup is written under `<size>:<start>` with what the GROUP BY
    of its rows gives: the merge of the states of the tiles inside it. A
    key's tiles and rollups of a batch go in one HSET."""
    assert ROLLUP_OUT.levels == (TILE, HOUR, DAY)
    hour = CURRENT - CURRENT % HOUR - HOUR
    events = [(hour + 7, 1.5, "b", 3), (hour + 9, 2.25, "a", 4), (hour + TILE, 10.0, "c", 3),
              (hour + 11 * TILE + 5, -4.0, "a", 9), (hour + HOUR + 1, 0.5, "z", 1)]
    writer = _sink(redis_url, sink.TILES, ROLLUP_OUT)
    rows = _group_rows("u", events, ROLLUP_OUT.levels)
    assert writer.write(_columns(sink.TILES, rows, ROLLUP_OUT)) == 2   # HSET and PEXPIREAT
    assert writer.stats.superseded == 0   # a tile and a rollup may start together
    key = layout.tiles_key("t", "spend", ROLLUP_VIEW.fingerprint(), "u")
    got = {layout.parse_tile_field(f): _decode(v, ROLLUP_OUT)
           for f, v in redis.Redis.from_url(redis_url).hgetall(key).items()}
    fine = {start: states for (size, start), states in got.items() if size is None}
    rollups = {at: states for at, states in got.items() if at[0] is not None}
    assert sorted(fine) == sorted({ts - ts % TILE for ts, *_ in events})
    assert sorted(rollups) == sorted({(size, ts - ts % size) for ts, *_ in events
                                      for size in (HOUR, DAY)})
    aggregations = [tiles.aggregation(s.function, s.input_type) for s in ROLLUP_OUT.states]
    for (size, start), states in rollups.items():
        inside = [states for s, states in fine.items() if start <= s < start + size]
        assert states == [a.merge([tile[j] for tile in inside])
                          for j, a in enumerate(aggregations)], (size, start)


def test_rollups_that_start_out_of_reach_are_not_written(redis_url):
    """No window reads a rollup that starts before its reach, though the
    last tiles inside it may still be read."""
    keep = ROLLUP_OUT.tiles_keep_us
    assert keep == windows.tiles_keep_us(ROLLUP_VIEW)
    day = (NOW - keep) - (NOW - keep) % DAY
    rows = [dict(_tile_row("u", start, count=1, amounts=[1.0], nan=False, first=(CURRENT, "x"),
                           ns=[]), size=size) for size, start in ((TILE, CURRENT), (DAY, day))]
    writer = _sink(redis_url, sink.TILES, ROLLUP_OUT)
    assert writer.write(_columns(sink.TILES, rows, ROLLUP_OUT)) == 2
    assert writer.stats.expired == 1
    key = layout.tiles_key("t", "spend", ROLLUP_VIEW.fingerprint(), "u")
    assert list(redis.Redis.from_url(redis_url).hkeys(key)) == [layout.tile_field(CURRENT)]


# A view whose every state is a fixed-width number: its tiles are binary
FIXED_VIEW = dataclasses.replace(VIEW, aggregations=(
    Aggregation("count", "count", None, None, HOUR, "int64"),
    Aggregation("total", "sum", AMOUNT, None, HOUR, "float64"),
    Aggregation("top", "max", AMOUNT, None, HOUR, "float64"),
    Aggregation("low", "min", AMOUNT, None, HOUR, "float64"),
    Aggregation("first_n", "first", N, None, HOUR, "int64"),
    Aggregation("spread", "variance", AMOUNT, None, HOUR, "float64"),
    Aggregation("mean_n", "avg", N, None, HOUR, "float64"),
    Aggregation("sum_n", "sum", N, None, HOUR, "int64")))
FIXED_OUT = flink_sql.view_output(FIXED_VIEW)


def _fixed_row(user: str, tile: int, events: list[tuple[int, float, int]]) -> tuple:
    """The fields Flink sends for one tile of FIXED_VIEW of (ts, amount, n)
    events, and the tile's states (featurestore.tiles)."""
    row, states = {"k0": user, "tile": tile, "newest": max(e[0] for e in events)}, []
    for s in FIXED_OUT.states:
        agg = tiles.aggregation(s.function, s.input_type)
        x = {None: lambda e: None, "float64": lambda e: e[1], "int64": lambda e: e[2]}
        state = agg.state_of([(e[0], x[agg.input_type](e)) for e in events])
        states.append(state)
        for column, value in zip(s.columns, [state] if agg.bare else state):
            names = [f.name for f in column.fields]
            if column.decoder == "halves":
                row.update(zip(names, _halves(value)))
            elif column.decoder in ("max_float", "min_float"):
                nan = value is not None and math.isnan(value)
                row.update(zip(names, (None if nan else value, int(nan))))
            elif column.decoder == "pair_int":
                row[names[0]] = None if value is None else (
                    f"{value[0] + OFFSET_62:019d}{value[1] + OFFSET_63:020d}")
            else:
                row[names[0]] = value
    return row, states


def test_tiles_of_a_view_of_numbers_are_the_codecs_binary_words(store):
    """Each tile value is `TileCodec.encode` of its states, byte for byte:
    binary, or JSON for a tile whose words pass 64 bits (here an int sum
    beyond int64); a held update is released with the same bytes."""
    codec = _codec(FIXED_OUT)
    assert codec.fixed
    clock = Clock(NOW)
    writer = sink.RedisSink("t", FIXED_OUT, sink.TILES, store.target, clock=clock)
    t = CURRENT - 3 * TILE
    batches = [
        [(t + 1, 1.5, 3), (t + 2, 2.25, -4), (t + 3, -0.0, 7)],
        [(t + TILE, math.nan, 2 ** 62), (t + TILE + 1, 1e-300, 2 ** 62), (t + TILE, 3.0, 2 ** 62)],
        [(t + 2 * TILE, -(2.0 ** 62), -(2 ** 63)), (t + 2 * TILE + 9, 2.0 ** 40 + 0.75, 5)],
        [(CURRENT + 4, math.inf, 0), (CURRENT + 5, 123456.789, -1), (CURRENT + 6, -2e6, 1)],
    ]
    starts = [e[0][0] - e[0][0] % TILE for e in batches]
    rows, states = zip(*[_fixed_row("u", start, e) for start, e in zip(starts, batches)])
    assert writer.write(_columns(sink.TILES, rows, FIXED_OUT)) == 2
    r = store.client
    key = layout.tiles_key("t", "spend", FIXED_VIEW.fingerprint(), "u")
    got = {layout.parse_tile_field(f)[1]: v for f, v in r.hgetall(key).items()}
    assert got == {start: codec.encode(s) for start, s in zip(starts, states)}
    assert [got[start][0] for start in starts] == [layout.BINARY_TAG, ord("["),
                                                   layout.BINARY_TAG, layout.BINARY_TAG]
    aggregations = [tiles.aggregation(s.function, s.input_type) for s in FIXED_OUT.states]
    for start, want in zip(starts, states):   # and they read back as the same values
        for agg, a, b in zip(aggregations, codec.decode(got[start]), want):
            assert repr(agg.value(a)) == repr(agg.value(b))

    held, held_states = _fixed_row("u", CURRENT, [*batches[3], (NOW + 30 * US, 7.5, 8)])
    writer.write(_columns(sink.TILES, [held], FIXED_OUT))
    assert r.hget(key, layout.tile_field(CURRENT)) == got[CURRENT]   # not yet
    clock.now = NOW + 30 * US
    assert writer.release_due() == 1
    assert r.hget(key, layout.tile_field(CURRENT)) == codec.encode(held_states)
    writer.close()


def _latest_text(ts: int, values: list, kinds: tuple = ("float", "string", "int")) -> str:
    """wire.row_text_sql's text, spelled in Python."""
    text = f"{ts + OFFSET_62:019d}"
    for v in values:
        if v is None:
            text += "0"
        elif isinstance(v, bool):
            text += "1" + ("1" if v else "0")
        elif isinstance(v, int):
            text += f"1{v + OFFSET_63:020d}"
        elif isinstance(v, float):
            text += "1" + ("5" if math.isnan(v) else "4" if v == math.inf else
                           "0" if v == -math.inf else "2" if v == 0 else
                           ("3" if v > 0 else "1") + "0" * 20)
        else:
            text += "1" + v.replace("\0", "\0\1") + "\0\0"
    floats = [v for v, kind in zip(values, kinds) if kind == "float"]
    text += "".join("1" if v is not None and v == 0 and struct.pack(">d", v)[0] & 0x80 else "0"
                    for v in floats)
    return text + "".join("|" + ("" if v is None else _java(v)) for v in floats)


def _java(v: float) -> str:
    return {math.inf: "Infinity", -math.inf: "-Infinity"}.get(v, "NaN" if math.isnan(v) else repr(v))


@pytest.mark.parametrize("values", [
    [-0.0, "a\0\0b\0", -2 ** 63], [math.nan, "", 2 ** 63 - 1], [None, None, None],
    [math.inf, "日本😀", 0], [1.5, "\0", None]])
def test_latest_rows_read_back_exactly(values):
    kinds = ("float", "string", "int")
    _assert_read_back(values, kinds)


@pytest.mark.parametrize("values", [
    [True, -2.5, None, "x\0"], [False, None, 1e-300, ""], [None, -0.0, math.nan, None],
    [True, 5e-324, -1.7976931348623157e308, "|1|"]])
def test_latest_rows_of_several_floats_and_bools_read_back_exactly(values):
    _assert_read_back(values, ("bool", "float", "float", "string"))


def _assert_read_back(values: list, kinds: tuple) -> None:
    ts, got = wire.decode_latest(_latest_text(NOW, values, kinds), kinds)
    assert ts == NOW
    assert len(got) == len(kinds) and all(
        (a is None and b is None) or (isinstance(a, float) and math.isnan(a) and math.isnan(b))
        or (a == b and type(a) is type(b) and str(a) == str(b)) for a, b in zip(got, values))


def test_latest_rows_are_written_with_their_expiry(redis_url):
    writer = _sink(redis_url, sink.LATEST)
    text = _latest_text(NOW - 10, [2.5, "books", 4])
    assert writer.write([["u"], [text]]) == 1
    r = redis.Redis.from_url(redis_url)
    key = layout.row_key("t", "spend", VIEW.fingerprint(), "u")
    assert layout.decode_row(r.get(key)) == (NOW - 10, [2.5, "books", 4])
    assert r.pexpiretime(key) == (NOW - 10 + 2 * HOUR) // 1000
    too_old = _latest_text(NOW - 2 * HOUR, [1.0, "x", 1])
    assert writer.write([["v"], [too_old]]) == 0 and writer.stats.expired == 1


class Clock:
    def __init__(self, now: int):
        self.now = now

    def __call__(self) -> int:
        return self.now


def test_updates_holding_an_event_after_the_clock_wait_until_it_is_due(store):
    """A tile whose newest event, or a row, is later than the clock is not
    written (a request now must not count it) until the clock reaches it;
    a later update of the same tile replaces the held one. On one node and
    on a cluster (where the held updates and their keys lie in different
    slots)."""
    clock = Clock(NOW)
    tiles_out = sink.RedisSink("t", OUT, sink.TILES, store.target, clock=clock)
    rows_out = sink.RedisSink("t", OUT, sink.LATEST, store.target, clock=clock)
    r = store.client
    key = layout.tiles_key("t", "spend", VIEW.fingerprint(), "u")
    row_key = layout.row_key("t", "spend", VIEW.fingerprint(), "u")
    past = dict(_tile_row("u", CURRENT, count=1, amounts=[1.0], nan=False, first=(NOW - 5, "a"),
                          ns=[1]), newest=NOW - 5)
    tiles_out.write(_columns(sink.TILES, [past]))
    rows_out.write([["u"], [_latest_text(NOW - 5, [1.0, "a", 1])]])
    ahead = dict(_tile_row("u", CURRENT, count=2, amounts=[1.0, 9.0], nan=False,
                           first=(NOW - 5, "a"), ns=[1]), newest=NOW + 30 * US)
    tiles_out.write(_columns(sink.TILES, [ahead]))
    rows_out.write([["u"], [_latest_text(NOW + 30 * US, [9.0, "z", 2])]])
    assert _decode(r.hget(key, layout.tile_field(CURRENT)))[0] == 1   # not yet
    assert layout.decode_row(r.get(row_key))[0] == NOW - 5
    assert tiles_out.stats.deferred == rows_out.stats.deferred == 1
    assert r.hlen(layout.deferred_key("t", "spend", VIEW.fingerprint())) == 2

    clock.now = NOW + 30 * US                      # due: the timer (or a write) writes them
    deadline = time.monotonic() + 5
    while _decode(r.hget(key, layout.tile_field(CURRENT)))[0] != 2:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    while layout.decode_row(r.get(row_key))[0] != NOW + 30 * US:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    while r.hlen(layout.deferred_key("t", "spend", VIEW.fingerprint())):   # then forgotten
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert r.pexpiretime(row_key) == (NOW + 30 * US + 2 * HOUR) // 1000

    # held, then replaced by a current update: the held one never lands
    clock.now = NOW + MIN
    later = dict(ahead, __sr_count_row=5, newest=NOW + 2 * MIN)
    tiles_out.write(_columns(sink.TILES, [later]))
    current = dict(ahead, __sr_count_row=3, newest=NOW + MIN)
    tiles_out.write(_columns(sink.TILES, [current]))
    clock.now = NOW + 3 * MIN
    assert tiles_out.release_due() == 0
    assert _decode(r.hget(key, layout.tile_field(CURRENT)))[0] == 3
    tiles_out.close()
    rows_out.close()


def test_held_updates_survive_a_restart_of_the_sink(store):
    clock = Clock(NOW)
    first = sink.RedisSink("t", OUT, sink.LATEST, store.target, clock=clock)
    first.write([["u"], [_latest_text(NOW + 10 * US, [3.0, "y", 1])]])
    first.close()
    r = store.client
    row_key = layout.row_key("t", "spend", VIEW.fingerprint(), "u")
    assert r.get(row_key) is None
    clock.now = NOW + 10 * US
    second = sink.RedisSink("t", OUT, sink.LATEST, store.target, clock=clock)
    assert second.release_due() == 1
    assert layout.decode_row(r.get(row_key)) == (NOW + 10 * US, [3.0, "y", 1])
    second.close()


def test_after_a_restart_no_subtask_writes_a_held_update_over_a_newer_one(store):
    """After a restart every subtask loads every held update. The subtask
    that owns a tile writes a newer update of it; another subtask's release
    of the held one must then write nothing, and the held entry is gone from
    the entity's held hash and from the view's list. On one node and on a
    cluster (the held hash lies in the tile's slot)."""
    clock = Clock(NOW)
    r = store.client
    key = layout.tiles_key("t", "spend", VIEW.fingerprint(), "u")
    ahead = dict(_tile_row("u", CURRENT, count=2, amounts=[1.0, 9.0], nan=False,
                           first=(NOW - 5, "a"), ns=[1]), newest=NOW + 30 * US)
    before = sink.RedisSink("t", OUT, sink.TILES, store.target, clock=clock)
    before.write(_columns(sink.TILES, [ahead]))
    before.close()
    assert r.hlen(layout.held_key(key)) == 1
    owner = sink.RedisSink("t", OUT, sink.TILES, store.target, clock=clock)   # restarted:
    other = sink.RedisSink("t", OUT, sink.TILES, store.target, clock=clock)   # both load it
    clock.now = NOW + MIN
    newer = dict(ahead, __sr_count_row=4, newest=NOW + MIN)
    owner.write(_columns(sink.TILES, [newer]))
    assert _decode(r.hget(key, layout.tile_field(CURRENT)))[0] == 4
    assert other.release_due() == 0
    assert _decode(r.hget(key, layout.tile_field(CURRENT)))[0] == 4
    assert r.hlen(layout.held_key(key)) == 0
    assert r.hlen(layout.deferred_key("t", "spend", VIEW.fingerprint())) == 0
    owner.close()
    other.close()


def test_an_update_held_by_an_older_sink_is_still_released(store):
    """Before held hashes, a held update was only listed in the view's
    deferred hash: a sink that finds one there gives it its held copy and
    writes it when due."""
    r = store.client
    row_key = layout.row_key("t", "spend", VIEW.fingerprint(), "u")
    value = layout.encode_row(NOW + 10 * US, [3.0, "y", 1])
    r.hset(layout.deferred_key("t", "spend", VIEW.fingerprint()), layout.deferred_entry(row_key),
           layout.encode_deferred(NOW + 10 * US, None, value))
    clock = Clock(NOW + 10 * US)
    restarted = sink.RedisSink("t", OUT, sink.LATEST, store.target, clock=clock)
    assert restarted.release_due() == 1
    assert r.get(row_key) == value
    assert r.hlen(layout.deferred_key("t", "spend", VIEW.fingerprint())) == 0
    restarted.close()


def test_dropped_counts_are_kept_per_reason_and_hour(store):
    writer = _sink(store.target, sink.DROPPED)
    hour = NOW - NOW % HOUR
    writer.write([["late", "future", "late", "counted", "counted", "unparsable"],
                  [hour - HOUR, hour, hour, hour - HOUR, hour, hour], [3, 1, 2, 7, 4, 1],
                  [0, 0, 0, NOW - 2 * HOUR, NOW - 5, 0], [True, True, True, False, False, True]])
    raw = store.client.hgetall(layout.dropped_key("t", "spend", VIEW.fingerprint()))
    assert layout.dropped_totals(raw) == {"late": 5, "future": 1, "unparsable": 1}
    assert layout.stream_counts(raw) == layout.StreamCounts(
        counted=11, dropped={"late": 5, "future": 1, "unparsable": 1}, newest_us=NOW - 5)


def test_a_redis_error_fails_the_batch(redis_url):
    key = layout.tiles_key("t", "spend", VIEW.fingerprint(), "u")
    redis.Redis.from_url(redis_url).set(key, b"not a hash")
    writer = _sink(redis_url, sink.TILES)
    row = _tile_row("u", CURRENT, count=1, amounts=[1.0], nan=False, first=(CURRENT, "x"), ns=[])
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        writer.write(_columns(sink.TILES, [row]))
    redis.Redis.from_url(redis_url).delete(key)
    assert writer.write(_columns(sink.TILES, [row])) == 2   # the next batch goes through


def test_a_batch_of_the_wrong_shape_is_refused(redis_url):
    with pytest.raises(ValueError, match="takes 5 columns, not 2"):
        _sink(redis_url, sink.DROPPED).write([["late"], [1]])
