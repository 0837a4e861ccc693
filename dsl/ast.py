"""The syntax tree of `.feat` files: what the user wrote, untyped and unchecked.

Every node is a frozen dataclass with a `span`, so any later stage can point a
diagnostic at the exact text it is about. The tree stays faithful to the source
(`==` stays `==`, clauses keep their order and duplicates); judging it is the
checker's job, and normalizing it is the plan's.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Union


@dataclass(frozen=True)
class Span:
    """A region of one file: 1-based lines and columns, `end_col` exclusive."""
    file: str
    line: int
    col: int
    end_line: int
    end_col: int


@dataclass(frozen=True)
class Ident:
    """A name as written, with where it was written."""
    name: str
    span: Span


# ---------------------------------------------------------------- expressions
@dataclass(frozen=True)
class Literal:
    value: object  # int, float, str, bool or None
    kind: str      # "int", "float", "string", "bool", "null"
    span: Span
    text: str = ""  # a number as written (`1.50`), so formatting keeps it


@dataclass(frozen=True)
class ColumnRef:
    name: str
    span: Span


@dataclass(frozen=True)
class UnaryOp:
    op: str        # "-", "not"
    operand: "Expr"
    span: Span


@dataclass(frozen=True)
class BinaryOp:
    op: str        # as written: + - * / % = == != < <= > >= and or
    left: "Expr"
    right: "Expr"
    span: Span


@dataclass(frozen=True)
class FuncCall:
    """`name(args)`: a scalar function or an aggregation; the checker decides."""
    name: Ident
    args: tuple["Expr", ...]
    span: Span


@dataclass(frozen=True)
class IsNull:
    """`x is null`, or `x is not null` when `negated`."""
    operand: "Expr"
    negated: bool
    span: Span


@dataclass(frozen=True)
class CastExpr:
    """`cast(x as type)`."""
    operand: "Expr"
    type: "TypeRef"
    span: Span


@dataclass(frozen=True)
class CaseExpr:
    """`case when c then v ... [else e] end`."""
    whens: tuple[tuple["Expr", "Expr"], ...]
    else_: "Expr | None"
    span: Span


Expr = Union[Literal, ColumnRef, UnaryOp, BinaryOp, FuncCall, IsNull, CastExpr, CaseExpr]


# ---------------------------------------------------------------- pieces
@dataclass(frozen=True)
class TypeRef:
    """A type as written: `int64`, `list<float32>`."""
    name: str
    params: tuple["TypeRef", ...]
    span: Span

    @property
    def text(self) -> str:
        if not self.params:
            return self.name
        return f"{self.name}<{', '.join(p.text for p in self.params)}>"


@dataclass(frozen=True)
class Field:
    """`name: type`, in a schema or an entity key."""
    name: Ident
    type: TypeRef
    span: Span


@dataclass(frozen=True)
class Duration:
    """`5m`; `us` is None when the unit is unknown (already diagnosed)."""
    text: str
    us: int | None
    span: Span


@dataclass(frozen=True)
class Tag:
    key: Ident
    value: str
    span: Span


@dataclass(frozen=True)
class Option:
    """`name value` after a connector, e.g. `topic "purchases"`; the value is
    the string's contents, or the word or number as written."""
    name: Ident
    value: str
    kind: str      # "string", "name" or "number"
    span: Span


# ---------------------------------------------------------------- clauses
# Each clause names its keyword, so messages and the table of which clause a
# block allows speak the user's words.
@dataclass(frozen=True)
class DescriptionClause:
    keyword: ClassVar[str] = "description"
    text: str
    span: Span


@dataclass(frozen=True)
class OwnerClause:
    keyword: ClassVar[str] = "owner"
    text: str
    span: Span


@dataclass(frozen=True)
class TagsClause:
    keyword: ClassVar[str] = "tags"
    tags: tuple[Tag, ...]
    span: Span


@dataclass(frozen=True)
class KeyClause:
    keyword: ClassVar[str] = "key"
    fields: tuple[Field, ...]
    span: Span


@dataclass(frozen=True)
class ConnectorClause:
    """`batch parquet "path"`, `stream kafka topic "t"`: where rows come from."""
    keyword: ClassVar[str] = "batch"
    kind: str                  # "batch" or "stream"
    connector: Ident           # parquet, files, kafka, ...
    path: str | None
    options: tuple[Option, ...]
    span: Span


@dataclass(frozen=True)
class TimestampClause:
    keyword: ClassVar[str] = "timestamp"
    column: Ident
    span: Span


@dataclass(frozen=True)
class SchemaClause:
    keyword: ClassVar[str] = "schema"
    fields: tuple[Field, ...]
    span: Span


@dataclass(frozen=True)
class EntityClause:
    keyword: ClassVar[str] = "entity"
    entity: Ident
    span: Span


@dataclass(frozen=True)
class FromClause:
    keyword: ClassVar[str] = "from"
    source: Ident
    filter: Expr | None
    span: Span


@dataclass(frozen=True)
class TileClause:
    keyword: ClassVar[str] = "tile"
    duration: Duration
    span: Span


@dataclass(frozen=True)
class TtlClause:
    keyword: ClassVar[str] = "ttl"
    duration: Duration
    span: Span


@dataclass(frozen=True)
class LatenessClause:
    keyword: ClassVar[str] = "lateness"
    duration: Duration
    span: Span


@dataclass(frozen=True)
class WhereModifier:
    keyword: ClassVar[str] = "where"
    condition: Expr
    span: Span


@dataclass(frozen=True)
class OverModifier:
    """`over 1d`, or `over 1h, 1d, 7d`: one feature per window."""
    keyword: ClassVar[str] = "over"
    windows: tuple[Duration, ...]
    span: Span


Modifier = Union[WhereModifier, OverModifier]


@dataclass(frozen=True)
class Feature:
    """`name = expr [where cond] [over window]`, modifiers kept as written."""
    name: Ident
    expr: Expr
    modifiers: tuple[Modifier, ...]
    span: Span


@dataclass(frozen=True)
class FeaturesClause:
    keyword: ClassVar[str] = "features"
    features: tuple[Feature, ...]
    span: Span


@dataclass(frozen=True)
class FeatureRef:
    """`view.feature` in a service; `feature` None means `view.*`."""
    view: Ident
    feature: Ident | None
    span: Span


Clause = Union[DescriptionClause, OwnerClause, TagsClause, KeyClause, ConnectorClause,
               TimestampClause, SchemaClause, EntityClause, FromClause, TileClause,
               TtlClause, LatenessClause, FeaturesClause]


# ---------------------------------------------------------------- definitions
@dataclass(frozen=True)
class Definition:
    """A top-level block: `entity`, `source`, `view` or `service`.

    `items` are clauses, plus feature refs in a service. One node shape for
    all kinds keeps the parser dumb; the checker knows what each kind allows.
    """
    kind: str
    name: Ident
    items: tuple[Clause | FeatureRef, ...]
    span: Span
    version: Ident | None = None       # services only: `service fraud v2 {`

    @property
    def display_name(self) -> str:
        """The name as messages show it: `fraud`, or `fraud v2`."""
        return f"{self.name.name} {self.version.name}" if self.version else self.name.name


@dataclass(frozen=True)
class Import:
    """`import "path.feat"`, the path as written (relative to its file)."""
    path: str
    span: Span


@dataclass(frozen=True)
class Module:
    """One parsed `.feat` file."""
    file: str
    definitions: tuple[Definition, ...]
    imports: tuple[Import, ...] = ()


KINDS = ("entity", "source", "view", "service")

# The clauses each kind of block understands, in the order messages list them.
# `batch` stands for the connector clause, whether written `batch` or `stream`.
_DOCS = ("description", "owner", "tags")
BLOCK_CLAUSES: dict[str, tuple[str, ...]] = {
    "entity": ("key", *_DOCS),
    "source": ("batch", "stream", "timestamp", "schema", "lateness", *_DOCS),
    "view": ("entity", "from", "tile", "ttl", *_DOCS, "features"),
    "service": _DOCS,
}
