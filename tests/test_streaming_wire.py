"""streaming.wire both ways, through a real PyFlink: the job's own SQL for a
view's tiles and latest rows (streaming.flink_states over streaming.wire,
its arguments as streaming.flink_sql passes them to the writers) runs once
per session in a batch environment over a table of awkward values, and the
parsers of streaming.wire read its output back to the values that went in.

Every row is an entity of its own (each value must read back exactly, in
every state column form and as a latest row), and also a member of a group
(the forms must merge as featurestore.tiles says: 128-bit sums, NaN above
every number, ties on time broken by value, the latest row chosen by the
batch engine's order). Batch mode, not streaming: the same SQL and the same
encodings, without a streaming job's wait for its sources.
"""
from __future__ import annotations

import math
import struct
import warnings

import pytest

from dsl.plan import Aggregation, Column, RowFeature, View
from featurestore import tiles
from streaming import flink_sql, flink_states, sink, wire
from streaming.flink_expr import ident

MIN, HOUR = 60_000_000, 3_600_000_000
TILE = 5 * MIN
T = 1_700_000_000_000_000 // TILE * TILE        # a tile start
# name, type; timestamps given in epoch µs, as the view stores them
COLUMNS = (("i64", "int64"), ("i32", "int32"), ("f64", "float64"), ("f32", "float32"),
           ("b", "bool"), ("s", "string"), ("t", "timestamp"))
I64_MAX, I64_MIN = 2 ** 63 - 1, -2 ** 63
NAN, INF = math.nan, math.inf
YEAR_1, YEAR_9999 = -62_135_596_800_000_000, 253_402_300_799_999_999   # first and last µs


def _f32(v: float | None) -> float | None:
    """What a FLOAT column holds of v (v is exact in float32 unless it is 0.1)."""
    return None if v is None else struct.unpack("<f", struct.pack("<f", v))[0]


def _group(name: str, ts: list[int], **values: list) -> list[dict]:
    """Rows of one group: event times and, per column, values (None beyond a list)."""
    return [{"group": name, "ts": t, **{c: (values.get(c) or [])[i]
                                        if i < len(values.get(c) or []) else None
                                        for c, _ in COLUMNS}}
            for i, t in enumerate(ts)]


STRINGS = ["", "it's", 'say "hi"', "back\\slash\\", "new\nline\r\n", "tab\t", "a\0b", "\0",
           "\0\0\1", "a\0", "日本😀", "ß", "İ", "ﬃ", "|1|", "\x7f", "\uffff", "𝔘", "zz"]
ROWS = [
    *_group("int64", [T + i for i in range(6)],
            i64=[I64_MAX, I64_MAX, I64_MAX, I64_MIN, -1, 0],
            i32=[2 ** 31 - 1, -2 ** 31, 0, -1, 7],
            t=[YEAR_1, YEAR_9999, 0, -1, 1, 1_700_000_000_123_456]),
    *_group("float", [T + 7 * i for i in range(12)],
            f64=[2.0 ** 63, 9.2e18, -(2.0 ** 63) + 1024, 1.7976931348623157e308, -1e300,
                 2.0 ** 31, 2.0 ** 31 - 2.0 ** -20, 0.1, -2.5, 5e-324, 2.2250738585072014e-308,
                 -5e-324],
            f32=[3.4028234663852886e38, 1.401298464324817e-45, -1.5, 0.1, 2.0 ** 31]),
    *_group("special", [T + 11 * i for i in range(7)],
            f64=[NAN, INF, -INF, -0.0, 0.0, 1.0, NAN],
            f32=[NAN, -0.0, INF, -INF, 0.0],
            b=[True, False, None, True]),
    *_group("text", [T + 5 * i for i in range(len(STRINGS))], s=STRINGS,
            b=[False] * 3),
    *_group("nulls", [T + 1, T + 2]),
    # ties on time: first and last, and the latest row, break them by value
    *_group("ties", [T + 100] * 5, i64=[5, -5, 5, None, 0], f64=[2.0, NAN, -0.0, 0.0, -1.0],
            s=["b", "a", "b\0", None, "ba"], b=[True, False, True, None, False],
            t=[3, 2, 1, 0, 4]),
    *_group("zeros", [T + 100] * 2, f64=[0.0, -0.0], f32=[-0.0, 0.0]),
    # one group over two tiles, and rows before 1970
    *_group("tiles", [T - 1, T, -TILE - 7, -1], i64=[1, 2, 3, 4], s=["x", "y", "z", "w"],
            f64=[0.5, -0.5, 1e-300, NAN]),
]
for n, row in enumerate(ROWS):
    row["id"] = n
    row["f32"] = _f32(row["f32"])


def _agg(function: str, column: str | None, where: str | None = None) -> Aggregation:
    type_ = dict(COLUMNS).get(column)
    out = {"count": "int64", "count_distinct": "int64", "avg": "float64", "variance": "float64",
           "stddev": "float64"}.get(function, "float64" if type_ == "float32" else type_)
    if function == "sum":
        out = "float64" if type_ in ("float64", "float32") else "int64"
    return Aggregation(f"{function}_{column or 'rows'}{'_' + where if where else ''}", function,
                       None if column is None else Column(column, type_),
                       None if where is None else Column(where, "bool"), HOUR, out)


AGGREGATIONS = (
    _agg("count", None), _agg("count", None, "b"), _agg("count", "f64"),
    *(_agg(f, c) for f in ("sum", "avg", "variance") for c in ("i64", "i32", "f64", "f32")),
    *(_agg(f, c) for f in ("min", "max", "first", "last", "count_distinct")
      for c, _ in COLUMNS),
    _agg("count_distinct", "i64", "b"), _agg("last", "s", "b"),
)
VIEW = View("wire", "user", (("user", "string"),), "rows", None, TILE, HOUR,
            tuple(RowFeature(c, Column(c, t), t) for c, t in COLUMNS), AGGREGATIONS)
OUT = flink_sql.view_output(VIEW)


# ---------------------------------------------------------------- Flink, once
def _raw_table(env):
    from pyflink.table import DataTypes

    types = {"int64": DataTypes.BIGINT(), "int32": DataTypes.INT(), "float64": DataTypes.DOUBLE(),
             "float32": DataTypes.FLOAT(), "bool": DataTypes.BOOLEAN(),
             "string": DataTypes.STRING(), "timestamp": DataTypes.BIGINT()}
    schema = DataTypes.ROW([DataTypes.FIELD("id", DataTypes.BIGINT()),
                            DataTypes.FIELD("grp", DataTypes.STRING()),
                            DataTypes.FIELD("ts", DataTypes.BIGINT()),
                            *(DataTypes.FIELD(c, types[t]) for c, t in COLUMNS)])
    return env.from_elements([(r["id"], r["group"], r["ts"], *(r[c] for c, _ in COLUMNS))
                              for r in ROWS], schema)


def _rows_sql() -> str:
    """The view's rows as streaming.flink_sql makes them: keys, `__ts`, the
    columns (timestamps as TIMESTAMP_LTZ(6)); each row twice, as an entity of
    its own and as a member of its group."""
    values = ", ".join("TO_TIMESTAMP_LTZ(`t`, 6) AS `t`" if t == "timestamp" else ident(c)
                       for c, t in COLUMNS)
    return ("CREATE TEMPORARY VIEW `wire__rows` AS\n"
            f"SELECT `user`, `ts` AS `__ts`, {values} FROM (\n"
            "  SELECT CONCAT('row', CAST(`id` AS STRING)) AS `user`, * FROM `raw`\n"
            "  UNION ALL SELECT `grp` AS `user`, * FROM `raw`)")


def _collect(env, view: str, part: str) -> list[list]:
    """The arguments of a part's Python function, as columns."""
    args = ", ".join(a for a, _ in flink_sql._arguments(VIEW, OUT, part))
    with env.execute_sql(f"SELECT {args} FROM {ident(view)}").collect() as rows:
        return [list(column) for column in zip(*rows)]


@pytest.fixture(scope="module")
def flink() -> dict[str, list[list]]:
    return run_in_flink()


def run_in_flink() -> dict[str, list[list]]:
    """What Flink hands the writers of the view's tiles and latest rows."""
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    from pyflink.common import Configuration
    from pyflink.table import EnvironmentSettings, TableEnvironment

    conf = Configuration.from_dict({"table.local-time-zone": "UTC", "parallelism.default": "1"})
    env = TableEnvironment.create(
        EnvironmentSettings.new_instance().in_batch_mode().with_configuration(conf).build())
    env.create_temporary_view("raw", _raw_table(env))
    env.execute_sql(_rows_sql())
    for statement in flink_states.tiles_sql(VIEW, "wire__rows", "TRUE"):
        env.execute_sql(statement)
    env.execute_sql(flink_states.latest_sql(VIEW, "wire__rows", "TRUE"))
    return {sink.TILES: _collect(env, "wire__tiles", sink.TILES),
            sink.LATEST: _collect(env, "wire__latest", sink.LATEST)}


# ---------------------------------------------------------------- reading back
def _by_field(part: str, columns: list[list]) -> dict[str, list]:
    """Each field's values, None where its null flag is set (wire.unflag)."""
    fields = sink.input_fields(OUT, part)
    got = dict(zip((f.name for f in fields), columns, strict=True))
    return {f.name: wire.unflag(got[f.name], got[f.flag] if f.flagged else None)
            for f in fields if not f.name.endswith("__null")}


def _states(columns: list[list]) -> dict[tuple[str, int], list]:
    """(entity, tile) -> its tile state per state slot, read by wire.DECODERS."""
    values = _by_field(sink.TILES, columns)
    per_slot = []
    for s in OUT.states:
        decoded = [wire.DECODERS[c.decoder]([values[f.name] for f in c.fields])
                   for c in s.columns]
        agg = tiles.aggregation(s.function, s.input_type)
        per_slot.append([agg.state(list(cols)) for cols in zip(*decoded)])
    return {(user, tile): list(states)
            for user, tile, *states in zip(values["k0"], values["tile"], *per_slot)}


def _groups() -> dict[tuple[str, int], list[dict]]:
    out: dict[tuple[str, int], list[dict]] = {}
    for row in ROWS:
        tile = row["ts"] - row["ts"] % TILE
        for user in (f"row{row['id']}", row["group"]):
            out.setdefault((user, tile), []).append(row)
    return out


def _expected_states(rows: list[dict]) -> list:
    out = []
    for k in VIEW.state_owners():
        a = AGGREGATIONS[k]
        agg = tiles.aggregation(a.function, a.arg.type if a.arg is not None else None)
        kept = [r for r in rows if a.where is None or r[a.where.name] is True]
        out.append(agg.state_of([(r["ts"], None if a.arg is None else r[a.arg.name])
                                 for r in kept]))
    return out


def _same(a, b) -> bool:
    """Equal values of the same type; NaN equals NaN, -0.0 differs from 0.0."""
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) ==
                                                      math.copysign(1, b))
    return a == b


def test_every_state_form_and_row_kind_is_exercised():
    forms = {c.decoder for s in OUT.states for c in s.columns}
    assert forms == set(wire.DECODERS)
    assert set(OUT.row_kinds) == {"int", "float", "bool", "string"}
    assert {t for _, t in COLUMNS} == set(flink_sql.KINDS)


def test_tile_states_read_back_as_featurestore_tiles_computes_them(flink):
    got = _states(flink[sink.TILES])
    groups = _groups()
    assert sorted(got) == sorted(groups)
    wrong = {key: (got[key], _expected_states(rows)) for key, rows in groups.items()
             if not _same(got[key], _expected_states(rows))}
    assert not wrong


def _latest_key(row: dict) -> tuple:
    """The batch engine's order of rows for the latest one (the last is the
    greatest): event time, then each value (null lowest, NaN highest, -0.0
    equal to 0.0), then the signs of float zeros (-0.0 above)."""
    values, signs = [], []
    for c, t in COLUMNS:
        v = row[c]
        if t in ("float64", "float32"):
            signs.append(v is not None and v == 0 and math.copysign(1, v) < 0)
            v = None if v is None else tiles.order_key(v + 0.0)
        values.append((0,) if v is None else (1, v))
    return (row["ts"], *values, *signs)


def test_latest_rows_read_back_exactly_and_are_the_batch_engines_choice(flink):
    columns = _by_field(sink.LATEST, flink[sink.LATEST])
    got = {user: wire.decode_latest(text, OUT.row_kinds)
           for user, text in zip(columns["k0"], columns["latest"])}
    entities: dict[str, list[dict]] = {}
    for row in ROWS:
        for user in (f"row{row['id']}", row["group"]):
            entities.setdefault(user, []).append(row)
    assert sorted(got) == sorted(entities)
    want = {}
    for user, rows in entities.items():
        latest = max(rows, key=_latest_key)
        want[user] = (latest["ts"], [latest[c] for c, _ in COLUMNS])
    wrong = {u: (got[u], want[u]) for u in want
             if got[u][0] != want[u][0] or not _same(got[u][1], want[u][1])}
    assert not wrong
