"""Diagnostics: every problem the compiler finds, with where and what to do.

All codes live in `CODES`, one line each, so the catalogue can be read (and
documented) in one place. Rendering follows the compilers people know:

    features/spend.feat:12:23: error[E204]: unknown column 'amout' in source 'purchases'
       12 |         spend_1d = sum(amout) over 1d
          |                        ^^^^^
      hint: did you mean 'amount'?
"""
from __future__ import annotations

import difflib
import sys
from dataclasses import dataclass, field, replace
from typing import Iterable, Mapping

from .ast import Span

ERROR = "error"
WARNING = "warning"

# code -> (severity, short title). Grouped by stage: E0 repo, E1 syntax,
# E2 names, E3 types, E4 meaning, W5 warnings, E6 the data of a source
# (featurestore.schema_check: `check --data`, `apply`, `materialize`).
CODES: dict[str, tuple[str, str]] = {
    "E001": (ERROR, "no feature files"),
    "E002": (ERROR, "unreadable file"),
    "E101": (ERROR, "syntax error"),
    "E102": (ERROR, "unexpected character"),
    "E103": (ERROR, "unclosed block"),
    "E104": (ERROR, "invalid string escape"),
    "E105": (ERROR, "invalid duration"),
    "E106": (ERROR, "number out of range"),
    "E201": (ERROR, "duplicate definition"),
    "E202": (ERROR, "unknown entity"),
    "E203": (ERROR, "unknown source"),
    "E204": (ERROR, "unknown column"),
    "E205": (ERROR, "unknown view"),
    "E206": (ERROR, "unknown feature"),
    "E207": (ERROR, "duplicate feature"),
    "E208": (ERROR, "duplicate column"),
    "E209": (ERROR, "duplicate key"),
    "E210": (ERROR, "unknown function"),
    "E211": (ERROR, "duplicate clause"),
    "E212": (ERROR, "clause not allowed here"),
    "E213": (ERROR, "missing clause"),
    "E214": (ERROR, "duplicate tag"),
    "E215": (ERROR, "duplicate modifier"),
    "E216": (ERROR, "invalid service version"),
    "E217": (ERROR, "imported file not found"),
    "E218": (ERROR, "unknown connector"),
    "E219": (ERROR, "unknown connector option"),
    "E220": (ERROR, "invalid option value"),
    "E221": (ERROR, "duplicate option"),
    "E222": (ERROR, "connector takes no path"),
    "E301": (ERROR, "unknown type"),
    "E302": (ERROR, "type not supported yet"),
    "E303": (ERROR, "condition is not bool"),
    "E304": (ERROR, "bad aggregation argument"),
    "E305": (ERROR, "arithmetic on non-numbers"),
    "E306": (ERROR, "incompatible comparison"),
    "E307": (ERROR, "logic on non-bool"),
    "E308": (ERROR, "key type mismatch"),
    "E309": (ERROR, "timestamp column is not a timestamp"),
    "E310": (ERROR, "wrong number of arguments"),
    "E311": (ERROR, "invalid key type"),
    "E312": (ERROR, "untyped feature"),
    "E313": (ERROR, "comparison with null"),
    "E314": (ERROR, "invalid cast"),
    "E315": (ERROR, "branches of different types"),
    "E316": (ERROR, "bad function argument"),
    "E401": (ERROR, "duration not positive"),
    "E402": (ERROR, "window not a multiple of the tile"),
    "E403": (ERROR, "aggregations need a tile"),
    "E404": (ERROR, "not supported yet"),
    "E405": (ERROR, "nested aggregation"),
    "E406": (ERROR, "modifier on a row-level feature"),
    "E407": (ERROR, "view without features"),
    "E408": (ERROR, "feature named like a key"),
    "E409": (ERROR, "service without features"),
    "E410": (ERROR, "stream ttl shorter than a window"),
    "E411": (ERROR, "unbounded stream aggregation"),
    "E412": (ERROR, "lateness under a second"),
    "W501": (WARNING, "feature listed twice in a service"),
    "W502": (WARNING, "absolute source path"),
    "E601": (ERROR, "source data not found"),
    "E602": (ERROR, "column missing from the data"),
    "E603": (ERROR, "column type does not match the data"),
    "E604": (ERROR, "source data unreadable"),
}


@dataclass(frozen=True)
class Diagnostic:
    """One finding. `line`/`col` are 1-based; `end_col` is exclusive, so the
    caret run is `end_col - col` long. `source_line` is the text of `line`,
    kept so `str()` can show it without the sources at hand."""
    code: str
    severity: str
    message: str
    file: str
    line: int
    col: int
    end_col: int
    hint: str | None = None
    source_line: str | None = field(default=None, compare=False, repr=False)

    @classmethod
    def at(cls, code: str, span: Span, message: str, hint: str | None = None) -> "Diagnostic":
        """A diagnostic for `span`, with the catalogue's severity for `code`.
        A span over several lines is underlined to the end of its first line."""
        end_col = span.end_col if span.end_line == span.line else sys.maxsize
        return cls(code, CODES[code][0], message, span.file, span.line, span.col,
                   end_col, hint)

    @property
    def title(self) -> str:
        return CODES[self.code][1]

    @property
    def is_error(self) -> bool:
        return self.severity == ERROR

    def header(self) -> str:
        return f"{self.file}:{self.line}:{self.col}: {self.severity}[{self.code}]: {self.message}"

    def render(self, sources: Mapping[str, str] | None = None) -> str:
        """The header, the source line with a caret under the span, the hint."""
        out = [self.header()]
        text = self.source_line
        if sources is not None and self.file in sources:
            text = source_line(sources[self.file], self.line)
        if text is not None:
            out.append(f"{self.line:>5} | {text}")
            out.append(f"{'':>5} | {_caret(text, self.col, self.end_col)}")
        if self.hint:
            out.append(f"  hint: {self.hint}")
        return "\n".join(out)

    def __str__(self) -> str:
        return self.render()


def source_line(text: str, line: int) -> str | None:
    """Line `line` (1-based) of `text`, without its end-of-line characters."""
    # Split on "\n" only: that is how lark counts lines.
    lines = text.split("\n")
    if 1 <= line <= len(lines):
        return lines[line - 1].rstrip("\r")
    return None


def _caret(text: str, col: int, end_col: int) -> str:
    # Copy tabs from the source so the caret lines up in any terminal.
    pad = "".join("\t" if ch == "\t" else " " for ch in text[: col - 1])
    end = min(end_col, len(text) + 1)
    return pad + "^" * max(1, end - col)


def with_sources(diagnostics: Iterable[Diagnostic], sources: Mapping[str, str]) -> list[Diagnostic]:
    """Attach each diagnostic's source line and clamp its caret to that line."""
    lines: dict[str, list[str]] = {}  # split each file once, not once per diagnostic
    out = []
    for d in diagnostics:
        if d.file in sources and d.file not in lines:
            lines[d.file] = sources[d.file].split("\n")
        file_lines = lines.get(d.file, [])
        if not 1 <= d.line <= len(file_lines):
            out.append(d)
            continue
        text = file_lines[d.line - 1].rstrip("\r")
        end = max(d.col + 1, min(d.end_col, len(text) + 1))
        out.append(replace(d, source_line=text, end_col=end))
    return out


def sort_key(d: Diagnostic) -> tuple:
    return (d.file, d.line, d.col, d.code, d.message)


def did_you_mean(name: str, candidates: Iterable[str]) -> str | None:
    """"did you mean 'x'?" for the closest candidate, or None."""
    match = difflib.get_close_matches(name, sorted(set(candidates)), n=1, cutoff=0.6)
    return f"did you mean '{match[0]}'?" if match else None


def where(span: Span) -> str:
    """`file:line:col`, for hints that point at a second location."""
    return f"{span.file}:{span.line}:{span.col}"
