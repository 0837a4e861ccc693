"""The states of a stream view in Flink SQL: tiles and latest rows.

    tiles    per (entity, tile), the state columns of every aggregation as
             featurestore.tiles defines them, by a continuous GROUP BY
    latest   per entity, the latest row, by a continuous GROUP BY over its
             order text (MAX), which mini-batches as a top-1 cannot

Both read `<view>__rows` (streaming.flink_sql). How each state column and
the latest row travel to the Python writers (and read back there) is
streaming.wire's: this module chooses, per state column, the form it
travels in, and computes the per-row inputs tiles.py defines.
"""
from __future__ import annotations

from dsl.plan import View
from featurestore import tiles, windows
from streaming import wire
from streaming.flink_expr import (KINDS, Unsupported, double, expr_sql, floor_to, ident,
                                  nan_sql, stored_sql)
from streaming.wire import Field, StateSql, low_bits_sql

_SUM_LIMIT, _LO_SCALE = double(tiles.SUM_LIMIT), double(2.0 ** tiles.SUM_FRACTION_BITS)
_VARIANCE_LIMIT = double(tiles.VARIANCE_LIMIT)
_FIXED_SCALE = double(2.0 ** tiles.VARIANCE_FRACTION_BITS)


# ================================================================ tiles
def _input_sql(input_: str, k: int) -> str:
    """A per-row input of tiles.py over aggregation k's argument x<k>, as a
    BIGINT (b2, which needs 64 unsigned bits, as a DECIMAL)."""
    x, a, b = f"`__x{k}`", f"`__a{k}`", f"`__b{k}`"
    hi = f"CASE WHEN ABS({x}) < {_SUM_LIMIT} THEN CAST({x} AS BIGINT) END"
    return {
        "int": x,
        "hi": hi,
        # x - trunc(x) is exact, and so is scaling it by a power of two
        "lo": (f"CASE WHEN ABS({x}) < {_SUM_LIMIT} THEN CAST(({x} - CAST({hi} AS DOUBLE)) "
               f"* {_LO_SCALE} AS BIGINT) END"),
        # not NOT(|x| < 2**63): the planner makes that |x| >= 2**63, false for NaN
        "out63": f"CASE WHEN ABS({x}) >= {_SUM_LIMIT} OR {nan_sql(x)} THEN 1 END",
        "out31": f"CASE WHEN ABS({x}) >= {_VARIANCE_LIMIT} OR {nan_sql(x)} THEN 1 END",
        "fixed": f"`__fixed{k}`",
        "a2": f"{a} * {a}",
        "ab": f"{a} * {b}",
        "b2": f"CAST({b} AS DECIMAL(20, 0)) * CAST({b} AS DECIMAL(20, 0))",
    }[input_]


def state_sql(c: tiles.StateColumn, k: int | None, type_: str | None, w: int | None) -> StateSql:
    """The Flink form of state column c over argument x<k> (None: count())
    and filter w<w> (None: every row). A column's name says what it
    computes, so that aggregations that share a column (`sum(x) over 1h,
    1d`, or the sum inside `avg(x)`) compute it once."""
    where = None if w is None else f"`__w{w}`"
    name = f"__s{'r' if k is None else k}{'' if w is None else f'w{w}'}_{c.reduce}_{c.input}"
    x = f"`__x{k}`"
    if c.reduce == "count":
        arg = {"row": "*", "value": x}.get(c.input) or _input_sql(c.input, k)
        return wire.count_state(name, arg, where)
    if c.reduce == "sum" and c.input == "b2":   # 64 unsigned bits a row: DECIMAL
        return wire.decimal_sum_state(name, f"`__i{k}_{c.input}`", where)
    if c.reduce == "sum":
        return wire.halves_state(name, f"`__i{k}_{c.input}`", f"`__l{k}_{c.input}`", where)
    if c.reduce == "set":
        return wire.set_state(name, x, where)
    if c.input == "ts_value":
        return wire.pair_state(name, c.reduce, f"`__pair{k}`", KINDS[type_], where)
    return wire.extreme_state(name, c.reduce, x, KINDS[type_], where)


def shared_inputs(view: View) -> list[tuple[int | None, int | None]]:
    """Per aggregation (x, w): the first aggregation with the same argument
    and the first with the same filter (None where it has none). Columns
    x<x> and w<w> are computed once for all that share them."""
    args: dict[tuple[str, str], int] = {}
    wheres: dict[str, int] = {}
    out = []
    for k, a in enumerate(view.aggregations):
        x = None if a.arg is None else args.setdefault((expr_sql(a.arg), a.arg.type), k)
        w = None if a.where is None else wheres.setdefault(expr_sql(a.where), k)
        out.append((x, w))
    return out


def aggregation_states(view: View) -> list[tuple[tiles.Aggregation, list[StateSql]]]:
    """Per aggregation of the view: its tile state and the state's Flink
    columns (equal columns for the columns that aggregations share)."""
    out = []
    for a, (x, w) in zip(view.aggregations, shared_inputs(view)):
        type_ = a.arg.type if a.arg is not None else None
        try:
            agg = tiles.aggregation(a.function, type_)
        except ValueError as e:
            raise Unsupported(str(e), "Flink") from None
        out.append((agg, [state_sql(c, x, type_, w) for c in agg.columns]))
    return out


def _arguments_sql(view: View) -> list[str]:
    """x<k>: the argument as tiles.py reads it (float zeros made +0.0,
    timestamps as epoch µs); w<k>: the aggregation's `where`."""
    cols = []
    for k, (a, (x, w)) in enumerate(zip(view.aggregations, shared_inputs(view))):
        if x == k:
            cols.append(f"{_value_sql(expr_sql(a.arg), a.arg.type)} AS `__x{k}`")
        if w == k:
            cols.append(f"({expr_sql(a.where)}) IS TRUE AS `__w{k}`")
    return cols


def _value_sql(sql: str, type_: str) -> str:
    if type_ in ("float64", "float32"):
        sql = f"CAST({sql} AS DOUBLE)"
        return f"(CASE WHEN {sql} = 0 THEN 0E0 ELSE {sql} END)"
    return stored_sql(sql, type_)


def _derived_sql(view: View) -> list[list[str]]:
    """Columns over x<k>, in steps that each read the ones before. variance:
    fixed<k> (tiles.py's fixed point), then a<k>, b<k> with fixed = a * 2**32
    + b and 0 <= b < 2**32 (their products fit in 64 bits). first, last:
    pair<k> (`wire.pair_sql`), for float64 after the steps that find its exponent.
    Sums: i<k>_<input>, the summed input, then l<k>_<input>, its low bits.
    Each is computed once for all the aggregations over x<k>."""
    steps: list[list[str]] = [[], [], [], []]
    seen: set[str] = set()

    def add(step: int, sql: str, name: str) -> None:
        if name not in seen:
            seen.add(name)
            steps[step].append(f"{sql} AS `{name}`")

    for a, (agg, _), (k, _) in zip(view.aggregations, aggregation_states(view),
                                   shared_inputs(view)):
        t = a.arg.type if a.arg is not None else None
        x = f"`__x{k}`"
        if a.function in ("variance", "stddev"):
            fixed = x if t in ("int64", "int32") else (
                f"CASE WHEN ABS({x}) < {_VARIANCE_LIMIT} "
                f"THEN CAST({x} * {_FIXED_SCALE} AS BIGINT) END")
            add(0, fixed, f"__fixed{k}")
            add(1, low_bits_sql(f"`__fixed{k}`"), f"__b{k}")
            add(1, f"(`__fixed{k}` - {low_bits_sql(f'`__fixed{k}`')}) / 4294967296", f"__a{k}")
        if a.function in ("first", "last"):
            if KINDS[t] == "float" and f"__g{k}" not in seen:
                g, q = wire.float_steps(x, str(k))
                seen.add(f"__g{k}")
                steps[0].append(g)
                steps[1].append(q)
            add(2, wire.pair_sql("`__ts`", x, KINDS[t], f"`__q{k}`"), f"__pair{k}")
        for c in agg.columns:
            if c.reduce == "sum":
                add(2, _input_sql(c.input, k), f"__i{k}_{c.input}")
                if c.input != "b2":
                    add(3, low_bits_sql(f"`__i{k}_{c.input}`"), f"__l{k}_{c.input}")
    return steps


def tiles_sql(view: View, rows: str, cut: str) -> list[str]:
    """The statements that define `<view>__tiles`: per (entity, tile) of the
    view's rows that pass `cut`, the state columns of every aggregation,
    updated as rows arrive. A view with rollups (windows.levels) has a group
    per (entity, size, tile) of every size it keeps, in one GROUP BY over
    copies of `<view>__tile_inputs` (its rows' inputs), one per size, with
    `__size` and `__tile`, the start of the row's tile of that size. The cut
    is the row's: a rollup that starts before what the cut keeps may lack
    rows, and no window reads it (none reads it whole)."""
    keys = ", ".join(ident(k) for k, _ in view.keys)
    columns = list({f.name: f"{agg} AS {ident(f.name)}"
                    for _, states in aggregation_states(view)
                    for s in states for agg, f in zip(s.aggregates, s.fields)}.values())
    levels = windows.levels(view)
    tile = [] if len(levels) > 1 else ["`__tile`"]
    fine = f", {floor_to('`__ts`', view.tile_us)} AS `__tile`" if tile else ""
    select = f"SELECT *{fine} FROM {ident(rows)} WHERE {cut}"
    select = f"SELECT {', '.join([keys, *tile, '`__ts`', *_arguments_sql(view)])} FROM ({select})"
    for step in _derived_sql(view):
        if step:
            select = f"SELECT *, {', '.join(step)} FROM ({select})"
    head = f"CREATE TEMPORARY VIEW {ident(view.name + '__tiles')} AS\n"
    # the newest event of each group: an update holding one after the job's
    # clock is held until it is due (streaming.sink)
    columns = ["MAX(`__ts`) AS `__newest`", *columns]
    if tile:
        return [f"{head}SELECT {keys}, `__tile`, {', '.join(columns)}\n"
                f"FROM ({select})\n"
                f"GROUP BY {keys}, `__tile`"]
    # UNION ALL of copies, not UNNEST: Flink reads the source, and each
    # row's clock, once for all copies (sub-plan reuse), and the job ran
    # ~15% more events/s than with a correlated UNNEST (measured into a
    # blackhole). An UNNEST of constants is far worse: Flink joins every row
    # with it, a join that keeps every row in its state. GROUPING SETS
    # (Flink's Expand) was slower still.
    inputs = ident(view.name + "__tile_inputs")
    copies = "\n  UNION ALL ".join(
        f"SELECT *, CAST({size} AS BIGINT) AS `__size`, {floor_to('`__ts`', size)} AS `__tile` "
        f"FROM {inputs}" for size in levels)
    return [f"CREATE TEMPORARY VIEW {inputs} AS\n{select}",
            f"{head}SELECT {keys}, `__size`, `__tile`, {', '.join(columns)}\n"
            f"FROM ({copies})\n"
            f"GROUP BY {keys}, `__size`, `__tile`"]


# ================================================================ latest rows
def latest_text_sql(view: View) -> tuple[list[list[str]], str]:
    """The row of a view as `wire.row_text_sql` spells it: its byte order is
    the batch engine's choice of the latest row. Returns (projection steps,
    the text)."""
    values = []
    for f in view.row_features:
        if f.type.startswith("list<"):
            raise Unsupported(f"row feature {f.name!r} of type {f.type} in a stream view", "Flink")
        values.append((stored_sql(expr_sql(f.expr), f.type), KINDS[f.type]))
    return wire.row_text_sql("`__ts`", values)


def latest_sql(view: View, rows: str, cut: str) -> str:
    """Per entity of the view's rows that pass `cut`: the latest row's text
    (`latest_text_sql`), as the MAX of a GROUP BY, so that updates of one
    entity within a mini-batch leave as one."""
    keys = ", ".join(ident(k) for k, _ in view.keys)
    steps, text = latest_text_sql(view)
    select = f"SELECT * FROM {ident(rows)} WHERE {cut}"
    for step in steps:
        if step:
            select = f"SELECT *, {', '.join(step)} FROM ({select})"
    return (f"CREATE TEMPORARY VIEW {ident(view.name + '__latest')} AS\n"
            f"SELECT {keys}, MAX({text}) AS `latest`\n"
            f"FROM ({select})\n"
            f"GROUP BY {keys}")


def state_fields(view: View) -> list[Field]:
    """The tiles view's state columns, as the sink reads them, in order:
    each once, where it first appears."""
    return list({f.name: f for _, states in aggregation_states(view)
                 for s in states for f in s.fields}.values())
