"""The differential test bodies, written once for every engine that must agree.

A generated data set that stresses the edges (events on tile and window
boundaries, duplicate timestamps, nulls, negative, tiny and huge values,
NaN and infinities, unicode, empty and escaped keys, rows out of order,
labels before any event), one plan covering every aggregation, and checks:

* `check_export(table, labels, events)`: an exported training set equals the
  brute-force reference (tests/reference.py), value for value, bit for bit;
* `check_served(get_served, events, t, export)`: values served at time t
  equal the export for labels at t. `get_served(entities, t)` is how an
  engine's served values are read (batch: materialize, then gRPC; the
  streaming job can pass its own), so the body is shared.
"""
from __future__ import annotations

import asyncio
import datetime as dt
import math
import random
import struct
import threading
from pathlib import Path
from typing import Callable

import pyarrow as pa
import pyarrow.parquet as pq

from dsl.plan import (Aggregation, Binary, Call, Column, Entity, Literal, Plan, RowFeature,
                      Service, Source, Unary, View)
from featurestore.backends import unicode_case
from tests.reference import RefAggregation, RefView, features_at

US = 1_000_000
MIN, HOUR, DAY = 60 * US, 3600 * US, 86400 * US
TILE = 5 * MIN
T0 = int(dt.datetime(2026, 1, 10, tzinfo=dt.timezone.utc).timestamp()) * US
SPAN = 2 * DAY
PROJECT = "diff"

SCHEMA = (("user", "string"), ("shop", "int64"), ("amount", "float64"), ("qty", "int64"),
          ("category", "string"), ("flag", "bool"), ("paid_at", "timestamp"), ("kind", "string"),
          ("ts", "timestamp"))
ARROW = {"string": pa.string(), "int64": pa.int64(), "float64": pa.float64(), "bool": pa.bool_(),
         "timestamp": pa.timestamp("us", "UTC")}
USERS = ["u1", "u2", "u3", "", "größe", "日本😀", "a|b{c}:d%", "x'\"y\\z", "big", "wild", "nan"]
SHOPS = [1, 2, -5, 2 ** 62]


def _col(name: str) -> Column:
    return Column(name, dict(SCHEMA)[name])


def _qty_at_least_10():
    return (Binary(">=", _col("qty"), Literal(10, "int64"), "bool"),
            lambda e: None if e["qty"] is None else e["qty"] >= 10)


def _case_mapped():
    """upper, lower and length where Java's own functions would differ from
    the DSL's (featurestore.backends.unicode_case): an expanding upper, a
    dotted capital I, a final sigma, code points outside the BMP."""
    category = _col("category")
    tests = [("upper", "STRAẞE"), ("upper", "ﬃ"), ("lower", "i"), ("lower", "σασ")]
    plan = Binary("=", Call("length", (category,), "int64"), Literal(2, "int64"), "bool")
    for function, text in tests:
        call = Call(function, (category,), "string")
        plan = Binary("or", Binary("=", call, Literal(text, "string"), "bool"), plan, "bool")
    mapped = {"upper": unicode_case.upper, "lower": unicode_case.lower}

    def ref(e: dict):
        c = e["category"]
        return None if c is None else (any(mapped[f](c) == text for f, text in tests)
                                       or len(c) == 2)
    return plan, ref


def _duckdb_order(x: float) -> tuple:
    """How the engines compare floats (DuckDB's order): NaN equals NaN and is
    above every number; -0.0 equals 0.0."""
    return (1, 0.0) if x != x else (0, x + 0.0)


def _compare(op: str, left: str | None, right: str | None = None, *, value=None,
             negate_right: bool = False):
    """`left <op> right` (a column, minus a column, or a literal) for the
    engines and for the reference: comparisons of floats with NaN on
    either side, and of ints with floats."""
    def operand(name: str | None, negate: bool = False):
        if name is None:
            return Literal(value, "float64" if isinstance(value, float) else "int64")
        column = _col(name)
        return Unary("-", column, column.type) if negate else column

    plan = Binary(op, operand(left), operand(right, negate_right), "bool")

    def ref(e: dict):
        x = e[left]
        y = value if right is None else e[right]
        if x is None or y is None:
            return None
        a, b = _duckdb_order(float(x)), _duckdb_order(-float(y) if negate_right else float(y))
        return {"=": a == b, "!=": a != b, "<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}[op]
    return lambda: (plan, ref)


# name, function, argument column, window, where: one line per aggregation of `buys`
BUYS_AGGREGATIONS = [
    ("n_10m", "count", None, 10 * MIN, None),
    ("n_amount_1h", "count", "amount", HOUR, None),
    ("sum_1h", "sum", "amount", HOUR, None),
    ("sum_qty_1h", "sum", "qty", HOUR, None),
    ("avg_1h", "avg", "amount", HOUR, None),
    ("avg_qty_1d", "avg", "qty", DAY, None),
    ("min_1h", "min", "amount", HOUR, None),
    ("max_category_1h", "max", "category", HOUR, None),
    ("min_paid_1d", "min", "paid_at", DAY, None),
    ("max_qty_10m", "max", "qty", 10 * MIN, None),
    ("first_1h", "first", "amount", HOUR, None),
    ("last_category_1h", "last", "category", HOUR, None),
    ("first_flag_1d", "first", "flag", DAY, None),
    ("last_paid_1h", "last", "paid_at", HOUR, None),
    ("distinct_categories_1h", "count_distinct", "category", HOUR, None),
    ("distinct_amounts_1d", "count_distinct", "amount", DAY, None),
    ("stddev_1h", "stddev", "amount", HOUR, None),
    ("variance_qty_1h", "variance", "qty", HOUR, None),
    ("variance_1d", "variance", "amount", DAY, None),
    ("stddev_qty_1d", "stddev", "qty", DAY, None),
    ("big_1h", "count", None, HOUR, _qty_at_least_10),
    # over a day: the stream test serves one time, and its last day holds NaN
    ("min_amount_1d", "min", "amount", DAY, None),
    ("max_amount_1d", "max", "amount", DAY, None),
    ("last_amount_1d", "last", "amount", DAY, None),
    ("over_100_1d", "count", None, DAY, _compare(">", "amount", value=100)),
    ("at_most_tenth_1d", "count", None, DAY, _compare("<=", "amount", value=0.1)),
    ("not_self_1d", "count", None, DAY, _compare("!=", "amount", "amount")),
    ("at_least_minus_1d", "count", None, DAY, _compare(">=", "amount", "amount",
                                                        negate_right=True)),
    ("qty_below_amount_1d", "count", None, DAY, _compare("<", "qty", "amount")),
    ("big_amount_1d", "sum", "amount", DAY, _qty_at_least_10),
    ("case_mapped_1d", "count", None, DAY, _case_mapped),
    ("n_all", "count", None, None, None),            # no window: the ttl (1d)
    ("sum_qty_all", "sum", "qty", None, None),
]
BUYS_ROWS = ["amount", "category", "qty", "paid_at", "flag"]
# the view without a ttl: windows without `over` reach all history
SHOPS_AGGREGATIONS = [
    ("n_ever", "count", None, None, None),
    ("distinct_categories_ever", "count_distinct", "category", None, None),
    ("max_qty_ever", "max", "qty", None, None),
    ("sum_2h", "sum", "amount", 2 * HOUR, None),
]


def _output_type(function: str, arg_type: str | None) -> str:
    if function in ("count", "count_distinct"):
        return "int64"
    if function in ("avg", "stddev", "variance"):
        return "float64"
    return arg_type


def _view(name, entity, keys, tile, ttl, rows, aggregations) -> tuple[View, RefView]:
    """The same view for the engines (a plan) and for the reference."""
    kind_filter = Binary("!=", _col("kind"), Literal("test", "string"), "bool")
    plan_aggs, ref_aggs = [], []
    for feature, function, arg, window, where in aggregations:
        arg_type = dict(SCHEMA)[arg] if arg else None
        plan_where, ref_where = where() if where else (None, None)
        plan_aggs.append(Aggregation(feature, function, _col(arg) if arg else None, plan_where,
                                     window, _output_type(function, arg_type)))
        ref_aggs.append(RefAggregation(feature, function, (lambda e, c=arg: e[c]) if arg else None,
                                       arg_type, ref_where, window))
    view = View(name, entity, tuple((k, dict(SCHEMA)[k]) for k in keys), "events", kind_filter,
                tile, ttl, tuple(RowFeature(f"{name}_last_{c}", _col(c), dict(SCHEMA)[c])
                                 for c in rows), tuple(plan_aggs))
    ref = RefView(name, tuple(keys), tile, ttl,
                  lambda e: None if e["kind"] is None else e["kind"] != "test",
                  tuple((f"{name}_last_{c}", lambda e, c=c: e[c]) for c in rows), tuple(ref_aggs))
    return view, ref


# the numbers of `buys` again, in a view whose every state has a fixed width:
# its tiles are binary (featurestore.layout.TileCodec), JSON where a sum
# outgrows 64 bits (the wild user's), while `buys` and `shops` stay JSON
NUMS_AGGREGATIONS = [
    (f"num_{name}", function, arg, window, where)
    for name, function, arg, window, where in BUYS_AGGREGATIONS
    if function != "count_distinct" and (arg is None or dict(SCHEMA)[arg] != "string")]
BUYS, REF_BUYS = _view("buys", "user", ["user"], TILE, DAY, BUYS_ROWS, BUYS_AGGREGATIONS)
NUMS, REF_NUMS = _view("nums", "user", ["user"], TILE, DAY, ["qty"], NUMS_AGGREGATIONS)
SHOP_VIEW, REF_SHOPS = _view("shops", "user_shop", ["user", "shop"], HOUR, None, ["amount"],
                             SHOPS_AGGREGATIONS)
PLAN = Plan(
    entities=(Entity("user", (("user", "string"),)),
              Entity("user_shop", (("user", "string"), ("shop", "int64")))),
    sources=(Source("events", "batch", "parquet", "data/events/*.parquet", "ts", SCHEMA),),
    views=(BUYS, SHOP_VIEW, NUMS),
    services=(Service("everything", (("buys", "*"), ("shops", "*"), ("nums", "*"))),),
)
REF_VIEWS = (REF_BUYS, REF_SHOPS, REF_NUMS)
FEATURES = [*BUYS.feature_names, *SHOP_VIEW.feature_names, *NUMS.feature_names]
TIMESTAMP_FEATURES = {n for v in PLAN.views for n in v.feature_names if v.feature_type(n) == "timestamp"}


# ------------------------------------------------------------------ data
def _amount(rng: random.Random, user: str):
    if user == "wild":
        return rng.choice([math.nan, math.inf, -math.inf, 1e19, -1e300, 3.5, None])
    if user == "big":
        return rng.choice([5e18, -1e18, 1e15 + 0.5, 2.0 ** 40, -3e9, 0.25])
    if user == "nan":   # NaN among numbers and never null: min/max must count NaN, not nulls
        return rng.choice([math.nan, 2.5, -1.0])
    return rng.choice([None, 0.1, -0.0, 0.0, 2.0 ** -10, 1e-30, 2.0 ** -70 + 1, 123456.789,
                       round(rng.uniform(-50, 300), 2), round(rng.uniform(0, 1e6), 6)])


def _qty(rng: random.Random, user: str):
    if user == "big":
        return rng.choice([2 ** 63 - 1, -2 ** 63, 2 ** 62, 3])
    return rng.choice([None, 13, rng.randrange(-5, 25)])


def _boundary_ts(rng: random.Random) -> int:
    """A time on or next to a tile or window edge."""
    edge = T0 + rng.randrange(SPAN // TILE) * TILE
    return edge + rng.choice([0, 0, 0, -1, 1, TILE - 1])


def edge_events() -> list[dict]:
    """Fixed events for edges random data rarely hits: entities whose only
    input to a variance window is out of range (NaN, or |x| >= 2**31)."""
    base = {"shop": 1, "category": "a", "flag": None, "paid_at": None, "kind": "buy"}
    at = T0 + SPAN - 30 * MIN
    return [{**base, "user": "lonely_nan", "amount": math.nan, "qty": None, "ts": at},
            {**base, "user": "lonely_big", "amount": 1e10, "qty": 2 ** 62, "ts": at + 1}]


def generate_events(seed: int = 7, n: int = 1500) -> list[dict]:
    """Source rows (`ts` and `paid_at` in epoch µs), in shuffled order, with
    the `edge_events` among them."""
    rng = random.Random(seed)
    events: list[dict] = []
    for _ in range(n):
        user = rng.choice(USERS)
        if events and rng.random() < 0.2:
            ts = rng.choice(events)["ts"]       # a duplicate timestamp, often the same user
            user = rng.choice([user, rng.choice(events)["user"]])
        elif rng.random() < 0.4:
            ts = _boundary_ts(rng)
        else:
            ts = T0 + rng.randrange(SPAN)
        events.append({
            "user": user, "shop": rng.choice(SHOPS), "amount": _amount(rng, user),
            "qty": _qty(rng, user),
            "category": rng.choice([None, "a", "b", "", "é", "Z", "日本", "a\nb", "\x00", "zz",
                                    "straße", "ﬃ", "İ", "ΣΑΣ", "𐐀𐐨"]),
            "flag": rng.choice([None, True, False]),
            "paid_at": rng.choice([None, ts - rng.randrange(DAY), T0 - 5 * DAY]),
            "kind": rng.choice(["buy"] * 6 + ["test"]), "ts": ts})
    events += edge_events()
    rng.shuffle(events)
    return events


def generate_labels(events: list[dict], seed: int = 8, n: int = 700) -> list[dict]:
    """Labels at times that put events on window edges, plus labels before any
    event, duplicates and unknown entities; extra columns ride along."""
    rng = random.Random(seed)
    labels = []
    for i in range(n):
        e = rng.choice(events)
        offset = rng.choice([0, -1, 1, TILE, TILE - 1, 10 * MIN, HOUR, HOUR + TILE - 1, DAY,
                             DAY + 1, 2 * HOUR, -(e["ts"] % TILE)])
        t = rng.choice([e["ts"] + offset] * 8 + [T0 - DAY, T0 + SPAN + HOUR])
        user = e["user"] if rng.random() < 0.95 else "nobody"
        labels.append({"user": user, "shop": rng.choice([e["shop"], 7]),
                       "event_timestamp": t, "label": i % 2, "weight": rng.random(),
                       "note": rng.choice(["ok", "日本", None])})
    labels += labels[:5]  # exact duplicates stay, in place
    for e in edge_events():
        for t in (e["ts"], e["ts"] + HOUR):
            labels.append({"user": e["user"], "shop": e["shop"], "event_timestamp": t,
                           "label": 1, "weight": 0.5, "note": None})
    return labels


def write_events(root: Path, events: list[dict], files: int = 3) -> None:
    folder = root / "data" / "events"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        part = events[i::files]
        columns = {name: pa.array([e[name] for e in part],
                                  pa.int64() if type_ == "timestamp" else ARROW[type_])
                   for name, type_ in SCHEMA}
        table = pa.table({n: c.cast(ARROW[t]) if t == "timestamp" else c
                          for (n, t), c in zip(SCHEMA, columns.values())})
        pq.write_table(table, folder / f"part-{i}.parquet")


def labels_table(labels: list[dict]) -> pa.Table:
    return pa.table({
        "user": pa.array([r["user"] for r in labels], pa.string()),
        "shop": pa.array([r["shop"] for r in labels], pa.int64()),
        "event_timestamp": pa.array([r["event_timestamp"] for r in labels], pa.int64())
        .cast(pa.timestamp("us", "UTC")),
        "label": pa.array([r["label"] for r in labels], pa.int64()),
        "weight": pa.array([r["weight"] for r in labels], pa.float64()),
        "note": pa.array([r["note"] for r in labels], pa.string()),
    })


# ------------------------------------------------------------------ checks
def expected(events: list[dict], user: str, shop: int, t: int) -> dict[str, object]:
    """Every feature of the plan for one label, from the reference."""
    out = features_at(REF_BUYS, events, (user,), t)
    out.update(features_at(REF_SHOPS, events, (user, shop), t))
    out.update(features_at(REF_NUMS, events, (user,), t))
    return out


def same(a, b) -> bool:
    """Bit-exact equality: NaN equals NaN, -0.0 differs from 0.0."""
    if isinstance(a, float) and isinstance(b, float):
        return struct.pack("<d", a) == struct.pack("<d", b) or (math.isnan(a) and math.isnan(b))
    return type(a) is type(b) and a == b


def as_micros(value):
    """Timestamps from Arrow or the client as epoch microseconds."""
    if isinstance(value, dt.datetime):
        return (value - dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)) // dt.timedelta(microseconds=1)
    return value


def check_export(table: pa.Table, labels: list[dict], events: list[dict]) -> None:
    """The exported training set equals the reference, bit for bit, with the
    label columns as given and in the labels' order."""
    rows = table.to_pylist()
    assert len(rows) == len(labels)
    mismatches = []
    for row, label in zip(rows, labels):
        assert as_micros(row["event_timestamp"]) == label["event_timestamp"]
        assert [row[c] for c in ("user", "shop", "label", "note")] == \
            [label[c] for c in ("user", "shop", "label", "note")]
        assert same(row["weight"], label["weight"])
        want = expected(events, label["user"], label["shop"], label["event_timestamp"])
        for name in FEATURES:
            got = as_micros(row[name]) if name in TIMESTAMP_FEATURES else row[name]
            if not same(got, want[name]):
                mismatches.append((label["user"], label["shop"], label["event_timestamp"], name,
                                   got, want[name]))
    assert not mismatches, f"{len(mismatches)} mismatches, e.g. {mismatches[:5]}"


Served = Callable[[list[tuple[str, int]], int], dict[str, list]]


def check_served(get_served: Served, export_labels: Callable[[pa.Table], pa.Table],
                 events: list[dict], t: int) -> None:
    """Values served at time t equal the export of labels (entity, t), for
    every feature of the plan and every entity (plus an unknown one).

    `get_served(entities, t)` returns feature name -> one value per entity,
    None where the server has no value; `export_labels(labels)` exports."""
    entities = sorted({(e["user"], e["shop"]) for e in events}) + [("nobody", 7)]
    served = get_served(entities, t)
    rows = export_labels(labels_table([
        {"user": u, "shop": s, "event_timestamp": t, "label": 0, "weight": 0.0, "note": None}
        for u, s in entities])).to_pylist()
    assert len(rows) == len(entities)
    mismatches = []
    for i, ((user, shop), row) in enumerate(zip(entities, rows)):
        assert (row["user"], row["shop"], as_micros(row["event_timestamp"])) == (user, shop, t)
        for name in FEATURES:
            got = as_micros(served[name][i]) if name in TIMESTAMP_FEATURES else served[name][i]
            want = as_micros(row[name]) if name in TIMESTAMP_FEATURES else row[name]
            if not same(got, want):
                mismatches.append((user, shop, name, got, want))
    assert not mismatches, f"{len(mismatches)} mismatches, e.g. {mismatches[:5]}"


def served_at(redis_url: str, entities, t: int) -> dict[str, list]:
    """Every feature of the service "everything" for `entities` ((user, shop)
    pairs), from a real gRPC server over `redis_url` with its clock at t."""
    from featurestore.backends.serving_manifest import manifest_from_plan

    return with_server(manifest_from_plan(PLAN, PROJECT), redis_url, t,
                       lambda address: _lookup(address, entities))


def with_server(manifest, redis_url: str, t: int, use: Callable[[str], object]):
    """`use(address)` of a real gRPC server of `manifest` over `redis_url`
    whose clock says t; the server stops afterwards."""
    from serving.server import start_server

    result: list = []

    async def run():
        server = await start_server(manifest, redis_url, port=0, clock=lambda: t)
        try:
            loop = asyncio.get_running_loop()
            result.append(await loop.run_in_executor(None, use, server.address))
        except BaseException as e:   # raised again on the caller's thread
            result.append(e)
        finally:
            await server.stop(None)

    # grpc.aio wants an event loop of its own: the server runs on a thread.
    thread = threading.Thread(target=lambda: asyncio.run(run()))
    thread.start()
    thread.join()
    if isinstance(result[0], BaseException):
        raise result[0]
    return result[0]


def _lookup(address: str, entities) -> dict[str, list]:
    from serving.client import FeatureClient

    with FeatureClient(address) as client:
        return client.get_online_features(
            service="everything",
            entities={"user": [u for u, _ in entities], "shop": [s for _, s in entities]}).to_dict()
