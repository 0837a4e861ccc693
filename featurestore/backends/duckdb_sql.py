"""DuckDB backend: the logical plan as DuckDB SQL.

Pure functions from plan nodes to SQL text; `featurestore.materialize` runs
them. Every query reads a view's rows through `view_rows_sql`, so the filter,
the event-time conversion and the tie-break order are written once.

Columns added to a view's rows:
    __ts    event time in epoch microseconds (UTC)
    __tile  start of the row's tile in epoch microseconds
    __ord   position in the input (file name, row number): the later of two
            rows with the same __ts is the one read later, deterministically
"""
from __future__ import annotations

from pathlib import Path

from dsl.plan import Binary, Call, Column, Expr, Literal, Source, Unary, View

_TYPES = {"string": "VARCHAR", "int64": "BIGINT", "float64": "DOUBLE", "bool": "BOOLEAN",
          "timestamp": "TIMESTAMP"}
_BINARY = {"=": "=", "!=": "<>", "<": "<", "<=": "<=", ">": ">", ">=": ">=", "+": "+",
           "-": "-", "*": "*", "%": "%", "and": "AND", "or": "OR"}


class Unsupported(Exception):
    """A plan construct this backend cannot express."""


def ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def literal(value: object) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"CAST({value!r} AS DOUBLE)"
    return "'" + str(value).replace("'", "''") + "'"


def expr_sql(e: Expr) -> str:
    """SQL for a typed expression; every node is parenthesized, so precedence
    is the plan's, never DuckDB's."""
    if isinstance(e, Column):
        return ident(e.name)
    if isinstance(e, Literal):
        return literal(e.value)
    if isinstance(e, Unary):
        op = "NOT " if e.op == "not" else "-"
        return f"({op}{expr_sql(e.operand)})"
    if isinstance(e, Binary):
        if e.op == "/":  # division is always float64 in the DSL
            return f"(CAST({expr_sql(e.left)} AS DOUBLE) / {expr_sql(e.right)})"
        if e.op not in _BINARY:
            raise Unsupported(f"operator {e.op!r}")
        return f"({expr_sql(e.left)} {_BINARY[e.op]} {expr_sql(e.right)})"
    if isinstance(e, Call):
        args = ", ".join(expr_sql(a) for a in e.args)
        return f"{e.func}({args})"
    raise Unsupported(f"expression {type(e).__name__}")


def value_sql(sql: str, type: str) -> str:
    """A value as it is stored: timestamps become epoch microseconds."""
    return f"epoch_us(CAST({sql} AS TIMESTAMP))" if type == "timestamp" else sql


def floor_to(ts: str, step_us: int) -> str:
    """floor(ts / step) * step for any sign (DuckDB's % truncates toward zero)."""
    return f"({ts} - ((({ts} % {step_us}) + {step_us}) % {step_us}))"


def source_sql(source: Source, root: Path) -> str:
    if source.kind != "batch" or source.format != "parquet":
        raise Unsupported(f"source {source.name}: {source.kind} {source.format}")
    path = source.path if Path(source.path).is_absolute() else str(root / source.path)
    return f"read_parquet({literal(path)}, filename = true, file_row_number = true)"


def view_rows_sql(view: View, source: Source, root: Path, end_us: int,
                  start_us: int | None = None) -> str:
    """Rows of a view (after its filter) with start_us <= __ts <= end_us."""
    ts = f"epoch_us(CAST({ident(source.timestamp)} AS TIMESTAMP))"
    conds = [f"__ts <= {end_us}"]
    if start_us is not None:
        conds.append(f"__ts >= {start_us}")
    if view.filter is not None:
        conds.append(f"({expr_sql(view.filter)}) IS TRUE")
    return (f"SELECT *, {floor_to('__ts', view.tile_us)} AS __tile FROM ("
            f"SELECT *, {ts} AS __ts, [filename, CAST(file_row_number AS VARCHAR)] AS __ord "
            f"FROM {source_sql(source, root)}) WHERE " + " AND ".join(conds))


def state_columns(view: View) -> list[str]:
    """SQL expressions of the partial states of every aggregation, per tile, in
    the order `featurestore.tiles` expects (avg takes two columns)."""
    cols: list[str] = []
    for a in view.aggregations:
        where = f" FILTER (WHERE ({expr_sql(a.where)}) IS TRUE)" if a.where is not None else ""
        arg = expr_sql(a.arg) if a.arg is not None else None
        if a.function == "count":
            cols.append(f"count({arg or '*'}){where}")
        elif a.function == "sum":
            cols.append(f"sum({arg}){where}")
        elif a.function in ("min", "max"):
            cols.append(value_sql(f"{a.function}({arg}){where}", a.type))
        elif a.function == "avg":
            cols.append(f"sum(CAST({arg} AS DOUBLE)){where}")
            cols.append(f"count({arg}){where}")
        else:
            raise Unsupported(f"aggregation {a.function!r} in view {view.name}")
    return cols


def tiles_sql(view: View, source: Source, root: Path, end_us: int,
              start_us: int | None) -> str:
    """One row per (entity, tile) with tile start >= start_us: keys, __tile,
    then the state columns s0, s1, ...; ordered by entity then tile."""
    keys = ", ".join(ident(k) for k, _ in view.keys)
    states = ", ".join(f"{c} AS s{i}" for i, c in enumerate(state_columns(view)))
    lower = None if start_us is None else start_us
    return (f"SELECT {keys}, __tile, {states} "
            f"FROM ({view_rows_sql(view, source, root, end_us, lower)}) "
            f"GROUP BY {keys}, __tile ORDER BY {keys}, __tile")


def latest_rows_sql(view: View, source: Source, root: Path, end_us: int,
                    start_us: int | None) -> str:
    """The latest row per entity with start_us <= __ts <= end_us: keys, __ts,
    then one column per row feature (f0, f1, ...)."""
    keys = ", ".join(ident(k) for k, _ in view.keys)
    feats = "".join(f", {value_sql(expr_sql(f.expr), f.type)} AS f{i}" for i, f in enumerate(view.row_features))
    return (f"SELECT {keys}, __ts{feats} "
            f"FROM ({view_rows_sql(view, source, root, end_us, start_us)}) "
            f"QUALIFY row_number() OVER (PARTITION BY {keys} ORDER BY __ts DESC, __ord DESC) = 1 "
            f"ORDER BY {keys}")
