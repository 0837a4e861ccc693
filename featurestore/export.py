"""Point-in-time training export: for each label row (entity keys, a
timestamp t, any other columns), every requested feature as of t.

    table = export(plan, root, "labels.parquet", service="fraud_v1")       # Arrow
    stats = export_to_parquet(plan, root, "labels.parquet", "train.parquet",
                              service="fraud_v1", memory_limit="2GB")     # streamed

Semantics are DESIGN.md's, the same as the server's at request time t:

* a row-level feature is its value on the latest row of the entity with
  ts <= t (ties on ts broken by the values, as materialization does), null
  when there is none or when it is older than the view's ttl (ts <= t - ttl);
* a window aggregation aggregates the rows with floor(t, T) - W <= ts <= t
  (the sawtooth window); the exact states of `featurestore.tiles` are merged
  and finalized by the same function the server uses (`Aggregation.value`),
  so an exported value and a served one agree bit for bit.

How it is computed (`point_in_time` builds every query; one DuckDB session):
the window of a label is the complete tiles in [floor(t) - W, floor(t)) plus
the current tile's rows with ts <= t. Complete tiles come from a table of
per-(entity, tile) states, joined to each label through buckets of W (a
window spans at most two), so a label costs the tiles in its window, never
the entity's whole history; the partial tile comes from the rows themselves.
Row-level features are one ASOF join per view. Every intermediate table is
DuckDB's, under its memory limit (it spills to `temp_directory`), and the
result goes to Parquet with COPY, so no Python runs per row except the
finalizer of sums, averages and variances (a UDF called per batch of rows).

Output: the label columns as they are, in the labels' order, then one column
per feature (named `feature`, or `view__feature` with full_feature_names);
with `statuses`, then `<view>__status` per view whose row-level features are
exported: the status the server gives them at t (README "Semantics").
Labels before any event get null (0 for counts).
"""
from __future__ import annotations

import dataclasses
import glob
import inspect
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import duckdb
import pyarrow as pa

from dsl.plan import Column, Plan, View, format_duration
from featurestore import tiles, windows
from featurestore.backends import duckdb_sql as sql
from featurestore.backends.duckdb_sql import floor_div, floor_to, ident, literal
from featurestore.errors import DataError, UserError
from featurestore.materialize import connect
from featurestore.schema_check import require_valid_data

Progress = Callable[[str, float], None]   # (step, fraction of the whole export done)

_SQL_FINALIZED = ("count", "min", "max", "first", "last", "count_distinct")


@dataclass(frozen=True)
class Feature:
    """One requested feature: a column of the output."""
    view: View
    name: str
    column: str          # output column name
    aggregation: int | None  # index among the view's aggregations; None: row-level
    index: int           # index among the view's row features or aggregations


@dataclass
class ExportStats:
    rows: int
    features: int
    seconds: float
    path: Path | None = None
    steps: list[tuple[str, float]] = field(default_factory=list)  # (step, seconds)


def resolve_features(plan: Plan, service: str | None, features: Sequence[str] | None,
                     full_feature_names: bool = False) -> list[Feature]:
    """The features of a service (by name, or name:vN) or of 'view:feature'
    refs, in order; UserError naming what is unknown."""
    if bool(service) == bool(features):
        raise UserError("name exactly one of a service or a list of 'view:feature' refs")
    if service:
        known = {getattr(s, "ref", s.name): s for s in plan.services}
        if service not in known:
            raise UserError(f"unknown feature service {service!r}; "
                            f"known: {', '.join(sorted(known))}")
        refs = [(v, f) for v, f in known[service].features]
    else:
        refs = [tuple(ref.partition(":")[::2]) for ref in features]
    out: list[Feature] = []
    seen = set()
    for view_name, name in refs:
        view = next((v for v in plan.views if v.name == view_name), None)
        if view is None:
            raise UserError(f"unknown view {view_name!r} in '{view_name}:{name}'")
        for feature in view.feature_names if name == "*" else [name]:
            if (view.name, feature) not in seen:
                seen.add((view.name, feature))
                out.append(_feature(view, feature, full_feature_names))
    columns = [f.column for f in out]
    twice = sorted({c for c in columns if columns.count(c) > 1})
    if twice:
        raise UserError(f"features of different views are both named {', '.join(twice)}; "
                        "use full feature names (view__feature)")
    return out


def _check_sources(plan: Plan, features: list[Feature]) -> None:
    for view in dict.fromkeys(f.view for f in features):
        if plan.source(view.source).kind != "batch":
            raise UserError(f"view {view.name!r} reads a stream, which export cannot read; "
                            "export from a batch source with the same data")


def _feature(view: View, name: str, full: bool) -> Feature:
    column = f"{view.name}__{name}" if full else name
    rows = [f.name for f in view.row_features]
    aggs = [a.name for a in view.aggregations]
    if name in rows:
        return Feature(view, name, column, None, rows.index(name))
    if name in aggs:
        return Feature(view, name, column, aggs.index(name), aggs.index(name))
    raise UserError(f"unknown feature '{view.name}:{name}'")


# ------------------------------------------------------------------ the labels
def _register_labels(con, labels, timestamp: str | None) -> tuple[list[str], str]:
    """Create __labels (the labels, __row in input order and __t, the label
    time in epoch µs); return the label columns and the timestamp column."""
    if isinstance(labels, (str, Path)):
        paths = str(labels)
        _check_labels_files(paths)
        source = (f"(SELECT * EXCLUDE (__file, file_row_number), row_number() OVER "
                  f"(ORDER BY __file, file_row_number) - 1 AS __row FROM read_parquet("
                  f"{literal(paths)}, filename = '__file', file_row_number = true))")
    else:
        table = labels if isinstance(labels, pa.Table) else \
            pa.Table.from_pandas(labels, preserve_index=False)
        order = pa.array(range(table.num_rows), pa.int64())
        con.register("__label_input", table.append_column("__row", order))
        source = "__label_input"
    described = con.execute(f"DESCRIBE SELECT * FROM {source}").fetchall()
    columns = {name: type_ for name, type_, *_ in described if name != "__row"}
    ts = _timestamp_column(columns, timestamp)
    con.execute(f"CREATE TEMP TABLE __labels AS SELECT *, {sql.epoch_us_sql(ident(ts))} AS __t "
                f"FROM {source}")
    if _one(con, f"SELECT count(*) FROM __labels WHERE {ident(ts)} IS NULL")[0]:
        raise UserError(f"label timestamp column {ts!r} has nulls; every label needs a time")
    return list(columns), ts


def _one(con, query: str) -> tuple:
    """The one row of a query, read to the end: DuckDB 2 refuses other work
    on a connection while a result is unfinished."""
    return con.execute(query).fetchall()[0]


def _check_labels_files(paths: str) -> None:
    """Labels named by a path or glob are Parquet files (DuckDB's own error,
    'No magic bytes found', names neither the file nor what to do)."""
    if "://" in paths:       # remote files: DuckDB reads and checks them
        return
    found = sorted(glob.glob(paths, recursive=True))
    if not found:
        raise UserError(f"no labels at {paths}")
    for path in found:
        try:
            with open(path, "rb") as f:
                magic = f.read(4)
        except IsADirectoryError:
            magic = b""
        if magic != b"PAR1":
            raise DataError(
                f"labels file {path} is not a Parquet file: export reads labels from Parquet "
                "(a file or a glob), or from an Arrow table or pandas DataFrame in Python; "
                "convert it first, e.g. pandas.read_csv(path, parse_dates=[time column])"
                ".to_parquet('labels.parquet')")


def _check_out(out: Path) -> None:
    """The output's folder exists and can be written, before any work."""
    folder = out.parent
    if out.is_dir():
        raise UserError(f"--out {out} is a folder; name the Parquet file to write in it")
    if not folder.is_dir():
        raise UserError(f"the output folder {folder} does not exist; create it "
                        f"(mkdir -p {folder}) or write elsewhere")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(f"the output folder {folder} is not writable")


def _timestamp_column(columns: dict[str, str], named: str | None) -> str:
    stamps = [c for c, t in columns.items() if t.startswith("TIMESTAMP") or t == "DATE"]
    if named is not None:
        if named not in columns:
            raise UserError(f"the labels have no column {named!r}")
        if named not in stamps:
            raise UserError(f"label column {named!r} is {columns[named]}, not a timestamp")
        return named
    if "event_timestamp" in stamps:
        return "event_timestamp"
    if len(stamps) == 1:
        return stamps[0]
    raise UserError("say which label column is the label's time (--timestamp COLUMN): "
                    f"timestamp columns are {', '.join(stamps) or 'none'}")


def _check_keys(view: View, columns: dict[str, str]) -> None:
    for key, type_ in view.keys:
        if key not in columns:
            raise UserError(f"the labels have no column {key!r}, a key of view {view.name!r}")
        is_int = columns[key] in ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "UTINYINT",
                                  "USMALLINT", "UINTEGER")
        if (type_ == "string") != (columns[key] == "VARCHAR") or (type_ == "int64" and not is_int):
            raise UserError(f"label column {key!r} is {columns[key]}; view {view.name!r} keys it "
                            f"as {type_}")


# ------------------------------------------------------------------ the queries
@dataclass
class _Step:
    name: str
    statement: str


STATUS = "__status"   # key of a view's status among the outputs


def point_in_time(plan: Plan, root: Path, features: list[Feature], label_columns: list[str],
                  t_range: tuple[int, int], statuses: bool = False) -> tuple[list[_Step], str]:
    """The statements that build the per-view tables, and the final query
    (label columns, then features, in label order; with `statuses`, then a
    `<view>__status` column per view whose row-level features are exported).
    `t_range` is the lowest and highest label time."""
    steps: list[_Step] = []
    joins, outputs = [], {}
    for n, view in enumerate(dict.fromkeys(f.view for f in features)):
        wanted = [f for f in features if f.view is view]
        view_steps, view_joins, view_outputs = _view_queries(plan, root, view, f"__v{n}", wanted,
                                                             t_range)
        steps += view_steps
        joins += view_joins
        outputs.update(view_outputs)
    select = [f"l.{ident(c)}" for c in label_columns]
    select += [f"{outputs[(f.view.name, f.name)]} AS {ident(f.column)}" for f in features]
    if statuses:
        select += [f"{outputs[(view.name, STATUS)]} AS {ident(view.name + '__status')}"
                   for view in dict.fromkeys(f.view for f in features)
                   if (view.name, STATUS) in outputs]
    final = (f"SELECT {', '.join(select)} FROM __labels l "
             + " ".join(f"LEFT JOIN {t} USING (__row)" for t in joins) + " ORDER BY l.__row")
    return steps, final


def _view_queries(plan: Plan, root: Path, view: View, p: str, wanted: list[Feature],
                  t_range: tuple[int, int]):
    source = plan.source(view.source)
    aggs = sorted({f.aggregation for f in wanted if f.aggregation is not None})
    rows = [f for f in wanted if f.aggregation is None]
    keys = [ident(k) for k, _ in view.keys]
    on = " AND ".join(f"l.{k} = r.{k}" for k in keys)
    lo, hi = _read_range(view, aggs, bool(rows), t_range)
    attach = sql.attach_sql(source, root)
    steps = [_Step(f"{view.name}: attach", attach)] if attach else []
    # The rows keep the source columns the aggregations read, not their
    # state inputs (several per aggregation): a narrow table stays in memory.
    raw = [ident(c) for c in _columns_in([e for k in aggs for e in _agg_exprs(view, k)])
           if c not in dict(view.keys)]
    values = sql.row_values_sql(view) if rows else []
    steps.append(_Step(f"{view.name}: rows", (
        f"CREATE TEMP TABLE {p}_rows AS SELECT {', '.join(keys)}, __ts, __tile"
        + "".join(f", {c}" for c in raw + values)
        + f" FROM ({sql.view_rows_sql(view, source, root, hi, lo)}) SEMI JOIN "
          f"(SELECT DISTINCT {', '.join(keys)} FROM __labels) USING ({', '.join(keys)})")))
    joins, outputs = [], {}
    # What the result does not join is dropped as soon as it is used, so that
    # later steps get the memory.
    if aggs:
        agg_steps, agg_joins, agg_outputs = _window_queries(view, p, aggs, keys, on)
        scratch = [f"{p}_tiles", f"{p}_partial", *(f"{p}_set{k}" for k in aggs)]
        steps += [*agg_steps, _drop(f"{view.name}: free the tiles", scratch)]
        joins += agg_joins
        outputs.update(agg_outputs)
    if rows:
        steps.append(_Step(f"{view.name}: row-level features", _latest_sql(view, p, keys, on)))
        joins.append(f"{p}_latest")
        for f in rows:
            feature_type = view.row_features[f.index].type
            outputs[(view.name, f.name)] = _out(f"{p}_latest.f{f.index}", feature_type)
        outputs[(view.name, STATUS)] = f"{p}_latest.__status"
    steps.append(_drop(f"{view.name}: free the rows", [f"{p}_rows"]))
    return steps, joins, outputs


def _drop(name: str, tables: list[str]) -> _Step:
    return _Step(name, "; ".join(f"DROP TABLE IF EXISTS {t}" for t in tables))


def _agg_exprs(view: View, k: int) -> list:
    a = view.aggregations[k]
    return [e for e in (a.arg, a.where) if e is not None]


def _columns_in(exprs: list) -> list[str]:
    """Source columns that expressions read, in first-use order."""
    found: dict[str, None] = {}

    def walk(node) -> None:
        if isinstance(node, Column):
            found.setdefault(node.name)
        elif isinstance(node, (tuple, list)):
            for item in node:
                walk(item)
        elif dataclasses.is_dataclass(node):
            for f in dataclasses.fields(node):
                walk(getattr(node, f.name))

    walk(exprs)
    return list(found)


def _read_range(view: View, aggs: list[int], rows: bool, t_range: tuple[int, int]):
    """Event times any label can see: [lo, hi], lo None when unbounded."""
    t_min, t_max = t_range
    reach = []
    for k in aggs:
        reach.append(windows.window_start(t_min, view.tile_us,
                                          windows.reach_us(view, view.aggregations[k])))
    if rows:   # back to the row key's life: a row past its ttl is OUTSIDE_MAX_AGE
        keep = windows.rows_keep_us(view)
        reach.append(None if keep is None else t_min - keep)
    return (None if None in reach else min(reach)), t_max


def _window_queries(view: View, p: str, aggs: list[int], keys: list[str], on: str):
    """Steps and outputs of the window aggregations `aggs`. count_distinct
    keeps (entity, tile, value) rows instead of per-tile sets: lists of
    millions of small tiles cost more than the rows they hold."""
    ft = floor_to("l.__t", view.tile_us)
    sets = [k for k in aggs if view.aggregations[k].function == "count_distinct"]
    merged = [k for k in aggs if k not in sets]
    key_list = ", ".join(keys)
    steps = []
    if merged:
        states = ", ".join(sql.tile_states_sql(view, merged))
        steps += [
            _Step(f"{view.name}: tiles",
                  f"CREATE TEMP TABLE {p}_tiles AS SELECT {key_list}, __tile, {states} "
                  f"FROM {_inputs(view, p, keys, merged)} GROUP BY {key_list}, __tile"),
            _Step(f"{view.name}: current tiles",
                  f"CREATE TEMP TABLE {p}_partial AS SELECT l.__row, {states} FROM __labels l "
                  f"JOIN {_inputs(view, p, keys, merged)} r ON {on} AND r.__tile = {ft} "
                  f"AND r.__ts <= l.__t GROUP BY l.__row")]
    for k in sets:
        steps.append(_Step(f"{view.name}: distinct values of {view.aggregations[k].name}",
                           f"CREATE TEMP TABLE {p}_set{k} AS SELECT DISTINCT {key_list}, __tile, "
                           f"__ts, i{k}_value AS __v FROM {_inputs(view, p, keys, [k])} "
                           f"WHERE i{k}_value IS NOT NULL"))
    joins, outputs = [], {}
    spans: dict[int | None, list[int]] = {}
    for k in aggs:
        spans.setdefault(windows.reach_us(view, view.aggregations[k]), []).append(k)
    for j, (window, members) in enumerate(spans.items()):
        table = f"{p}_w{j}"
        span = format_duration(window) if window else "all history"
        steps.append(_Step(f"{view.name}: windows of {span}",
                           _window_sql(view, p, table, window, members, keys, on, ft)))
        joins.append(table)
        for k in members:
            outputs[(view.name, view.aggregations[k].name)] = _aggregation_value(view, table, k)
    return steps, joins, outputs


def _inputs(view: View, p: str, keys: list[str], aggs: list[int]) -> str:
    """The view's rows with the state inputs of `aggs`."""
    return (f"(SELECT {', '.join(keys)}, __tile, __ts, "
            f"{', '.join(sql.state_inputs_sql(view, aggs))} FROM {p}_rows)")


def _window_sql(view: View, p: str, table: str, window: int | None, members: list[int],
                keys: list[str], on: str, ft: str) -> str:
    """Merged states of `members` per label: the complete tiles of the window
    (found through buckets of the window's length) and the current tile."""
    if window is None:
        labels = f"SELECT __row, {', '.join(keys)}, __t, {ft} AS __ft FROM __labels l"
        match = f"{on} AND r.__tile < l.__ft"
    else:
        buckets = f"{floor_div(f'__ft - {window}', window)}, {floor_div('__ft - 1', window)}"
        labels = (f"SELECT __row, {', '.join(keys)}, __t, __ft, unnest(generate_series({buckets})) "
                  f"AS __b FROM (SELECT *, {ft} AS __ft FROM __labels l)")
        match = (f"{on} AND {floor_div('r.__tile', window)} = l.__b "
                 f"AND r.__tile >= l.__ft - {window} AND r.__tile < l.__ft")
    parts = []
    merged = [k for k in members if view.aggregations[k].function != "count_distinct"]
    if merged:
        columns = [f"s{k}_{c.name}" for k in merged
                   for c in sql.tile_aggregation(view.aggregations[k]).columns]
        candidates = (f"SELECT l.__row, {', '.join(f'r.{c}' for c in columns)} FROM ({labels}) l "
                      f"JOIN {p}_tiles r ON {match} UNION ALL SELECT __row, {', '.join(columns)} "
                      f"FROM {p}_partial")
        parts.append(f"SELECT __row, {', '.join(sql.merge_states_sql(view, merged))} "
                     f"FROM ({candidates}) GROUP BY __row")
    for k in members:
        if k not in merged:
            # the window's complete tiles, and the current tile up to t
            values = (f"SELECT l.__row, r.__v FROM ({labels}) l JOIN {p}_set{k} r ON {match} "
                      f"UNION ALL SELECT l.__row, r.__v FROM __labels l JOIN {p}_set{k} r "
                      f"ON {on} AND r.__tile = {ft} AND r.__ts <= l.__t")
            parts.append(f"SELECT __row, count(DISTINCT __v) AS s{k}_set FROM ({values}) "
                         f"GROUP BY __row")
    body = f"SELECT * FROM ({parts[0]})" + "".join(f" FULL JOIN ({q}) USING (__row)"
                                                   for q in parts[1:])
    return f"CREATE TEMP TABLE {table} AS {body}"


def _aggregation_value(view: View, table: str, k: int) -> str:
    """SQL of the final value of aggregation k from its merged state columns."""
    a = view.aggregations[k]
    agg = sql.tile_aggregation(a)
    col = f"{table}.s{k}_{agg.columns[0].name}"
    if a.function in ("count", "count_distinct"):
        return f"CAST(COALESCE({col}, 0) AS BIGINT)"
    if a.function == "sum" and agg.input_type == "int64":
        return (f"CASE WHEN {col} BETWEEN {tiles.INT64_MIN} AND {tiles.INT64_MAX} "
                f"THEN CAST({col} AS BIGINT) END")
    if a.function in ("min", "max"):
        return _out(col, a.type)
    if a.function in ("first", "last"):
        return _out(f"{col}.v", a.type)
    # Each exact integer state column travels as two 64-bit halves, which
    # Arrow hands to Python far faster than text or 128-bit decimals.
    args = ", ".join(f"CAST({table}.s{k}_{c.name} >> 64 AS BIGINT), "
                     f"CAST({table}.s{k}_{c.name} & {2 ** 64 - 1} AS UBIGINT)"
                     for c in agg.columns)
    return f"{_udf_name(agg)}({args})"


def _out(col: str, type_: str) -> str:
    """A stored value as an output column of its feature type."""
    if type_ == "timestamp":
        return f"CAST(make_timestamp({col}) AS TIMESTAMPTZ)"
    return col


def _latest_sql(view: View, p: str, keys: list[str], on: str) -> str:
    """The latest row as of each label's t, null past the ttl: an ASOF join
    on the rows, then, where several rows share the matched __ts, the one
    `latest_struct_sql` picks. Only the matched (entity, __ts) pairs are
    checked for ties, so few rows aggregate."""
    n = len(view.row_features)
    group = ", ".join(keys + ["__ts"])
    matched = (f"SELECT l.__row, l.__t, {', '.join(f'l.{k}' for k in keys)}, r.__ts, "
               f"{', '.join(f'r.f{i}' for i in range(n))} FROM __labels l "
               f"ASOF LEFT JOIN {p}_rows r ON {on} AND l.__t >= r.__ts")
    pairs = f"SELECT DISTINCT {group} FROM __matched WHERE __ts IS NOT NULL"
    winners = (f"SELECT {group}, {', '.join(sql.latest_values_sql(view, '__w'))} FROM "
               f"(SELECT {group}, {sql.latest_struct_sql(view, False)} AS __w FROM {p}_rows "
               f"SEMI JOIN ({pairs}) USING ({group}) GROUP BY {group} HAVING count(*) > 1)")
    fresh = "TRUE" if view.ttl_us is None else f"a.__ts > a.__t - {view.ttl_us}"
    values = ", ".join(f"CASE WHEN NOT {fresh} THEN NULL WHEN w.__ts IS NOT NULL THEN w.f{i} "
                       f"ELSE a.f{i} END AS f{i}" for i in range(n))
    match = " AND ".join([f"a.{k} = w.{k}" for k in keys] + ["a.__ts = w.__ts"])
    return (f"CREATE TEMP TABLE {p}_latest AS WITH __matched AS MATERIALIZED ({matched}) "
            f"SELECT a.__row, {values}, {_row_status_sql(view)} AS __status "
            f"FROM __matched a LEFT JOIN ({winners}) w ON {match}")


def _row_status_sql(view: View) -> str:
    """The serving status of the view's row at each label's t (README
    "Semantics"): NOT_FOUND without a row, or past the row key's life
    (`windows.rows_keep_us`); OUTSIDE_MAX_AGE past the ttl; else PRESENT."""
    if view.ttl_us is None:
        return "CASE WHEN a.__ts IS NULL THEN 'NOT_FOUND' ELSE 'PRESENT' END"
    return (f"CASE WHEN a.__ts IS NULL OR a.__ts <= a.__t - {windows.rows_keep_us(view)} "
            f"THEN 'NOT_FOUND' WHEN a.__ts <= a.__t - {view.ttl_us} THEN 'OUTSIDE_MAX_AGE' "
            f"ELSE 'PRESENT' END")


# ------------------------------------------------------------------ finalizers
def _udf_name(agg: tiles.Aggregation) -> str:
    return f"fs_value_{agg.function}_{agg.input_type}"


def _register_finalizers(con, features: list[Feature]) -> None:
    """The server's finalizer (`Aggregation.value`) as vectorized DuckDB
    functions, for the aggregations SQL cannot finalize bit for bit."""
    from duckdb.sqltypes import BIGINT, DOUBLE, UBIGINT

    done = set()
    for f in features:
        if f.aggregation is None:
            continue
        agg = sql.tile_aggregation(f.view.aggregations[f.aggregation])
        if agg.function in _SQL_FINALIZED or (agg.function == "sum" and agg.input_type == "int64"):
            continue
        if _udf_name(agg) not in done:
            done.add(_udf_name(agg))
            con.create_function(_udf_name(agg), _finalizer(agg),
                                [BIGINT, UBIGINT] * len(agg.columns), DOUBLE, type="arrow",
                                null_handling="special", side_effects=False)


def _finalizer(agg: tiles.Aggregation):
    def finalize(*halves: pa.Array) -> pa.Array:
        columns = [_integers(high, low) for high, low in zip(halves[::2], halves[1::2])]
        return pa.array([agg.value(agg.state(c)) for c in zip(*columns)], pa.float64())
    # DuckDB counts a UDF's parameters from its signature: two per state column.
    finalize.__signature__ = inspect.Signature(
        [inspect.Parameter(f"{c.name}_{half}", inspect.Parameter.POSITIONAL_ONLY)
         for c in agg.columns for half in ("high", "low")])
    return finalize


def _integers(high: pa.Array, low: pa.Array) -> list[int | None]:
    """Python ints from 64-bit halves (null where the column is null)."""
    highs = high.fill_null(0).to_numpy().tolist()
    lows = low.fill_null(0).to_numpy().tolist()
    nulls = high.is_null().to_numpy(zero_copy_only=False).tolist()
    return [None if null else (h << 64) | lo for h, lo, null in zip(highs, lows, nulls)]


# ------------------------------------------------------------------ running
def _run(plan: Plan, root: Path, labels, *, service, features, timestamp, full_feature_names,
         memory_limit, temp_directory, progress, finish: Callable[[object, str], object],
         label_columns_in_sql: bool = True, statuses: bool = False):
    wanted = resolve_features(plan, service, features, full_feature_names)
    _check_sources(plan, wanted)
    scratch = Path(tempfile.mkdtemp(prefix="featurestore-export-", dir=temp_directory))
    con = connect(memory_limit, scratch)
    con.execute("SET enable_progress_bar = true; SET enable_progress_bar_print = false")
    t0 = time.perf_counter()
    timings: list[tuple[str, float]] = []
    try:
        # data that does not fit its declared schema is refused, never cast
        require_valid_data(plan, root, {f.view.source for f in wanted}, con=con)
        label_columns, _ = _register_labels(con, labels, timestamp)
        described = dict(con.execute("SELECT column_name, column_type FROM "
                                     "(DESCRIBE __labels)").fetchall())
        for view in dict.fromkeys(f.view for f in wanted):
            _check_keys(view, described)
        clash = sorted({f.column for f in wanted} & set(label_columns))
        if clash:
            raise UserError(f"label column(s) {', '.join(clash)} have the name of a feature; "
                            "rename them or use full feature names")
        t_min, t_max = _one(con, "SELECT min(__t), max(__t) FROM __labels")
        steps, final = point_in_time(plan, root, wanted,
                                     label_columns if label_columns_in_sql else [],
                                     (t_min or 0, t_max or 0), statuses)
        _register_finalizers(con, wanted)
        steps.append(_Step("result", final))
        for i, step in enumerate(steps):
            started = time.perf_counter()
            with _reporting(con, progress, step.name, i, len(steps)):
                result = (finish(con, step.statement) if step is steps[-1]
                          else con.execute(step.statement))
            timings.append((step.name, time.perf_counter() - started))
        return result, time.perf_counter() - t0, timings, len(wanted)
    except duckdb.Error as e:
        text = str(e).strip().splitlines()
        raise DataError(f"DuckDB could not compute the training set: "
                        f"{text[0] if text else type(e).__name__} "
                        "(featurestore --debug shows the traceback)") from None
    finally:
        con.close()
        shutil.rmtree(scratch, ignore_errors=True)


class _reporting:
    """Reports a step's progress from a thread while DuckDB runs it."""

    def __init__(self, con, progress: Progress | None, name: str, i: int, n: int):
        self._con, self._progress, self._name, self._i, self._n = con, progress, name, i, n
        self._done = threading.Event()

    def __enter__(self):
        if self._progress is not None:
            self._progress(self._name, self._i / self._n)
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._done.wait(1.0):
            within = self._con.query_progress()
            if within >= 0:
                self._progress(self._name, (self._i + within / 100) / self._n)

    def __exit__(self, *exc) -> None:
        self._done.set()
        if self._progress is not None:
            self._thread.join()


def export(plan: Plan, root: Path, labels, *, service: str | None = None,
           features: Sequence[str] | None = None, timestamp: str | None = None,
           full_feature_names: bool = False, memory_limit: str = "4GB",
           temp_directory: str | Path | None = None,
           progress: Progress | None = None, statuses: bool = False) -> pa.Table:
    """The training set as an Arrow table (`.to_pandas()` for pandas).

    `labels`: a Parquet path (globs allowed), an Arrow table or a pandas
    DataFrame with the entity key columns and a timestamp column (`timestamp`,
    default `event_timestamp` or the only timestamp column). Name the features
    by `service` or by `features` ('view:feature' refs; 'view:*' for all)."""
    if not isinstance(labels, (str, Path, pa.Table)):
        labels = pa.Table.from_pandas(labels, preserve_index=False)
    in_memory = isinstance(labels, pa.Table)
    table, *_ = _run(plan, root, labels, service=service, features=features,
                     timestamp=timestamp, full_feature_names=full_feature_names,
                     memory_limit=memory_limit, temp_directory=temp_directory,
                     progress=progress, label_columns_in_sql=not in_memory,
                     statuses=statuses,
                     finish=lambda con, final: con.sql(final).to_arrow_table())
    if not in_memory:
        return table
    # The labels' own columns, untouched (DuckDB would turn nanosecond times
    # with a time zone into microseconds), then the features.
    for name in table.column_names:
        labels = labels.append_column(name, table[name])
    return labels


def export_to_parquet(plan: Plan, root: Path, labels, out: str | Path, *,
                      service: str | None = None, features: Sequence[str] | None = None,
                      timestamp: str | None = None, full_feature_names: bool = False,
                      memory_limit: str = "4GB", temp_directory: str | Path | None = None,
                      progress: Progress | None = None, statuses: bool = False) -> ExportStats:
    """`export`, written to a Parquet file by DuckDB (COPY) as it is computed:
    the result never passes through Python, and memory stays under the limit.
    The folder of `out` must exist (checked before any work; it is not created,
    so that a mistyped path does not leave a stray folder behind)."""
    out = Path(out)
    _check_out(out)

    def copy(con, final: str) -> int:
        return _one(con, f"COPY ({final}) TO {literal(str(out))} "
                         "(FORMAT parquet, COMPRESSION zstd)")[0]

    rows, seconds, timings, n = _run(plan, root, labels, service=service, features=features,
                                     timestamp=timestamp, full_feature_names=full_feature_names,
                                     memory_limit=memory_limit, temp_directory=temp_directory,
                                     progress=progress, finish=copy, statuses=statuses)
    return ExportStats(rows, n, seconds, out, timings)
