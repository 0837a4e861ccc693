"""Flink SQL as the DSL means it: the Flink dialect of the expressions.

The dialect layer of the streaming engine (`streaming.flink_sql` builds the
job from it). The tree walk and what every engine spells alike are
featurestore.backends.sql_dialect's; `Flink` overrides only where Flink's
own SQL would give another value than the batch engine (DuckDB):

    literals      integers typed BIGINT, floats as DOUBLE (1.5 alone is a DECIMAL)
    comparisons   of floats: NaN equals NaN and is above every number (Java: unordered)
    %             null on a zero divisor (Java throws); refused for floats
    case          `WHEN c IS TRUE` (a null condition counts as false)
    upper, lower  the DSL's tables through TRANSLATE (Java's are locale- and
                  context-dependent, and expand: featurestore.backends.unicode_case)
    round         of float64, in DOUBLE arithmetic (Flink's goes through decimal
                  text, and fails on NaN and the infinities)
    date parts    from epoch microseconds (Flink's EXTRACT is wrong before 1970)
    casts         float64 to int64 in range only; bool to text in lower case;
                  float and timestamp to text, text to timestamp refused
                  (their text differs between engines)

A construct Flink cannot give the same meaning raises Unsupported, which
names it.
"""
from __future__ import annotations

import math

from dsl.plan import Binary, Call, Expr, Literal
from featurestore import tiles, windows
from featurestore.backends import unicode_case
from featurestore.backends.sql_dialect import FLOATS, Dialect, Unsupported

__all__ = ["Flink", "FLINK", "KINDS", "Unsupported", "ident", "string", "double", "literal",
           "sql_type", "epoch_us", "floor_to", "expr_sql", "cast_sql", "nan_sql", "stored_sql"]

# How values of a DSL type travel to the Python writers (streaming.sink.Field)
KINDS = {"string": "string", "int64": "int", "int32": "int", "float64": "float",
         "float32": "float", "bool": "bool", "timestamp": "int"}
_DAY_US, _HOUR_US, _MINUTE_US = 24 * windows.HOUR_US, windows.HOUR_US, 60_000_000


# ================================================================ helpers
def epoch_us(sql: str) -> str:
    """Epoch microseconds of a TIMESTAMP_LTZ (for any sign: EPOCH truncates
    toward zero and MICROSECOND carries the sign)."""
    return f"(EXTRACT(EPOCH FROM {sql}) * 1000000 + EXTRACT(MICROSECOND FROM {sql}))"


def floor_to(sql: str, step_us: int) -> str:
    """floor(sql / step) * step for any sign (Flink's MOD truncates toward zero)."""
    return f"({sql} - MOD(MOD({sql}, {step_us}) + {step_us}, {step_us}))"


def nan_sql(x: str) -> str:
    """Whether a DOUBLE is NaN (null when it is null). Not `x <> x`: the
    planner simplifies comparisons of an expression with itself as if NaN
    did not exist. Java's pow(x, 1) is x itself, NaN included."""
    return f"(POWER({x}, 1E0) <> {x})"


def stored_sql(sql: str, type_: str) -> str:
    """A value as it is stored: timestamps become epoch microseconds."""
    return epoch_us(sql) if type_ == "timestamp" else sql


def _may_be_nan(e: Expr) -> bool:
    return e.type in FLOATS and not (isinstance(e, Literal) and e.value is not None
                                     and not math.isnan(e.value))


# ================================================================ functions
def _translate(function: str):
    """upper or lower as the DSL's tables say, one code point at a time."""
    source, target = unicode_case.translation(function)
    return lambda d, e, a: d.func("translate", a[0], d.string(source), d.string(target))


def _round(d: "Flink", e: Call, a: list[str]) -> str:
    """round(x[, digits]) as DuckDB computes it: x * 10^digits rounded half
    away from zero (its sign kept, -0.0 included), divided by 10^digits;
    x itself where that is not finite (NaN, the infinities, an overflow).
    An int64 is whole already (and Flink has no ROUND of BIGINT digits)."""
    if e.args[0].type != "float64":
        return a[0]
    digits = e.args[1].value if len(e.args) > 1 else 0
    if not digits:
        return d.round_half_away(a[0])
    scale = d.double(10.0 ** digits)
    y = f"({a[0]} * {scale})"
    return (f"(CASE WHEN ABS({y}) < {d.double(math.inf)} "
            f"THEN {d.round_half_away(y)} / {scale} ELSE {a[0]} END)")


def _day_start_sql(x: str) -> str:
    """The TIMESTAMP_LTZ of midnight (UTC) of the day of x, where EXTRACT of
    the date is right for any year."""
    return f"TO_TIMESTAMP_LTZ({floor_to(epoch_us(x), _DAY_US)} / 1000, 3)"


def _date(part: str):
    return lambda d, e, a: f"EXTRACT({part} FROM {_day_start_sql(a[0])})"


def _clock(step_us: int, unit_us: int):
    """The number of whole units in x's time since the last multiple of step."""
    def sql(d, e, a):
        us = epoch_us(a[0])
        return f"(MOD(MOD({us}, {step_us}) + {step_us}, {step_us}) / {unit_us})"
    return sql


def _day_of_week(d: "Flink", e: Call, a: list[str]) -> str:
    """ISO: Monday 1 .. Sunday 7 (day 0, 1970-01-01, was a Thursday)."""
    days = f"({floor_to(epoch_us(a[0]), _DAY_US)} / {_DAY_US})"
    return f"(MOD(MOD({days} + 3, 7) + 7, 7) + 1)"


# ================================================================ the dialect
class Flink(Dialect):
    """Flink SQL for the DSL (see the module docstring for what differs)."""

    ENGINE = "Flink"
    IDENT_QUOTE = "`"
    TYPES = {**Dialect.TYPES, "string": "STRING", "int32": "INT", "timestamp": "TIMESTAMP_LTZ(6)"}
    # The job runs in UTC, so date parts are UTC.
    FUNCTIONS = {
        **Dialect.FUNCTIONS,
        "lower": _translate("lower"),
        "upper": _translate("upper"),
        "round": _round,
        "length": lambda d, e, a: (d.func("cardinality", a[0]) if e.args[0].type.startswith("list<")
                                   else d.func("char_length", a[0])),
        "year": _date("YEAR"), "month": _date("MONTH"), "day": _date("DAY"),
        "hour": _clock(_DAY_US, _HOUR_US), "minute": _clock(_HOUR_US, _MINUTE_US),
        "day_of_week": _day_of_week,
    }
    CASTS = {
        **Dialect.CASTS,
        # truncates toward zero; null outside int64 and for NaN
        ("float64", "int64"): lambda d, x: (
            f"(CASE WHEN {x} >= {d.double(float(tiles.INT64_MIN))} AND "
            f"{x} < {d.double(-float(tiles.INT64_MIN))} THEN CAST({x} AS BIGINT) END)"),
        ("bool", "string"): lambda d, x: (f"(CASE WHEN {x} THEN 'true' "
                                          f"WHEN NOT {x} THEN 'false' END)"),
    }

    def function_name(self, name: str) -> str:
        return name.upper()

    def list_type(self, element: str) -> str:
        return f"ARRAY<{element}>"

    def full_match(self, sql: str, pattern: str) -> str:
        # \z, not $: Java's $ also matches before a final line break
        return f"REGEXP({sql}, {self.string('^' + pattern + chr(92) + 'z')})"

    def null(self, type_: str) -> str:
        return f"CAST(NULL AS {self.sql_type(type_)})" if type_ in self.TYPES else "NULL"

    def integer(self, value: int) -> str:
        return f"CAST({value} AS BIGINT)"

    def finite_double(self, value: float) -> str:
        """A DOUBLE literal (Flink reads 1.5 as a DECIMAL, 1.5E0 as a DOUBLE)."""
        text = repr(float(value)).upper().replace("E+", "E")
        return text if "E" in text else text + "E0"

    def condition(self, sql: str) -> str:
        return f"{sql} IS TRUE"

    def modulo(self, e: Binary, left: str, right: str) -> str:
        if e.left.type in FLOATS or e.right.type in FLOATS:
            self.unsupported("'%' of float64 values")
        # Java's % throws on zero; the DSL (like DuckDB) gives null
        return f"(CASE WHEN {right} = 0 THEN NULL ELSE MOD({left}, {right}) END)"

    def comparison(self, e: Binary, left: str, right: str) -> str:
        """As the batch engine (DuckDB) compares floats: NaN equals NaN and
        is above every number, where Java, and so Flink, compares by IEEE
        (NaN is unordered). Only where NaN can meet a number on its `>`
        side, or NaN meet NaN, does the SQL change. Null stays null."""
        op = self.BINARY[e.op]
        plain = f"({left} {op} {right})"
        nan_a, nan_b = _may_be_nan(e.left), _may_be_nan(e.right)
        if not (nan_a or nan_b):
            return plain
        if nan_a != nan_b:
            # one side is never NaN: IEEE differs only where NaN is above it
            x, y, other = (left, right, e.right) if nan_a else (right, left, e.left)
            if e.op not in ((">", ">=") if nan_a else ("<", "<=")):
                return plain
            if isinstance(other, Literal) and other.value is not None:
                return f"({plain} OR {nan_sql(x)})"
            # y is never NaN: y = y is true, or null when y is
            return f"(CASE WHEN {nan_sql(x)} THEN {y} = {y} ELSE {plain} END)"
        na, nb = nan_sql(left), nan_sql(right)
        when_nan = {"=": f"{na} AND {nb}", "!=": f"NOT ({na} AND {nb})",
                    "<": f"{nb} AND NOT ({na})", "<=": nb,
                    ">": f"{na} AND NOT ({nb})", ">=": na}[e.op]
        return (f"(CASE WHEN {left} IS NULL OR {right} IS NULL THEN CAST(NULL AS BOOLEAN) "
                f"WHEN {na} OR {nb} THEN {when_nan} ELSE {plain} END)")

    def round_half_away(self, y: str) -> str:
        """y rounded to a whole number, halves away from zero, in DOUBLE
        arithmetic (C's round()): exact, as y - FLOOR(y) is; -0.0 stays
        -0.0; NaN and the infinities stay as they are."""
        up, down = f"CEIL({y})", f"FLOOR({y})"
        return (f"(CASE WHEN {y} < 0 THEN (CASE WHEN {up} - {y} >= 0.5E0 THEN {up} - 1E0 "
                f"ELSE {up} END) ELSE (CASE WHEN {y} - {down} >= 0.5E0 THEN {down} + 1E0 "
                f"ELSE {down} END) END)")


FLINK = Flink()
ident = FLINK.ident
string = FLINK.string
double = FLINK.double
literal = FLINK.literal
sql_type = FLINK.sql_type
expr_sql = FLINK.expr
cast_sql = FLINK.cast
