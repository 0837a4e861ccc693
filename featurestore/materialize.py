"""Batch materialization: DuckDB computes tiles and latest rows, Redis gets them.

For each view, as of `end` (default: now):
* tiles: per entity and tile, the partial state of every aggregation, for the
  tiles that any window can still reach at `end`;
* the latest row: the row-level feature values of the entity's newest row.

Writes go through `featurestore.layout`, in pipelined MULTI/EXEC batches: a
reader never sees an entity half written, and running it twice leaves the
same state (an entity's tiles are replaced, not added to).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from dsl.plan import Plan, View
from featurestore import layout
from featurestore.backends import duckdb_sql

BATCH_ENTITIES = 2000


@dataclass
class ViewStats:
    view: str
    entities: int = 0
    tiles: int = 0
    rows: int = 0
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


def retention_us(view: View) -> int | None:
    """How far back (from the start of the current tile) any window of the
    view reaches; None when some aggregation keeps all history."""
    spans = [a.window_us or view.ttl_us for a in view.aggregations]
    return None if any(s is None for s in spans) else max(spans, default=0)


def _connect(memory_limit: str):
    import duckdb

    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute(f"SET memory_limit = {duckdb_sql.literal(memory_limit)}")
    return con


def _groups(cursor, n_keys: int, batch: int = 50_000) -> Iterator[tuple[tuple, list[tuple]]]:
    """Consecutive rows grouped by their first n_keys columns (rows come sorted)."""
    current, rows = None, []
    while chunk := cursor.fetchmany(batch):
        for r in chunk:
            k = r[:n_keys]
            if k != current:
                if rows:
                    yield current, rows
                current, rows = k, []
            rows.append(r[n_keys:])
    if rows:
        yield current, rows


def _expiry_ms(last_us: int, keep_us: int | None, end_us: int) -> int | None | bool:
    """Milliseconds from now until the key is of no use, measured on the
    materialization's own clock (end_us); False when already useless."""
    if keep_us is None:
        return None
    left = last_us + keep_us - end_us
    return max(1, left // 1000) if left > 0 else False


def _write_tiles(r, project: str, view: View, cursor, end_us: int, st: ViewStats) -> None:
    keep = retention_us(view)
    keep = None if keep is None else keep + 2 * view.tile_us
    n = len(view.keys)
    fp = view.fingerprint()
    pipe = r.pipeline(transaction=True)
    for key_values, tiles in _groups(cursor, n):
        px = _expiry_ms(tiles[-1][0], keep, end_us)
        if px is False:
            continue
        key = layout.tiles_key(project, view.name, fp, layout.encode_entity_key(key_values))
        mapping = {layout.tile_field(t[0]): layout.encode_tile(_states(view, t[1:])) for t in tiles}
        pipe.delete(key)
        pipe.hset(key, mapping=mapping)
        if px is not None:
            pipe.pexpire(key, px)
        st.entities += 1
        st.tiles += len(tiles)
        if len(pipe) >= 3 * BATCH_ENTITIES:
            pipe.execute()
    pipe.execute()


def _states(view: View, cols: tuple) -> list:
    """Tile states from the SQL columns (avg spans two: sum and count)."""
    out, i = [], 0
    for a in view.aggregations:
        if a.function == "avg":
            out.append([cols[i] or 0.0, cols[i + 1]])
            i += 2
        else:
            out.append(cols[i])
            i += 1
    return out


def _write_rows(r, project: str, view: View, cursor, end_us: int, st: ViewStats) -> None:
    keep = None if view.ttl_us is None else 2 * view.ttl_us
    fp = view.fingerprint()
    n = len(view.keys)
    pipe = r.pipeline(transaction=True)
    while chunk := cursor.fetchmany(50_000):
        for row in chunk:
            ts = row[n]
            px = _expiry_ms(ts, keep, end_us)
            if px is False:
                continue
            key = layout.row_key(project, view.name, fp, layout.encode_entity_key(row[:n]))
            pipe.set(key, layout.encode_row(ts, row[n + 1:]), px=px)
            st.rows += 1
        pipe.execute()


def materialize_view(con, r, project: str, plan: Plan, view: View, root: Path,
                     end_us: int) -> ViewStats:
    st = ViewStats(view.name)
    t0 = time.perf_counter()
    source = plan.source(view.source)
    if view.aggregations:
        keep = retention_us(view)
        start = None if keep is None else (end_us // view.tile_us) * view.tile_us - keep
        cur = con.execute(duckdb_sql.tiles_sql(view, source, root, end_us, start))
        _write_tiles(r, project, view, cur, end_us, st)
    if view.row_features:
        cur = con.execute(duckdb_sql.latest_rows_sql(view, source, root, end_us, None))
        _write_rows(r, project, view, cur, end_us, st)
    st.seconds = time.perf_counter() - t0
    return st


def materialize(plan: Plan, root: Path, project: str, redis_url: str, *,
                end_us: int | None = None, views: list[str] | None = None,
                memory_limit: str = "4GB",
                progress: Callable[[ViewStats], None] | None = None) -> MaterializeStats:
    """Materialize `views` (default all) of the plan into Redis as of end_us."""
    import redis

    end_us = now_us() if end_us is None else end_us
    stats = MaterializeStats(end_us)
    con = _connect(memory_limit)
    r = redis.Redis.from_url(redis_url)
    try:
        for view in plan.views:
            if views and view.name not in views:
                continue
            st = materialize_view(con, r, project, plan, view, root, end_us)
            stats.views.append(st)
            if progress:
                progress(st)
    finally:
        r.close()
        con.close()
    return stats
