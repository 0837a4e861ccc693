"""The data check: every batch source's data against its declared schema.

Each batch source is read the way materialization reads it
(`duckdb_sql.stored_source_sql`: the same readers, the same CSV options, the
same ATTACH for tables) but only described, never scanned: DuckDB's DESCRIBE
gives the column types from Parquet footers, the CSV sniffer, the table's
catalog or the query's plan. Three problems are reported, each a diagnostic
at the `.feat` line that declares what the data contradicts:

    E601  the path or glob matches no file (at the `batch ...` clause)
    E602  a declared column is missing from the data (at the column)
    E603  the data's type is not one the declared type accepts (at the column)
    E604  the data cannot be described at all (at the `batch ...` clause)

Columns of the data that the schema does not declare are fine. `ACCEPTED` is
the one table of what each declared type accepts; everything it accepts is
cast to the declared type on read (`duckdb_sql.source_sql`) exactly, so what
reaches Redis is always a value of the declared type.

    diagnostics = check_sources(plan, root)      # [] when the data fits
    require_valid_data(plan, root)               # or raise DataError
"""
from __future__ import annotations

import difflib
import glob
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from dsl.ast import Span
from dsl.diagnostics import Diagnostic, did_you_mean, sort_key, with_sources
from dsl.plan import Plan, Source
from featurestore.backends import duckdb_sql
from featurestore.errors import DataError, MissingDependency

_INTEGERS = ("BIGINT", "INTEGER", "SMALLINT", "TINYINT", "UINTEGER", "USMALLINT", "UTINYINT")

# Declared type -> the DuckDB types of data it accepts, each cast exactly to
# the declared type on read. DECIMAL stands for every DECIMAL(p, s).
# Refused on purpose: UBIGINT and HUGEINT for int64 (values past 2**63 - 1
# do not fit), floats and DECIMAL for int64 (the fraction would be lost),
# anything but VARCHAR for string (a CSV column of digits is BIGINT: quoting
# does not help, declare it int64 or cast it in a `batch query`).
ACCEPTED: dict[str, tuple[str, ...]] = {
    "string": ("VARCHAR",),
    "int64": _INTEGERS,
    "float64": ("DOUBLE", "FLOAT", "DECIMAL", *_INTEGERS, "UBIGINT", "HUGEINT"),
    "bool": ("BOOLEAN",),
    # TIMESTAMP (naive) is read as UTC; a DATE is its midnight, UTC.
    "timestamp": ("TIMESTAMP", "TIMESTAMP WITH TIME ZONE", "TIMESTAMP_NS", "TIMESTAMP_MS",
                  "TIMESTAMP_S", "DATE"),
    # list elements only (`list<float32>`): DOUBLE is rounded to float32
    "float32": ("FLOAT", "DOUBLE"),
    "int32": ("INTEGER", "SMALLINT", "TINYINT", "USMALLINT", "UTINYINT"),
}


def accepts(declared: str, data_type: str) -> bool:
    """Whether a column declared `declared` may hold data of DuckDB type
    `data_type` (as DESCRIBE spells it: "DECIMAL(18,2)", "FLOAT[]", "FLOAT[768]")."""
    if declared.startswith("list<") and declared.endswith(">"):
        element = re.fullmatch(r"(.+)\[\d*\]", data_type)
        return element is not None and accepts(declared[5:-1], element.group(1))
    base = re.sub(r"\(.*\)$", "", data_type)
    return base in ACCEPTED.get(declared, ())


def accepted_text(declared: str) -> str:
    """What a declared type accepts, for hints and docs: "BIGINT, INTEGER, ..."."""
    if declared.startswith("list<") and declared.endswith(">"):
        return "lists (T[] or T[n]) of " + accepted_text(declared[5:-1])
    return ", ".join(ACCEPTED.get(declared, ()))


@dataclass(frozen=True)
class _Where:
    """What a source's diagnostics name: its data and where it is declared."""
    source: Source
    data: str          # "data/x/*.parquet", "table 'orders' in data/shop.duckdb", "the query"

    def at(self, column: str | None) -> Span:
        span = self.source.column_span(column) if column else None
        span = span or self.source.connector_span
        # A plan built in code has no positions: name the source instead.
        return span or Span(f"<source {self.source.name}>", 1, 1, 1, 2)


def check_sources(plan: Plan, root: Path, sources: Iterable[str] | None = None,
                  con=None) -> list[Diagnostic]:
    """Diagnostics of the batch sources named in `sources` (default all) whose
    data does not match their schema; [] when all match. Stream sources are
    checked event by event by the streaming job (`invalid` drops). `con` is
    a DuckDB connection to use (default: a new one)."""
    names = set(sources) if sources is not None else {s.name for s in plan.sources}
    batch = [s for s in plan.sources if s.name in names and s.kind == "batch"]
    if not batch:
        return []
    own = con is None
    if own:
        con = _connect()
    try:
        found = [d for s in batch for d in check_source(con, s, root)]
    finally:
        if own:
            con.close()
    return sorted(_with_lines(found, root), key=sort_key)


def require_valid_data(plan: Plan, root: Path, sources: Iterable[str] | None = None,
                       con=None) -> None:
    """Raise DataError, its message every diagnostic rendered, when the data
    of any of `sources` (default all batch sources) does not match its schema."""
    found = check_sources(plan, root, sources, con)
    if found:
        raise DataError(render(found))


def render(diagnostics: list[Diagnostic]) -> str:
    """The diagnostics as `check` prints them, and a count."""
    body = "\n\n".join(d.render() for d in diagnostics)
    n = len(diagnostics)
    return f"{body}\n{n} error{'s' if n != 1 else ''} in the data of the sources"


def check_source(con, source: Source, root: Path) -> list[Diagnostic]:
    """The diagnostics of one batch source (unsorted, without source lines)."""
    import duckdb

    where = _Where(source, _data_name(source))
    missing = _no_files(source, root, where)
    if missing is not None:
        return [missing]
    try:
        attach = duckdb_sql.attach_sql(source, root)
        if attach:
            con.execute(attach)
        described = con.execute(
            f"DESCRIBE SELECT * FROM {duckdb_sql.stored_source_sql(source, root)}").fetchall()
    except duckdb.Error as e:  # DuckDB says why: not Parquet, no such table, bad SQL
        return [Diagnostic.at("E604", where.at(None),
                              f"cannot read the data of source '{source.name}' ({where.data}): "
                              f"{_first_line(e)}",
                              "fix the path, table or query; DuckDB must be able to read it")]
    data = {row[0]: row[1] for row in described}
    out = []
    for column, declared in source.schema:
        if column not in data:
            out.append(_missing_column(where, column, data))
        elif not accepts(declared, data[column]):
            out.append(_wrong_type(where, column, declared, data[column]))
    return out


# ------------------------------------------------------------------ problems
def _no_files(source: Source, root: Path, where: _Where) -> Diagnostic | None:
    """E601 when a file source's path or glob, or a table's database, matches
    no file (URLs are left to DuckDB: listing them needs its extensions)."""
    path = dict(source.options).get("database", "") if source.format == "table" else source.path
    if source.format not in ("parquet", "csv", "table") or "://" in path:
        return None
    if glob.glob(duckdb_sql.data_path(path, root), recursive=True):
        return None
    what = "database file" if source.format == "table" else "file"
    return Diagnostic.at("E601", where.at(None),
                         f"no {what} matches '{path}' (source '{source.name}')",
                         _nearby_files(path, root))


def _nearby_files(path: str, root: Path) -> str:
    """A hint for a path that matches nothing: the nearest existing folder's
    entry that is closest to what was written, or what that folder holds."""
    parts = path.split("/")
    base = Path("/") if path.startswith("/") else root
    known = []
    for i, part in enumerate(parts[:-1]):
        if "*" in part or not (base / part).is_dir():
            break
        base, known = base / part, known + [part]
    else:
        i = len(parts) - 1
    names = sorted(p.name for p in base.iterdir() if not p.name.startswith(".")) \
        if base.is_dir() else []
    for near in difflib.get_close_matches(parts[i], names, n=3, cutoff=0.6):
        fixed = "/".join(known + [near] + parts[i + 1:])
        if glob.glob(duckdb_sql.data_path(fixed, root), recursive=True):
            return f"did you mean '{fixed}'?"
    folder = "/".join(known) or "."
    shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
    return (f"'{folder}' holds {shown}" if names else f"'{folder}' is empty") + \
        f"; paths are relative to the repo root ({root})"


def _missing_column(where: _Where, column: str, data: dict[str, str]) -> Diagnostic:
    columns = [c for c in data if c not in ("filename", "file_row_number")]
    hint = did_you_mean(column, columns) or f"the data has {', '.join(columns)}"
    return Diagnostic.at("E602", where.at(column),
                         f"column '{column}' of source '{where.source.name}' is not in "
                         f"{where.data}", hint)


def _wrong_type(where: _Where, column: str, declared: str, data_type: str) -> Diagnostic:
    fits = [t for t in ("string", "int64", "float64", "bool", "timestamp") if accepts(t, data_type)]
    instead = f"; declare `{column}: {fits[0]}`" if fits else ""
    hint = (f"the data's type is {data_type}; {declared} accepts {accepted_text(declared)}"
            f"{instead}, or convert it in a `batch query` with CAST")
    return Diagnostic.at("E603", where.at(column),
                         f"column '{column}' is declared {declared}, but {where.data} holds "
                         f"{data_type}", hint)


# ------------------------------------------------------------------ helpers
def _data_name(source: Source) -> str:
    if source.format == "table":
        return f"table '{source.path}' in {dict(source.options).get('database', '?')}"
    if source.format == "query":
        return "the query"
    return source.path


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def _with_lines(diagnostics: list[Diagnostic], root: Path) -> list[Diagnostic]:
    """Attach each diagnostic's `.feat` line (files are relative to `root`)."""
    texts = {}
    for d in diagnostics:
        if d.file not in texts:
            try:
                texts[d.file] = (root / d.file).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError, ValueError):
                pass
    return with_sources(diagnostics, texts)


def _connect():
    try:
        from featurestore.materialize import connect
    except ModuleNotFoundError as e:  # pyarrow or duckdb: the batch extra
        raise MissingDependency(e.name or "duckdb", "batch", "checking data") from None
    try:
        return connect("1GB")
    except ModuleNotFoundError as e:
        raise MissingDependency(e.name or "duckdb", "batch", "checking data") from None
