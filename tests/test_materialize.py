"""Batch materialization into a real Redis: tile contents, latest rows,
idempotency and key expiry, from a plan built by hand (no DSL involved)."""
from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import redis

from dsl.plan import Aggregation, Binary, Column, Entity, Literal, Plan, RowFeature, Source, View
from featurestore import layout, windows
from featurestore.backends import duckdb_sql
from featurestore.materialize import materialize

US = 1_000_000
TILE = 300 * US
HOUR = 3600 * US
END = 1_767_225_600 * US + 90 * US        # 2026-01-01T00:01:30Z, mid-tile

AMOUNT = Column("amount", "float64")
VIEW = View(
    name="spend", entity="user", keys=(("user_id", "string"),), source="buys",
    filter=Binary(">", AMOUNT, Literal(0, "int64"), "bool"),
    tile_us=TILE, ttl_us=2 * HOUR,
    row_features=(RowFeature("last_amount", AMOUNT, "float64"),
                  RowFeature("at", Column("ts", "timestamp"), "timestamp")),
    aggregations=(
        Aggregation("n_1h", "count", None, None, HOUR, "int64"),
        Aggregation("sum_1h", "sum", AMOUNT, None, HOUR, "float64"),
        Aggregation("avg_1h", "avg", AMOUNT, None, HOUR, "float64"),
        Aggregation("max_1h", "max", AMOUNT, None, HOUR, "float64"),
        Aggregation("big_1h", "count", None, Binary(">=", AMOUNT, Literal(100, "int64"), "bool"),
                    HOUR, "int64"),
    ),
)
PLAN = Plan(
    entities=(Entity("user", (("user_id", "string"),)),),
    sources=(Source("buys", "batch", "parquet", "data/*.parquet", "ts",
                    (("user_id", "string"), ("amount", "float64"), ("ts", "timestamp"))),),
    views=(VIEW,),
)
EVENTS = [  # user, amount, ts
    ("a", 10.0, END - 10 * US),
    ("a", 150.0, END - 10 * US),           # same tile, same instant: a tie
    ("a", -5.0, END - 1 * US),             # filtered out (refund)
    ("a", None, END - 20 * US),            # null amount: the filter is null, so out
    ("a", 7.0, END - 2 * TILE),
    ("a", 99.0, END + 1),                  # after END: not materialized
    ("b|{x}", 1.0, END - HOUR - 2 * TILE), # outside every window, within as_of's hour
]


@pytest.fixture
def repo_dir(tmp_path):
    (tmp_path / "data").mkdir()
    pq.write_table(pa.table({
        "user_id": [e[0] for e in EVENTS],
        "amount": pa.array([e[1] for e in EVENTS], pa.float64()),
        "ts": pa.array([e[2] for e in EVENTS], pa.int64()).cast(pa.timestamp("us", "UTC")),
    }), tmp_path / "data" / "buys.parquet")
    return tmp_path


def _dump(url: str) -> dict:
    r = redis.Redis.from_url(url)
    out = {}
    for k in sorted(r.keys("*")):
        out[k] = r.hgetall(k) if r.type(k) == b"hash" else r.get(k)
    return out


def test_tiles_and_rows_hold_exact_states(repo_dir, redis_url):
    stats = materialize(PLAN, repo_dir, "t", redis_url, end_us=END)
    # b's tile is beyond every window, but within the hour kept for as_of
    assert (stats.views[0].entities, stats.views[0].rows) == (2, 2)
    r = redis.Redis.from_url(redis_url)
    fp = VIEW.fingerprint()
    tiles = r.hgetall(layout.tiles_key("t", "spend", fp, layout.encode_entity_key(["a"])))
    codec = duckdb_sql.tile_codec(VIEW)
    current = (END // TILE) * TILE
    # float sums are fixed point: [sum(trunc(x)), sum(fraction * 2**62), inputs out of range]
    want = {  # (size, start): the view's windows are too short for rollups
        (None, current): [2, [160, 0, 0], [2, 160, 0, 0], 150.0, 1],
        (None, current - 2 * TILE): [1, [7, 0, 0], [1, 7, 0, 0], 7.0, 0],
    }
    assert {layout.parse_tile_field(f): v for f, v in tiles.items()} == \
        {f: codec.encode(states) for f, states in want.items()}
    assert codec.fixed and all(v[0] == layout.BINARY_TAG for v in tiles.values())
    assert {layout.parse_tile_field(f): codec.decode(v) for f, v in tiles.items()} == want
    ts, values = layout.decode_row(r.get(layout.row_key("t", "spend", fp, "a")))
    # a tie on ts goes to the greater row-feature values, whatever the read order
    assert ts == END - 10 * US and values == [150.0, END - 10 * US]
    b_key = layout.row_key("t", "spend", fp, layout.encode_entity_key(["b|{x}"]))
    assert layout.decode_row(r.get(b_key))[1] == [1.0, END - HOUR - 2 * TILE]
    assert 0 < r.pttl(b_key) <= 2 * 2 * HOUR // 1000


def test_materialize_twice_changes_nothing(repo_dir, redis_url):
    materialize(PLAN, repo_dir, "t", redis_url, end_us=END)
    first = _dump(redis_url)
    materialize(PLAN, repo_dir, "t", redis_url, end_us=END)
    assert _dump(redis_url) == first and first


def test_expression_sql_is_parenthesized_and_quoted():
    e = Binary("and", Binary(">", AMOUNT, Literal(0, "int64"), "bool"),
               Binary("!=", Column('we"ird', "string"), Literal("it's", "string"), "bool"), "bool")
    assert duckdb_sql.expr_sql(e) == '(("amount" > 0) AND ("we""ird" <> \'it\'\'s\'))'
    assert duckdb_sql.floor_to("x", 300) == "(x - (((x % 300) + 300) % 300))"


# Every aggregation whose state has a fixed width, over int64, float64, bool
# and timestamp arguments; all but count() only where `keep` is true.
KEEP = Column("keep", "bool")
FIXED_ARGS = {name: Column(name, t) for name, t in
              (("i", "int64"), ("x", "float64"), ("b", "bool"), ("t", "timestamp"))}
FIXED_AGGREGATIONS = (
    Aggregation("rows", "count", None, None, 2 * HOUR, "int64"),
    Aggregation("n_x", "count", FIXED_ARGS["x"], KEEP, 2 * HOUR, "int64"),
    *(Aggregation(f"{function}_{name}", function, FIXED_ARGS[name], KEEP, 2 * HOUR,
                  "int64" if (function, name) == ("sum", "i") else "float64")
      for function in ("sum", "avg", "variance", "stddev") for name in ("i", "x")),
    *(Aggregation(f"{function}_{name}", function, arg, KEEP, 2 * HOUR, arg.type)
      for function in ("min", "max", "first", "last") for name, arg in FIXED_ARGS.items()),
)
FIXED_VIEW = View("fixed", "user", (("user_id", "string"),), "nums", None, TILE, 2 * HOUR, (),
                  FIXED_AGGREGATIONS)
FIXED_PLAN = Plan(
    entities=(Entity("user", (("user_id", "string"),)),),
    sources=(Source("nums", "batch", "parquet", "nums/*.parquet", "ts",
                    (("user_id", "string"), ("i", "int64"), ("x", "float64"), ("b", "bool"),
                     ("t", "timestamp"), ("keep", "bool"), ("ts", "timestamp"))),),
    views=(FIXED_VIEW,),
)
BIG = 2 ** 62 + 5
FIXED_EVENTS = [  # user, i, x, b, t, keep, tiles before END's
    ("a", 3, 1.5, True, 7, True, 0),
    ("a", -8, -0.0, False, -9, True, 0),
    ("a", None, None, None, None, True, 0),
    ("a", 2 ** 40, -2.75, True, 2 ** 50, True, 1),
    ("a", 1, float("nan"), False, 1, True, 1),       # NaN: out of every range, the max
    ("a", 5, 0.75, True, 5, False, 2),               # nothing kept: null states, a zero count
    ("a", 6, 0.25, False, 6, False, 2),
    ("a", BIG, 1e300, True, 0, True, 3),             # sum(i) and its squares beyond int64: JSON
    ("a", BIG, 2.0 ** 40, False, 0, True, 3),
    ("a", 1, 0.75, True, 0, True, 4),                # fractions whose low words carry
    ("a", 2, 0.75, True, 0, True, 4),
    ("a", 3, 0.75, False, 0, True, 4),
    ("a", -2 ** 63, 2.0 ** 31 - 1, False, 0, True, 5),   # a square beyond int64: JSON
    ("b", 0, 5e-324, False, 0, True, 0),
    ("b", 9, float("inf"), True, 3, True, 13),       # an hour back: a rollup of its own
]


def _fixed_rows():
    for k, (user, i, x, b, t, keep, back) in enumerate(FIXED_EVENTS):
        yield {"user_id": user, "i": i, "x": x, "b": b, "t": t, "keep": keep,
               "ts": END - back * TILE - k * US}


def _fixed_tiles() -> dict:
    """(entity key, tiles hash field) -> the value `TileCodec.encode` gives
    the states computed by tiles.py from the rows of the tile or rollup."""
    codec = duckdb_sql.tile_codec(FIXED_VIEW)
    lower = windows.window_start(END, TILE, windows.history_us(FIXED_VIEW))
    by_field = {}
    for row in _fixed_rows():
        for n, size in enumerate(windows.levels(FIXED_VIEW)):
            start = row["ts"] - row["ts"] % size
            if start >= lower:
                field = layout.tile_field(start, size if n else None)
                by_field.setdefault((row["user_id"], field), []).append(row)
    out = {}
    for (user, field), rows in by_field.items():
        states = []
        for k in FIXED_VIEW.state_owners():
            a = FIXED_VIEW.aggregations[k]
            kept = [r for r in rows if a.where is None or r["keep"]]
            states.append(duckdb_sql.tile_aggregation(a).state_of(
                [(r["ts"], None if a.arg is None else r[a.arg.name]) for r in kept]))
        out[(user, field)] = codec.encode(states)
    return out


def test_tiles_of_fixed_width_states_are_the_codec_bytes(tmp_path, redis_url):
    rows = list(_fixed_rows())
    (tmp_path / "nums").mkdir()
    pq.write_table(pa.table({
        "user_id": [r["user_id"] for r in rows],
        "i": pa.array([r["i"] for r in rows], pa.int64()),
        "x": pa.array([r["x"] for r in rows], pa.float64()),
        "b": pa.array([r["b"] for r in rows], pa.bool_()),
        "t": pa.array([r["t"] for r in rows], pa.int64()).cast(pa.timestamp("us", "UTC")),
        "keep": pa.array([r["keep"] for r in rows], pa.bool_()),
        "ts": pa.array([r["ts"] for r in rows], pa.int64()).cast(pa.timestamp("us", "UTC")),
    }), tmp_path / "nums" / "nums.parquet")
    codec = duckdb_sql.tile_codec(FIXED_VIEW)
    assert codec.fixed and len(codec.words) == 54
    stats = materialize(FIXED_PLAN, tmp_path, "t", redis_url, end_us=END)
    want = _fixed_tiles()
    r = redis.Redis.from_url(redis_url)
    got = {}
    for user in ("a", "b"):
        key = layout.tiles_key("t", "fixed", FIXED_VIEW.fingerprint(), user)
        got.update({(user, f): v for f, v in r.hgetall(key).items()})
    assert got == want
    assert (stats.views[0].entities, stats.views[0].tiles) == (2, len(want))
    json = {(user, layout.parse_tile_field(f)) for (user, f), v in got.items()
            if v[0] != layout.BINARY_TAG}
    hour = END - END % HOUR - HOUR    # the rollup of tiles 3 and 5 back
    assert json == {("a", (None, END - END % TILE - 3 * TILE)),
                    ("a", (None, END - END % TILE - 5 * TILE)), ("a", (HOUR, hour))}
    assert any(v[0] == layout.BINARY_TAG and int.from_bytes(v[1:9], "little")
               for v in got.values())                              # null words
    assert any(b":" in f for _, f in got)                          # rollups


def test_group_commands_join_each_group_s_parts_in_order():
    import numpy as np

    from featurestore.bulk_redis import group_commands

    heads = pa.array(["x", "<a>", "<b>", "<c>"])[1:]          # sliced: an offset
    fields = pa.array(["a1", "a2", "c1"])
    values = pa.array([b"=1;", b"=2;", b"=3;"], pa.binary())
    got = group_commands(heads, [fields, values], np.array([0, 2, 2, 3]),
                         pa.array(["</a>", "</b>", "</c>"]))
    assert got.to_pylist() == [b"<a>a1=1;a2=2;</a>", b"<b></b>", b"<c>c1=3;</c>"]
    assert group_commands(heads, [fields], np.array([0, 1, 2, 3])).to_pylist() == \
        [b"<a>a1", b"<b>a2", b"<c>c1"]


def test_a_million_latest_rows_are_written_on_two_threads(tmp_path, redis_url):
    """DuckDB 1.5 stalls streaming a UNION ALL whose branches read one
    materialized CTE when it runs on two threads and the result spans
    several batches; the latest rows are computed from a table instead."""
    import threading

    import numpy as np

    n = 1_000_000
    rng = np.random.default_rng(3)
    (tmp_path / "data").mkdir()
    pq.write_table(pa.table({
        "user_id": pa.array(np.arange(n)).cast(pa.string()),
        "amount": rng.uniform(1, 100, n).round(2),
        "ts": pa.array(END - rng.integers(1, HOUR, n)).cast(pa.timestamp("us", "UTC"))}),
        tmp_path / "data" / "rows.parquet")
    view = View("latest", "user", (("user_id", "string"),), "buys", None, TILE, 2 * HOUR,
                (RowFeature("last_amount", AMOUNT, "float64"),), ())
    plan = Plan(PLAN.entities, PLAN.sources, (view,), ())
    done: list = []

    def run():
        import duckdb
        original = duckdb.connect

        def two_threads(*args, **kwargs):
            con = original(*args, **kwargs)
            con.execute("SET threads = 2")
            return con
        duckdb.connect = two_threads
        try:
            done.append(materialize(plan, tmp_path, "p", redis_url, end_us=END))
        except BaseException as e:
            done.append(e)
        finally:
            duckdb.connect = original

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(120)
    assert done, "materialize did not finish within 120 s"
    assert not isinstance(done[0], BaseException), done[0]
    assert done[0].views[0].rows == n
    assert redis.Redis.from_url(redis_url).dbsize() == n + 1   # the rows and the watermark
