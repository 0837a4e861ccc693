"""AST -> logical plan: resolve names, type expressions, check the rules.

The checker keeps going after an error: each definition, clause and feature is
checked on its own, and an expression whose part is already wrong gets the
type None, which silences every check above it (one mistake, one message).
It returns a plan only when no error was found.

Decisions the language makes here:

* Names live in one namespace per kind: an entity and a view may share a name.
* `tile` is required in a view with aggregations; a view with only row-level
  features may leave it out and gets `DEFAULT_TILE_US` (5m), so every plan
  holds a positive tile and no backend divides by zero.
* `==` and `=` are the same operator; the plan spells it `=`.
* `view.*` in a service lists the view's features in declaration order; a
  feature listed twice is kept once, with a warning.
"""
from __future__ import annotations

import posixpath
from dataclasses import dataclass
from typing import Callable, Iterable

from . import ast
from . import plan as p
from .diagnostics import Diagnostic, did_you_mean, where

DEFAULT_TILE_US = 5 * p.US_PER["m"]
KEY_TYPES = ("string", "int64")  # what the Redis layout can encode as a key

# Types that parse but that no backend handles yet; the checker says so.
LATER_TYPES = ("int32", "float32", "date", "bytes", "decimal", "list", "map")
TYPE_ALIASES = {"int": "int64", "integer": "int64", "long": "int64", "float": "float64",
                "double": "float64", "str": "string", "text": "string", "boolean": "bool",
                "datetime": "timestamp"}
ORDERED_TYPES = ("int64", "float64", "string", "timestamp")


@dataclass(frozen=True)
class AggregationSpec:
    """How one aggregation is called and typed. `result` maps the argument's
    type (None for `count()`) to the output type, or None when the argument
    type is not accepted; `result` None means "not supported yet"."""
    min_args: int
    max_args: int
    accepts: str
    result: Callable[[str | None], str | None] | None


def _same_if(types: tuple[str, ...]) -> Callable[[str | None], str | None]:
    return lambda t: t if t in types else None


AGGREGATIONS: dict[str, AggregationSpec] = {
    "count": AggregationSpec(0, 1, "any value", lambda t: "int64"),
    "sum": AggregationSpec(1, 1, "a number", _same_if(p.NUMERIC_TYPES)),
    "avg": AggregationSpec(1, 1, "a number",
                           lambda t: "float64" if t in p.NUMERIC_TYPES else None),
    "min": AggregationSpec(1, 1, "a number, string or timestamp", _same_if(ORDERED_TYPES)),
    "max": AggregationSpec(1, 1, "a number, string or timestamp", _same_if(ORDERED_TYPES)),
    "first": AggregationSpec(1, 1, "any value", None),
    "last": AggregationSpec(1, 1, "any value", None),
    "count_distinct": AggregationSpec(1, 1, "any value", None),
    "stddev": AggregationSpec(1, 1, "a number", None),
    "variance": AggregationSpec(1, 1, "a number", None),
}
SUPPORTED_AGGREGATIONS = tuple(n for n, s in AGGREGATIONS.items() if s.result is not None)

# Scalar functions: none yet. Names users will reach for are recognised, so
# they hear "not supported yet" rather than "unknown function".
LATER_FUNCTIONS = ("if", "coalesce", "case", "cast", "abs", "round", "floor", "ceil", "lower",
                   "upper", "length", "concat", "substr", "date_trunc", "year", "month", "day",
                   "hour")

ARITHMETIC = ("+", "-", "*", "/", "%")
ORDERING = ("<", "<=", ">", ">=")
LOGIC = ("and", "or")


@dataclass
class _Scope:
    """What an expression in a view may refer to."""
    source: str
    columns: dict[str, str | None]   # column -> type; None: its type was wrong
    features: tuple[str, ...]        # the view's feature names, for hints


def check(modules: Iterable[ast.Module],
          broken: Iterable[tuple[str, str]] = ()) -> tuple[p.Plan | None, list[Diagnostic]]:
    """Check parsed files together. `broken` names blocks that did not parse:
    references to them are not reported again as unknown."""
    checker = _Checker(list(modules), frozenset(broken))
    return checker.run(), checker.diagnostics


class _Checker:
    def __init__(self, modules: list[ast.Module], broken: frozenset[tuple[str, str]]):
        self.modules = modules
        self.broken = broken
        self.diagnostics: list[Diagnostic] = []
        self.defs: dict[str, dict[str, ast.Definition]] = {k: {} for k in ast.KINDS}
        self.entity_keys: dict[str, list[tuple[str, str | None]]] = {}
        self.source_columns: dict[str, dict[str, str | None] | None] = {}
        self.view_features: dict[str, list[str]] = {}
        self.error_count = 0

    def report(self, code: str, span: ast.Span, message: str, hint: str | None = None) -> None:
        diagnostic = Diagnostic.at(code, span, message, hint)
        self.diagnostics.append(diagnostic)
        self.error_count += diagnostic.is_error

    def run(self) -> p.Plan | None:
        self._collect()
        entities = self._each("entity", self._entity)
        sources = self._each("source", self._source)
        for defn in self.defs["view"].values():
            self.view_features[defn.name.name] = _feature_names(defn)
        views = self._each("view", self._view)
        services = self._each("service", self._service)
        if self.error_count:
            return None
        return p.Plan(entities=entities, sources=sources, views=views, services=services)

    def _each(self, kind: str, check_one: Callable[[ast.Definition], object]) -> tuple:
        """Check every definition of a kind; the results sorted by name."""
        results = []
        for name in sorted(self.defs[kind]):
            before = self.error_count
            result = check_one(self.defs[kind][name])
            if result is not None and self.error_count == before:
                results.append(result)
        return tuple(results)

    def _collect(self) -> None:
        for module in self.modules:
            for defn in module.definitions:
                seen = self.defs[defn.kind]
                first = seen.get(defn.name.name)
                if first is None:
                    seen[defn.name.name] = defn
                    continue
                self.report("E201", defn.name.span,
                            f"{defn.kind} '{defn.name.name}' is already defined",
                            f"first defined at {where(first.name.span)}")

    # ------------------------------------------------------------ clauses
    def _clauses(self, defn: ast.Definition) -> dict[str, ast.Clause]:
        """The first clause of each keyword; reports clauses that are not
        allowed in this kind of block, not supported yet, or repeated."""
        allowed = ast.BLOCK_CLAUSES[defn.kind]
        found: dict[str, ast.Clause] = {}
        for item in defn.items:
            if isinstance(item, ast.FeatureRef):
                continue
            keyword = item.keyword
            written = item.kind if isinstance(item, ast.ConnectorClause) else keyword
            if keyword == "owner":
                self.report("E404", item.span, "'owner' is not supported yet")
            elif keyword not in allowed:
                self.report("E212", item.span,
                            f"'{written}' is not allowed in {_a(defn.kind)}",
                            f"{_a(defn.kind)} takes: {', '.join(allowed)}")
            elif keyword in found:
                self.report("E211", item.span,
                            f"duplicate '{written}' clause in {defn.kind} '{defn.name.name}'",
                            f"first given at {where(found[keyword].span)}")
            else:
                found[keyword] = item
        return found

    def _require(self, defn: ast.Definition, clauses: dict, keyword: str, example: str) -> bool:
        if keyword in clauses:
            return True
        self.report("E213", defn.name.span,
                    f"{defn.kind} '{defn.name.name}' has no '{keyword}' clause",
                    f"add `{example}`")
        return False

    def _description(self, clauses: dict) -> str:
        clause = clauses.get("description")
        return clause.text if clause else ""

    # ------------------------------------------------------------ types
    def _type(self, t: ast.TypeRef) -> str | None:
        """The plan type for a written type, or None (reported)."""
        supported = ", ".join(p.SCALAR_TYPES)
        if t.name in p.SCALAR_TYPES:
            if not t.params:
                return t.name
            self.report("E301", t.span, f"type '{t.name}' takes no parameters")
            return None
        if t.name == "list" and len(t.params) != 1:
            self.report("E301", t.span, "'list' needs one element type", "write e.g. list<float32>")
            return None
        if t.name in LATER_TYPES:
            inner = [self._type_known(q) for q in t.params]
            if all(inner):
                self.report("E302", t.span, f"type '{t.text}' is not supported yet",
                            f"supported types: {supported}")
            return None
        hint = (f"did you mean '{TYPE_ALIASES[t.name]}'?" if t.name in TYPE_ALIASES
                else did_you_mean(t.name, (*p.SCALAR_TYPES, *LATER_TYPES)))
        self.report("E301", t.span, f"unknown type '{t.name}'", hint or f"types: {supported}")
        return None

    def _type_known(self, t: ast.TypeRef) -> bool:
        """Whether a type parameter is a known type; reports it when not."""
        if t.name in p.SCALAR_TYPES or t.name in LATER_TYPES:
            return all(self._type_known(q) for q in t.params)
        self._type(t)
        return False

    def _fields(self, fields: Iterable[ast.Field], code: str, what: str) -> dict[str, str | None]:
        """Name -> type of a schema or key list; duplicates reported with `code`."""
        out: dict[str, str | None] = {}
        first: dict[str, ast.Field] = {}
        for f in fields:
            type_ = self._type(f.type)
            if f.name.name in first:
                self.report(code, f.name.span, f"duplicate {what} '{f.name.name}'",
                            f"first declared at {where(first[f.name.name].name.span)}")
                continue
            first[f.name.name] = f
            out[f.name.name] = type_
        return out

    # ------------------------------------------------------------ entities
    def _entity(self, defn: ast.Definition) -> p.Entity | None:
        clauses = self._clauses(defn)
        if not self._require(defn, clauses, "key", "key <name>: string"):
            self.entity_keys[defn.name.name] = []
            return None
        key_clause = clauses["key"]
        keys = self._fields(key_clause.fields, "E209", "key")
        for f in key_clause.fields:
            type_ = keys.get(f.name.name)
            if type_ is not None and type_ not in KEY_TYPES:
                self.report("E311", f.type.span, f"key '{f.name.name}' is {type_}",
                            f"entity keys must be {' or '.join(KEY_TYPES)}")
                keys[f.name.name] = None
        self.entity_keys[defn.name.name] = list(keys.items())
        return p.Entity(defn.name.name, tuple(keys.items()), self._description(clauses))

    # ------------------------------------------------------------ sources
    def _source(self, defn: ast.Definition) -> p.Source | None:
        clauses = self._clauses(defn)
        columns = None  # unknown without a schema: views over it are not checked
        if self._require(defn, clauses, "schema", "schema { <column>: <type>, ... }"):
            columns = self._fields(clauses["schema"].fields, "E208", "column")
        self.source_columns[defn.name.name] = columns
        connector = None
        if self._require(defn, clauses, "batch", 'batch parquet "data/<name>/*.parquet"'):
            connector = self._connector(clauses["batch"])
        timestamp = None
        if self._require(defn, clauses, "timestamp", "timestamp <column>") and columns is not None:
            timestamp = self._timestamp(defn, clauses["timestamp"], columns)
        if connector is None or timestamp is None:
            return None
        kind, format_, path = connector
        schema = tuple((c, t) for c, t in columns.items())
        return p.Source(defn.name.name, kind, format_, path, timestamp, schema,
                        self._description(clauses))

    def _connector(self, clause: ast.ConnectorClause) -> tuple[str, str, str] | None:
        """(kind, format, path) of a supported connector; None (reported) otherwise."""
        name = clause.connector
        if clause.kind == "stream":
            self.report("E404", clause.span, "stream sources are not supported yet",
                        'read the same data with `batch parquet "..."` for now')
            return None
        if name.name != "parquet":
            self.report("E404", name.span, f"batch format '{name.name}' is not supported yet",
                        "supported formats: parquet")
            return None
        for option in clause.options:
            self.report("E404", option.name.span,
                        f"option '{option.name.name}' is not supported for batch parquet")
        if clause.path is None:
            self.report("E213", clause.span, "'batch parquet' needs a path",
                        'write `batch parquet "data/<name>/*.parquet"`')
            return None
        if posixpath.isabs(clause.path) or clause.path[1:3] == ":\\":
            self.report("W502", clause.span, f"source path '{clause.path}' is absolute",
                        "paths relative to the repo root keep the repo portable")
        return "batch", "parquet", clause.path

    def _timestamp(self, defn: ast.Definition, clause: ast.TimestampClause,
                   columns: dict[str, str | None]) -> str | None:
        name = clause.column
        if name.name not in columns:
            self.report("E204", name.span,
                        f"unknown column '{name.name}' in source '{defn.name.name}'",
                        did_you_mean(name.name, columns) or "the timestamp must be a schema column")
            return None
        type_ = columns[name.name]
        if type_ is not None and type_ != "timestamp":
            self.report("E309", name.span,
                        f"timestamp column '{name.name}' is {type_}, not timestamp")
            return None
        return name.name if type_ else None

    # ------------------------------------------------------------ views
    def _view(self, defn: ast.Definition) -> p.View | None:
        clauses = self._clauses(defn)
        entity = self._view_entity(defn, clauses)
        scope = self._view_scope(defn, clauses)
        if entity is not None and scope is not None:
            self._check_keys(clauses["entity"], entity, scope)
        from_clause = clauses.get("from")
        filter_ = None
        if from_clause is not None and from_clause.filter is not None and scope is not None:
            filter_ = self._condition(from_clause.filter, scope, "the filter")
        tile = clauses.get("tile")
        tile_us = self._positive(tile.duration, "tile") if tile else None
        ttl = clauses.get("ttl")
        ttl_us = self._positive(ttl.duration, "ttl") if ttl else None
        rows, aggs = self._features(defn, clauses, scope, tile_us, entity)
        tags = self._tags(clauses.get("tags"))
        if entity is None or scope is None or (tile is not None and tile_us is None):
            return None
        return p.View(
            name=defn.name.name, entity=clauses["entity"].entity.name,
            keys=tuple((k, t) for k, t in entity), source=from_clause.source.name,
            filter=filter_, tile_us=tile_us or DEFAULT_TILE_US, ttl_us=ttl_us,
            row_features=rows, aggregations=aggs,
            description=self._description(clauses), tags=tags)

    def _view_entity(self, defn: ast.Definition, clauses: dict) -> list | None:
        """The keys of the view's entity, or None (reported, or not checkable)."""
        if not self._require(defn, clauses, "entity", "entity <name>"):
            return None
        name = clauses["entity"].entity
        if name.name not in self.defs["entity"]:
            if ("entity", name.name) not in self.broken:
                self.report("E202", name.span, f"unknown entity '{name.name}'",
                            did_you_mean(name.name, self.defs["entity"]))
            return None
        keys = self.entity_keys.get(name.name, [])
        return keys if keys and all(t for _, t in keys) else None

    def _view_scope(self, defn: ast.Definition, clauses: dict) -> _Scope | None:
        """The columns the view's expressions may use, or None."""
        if not self._require(defn, clauses, "from", "from <source>"):
            return None
        name = clauses["from"].source
        if name.name not in self.defs["source"]:
            if ("source", name.name) not in self.broken:
                self.report("E203", name.span, f"unknown source '{name.name}'",
                            did_you_mean(name.name, self.defs["source"]))
            return None
        columns = self.source_columns.get(name.name)
        if columns is None:
            return None
        return _Scope(name.name, columns, tuple(self.view_features.get(defn.name.name, ())))

    def _check_keys(self, clause: ast.EntityClause, keys: list, scope: _Scope) -> None:
        """Each entity key must be a source column of the same type."""
        entity = clause.entity.name
        for key, type_ in keys:
            if key not in scope.columns:
                self.report("E204", clause.entity.span,
                            f"key '{key}' of entity '{entity}' is not a column of source "
                            f"'{scope.source}'", did_you_mean(key, scope.columns))
            elif scope.columns[key] is not None and scope.columns[key] != type_:
                self.report("E308", clause.entity.span,
                            f"key '{key}' is {type_} in entity '{entity}' but "
                            f"{scope.columns[key]} in source '{scope.source}'")

    def _positive(self, duration: ast.Duration, what: str) -> int | None:
        if duration.us is None:
            return None
        if duration.us <= 0:
            self.report("E401", duration.span, f"{what} must be positive, got {duration.text}")
            return None
        return duration.us

    def _tags(self, clause: ast.TagsClause | None) -> tuple[tuple[str, str], ...]:
        if clause is None:
            return ()
        seen: dict[str, ast.Tag] = {}
        for tag in clause.tags:
            if tag.key.name in seen:
                self.report("E214", tag.key.span, f"duplicate tag '{tag.key.name}'",
                            f"first given at {where(seen[tag.key.name].key.span)}")
            else:
                seen[tag.key.name] = tag
        return tuple((k, t.value) for k, t in seen.items())

    # ------------------------------------------------------------ features
    def _features(self, defn: ast.Definition, clauses: dict, scope: _Scope | None,
                  tile_us: int | None, keys: list | None) -> tuple[tuple, tuple]:
        """Row features and aggregations, in declaration order."""
        clause = clauses.get("features")
        if clause is None or not clause.features:
            span = clause.span if clause else defn.name.span
            self.report("E407", span, f"view '{defn.name.name}' defines no features",
                        "add `features { <name> = <expression> }`")
            return (), ()
        rows, aggs, first = [], [], {}
        key_names = {k for k, _ in keys or ()}
        for f in clause.features:
            name = f.name.name
            if name in first:
                self.report("E207", f.name.span, f"duplicate feature '{name}' in view "
                            f"'{defn.name.name}'", f"first defined at {where(first[name])}")
                continue
            first[name] = f.name.span
            if name in key_names:
                self.report("E408", f.name.span, f"feature '{name}' has the name of a key of "
                            f"entity '{clauses['entity'].entity.name}'", "rename the feature")
            result = self._feature(f, scope, tile_us)
            if isinstance(result, p.Aggregation):
                aggs.append(result)
            elif result is not None:
                rows.append(result)
        if any(_is_aggregation(f.expr) for f in clause.features) and "tile" not in clauses:
            self.report("E403", defn.name.span,
                        f"view '{defn.name.name}' has aggregations but no tile",
                        "add `tile 5m` (windows must be multiples of the tile)")
        return tuple(rows), tuple(aggs)

    def _modifiers(self, f: ast.Feature) -> dict[str, ast.Modifier]:
        found: dict[str, ast.Modifier] = {}
        for m in f.modifiers:
            if m.keyword in found:
                self.report("E215", m.span, f"duplicate '{m.keyword}' on feature '{f.name.name}'")
            else:
                found[m.keyword] = m
        return found

    def _feature(self, f: ast.Feature, scope: _Scope | None,
                 tile_us: int | None) -> p.RowFeature | p.Aggregation | None:
        modifiers = self._modifiers(f)
        if _is_aggregation(f.expr):
            return self._aggregation(f, modifiers, scope, tile_us)
        for m in modifiers.values():
            self.report("E406", m.span,
                        f"'{m.keyword}' applies to aggregations; '{f.name.name}' is row-level",
                        "a row-level feature is computed on the latest row; "
                        "aggregate it, e.g. sum(x) over 1d")
        expr = self._expr(f.expr, scope) if scope else None
        if expr is None:
            return None
        if expr.type == "null":
            self.report("E312", f.expr.span, f"the type of feature '{f.name.name}' is unknown: "
                        "it is always null")
            return None
        return p.RowFeature(f.name.name, expr, expr.type)

    def _aggregation(self, f: ast.Feature, modifiers: dict, scope: _Scope | None,
                     tile_us: int | None) -> p.Aggregation | None:
        call: ast.FuncCall = f.expr
        name = call.name.name
        spec = AGGREGATIONS[name]
        if spec.result is None:
            self.report("E404", call.name.span, f"aggregation '{name}' is not supported yet",
                        f"supported: {', '.join(SUPPORTED_AGGREGATIONS)}")
            return None
        if not spec.min_args <= len(call.args) <= spec.max_args:
            self.report("E310", call.span, f"{name}() takes {_arity(spec)}, got {len(call.args)}")
            return None
        arg = self._expr(call.args[0], scope) if call.args and scope else None
        where_ = modifiers.get("where")
        cond = self._condition(where_.condition, scope, "the 'where' condition") if where_ and scope else None
        over = modifiers.get("over")
        window_us = self._window(over.window, tile_us) if over else None
        if scope is None or call.args and arg is None:
            return None
        out = spec.result(arg.type if arg else None)
        if out is None:
            hint = "min, max and count also accept strings" if arg.type == "string" else None
            self.report("E304", call.args[0].span,
                        f"{name}() needs {spec.accepts}, got {arg.type}", hint)
            return None
        if (where_ and cond is None) or (over and window_us is None):
            return None
        return p.Aggregation(f.name.name, name, arg, cond, window_us, out)

    def _window(self, window: ast.Duration, tile_us: int | None) -> int | None:
        us = self._positive(window, "a window")
        if us is None or tile_us is None or us % tile_us == 0:
            return us
        tile = p.format_duration(tile_us)
        lower = max(us // tile_us, 1) * tile_us
        upper = (us // tile_us + 1) * tile_us
        near = [p.format_duration(us) for us in sorted({lower, upper})]
        self.report("E402", window.span, f"window {window.text} is not a multiple of the tile "
                    f"{tile}", f"use {' or '.join(near)}, or a smaller tile")
        return None

    # ------------------------------------------------------------ expressions
    def _condition(self, e: ast.Expr, scope: _Scope, what: str) -> p.Expr | None:
        expr = self._expr(e, scope)
        if expr is None or expr.type == "bool":
            return expr
        self.report("E303", e.span, f"{what} must be bool, got {expr.type}",
                    "compare it, e.g. `amount > 0`" if expr.type in p.NUMERIC_TYPES else None)
        return None

    def _expr(self, e: ast.Expr, scope: _Scope) -> p.Expr | None:
        """The typed plan expression, or None when any part of it is wrong."""
        if isinstance(e, ast.Literal):
            return p.Literal(e.value, _LITERAL_TYPES[e.kind])
        if isinstance(e, ast.ColumnRef):
            return self._column(e, scope)
        if isinstance(e, ast.UnaryOp):
            return self._unary(e, scope)
        if isinstance(e, ast.BinaryOp):
            return self._binary(e, scope)
        return self._call(e, scope)

    def _column(self, e: ast.ColumnRef, scope: _Scope) -> p.Expr | None:
        if e.name in scope.columns:
            type_ = scope.columns[e.name]
            return p.Column(e.name, type_) if type_ else None
        hint = did_you_mean(e.name, scope.columns)
        if hint is None and e.name in scope.features:
            hint = (f"'{e.name}' is a feature of this view; expressions use columns of "
                    f"source '{scope.source}'")
        self.report("E204", e.span, f"unknown column '{e.name}' in source '{scope.source}'", hint)
        return None

    def _unary(self, e: ast.UnaryOp, scope: _Scope) -> p.Expr | None:
        operand = self._expr(e.operand, scope)
        if operand is None:
            return None
        if e.op == "-":
            if _numeric(operand.type):
                return p.Unary("-", operand, operand.type)
            self.report("E305", e.span, f"'-' needs a number, got {operand.type}")
            return None
        if operand.type in ("bool", "null"):
            return p.Unary("not", operand, "bool")
        self.report("E307", e.operand.span, f"'not' needs bool, got {operand.type}")
        return None

    def _binary(self, e: ast.BinaryOp, scope: _Scope) -> p.Expr | None:
        left, right = self._expr(e.left, scope), self._expr(e.right, scope)
        if left is None or right is None:
            return None
        op = "=" if e.op == "==" else e.op
        lt, rt = left.type, right.type
        if op in ARITHMETIC:
            bad = [(s, t) for s, t in ((e.left.span, lt), (e.right.span, rt)) if not _numeric(t)]
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
        if not _comparable(lt, rt):
            self.report("E306", e.span, f"cannot compare {lt} with {rt}")
            return None
        if op in ORDERING and "bool" in (lt, rt):
            self.report("E306", e.span, f"'{op}' cannot order bool values",
                        "use = or != with bool values")
            return None
        return p.Binary(op, left, right, "bool")

    def _call(self, e: ast.FuncCall, scope: _Scope) -> p.Expr | None:
        name = e.name.name
        for arg in e.args:  # still report what is wrong inside
            self._expr(arg, scope)
        if name in AGGREGATIONS:
            self.report("E405", e.span, f"aggregation '{name}' cannot be used inside an "
                        "expression", f"define it as a feature of its own: `x = {name}(...)`")
        elif name in LATER_FUNCTIONS:
            self.report("E404", e.name.span, f"function '{name}' is not supported yet")
        else:
            self.report("E210", e.name.span, f"unknown function '{name}'",
                        did_you_mean(name, (*AGGREGATIONS, *LATER_FUNCTIONS)))
        return None

    # ------------------------------------------------------------ services
    def _service(self, defn: ast.Definition) -> p.Service | None:
        clauses = self._clauses(defn)
        listed: dict[tuple[str, str], ast.Span] = {}
        refs = [item for item in defn.items if isinstance(item, ast.FeatureRef)]
        for ref in refs:
            for feature in self._resolve(ref):
                key = (ref.view.name, feature)
                if key in listed:
                    self.report("W501", ref.span, f"'{key[0]}.{key[1]}' is already in service "
                                f"'{defn.name.name}'", f"first listed at {where(listed[key])}")
                else:
                    listed[key] = ref.span
        if not refs:
            self.report("E409", defn.name.span, f"service '{defn.name.name}' lists no features",
                        "add e.g. `my_view.*` or `my_view.my_feature`")
        return p.Service(defn.name.name, tuple(listed), self._description(clauses))

    def _resolve(self, ref: ast.FeatureRef) -> list[str]:
        """The feature names a ref stands for; [] when it is wrong (reported)."""
        view = ref.view.name
        if view not in self.view_features:
            if ("view", view) not in self.broken:
                self.report("E205", ref.view.span, f"unknown view '{view}'",
                            did_you_mean(view, self.view_features))
            return []
        features = self.view_features[view]
        if ref.feature is None:
            return list(features)
        if ref.feature.name not in features:
            self.report("E206", ref.feature.span,
                        f"unknown feature '{ref.feature.name}' in view '{view}'",
                        did_you_mean(ref.feature.name, features))
            return []
        return [ref.feature.name]


# ---------------------------------------------------------------- helpers
_LITERAL_TYPES = {"int": "int64", "float": "float64", "string": "string", "bool": "bool",
                  "null": "null"}


def _is_aggregation(e: ast.Expr) -> bool:
    return isinstance(e, ast.FuncCall) and e.name.name in AGGREGATIONS


def _feature_names(defn: ast.Definition) -> list[str]:
    names: dict[str, None] = {}
    for item in defn.items:
        if isinstance(item, ast.FeaturesClause):
            names.update((f.name.name, None) for f in item.features)
    return list(names)


def _numeric(t: str) -> bool:
    return t in p.NUMERIC_TYPES or t == "null"


def _arithmetic_type(op: str, lt: str, rt: str) -> str:
    if op == "/" or "float64" in (lt, rt):
        return "float64"
    return "int64" if "int64" in (lt, rt) else "null"


def _comparable(lt: str, rt: str) -> bool:
    return lt == rt or "null" in (lt, rt) or (_numeric(lt) and _numeric(rt))


def _a(kind: str) -> str:
    return f"an {kind}" if kind[0] in "aeiou" else f"a {kind}"


def _arity(spec: AggregationSpec) -> str:
    if spec.min_args == spec.max_args:
        n = spec.min_args
        return f"{n} argument{'s' if n != 1 else ''}"
    return f"{spec.min_args} to {spec.max_args} arguments"
