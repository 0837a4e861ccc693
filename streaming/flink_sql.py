"""Flink SQL backend: the stream views of a plan as the statements of one job.

Pure functions from plan nodes to Flink SQL text; `streaming.job` runs them,
`featurestore compile` writes them (`render`). The job reads every stream
source once (through `<source>__typed`, which converts the fields read as
text: `typed_source_sql`) and, per stream view:

    <view>__rows     the source's rows after the view's filter, with
                     __ts    event time in epoch microseconds
                     __now   the job's clock (processing time), read once per row
                     __drop  why the view drops the row (late, future, invalid), or null
    <view>__tiles    per (entity, tile) the tile state, for the view's tiles
                     and its rollup tiles (streaming.flink_states)
    <view>__latest   per entity the latest row (streaming.flink_states)
    <view>__dropped  per reason and hour, how many rows the view dropped
                     (and the lines its source could not read:
                     `<source>__unread`), and how many it counted

Each of the last three is inserted through a Python function of its own
(streaming.job) that writes its updates to Redis (streaming.sink). No Python
runs per event: aggregations mini-batch, so Python sees one update per key
and batch.

Late events: the GROUP BYs have no event-time window, so an event updates its
tile whenever it arrives. A view drops an event only when no window or ttl of
the view can reach it at the job's clock, or when it arrives later after its
event time than the source's `lateness` allows; each drop is counted.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from dsl.plan import Plan, Source, View
from featurestore import layout, windows
from streaming import flink_states, sink, wire
from streaming.flink_expr import (KINDS, Unsupported, epoch_us, expr_sql, floor_to, ident,
                                  sql_type, string)
from streaming.sink import Field

# Events further ahead of the job's clock than windows.MAX_FUTURE_US are
# dropped (and counted) as "future": a producer's clock, or its time zone, is
# wrong. Counts of dropped events are kept per hour of the job's clock, so
# that Flink can forget an hour's count once the hour is over.
DROP_HOUR_US = windows.HOUR_US
SINK_TABLE = "featurestore_written"

__all__ = ["Unsupported", "Job", "Tuning", "SourceSettings", "compile_job", "render",
           "source_ddl", "stream_views", "typed_source_sql"]


# ================================================================ sources
@dataclass(frozen=True)
class SourceSettings:
    """How sources are read; they appear in the DDL."""
    root: Path = Path("")            # the repo: relative file paths are below it
    monitor_interval_ms: int = 100   # how often a files folder is listed
    bounded: bool = False            # read the files there are, then stop (benchmarks)
    count_lines: bool = True         # read json sources twice, to count the lines
                                     # Flink's reader skips (`unread_sql`)


# A field of a json or csv stream is read as text and converted in SQL
# (`typed_source_sql`), so that a value its declared type cannot hold (a
# word where int64 is declared, 2.5 for an int64, "yes" for a bool) is told
# from a missing one: the event is dropped and counted `invalid`, never
# stored as null, truncated or guessed (the formats' own conversion would do
# each of these). An empty field is null. string takes any JSON scalar, as
# its text; timestamps and lists are left to the format, and a timestamp
# that does not parse is null (the event is invalid when it is the time).
_FROM_TEXT = {
    "int64": "CASE WHEN REGEXP({0}, '^[+-]?[0-9]+$') THEN TRY_CAST({0} AS BIGINT) END",
    "float64": "TRY_CAST({0} AS DOUBLE)",
    "bool": "CASE LOWER({0}) WHEN 'true' THEN TRUE WHEN 'false' THEN FALSE END",
}


def text_columns(source: Source) -> list[str]:
    """The columns read as text and converted by `typed_source_sql`: the
    int64, float64 and bool columns of a json or csv stream."""
    if source.format not in ("files", "kafka"):
        return []   # datagen makes values of the declared types
    return [c for c, t in source.schema if t in _FROM_TEXT]


def typed_source(source: Source) -> str:
    """The name the views read a source by: its typed view when it has text columns."""
    return f"{source.name}__typed" if text_columns(source) else source.name


def typed_source_sql(source: Source) -> str | None:
    """The view of a source with its text columns converted to their
    declared types, and `__mistyped`: true when a field is present but not
    of its type. None when no column is read as text."""
    text = text_columns(source)
    if not text:
        return None
    converted = []
    for c, t in source.schema:
        if c in text:
            field = f"NULLIF({ident(c)}, '')"
            converted += [f"{_FROM_TEXT[t].format(field)} AS {ident(c)}",
                          f"{field} AS {ident('__text_' + c)}"]
        else:
            converted.append(ident(c))
    mistyped = " OR ".join(f"({ident('__text_' + c)} IS NOT NULL AND {ident(c)} IS NULL)"
                           for c in text)
    columns = ", ".join(ident(c) for c, _ in source.schema)
    return (f"CREATE TEMPORARY VIEW {ident(typed_source(source))} AS\n"
            f"SELECT {columns}, {mistyped} AS `__mistyped`\n"
            f"FROM (SELECT {', '.join(converted)} FROM {ident(source.name)})")


def source_ddl(source: Source, settings: SourceSettings = SourceSettings()) -> str:
    """CREATE TABLE for a stream source; timestamps are TIMESTAMP_LTZ(6) (UTC),
    `text_columns` are STRING."""
    if source.kind != "stream":
        raise Unsupported(f"source {source.name} is a {source.kind} source, not a stream", "Flink")
    text = set(text_columns(source))
    columns = [f"{ident(c)} {'STRING' if c in text else sql_type(t)}" for c, t in source.schema]
    options = _CONNECTORS[source.format](source, settings)
    if source.format != "datagen":
        options += _format_options(source)
    return _table(source.name, columns, options)


def _table(name: str, columns: list[str], options: list[tuple[str, str]]) -> str:
    body = ",\n".join(f"  {c}" for c in columns)
    opts = ",\n".join(f"  {string(k)} = {string(v)}" for k, v in options)
    return f"CREATE TEMPORARY TABLE {ident(name)} (\n{body}\n) WITH (\n{opts}\n)"


def _format_options(source: Source) -> list[tuple[str, str]]:
    fmt = dict(source.options).get("format", "json")
    if fmt == "json":
        # Timestamps as ISO-8601 with a Z ("2026-01-01T12:00:00.000001Z"). A
        # timestamp that does not parse is null (the row is then "invalid"
        # when that is its time); other fields are text to the format
        # (`text_columns`); a line that is not a JSON object is skipped
        # (and counted: `unread_sql`).
        return [("format", "json"), ("json.timestamp-format.standard", "ISO-8601"),
                ("json.ignore-parse-errors", "true")]
    if fmt == "csv":  # timestamps as "2026-01-01 12:00:00.000001Z"
        return [("format", "csv"), ("csv.ignore-parse-errors", "true")]
    raise Unsupported(f"stream format {fmt!r}", "Flink")


def _files(source: Source, settings: SourceSettings) -> list[tuple[str, str]]:
    path = Path(source.path)
    if not path.is_absolute() and settings.root != Path(""):
        path = settings.root / path
    uri = path.resolve().as_uri() if path.is_absolute() else source.path
    options = [("connector", "filesystem"), ("path", uri)]
    if not settings.bounded:
        options.append(("source.monitor-interval", f"{settings.monitor_interval_ms} ms"))
    return options


_KAFKA_START = {"earliest": "earliest-offset", "latest": "latest-offset"}


def _kafka(source: Source, settings: SourceSettings) -> list[tuple[str, str]]:
    opts = dict(source.options)
    # By default the group's committed offsets, else the earliest: a first
    # start computes every tile that the topic still holds.
    start = _KAFKA_START.get(opts.get("start", ""), "group-offsets")
    options = [("connector", "kafka"), ("topic", source.path),
               ("properties.bootstrap.servers", opts["servers"]),
               ("properties.group.id", opts.get("group", f"featurestore-{source.name}")),
               ("scan.startup.mode", start)]
    if start == "group-offsets":
        options.append(("properties.auto.offset.reset", "earliest"))
    return options


def _datagen(source: Source, settings: SourceSettings) -> list[tuple[str, str]]:
    opts = dict(source.options)
    options = [("connector", "datagen"), ("rows-per-second", opts.get("rows_per_second", "1000"))]
    if "rows" in opts:
        options.append(("number-of-rows", opts["rows"]))
    for column, type_ in source.schema:
        if type_ == "string":  # 4 hex digits: up to 65,536 distinct keys
            options.append((f"fields.{column}.length", "4"))
    return options


_CONNECTORS = {"files": _files, "kafka": _kafka, "datagen": _datagen}


# ================================================================ unread lines
# Flink's json reader skips, uncounted, a line that is not a JSON object
# (not JSON, an array or a scalar, more than 1,000 levels deep, empty)
# and most lines that are not UTF-8. The job therefore reads a json source
# a second time, each line as bytes (`format = raw`), and counts the lines
# that the reader cannot use, by reason. Its test is the reader's, as
# observed in Flink 2.3: the reader also takes control characters inside
# strings, tabs and a byte order mark, which a JSON test refuses, so a line
# that fails it is tried again with those replaced (a control character by
# a letter, which is fine in a string and not outside one). A line that is
# not UTF-8 is counted `invalid_utf8` whether or not the reader skipped it:
# it reads some (a broken sequence inside a string makes that field null,
# an overlong one or a surrogate becomes another character).
_RELAXED = r"REGEXP_REPLACE(REGEXP_REPLACE({0}, '[\x00-\x08\x0B\x0C\x0E-\x1F]', 'x'), " \
           r"'^\x{{FEFF}}|[\t\r]', ' ')"


def counts_lines(source: Source, settings: SourceSettings) -> bool:
    """Whether the job reads the source a second time to count the lines
    its reader skips: json files and Kafka sources, unless turned off."""
    return (settings.count_lines and source.format in ("files", "kafka")
            and dict(source.options).get("format", "json") == "json")


def lines_table(source: Source) -> str:
    return f"{source.name}__lines"


def unread_view(source: Source) -> str:
    return f"{source.name}__unread"


def lines_ddl(source: Source, settings: SourceSettings) -> str:
    """CREATE TABLE of the source's lines as bytes, one row per line (or
    message); a Kafka source reads them in a consumer group of its own."""
    options = [(k, f"{v}-lines" if k == "properties.group.id" else v)
               for k, v in _CONNECTORS[source.format](source, settings)]
    return _table(lines_table(source), ["`line` BYTES"], options + [("format", "raw")])


def unread_sql(source: Source) -> str:
    """Per line the reader cannot use: why (`__drop`) and the hour of the job's clock."""
    text = "`__text`"
    reason = (f"CASE WHEN POSITION(U&'\\FFFD' IN {text}) > 0 "
              f"AND ENCODE({text}, 'UTF-8') <> `line` THEN 'invalid_utf8' "
              f"WHEN {text} IS JSON OBJECT THEN CAST(NULL AS STRING) "
              f"WHEN {_RELAXED.format(text)} IS JSON OBJECT THEN CAST(NULL AS STRING) "
              "ELSE 'unparsable' END")
    return (f"CREATE TEMPORARY VIEW {ident(unread_view(source))} AS\n"
            f"SELECT `__drop`, {floor_to('`__now`', DROP_HOUR_US)} AS `__hour` FROM (\n"
            f"SELECT {reason} AS `__drop`, UNIX_TIMESTAMP() * 1000000 AS `__now`\n"
            f"FROM (SELECT `line`, DECODE(`line`, 'UTF-8') AS {text} "
            f"FROM {ident(lines_table(source))}))\n"
            "WHERE `__drop` IS NOT NULL")


# ================================================================ views
def rows_view(view: View) -> str:
    return f"{view.name}__rows"


def view_rows_sql(view: View, source: Source) -> str:
    """The view's rows (its filter applied) with __ts, __now and __drop.

    __now is read once per row, in a projection of its own (the planner does
    not copy a non-deterministic expression into its several uses), so the
    decisions about one row in one output agree. The outputs read the clock
    each for itself: at the instant a tile falls out of every window they
    may disagree about an event of that tile, which no request can read."""
    keys = [ident(k) for k, _ in view.keys]
    # A mistyped event passes the filter, which cannot judge it, to be counted.
    mistyped = ["`__mistyped`"] if text_columns(source) else []
    where = (" WHERE " + " OR ".join([f"({expr_sql(view.filter)}) IS TRUE", *mistyped])
             if view.filter is not None else "")
    inner = (f"SELECT *, {epoch_us(ident(source.timestamp))} AS `__ts`, "
             f"UNIX_TIMESTAMP() * 1000000 AS `__now` FROM {ident(typed_source(source))}{where}")
    invalid = " OR ".join(["`__ts` IS NULL", *(f"{k} IS NULL" for k in keys), *mistyped])
    late = _late(view, source)
    late = f"WHEN {late} THEN 'late' " if late else ""
    return (f"CREATE TEMPORARY VIEW {ident(rows_view(view))} AS\n"
            f"SELECT *, CASE WHEN {invalid} THEN 'invalid' "
            f"WHEN `__ts` > `__now` + {windows.MAX_FUTURE_US} THEN 'future' {late}END AS `__drop`\n"
            f"FROM ({inner})")


def _tile_cut(view: View) -> str:
    """Condition on a row: its tile is within the history the view keeps at
    __now (its windows' reach, and as_of's horizon)."""
    keep = windows.history_us(view)
    if keep is None:
        return "TRUE"
    return f"{floor_to('`__ts`', view.tile_us)} >= {floor_to('`__now`', view.tile_us)} - {keep}"


def _row_cut(view: View) -> str:
    """Condition on a row: it may still be the latest row that a request reads."""
    keep = windows.rows_keep_us(view)
    return "TRUE" if keep is None else f"`__ts` > `__now` - {keep}"


def _kept(cut: str) -> str:
    return "`__drop` IS NULL" + ("" if cut == "TRUE" else f" AND {cut}")


def _late(view: View, source: Source) -> str | None:
    """Condition on a row: no output of the view has a use for it, or it is
    later than the source's lateness; None when no row is ever late."""
    cuts = ([_tile_cut(view)] if view.aggregations else []) + \
           ([_row_cut(view)] if view.row_features else [])
    # Lateness is the delay between an event's time and its arrival, on the
    # job's clock. (Not a watermark: mini-batches replace the watermarks of
    # event time with their own markers of processing time.)
    conditions = [] if source.lateness_us is None else \
        [f"`__ts` < `__now` - {source.lateness_us}"]
    if cuts and "TRUE" not in cuts:
        conditions.append("NOT (" + " OR ".join(f"({c})" for c in cuts) + ")")
    return " OR ".join(conditions) or None


def dropped_sql(view: View, unread: str | None = None) -> str:
    """Per reason and hour of the job's clock: how many rows the view
    dropped, and the lines of its source that Flink could not read (the
    view `unread`); and as `counted`, how many it counted, with the newest
    of those not ahead of the clock."""
    hour = floor_to("`__now`", DROP_HOUR_US)
    rows = (f"SELECT COALESCE(`__drop`, {string(layout.COUNTED)}) AS `__drop`, {hour} AS `__hour`, "
            "CASE WHEN `__drop` IS NULL AND `__ts` <= `__now` THEN `__ts` END AS `__newest` "
            f"FROM {ident(rows_view(view))}")
    if unread is not None:
        rows += f"\nUNION ALL SELECT `__drop`, `__hour`, CAST(NULL AS BIGINT) FROM {ident(unread)}"
    return (f"CREATE TEMPORARY VIEW {ident(view.name + '__dropped')} AS\n"
            "SELECT `__drop`, `__hour`, COUNT(*) AS `__count`, MAX(`__newest`) AS `__newest` "
            f"FROM (\n{rows})\nGROUP BY `__drop`, `__hour`")


# ================================================================ outputs
def view_output(view: View) -> sink.ViewOutput:
    """What the writers must know of a view."""
    keys = tuple(Field(f"k{j}", KINDS[t], False) for j, (_, t) in enumerate(view.keys))
    per_aggregation = flink_states.aggregation_states(view)
    # one state per slot (featurestore.layout): the first aggregation of each
    states = tuple(sink.State(agg.function, agg.input_type,
                              tuple(sink.StateColumn(s.decoder, s.fields) for s in cols))
                   for agg, cols in (per_aggregation[k] for k in view.state_owners()))
    return sink.ViewOutput(
        name=view.name, fingerprint=view.fingerprint(), keys=keys, states=states,
        row_kinds=tuple(KINDS.get(f.type, "list") for f in view.row_features),
        tile_us=view.tile_us, levels=windows.levels(view),
        tiles_keep_us=windows.tiles_keep_us(view), rows_keep_us=windows.rows_keep_us(view),
        future_us=windows.MAX_FUTURE_US)


def _arguments(view: View, out: sink.ViewOutput, part: str) -> list[tuple[str, str]]:
    """(SQL, type) of each argument of a part's function, in sink.input_fields
    order, as streaming.wire carries each field."""
    if part == sink.TILES:
        size = ["`__size`"] if out.rollups else []
        sources = [*(ident(k) for k, _ in view.keys), *size, "`__tile`", "`__newest`",
                   *(ident(f.name) for f in flink_states.state_fields(view))]
    elif part == sink.LATEST:
        sources = [*(ident(k) for k, _ in view.keys), "`latest`"]
    else:
        sources = ["`__drop`", "`__hour`", "`__count`", "`__newest`"]
    fields = [f for f in sink.input_fields(out, part) if not f.name.endswith("__null")]
    return [arg for sql, f in zip(sources, fields, strict=True) for arg in wire.field_sql(sql, f)]


@dataclass(frozen=True)
class Output:
    """One output of one view: the function that writes it and its INSERT."""
    view: int                 # index in Job.outputs
    part: str                 # sink.TILES, LATEST or DROPPED
    function: str             # the name the Python function is registered under
    insert: str               # through the function into SINK_TABLE
    discard: str              # the same arguments into a blackhole (benchmarks)
    discard_table: str        # CREATE TABLE of that blackhole


def _output(view: View, index: int, out: sink.ViewOutput, part: str) -> Output:
    function = f"featurestore_{view.name}_{part}"
    args = _arguments(view, out, part)
    source = ident(f"{view.name}__{part}")
    insert = (f"INSERT INTO {ident(SINK_TABLE)}\n"
              f"SELECT {function}({', '.join(a for a, _ in args)}) FROM {source}")
    table = f"{view.name}__{part}__discarded"
    columns = ", ".join(f"`c{i}` {t}" for i, (_, t) in enumerate(args))
    return Output(index, part, function, insert,
                  f"INSERT INTO {ident(table)} SELECT {', '.join(a for a, _ in args)} FROM {source}",
                  f"CREATE TEMPORARY TABLE {ident(table)} ({columns}) WITH ('connector' = 'blackhole')")


# ================================================================ the job
@dataclass(frozen=True)
class Tuning:
    """Knobs of the job that trade freshness against throughput."""
    minibatch_ms: int = 400            # aggregations buffer their input this long
    minibatch_size: int = 1_000_000    # ... or this many rows
    bundle_ms: int = 50                # Python receives updates at least this often
    bundle_size: int = 100_000
    arrow_batch_size: int = 20_000


@dataclass(frozen=True)
class Job:
    """Everything the streaming job runs, as text."""
    views: tuple[str, ...]
    statements: tuple[str, ...]        # DDL and views, in order
    outputs: tuple[Output, ...]
    sinks: tuple[sink.ViewOutput, ...]
    config: dict[str, str] = field(default_factory=dict)

    @property
    def fingerprint(self) -> str:
        """Hash of what decides the job's state: a changed job never restores
        an older one's checkpoints."""
        text = "\n".join((*self.statements, *(o.insert for o in self.outputs)))
        return hashlib.sha256(text.encode()).hexdigest()[:12]


def stream_views(plan: Plan) -> list[View]:
    """The views the streaming job computes: those over stream sources."""
    return [v for v in plan.views if plan.source(v.source).kind == "stream"]


def compile_job(plan: Plan, settings: SourceSettings = SourceSettings(),
                tuning: Tuning = Tuning()) -> Job:
    """The job of a plan's stream views; Unsupported names what cannot run."""
    views = stream_views(plan)
    if not views:
        raise Unsupported("no view reads a stream source", "Flink")
    statements, unread = [], {}
    for name in sorted({v.source for v in views}):
        source = plan.source(name)
        statements.append(source_ddl(source, settings))
        typed = typed_source_sql(source)
        statements += [typed] if typed else []
        if counts_lines(source, settings):
            statements += [lines_ddl(source, settings), unread_sql(source)]
            unread[name] = unread_view(source)
    outputs, sinks = [], []
    for i, v in enumerate(views):
        statements.append(view_rows_sql(v, plan.source(v.source)))
        if v.aggregations:
            statements += flink_states.tiles_sql(v, rows_view(v), _kept(_tile_cut(v)))
        if v.row_features:
            statements.append(flink_states.latest_sql(v, rows_view(v), _kept(_row_cut(v))))
        statements.append(dropped_sql(v, unread.get(v.source)))
        out = view_output(v)
        sinks.append(out)
        outputs += [_output(v, i, out, part) for part in out.parts]
    statements.append(f"CREATE TEMPORARY TABLE {ident(SINK_TABLE)} (`written` BIGINT) "
                      "WITH ('connector' = 'blackhole')")
    return Job(tuple(v.name for v in views), tuple(statements), tuple(outputs), tuple(sinks),
               job_config(views, tuning))


def job_config(views: list[View], tuning: Tuning) -> dict[str, str]:
    """Table settings of the job. State lives as long as an update can still
    reach it: a tile until no window reaches it, a latest row for twice the
    ttl (forever when a view has no ttl), plus the future an event may have."""
    needs = [2 * DROP_HOUR_US]
    for v in views:
        if v.aggregations:
            needs.append(windows.tiles_keep_us(v))
        if v.row_features:
            needs.append(windows.rows_keep_us(v))
    ttl = "0 ms" if None in needs else f"{(max(needs) + windows.MAX_FUTURE_US) // 1000} ms"
    return {
        # Chained operators pass rows on without copying them (a third more
        # throughput); Flink SQL's operators do not keep rows they emitted.
        "pipeline.object-reuse": "true",
        "table.local-time-zone": "UTC",
        "table.exec.state.ttl": ttl,
        "table.exec.mini-batch.enabled": "true",
        "table.exec.mini-batch.allow-latency": f"{tuning.minibatch_ms} ms",
        "table.exec.mini-batch.size": str(tuning.minibatch_size),
        "table.optimizer.agg-phase-strategy": "TWO_PHASE",
        "python.fn-execution.bundle.time": str(tuning.bundle_ms),
        "python.fn-execution.bundle.size": str(tuning.bundle_size),
        "python.fn-execution.arrow.batch.size": str(tuning.arrow_batch_size),
    }


# ================================================================ artifacts
def render(plan: Plan) -> dict[str, str]:
    """The job as a readable SQL script, for `featurestore compile`: file
    name -> text; {} when no view reads a stream. Paths of files sources stay
    relative to the repo, so the text does not depend on the machine."""
    if not stream_views(plan):
        return {}
    try:
        job = compile_job(plan)
    except Unsupported as e:
        return {"job.sql": f"-- the streaming job cannot run: {e}\n"}
    settings = "".join(f"SET {string(k)} = {string(v)};\n" for k, v in sorted(job.config.items()))
    body = ";\n\n".join(job.statements)
    inserts = ";\n\n".join(o.insert for o in job.outputs)
    return {"job.sql": (
        f"-- The streaming job of views {', '.join(job.views)} (`featurestore stream`).\n"
        "-- Each featurestore_<view>_<output> is a Python function of streaming.job\n"
        "-- that writes its updates to Redis through featurestore.layout.\n\n"
        f"{settings}\n{body};\n\n{inserts};\n")}


def artifacts(plan: Plan, project: str) -> dict[str, str]:
    """flink/job.sql (`render`), for `featurestore compile`; {} when no view
    reads a stream."""
    return {f"flink/{name}": text for name, text in sorted(render(plan).items())}
