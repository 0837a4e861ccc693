"""DuckDB backend: the logical plan as DuckDB SQL.

Pure functions from plan nodes to SQL text; `featurestore.materialize` runs
them. Every query reads a view's rows through `view_rows_sql`, so the filter,
the event-time conversion and the tie-break order are written once.

Columns added to a view's rows:
    __ts    event time in epoch microseconds (UTC), rounded down
    __tile  start of the row's tile in epoch microseconds

Ties on __ts never depend on the order rows are read in (a stream has no
such order): the latest row is chosen by `latest_struct_sql`, and tile states
follow `featurestore.tiles`.
"""
from __future__ import annotations

from pathlib import Path

from dsl.plan import Aggregation, Source, View
from featurestore import layout, tiles
from featurestore.backends.sql_dialect import Dialect, Unsupported

def _date_part(name: str):
    return lambda d, e, a: d.func(name, a[0])


class DuckDB(Dialect):
    """DuckDB's SQL for the DSL. Where it differs from the base: the names of
    types and functions, `length` of a list, and the casts whose text
    DuckDB spells (float and timestamp to string, string to timestamp)."""

    ENGINE = "DuckDB"
    TYPES = {**Dialect.TYPES, "string": "VARCHAR", "timestamp": "TIMESTAMP", "int32": "INTEGER"}
    BINARY = {**Dialect.BINARY, "%": "%"}
    # Date parts are UTC (`materialize.connect` sets the time zone); day_of_week
    # is ISO: Monday 1 .. Sunday 7. upper and lower are DuckDB's own: they are
    # the DSL's rule (featurestore.backends.unicode_case).
    FUNCTIONS = {
        **Dialect.FUNCTIONS,
        "length": lambda d, e, a: (d.func("len", a[0]) if e.args[0].type.startswith("list<")
                                   else d.func("length", a[0])),
        **{part: _date_part(part) for part in ("year", "month", "day", "hour", "minute")},
        "day_of_week": _date_part("isodow"),
    }
    CASTS = {
        **Dialect.CASTS,
        # float64 -> int64 truncates toward zero; null outside int64 and for NaN
        ("float64", "int64"): lambda d, x: f"TRY_CAST(trunc({x}) AS BIGINT)",
        ("bool", "string"): lambda d, x: f"CAST({x} AS VARCHAR)",       # true, false
        ("float64", "string"): lambda d, x: f"CAST({x} AS VARCHAR)",    # shortest digits
        ("timestamp", "string"): lambda d, x: f"CAST({x} AS VARCHAR)",  # 2026-01-04 13:45:30
        ("string", "timestamp"): lambda d, x: f"TRY_CAST({d.func('trim', x)} AS TIMESTAMP)",
    }

    def list_type(self, element: str) -> str:
        return element + "[]"

    def full_match(self, sql: str, pattern: str) -> str:
        return f"regexp_full_match({sql}, {self.string(pattern)})"


DUCKDB = DuckDB()
ident = DUCKDB.ident
literal = DUCKDB.literal
sql_type = DUCKDB.sql_type
expr_sql = DUCKDB.expr
cast_sql = DUCKDB.cast


def value_sql(sql: str, type: str) -> str:
    """A value as it is stored: timestamps become epoch microseconds."""
    return epoch_us_sql(sql) if type == "timestamp" else sql


def floor_to(ts: str, step_us: int | str) -> str:
    """floor(ts / step) * step for any sign (DuckDB's % truncates toward zero)."""
    return f"({ts} - ((({ts} % {step_us}) + {step_us}) % {step_us}))"


def source_sql(source: Source, root: Path) -> str:
    """The rows of a batch source, with the `filename` and `file_row_number`
    columns that order ties; a table source needs `attach_sql` run first.
    Declared columns are cast to their declared types, so a narrower type in
    the data (INTEGER for int64, DECIMAL for float64) computes and is stored
    exactly as the declared one; `featurestore.schema_check` refuses data
    whose cast would not be exact before any of this runs. Timestamps keep
    their precision: `epoch_us_sql` rounds every one down to microseconds."""
    rows = stored_source_sql(source, root)
    casts = [f"CAST({ident(c)} AS {sql_type(t)}) AS {ident(c)}"
             for c, t in source.schema if t != "timestamp"]
    return f"(SELECT * REPLACE ({', '.join(casts)}) FROM {rows})" if casts else rows


def stored_source_sql(source: Source, root: Path) -> str:
    """`source_sql` with the columns as the data holds them (no casts)."""
    if source.kind != "batch" or source.format not in ("parquet", "csv", "table", "query"):
        raise Unsupported(f"source {source.name}: {source.kind} {source.format}", "DuckDB")
    if source.format == "parquet":
        return f"read_parquet({literal(data_path(source.path, root))}, filename = true, " \
               "file_row_number = true)"
    if source.format == "csv":
        opts = dict(source.options)
        args = "".join(f", {k} = {literal(opts[o])}" for o, k in
                       (("delimiter", "delim"), ("header", "header")) if o in opts)
        rows = f"read_csv({literal(data_path(source.path, root))}, filename = true{args})"
        return f"(SELECT *, row_number() OVER () AS file_row_number FROM {rows})"
    if source.format == "table":
        rows = ".".join(ident(part) for part in (_alias(source), *source.path.split(".")))
    else:
        rows = f"({source.path})"
    # One input, read in order: its row number breaks ties.
    return f"(SELECT *, '' AS filename, row_number() OVER () AS file_row_number FROM {rows})"


def attach_sql(source: Source, root: Path) -> str | None:
    """The ATTACH statement a table source needs before `source_sql` (read-only)."""
    if source.format != "table":
        return None
    database = data_path(dict(source.options)["database"], root)
    return f"ATTACH IF NOT EXISTS {literal(database)} AS {ident(_alias(source))} (READ_ONLY)"


def _alias(source: Source) -> str:
    return f"{source.name}_db"


def data_path(path: str, root: Path) -> str:
    """A path of a source or database as DuckDB opens it (relative: to the repo root)."""
    return path if Path(path).is_absolute() else str(root / path)


def view_rows_sql(view: View, source: Source, root: Path, end_us: int,
                  start_us: int | None = None) -> str:
    """Rows of a view (after its filter) with start_us <= __ts <= end_us."""
    conds = [f"__ts <= {end_us}"]
    if start_us is not None:
        conds.append(f"__ts >= {start_us}")
    if view.filter is not None:
        conds.append(f"({expr_sql(view.filter)}) IS TRUE")
    return (f"SELECT *, {floor_to('__ts', view.tile_us)} AS __tile FROM ("
            f"SELECT *, {epoch_us_sql(ident(source.timestamp))} AS __ts "
            f"FROM {source_sql(source, root)}) WHERE " + " AND ".join(conds))


def epoch_us_sql(sql: str) -> str:
    """Epoch microseconds of a timestamp of any precision (DATE, TIMESTAMP_S to
    TIMESTAMP_NS, with or without a time zone), rounded down (toward the past,
    for any sign): times have microsecond precision (DESIGN.md), and a finer
    part is dropped the same way for events and for label times.

    One text for every DuckDB this supports: DuckDB 2 has no epoch_us() of
    TIMESTAMPTZ_NS (what pandas writes) and rounds a cast of TIMESTAMP_NS to
    TIMESTAMP to the nearest µs, so the value goes through nanoseconds where
    they can hold it. Outside that range (before 1678, after 2261) no value
    has a finer part than µs, and the cast to TIMESTAMP is exact (in UTC,
    which `materialize.connect` sets)."""
    ns = f"epoch_ns(CAST({sql} AS TIMESTAMP_NS))"
    return (f"(CASE WHEN {sql} >= TIMESTAMP '1678-01-01' AND {sql} < TIMESTAMP '2262-01-01' "
            f"THEN {floor_div(ns, 1000)} ELSE epoch_us(CAST({sql} AS TIMESTAMP)) END)")


def floor_div(sql: str, step: int | str) -> str:
    """floor(sql / step) for any sign (DuckDB's // truncates toward zero)."""
    return f"(({floor_to(sql, step)}) // {step})"


# ----------------------------------------------------- tile states (tiles.py)
# The DuckDB rendering of `featurestore.tiles`: its per-row inputs, its
# reducers, and the JSON of a tile. Column names: i<k>_<input> for inputs and
# s<k>_<column> for states, k the aggregation's position in the view.

def _exact(power_of_two: float) -> str:
    """A power of two as an exact DOUBLE: 2.0 ** 31 is 2147483648.0::DOUBLE."""
    return f"{int(power_of_two)}.0::DOUBLE"


_SUM_LIMIT = _exact(tiles.SUM_LIMIT)
_LO_SCALE = _exact(2.0 ** tiles.SUM_FRACTION_BITS)
_VARIANCE_LIMIT = _exact(tiles.VARIANCE_LIMIT)
_FIXED_SCALE = _exact(2.0 ** tiles.VARIANCE_FRACTION_BITS)
_INPUTS = {
    "row": lambda x, t, k: "1",
    "value": lambda x, t, k: _value(x, t),
    "int": lambda x, t, k: x,
    "hi": lambda x, t, k: f"CASE WHEN abs({x}) < {_SUM_LIMIT} THEN CAST(trunc({x}) AS BIGINT) END",
    "lo": lambda x, t, k: f"CASE WHEN abs({x}) < {_SUM_LIMIT} THEN CAST(trunc("
                          f"({x} - trunc({x})) * {_LO_SCALE}) AS BIGINT) END",
    "out63": lambda x, t, k: f"CASE WHEN NOT (abs({x}) < {_SUM_LIMIT}) THEN 1 END",
    "fixed": lambda x, t, k: _fixed(x, t),
    "a2": lambda x, t, k: f"((i{k}_fixed >> 32) * (i{k}_fixed >> 32))",
    "ab": lambda x, t, k: f"((i{k}_fixed >> 32) * (i{k}_fixed & 4294967295))",
    "b2": lambda x, t, k: f"(CAST(i{k}_fixed & 4294967295 AS HUGEINT) * (i{k}_fixed & 4294967295))",
    "out31": lambda x, t, k: f"CASE WHEN NOT (abs({x}) < {_VARIANCE_LIMIT}) THEN 1 END",
    "ts_value": lambda x, t, k: f"CASE WHEN {x} IS NOT NULL "
                                f"THEN {{'t': __ts, 'v': {_value(x, t)}}} END",
}
_REDUCE = {"count": "count({})", "sum": "sum({})", "min": "min({})", "max": "max({})",
           "set": "list_sort(list(DISTINCT {0}) FILTER (WHERE {0} IS NOT NULL))"}
_MERGE = {"count": "sum({})", "sum": "sum({})", "min": "min({})", "max": "max({})"}


def _fixed(x: str, type_: str) -> str:
    """The `fixed` input: int64 as it is, float64 * 2**32 truncated."""
    if type_ != "float64":
        return x
    return (f"CASE WHEN abs({x}) < {_VARIANCE_LIMIT} "
            f"THEN CAST(trunc({x} * {_FIXED_SCALE}) AS BIGINT) END")


def _value(x: str, type_: str) -> str:
    """The `value` input: float zeros made +0.0, timestamps as epoch µs."""
    if type_ in ("float64", "float32"):
        return f"(CAST({x} AS DOUBLE) + 0.0)"
    return epoch_us_sql(x) if type_ == "timestamp" else x


def tile_aggregation(a: Aggregation) -> tiles.Aggregation:
    """The tile state of a plan aggregation."""
    try:
        return tiles.aggregation(a.function, a.arg.type if a.arg is not None else None)
    except ValueError as e:
        raise Unsupported(str(e), "DuckDB") from None


def state_inputs_sql(view: View, indexes: list[int] | None = None) -> list[str]:
    """`<sql> AS i<k>_<input>` for the per-row input of every state column of
    aggregations `indexes` (default all); an input is null on rows where the
    aggregation's `where` is not true."""
    out = []
    for k, a in enumerate(view.aggregations):
        if indexes is not None and k not in indexes:
            continue
        x = expr_sql(a.arg) if a.arg is not None else "NULL"
        t = a.arg.type if a.arg is not None else None
        for c in tile_aggregation(a).columns:
            sql = _INPUTS[c.input](x, t, k)
            if a.where is not None and c.input not in ("a2", "ab", "b2"):  # those read i<k>_fixed
                sql = f"CASE WHEN ({expr_sql(a.where)}) IS TRUE THEN {sql} END"
            out.append(f"{sql} AS i{k}_{c.input}")
    return out


def tile_states_sql(view: View, indexes: list[int] | None = None) -> list[str]:
    """`<reducer> AS s<k>_<column>` over the inputs, per (entity, tile), for
    aggregations `indexes` (default all)."""
    return [f"{_REDUCE[c.reduce].format(f'i{k}_{c.input}')} AS s{k}_{c.name}"
            for k, a in enumerate(view.aggregations) if indexes is None or k in indexes
            for c in tile_aggregation(a).columns]


def merge_states_sql(view: View, indexes: list[int]) -> list[str]:
    """`<reducer> AS s<k>_<column>` merging tile states of aggregations
    `indexes` (sets are merged by the caller: they need an unnest)."""
    return [f"{_MERGE[c.reduce].format(f's{k}_{c.name}')} AS s{k}_{c.name}"
            for k in indexes for c in tile_aggregation(view.aggregations[k]).columns
            if c.reduce != "set"]


def rollup_states_sql(view: View) -> list[str]:
    """`<merge> AS s<k>_<column>` of the state columns of every stored state
    (`View.state_owners`) over the tiles of a group: a rollup is the merge of
    the tiles inside it."""
    out = []
    for k in view.state_owners():
        for c in tile_aggregation(view.aggregations[k]).columns:
            col = f"s{k}_{c.name}"
            merged = (_distinct_sorted(f"list_sort(flatten(list({col})))") if c.reduce == "set"
                      else _MERGE[c.reduce].format(col))
            out.append(f"{merged} AS {col}")
    return out


def _distinct_sorted(sorted_sql: str) -> str:
    """A sorted list without repeats, NaN once (list_distinct keeps every NaN;
    DuckDB's <> holds NaN equal to NaN, as DISTINCT does)."""
    return f"list_filter({sorted_sql}, lambda v, i: i = 1 OR v <> {sorted_sql}[i - 1])"


def tile_json_sql(view: View) -> str:
    """The JSON tile value (`layout.encode_tile` of the states, one per slot
    of `View.state_slots`) from the s<k>_<column> columns."""
    states = []
    for k in view.state_owners():
        agg = tile_aggregation(view.aggregations[k])
        vtype = agg.input_type
        cols = [_state_json(f"s{k}_{c.name}", c, vtype) for c in agg.columns]
        states.append(cols[0] if agg.bare else layout.sql_json_array(cols))
    return layout.sql_json_array(states)


def tile_codec(view: View) -> layout.TileCodec:
    """The codec of the view's tiles (`layout.TileCodec`)."""
    return layout.tile_codec([tile_aggregation(view.aggregations[k])
                              for k in view.state_owners()])


def state_columns(view: View) -> list[str]:
    """The s<k>_<column> columns of the view's stored states, in slot order."""
    return [f"s{k}_{c.name}" for k in view.state_owners()
            for c in tile_aggregation(view.aggregations[k]).columns]


_LOW_62 = (1 << 62) - 1
_LOW_29 = (1 << 29) - 1


def tile_words_sql(view: View) -> list[tuple[str, str | None]]:
    """Per word of the view's binary tiles (`layout.TileCodec.words`), its SQL
    over the s<k>_<column> columns, a BIGINT (a DOUBLE for an "f" word), null
    where the word is null; and the SQL that is true where the state is
    present, so that a null word means it does not fit in 64 bits (None for
    words that always fit). Float sums and the squares of a variance are
    split with HUGEINT arithmetic that never overflows: T = H * 2**62 + L
    into (H + (L >> 62), L & (2**62 - 1)), and Q = A * 2**64 + B * 2**33 + C
    into (4A + (B >> 29) + (C >> 62) + (R >> 62), R & (2**62 - 1)) with
    R = (B & (2**29 - 1)) * 2**33 + (C & (2**62 - 1)) < 2**63."""
    out: list[tuple[str, str | None]] = []
    for k, slot in zip(view.state_owners(), tile_codec(view).slots, strict=True):
        cols = [f"s{k}_{c.name}" for c in tile_aggregation(view.aggregations[k]).columns]
        for at, kinds in enumerate(slot):
            col = cols[at]
            first = kinds[0] if kinds else None
            if first == "n":
                out.append((f"TRY_CAST(COALESCE({col}, 0) AS BIGINT)", "TRUE"))
            elif first == "s":
                out.append((f"TRY_CAST({col} AS BIGINT)", f"{col} IS NOT NULL"))
            elif first in ("h", "qh"):
                present = f"{col} IS NOT NULL"
                parts = [f"CAST(COALESCE({x}, 0) AS HUGEINT)"
                         for x in cols[at:at + (2 if first == "h" else 3)]]
                if first == "h":
                    h, lo = parts
                    high, low = f"{h} + ({lo} >> 62)", lo
                else:
                    a, b, c = parts
                    low = f"((({b} & {_LOW_29}) << 33) + ({c} & {_LOW_62}))"
                    high = f"4 * {a} + ({b} >> 29) + ({c} >> 62) + ({low} >> 62)"
                out.append((f"CASE WHEN {present} THEN TRY_CAST({high} AS BIGINT) END", present))
                out.append((f"CASE WHEN {present} THEN CAST({low} & {_LOW_62} AS BIGINT) END",
                            None))
            elif first == "t":
                out.append((f"({col}).t", None))
                out.append((_value_word(f"({col}).v", kinds[1]), None))
            elif first is not None:
                out.append((_value_word(col, first), None))
    return out


def _value_word(sql: str, kind: str) -> str:
    return f"CAST({sql} AS {'DOUBLE' if kind == 'f' else 'BIGINT'})"


def _state_json(col: str, c: tiles.StateColumn, vtype: str | None) -> str:
    if c.reduce in ("count", "sum"):
        return layout.sql_json(col, "int")
    if c.reduce == "set":
        return f"CASE WHEN {col} IS NULL THEN '[]' ELSE {layout.sql_json_list(col, vtype)} END"
    if c.input == "ts_value":
        return (f"CASE WHEN {col} IS NULL THEN 'null' ELSE '[' || CAST({col}.t AS VARCHAR) || ',' "
                f"|| {layout.sql_json(f'{col}.v', vtype)} || ']' END")
    return layout.sql_json(col, vtype)


def tiles_sql(view: View, source: Source, root: Path, end_us: int | str,
              start_us: int | str | None) -> str:
    """One row per (entity, tile) with tile start >= start_us (a tile start)
    and rows up to end_us: keys, __tile, then the states s<k>_<column>."""
    keys = ", ".join(ident(k) for k, _ in view.keys)
    stored = list(view.state_owners())
    inputs = ", ".join(state_inputs_sql(view, stored))
    return (f"SELECT {keys}, __tile, {', '.join(tile_states_sql(view, stored))} "
            f"FROM (SELECT {keys}, __tile, __ts, {inputs} "
            f"FROM ({view_rows_sql(view, source, root, end_us, start_us)})) "
            f"GROUP BY {keys}, __tile")


# ----------------------------------------------------- latest rows
def row_values_sql(view: View) -> list[str]:
    """`<sql> AS f<i>`: the stored value of every row feature."""
    return [f"{value_sql(expr_sql(f.expr), f.type)} AS f{i}"
            for i, f in enumerate(view.row_features)]


def latest_struct_sql(view: View, with_ts: bool) -> str:
    """max() of this struct picks the latest row: greatest __ts, then ties on
    __ts broken by the row-feature values in order (a null below any value),
    then by the sign of float zeros (-0.0 above 0.0, which compare equal), so
    the choice never depends on the order rows are read in. Read the values
    back with `latest_values_sql` (max() returns -0.0 as 0.0)."""
    fields = ["'ts': __ts"] if with_ts else []
    for i in range(len(view.row_features)):
        fields += [f"'k{i}': f{i} IS NOT NULL", f"'v{i}': f{i}"]
    fields += [f"'z{i}': signbit(f{i})" for i, f in enumerate(view.row_features)
               if f.type in ("float64", "float32")]
    return "max({" + ", ".join(fields) + "})"


def latest_values_sql(view: View, struct: str) -> list[str]:
    """`<sql> AS f<i>`: the row features out of a `latest_struct_sql` value."""
    out = []
    for i, f in enumerate(view.row_features):
        value = f"{struct}.v{i}"
        if f.type in ("float64", "float32"):
            value = (f"CASE WHEN {struct}.z{i} AND {value} = 0 THEN CAST('-0.0' AS DOUBLE) "
                     f"ELSE {value} END")
        out.append(f"{value} AS f{i}")
    return out


def latest_rows_sql(view: View, source: Source, root: Path, end_us: int | str,
                    start_us: int | str | None) -> str:
    """The latest row per entity with start_us <= __ts <= end_us: keys, __ts,
    then one column per row feature (f0, f1, ...), in one query
    (`latest_rows_parts` as a materialized CTE)."""
    rows, latest = latest_rows_parts(view, source, root, end_us, start_us)
    return f"WITH __rows AS MATERIALIZED ({rows}), {latest.removeprefix('WITH ')}"


def latest_rows_parts(view: View, source: Source, root: Path, end_us: int | str,
                      start_us: int | str | None) -> tuple[str, str]:
    """`latest_rows_sql` in two queries: the rows of the view, numbered
    (__id), and the latest of them per entity, read from a relation named
    `__rows` holding the first. A writer that streams the result to Arrow
    stores the first as a table: DuckDB 1.5 can stall when a streamed
    UNION ALL reads one materialized CTE from both branches on two threads.

    Most entities have one row at their latest __ts: the GROUP BY only finds
    which row (its id), and the row is read back as it is. Entities with
    several rows there (max_by finds a second one) go through
    `latest_struct_sql`, which breaks the tie by value."""
    keys = ", ".join(ident(k) for k, _ in view.keys)
    fs = ", ".join(f"f{i}" for i in range(len(view.row_features)))
    rows = (f"SELECT {keys}, __ts, {', '.join(row_values_sql(view))} "
            f"FROM ({view_rows_sql(view, source, root, end_us, start_us)})")
    last = (f"SELECT {keys}, max(__ts) AS __ts, max_by(__ts, __ts, 2) AS __top, "
            f"arg_max(__id, __ts) AS __id FROM __rows GROUP BY {keys}")
    single = f"SELECT __id FROM __last WHERE len(__top) = 1 OR __top[2] < __ts"
    tied = f"SELECT {keys} FROM __last WHERE len(__top) = 2 AND __top[2] = __ts"
    return (f"SELECT *, row_number() OVER () AS __id FROM ({rows})",
            f"WITH __last AS ({last}) "
            f"SELECT {keys}, __ts, {fs} FROM __rows SEMI JOIN ({single}) USING (__id) "
            f"UNION ALL SELECT {keys}, __w.ts AS __ts, {', '.join(latest_values_sql(view, '__w'))} "
            f"FROM (SELECT {keys}, {latest_struct_sql(view, True)} AS __w FROM __rows "
            f"SEMI JOIN ({tied}) USING ({keys}) GROUP BY {keys})")


# ================================================================ artifacts
import re  # noqa: E402  (to join the imports at the top)

from dsl.plan import Plan  # noqa: E402


def artifacts(plan: Plan, project: str) -> dict[str, str]:
    """duckdb/<view>.sql: the queries `featurestore materialize` runs for
    each view, with $start_us and $end_us as parameters (epoch µs) and
    source paths relative to the repo."""
    return {f"duckdb/{view.name}.sql": view_script(plan, view) for view in plan.views}


def view_script(plan: Plan, view: View) -> str:
    """The queries that materialize a view, each introduced by a comment."""
    source, root = plan.source(view.source), Path("")
    parts = [f"-- view {view.name}: the queries `featurestore materialize` runs\n"
             "-- parameters: $start_us, $end_us (epoch microseconds, UTC)\n"]
    try:
        attach = attach_sql(source, root)
        if attach:
            parts.append(f"-- first, the source's database\n{attach};\n")
        if view.aggregations:
            sql = tiles_sql(view, source, root, "$end_us", "$start_us")
            parts.append(f"-- tiles: one row per entity and tile, one state per aggregation\n"
                         f"{layout_sql(sql)};\n")
        if view.row_features:
            sql = latest_rows_sql(view, source, root, "$end_us", None)
            parts.append(f"-- latest row of each entity\n{layout_sql(sql)};\n")
    except Unsupported as e:
        parts.append(f"-- not computed by DuckDB: {e}\n")
    return "\n".join(parts)


# Quoted text, a parenthesis, or a clause keyword.
_SQL_TOKEN = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|\(|\)"
                        r"| (FROM|WHERE|GROUP BY|ORDER BY|QUALIFY) ")


def layout_sql(sql: str) -> str:
    """One clause per line, indented by nesting of subqueries; only whitespace
    outside string literals changes, so the query stays the same query.
    Clauses inside other parentheses (OVER, FILTER, function calls) stay put."""
    out, last = [], 0
    parens: list[bool] = []  # per open '(': is it a subquery, whose clauses break?
    for m in _SQL_TOKEN.finditer(sql):
        token = m.group(0)
        if token.endswith("("):
            parens.append(sql.startswith("SELECT ", m.end()))
        elif token == ")" and parens:
            parens.pop()
        elif m.group(1) and all(parens):
            out.append(sql[last:m.start()] + "\n" + "  " * len(parens) + m.group(1) + " ")
            last = m.end()
    return "".join(out) + sql[last:]
