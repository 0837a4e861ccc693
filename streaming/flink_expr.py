"""Flink SQL as the DSL means it: types, literals and expressions.

The dialect layer of the streaming engine (`streaming.flink_sql` builds the
job from it). Every construct has the meaning the DuckDB backend gives it
(featurestore.backends.duckdb_sql); one that Flink cannot give the same
meaning raises Unsupported, which names it.
"""
from __future__ import annotations

import math

from dsl.plan import Binary, Call, Case, Cast, Column, Expr, Literal, Unary

_TYPES = {"string": "STRING", "int64": "BIGINT", "int32": "INT", "float64": "DOUBLE",
          "float32": "FLOAT", "bool": "BOOLEAN", "timestamp": "TIMESTAMP_LTZ(6)"}
_BINARY = {"=": "=", "!=": "<>", "<": "<", "<=": "<=", ">": ">", ">=": ">=", "+": "+",
           "-": "-", "*": "*", "and": "AND", "or": "OR"}
# How values of a DSL type travel to the Python writers (streaming.sink.Field)
KINDS = {"string": "string", "int64": "int", "int32": "int", "float64": "float",
         "float32": "float", "bool": "bool", "timestamp": "int"}


class Unsupported(Exception):
    """A plan construct this backend cannot express."""


# ================================================================ expressions
def ident(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def string(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def double(value: float) -> str:
    """A DOUBLE literal (Flink reads 1.5 as a DECIMAL, 1.5E0 as a DOUBLE)."""
    if math.isnan(value):
        return "CAST('NaN' AS DOUBLE)"
    if math.isinf(value):
        return f"CAST('{'-' if value < 0 else ''}Infinity' AS DOUBLE)"
    text = repr(float(value)).upper().replace("E+", "E")
    return text if "E" in text else text + "E0"


def literal(value: object, type_: str = "") -> str:
    if value is None:
        return f"CAST(NULL AS {sql_type(type_)})" if type_ in _TYPES else "NULL"
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int):
        return f"CAST({value} AS BIGINT)"
    if isinstance(value, float):
        return double(value)
    return string(str(value))


def sql_type(t: str) -> str:
    """The Flink type of a DSL type: `list<float32>` is ARRAY<FLOAT>."""
    if t.startswith("list<") and t.endswith(">"):
        return f"ARRAY<{sql_type(t[5:-1])}>"
    if t not in _TYPES:
        raise Unsupported(f"type {t!r}")
    return _TYPES[t]


def epoch_us(sql: str) -> str:
    """Epoch microseconds of a TIMESTAMP_LTZ (for any sign: EPOCH truncates
    toward zero and MICROSECOND carries the sign)."""
    return f"(EXTRACT(EPOCH FROM {sql}) * 1000000 + EXTRACT(MICROSECOND FROM {sql}))"


def floor_to(sql: str, step_us: int) -> str:
    """floor(sql / step) * step for any sign (Flink's MOD truncates toward zero)."""
    return f"({sql} - MOD(MOD({sql}, {step_us}) + {step_us}, {step_us}))"


def expr_sql(e: Expr) -> str:
    """SQL for a typed expression; every node is parenthesized, so precedence
    is the plan's, never Flink's. Semantics follow the DuckDB backend."""
    if isinstance(e, Column):
        return ident(e.name)
    if isinstance(e, Literal):
        return literal(e.value, e.type)
    if isinstance(e, Unary):
        return f"(NOT {expr_sql(e.operand)})" if e.op == "not" else f"(-{expr_sql(e.operand)})"
    if isinstance(e, Binary):
        return _binary_sql(e)
    if isinstance(e, Cast):
        return cast_sql(e.operand, e.type)
    if isinstance(e, Case):
        whens = " ".join(f"WHEN {expr_sql(c)} IS TRUE THEN {expr_sql(v)}" for c, v in e.whens)
        tail = f" ELSE {expr_sql(e.else_)}" if e.else_ is not None else ""
        return f"(CASE {whens}{tail} END)"
    if isinstance(e, Call):
        if e.func not in _FUNCTIONS:
            raise Unsupported(f"function {e.func!r}")
        return _FUNCTIONS[e.func](e, [expr_sql(a) for a in e.args])
    raise Unsupported(f"expression {type(e).__name__}")


def _binary_sql(e: Binary) -> str:
    left, right = expr_sql(e.left), expr_sql(e.right)
    if e.op == "/":  # always float64, as in the DSL: x / 0 is +-Infinity or NaN
        return f"(CAST({left} AS DOUBLE) / {right})"
    if e.op == "%":
        if "float64" in (e.left.type, e.right.type) or "float32" in (e.left.type, e.right.type):
            raise Unsupported("'%' of float64 values")
        # Java's % throws on zero; the DSL (like DuckDB) gives null
        return f"(CASE WHEN {right} = 0 THEN NULL ELSE MOD({left}, {right}) END)"
    if e.op not in _BINARY:
        raise Unsupported(f"operator {e.op!r}")
    if e.op in _COMPARISONS and (_may_be_nan(e.left) or _may_be_nan(e.right)):
        return _float_comparison(e.op, e.left, e.right, left, right)
    return f"({left} {_BINARY[e.op]} {right})"


_COMPARISONS = ("=", "!=", "<", "<=", ">", ">=")
_FLOATS = ("float64", "float32")


def nan_sql(x: str) -> str:
    """Whether a DOUBLE is NaN (null when it is null). Not `x <> x`: the
    planner simplifies comparisons of an expression with itself as if NaN
    did not exist. Java's pow(x, 1) is x itself, NaN included."""
    return f"(POWER({x}, 1E0) <> {x})"


def _may_be_nan(e: Expr) -> bool:
    return e.type in _FLOATS and not (isinstance(e, Literal) and e.value is not None
                                      and not math.isnan(e.value))


def _float_comparison(op: str, a: Expr, b: Expr, left: str, right: str) -> str:
    """A comparison of floats as the batch engine (DuckDB) makes it: NaN
    equals NaN and is above every number, where Java, and so Flink, compares
    by IEEE (NaN is unordered). Null stays null."""
    plain = f"({left} {_BINARY[op]} {right})"
    nan_a, nan_b = _may_be_nan(a), _may_be_nan(b)
    if nan_a != nan_b:
        # one side is never NaN: IEEE differs only where NaN is above it
        x, y, other = (left, right, b) if nan_a else (right, left, a)
        if op not in ((">", ">=") if nan_a else ("<", "<=")):
            return plain
        if isinstance(other, Literal) and other.value is not None:
            return f"({plain} OR {nan_sql(x)})"
        # y is never NaN: y = y is true, or null when y is
        return f"(CASE WHEN {nan_sql(x)} THEN {y} = {y} ELSE {plain} END)"
    # both sides may be NaN
    na, nb = nan_sql(left), nan_sql(right)
    when_nan = {"=": f"{na} AND {nb}", "!=": f"NOT ({na} AND {nb})",
                "<": f"{nb} AND NOT ({na})", "<=": nb,
                ">": f"{na} AND NOT ({nb})", ">=": na}[op]
    return (f"(CASE WHEN {left} IS NULL OR {right} IS NULL THEN CAST(NULL AS BOOLEAN) "
            f"WHEN {na} OR {nb} THEN {when_nan} ELSE {plain} END)")


def _date_part(part: str):
    return lambda e, a: f"EXTRACT({part} FROM {a[0]})"


# DSL function -> Flink SQL, given the call and its arguments' SQL (the job
# runs in UTC, so date parts are UTC). day_of_week is ISO: Monday 1 .. Sunday 7.
_FUNCTIONS = {
    "is_null": lambda e, a: f"({a[0]} IS NULL)",
    "is_not_null": lambda e, a: f"({a[0]} IS NOT NULL)",
    "coalesce": lambda e, a: f"COALESCE({', '.join(a)})",
    "abs": lambda e, a: f"ABS({a[0]})",
    "round": lambda e, a: f"ROUND({', '.join(a)})",
    "lower": lambda e, a: f"LOWER({a[0]})",
    "upper": lambda e, a: f"UPPER({a[0]})",
    "length": lambda e, a: f"CARDINALITY({a[0]})" if e.args[0].type.startswith("list<")
    else f"CHAR_LENGTH({a[0]})",
    "concat": lambda e, a: "(" + " || ".join(a) + ")",
    **{part: _date_part(part.upper()) for part in ("year", "month", "day", "hour", "minute")},
    "day_of_week": lambda e, a: f"(MOD(DAYOFWEEK({a[0]}) + 5, 7) + 1)",
}


def cast_sql(operand: Expr, to: str) -> str:
    """`cast(x as T)` as the DuckDB backend defines it: null when a value does
    not convert; float64 -> int64 truncates; text converts only when it
    spells a value of the type, surrounding spaces ignored. Conversions whose
    text differs between engines (float or timestamp to string) are refused."""
    x, frm = expr_sql(operand), operand.type
    if frm == to:
        return x
    if frm == "null":
        return f"CAST(NULL AS {sql_type(to)})"
    if to == "int64" and frm == "float64":
        return (f"(CASE WHEN ABS({x}) < {double(2.0 ** 63)} THEN CAST({x} AS BIGINT) END)")
    if to == "int64" and frm == "string":
        return (f"(CASE WHEN REGEXP(TRIM({x}), '^[+-]?[0-9]+$') "
                f"THEN TRY_CAST(TRIM({x}) AS BIGINT) END)")
    if to == "bool" and frm == "string":
        return f"(CASE LOWER(TRIM({x})) WHEN 'true' THEN TRUE WHEN 'false' THEN FALSE END)"
    if to == "bool" and frm == "int64":
        return f"({x} <> 0)"
    if to == "string" and frm == "bool":
        return f"(CASE WHEN {x} THEN 'true' WHEN NOT {x} THEN 'false' END)"
    if to == "string" and frm in ("int64", "int32"):
        return f"CAST({x} AS STRING)"
    if to == "float64" and frm == "string":
        return f"TRY_CAST(TRIM({x}) AS DOUBLE)"
    if frm in ("int64", "int32", "float32", "bool") and to in ("int64", "float64"):
        return f"CAST({x} AS {sql_type(to)})"
    raise Unsupported(f"cast from {frm} to {to}")


def stored_sql(sql: str, type_: str) -> str:
    """A value as it is stored: timestamps become epoch microseconds."""
    return epoch_us(sql) if type_ == "timestamp" else sql

