"""Types and expressions: what the checker knows about values.

A mixin of the checker (`dsl.checker`): each method types one expression node
and returns its plan expression, or None when something in it is wrong (then
reported once, and every check above it stays silent).

Types are strings in the user's words: the scalar types of `dsl.plan`,
`list<T>` for lists, and "null" for an expression that is always null (the
null literal), which fits wherever any type fits.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from . import ast
from . import plan as p
from .diagnostics import did_you_mean

# Scalar types that only lists hold for now (embeddings are list<float32>).
LIST_ELEMENT_TYPES = ("float32", "float64", "int32", "int64", "string", "bool")
# Types that parse but that no backend handles yet; the checker says so.
LATER_TYPES = ("int32", "float32", "date", "bytes", "decimal", "map")
TYPE_ALIASES = {"int": "int64", "integer": "int64", "long": "int64", "float": "float64",
                "double": "float64", "str": "string", "text": "string", "boolean": "bool",
                "datetime": "timestamp", "array": "list", "vector": "list"}
ORDERED_TYPES = ("int64", "float64", "string", "timestamp")

# cast(x as T): which source types each target accepts. Timestamps and numbers
# do not convert into each other: the unit (seconds? micros?) would be a guess.
CASTS: dict[str, tuple[str, ...]] = {
    "string": p.SCALAR_TYPES,
    "int64": ("int64", "float64", "string", "bool"),
    "float64": ("int64", "float64", "string"),
    "bool": ("bool", "int64", "string"),
    "timestamp": ("timestamp", "string"),
}

ARITHMETIC = ("+", "-", "*", "/", "%")
ORDERING = ("<", "<=", ">", ">=")
LOGIC = ("and", "or")


def is_list(t: str | None) -> bool:
    return t is not None and t.startswith("list<")


def numeric(t: str) -> bool:
    return t in p.NUMERIC_TYPES or t == "null"


# ---------------------------------------------------------------- aggregations
@dataclass(frozen=True)
class AggregationSpec:
    """How one aggregation is called and typed: `result` maps the argument's
    type (None for `count()`) to the output type, or to None when the
    argument type is not accepted."""
    min_args: int
    max_args: int
    accepts: str
    result: Callable[[str | None], str | None]


def _same_if(types: tuple[str, ...]) -> Callable[[str | None], str | None]:
    return lambda t: t if t in types else None


def _float_if_numeric(t: str | None) -> str | None:
    return "float64" if t in p.NUMERIC_TYPES else None


AGGREGATIONS: dict[str, AggregationSpec] = {
    "count": AggregationSpec(0, 1, "any value", lambda t: "int64"),
    "sum": AggregationSpec(1, 1, "a number", _same_if(p.NUMERIC_TYPES)),
    "avg": AggregationSpec(1, 1, "a number", _float_if_numeric),
    "min": AggregationSpec(1, 1, "a number, string or timestamp", _same_if(ORDERED_TYPES)),
    "max": AggregationSpec(1, 1, "a number, string or timestamp", _same_if(ORDERED_TYPES)),
    "first": AggregationSpec(1, 1, "any value", lambda t: t),
    "last": AggregationSpec(1, 1, "any value", lambda t: t),
    "count_distinct": AggregationSpec(1, 1, "a scalar value",
                                      lambda t: "int64" if t in p.SCALAR_TYPES else None),
    "stddev": AggregationSpec(1, 1, "a number", _float_if_numeric),
    "variance": AggregationSpec(1, 1, "a number", _float_if_numeric),
}

# Names users reach for that the language does not have yet: they hear "not
# supported yet" rather than "unknown function".
LATER_FUNCTIONS = ("floor", "ceil", "substr", "date_trunc", "sqrt", "ln", "exp", "replace",
                   "trim", "now")
DATE_PARTS = ("year", "month", "day", "hour", "minute", "day_of_week")


@dataclass
class Scope:
    """What an expression in a view may refer to."""
    source: str
    columns: dict[str, str | None]   # column -> type; None: its type was wrong
    features: tuple[str, ...]        # the view's feature names, for hints


# ---------------------------------------------------------------- the mixin
class ExprChecks:
    """Typing of types and expressions; `report` comes from the checker."""

    report: Callable[..., None]

    # ------------------------------------------------------------ types
    def _type(self, t: ast.TypeRef) -> str | None:
        """The plan type for a written type, or None (reported)."""
        supported = ", ".join(p.SCALAR_TYPES) + ", list<T>"
        if t.name in p.SCALAR_TYPES:
            if not t.params:
                return t.name
            self.report("E301", t.span, f"type '{t.name}' takes no parameters")
            return None
        if t.name == "list":
            return self._list_type(t)
        if t.name in LATER_TYPES:
            if all(self._type_known(q) for q in t.params):
                hint = (f"{t.name} is supported inside lists, e.g. list<{t.name}>"
                        if t.name in LIST_ELEMENT_TYPES else f"supported types: {supported}")
                self.report("E302", t.span, f"type '{t.text}' is not supported yet", hint)
            return None
        hint = (f"did you mean '{TYPE_ALIASES[t.name]}'?" if t.name in TYPE_ALIASES
                else did_you_mean(t.name, (*p.SCALAR_TYPES, "list", *LATER_TYPES)))
        self.report("E301", t.span, f"unknown type '{t.name}'",
                    hint or f"types: {supported}")
        return None

    def _list_type(self, t: ast.TypeRef) -> str | None:
        if len(t.params) != 1:
            self.report("E301", t.span, "'list' needs one element type", "write e.g. list<float32>")
            return None
        element = t.params[0]
        if element.name in LIST_ELEMENT_TYPES and not element.params:
            return f"list<{element.name}>"
        if self._type_known(element):
            self.report("E302", t.span, f"type '{t.text}' is not supported yet",
                        f"list elements: {', '.join(LIST_ELEMENT_TYPES)}")
        return None

    def _type_known(self, t: ast.TypeRef) -> bool:
        """Whether a type parameter is a known type; reports it when not."""
        if t.name in (*p.SCALAR_TYPES, *LATER_TYPES, "list"):
            return all(self._type_known(q) for q in t.params)
        self._type(t)
        return False

    # ------------------------------------------------------------ expressions
    def _condition(self, e: ast.Expr, scope: Scope, what: str) -> p.Expr | None:
        expr = self._expr(e, scope)
        if expr is None or expr.type == "bool":
            return expr
        self.report("E303", e.span, f"{what} must be bool, got {expr.type}",
                    "compare it, e.g. `amount > 0`" if expr.type in p.NUMERIC_TYPES else None)
        return None

    def _expr(self, e: ast.Expr, scope: Scope) -> p.Expr | None:
        """The typed plan expression, or None when any part of it is wrong."""
        if isinstance(e, ast.Literal):
            return p.Literal(e.value, _LITERAL_TYPES[e.kind])
        if isinstance(e, ast.ColumnRef):
            return self._column(e, scope)
        if isinstance(e, ast.UnaryOp):
            return self._unary(e, scope)
        if isinstance(e, ast.BinaryOp):
            return self._binary(e, scope)
        if isinstance(e, ast.IsNull):
            operand = self._expr(e.operand, scope)
            func = "is_not_null" if e.negated else "is_null"
            return p.Call(func, (operand,), "bool") if operand is not None else None
        if isinstance(e, ast.CastExpr):
            return self._cast(e, scope)
        if isinstance(e, ast.CaseExpr):
            return self._case(e, scope)
        return self._call(e, scope)

    def _column(self, e: ast.ColumnRef, scope: Scope) -> p.Expr | None:
        if e.name in scope.columns:
            type_ = scope.columns[e.name]
            return p.Column(e.name, type_) if type_ else None
        hint = did_you_mean(e.name, scope.columns)
        if hint is None and e.name in scope.features:
            hint = (f"'{e.name}' is a feature of this view; expressions use columns of "
                    f"source '{scope.source}'")
        self.report("E204", e.span, f"unknown column '{e.name}' in source '{scope.source}'", hint)
        return None

    def _unary(self, e: ast.UnaryOp, scope: Scope) -> p.Expr | None:
        operand = self._expr(e.operand, scope)
        if operand is None:
            return None
        if e.op == "-":
            if numeric(operand.type):
                return p.Unary("-", operand, operand.type)
            self.report("E305", e.span, f"'-' needs a number, got {operand.type}")
            return None
        if operand.type in ("bool", "null"):
            return p.Unary("not", operand, "bool")
        self.report("E307", e.operand.span, f"'not' needs bool, got {operand.type}")
        return None

    def _binary(self, e: ast.BinaryOp, scope: Scope) -> p.Expr | None:
        left, right = self._expr(e.left, scope), self._expr(e.right, scope)
        if left is None or right is None:
            return None
        op = "=" if e.op == "==" else e.op
        lt, rt = left.type, right.type
        if op in ARITHMETIC:
            bad = [(s, t) for s, t in ((e.left.span, lt), (e.right.span, rt)) if not numeric(t)]
            if bad:
                self.report("E305", bad[0][0], f"'{op}' needs numbers, got {lt} and {rt}")
                return None
            return p.Binary(op, left, right, _arithmetic_type(op, lt, rt))
        if op in LOGIC:
            bad = [(s, t) for s, t in ((e.left.span, lt), (e.right.span, rt))
                   if t not in ("bool", "null")]
            if bad:
                self.report("E307", bad[0][0], f"'{op}' needs bool operands, got {bad[0][1]}")
                return None
            return p.Binary(op, left, right, "bool")
        return self._comparison(e, op, left, right)

    def _comparison(self, e: ast.BinaryOp, op: str, left: p.Expr, right: p.Expr) -> p.Expr | None:
        lt, rt = left.type, right.type
        if _is_null_literal(e.left) or _is_null_literal(e.right):
            fix = "is not null" if op == "!=" else "is null"
            self.report("E313", e.span, f"'{e.op} null' is never true: a comparison with null "
                        "is null", f"write `x {fix}`")
            return None
        if is_list(lt) or is_list(rt):
            self.report("E306", e.span, f"cannot compare {lt} with {rt}",
                        "lists are not compared; compare length(x) or an element")
            return None
        if not _comparable(lt, rt):
            self.report("E306", e.span, f"cannot compare {lt} with {rt}",
                        _comparison_hint(lt, rt))
            return None
        if op in ORDERING and "bool" in (lt, rt):
            self.report("E306", e.span, f"'{op}' cannot order bool values",
                        "use = or != with bool values")
            return None
        return p.Binary(op, left, right, "bool")

    def _cast(self, e: ast.CastExpr, scope: Scope) -> p.Expr | None:
        operand = self._expr(e.operand, scope)
        target = self._type(e.type)
        if operand is None or target is None:
            return None
        if operand.type == "null" or operand.type == target:
            return p.Cast(operand, target)
        if target not in CASTS or operand.type not in CASTS[target]:
            accepted = CASTS.get(target)
            self.report("E314", e.span, f"cannot cast {operand.type} to {target}",
                        f"{target} can be cast from {', '.join(accepted)}" if accepted else None)
            return None
        return p.Cast(operand, target)

    def _case(self, e: ast.CaseExpr, scope: Scope) -> p.Expr | None:
        whens = []
        for cond, value in e.whens:
            whens.append((self._condition(cond, scope, "a 'when' condition"),
                          self._expr(value, scope)))
        else_ = self._expr(e.else_, scope) if e.else_ is not None else None
        values = [v for _, v in whens] + ([else_] if e.else_ is not None else [])
        if any(c is None or v is None for c, v in whens) or (e.else_ and else_ is None):
            return None
        spans = [v.span for _, v in e.whens] + ([e.else_.span] if e.else_ else [])
        type_ = self._common_type(values, spans, "the branches of 'case'")
        return p.Case(tuple(whens), else_, type_) if type_ else None

    def _common_type(self, values: list[p.Expr], spans: list[ast.Span], what: str) -> str | None:
        """The type all values fit: one type, null with anything, and int64
        with float64 gives float64. Reports the first value that does not fit."""
        type_ = "null"
        for value, span in zip(values, spans):
            t = value.type
            if type_ == "null" or t == type_ or t == "null":
                type_ = t if type_ == "null" else type_
            elif {type_, t} == {"int64", "float64"}:
                type_ = "float64"
            else:
                self.report("E315", span, f"{what} must have one type, got {type_} and {t}",
                            "cast one of them, e.g. cast(x as string)")
                return None
        return type_

    def _call(self, e: ast.FuncCall, scope: Scope) -> p.Expr | None:
        name = e.name.name
        handler = _FUNCTIONS.get(name)
        if handler is not None:
            args = [self._expr(a, scope) for a in e.args]
            if not self._arity(e, *handler[:2]):
                return None
            return handler[2](self, e, args) if all(a is not None for a in args) else None
        for arg in e.args:  # still report what is wrong inside
            self._expr(arg, scope)
        if name in AGGREGATIONS:
            self.report("E405", e.span, f"aggregation '{name}' cannot be used inside an "
                        "expression", f"define it as a feature of its own: `x = {name}(...)`")
        elif name in LATER_FUNCTIONS:
            self.report("E404", e.name.span, f"function '{name}' is not supported yet")
        else:
            self.report("E210", e.name.span, f"unknown function '{name}'",
                        did_you_mean(name, (*AGGREGATIONS, *_FUNCTIONS, "cast", "case")))
        return None

    def _arity(self, e: ast.FuncCall, low: int, high: int | None) -> bool:
        n = len(e.args)
        if low <= n and (high is None or n <= high):
            return True
        self.report("E310", e.span, f"{e.name.name}() takes {arity(low, high)}, got {n}")
        return False

    # ------------------------------------------------------------ functions
    def _want(self, e: ast.FuncCall, i: int, arg: p.Expr, ok: bool, what: str) -> bool:
        if not ok:
            self.report("E316", e.args[i].span, f"{e.name.name}() needs {what}, got {arg.type}")
        return ok

    def _fn_same_numeric(self, e, args) -> p.Expr | None:
        (x, *digits) = args
        if not self._want(e, 0, x, numeric(x.type), "a number"):
            return None
        if digits and not self._want(e, 1, digits[0], digits[0].type == "int64"
                                     and isinstance(digits[0], p.Literal), "an integer literal"):
            return None
        return p.Call(e.name.name, tuple(args), x.type)

    def _fn_string(self, e, args) -> p.Expr | None:
        ok = all(self._want(e, i, a, a.type in ("string", "null"), "a string")
                 for i, a in enumerate(args))
        return p.Call(e.name.name, tuple(args), "string") if ok else None

    def _fn_length(self, e, args) -> p.Expr | None:
        x = args[0]
        if not self._want(e, 0, x, x.type in ("string", "null") or is_list(x.type),
                          "a string or a list"):
            return None
        return p.Call("length", (x,), "int64")

    def _fn_date_part(self, e, args) -> p.Expr | None:
        x = args[0]
        if not self._want(e, 0, x, x.type in ("timestamp", "null"), "a timestamp"):
            return None
        return p.Call(e.name.name, (x,), "int64")

    def _fn_coalesce(self, e, args) -> p.Expr | None:
        type_ = self._common_type(args, [a.span for a in e.args], "the arguments of coalesce()")
        return p.Call("coalesce", tuple(args), type_) if type_ else None

    def _fn_if(self, e, args) -> p.Expr | None:
        cond, then, else_ = args
        if cond.type not in ("bool", "null"):
            self.report("E303", e.args[0].span, f"the condition of if() must be bool, "
                        f"got {cond.type}")
            return None
        type_ = self._common_type([then, else_], [e.args[1].span, e.args[2].span],
                                  "the branches of if()")
        return p.Case(((cond, then),), else_, type_) if type_ else None


# name -> (min args, max args or None, handler)
_FUNCTIONS: dict[str, tuple[int, int | None, Callable]] = {
    "if": (3, 3, ExprChecks._fn_if),
    "coalesce": (2, None, ExprChecks._fn_coalesce),
    "abs": (1, 1, ExprChecks._fn_same_numeric),
    "round": (1, 2, ExprChecks._fn_same_numeric),
    "lower": (1, 1, ExprChecks._fn_string),
    "upper": (1, 1, ExprChecks._fn_string),
    "concat": (2, None, ExprChecks._fn_string),
    "length": (1, 1, ExprChecks._fn_length),
    **{part: (1, 1, ExprChecks._fn_date_part) for part in DATE_PARTS},
}
FUNCTIONS = tuple(_FUNCTIONS)

_LITERAL_TYPES = {"int": "int64", "float": "float64", "string": "string", "bool": "bool",
                  "null": "null"}


def _is_null_literal(e: ast.Expr) -> bool:
    return isinstance(e, ast.Literal) and e.kind == "null"


def _arithmetic_type(op: str, lt: str, rt: str) -> str:
    if op == "/" or "float64" in (lt, rt):
        return "float64"
    return "int64" if "int64" in (lt, rt) else "null"


def _comparable(lt: str, rt: str) -> bool:
    return lt == rt or "null" in (lt, rt) or (numeric(lt) and numeric(rt))


def _comparison_hint(lt: str, rt: str) -> str | None:
    if "timestamp" in (lt, rt) and "string" in (lt, rt):
        return 'convert the text: cast("2026-01-01 00:00:00" as timestamp)'
    if "string" in (lt, rt) and (numeric(lt) or numeric(rt)):
        return "convert one side with cast(x as ...)"
    return None


def arity(low: int, high: int | None) -> str:
    """"1 argument", "0 to 1 arguments", "2 or more arguments"."""
    if high is None:
        return f"{low} or more arguments"
    if low == high:
        return f"{low} argument{'s' if low != 1 else ''}"
    return f"{low} to {high} arguments"
