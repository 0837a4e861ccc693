"""Sources: the connector table and the checks of `source` blocks.

A connector is `batch <format> ["path"] options...` or `stream <connector>
["path"] options...`. What each takes is data (`CONNECTORS`), so a new
connector is one entry here plus its SQL in the backends that read it.
"""
from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass, field
from typing import Callable

from . import ast
from . import plan as p
from .diagnostics import did_you_mean, where


@dataclass(frozen=True)
class OptionSpec:
    """One option of a connector: `values` lists the words it accepts (None:
    any string); `number` wants a positive integer."""
    required: bool = False
    values: tuple[str, ...] | None = None
    number: bool = False


@dataclass(frozen=True)
class ConnectorSpec:
    """`path` names what the string after the connector is ("a table name"),
    or is None when the connector takes none. `path_option` moves an option
    into the plan's path (the kafka topic), so every backend finds the main
    address of a source in one place."""
    path: str | None
    example: str
    options: dict[str, OptionSpec] = field(default_factory=dict)
    path_option: str | None = None


_STREAM_FORMATS = ("json", "csv")

CONNECTORS: dict[tuple[str, str], ConnectorSpec] = {
    ("batch", "parquet"): ConnectorSpec("a file path or glob", 'batch parquet "data/x/*.parquet"'),
    ("batch", "csv"): ConnectorSpec("a file path or glob", 'batch csv "data/x/*.csv"', {
        "delimiter": OptionSpec(), "header": OptionSpec(values=("true", "false"))}),
    ("batch", "table"): ConnectorSpec(
        "a table name", 'batch table "purchases" database "data/shop.duckdb"',
        {"database": OptionSpec(required=True)}),
    # A query runs on its own connection: it reads files with DuckDB's table
    # functions (read_parquet, read_json, ...), e.g. to union or join them.
    ("batch", "query"): ConnectorSpec(
        "a SQL query", "batch query \"select * from read_json('data/x/*.json')\""),
    ("stream", "files"): ConnectorSpec(
        "a folder", 'stream files "data/purchases/" format json',
        {"format": OptionSpec(required=True, values=_STREAM_FORMATS)}),
    ("stream", "kafka"): ConnectorSpec(
        None, 'stream kafka topic "purchases" servers "localhost:9092" format json', {
            "topic": OptionSpec(required=True), "servers": OptionSpec(required=True),
            "format": OptionSpec(required=True, values=_STREAM_FORMATS),
            "group": OptionSpec(), "start": OptionSpec(values=("earliest", "latest"))},
        path_option="topic"),
    ("stream", "datagen"): ConnectorSpec(None, "stream datagen rows_per_second 1000", {
        "rows_per_second": OptionSpec(number=True), "rows": OptionSpec(number=True)}),
}
# Connectors users will reach for that no engine reads yet.
LATER_CONNECTORS = {"batch": ("json", "delta", "iceberg", "avro", "bigquery", "snowflake"),
                    "stream": ("kinesis", "pulsar", "pubsub")}
FILE_FORMATS = ("parquet", "csv", "files")


class SourceChecks:
    """Checks of source blocks; `report`, `_clauses`, `_require`, `_fields`,
    `_positive` and `_docs` come from the checker."""

    report: Callable[..., None]

    def _source(self, defn: ast.Definition) -> p.Source | None:
        clauses = self._clauses(defn)
        columns = None  # unknown without a schema: views over it are not checked
        if self._require(defn, clauses, "schema", "schema { <column>: <type>, ... }"):
            columns = self._fields(clauses["schema"].fields, "E208", "column")
        self.source_columns[defn.name.name] = columns
        connector = None
        if self._require(defn, clauses, "batch", 'batch parquet "data/<name>/*.parquet"'):
            connector = self._connector(clauses["batch"])
        lateness_us = self._lateness(clauses, connector)
        timestamp = None
        if self._require(defn, clauses, "timestamp", "timestamp <column>") and columns is not None:
            timestamp = self._timestamp(defn, clauses["timestamp"], columns)
        if connector is None or timestamp is None or lateness_us is False:
            return None
        kind, format_, path, options = connector
        self.source_kinds[defn.name.name] = kind
        spans: dict[str, ast.Span] = {}
        for f in clauses["schema"].fields:
            spans.setdefault(f.name.name, f.span)
        return p.Source(defn.name.name, kind, format_, path, timestamp, tuple(columns.items()),
                        options=options, lateness_us=lateness_us, **self._docs(clauses),
                        connector_span=clauses["batch"].span, column_spans=tuple(spans.items()))

    def _lateness(self, clauses: dict, connector: tuple | None) -> int | None | bool:
        """The allowed lateness of a stream; False when it is wrong (reported)."""
        clause = clauses.get("lateness")
        if clause is None:
            return None
        if connector is not None and connector[0] != "stream":
            self.report("E212", clause.span, "'lateness' applies to stream sources only",
                        "batch sources are read whole: no event is late")
            return False
        us = clause.duration.us
        if us is not None and us < 1_000_000:
            # Every event arrives some time after it happened: a lateness this
            # short would drop nearly all of them as late.
            self.report("E412", clause.duration.span,
                        f"lateness must be at least 1s, got {clause.duration.text}",
                        "events always arrive after their time; leave 'lateness' out to "
                        "accept every event a window can still reach")
            return False
        return us

    def _connector(self, clause: ast.ConnectorClause) -> tuple | None:
        """(kind, format, path, options) of a connector; None when wrong (reported)."""
        spec = self._connector_spec(clause)
        if spec is None:
            return None
        path = self._path(clause, spec)
        # A path written where an option was meant (`kafka "t"`) is one mistake.
        options = self._options(clause, spec, check_required=path is not None)
        if options is None or path is None:
            return None
        if spec.path_option is not None:
            path = options.pop(spec.path_option)
        return clause.kind, clause.connector.name, path, tuple(sorted(options.items()))

    def _connector_spec(self, clause: ast.ConnectorClause) -> ConnectorSpec | None:
        name = clause.connector
        spec = CONNECTORS.get((clause.kind, name.name))
        if spec is not None:
            return spec
        known = [c for k, c in CONNECTORS if k == clause.kind]
        listed = ", ".join(known)
        what = "batch format" if clause.kind == "batch" else "stream connector"
        if name.name in LATER_CONNECTORS[clause.kind]:
            self.report("E404", name.span, f"{what} '{name.name}' is not supported yet",
                        f"supported: {listed}")
        else:
            other = "stream" if clause.kind == "batch" else "batch"
            hint = did_you_mean(name.name, known)
            if hint is None and (other, name.name) in CONNECTORS:
                hint = f"'{name.name}' is a {other} connector: write `{other} {name.name}`"
            self.report("E218", name.span, f"unknown {what} '{name.name}'",
                        hint or f"supported: {listed}")
        return None

    def _path(self, clause: ast.ConnectorClause, spec: ConnectorSpec) -> str | None:
        written = f"{clause.kind} {clause.connector.name}"
        if spec.path is None:
            if clause.path is not None:
                fix = (f'name it with `{spec.path_option} "{clause.path}"`' if spec.path_option
                       else f"write `{spec.example}`")
                self.report("E222", clause.span, f"'{written}' takes no path", fix)
                return None
            return ""
        if clause.path is None or not clause.path.strip():
            self.report("E213", clause.span, f"'{written}' needs {spec.path}",
                        f"write `{spec.example}`")
            return None
        is_file = clause.connector.name in FILE_FORMATS
        if is_file and (posixpath.isabs(clause.path) or clause.path[1:3] == ":\\"):
            self.report("W502", clause.span, f"source path '{clause.path}' is absolute",
                        "paths relative to the repo root keep the repo portable")
        return clause.path

    def _options(self, clause: ast.ConnectorClause, spec: ConnectorSpec,
                 check_required: bool = True) -> dict | None:
        """Option name -> value, each checked; None when any is wrong (reported).
        A missing option is not reported next to an unknown one: that is
        most often the missing one, misspelt."""
        written = f"{clause.kind} {clause.connector.name}"
        found: dict[str, ast.Option] = {}
        ok = True
        for option in clause.options:
            name = option.name.name
            if name not in spec.options:
                listed = ", ".join(spec.options) or "none"
                self.report("E219", option.name.span, f"unknown option '{name}' for '{written}'",
                            did_you_mean(name, spec.options) or f"options of {written}: {listed}")
                ok = check_required = False
            elif name in found:
                self.report("E221", option.name.span, f"duplicate option '{name}'",
                            f"first given at {where(found[name].span)}")
                ok = False
            else:
                found[name] = option
                ok = self._option_value(written, option, spec.options[name]) and ok
        for name, option_spec in spec.options.items():
            if check_required and option_spec.required and name not in found:
                self.report("E213", clause.span, f"'{written}' needs the option '{name}'",
                            f"write `{spec.example}`")
                ok = False
        return {n: o.value for n, o in found.items()} if ok else None

    def _option_value(self, written: str, option: ast.Option, spec: OptionSpec) -> bool:
        name, value = option.name.name, option.value
        if spec.number and not (option.kind == "number" and re.fullmatch(r"[1-9][0-9]*", value)):
            self.report("E220", option.span, f"option '{name}' of '{written}' must be a "
                        f"positive whole number, got {value!r}")
            return False
        if spec.values is not None and value not in spec.values:
            self.report("E220", option.span, f"option '{name}' of '{written}' must be "
                        f"{' or '.join(spec.values)}, got {value!r}",
                        did_you_mean(value, spec.values))
            return False
        if spec.values is None and not spec.number and option.kind != "string":
            self.report("E220", option.span, f"option '{name}' of '{written}' must be a "
                        f'string, got {value!r}', f'write `{name} "{value}"`')
            return False
        return True

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
