"""AST -> logical plan: resolve names, type expressions, check the rules.

The checker keeps going after an error: each definition, clause and feature is
checked on its own, and an expression whose part is already wrong gets the
type None, which silences every check above it (one mistake, one message).
It returns a plan only when no error was found. Sources live in
`checker_sources`, types and expressions in `checker_expr`.

Decisions the language makes here:

* Names live in one namespace per kind: an entity and a view may share a name.
  A service is named by its name and version: `fraud v1` and `fraud v2` are two.
* `tile` is required in a view with aggregations; a view with only row-level
  features may leave it out and gets `DEFAULT_TILE_US` (5m), so every plan
  holds a positive tile and no backend divides by zero.
* `==` and `=` are the same operator; the plan spells it `=`.
* `x = sum(a) over 1h, 1d` defines one feature per window, named x_1h, x_1d:
  the name, '_', and the window as written.
* A stream view keeps state for its ttl (its retention), so the ttl must cover
  its longest window; without a ttl, every aggregation needs a window.
* `view.*` in a service lists the view's features in declaration order; a
  feature listed twice is kept once, with a warning.
"""
from __future__ import annotations

import re
from typing import Callable, Iterable

from . import ast
from . import plan as p
from .checker_expr import AGGREGATIONS, ExprChecks, Scope, arity
from .checker_sources import SourceChecks
from .diagnostics import Diagnostic, did_you_mean, where

__all__ = ["AGGREGATIONS", "SUPPORTED_AGGREGATIONS", "check", "feature_names"]

# The one gate between "the language has it" and "the engines compute it":
# every aggregation of AGGREGATIONS is parsed and fully typed; those not
# listed here are reported as not supported yet (E404) until the engines
# compute them (their tile states exist in featurestore.tiles).
SUPPORTED_AGGREGATIONS = frozenset({"count", "sum", "avg", "min", "max", "first", "last",
                                    "count_distinct", "stddev", "variance"})

DEFAULT_TILE_US = 5 * p.US_PER["m"]
KEY_TYPES = ("string", "int64")  # what the Redis layout can encode as a key


def check(modules: Iterable[ast.Module],
          broken: Iterable[tuple[str, str]] = ()) -> tuple[p.Plan | None, list[Diagnostic]]:
    """Check parsed files together. `broken` names blocks that did not parse:
    references to them are not reported again as unknown."""
    checker = _Checker(list(modules), frozenset(broken))
    return checker.run(), checker.diagnostics


def feature_names(f: ast.Feature) -> list[tuple[str, ast.Span]]:
    """The names a feature line defines, with where each is written: one, or
    one per window of `over 1h, 1d, ...` (name_1h, name_1d)."""
    for m in f.modifiers:
        if isinstance(m, ast.OverModifier) and len(m.windows) > 1:
            return [(f"{f.name.name}_{w.text}", w.span) for w in m.windows]
    return [(f.name.name, f.name.span)]


class _Checker(SourceChecks, ExprChecks):
    def __init__(self, modules: list[ast.Module], broken: frozenset[tuple[str, str]]):
        self.modules = modules
        self.broken = broken
        self.diagnostics: list[Diagnostic] = []
        self.defs: dict[str, dict[str, ast.Definition]] = {k: {} for k in ast.KINDS}
        self.entity_keys: dict[str, list[tuple[str, str | None]]] = {}
        self.source_columns: dict[str, dict[str, str | None] | None] = {}
        self.source_kinds: dict[str, str] = {}
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
            self.view_features[defn.name.name] = _view_feature_names(defn)
        views = self._each("view", self._view)
        services = self._each("service", self._service)
        if self.error_count:
            return None
        return p.Plan(entities=entities, sources=sources, views=views, services=services)

    def _each(self, kind: str, check_one: Callable[[ast.Definition], object]) -> tuple:
        """Check every definition of a kind; the results sorted by name."""
        results = []
        for name in sorted(self.defs[kind], key=lambda n: _natural(n)):
            before = self.error_count
            result = check_one(self.defs[kind][name])
            if result is not None and self.error_count == before:
                results.append(result)
        return tuple(results)

    def _collect(self) -> None:
        for module in self.modules:
            for defn in module.definitions:
                seen = self.defs[defn.kind]
                first = seen.get(defn.display_name)
                if first is None:
                    seen[defn.display_name] = defn
                    continue
                self.report("E201", defn.name.span,
                            f"{defn.kind} '{defn.display_name}' is already defined",
                            f"first defined at {where(first.name.span)}")

    # ------------------------------------------------------------ clauses
    def _clauses(self, defn: ast.Definition) -> dict[str, ast.Clause]:
        """The first clause of each keyword; reports clauses that are not
        allowed in this kind of block, or repeated."""
        allowed = ast.BLOCK_CLAUSES[defn.kind]
        found: dict[str, ast.Clause] = {}
        for item in defn.items:
            if isinstance(item, ast.FeatureRef):
                continue
            keyword = item.keyword
            written = item.kind if isinstance(item, ast.ConnectorClause) else keyword
            if keyword not in allowed:
                self.report("E212", item.span,
                            f"'{written}' is not allowed in {_a(defn.kind)}",
                            f"{_a(defn.kind)} takes: {', '.join(allowed)}")
            elif keyword in found:
                first = found[keyword]
                shown = first.kind if isinstance(first, ast.ConnectorClause) else keyword
                what = f"'{written}'" if shown == written else f"'{shown}' and '{written}'"
                self.report("E211", item.span,
                            f"duplicate {what} clause in {defn.kind} '{defn.display_name}'",
                            f"first given at {where(first.span)}")
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

    def _docs(self, clauses: dict) -> dict:
        """The description, owner and tags of a definition, as plan fields."""
        description = clauses.get("description")
        owner = clauses.get("owner")
        return {"description": description.text if description else "",
                "owner": owner.text if owner else "",
                "tags": self._tags(clauses.get("tags"))}

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

    def _positive(self, duration: ast.Duration, what: str) -> int | None:
        if duration.us is None:
            return None
        if duration.us <= 0:
            self.report("E401", duration.span, f"{what} must be positive, got {duration.text}")
            return None
        return duration.us

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
        return p.Entity(defn.name.name, tuple(keys.items()), **self._docs(clauses))

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
        rows, aggs, spans = self._features(defn, clauses, scope, tile_us, entity)
        docs = self._docs(clauses)
        if scope is not None and self.source_kinds.get(scope.source) == "stream":
            self._stream_retention(defn, clauses, aggs, spans, ttl_us)
        if entity is None or scope is None or (tile is not None and tile_us is None):
            return None
        return p.View(
            name=defn.name.name, entity=clauses["entity"].entity.name,
            keys=tuple((k, t) for k, t in entity), source=from_clause.source.name,
            filter=filter_, tile_us=tile_us or DEFAULT_TILE_US, ttl_us=ttl_us,
            row_features=rows, aggregations=aggs, **docs)

    def _stream_retention(self, defn: ast.Definition, clauses: dict,
                          aggs: tuple[p.Aggregation, ...], spans: dict[str, ast.Span],
                          ttl_us: int | None) -> None:
        """A stream view keeps tiles for its ttl: it must reach every window,
        and without a ttl, an aggregation without a window would keep all."""
        unbounded = [a for a in aggs if a.window_us is None]
        if ttl_us is None:
            for a in unbounded:
                self.report("E411", spans[a.name],
                            f"aggregation '{a.name}' of stream view '{defn.name.name}' has no "
                            "window and the view no ttl: its state would grow forever",
                            f"add `over <window>` to '{a.name}', or `ttl 30d` to the view")
            return
        longest = max((a for a in aggs if a.window_us), key=lambda a: a.window_us, default=None)
        if longest is not None and longest.window_us > ttl_us:
            ttl = clauses["ttl"].duration
            window = p.format_duration(longest.window_us)
            self.report("E410", ttl.span, f"ttl {ttl.text} of stream view '{defn.name.name}' "
                        f"is shorter than its longest window {window} ('{longest.name}')",
                        f"a stream view keeps events for its ttl: use `ttl {window}` or more")

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

    def _view_scope(self, defn: ast.Definition, clauses: dict) -> Scope | None:
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
        return Scope(name.name, columns, tuple(self.view_features.get(defn.name.name, ())))

    def _check_keys(self, clause: ast.EntityClause, keys: list, scope: Scope) -> None:
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

    # ------------------------------------------------------------ features
    def _features(self, defn: ast.Definition, clauses: dict, scope: Scope | None,
                  tile_us: int | None, keys: list | None) -> tuple[tuple, tuple, dict]:
        """Row features and aggregations, in declaration order, and where
        each feature's name is written."""
        clause = clauses.get("features")
        if clause is None or not clause.features:
            span = clause.span if clause else defn.name.span
            self.report("E407", span, f"view '{defn.name.name}' defines no features",
                        "add `features { <name> = <expression> }`")
            return (), (), {}
        rows, aggs = [], []
        first: dict[str, ast.Span] = {}
        for f in clause.features:
            names = self._new_names(defn, clauses, f, first, keys)
            if not names:
                continue
            for result in self._feature(f, names, scope, tile_us):
                (aggs if isinstance(result, p.Aggregation) else rows).append(result)
        if any(_is_aggregation(f.expr) for f in clause.features) and "tile" not in clauses:
            self.report("E403", defn.name.span,
                        f"view '{defn.name.name}' has aggregations but no tile",
                        "add `tile 5m` (windows must be multiples of the tile)")
        return tuple(rows), tuple(aggs), first

    def _new_names(self, defn: ast.Definition, clauses: dict, f: ast.Feature,
                   first: dict[str, ast.Span], keys: list | None) -> list[str]:
        """The names `f` defines; [] when one is taken (reported)."""
        names = feature_names(f)
        key_names = {k for k, _ in keys or ()}
        ok = True
        for name, span in names:
            if name in first:
                self.report("E207", span, f"duplicate feature '{name}' in view "
                            f"'{defn.name.name}'", f"first defined at {where(first[name])}")
                ok = False
                continue
            first[name] = span
            if name in key_names:
                self.report("E408", span, f"feature '{name}' has the name of a key of "
                            f"entity '{clauses['entity'].entity.name}'", "rename the feature")
        return [n for n, _ in names] if ok else []

    def _modifiers(self, f: ast.Feature) -> dict[str, ast.Modifier]:
        found: dict[str, ast.Modifier] = {}
        for m in f.modifiers:
            if m.keyword in found:
                self.report("E215", m.span, f"duplicate '{m.keyword}' on feature '{f.name.name}'")
            else:
                found[m.keyword] = m
        return found

    def _feature(self, f: ast.Feature, names: list[str], scope: Scope | None,
                 tile_us: int | None) -> list[p.RowFeature | p.Aggregation]:
        modifiers = self._modifiers(f)
        if _is_aggregation(f.expr):
            return self._aggregation(f, names, modifiers, scope, tile_us)
        for m in modifiers.values():
            self.report("E406", m.span,
                        f"'{m.keyword}' applies to aggregations; '{f.name.name}' is row-level",
                        "a row-level feature is computed on the latest row; "
                        "aggregate it, e.g. sum(x) over 1d")
        expr = self._expr(f.expr, scope) if scope else None
        if expr is None:
            return []
        if expr.type == "null":
            self.report("E312", f.expr.span, f"the type of feature '{f.name.name}' is unknown: "
                        "it is always null", "give it a type, e.g. cast(null as float64)")
            return []
        return [p.RowFeature(f.name.name, expr, expr.type)]

    def _aggregation(self, f: ast.Feature, names: list[str], modifiers: dict,
                     scope: Scope | None, tile_us: int | None) -> list[p.Aggregation]:
        call: ast.FuncCall = f.expr
        name = call.name.name
        spec = AGGREGATIONS[name]
        if not spec.min_args <= len(call.args) <= spec.max_args:
            self.report("E310", call.span,
                        f"{name}() takes {arity(spec.min_args, spec.max_args)}, "
                        f"got {len(call.args)}")
            return []
        arg = self._expr(call.args[0], scope) if call.args and scope else None
        where_ = modifiers.get("where")
        cond = (self._condition(where_.condition, scope, "the 'where' condition")
                if where_ and scope else None)
        over = modifiers.get("over")
        windows = [self._window(w, tile_us) for w in over.windows] if over else [None]
        if scope is None or call.args and arg is None:
            return []
        out = spec.result(arg.type if arg else None)
        if out is None or out == "null":
            hint = "min, max and count also accept strings" if arg.type == "string" else None
            self.report("E304", call.args[0].span,
                        f"{name}() needs {spec.accepts}, got {arg.type}", hint)
            return []
        if (where_ and cond is None) or (over and None in windows):
            return []
        if name not in SUPPORTED_AGGREGATIONS:
            supported = [a for a in AGGREGATIONS if a in SUPPORTED_AGGREGATIONS]
            self.report("E404", call.name.span, f"aggregation '{name}' is not supported yet",
                        f"supported: {', '.join(supported)}")
            return []
        return [p.Aggregation(n, name, arg, cond, w, out) for n, w in zip(names, windows)]

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

    # ------------------------------------------------------------ services
    def _service(self, defn: ast.Definition) -> p.Service | None:
        clauses = self._clauses(defn)
        version = self._version(defn.version)
        listed: dict[tuple[str, str], ast.Span] = {}
        refs = [item for item in defn.items if isinstance(item, ast.FeatureRef)]
        for ref in refs:
            for feature in self._resolve(ref):
                key = (ref.view.name, feature)
                if key in listed:
                    self.report("W501", ref.span, f"'{key[0]}.{key[1]}' is already in service "
                                f"'{defn.display_name}'", f"first listed at {where(listed[key])}")
                else:
                    listed[key] = ref.span
        if not refs:
            self.report("E409", defn.name.span,
                        f"service '{defn.display_name}' lists no features",
                        "add e.g. `my_view.*` or `my_view.my_feature`")
        if version is False:
            return None
        return p.Service(defn.name.name, tuple(listed), version=version, **self._docs(clauses))

    def _version(self, version: ast.Ident | None) -> int | None | bool:
        """The number of `v2`; None without a version; False when malformed."""
        if version is None:
            return None
        m = re.fullmatch(r"[vV]([0-9]{1,9})", version.name)
        if m is None:
            self.report("E216", version.span, f"'{version.name}' is not a service version",
                        "versions are written v1, v2, ...: `service fraud v2 { ... }`")
            return False
        return int(m.group(1))

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
                        _window_hint(ref.feature.name, features)
                        or did_you_mean(ref.feature.name, features))
            return []
        return [ref.feature.name]


# ---------------------------------------------------------------- helpers
def _is_aggregation(e: ast.Expr) -> bool:
    return isinstance(e, ast.FuncCall) and e.name.name in AGGREGATIONS


def _view_feature_names(defn: ast.Definition) -> list[str]:
    names: dict[str, None] = {}
    for item in defn.items:
        if isinstance(item, ast.FeaturesClause):
            for f in item.features:
                names.update((n, None) for n, _ in feature_names(f))
    return list(names)


def _window_hint(name: str, features: list[str]) -> str | None:
    """For `spend` when the view defines spend_1h, spend_1d: name them."""
    family = [f for f in features if f.startswith(name + "_")]
    return f"'{name}' defines {', '.join(family)}" if family else None


def _natural(name: str) -> tuple:
    """Sort key: a service's versions in number order (v2 before v10)."""
    base, _, version = name.partition(" ")
    return (base, len(version), version)


def _a(kind: str) -> str:
    return f"an {kind}" if kind[0] in "aeiou" else f"a {kind}"
