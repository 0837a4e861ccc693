"""The feature-definition language: `.feat` text in, a checked logical plan out.

    result = compile_repo(Path("."))          # every features/**/*.feat
    if not result.ok:
        print(result.render())                # file:line:col, source, caret, hint
    plan = result.plan

Stages (each pure): `parser` (lark, text -> `ast`), `checker` (`ast` -> `plan`
plus diagnostics). Compiling never raises on bad input; every problem is a
`Diagnostic`, and all of them are reported in one run.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from .checker import check
from .diagnostics import CODES, Diagnostic, sort_key, with_sources
from .parser import parse_file
from .plan import Plan

__all__ = ["CODES", "CompileResult", "Diagnostic", "Plan", "compile_files", "compile_repo"]

FEATURES_DIR = "features"


@dataclass(frozen=True)
class CompileResult:
    """The plan (None when any error was found) and every diagnostic, sorted
    by file, line and column."""
    plan: Plan | None
    diagnostics: list[Diagnostic] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when there is no error (warnings allowed)."""
        return not self.errors

    @property
    def errors(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.is_error]

    @property
    def warnings(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if not d.is_error]

    def render(self) -> str:
        """All diagnostics, each with its source line and caret."""
        return "\n\n".join(d.render() for d in self.diagnostics)


def compile_files(files: Mapping[str, str]) -> CompileResult:
    """Compile `.feat` texts together (path -> text); paths are used as given
    in diagnostics. Definitions from all files share one namespace."""
    diagnostics: list[Diagnostic] = []
    modules, broken = [], set()
    for path in sorted(files):
        parsed = parse_file(path, files[path])
        modules.append(parsed.module)
        diagnostics.extend(parsed.diagnostics)
        broken |= parsed.broken
    plan, found = check(modules, broken)
    diagnostics.extend(found)
    diagnostics = sorted(with_sources(diagnostics, files), key=sort_key)
    if any(d.is_error for d in diagnostics):
        plan = None
    return CompileResult(plan, diagnostics)


def compile_repo(root: Path | str) -> CompileResult:
    """Compile every `*.feat` under `root/features/` (recursively); paths in
    diagnostics are relative to `root`, in POSIX form."""
    root = Path(root)
    paths = sorted(p for p in (root / FEATURES_DIR).rglob("*.feat") if p.is_file())
    files: dict[str, str] = {}
    unreadable: list[Diagnostic] = []
    for path in paths:
        rel = path.relative_to(root).as_posix()
        try:
            files[rel] = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            unreadable.append(Diagnostic("E002", "error", f"cannot read {rel}: {_reason(err)}",
                                         rel, 1, 1, 2))
    if not paths:
        missing = Diagnostic("E001", "error", f"no .feat files under {FEATURES_DIR}/",
                             f"{FEATURES_DIR}/", 1, 1, 2,
                             hint=f"put definitions in {FEATURES_DIR}/<name>.feat")
        return CompileResult(None, [missing])
    result = compile_files(files)
    if not unreadable:
        return result
    return CompileResult(None, sorted([*result.diagnostics, *unreadable], key=sort_key))


def _reason(err: Exception) -> str:
    if isinstance(err, UnicodeDecodeError):
        return f"not UTF-8 (byte {err.start})"
    return err.strerror or str(err)
