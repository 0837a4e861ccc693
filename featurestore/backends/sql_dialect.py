"""The DSL's expressions as SQL: the tree walk once, the engines as tables.

In the manner of sqlglot's dialects: `Dialect` walks a typed plan expression
(dsl.plan: Column, Literal, Unary, Binary, Call, Cast, Case) and holds what
every engine spells alike; an engine is a small subclass that overrides
tables (TYPES, BINARY, FUNCTIONS, CASTS) and the few node methods where its
SQL would mean something else than the DSL does:

    featurestore.backends.duckdb_sql.DuckDB   batch (materialize, export)
    streaming.flink_expr.Flink                 the stream

So where the engines differ is the set of overrides in those two classes,
and tests/test_dsl_sql.py runs one table of expressions through both. A
construct an engine cannot give the DSL's meaning calls `unsupported`,
which raises Unsupported naming the engine and the construct; the callers
report it (`featurestore compile` in the artifacts, `featurestore stream`
as an error) rather than run something that computes another value.

Every node is parenthesized, so precedence is the plan's, never an
engine's. This module imports neither DuckDB nor PyFlink.
"""
from __future__ import annotations

import math
from typing import Callable, NoReturn

from dsl.plan import Binary, Call, Case, Cast, Column, Expr, Literal, Unary
from featurestore.errors import DefinitionError


class Unsupported(DefinitionError):
    """A plan construct an engine cannot compute with the DSL's meaning: a
    mistake in the definitions, reported as one. The message is the
    construct; `engine` names the engine (the callers' messages name it too:
    "not computed by DuckDB: ...")."""

    def __init__(self, construct: str, engine: str = ""):
        super().__init__(construct)
        self.construct, self.engine = construct, engine


# A function's SQL from the dialect, the call and its arguments' SQL.
FunctionSql = Callable[["Dialect", Call, list[str]], str]
# A cast's SQL from the dialect and its operand's SQL.
CastSql = Callable[["Dialect", str], str]

COMPARISONS = ("=", "!=", "<", "<=", ">", ">=")
FLOATS = ("float64", "float32")
# What `cast(x as float64)` reads from text, in every engine: a decimal
# number (`2.5`, `-1e3`, `.5`, `5.`) or NaN and the infinities as push and
# JSON spell them. (Engines read more on their own, and differently: DuckDB
# `inf` and `1_000`, Java `1d` and `0x1p4`.)
FLOAT_TEXT = r"([+-]?([0-9]+[.]?[0-9]*|[.][0-9]+)([eE][+-]?[0-9]+)?|[+-]?Infinity|NaN)"
INT_TEXT = "[+-]?[0-9]+"


def _function(name: str) -> FunctionSql:
    """A function the engine spells as the DSL does (in its own case)."""
    return lambda d, e, a: d.func(name, *a)


def _plain_cast(to: str) -> CastSql:
    return lambda d, x: f"CAST({x} AS {d.sql_type(to)})"


class Dialect:
    """SQL for plan expressions. Subclasses set ENGINE and override tables
    and the hooks below (`function_name`, `list_type`, `null`, `integer`,
    `finite_double`, `full_match`, `condition`, `modulo`, `comparison`)."""

    ENGINE = "SQL"
    IDENT_QUOTE = '"'
    TYPES = {"int64": "BIGINT", "float64": "DOUBLE", "bool": "BOOLEAN", "float32": "FLOAT"}
    BINARY = {"=": "=", "!=": "<>", "<": "<", "<=": "<=", ">": ">", ">=": ">=", "+": "+",
              "-": "-", "*": "*", "and": "AND", "or": "OR"}
    # DSL function -> SQL (`if` is a Case by the time it gets here). `concat`
    # uses `||`, which is null when any part is null, as in the DSL.
    FUNCTIONS: dict[str, FunctionSql] = {
        "is_null": lambda d, e, a: f"({a[0]} IS NULL)",
        "is_not_null": lambda d, e, a: f"({a[0]} IS NOT NULL)",
        "coalesce": _function("coalesce"),
        "abs": _function("abs"),
        "round": _function("round"),
        "lower": _function("lower"),
        "upper": _function("upper"),
        "concat": lambda d, e, a: "(" + " || ".join(a) + ")",
    }
    # (from, to) -> SQL of `cast(x as to)`, for every cast dsl.checker_expr
    # allows between two types: a value that does not convert is null; text
    # converts only when it spells a value of the type, spaces around it
    # ignored (`full_match` anchors a pattern at both ends in every engine).
    CASTS: dict[tuple[str, str], CastSql] = {
        ("int64", "bool"): lambda d, x: f"({x} <> 0)",
        ("string", "bool"): lambda d, x: (f"(CASE {d.func('lower', d.func('trim', x))} "
                                          "WHEN 'true' THEN TRUE WHEN 'false' THEN FALSE END)"),
        ("string", "int64"): lambda d, x: (
            f"(CASE WHEN {d.full_match(d.func('trim', x), INT_TEXT)} "
            f"THEN TRY_CAST({d.func('trim', x)} AS BIGINT) END)"),
        ("string", "float64"): lambda d, x: (
            f"(CASE WHEN {d.full_match(d.func('trim', x), FLOAT_TEXT)} "
            f"THEN TRY_CAST({d.func('trim', x)} AS DOUBLE) END)"),
        ("int64", "float64"): _plain_cast("float64"),
        ("bool", "int64"): _plain_cast("int64"),
        ("int64", "string"): _plain_cast("string"),
    }

    # ------------------------------------------------------------ names
    def unsupported(self, construct: str) -> NoReturn:
        raise Unsupported(construct, self.ENGINE)

    def ident(self, name: str) -> str:
        q = self.IDENT_QUOTE
        return q + name.replace(q, q + q) + q

    def string(self, text: str) -> str:
        return "'" + text.replace("'", "''") + "'"

    def function_name(self, name: str) -> str:
        """How the engine spells a function the DSL names `name`."""
        return name

    def func(self, name: str, *args: str) -> str:
        return f"{self.function_name(name)}({', '.join(args)})"

    def full_match(self, sql: str, pattern: str) -> str:
        """Whether all of the text `sql` matches the regular expression."""
        raise NotImplementedError

    # ------------------------------------------------------------ types
    def sql_type(self, t: str) -> str:
        """The engine's type of a DSL type (`list<T>` through `list_type`)."""
        if t.startswith("list<") and t.endswith(">"):
            return self.list_type(self.sql_type(t[5:-1]))
        if t not in self.TYPES:
            self.unsupported(f"type {t!r}")
        return self.TYPES[t]

    def list_type(self, element: str) -> str:
        raise NotImplementedError

    # ------------------------------------------------------------ literals
    def literal(self, value: object, type_: str = "") -> str:
        """A constant; `type_` types a null where the engine needs it."""
        if value is None:
            return self.null(type_)
        if isinstance(value, bool):
            return "TRUE" if value else "FALSE"
        if isinstance(value, int):
            return self.integer(value)
        if isinstance(value, float):
            return self.double(value)
        return self.string(str(value))

    def null(self, type_: str) -> str:
        return "NULL"

    def integer(self, value: int) -> str:
        return str(value)

    def double(self, value: float) -> str:
        """A DOUBLE constant; NaN and the infinities as text both engines read."""
        if math.isnan(value):
            return "CAST('NaN' AS DOUBLE)"
        if math.isinf(value):
            return f"CAST('{'-' if value < 0 else ''}Infinity' AS DOUBLE)"
        return self.finite_double(value)

    def finite_double(self, value: float) -> str:
        return f"CAST({value!r} AS DOUBLE)"

    # ------------------------------------------------------------ the walk
    def expr(self, e: Expr) -> str:
        """SQL for a typed expression."""
        if isinstance(e, Column):
            return self.ident(e.name)
        if isinstance(e, Literal):
            return self.literal(e.value, e.type)
        if isinstance(e, Unary):
            operand = self.expr(e.operand)
            return f"(NOT {operand})" if e.op == "not" else f"(-{operand})"
        if isinstance(e, Binary):
            return self.binary(e)
        if isinstance(e, Cast):
            return self.cast(e.operand, e.type)
        if isinstance(e, Case):
            return self.case(e)
        if isinstance(e, Call):
            return self.call(e)
        self.unsupported(f"expression {type(e).__name__}")

    def binary(self, e: Binary) -> str:
        left, right = self.expr(e.left), self.expr(e.right)
        if e.op == "/":  # always float64, as in the DSL: x / 0 is +-Infinity or NaN
            return f"(CAST({left} AS DOUBLE) / {right})"
        if e.op == "%":
            return self.modulo(e, left, right)
        if e.op in COMPARISONS:
            return self.comparison(e, left, right)
        if e.op not in self.BINARY:
            self.unsupported(f"operator {e.op!r}")
        return f"({left} {self.BINARY[e.op]} {right})"

    def modulo(self, e: Binary, left: str, right: str) -> str:
        """`%`: the sign of the dividend (truncated division); null for x % 0."""
        return f"({left} % {right})"

    def comparison(self, e: Binary, left: str, right: str) -> str:
        """A comparison; for floats, NaN equals NaN and is above every number."""
        return f"({left} {self.BINARY[e.op]} {right})"

    def case(self, e: Case) -> str:
        whens = " ".join(f"WHEN {self.condition(self.expr(c))} THEN {self.expr(v)}"
                         for c, v in e.whens)
        tail = f" ELSE {self.expr(e.else_)}" if e.else_ is not None else ""
        return f"(CASE {whens}{tail} END)"

    def condition(self, sql: str) -> str:
        """A `when` condition (null counts as false)."""
        return sql

    def call(self, e: Call) -> str:
        if e.func not in self.FUNCTIONS:
            self.unsupported(f"function {e.func!r}")
        return self.FUNCTIONS[e.func](self, e, [self.expr(a) for a in e.args])

    def cast(self, operand: Expr, to: str) -> str:
        """`cast(x as T)` (see CASTS)."""
        x, frm = self.expr(operand), operand.type
        if frm == to:
            return x
        if frm == "null":
            return f"CAST(NULL AS {self.sql_type(to)})"
        if (frm, to) not in self.CASTS:
            self.unsupported(f"cast from {frm} to {to}")
        return self.CASTS[frm, to](self, x)
