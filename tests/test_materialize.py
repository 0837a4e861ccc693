"""Batch materialization into a real Redis: tile contents, latest rows,
idempotency and key expiry, from a plan built by hand (no DSL involved)."""
from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import redis

from dsl.plan import Aggregation, Binary, Column, Entity, Literal, Plan, RowFeature, Source, View
from featurestore import layout
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
    decoded = {layout.parse_tile_field(f): layout.decode_tile(v) for f, v in tiles.items()}
    current = (END // TILE) * TILE
    # float sums are fixed point: [sum(trunc(x)), sum(fraction * 2**62), inputs out of range]
    assert decoded == {  # (size, start): the view's windows are too short for rollups
        (None, current): [2, [160, 0, 0], [2, 160, 0, 0], 150.0, 1],
        (None, current - 2 * TILE): [1, [7, 0, 0], [1, 7, 0, 0], 7.0, 0],
    }
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
