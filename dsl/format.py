"""`featurestore fmt`: one canonical layout for `.feat` files.

The layout is printed from the syntax tree, so it never depends on how a file
was laid out, and formatting twice changes nothing. Comments are not in the
tree: they are read off the text and put back next to the item they were
written beside (trailing) or above (leading). Meaning never changes: a test
compiles every example before and after and compares the plans.

The style:
* four spaces per level; one blank line between definitions; inside a block,
  a blank line where the source had one (at most one);
* `entity` and `service` blocks with one line of content stay on one line;
* in `features`, the `=` of a run of features (lines not parted by a blank
  line) line up, and so do their `where`/`over` modifiers;
* `schema`, `tags` and service lists go one item per line when they do not
  fit in WIDTH columns or hold a comment;
* expressions get the parentheses precedence needs and no others; `==` is
  written for equality, so `a = b == c` reads as a definition of a test.
"""
from __future__ import annotations

from dataclasses import dataclass

from . import ast
from .parser import parse_file
from .plan import render_expr, Literal as PlanLiteral

WIDTH = 100
INDENT = "    "
_ALIGN_LIMIT = 48  # wider expressions do not push modifiers into a column


@dataclass
class _Comment:
    line: int
    col: int
    text: str
    own_line: bool   # nothing but the comment on its line


def format_text(path: str, text: str) -> str | None:
    """The canonical text of a file, or None when it does not parse (its
    syntax errors are the checker's to report)."""
    parsed = parse_file(path, text)
    if any(d.code.startswith("E1") for d in parsed.diagnostics):
        return None
    return _Printer(_comments(text)).module(parsed.module)


def _comments(text: str) -> list[_Comment]:
    """Every `# ...` outside a string, with its position."""
    out = []
    for n, line in enumerate(text.split("\n"), 1):
        quoted, escaped = False, False
        for col, ch in enumerate(line):
            if quoted:
                escaped, quoted = (False, True) if escaped else (ch == "\\", ch != '"')
            elif ch == '"':
                quoted = True
            elif ch == "#":
                out.append(_Comment(n, col + 1, line[col:].rstrip(), not line[:col].strip()))
                break
    return out


class _Printer:
    def __init__(self, comments: list[_Comment]):
        self.comments = comments
        # The line where the next item starts: a comment on it is the next
        # item's, even when the item being printed ends on that line too.
        self.stop: int | None = None

    # ------------------------------------------------------------ comments
    def _take(self, pred) -> list[_Comment]:
        taken = [c for c in self.comments if pred(c)]
        self.comments = [c for c in self.comments if not pred(c)]
        return taken

    def _leading(self, before: int, indent: str) -> list[str]:
        """Own-line comments above line `before`, a blank line kept where the
        source had one between them or before the item."""
        taken = self._take(lambda c: c.own_line and c.line < before)
        lines = []
        for prev, c in zip([None, *taken], taken):
            if prev is not None and c.line - prev.line > 1:
                lines.append("")
            lines.append(indent + c.text)
        if taken and before - taken[-1].line > 1:
            lines.append("")
        return lines

    def _trailing(self, first: int, last: int) -> str:
        """Comments on lines first..last not yet placed, as one trailing comment."""
        if self.stop is not None and self.stop <= last:
            last = self.stop - 1
        taken = self._take(lambda c: first <= c.line <= last)
        return "".join("  " + c.text for c in taken)

    def _has_comments(self, span: ast.Span) -> bool:
        return any(span.line <= c.line <= span.end_line for c in self.comments)

    # ------------------------------------------------------------ module
    def module(self, module: ast.Module) -> str:
        items = sorted([*module.imports, *module.definitions],
                       key=lambda i: (i.span.line, i.span.col))
        out: list[str] = []
        for prev, item, after in zip([None, *items], items, [*items[1:], None]):
            if prev is not None and not (isinstance(prev, ast.Import)
                                         and isinstance(item, ast.Import)):
                out.append("")
            out += self._leading(item.span.line, "")
            self.stop = after.span.line if after is not None else None
            if isinstance(item, ast.Import):
                out.append(f"import {_string(item.path)}"
                           + self._trailing(item.span.line, item.span.end_line))
            else:
                out += self._definition(item)
        self.stop = None
        rest = self._take(lambda c: True)
        if rest:
            out += [""] if out else []
            out += [c.text for c in rest]
        return "\n".join(_strip_blank_edges(out)) + "\n"

    def _definition(self, d: ast.Definition) -> list[str]:
        head = f"{d.kind} {d.name.name}" + (f" {d.version.name}" if d.version else "")
        if d.kind in ("entity", "service") and not self._has_comments_inside(d):
            one = self._one_line_block(d, head)
            if one is not None:
                return [one + self._trailing(d.span.line, d.span.end_line)]
        return self._block(head, d.items, d.span, "", self._item)

    def _has_comments_inside(self, d: ast.Definition) -> bool:
        return any(d.span.line <= c.line < d.span.end_line
                   or (c.line == d.span.end_line and c.col < d.span.end_col)
                   for c in self.comments)

    def _one_line_block(self, d: ast.Definition, head: str) -> str | None:
        if d.kind == "service":
            if not all(isinstance(i, ast.FeatureRef) for i in d.items):
                return None
            body = ", ".join(_ref(i) for i in d.items)
        elif len(d.items) == 1 and not isinstance(d.items[0], ast.FeaturesClause):
            body = _clause(d.items[0])
        else:
            return None
        line = f"{head} {{ {body} }}"
        return line if len(line) <= WIDTH and "\n" not in body else None

    def _block(self, head: str, items, span: ast.Span, indent: str, render) -> list[str]:
        """`head {`, each item (with its comments and the blank lines the
        source had between items), then `}`."""
        first_line = items[0].span.line if items else span.end_line
        out = [f"{indent}{head} {{" + (self._trailing(span.line, span.line)
                                       if first_line > span.line else "")]
        inner = indent + INDENT
        prev_end, stop = None, self.stop
        for item, after in zip(items, [*items[1:], None]):
            leading = self._leading(item.span.line, inner)
            start = item.span.line
            if prev_end is not None and _gap(prev_end, start, leading):
                out.append("")
            out += leading
            self.stop = after.span.line if after is not None else stop
            out += render(item, inner)
            prev_end = item.span.end_line
        self.stop = stop
        out += self._leading(span.end_line, inner)
        out.append(f"{indent}}}" + self._trailing(span.line, span.end_line))
        return out

    # ------------------------------------------------------------ clauses
    def _item(self, item, indent: str) -> list[str]:
        if isinstance(item, ast.FeatureRef):
            return [indent + _ref(item) + "," + self._trailing(item.span.line, item.span.end_line)]
        if isinstance(item, ast.FeaturesClause):
            return self._features(item, indent)
        if isinstance(item, (ast.SchemaClause, ast.TagsClause)):
            return self._list_clause(item, indent)
        text = indent + _clause(item)
        return [text + self._trailing(item.span.line, item.span.end_line)]

    def _list_clause(self, clause, indent: str) -> list[str]:
        """`schema { a: t, b: t }` or `tags {...}`: one line if it fits and
        holds no comment, else one entry per line with trailing commas."""
        entries = clause.fields if isinstance(clause, ast.SchemaClause) else clause.tags
        render = _field if isinstance(clause, ast.SchemaClause) else _tag
        line = indent + _clause(clause)
        if len(line) <= WIDTH and not self._has_comments(clause.span):
            return [line]
        return self._block(clause.keyword, list(entries), clause.span, indent,
                           lambda e, ind: [ind + render(e) + ","
                                           + self._trailing(e.span.line, e.span.end_line)])

    def _features(self, clause: ast.FeaturesClause, indent: str) -> list[str]:
        width = {}
        for run in _runs(clause.features):
            columns = (max(len(f.name.name) for f in run), _modifier_column(run))
            width.update((id(f), columns) for f in run)
        return self._block("features", list(clause.features), clause.span, indent,
                           lambda f, ind: self._feature(f, ind, *width[id(f)]))

    def _feature(self, f: ast.Feature, indent: str, name_w: int, expr_w: int) -> list[str]:
        body, over = _feature_columns(f)
        head = f"{indent}{f.name.name.ljust(name_w)} = "
        line = head + (f"{body.ljust(expr_w)} {over}" if over else body)
        lines = [line]
        if len(line) > WIDTH and isinstance(f.expr, ast.CaseExpr):
            lines = _case_lines(f.expr, " " * len(head))
            lines[0] = head + lines[0].lstrip()
            lines[-1] += "".join(f" {part}" for part in (body[len(expr_text(f.expr)):].strip(),
                                                         over) if part)
        lines[-1] += self._trailing(f.span.line, f.span.end_line)
        return lines


# ---------------------------------------------------------------- pieces
def _clause(c) -> str:
    """A clause on one line."""
    if isinstance(c, ast.SchemaClause):
        return f"schema {{ {', '.join(_field(f) for f in c.fields)} }}" if c.fields else "schema {}"
    if isinstance(c, ast.TagsClause):
        return f"tags {{ {', '.join(_tag(t) for t in c.tags)} }}" if c.tags else "tags {}"
    if isinstance(c, ast.DescriptionClause):
        return f"description {_string(c.text)}"
    if isinstance(c, ast.OwnerClause):
        return f"owner {_string(c.text)}"
    if isinstance(c, ast.KeyClause):
        return "key " + ", ".join(_field(f) for f in c.fields)
    if isinstance(c, ast.ConnectorClause):
        parts = [c.kind, c.connector.name]
        parts += [_string(c.path)] if c.path is not None else []
        parts += [f"{o.name.name} {_string(o.value) if o.kind == 'string' else o.value}"
                  for o in c.options]
        return " ".join(parts)
    if isinstance(c, ast.TimestampClause):
        return f"timestamp {c.column.name}"
    if isinstance(c, ast.EntityClause):
        return f"entity {c.entity.name}"
    if isinstance(c, ast.FromClause):
        tail = f" where {expr_text(c.filter)}" if c.filter is not None else ""
        return f"from {c.source.name}{tail}"
    if isinstance(c, (ast.TileClause, ast.TtlClause, ast.LatenessClause)):
        return f"{c.keyword} {c.duration.text}"
    raise TypeError(f"no layout for {type(c).__name__}")


def _field(f: ast.Field) -> str:
    return f"{f.name.name}: {f.type.text}"


def _tag(t: ast.Tag) -> str:
    return f"{t.key.name}: {_string(t.value)}"


def _ref(r: ast.FeatureRef) -> str:
    return f"{r.view.name}.{r.feature.name if r.feature else '*'}"


def _feature_columns(f: ast.Feature) -> tuple[str, str]:
    """`expr [where cond]` and `over w, ...`: the two columns of a feature
    line (`where` before `over`, whichever order it was written in)."""
    body, over = expr_text(f.expr), ""
    for m in f.modifiers:
        if isinstance(m, ast.WhereModifier):
            body += f" where {expr_text(m.condition)}"
    for m in f.modifiers:
        if isinstance(m, ast.OverModifier):
            over += (" " if over else "") + "over " + ", ".join(w.text for w in m.windows)
    return body, over


def _string(value: str) -> str:
    return render_expr(PlanLiteral(value, "string"))


def _gap(prev_end: int, start: int, leading: list[str]) -> bool:
    """Whether the source had a blank line between two items (or between the
    first and the comments above the second)."""
    return start - prev_end > 1 + sum(1 for line in leading if line)


def _runs(features) -> list[list[ast.Feature]]:
    """Features in runs not parted by a blank line or a comment line (features
    written on one line are one run: formatted, they are adjacent lines)."""
    runs: list[list[ast.Feature]] = []
    for f in features:
        if runs and f.span.line - runs[-1][-1].span.end_line <= 1:
            runs[-1].append(f)
        else:
            runs.append([f])
    return runs


def _modifier_column(run: list[ast.Feature]) -> int:
    """Where `over` starts in a run: after its widest `expr where cond`."""
    widths = [len(body) for body, over in map(_feature_columns, run) if over]
    return max(widths) if widths and max(widths) <= _ALIGN_LIMIT else 0


def _strip_blank_edges(lines: list[str]) -> list[str]:
    while lines and not lines[0]:
        lines.pop(0)
    while lines and not lines[-1]:
        lines.pop()
    return lines


# ---------------------------------------------------------------- expressions
_OR, _AND, _NOT, _CMP, _SUM, _PRODUCT, _UNARY, _ATOM = range(1, 9)
_BINARY_LEVEL = {"or": _OR, "and": _AND, "+": _SUM, "-": _SUM, "*": _PRODUCT, "/": _PRODUCT,
                 "%": _PRODUCT}


def expr_text(e: ast.Expr, level: int = 0) -> str:
    """An expression in canonical form, parenthesized where precedence needs it."""
    own, text = _expr(e)
    return f"({text})" if own < level else text


def _expr(e: ast.Expr) -> tuple[int, str]:
    if isinstance(e, ast.Literal):
        return _ATOM, _literal(e)
    if isinstance(e, ast.ColumnRef):
        return _ATOM, e.name
    if isinstance(e, ast.UnaryOp):
        if e.op == "not":
            return _NOT, f"not {expr_text(e.operand, _NOT)}"
        return _UNARY, f"-{expr_text(e.operand, _ATOM)}"
    if isinstance(e, ast.BinaryOp):
        if e.op in _BINARY_LEVEL:
            lv = _BINARY_LEVEL[e.op]
            return lv, f"{expr_text(e.left, lv)} {e.op} {expr_text(e.right, lv + 1)}"
        op = "==" if e.op == "=" else e.op
        return _CMP, f"{expr_text(e.left, _SUM)} {op} {expr_text(e.right, _SUM)}"
    if isinstance(e, ast.IsNull):
        return _CMP, f"{expr_text(e.operand, _SUM)} is {'not ' if e.negated else ''}null"
    if isinstance(e, ast.CastExpr):
        return _ATOM, f"cast({expr_text(e.operand)} as {e.type.text})"
    if isinstance(e, ast.CaseExpr):
        return _ATOM, " ".join(_case_lines(e, ""))
    return _ATOM, f"{e.name.name}({', '.join(expr_text(a) for a in e.args)})"


def _case_lines(e: ast.CaseExpr, pad: str) -> list[str]:
    """`case when .. then ..` with each `when` and the `else` on a line of its
    own (the caller joins them with spaces to make one line)."""
    lines = [f"{pad}{'case ' if i == 0 else '     '}when {expr_text(c)} then {expr_text(v)}"
             for i, (c, v) in enumerate(e.whens)]
    if e.else_ is not None:
        lines.append(f"{pad}     else {expr_text(e.else_)}")
    lines[-1] += " end"
    return [line if i == 0 or pad else line.strip() for i, line in enumerate(lines)]


def _literal(e: ast.Literal) -> str:
    if e.kind == "string":
        return _string(e.value)
    if e.kind in ("int", "float"):
        return e.text or repr(e.value)
    return {"bool": "true" if e.value else "false", "null": "null"}[e.kind]
