"""The logical plan: the typed, checked, engine-neutral form of a feature repo.

Every backend (DuckDB, Feast, the Redis layout, later Flink) reads only this.
Nodes are frozen dataclasses holding plain values, so a plan can be compared,
hashed and rendered deterministically. Times are integer microseconds.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from .ast import Span

# Value types, in the user's words. Lists are spelled "list<float32>".
SCALAR_TYPES = ("string", "int64", "float64", "bool", "timestamp")
NUMERIC_TYPES = ("int64", "float64")

US_PER = {"s": 1_000_000, "m": 60_000_000, "h": 3_600_000_000, "d": 86_400_000_000,
          "w": 7 * 86_400_000_000}


def format_duration(us: int) -> str:
    """Render microseconds as the largest exact DSL unit: 90 minutes -> '90m'."""
    for unit in ("w", "d", "h", "m", "s"):
        if us % US_PER[unit] == 0:
            return f"{us // US_PER[unit]}{unit}"
    return f"{us}us"


# ---------------------------------------------------------------- expressions
@dataclass(frozen=True)
class Column:
    name: str
    type: str


@dataclass(frozen=True)
class Literal:
    value: object  # str, int, float, bool or None
    type: str      # "null" for the null literal


@dataclass(frozen=True)
class Unary:
    op: str        # "-", "not"
    operand: "Expr"
    type: str


@dataclass(frozen=True)
class Binary:
    op: str        # + - * / % = != < <= > >= and or
    left: "Expr"
    right: "Expr"
    type: str


@dataclass(frozen=True)
class Call:
    """A scalar function, named as in the DSL: coalesce, abs, round, lower,
    upper, length, concat, year, month, day, hour, minute, day_of_week, and
    is_null / is_not_null for `x is [not] null`."""
    func: str
    args: tuple["Expr", ...]
    type: str


@dataclass(frozen=True)
class Cast:
    """`cast(x as T)`: the value of x converted to type T (null when it cannot be)."""
    operand: "Expr"
    type: str


@dataclass(frozen=True)
class Case:
    """`case when c1 then v1 ... else e end` (and `if(c, a, b)`); else_ None means null."""
    whens: tuple[tuple["Expr", "Expr"], ...]
    else_: "Expr | None"
    type: str


Expr = Column | Literal | Unary | Binary | Call | Cast | Case


_STRING_ESCAPES = str.maketrans({"\\": "\\\\", '"': '\\"', "\n": "\\n", "\t": "\\t",
                                 "\r": "\\r", "\0": "\\0"})


def render_expr(e: Expr) -> str:
    """Deterministic, DSL-like rendering used in plan text and fingerprints."""
    if isinstance(e, Column):
        return e.name
    if isinstance(e, Literal):
        if e.value is None:
            return "null"
        if isinstance(e.value, bool):
            return "true" if e.value else "false"
        if isinstance(e.value, str):
            return '"' + e.value.translate(_STRING_ESCAPES) + '"'
        return repr(e.value)
    if isinstance(e, Unary):
        sep = " " if e.op == "not" else ""
        return f"({e.op}{sep}{render_expr(e.operand)})"
    if isinstance(e, Binary):
        return f"({render_expr(e.left)} {e.op} {render_expr(e.right)})"
    if isinstance(e, Cast):
        return f"cast({render_expr(e.operand)} as {e.type})"
    if isinstance(e, Case):
        whens = " ".join(f"when {render_expr(c)} then {render_expr(v)}" for c, v in e.whens)
        tail = f" else {render_expr(e.else_)}" if e.else_ is not None else ""
        return f"(case {whens}{tail} end)"
    return f"{e.func}({', '.join(render_expr(a) for a in e.args)})"


# ---------------------------------------------------------------- definitions
@dataclass(frozen=True)
class Entity:
    name: str
    keys: tuple[tuple[str, str], ...]  # (key name, type)
    description: str = ""
    owner: str = ""
    tags: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Source:
    name: str
    kind: str                          # "batch" or "stream"
    format: str                        # batch: parquet, csv, table, query; stream: files, kafka, datagen
    path: str                          # file path or glob (relative to the repo root), table
                                       # name, SQL query, kafka topic, or "" for datagen
    timestamp: str                     # name of the event-time column
    schema: tuple[tuple[str, str], ...]
    description: str = ""
    options: tuple[tuple[str, str], ...] = ()   # e.g. (("format", "json"), ("servers", "..."))
    lateness_us: int | None = None     # streams: how late an event may arrive and still count
    owner: str = ""
    tags: tuple[tuple[str, str], ...] = ()
    # Where the source is written, for diagnostics about its data
    # (featurestore.schema_check): the `batch ...`/`stream ...` clause and each
    # schema column. Not part of what the source means: never compared,
    # hashed or rendered; empty for a plan built in code.
    connector_span: Span | None = field(default=None, compare=False, hash=False, repr=False)
    column_spans: tuple[tuple[str, Span], ...] = field(default=(), compare=False, hash=False,
                                                       repr=False)

    def column_span(self, column: str) -> Span | None:
        """Where `column` is declared in the schema, when known."""
        return dict(self.column_spans).get(column)


@dataclass(frozen=True)
class RowFeature:
    """A non-aggregated feature: an expression over the latest row (as of t)."""
    name: str
    expr: Expr
    type: str


@dataclass(frozen=True)
class Aggregation:
    """`function(arg) where cond over window`; window None means all history within ttl."""
    name: str
    function: str                      # count, sum, avg, min, max
    arg: Expr | None                   # None for count()
    where: Expr | None
    window_us: int | None
    type: str                          # output type


@dataclass(frozen=True)
class View:
    name: str
    entity: str
    keys: tuple[tuple[str, str], ...]  # the entity's keys, also source column names
    source: str
    filter: Expr | None
    tile_us: int
    ttl_us: int | None
    row_features: tuple[RowFeature, ...]
    aggregations: tuple[Aggregation, ...]
    description: str = ""
    tags: tuple[tuple[str, str], ...] = ()
    owner: str = ""

    @property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.row_features) + tuple(a.name for a in self.aggregations)

    def feature_type(self, name: str) -> str:
        for f in (*self.row_features, *self.aggregations):
            if f.name == name:
                return f.type
        raise KeyError(name)

    def state_slots(self) -> tuple[int, ...]:
        """Per aggregation, the position of its state in a tile: aggregations
        that differ only in their window (`sum(x) over 1h, 1d`) share one
        state, stored once (featurestore.layout)."""
        first: dict[tuple, int] = {}
        return tuple(first.setdefault((a.function, a.arg, a.where), len(first))
                     for a in self.aggregations)

    def state_owners(self) -> tuple[int, ...]:
        """Per slot of `state_slots`, the first aggregation that fills it."""
        owners: dict[int, int] = {}
        for k, slot in enumerate(self.state_slots()):
            owners.setdefault(slot, k)
        return tuple(owners.values())

    def fingerprint(self) -> str:
        """Short hash of everything that decides stored values; it is part of
        every Redis key, so a changed definition never reads stale state."""
        text = "\n".join([render_view(self, with_docs=False)])
        return hashlib.sha256(text.encode()).hexdigest()[:8]


@dataclass(frozen=True)
class Service:
    name: str
    features: tuple[tuple[str, str], ...]  # (view, feature), in declaration order
    description: str = ""
    version: int | None = None         # `service fraud v2 {...}`: served as "fraud:v2"
    owner: str = ""
    tags: tuple[tuple[str, str], ...] = ()

    @property
    def ref(self) -> str:
        """The name clients ask for: "fraud", or "fraud:v2" for a version."""
        return self.name if self.version is None else f"{self.name}:v{self.version}"


@dataclass(frozen=True)
class Plan:
    entities: tuple[Entity, ...] = ()
    sources: tuple[Source, ...] = ()
    views: tuple[View, ...] = ()
    services: tuple[Service, ...] = ()
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    def entity(self, name: str) -> Entity:
        return next(e for e in self.entities if e.name == name)

    def source(self, name: str) -> Source:
        return next(s for s in self.sources if s.name == name)

    def view(self, name: str) -> View:
        return next(v for v in self.views if v.name == name)

    def service(self, name: str) -> Service:
        return next(s for s in self.services if s.name == name)

    def render(self) -> str:
        return render_plan(self)


# ---------------------------------------------------------------- plan text
def render_view(v: View, with_docs: bool = True) -> str:
    keys = ", ".join(f"{k}: {t}" for k, t in v.keys)
    lines = [f"view {v.name} (entity {v.entity} [{keys}], source {v.source})"]
    if v.filter is not None:
        lines.append(f"  filter {render_expr(v.filter)}")
    lines.append(f"  tile {format_duration(v.tile_us)}")
    lines.append(f"  ttl {format_duration(v.ttl_us) if v.ttl_us else 'none'}")
    for f in v.row_features:
        lines.append(f"  row {f.name}: {f.type} = {render_expr(f.expr)}")
    for a in v.aggregations:
        arg = render_expr(a.arg) if a.arg is not None else ""
        where = f" where {render_expr(a.where)}" if a.where is not None else ""
        over = f" over {format_duration(a.window_us)}" if a.window_us else ""
        lines.append(f"  agg {a.name}: {a.type} = {a.function}({arg}){where}{over}")
    if with_docs:
        lines += _render_docs(v)
    return "\n".join(lines)


def _render_docs(d) -> list[str]:
    """Description, owner and tags lines of a definition; none when unset."""
    lines = []
    if d.description:
        lines.append(f"  description {d.description!r}")
    if d.owner:
        lines.append(f"  owner {d.owner!r}")
    if d.tags:
        lines.append("  tags " + ", ".join(f"{k}={val}" for k, val in d.tags))
    return lines


def _render_source(s: Source) -> str:
    cols = ", ".join(f"{c}: {t}" for c, t in s.schema)
    extra = "".join(f", {k} {v!r}" for k, v in s.options)
    if s.lateness_us is not None:
        extra += f", lateness {format_duration(s.lateness_us) if s.lateness_us else '0s'}"
    return (f"source {s.name} ({s.kind} {s.format} {s.path!r}{extra}, timestamp {s.timestamp})"
            f" [{cols}]")


def render_plan(p: Plan) -> str:
    out = []
    for e in p.entities:
        out.append(f"entity {e.name} [" + ", ".join(f"{k}: {t}" for k, t in e.keys) + "]")
        out += _render_docs(e)
    for s in p.sources:
        out.append(_render_source(s))
        out += _render_docs(s)
    for v in p.views:
        out.append(render_view(v))
    for s in p.services:
        version = f" v{s.version}" if s.version is not None else ""
        out.append(f"service {s.name}{version} [" +
                   ", ".join(f"{v}.{f}" for v, f in s.features) + "]")
        out += _render_docs(s)
    return "\n".join(out) + "\n"
