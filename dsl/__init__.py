"""The feature-definition language: `.feat` text in, a checked logical plan out.

    result = compile_repo(Path("."))          # every features/**/*.feat
    if not result.ok:
        print(result.render())                # file:line:col, source, caret, hint
    plan = result.plan

Stages (each pure): `parser` (lark, text -> `ast`), `checker` (`ast` -> `plan`
plus diagnostics). Compiling never raises on bad input; every problem is a
`Diagnostic`, and all of them are reported in one run.

Imports: every file under `features/` is compiled, and all of them share one
namespace, so a repo needs no import. `import "path.feat"` (relative to the
importing file) adds a file from elsewhere, e.g. entities shared by several
repos; imports are followed transitively and each file is compiled once.
"""
from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

from .checker import check
from .diagnostics import CODES, Diagnostic, did_you_mean, sort_key, with_sources
from .parser import ParsedFile, parse_file
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


# Reads an imported file: its path as the importer names it -> (the path the
# file is known by, its text), or None when it cannot be read.
Loader = Callable[[str], "tuple[str, str] | None"]


def compile_files(files: Mapping[str, str], load: Loader | None = None) -> CompileResult:
    """Compile `.feat` texts together (path -> text); paths are used as given
    in diagnostics. Definitions from all files share one namespace. `load`
    reads an imported file that is not in `files` (None: it does not exist)."""
    sources = dict(files)
    parsed = {path: parse_file(path, sources[path]) for path in sorted(sources)}
    diagnostics = _follow_imports(parsed, sources, load)
    modules, broken = [], set()
    for path in sorted(parsed):
        modules.append(parsed[path].module)
        diagnostics.extend(parsed[path].diagnostics)
        broken |= parsed[path].broken
    plan, found = check(modules, broken)
    diagnostics.extend(found)
    diagnostics = sorted(with_sources(diagnostics, sources), key=sort_key)
    if any(d.is_error for d in diagnostics):
        plan = None
    return CompileResult(plan, diagnostics)


def _follow_imports(parsed: dict[str, ParsedFile], sources: dict[str, str],
                    load: Loader | None) -> list[Diagnostic]:
    """Parse every imported file into `parsed` (and its text into `sources`);
    the diagnostics of imports that cannot be found."""
    diagnostics: list[Diagnostic] = []
    todo = sorted(parsed)
    while todo:
        importer = todo.pop(0)
        for imp in parsed[importer].module.imports:
            path = posixpath.normpath(posixpath.join(posixpath.dirname(importer), imp.path))
            if path in parsed:
                continue
            found = load(path) if load is not None and path.endswith(".feat") else None
            if found is not None:
                path, text = found
                if path in parsed:
                    continue
            else:
                near = [posixpath.relpath(p, posixpath.dirname(importer) or ".") for p in parsed]
                diagnostics.append(Diagnostic.at(
                    "E217", imp.span, f"cannot find imported file '{imp.path}' ({path})",
                    did_you_mean(imp.path, near) or "the path is relative to this file"))
                continue
            sources[path] = text
            parsed[path] = parse_file(path, text)
            todo.append(path)
    return diagnostics


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
    result = compile_files(files, lambda rel: _read_import(root, rel))
    if not unreadable:
        return result
    return CompileResult(None, sorted([*result.diagnostics, *unreadable], key=sort_key))


def _read_import(root: Path, rel: str) -> tuple[str, str] | None:
    """An imported file (path relative to the repo root): its canonical path,
    so two spellings of one file compile it once, and its text; or None."""
    path = (root / rel).resolve()
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    return Path(os.path.relpath(path, root.resolve())).as_posix(), text


def _reason(err: Exception) -> str:
    if isinstance(err, UnicodeDecodeError):
        return f"not UTF-8 (byte {err.start})"
    return err.strerror or str(err)
