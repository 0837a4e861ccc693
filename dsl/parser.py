"""Text -> AST: lark's LALR parser, a transformer to `dsl.ast`, friendly errors.

Parsing never raises. A syntax error becomes one diagnostic per broken
top-level block: when a file does not parse, it is split at every definition
that starts in column 1 and each piece is parsed on its own, so one missing
brace costs one diagnostic and the other blocks still reach the checker.
"""
from __future__ import annotations

import math
import re
from copy import copy
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from lark import Lark, Token, Transformer, Tree, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedInput, UnexpectedToken
from lark.lexer import PatternStr
from lark.parsers.lalr_parser_state import ParserState

from . import ast
from .diagnostics import Diagnostic, did_you_mean
from .plan import US_PER

INT64_MAX = 2**63 - 1
MAX_DEPTH = 100  # deeper trees are rejected before anything recurses over them


@dataclass(frozen=True)
class ParsedFile:
    """A file's AST (the blocks that parsed), its syntax diagnostics, and the
    (kind, name) of blocks that did not parse, so the checker does not report
    references to them as unknown."""
    module: ast.Module
    diagnostics: tuple[Diagnostic, ...]
    broken: frozenset[tuple[str, str]]


class _NameEverywhere:
    """A no-op post-lexer whose only job is `always_accept`: with NAME in every
    state's lexer, keywords only match whole words."""
    always_accept = ("NAME",)

    def process(self, stream):
        return stream


@lru_cache(maxsize=1)
def grammar() -> Lark:
    """The parser, built once per process."""
    text = (Path(__file__).parent / "grammar.lark").read_text()
    return Lark(text, parser="lalr", lexer="contextual", propagate_positions=True,
                maybe_placeholders=True, postlex=_NameEverywhere())


def parse_file(path: str, text: str) -> ParsedFile:
    """Parse one file; syntax problems come back as diagnostics."""
    try:
        return _parse_whole(path, text, 0)
    except UnexpectedInput as err:
        first = syntax_diagnostic(path, err)
    return _recover(path, text, first)


def _parse_whole(path: str, text: str, first_line: int) -> ParsedFile:
    # `first_line` newlines in front keep a piece's lines and columns true.
    tree = grammar().parse("\n" * first_line + text)
    diagnostics: list[Diagnostic] = []
    deep = _too_deep(tree)
    if deep is not None:
        diagnostics.append(Diagnostic.at(
            "E101", _span(path, deep), f"expression nested more than {MAX_DEPTH} levels deep",
            "split it into several features"))
        return ParsedFile(ast.Module(path, ()), tuple(diagnostics), frozenset())
    module = _ToAst(path, diagnostics).transform(tree)
    return ParsedFile(module, tuple(diagnostics), frozenset())


_HEADER = re.compile(r"^(entity|source|view|service|import)\b[ \t]*([A-Za-z_][A-Za-z0-9_]*)?",
                     re.M)


def _recover(path: str, text: str, first: Diagnostic) -> ParsedFile:
    """Parse each top-level piece alone, to report one error per broken block."""
    starts = sorted({0, *(m.start() for m in _HEADER.finditer(text)), len(text)})
    definitions, diagnostics, broken = [], [], set()
    line = 0
    for a, b in zip(starts, starts[1:]):
        piece = text[a:b]
        try:
            parsed = _parse_whole(path, piece, line)
            definitions.extend(parsed.module.definitions)
            diagnostics.extend(parsed.diagnostics)
        except UnexpectedInput as err:
            diagnostics.append(syntax_diagnostic(path, err))
            header = _HEADER.match(piece)
            if header and header.group(2):
                broken.add((header.group(1), header.group(2)))
        line += piece.count("\n")
    if not diagnostics:
        diagnostics.append(first)  # the pieces parse alone; report what broke the whole
    return ParsedFile(ast.Module(path, tuple(definitions)), tuple(diagnostics), frozenset(broken))


def _too_deep(tree: Tree) -> Tree | None:
    """The first subtree deeper than MAX_DEPTH, found without recursion."""
    stack = [(tree, 0)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            return node
        stack.extend((c, depth + 1) for c in node.children if isinstance(c, Tree))
    return None


def _span(path: str, node: Tree | Token) -> ast.Span:
    if isinstance(node, Token):
        return ast.Span(path, node.line, node.column, node.end_line, node.end_column)
    m = node.meta
    if m.empty:
        return ast.Span(path, 1, 1, 1, 1)
    return ast.Span(path, m.line, m.column, m.end_line, m.end_column)


# ---------------------------------------------------------------- tree -> AST
_ESCAPES = {'"': '"', "\\": "\\", "n": "\n", "t": "\t", "r": "\r", "0": "\0"}
_ESCAPE = re.compile(r"\\(u[0-9A-Fa-f]{4}|.)")


@v_args(meta=True)
class _ToAst(Transformer):
    """Builds `dsl.ast` nodes; lexical problems (escapes, units, ranges) are
    collected as diagnostics so one run reports all of them."""

    def __init__(self, path: str, diagnostics: list[Diagnostic]):
        super().__init__(visit_tokens=False)
        self.path = path
        self.diagnostics = diagnostics

    def _at(self, meta) -> ast.Span:
        if meta.empty:
            return ast.Span(self.path, 1, 1, 1, 1)
        return ast.Span(self.path, meta.line, meta.column, meta.end_line, meta.end_column)

    def _tok(self, tok: Token) -> ast.Span:
        return _span(self.path, tok)

    def _ident(self, tok: Token) -> ast.Ident:
        return ast.Ident(str(tok), self._tok(tok))

    def _string(self, tok: Token) -> str:
        def unescape(m: re.Match) -> str:
            esc = m.group(1)
            if esc[0] == "u" and len(esc) == 5:
                return chr(int(esc[1:], 16))
            if esc in _ESCAPES:
                return _ESCAPES[esc]
            col = tok.column + m.start()
            span = ast.Span(self.path, tok.line, col, tok.line, col + len(m.group(0)))
            self.diagnostics.append(Diagnostic.at(
                "E104", span, f"invalid escape '{m.group(0)}' in string",
                'use \\" \\\\ \\n \\t \\r \\0 or \\uXXXX'))
            return m.group(0)
        return _ESCAPE.sub(unescape, str(tok)[1:-1])

    # definitions
    def start(self, meta, children):
        imports = tuple(c for c in children if isinstance(c, ast.Import))
        definitions = tuple(c for c in children if isinstance(c, ast.Definition))
        return ast.Module(self.path, definitions, imports)

    def import_def(self, meta, children):
        return ast.Import(self._string(children[0]), self._at(meta))

    def _definition(self, kind, meta, children):
        name, *items = children
        return ast.Definition(kind, self._ident(name), tuple(items), self._at(meta))

    def entity_def(self, meta, children):
        return self._definition("entity", meta, children)

    def source_def(self, meta, children):
        return self._definition("source", meta, children)

    def view_def(self, meta, children):
        return self._definition("view", meta, children)

    def service_def(self, meta, children):
        name, version, *items = children
        return ast.Definition("service", self._ident(name), tuple(items), self._at(meta),
                              self._ident(version) if version is not None else None)

    def feature_ref(self, meta, children):
        view, feature = children
        return ast.FeatureRef(self._ident(view), self._ident(feature), self._at(meta))

    def all_features_ref(self, meta, children):
        return ast.FeatureRef(self._ident(children[0]), None, self._at(meta))

    # clauses
    def description_clause(self, meta, children):
        return ast.DescriptionClause(self._string(children[0]), self._at(meta))

    def owner_clause(self, meta, children):
        return ast.OwnerClause(self._string(children[0]), self._at(meta))

    def tags_clause(self, meta, children):
        return ast.TagsClause(tuple(c for c in children if c is not None), self._at(meta))

    def tag(self, meta, children):
        key, value = children
        return ast.Tag(self._ident(key), self._string(value), self._at(meta))

    def key_clause(self, meta, children):
        return ast.KeyClause(tuple(children), self._at(meta))

    def connector_clause(self, meta, children):
        kind, connector, *rest = children
        path = None
        if rest and isinstance(rest[0], Token):
            path = self._string(rest.pop(0))
        return ast.ConnectorClause(str(kind), self._ident(connector), path, tuple(rest),
                                   self._at(meta))

    def option(self, meta, children):
        name, value = children
        text = self._string(value) if value.type == "STRING" else str(value)
        kind = {"STRING": "string", "NUMBER": "number"}.get(value.type, "name")
        return ast.Option(self._ident(name), text, kind, self._at(meta))

    def timestamp_clause(self, meta, children):
        return ast.TimestampClause(self._ident(children[0]), self._at(meta))

    def schema_clause(self, meta, children):
        return ast.SchemaClause(tuple(c for c in children if c is not None), self._at(meta))

    def field(self, meta, children):
        name, type_ = children
        return ast.Field(self._ident(name), type_, self._at(meta))

    def type(self, meta, children):
        name, *params = children
        return ast.TypeRef(str(name), tuple(p for p in params if p is not None), self._at(meta))

    def entity_clause(self, meta, children):
        return ast.EntityClause(self._ident(children[0]), self._at(meta))

    def from_clause(self, meta, children):
        source, condition = children
        return ast.FromClause(self._ident(source), condition, self._at(meta))

    def tile_clause(self, meta, children):
        return ast.TileClause(children[0], self._at(meta))

    def ttl_clause(self, meta, children):
        return ast.TtlClause(children[0], self._at(meta))

    def lateness_clause(self, meta, children):
        return ast.LatenessClause(children[0], self._at(meta))

    def duration(self, meta, children):
        tok = children[0]
        span = self._tok(tok)
        m = re.fullmatch(r"([0-9]+)([A-Za-z]+)", str(tok))
        amount, unit = int(m.group(1)), m.group(2)
        if unit not in US_PER:
            self.diagnostics.append(Diagnostic.at(
                "E105", span, f"unknown duration unit '{unit}' in '{tok}'",
                "units are s, m, h, d and w, e.g. 90s, 5m, 1h, 30d, 2w"))
            return ast.Duration(str(tok), None, span)
        us = amount * US_PER[unit]
        if us > INT64_MAX:
            self.diagnostics.append(Diagnostic.at("E106", span, f"duration '{tok}' is too long"))
            return ast.Duration(str(tok), None, span)
        return ast.Duration(str(tok), us, span)

    def features_clause(self, meta, children):
        return ast.FeaturesClause(tuple(children), self._at(meta))

    def feature(self, meta, children):
        name, expr, *modifiers = children
        return ast.Feature(name, expr, tuple(modifiers), self._at(meta))

    def feature_name(self, meta, children):
        return self._ident(children[0])

    def where_modifier(self, meta, children):
        return ast.WhereModifier(children[0], self._at(meta))

    def over_modifier(self, meta, children):
        return ast.OverModifier(tuple(children), self._at(meta))

    # expressions
    def binary(self, meta, children):
        left, op, right = children
        return ast.BinaryOp(str(op), left, right, self._at(meta))

    def unary(self, meta, children):
        op, operand = children
        return ast.UnaryOp(str(op), operand, self._at(meta))

    def is_null(self, meta, children):
        operand, negated, _null = children
        return ast.IsNull(operand, negated is not None, self._at(meta))

    def cast(self, meta, children):
        operand, type_ = children
        return ast.CastExpr(operand, type_, self._at(meta))

    def case(self, meta, children):
        *whens, else_ = children
        return ast.CaseExpr(tuple(whens), else_, self._at(meta))

    def when(self, meta, children):
        return tuple(children)

    def column(self, meta, children):
        return ast.ColumnRef(str(children[0]), self._at(meta))

    def call(self, meta, children):
        name, *args = children
        return ast.FuncCall(self._ident(name), tuple(a for a in args if a is not None),
                            self._at(meta))

    def number(self, meta, children):
        text = str(children[0])
        span = self._at(meta)
        if re.fullmatch(r"[0-9]+", text):
            if int(text) > INT64_MAX:
                self.diagnostics.append(Diagnostic.at(
                    "E106", span, f"integer {text} does not fit in int64"))
                return ast.Literal(0, "int", span, text)
            return ast.Literal(int(text), "int", span, text)
        value = float(text)
        if math.isinf(value):
            self.diagnostics.append(Diagnostic.at(
                "E106", span, f"number {text} does not fit in float64"))
            value = 0.0
        return ast.Literal(value, "float", span, text)

    def string(self, meta, children):
        return ast.Literal(self._string(children[0]), "string", self._at(meta))

    def true(self, meta, children):
        return ast.Literal(True, "bool", self._at(meta))

    def false(self, meta, children):
        return ast.Literal(False, "bool", self._at(meta))

    def null(self, meta, children):
        return ast.Literal(None, "null", self._at(meta))


# ---------------------------------------------------------------- syntax errors
def syntax_diagnostic(path: str, err: UnexpectedInput) -> Diagnostic:
    """Turn lark's exception into a diagnostic in the user's words."""
    if isinstance(err, UnexpectedCharacters):
        return _bad_character(path, err)
    token = getattr(err, "token", None)
    if token is None:  # no other kind is raised by LALR today; stay total anyway
        span = ast.Span(path, err.line, err.column, err.line, err.column + 1)
        return Diagnostic.at("E101", span, "syntax error")
    state = err.state if isinstance(err.state, ParserState) else None
    if token.type == "$END":
        return _unexpected_end(path, err, state)
    span = _span(path, token)
    context = _context(state.value_stack if state else [])
    mistake = _mistakes().get(_mistake_key(err, context))
    if mistake is not None:
        message, hint = mistake
        return Diagnostic.at("E101", span, message.format(token=token), hint)
    message = f"expected {describe_expected(_expected(err, state), context)}, got " \
              f"{_describe_token(token)}"
    return Diagnostic.at("E101", span, message, _hint_for(token, context))


def _bad_character(path: str, err: UnexpectedCharacters) -> Diagnostic:
    span = ast.Span(path, err.line, err.column, err.line, err.column + 1)
    char = err.char
    if char == '"':
        return Diagnostic.at("E102", span, "unterminated string",
                             'a string ends with " on the same line')
    if char == "'":
        return Diagnostic.at("E102", span, "unexpected character \"'\"",
                             'strings use double quotes: "like this"')
    return Diagnostic.at("E102", span, f"unexpected character {char!r}")


def _unexpected_end(path: str, err: UnexpectedToken, state: ParserState | None) -> Diagnostic:
    stack = state.value_stack if state else []
    brace = _open_brace(stack)
    if brace is not None:
        owner = _brace_owner(stack[:brace])
        return Diagnostic.at("E103", _span(path, stack[brace]), f"'{{' of {owner} is never closed",
                             "add '}' at the end of the block")
    expected = describe_expected(_expected(err, state), _context(stack))
    return Diagnostic.at("E101", _span(path, err.token), f"unexpected end of file, expected {expected}")


def _open_brace(stack: list) -> int | None:
    """Index of the innermost '{' not yet closed. A '}' can sit unreduced on
    the stack (LALR reduces on the next token), so braces are counted."""
    depth = 0
    for i in range(len(stack) - 1, -1, -1):
        tok = stack[i]
        if isinstance(tok, Token) and tok.type == "RBRACE":
            depth += 1
        elif isinstance(tok, Token) and tok.type == "LBRACE":
            if depth == 0:
                return i
            depth -= 1
    return None


def _expected(err: UnexpectedToken, state: ParserState | None) -> set[str]:
    """The terminals that could really come next. The parse table of an LALR
    state over-approximates (merged lookaheads), and errors raised by the
    lexer list only its terminals, so each candidate is fed to a copy of the
    parser, as lark's InteractiveParser.accepts() does."""
    if state is None:
        return set(err.expected)
    conf = copy(state.parse_conf)
    conf.callbacks = {}  # no tree building while probing
    accepted = set()
    for terminal in state.parse_conf.states[state.position]:
        if not terminal.isupper():
            continue
        probe = state.copy(deepcopy_values=False)
        probe.parse_conf = conf
        try:
            probe.feed_token(Token(terminal, ""), is_end=terminal == "$END")
        except (UnexpectedToken, AssertionError):
            continue
        accepted.add(terminal)
    return accepted


def _brace_owner(stack: list) -> str:
    """How to name the block whose '{' ends `stack`: "view 'x'", "'features'",
    "service 'fraud v2'"."""
    toks = [t for t in stack[-3:] if isinstance(t, Token)]
    if len(toks) == 3 and toks[0].type == "SERVICE" and toks[1].type == toks[2].type == "NAME":
        return f"service '{toks[1]} {toks[2]}'"
    toks = toks[-2:]
    if len(toks) == 2 and toks[1].type == "NAME" and toks[0].type.lower() in ast.KINDS:
        return f"{toks[0]} '{toks[1]}'"
    if toks:
        return f"'{toks[-1]}'"
    return "a block"


# Where the parser stands, read off its value stack: right after a keyword
# that wants a name (`view`, `from`, `key`, ...), or inside the last open '{'.
_NAME_IN_CONTEXT = {
    "features": "a feature definition (name = expression)",
    "schema": "a column name",
    "key": "a column name",
    "timestamp": "a column name",
    "tags": "a tag name",
    "service": "a feature reference (view.feature or view.*)",
    "from": "a source name",
    "colon": "a type (string, int64, float64, bool, timestamp)",
    "connector": "a connector (parquet, csv, table, query, files, kafka or datagen)",
    "entity-name": "an entity name",
    "source-name": "a source name",
    "view-name": "a view name",
    "service-name": "a service name",
}
_WANTS_NAME = {"ENTITY": "entity-name", "SOURCE": "source-name", "VIEW": "view-name",
               "SERVICE": "service-name",
               "FROM": "from", "KEY": "key", "TIMESTAMP": "timestamp", "COLON": "colon",
               "BATCH": "connector", "STREAM": "connector"}


def _context(stack: list) -> str:
    """A key of `_NAME_IN_CONTEXT`, a block kind ('view') or 'top'."""
    last = stack[-1] if stack else None
    if isinstance(last, Token) and last.type in _WANTS_NAME:
        return _WANTS_NAME[last.type]
    brace = _open_brace(stack)
    if brace is None:
        return "top"
    i = brace - 1
    while i >= 0 and isinstance(stack[i], Token) and stack[i].type == "NAME":
        i -= 1  # the block's name, and a service's version
    owner = stack[i] if i >= 0 else None
    return str(owner.type).lower() if isinstance(owner, Token) else "top"


_CLAUSE_KEYWORDS = {"ENTITY", "FROM", "TILE", "TTL", "FEATURES", "KEY", "TIMESTAMP", "SCHEMA",
                    "DESCRIPTION", "OWNER", "TAGS", "BATCH", "STREAM", "LATENESS"}
_EXPR_START = {"NAME", "NUMBER", "STRING", "LPAR", "MINUS", "NOT", "TRUE", "FALSE", "NULL",
               "CASE", "CAST"}
_OPERATORS = {"PLUS", "MINUS", "MUL_OP", "COMPARE", "AND", "OR"}
_WORDS = {"NAME": "a name", "STRING": "a string", "NUMBER": "a number",
          "DURATION": "a duration such as 5m", "COMPARE": "a comparison",
          "MUL_OP": "'*', '/' or '%'", "$END": "end of file"}


def describe_expected(expected: set[str], context: str) -> str:
    """Expected terminals in words: "'}' or a feature definition (...)"."""
    exp = {t for t in expected if t not in ("WS", "COMMENT")}
    if len(exp) > 1:
        exp.discard("LESSTHAN")  # `type<param>` is rare; listing '<' after every type misleads
    words: list[str] = []
    if _EXPR_START <= exp:
        exp -= _EXPR_START
        words.append("an expression")
    if len(exp & _OPERATORS) >= 3:
        exp -= _OPERATORS
        words.append("an operator")
    if context in ast.BLOCK_CLAUSES and len(exp & _CLAUSE_KEYWORDS) >= 2:
        exp -= _CLAUSE_KEYWORDS
        listed = ", ".join(ast.BLOCK_CLAUSES[context])
        words.append(f"{'an' if context[0] in 'aeiou' else 'a'} {context} clause ({listed})")
    if context == "features":
        exp -= _CLAUSE_KEYWORDS  # they are only accepted back as feature names
    if {"ENTITY", "SOURCE", "VIEW", "SERVICE"} <= exp:
        exp -= {"ENTITY", "SOURCE", "VIEW", "SERVICE"}
        words.append("a definition (entity, source, view or service)")
        if "IMPORT" in exp:
            exp.discard("IMPORT")
            words.append("an import")
    if "NAME" in exp:
        exp.discard("NAME")
        words.append(_NAME_IN_CONTEXT.get(context, "a name"))
    words = sorted(_terminal_word(t) for t in exp) + words
    if not words:
        return "something else"
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]


def _terminal_word(name: str) -> str:
    if name in _WORDS:
        return _WORDS[name]
    try:
        pattern = grammar().get_terminal(name).pattern
    except KeyError:
        return name.lower()
    return f"'{pattern.value}'" if isinstance(pattern, PatternStr) else name.lower()


def _describe_token(token: Token) -> str:
    text = str(token)
    if token.type == "STRING":
        return "a string"
    return f"'{text[:30]}'"


def _hint_for(token: Token, context: str) -> str | None:
    """A misspelt keyword gets "did you mean"; a definition keyword inside a
    block usually means a '}' is missing above it."""
    if str(token) in ast.KINDS and context != "top":
        return "is a '}' missing before this?"
    words = {**ast.BLOCK_CLAUSES, "top": ast.KINDS}
    if token.type == "NAME" and context in words and str(token) not in words[context]:
        return did_you_mean(str(token), words[context])
    return None


# Common mistakes, taught by example: where each example fails (parser state,
# token type, and context, since LALR shares states between contexts) maps to
# a message written for that mistake.
_MISTAKE_EXAMPLES: list[tuple[str, str | None, list[str]]] = [
    ("expected '=' after the feature name", "a feature is written `name = expression`",
     ["view v { features { a count() } }", "view v { features { a 1 } }"]),
    ("use '=' to define a feature, not ':'", "a feature is written `name = expression`",
     ["view v { features { a: count() } }"]),
    ("'{token}' needs a unit", "write a duration such as 90s, 5m, 1h, 30d or 2w",
     ["view v { features { a = count() over 5 } }", "view v { tile 5 }", "view v { ttl 5 }",
      "view v { features { a = count() over 5.5 } }"]),
    ("use ':' between a column name and its type, not '='", "write `name: type`",
     ["source s { schema { a = int64 } }", "entity e { key a = string }"]),
    ("expected ',' between columns", None,
     ["source s { schema { a: int64 b: string } }"]),
    ("expected ',' between tags", None, ['view v { tags { a: "x" b: "y" } }']),
    ("a tag value must be a string", 'write `team: "risk"`',
     ["view v { tags { a: b } }", "view v { tags { a: 1 } }"]),
    ("a service lists features as `view.feature` or `view.*`", None,
     ["service s { a }", "service s { a b.c }", "service s { a, b.c }"]),
    ("comparisons cannot be chained", "write `a < b and b < c`",
     ["view v { features { x = a < b < c } }"]),
    ("a source path must be a string", 'write `batch parquet "data/x/*.parquet"`',
     ["source s { batch parquet data/x }"]),
    ("a service version is written v1, v2, ...", "write `service fraud v2 { ... }`",
     ["service s 2 { }", "service s 2.0 { }"]),
    ("an import names a file in double quotes", 'write `import "common.feat"`',
     ["import common.feat", "import common"]),
]


def _mistake_key(err: UnexpectedToken, context: str) -> tuple | None:
    if not isinstance(err.state, ParserState):
        return None
    return err.state.position, err.token.type, context


@lru_cache(maxsize=1)
def _mistakes() -> dict[tuple, tuple[str, str | None]]:
    table: dict[tuple, tuple[str, str | None]] = {}
    for message, hint, examples in _MISTAKE_EXAMPLES:
        for text in examples:
            try:
                grammar().parse(text)
            except UnexpectedToken as err:
                key = _mistake_key(err, _context(err.state.value_stack))
                table.setdefault(key, (message, hint))
    return table
