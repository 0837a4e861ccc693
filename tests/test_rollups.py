"""Rollup tiles (layout v3 on): a window reads the few tiles and rollups that
cover it, and gets exactly the value of all its tiles.

* `windows.cover` is exact (every fine tile of the window once, nothing
  else) and small, for any window, time and set of sizes;
* materialize writes every rollup as the merge of the tiles inside it, in
  full and in range runs alike;
* values served through gRPC for windows of days (read from day and hour
  rollups) equal the brute-force reference, every aggregation, at times on
  and next to tile, hour and day edges.
"""
from __future__ import annotations

import random

import pytest
import redis

from dsl.plan import Plan, Service
from featurestore import layout, tiles, windows
from featurestore.backends import duckdb_sql
from featurestore.backends.serving_manifest import manifest_from_plan
from featurestore.materialize import materialize
from serving import lookup
from tests import differential as d
from tests.reference import features_at

US, MIN, HOUR, DAY = d.US, d.MIN, d.HOUR, d.DAY
TILE = d.TILE


# ------------------------------------------------------------------ cover
def _fine_starts(parts, fine):
    out = []
    for size, start in parts:
        assert start % size == 0
        out += range(start, start + size, fine)
    return out


@pytest.mark.parametrize("seed", range(200))
def test_cover_is_exactly_the_window_and_small(seed):
    rng = random.Random(seed)
    fine = rng.choice([MIN, TILE, 15 * MIN, HOUR])
    sizes = windows.levels(type("V", (), {"tile_us": fine, "ttl_us": None, "aggregations": ()}))
    t = rng.randrange(-3 * DAY, 40 * DAY) + rng.choice([0, -1, 1])
    width = rng.choice([0, fine, HOUR, DAY, 7 * DAY, 30 * DAY]) + fine * rng.randrange(3)
    lower = windows.window_start(t, fine, width)
    parts = windows.cover(lower, t, sizes)
    floor = t - t % fine
    assert _fine_starts(parts, fine) == list(range(lower, floor + 1, fine))
    # at most (ratio - 1) tiles of each size on each side, plus the coarsest in the middle
    ratios = [b // a for a, b in zip(sizes, sizes[1:])]
    assert len(parts) <= 2 * sum(r - 1 for r in ratios) + width // sizes[-1] + 2


def test_levels_follow_the_longest_window():
    def view(tile, ttl, *spans):
        aggs = tuple(type("A", (), {"window_us": s})() for s in spans)
        return type("V", (), {"tile_us": tile, "ttl_us": ttl, "aggregations": aggs})()
    assert windows.levels(view(TILE, DAY, HOUR)) == (TILE,)
    assert windows.levels(view(TILE, DAY, HOUR, DAY)) == (TILE, HOUR)
    assert windows.levels(view(TILE, 30 * DAY, DAY, 7 * DAY)) == (TILE, HOUR, DAY)
    assert windows.levels(view(TILE, 30 * DAY, None)) == (TILE, HOUR, DAY)     # the ttl
    assert windows.levels(view(HOUR, None, None)) == (HOUR, DAY)               # all history
    assert windows.levels(view(7 * MIN, 30 * DAY, 7 * DAY)) == (7 * MIN,)      # 1h is no multiple


def test_as_of_instants_end_a_tile_of_every_size():
    t = 10 * DAY + 7 * HOUR + 3 * MIN + 5
    assert windows.as_of_instant(t, [TILE]) == 10 * DAY + 7 * HOUR - 1
    assert windows.as_of_instant(t, [TILE, HOUR]) == 10 * DAY + 7 * HOUR - 1
    assert windows.as_of_instant(10 * DAY - 1, [TILE, HOUR]) == 10 * DAY - 1
    assert windows.as_of_instant(t, [7 * MIN, 5 * MIN]) % (35 * MIN) == 35 * MIN - 1


# ------------------------------------------------------------------ data
SPAN = 4 * DAY
AGGREGATIONS = [
    ("n_3d", "count", None, 3 * DAY, None),
    ("sum_3d", "sum", "amount", 3 * DAY, None),
    ("sum_qty_2d", "sum", "qty", 2 * DAY, None),
    ("avg_3d", "avg", "amount", 3 * DAY, None),
    ("min_3d", "min", "amount", 3 * DAY, None),
    ("max_category_3d", "max", "category", 3 * DAY, None),
    ("first_3d", "first", "amount", 3 * DAY, None),
    ("last_category_2d", "last", "category", 2 * DAY, None),
    ("distinct_3d", "count_distinct", "category", 3 * DAY, None),
    ("distinct_amounts_3d", "count_distinct", "amount", 3 * DAY, None),   # NaN counts once
    ("stddev_3d", "stddev", "amount", 3 * DAY, None),
    ("variance_qty_3d", "variance", "qty", 3 * DAY, None),
    ("n_1h", "count", None, HOUR, None),
    ("n_all", "count", None, None, None),          # the ttl: 3 days
]
VIEW, REF = d._view("long", "user", ["user"], TILE, 3 * DAY, [], AGGREGATIONS)
PLAN = Plan(entities=d.PLAN.entities[:1], sources=d.PLAN.sources, views=(VIEW,),
            services=(Service("all", (("long", "*"),)),))


@pytest.fixture(scope="module")
def events():
    rng = random.Random(5)
    out = []
    for e in d.generate_events(seed=13, n=1500):   # two days from T0 ...
        e = dict(e)
        if rng.random() < 0.5:                     # ... spread over four
            e["ts"] = d.T0 + (e["ts"] - d.T0) * 2 + rng.choice([0, 0, -1, 1])
        out.append(e)
    for k in range(6):                             # on hour and day edges
        for offset in (-1, 0, 1):
            out.append({**out[k], "ts": d.T0 + (k + 1) * DAY + offset})
            out.append({**out[k + 6], "ts": d.T0 + k * HOUR + 3 * HOUR + offset})
    return out


def _served(redis_url, users, t):
    def get(address):
        from serving.client import FeatureClient
        with FeatureClient(address) as client:
            return client.get_online_features(service="all", entities={"user": users}).to_dict()
    return d.with_server(manifest_from_plan(PLAN, d.PROJECT), redis_url, t, get)


TIMES = [d.T0 + SPAN - 7 * MIN + 3, d.T0 + 3 * DAY, d.T0 + 3 * DAY - 1, d.T0 + 3 * DAY + HOUR,
         d.T0 + 2 * DAY + 5 * HOUR + TILE - 1, d.T0 + SPAN + HOUR]


@pytest.mark.parametrize("t", TIMES)
def test_windows_of_days_serve_the_reference(tmp_path, redis_url, events, t):
    d.write_events(tmp_path, events)
    materialize(PLAN, tmp_path, d.PROJECT, redis_url, end_us=t)
    users = sorted({e["user"] for e in events}) + ["nobody"]
    served = _served(redis_url, users, t)
    mismatches = []
    for i, user in enumerate(users):
        want = features_at(REF, events, (user,), t)
        for name, _, _, _, _ in AGGREGATIONS:
            got = served[name][i]
            if got is None and want[name] == 0:
                continue  # NOT_FOUND online is a count of nothing offline
            if not d.same(got, want[name]):
                mismatches.append((user, name, got, want[name]))
    assert not mismatches, f"{len(mismatches)} mismatches, e.g. {mismatches[:5]}"


def _hashes(url):
    r = redis.Redis.from_url(url)
    return {k: r.hgetall(k) for k in r.keys("*:t")}


def test_every_rollup_is_the_merge_of_its_tiles(tmp_path, redis_url, events):
    d.write_events(tmp_path, events)
    materialize(PLAN, tmp_path, d.PROJECT, redis_url, end_us=TIMES[0])
    aggregations = [lookup.tile_aggregation(f) for f in
                    manifest_from_plan(PLAN, d.PROJECT).views["long"].aggregations]
    codec = duckdb_sql.tile_codec(VIEW)
    rollups, lower = 0, windows.window_start(TIMES[0], TILE, windows.history_us(VIEW))
    for raw in _hashes(redis_url).values():
        parsed = {layout.parse_tile_field(f): v for f, v in raw.items()}
        fine = {s: codec.decode(v) for (size, s), v in parsed.items() if size is None}
        for (size, start), value in parsed.items():
            if size is None:
                continue
            inside = [fine[s] for s in sorted(fine) if start <= s < start + size]
            assert inside, "a rollup without tiles"
            assert start >= lower, "a rollup that no window reads"
            assert value == codec.encode([a.merge(c) for a, c in zip(aggregations, zip(*inside))])
            rollups += 1
    assert rollups > 100


def test_a_range_run_rewrites_the_rollups_it_touches_whole(tmp_path, redis_url, events):
    end = TIMES[0]
    d.write_events(tmp_path, events)
    materialize(PLAN, tmp_path, d.PROJECT, redis_url, end_us=end)
    full = _hashes(redis_url)
    redis.Redis.from_url(redis_url).flushall()
    early = [e for e in events if e["ts"] <= d.T0 + DAY + 7 * HOUR + 2 * MIN]
    d.write_events(tmp_path, early)
    materialize(PLAN, tmp_path, d.PROJECT, redis_url, end_us=end)
    d.write_events(tmp_path, events)       # the rest arrives: a run from mid-hour, mid-day
    materialize(PLAN, tmp_path, d.PROJECT, redis_url, end_us=end,
                start_us=d.T0 + DAY + 7 * HOUR + 2 * MIN + 1)
    assert _hashes(redis_url) == full


def test_tile_states_merge_associatively():
    """What rollups rest on: merging merged states is merging all of them."""
    rng = random.Random(3)
    for function, type_ in [("count", None), ("sum", "float64"), ("avg", "int64"),
                            ("min", "string"), ("last", "float64"), ("count_distinct", "int64"),
                            ("stddev", "float64"), ("variance", "int64")]:
        agg = tiles.aggregation(function, type_)
        value = {"float64": lambda: rng.choice([0.5, -2.25, 1e10, float("nan")]),
                 "int64": lambda: rng.randrange(-9, 9), "string": lambda: rng.choice("abc"),
                 None: lambda: None}[type_]
        states = [agg.state_of([(rng.randrange(100), value()) for _ in range(rng.randrange(4))])
                  for _ in range(12)]
        grouped = [agg.merge(states[i:i + 4]) for i in range(0, 12, 4)]
        assert repr(agg.value(agg.merge(grouped))) == repr(agg.value(agg.merge(states)))
