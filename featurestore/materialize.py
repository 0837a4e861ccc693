"""Batch materialization: DuckDB computes tiles and latest rows, Redis gets them.

For each view, as of `end` (default: now):

* tiles: per entity and tile, the state of every aggregation
  (`featurestore.tiles`), for the tiles any window can still reach at `end`;
* the latest row: the row-level feature values of the entity's newest row.

Three modes, all idempotent (running one twice changes nothing):

* full (default): every entity's tiles are replaced (DEL, HSET, PEXPIRE in
  one MULTI/EXEC, so a reader never sees an entity half written) and every
  entity's latest row is set;
* `start_us`: only events with start <= ts <= end are read; the tiles they
  touch are recomputed whole (from every event of those tiles) and merged
  into the entity's hash; latest rows of those entities are set;
* `incremental`: as `start_us`, starting after the view's watermark, the
  `end` of its last run (kept in Redis, `layout.watermark_key`). Without a
  watermark it is a full run. Tiles that fell out of every window since the
  last run are deleted from the hashes (HDEL), so hashes do not grow.

Every tile is written with its rollups (`featurestore.windows.levels`): the
merged states of the hours and days it lies in, each recomputed whole from
its tiles, so a run that touches a tile reads every event of the largest
rollup around it.

Keys expire once nothing can read them (`featurestore.windows`: tiles
`retention + 2 tiles` after their newest tile, rows `2 * ttl` after their
event, so the server can still tell OUTSIDE_MAX_AGE from NOT_FOUND for a
while), counted on the run's own clock, `end`.

DuckDB writes each command's RESP bytes, `featurestore.bulk_redis` pipelines
them: no Python runs per key. Tile values are binary where the view's states
all have a fixed width (`layout.TileCodec`): DuckDB computes each tile's
words and numpy packs them, all tiles of a batch at once (`tile_commands`).
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from queue import Full, Queue
from typing import Callable

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dsl.plan import Plan, View
from featurestore import layout, redis_client, windows
from featurestore.backends import duckdb_sql
from featurestore.backends.duckdb_sql import ident
from featurestore.bulk_redis import (BulkWriter, RedisReplyError, bulk_sql, command_sql,
                                     group_commands, literal_sql, resp_command)
from featurestore.errors import DataError, ServiceError, UserError
from featurestore.schema_check import require_valid_data

BATCH_ROWS = 100_000     # commands per pipelined write


@dataclass
class ViewStats:
    view: str
    mode: str = "full"               # full, range, incremental, up to date, stream (skipped)
    entities: int = 0                # tile hashes written
    tiles: int = 0
    rows: int = 0                    # latest rows written
    pruned: int = 0                  # tile hashes pruned of tiles out of every window
    start_us: int | None = None      # events read: start_us <= ts <= end_us
    end_us: int = 0
    seconds: float = 0.0


@dataclass
class MaterializeStats:
    end_us: int
    views: list[ViewStats] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return sum(v.seconds for v in self.views)


def now_us() -> int:
    return time.time_ns() // 1000


def connect(memory_limit: str, temp_directory: str | Path | None = None):
    """A DuckDB connection in UTC with a memory limit (it spills beyond it)."""
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute(f"SET memory_limit = {duckdb_sql.literal(memory_limit)}")
    if temp_directory is not None:
        con.execute(f"SET temp_directory = {duckdb_sql.literal(str(temp_directory))}")
    return con


# ------------------------------------------------------------------ plan of a run
@dataclass(frozen=True)
class Run:
    """What one view's run reads and writes."""
    mode: str
    start_us: int | None       # first event time read (None: all history)
    end_us: int
    tiles_from: int | None     # first tile start written (None: all)
    prune: tuple[int, int] | None  # tile starts [from, to) to delete
    watermark: int | None      # the watermark to store afterwards


def plan_run(view: View, start_us: int | None, end_us: int, incremental: bool,
             watermark: int | None) -> Run:
    """Decide the mode and ranges of a run from the options and the watermark."""
    tile = view.tile_us
    keep = windows.history_us(view)
    lower = windows.window_start(end_us, tile, keep)
    if incremental and watermark is not None:
        if end_us <= watermark:
            return Run("up to date", None, end_us, None, None, watermark)
        start_us, mode = watermark + 1, "incremental"
    elif start_us is not None:
        mode = "range"
    else:
        return Run("full", None, end_us, lower, None, end_us)
    # rollups are rewritten whole: read from the start of the largest one
    coarsest = windows.levels(view)[-1] if view.aggregations else tile
    first_tile = (start_us // coarsest) * coarsest
    tiles_from = first_tile if lower is None else max(first_tile, lower)
    prune = None
    if keep is not None and watermark is not None:
        old_lower = (watermark // tile) * tile - keep
        prune = (old_lower, lower) if old_lower < lower else None
    contiguous = watermark is not None and start_us <= watermark + 1
    new_mark = max(watermark, end_us) if contiguous else watermark
    return Run(mode, start_us, end_us, tiles_from, prune, new_mark)


# ------------------------------------------------------------------ SQL of the commands
def _key_sql(project: str, view: View, kind: str) -> str:
    entity = layout.sql_entity_key([(ident(k), t) for k, t in view.keys])
    return layout.sql_key(project, view.name, view.fingerprint(), entity, kind)


def _not_null_keys(view: View) -> str:
    return " AND ".join(f"{ident(k)} IS NOT NULL" for k, _ in view.keys)


def rows_commands_sql(project: str, view: View, rows_sql: str, end_us: int) -> str:
    """PSETEX <row key> <ms> <row value> (SET without a ttl) for each latest
    row of `rows_sql`."""
    value = layout.sql_json_array(
        ["CAST(__ts AS VARCHAR)"] + [layout.sql_json(f"f{i}", f.type)
                                    for i, f in enumerate(view.row_features)])
    keep = None if view.ttl_us is None else 2 * view.ttl_us
    where = _not_null_keys(view)
    px = "NULL"
    if keep is not None:
        px = f"CAST(greatest(1, (__ts + {keep} - {end_us}) // 1000) AS VARCHAR)"
        where += f" AND __ts + {keep} > {end_us}"
    # Keys and values first, in a subquery: RESP names each twice (length, bytes).
    encoded = (f"SELECT {_key_sql(project, view, 'r')} AS __key, {value} AS __value, {px} AS __px "
               f"FROM ({rows_sql}) WHERE {where}")
    command = (command_sql("PSETEX", ["__key", "__px", "__value"]) if keep is not None
               else command_sql("SET", ["__key", "__value"]))
    return f"SELECT {command} AS cmd, __key FROM ({encoded})"


def tiles_commands_sql(project: str, view: View, tiles_sql: str, end_us: int,
                       replace: bool, tiles_from: int | None = None) -> tuple[str, int]:
    """The parts of the commands writing each entity's tiles and rollups,
    one row per entity (`tile_commands` joins them), and the reply lines of
    each. `tiles_sql` holds every event from `tiles_from` (a tile start;
    None: all history) on, so the rollups from there on are complete; those
    before it are not written. Full runs replace the hash (MULTI, DEL, HSET,
    PEXPIRE, EXEC); other runs merge into it (HSET, PEXPIRE ... GT: a TTL is
    only ever extended).

    Columns: __head, the commands up to the HSET's first field; __tiles, a
    list of one struct per tile: `f` its field as a RESP bulk string, `j`
    its JSON value as one (null for a binary tile), w0, w1, ... its words
    (`duckdb_sql.tile_words_sql`; none when the view's tiles are JSON);
    __tail, the commands after the HSET; __n, the tiles; __key."""
    keys = ", ".join(ident(k) for k, _ in view.keys)
    keep = windows.tiles_keep_us(view)
    states = duckdb_sql.state_columns(view)
    per_tile = f"SELECT {keys}, __tile, {layout.sql_tile_field('__tile')} AS __field, " \
               f"{', '.join(states)} FROM __fine"
    merged = ", ".join(duckdb_sql.rollup_states_sql(view))
    for size in windows.levels(view)[1:]:
        start = duckdb_sql.floor_to("__tile", size)
        complete = "" if tiles_from is None else f" HAVING {start} >= {tiles_from}"
        rollups = (f"SELECT {keys}, {start} AS __tile, {merged} FROM __fine "
                   f"GROUP BY {keys}, {start}{complete}")
        per_tile += (f" UNION ALL SELECT {keys}, __tile, {layout.sql_tile_field('__tile', size)}, "
                     f"{', '.join(states)} FROM ({rollups})")
    json_sql = duckdb_sql.tile_json_sql(view)
    if duckdb_sql.tile_codec(view).fixed:
        # words first, in a subquery; the JSON only for a tile one of whose words does not fit
        words = duckdb_sql.tile_words_sql(view)
        names = [f"w{i}" for i in range(len(words))]
        spill = " OR ".join(f"({w} IS NULL AND {present})"
                            for w, (_, present) in zip(names, words) if present is not None)
        computed = ", ".join(f"{sql} AS {w}" for w, (sql, _) in zip(names, words))
        per_tile = (f"SELECT {keys}, __tile, __field, {', '.join(names)}, "
                    f"CASE WHEN {spill or 'FALSE'} THEN {json_sql} END AS __json FROM ("
                    f"SELECT {keys}, __tile, __field, {', '.join(states)}, {computed} "
                    f"FROM ({per_tile}))")
        fields = [f"'j': CASE WHEN __json IS NOT NULL THEN {bulk_sql('__json')} END"]
        fields += [f"'{w}': {w}" for w in names]
    else:
        per_tile = f"SELECT {keys}, __tile, __field, {json_sql} AS __json FROM ({per_tile})"
        fields = [f"'j': {bulk_sql('__json')}"]
    per_tile = f"WITH __fine AS MATERIALIZED ({tiles_sql}) {per_tile}"
    having, px = "", "NULL"
    if keep is not None:
        having = f" HAVING max(__tile) + {keep} > {end_us}"
        px = f"CAST(greatest(1, (max(__tile) + {keep} - {end_us}) // 1000) AS VARCHAR)"
    tiles = "list({" + ", ".join([f"'f': {bulk_sql('__field')}"] + fields) + "})"
    per_entity = (f"SELECT {_key_sql(project, view, 't')} AS __key, count(*) AS __n, {px} AS __px, "
                  f"{tiles} AS __tiles FROM ({per_tile}) "
                  f"WHERE {_not_null_keys(view)} GROUP BY {keys}{having}")
    head = [command_sql("HSET", ["__key"], "", "2 * __n")]
    tail = []
    if keep is not None:
        tail.append(command_sql("PEXPIRE", ["__key", "__px"] + ([] if replace else ["'GT'"])))
    if replace:
        head = [literal_sql(resp_command("MULTI")), command_sql("DEL", ["__key"])] + head
        tail.append(literal_sql(resp_command("EXEC")))
        lines = 2 + 2 * (len(head) + len(tail) - 2)  # +OK, a +QUEUED and an EXEC line per command
    else:
        lines = len(head) + len(tail)
    tail_sql = f"concat({', '.join(tail)})" if tail else "''"
    return (f"SELECT concat({', '.join(head)}) AS __head, __tiles, {tail_sql} AS __tail, "
            f"__n, __key FROM ({per_entity})", lines)


def tile_commands(batch: pa.RecordBatch, codec: layout.TileCodec) -> pa.Array:
    """The commands of a batch of `tiles_commands_sql`: per entity its head,
    then per tile the field and the value as RESP bulk strings, then its
    tail. A binary value (`layout.TileCodec`) is packed here from the words,
    every tile of the batch at once with numpy; a tile with a JSON value
    (`j`) keeps it."""
    tiles = batch.column("__tiles")
    offsets = tiles.offsets.to_numpy()
    parts = dict(zip((f.name for f in tiles.type.value_type), tiles.flatten().flatten()))
    values = parts["j"]
    if codec.fixed and values.null_count:
        packed = _bulk_values(codec, [parts[f"w{i}"] for i in range(len(codec.words))])
        values = (pc.if_else(values.is_valid(), values.cast(pa.large_binary()), packed)
                  if values.null_count < len(values) else packed)
    return group_commands(batch.column("__head"), [parts["f"], values],
                          offsets - offsets[0], batch.column("__tail"))


def _bulk_values(codec: layout.TileCodec, words: list[pa.Array]) -> pa.Array:
    """RESP bulk strings of the binary values (`TileCodec.pack`'s bytes) of
    tiles whose words are given, one array per word."""
    n = len(words[0]) if words else 0
    head = b"$%d\r\n" % codec.size
    out = np.zeros(n, [("head", f"S{len(head)}"), ("value", codec.dtype), ("end", "S2")])
    out["head"], out["end"] = head, b"\r\n"
    columns, nulls = [], []
    for kind, word in zip(codec.words, words, strict=True):
        data = word.fill_null(0).to_numpy()
        if kind == "f":
            # every NaN as float("nan") is: a NaN's sign and payload are no value
            data = np.where(np.isnan(data), np.nan, data)
        columns.append(data)
        nulls.append(word.is_null().to_numpy(zero_copy_only=False) if word.null_count else None)
    out["value"] = codec.records(columns, nulls)
    size = out.dtype.itemsize
    return pa.Array.from_buffers(pa.large_binary(), n, [
        None, pa.py_buffer(np.arange(0, (n + 1) * size, size, dtype=np.int64)), pa.py_buffer(out)])


def prune_commands_sql(project: str, view: View, rows_sql: str) -> str:
    """HDEL <tiles key> <field>... of the tiles of `rows_sql` and the rollups
    they lie in, for every entity with events in `rows_sql` (rows of tiles
    that left every window: so did the rollups that start before them)."""
    keys = ", ".join(ident(k) for k, _ in view.keys)
    sizes = windows.levels(view) if view.aggregations else (view.tile_us,)
    per_level = " UNION ".join(
        f"SELECT DISTINCT {keys}, "
        f"{layout.sql_tile_field(duckdb_sql.floor_to('__tile', size), size if i else None)} AS __f "
        f"FROM ({rows_sql})" for i, size in enumerate(sizes))
    fields = (f"SELECT {_key_sql(project, view, 't')} AS __key, count(*) AS __n, "
              f"string_agg({bulk_sql('__f')}, '') AS __fields "
              f"FROM ({per_level}) WHERE {_not_null_keys(view)} GROUP BY {keys}")
    return (f"SELECT {command_sql('HDEL', ['__key'], '__fields', '__n')} AS cmd, __key "
            f"FROM ({fields})")


# ------------------------------------------------------------------ running
def _send(con, writer: BulkWriter, sql: str, lines: int, counted: str | None = None,
          encode: Callable[[pa.RecordBatch], pa.Array] | None = None) -> tuple[int, int]:
    """Stream the commands of `sql` into Redis: its `cmd` column, or what
    `encode` makes of each batch (`__key`, the key of each command, places
    it on a cluster); (commands, sum of `counted`).
    DuckDB computes and `encode` encodes the next batch on a thread of their
    own while Redis works on the last one: the two overlap instead of taking
    turns. A relation, not `execute`: DuckDB 2 copies every row of a DB-API
    result it hands to Arrow."""
    commands = total = 0

    def prepare(batch):
        return batch, (batch.column("cmd") if encode is None or not batch.num_rows
                       else encode(batch))

    for batch, encoded in _batches(con.sql(sql).to_arrow_reader(BATCH_ROWS), prepare):
        if not batch.num_rows:
            continue
        writer.send(encoded, lines, batch.column("__key") if writer.needs_keys else None)
        commands += batch.num_rows
        if counted is not None:
            total += pc.sum(batch.column(counted)).as_py() or 0
    writer.flush()
    return commands, total


def _batches(reader, prepare: Callable = lambda batch: batch, ahead: int = 2):
    """`prepare` of the reader's batches, read and prepared on a producer
    thread up to `ahead` early."""
    queue: Queue = Queue(maxsize=ahead)
    stop = threading.Event()

    def produce() -> None:
        try:
            for batch in reader:
                item = prepare(batch)
                while not stop.is_set():
                    try:
                        queue.put(item, timeout=0.1)
                        break
                    except Full:
                        pass
                if stop.is_set():
                    return
            queue.put(None)
        except BaseException as e:  # handed to the consumer, raised there
            queue.put(e)

    thread = threading.Thread(target=produce, name="materialize-encode", daemon=True)
    thread.start()
    try:
        while (item := queue.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join()


def materialize_view(con, writer: BulkWriter, r, project: str, plan: Plan, view: View,
                     root: Path, start_us: int | None, end_us: int,
                     incremental: bool = False) -> ViewStats:
    """Materialize one view (see the module docstring for the modes)."""
    t0 = time.perf_counter()
    source = plan.source(view.source)
    attach = duckdb_sql.attach_sql(source, root)
    if attach:
        con.execute(attach)
    mark_key = layout.watermark_key(project, view.name, view.fingerprint())
    run = plan_run(view, start_us, end_us, incremental, layout.decode_watermark(r.get(mark_key)))
    st = ViewStats(view.name, run.mode, start_us=run.start_us, end_us=end_us)
    if run.mode != "up to date":
        if view.aggregations:
            _write_tiles(con, writer, project, view, source, root, run, st)
        if view.row_features:
            rows, latest = duckdb_sql.latest_rows_parts(view, source, root, end_us, run.start_us)
            con.execute(f"CREATE OR REPLACE TEMP TABLE __rows AS {rows}")
            try:
                st.rows, _ = _send(con, writer, rows_commands_sql(project, view, latest, end_us), 1)
            finally:
                con.execute("DROP TABLE IF EXISTS __rows")
        if run.watermark is not None:
            r.set(mark_key, layout.encode_watermark(run.watermark))
    st.seconds = time.perf_counter() - t0
    return st


def _write_tiles(con, writer, project, view, source, root, run: Run, st: ViewStats) -> None:
    tiles = duckdb_sql.tiles_sql(view, source, root, run.end_us, run.tiles_from)
    sql, lines = tiles_commands_sql(project, view, tiles, run.end_us, replace=run.mode == "full",
                                    tiles_from=run.tiles_from)
    codec = duckdb_sql.tile_codec(view)
    st.entities, st.tiles = _send(con, writer, sql, lines, counted="__n",
                                  encode=lambda batch: tile_commands(batch, codec))
    if run.prune is not None:
        old = duckdb_sql.view_rows_sql(view, source, root, run.end_us, run.prune[0])
        old = f"SELECT * FROM ({old}) WHERE __tile < {run.prune[1]}"
        st.pruned, _ = _send(con, writer, prune_commands_sql(project, view, old), 1)


def materialize(plan: Plan, root: Path, project: str,
                store: redis_client.RedisTarget | str, *,
                start_us: int | None = None, end_us: int | None = None,
                incremental: bool = False, views: list[str] | None = None,
                memory_limit: str = "4GB",
                progress: Callable[[ViewStats], None] | None = None) -> MaterializeStats:
    """Materialize `views` (default all) of the plan into Redis as of end_us
    (default now) into the online store `store` (a RedisTarget, or a single
    node's URL): a full run, a run over events from start_us, or, with
    `incremental`, a run continuing from each view's last one. The data of
    every selected view is checked against its source's schema first
    (`featurestore.schema_check`): DataError, and nothing written, when any
    does not match."""
    end_us = now_us() if end_us is None else end_us
    if start_us is not None and start_us > end_us:
        raise ValueError(f"start ({start_us}) is after end ({end_us})")
    stats = MaterializeStats(end_us)
    selected = [v for v in plan.views if not views or v.name in views]
    for view in selected:  # refused before anything is written
        if views and plan.source(view.source).kind != "batch":  # named on purpose
            raise UserError(f"view {view.name!r} reads a stream: the streaming job "
                            "materializes it")
    con = connect(memory_limit)
    con.execute("SET preserve_insertion_order = false")  # commands go out in any order
    store = redis_client.target(store)
    r = view = None
    try:
        r = redis_client.sync_client(store)
        # Every selected view's data is checked before the first is written:
        # a mismatch anywhere leaves Redis as it was.
        require_valid_data(plan, root, {v.source for v in selected}, con=con)
        with BulkWriter(store) as writer:
            for view in selected:
                if plan.source(view.source).kind == "batch":
                    st = materialize_view(con, writer, r, project, plan, view, root,
                                          start_us, end_us, incremental)
                else:
                    st = ViewStats(view.name, "stream (skipped)", end_us=end_us)
                stats.views.append(st)
                if progress:
                    progress(st)
    except RedisReplyError as e:
        if redis_client.is_redirect(e):
            raise ServiceError(f"the slots of {store} moved during a write{_during(view)} "
                               f"({e}); run the same command again: it writes the rest and "
                               "rewrites what it had begun") from None
        raise ServiceError(f"Redis at {store} refused a write{_during(view)}: "
                           f"{e}; does something else write keys under "
                           f"{layout.PREFIX}:{project}:?") from None
    except redis_client.ERRORS as e:
        done = ", ".join(st.view for st in stats.views)
        raise ServiceError(
            f"Redis at {store} failed{_during(view)}: {e}; "
            + (f"{done} were written in full; " if done else "")
            + "once Redis answers, run the same command again: it writes the rest "
              "and rewrites what it had begun") from None
    except duckdb.Error as e:
        text = str(e).strip().splitlines()
        raise DataError(f"DuckDB could not compute{_during(view)}: "
                        f"{text[0] if text else type(e).__name__} "
                        "(featurestore --debug shows the traceback)") from None
    finally:
        if r is not None:
            r.close()
        con.close()
    return stats


def _during(view: View | None) -> str:
    return f" while materializing view {view.name!r}" if view is not None else ""
