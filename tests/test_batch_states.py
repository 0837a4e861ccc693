"""DuckDB writes the bytes `featurestore.layout` and `featurestore.tiles`
define: every tile and every latest row in Redis after `materialize` equals
the Python encoding (`TileCodec.encode`, `encode_row`) of states computed in
Python (`Aggregation.state_of`),
on the edge-case data of the differential tests; rollups too, computed from
the rows inside them."""
from __future__ import annotations

from collections import defaultdict

import redis

from featurestore import layout, windows
from featurestore.backends import duckdb_sql
from featurestore.materialize import materialize
from tests import differential as d
from tests.reference import _null_lowest


def _view_rows(view_ref, events, end):
    return [e for e in events if e["ts"] <= end and view_ref.filter(e) is True]


def _python_tiles(view, view_ref, events, end, lower):
    """(entity key, tiles hash field) -> the value of the tile or rollup,
    computed in Python from the rows inside it."""
    by_tile = defaultdict(list)
    for e in _view_rows(view_ref, events, end):
        for i, size in enumerate(windows.levels(view)):
            start = e["ts"] - e["ts"] % size
            if lower is None or start >= lower:
                field = layout.tile_field(start, size if i else None)
                by_tile[(tuple(e[k] for k, _ in view.keys), field)].append(e)
    out, codec = {}, duckdb_sql.tile_codec(view)
    for (key, start), rows in by_tile.items():
        states = []   # one per slot: the first aggregation of each
        for k in view.state_owners():
            a, ref = view.aggregations[k], view_ref.aggregations[k]
            kept = [e for e in rows if ref.where is None or ref.where(e) is True]
            pairs = [(e["ts"], ref.arg(e) if ref.arg else None) for e in kept]
            states.append(duckdb_sql.tile_aggregation(a).state_of(pairs))
        out[(layout.encode_entity_key(list(key)), start)] = codec.encode(states)
    return out


def test_materialized_tiles_are_the_python_encoding_of_python_states(tmp_path, redis_url):
    events = d.generate_events(seed=11)
    d.write_events(tmp_path, events)
    end = d.T0 + d.SPAN
    materialize(d.PLAN, tmp_path, d.PROJECT, redis_url, end_us=end)
    r = redis.Redis.from_url(redis_url)
    for view, view_ref in ((d.BUYS, d.REF_BUYS), (d.SHOP_VIEW, d.REF_SHOPS), (d.NUMS, d.REF_NUMS)):
        lower = windows.window_start(end, view.tile_us, windows.history_us(view))
        want = _python_tiles(view, view_ref, events, end, lower)
        got = {}
        for key in {k for k, _ in want}:
            stored = r.hgetall(layout.tiles_key(d.PROJECT, view.name, view.fingerprint(), key))
            got.update({(key, f): v for f, v in stored.items()})
        assert got == want, view.name
        assert any(b":" in f for _, f in got), "no rollups"


def test_materialized_rows_are_the_python_encoding_of_the_latest_row(tmp_path, redis_url):
    events = d.generate_events(seed=12)
    d.write_events(tmp_path, events)
    end = d.T0 + d.SPAN
    materialize(d.PLAN, tmp_path, d.PROJECT, redis_url, end_us=end)
    r = redis.Redis.from_url(redis_url)
    view, ref = d.SHOP_VIEW, d.REF_SHOPS  # no ttl: every entity has its row
    latest = {}
    for e in _view_rows(ref, events, end):
        key = (e["user"], e["shop"])
        rank = (e["ts"], *[_null_lowest(fn(e)) for _, fn in ref.row_features])
        if key not in latest or rank > latest[key][0]:
            latest[key] = (rank, e)
    for key, (_, e) in latest.items():
        stored = r.get(layout.row_key(d.PROJECT, view.name, view.fingerprint(),
                                      layout.encode_entity_key(list(key))))
        assert stored == layout.encode_row(e["ts"], [fn(e) for _, fn in ref.row_features]), key


def test_embeddings_are_written_as_python_writes_them(tmp_path, redis_url):
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from dsl.plan import Column, Entity, Plan, RowFeature, Source, View

    vectors = [[0.1, -0.0, 1e-40, 3.4e38], None, [float("nan"), 2.5]]
    (tmp_path / "data").mkdir()
    pq.write_table(pa.table({
        "user": ["a", "b", "c"],
        "embedding": pa.array(vectors, pa.list_(pa.float32())),
        "ts": pa.array([d.T0] * 3, pa.timestamp("us", "UTC"))}), tmp_path / "data" / "e.parquet")
    schema = (("user", "string"), ("embedding", "list<float32>"), ("ts", "timestamp"))
    view = View("emb", "user", (("user", "string"),), "vectors", None, d.TILE, None,
                (RowFeature("embedding", Column("embedding", "list<float32>"), "list<float32>"),),
                ())
    plan = Plan(entities=(Entity("user", (("user", "string"),)),),
                sources=(Source("vectors", "batch", "parquet", "data/*.parquet", "ts", schema),),
                views=(view,))
    materialize(plan, tmp_path, "p", redis_url, end_us=d.T0 + 1)
    r = redis.Redis.from_url(redis_url)
    for user, vector in zip("abc", vectors):
        widened = None if vector is None else [float(np.float32(x)) for x in vector]
        key = layout.row_key("p", "emb", view.fingerprint(), user)
        assert r.get(key) == layout.encode_row(d.T0, [widened]), user
