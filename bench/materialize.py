"""Materialization throughput: ours against Feast's `materialize`, same data,
same Redis, same run.

    .venv/bin/python bench/materialize.py [--rows 1000000] [--feast-rows 30000] [--repeat 3]

The data is Feast's usual benchmark shape: one row per entity, 10 features
(5 float64, 3 int64, 2 string). Feast is Python-bound (~11k rows/s here, the
same at any size), so it gets fewer rows (--feast-rows) and the comparison is
in rows per second; ours runs on both sizes. Every figure is the median of
--repeat runs, taken in turns, so that load from other processes on the
machine falls on both sides alike. A second figure shows the windowed side:
events turned into tiles (count, sum, avg, max, stddev over 1h/1d windows).

Prints the figures and ratios; the last line is one JSON object.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dsl.plan import Aggregation, Column, Entity, Plan, RowFeature, Source, View  # noqa: E402
from featurestore import redis_local  # noqa: E402
from featurestore.materialize import materialize  # noqa: E402

US = 1_000_000
END = int(dt.datetime(2026, 1, 31, tzinfo=dt.timezone.utc).timestamp()) * US
TYPES = ["float64"] * 5 + ["int64"] * 3 + ["string"] * 2


def write_rows(path: Path, rows: int, seed: int = 1) -> None:
    """One row per entity: driver_id, event_timestamp, f0..f9."""
    rng = np.random.default_rng(seed)
    ts = END - rng.integers(0, 7 * 86400 * US, rows)
    columns = {"driver_id": np.arange(rows, dtype=np.int64),
               "event_timestamp": pa.array(ts).cast(pa.timestamp("us", "UTC"))}
    for i, t in enumerate(TYPES):
        if t == "float64":
            columns[f"f{i}"] = rng.normal(100, 30, rows).round(3)
        elif t == "int64":
            columns[f"f{i}"] = rng.integers(0, 10_000, rows)
        else:
            columns[f"f{i}"] = pa.array(rng.integers(0, 1000, rows)).cast(pa.string())
    pq.write_table(pa.table(columns), path)


def write_events(path: Path, events: int, entities: int, seed: int = 2) -> None:
    rng = np.random.default_rng(seed)
    pq.write_table(pa.table({
        "driver_id": rng.integers(0, entities, events),
        "trip_value": rng.gamma(2.0, 15.0, events).round(2),
        "event_timestamp": pa.array(END - rng.integers(0, 86400 * US, events))
        .cast(pa.timestamp("us", "UTC"))}), path)


def plan_for(rows_path: Path, events_path: Path) -> Plan:
    schema = (("driver_id", "int64"), ("event_timestamp", "timestamp"),
              *((f"f{i}", t) for i, t in enumerate(TYPES)))
    keys = (("driver_id", "int64"),)
    stats = View("driver_stats", "driver", keys, "stats", None, 5 * 60 * US, 30 * 86400 * US,
                 tuple(RowFeature(f"f{i}", Column(f"f{i}", t), t) for i, t in enumerate(TYPES)), ())
    value = Column("trip_value", "float64")
    trips = View("driver_trips", "driver", keys, "trips", None, 5 * 60 * US, 86400 * US, (), (
        Aggregation("trips_1h", "count", None, None, 3600 * US, "int64"),
        Aggregation("value_1h", "sum", value, None, 3600 * US, "float64"),
        Aggregation("avg_value_1d", "avg", value, None, 86400 * US, "float64"),
        Aggregation("max_value_1d", "max", value, None, 86400 * US, "float64"),
        Aggregation("std_value_1d", "stddev", value, None, 86400 * US, "float64")))
    return Plan(entities=(Entity("driver", keys),),
                sources=(Source("stats", "batch", "parquet", str(rows_path), "event_timestamp", schema),
                         Source("trips", "batch", "parquet", str(events_path), "event_timestamp",
                                (("driver_id", "int64"), ("trip_value", "float64"),
                                 ("event_timestamp", "timestamp")))),
                views=(stats, trips))


def ours(plan: Plan, view: str, url: str) -> dict:
    import redis

    redis.Redis.from_url(url).flushall()
    t0 = time.perf_counter()
    stats = materialize(plan, ROOT, "bench", url, end_us=END, views=[view])
    seconds = time.perf_counter() - t0
    st = stats.views[0]
    return {"seconds": round(seconds, 3), "rows": st.rows, "entities": st.entities,
            "tiles": st.tiles}


def feast(rows_path: Path, url_port: int, work: Path) -> dict:
    """Feast's own materialize of the same rows into the same Redis."""
    from datetime import timedelta

    from feast import Entity as FeastEntity
    from feast import FeatureStore, FeatureView, Field, FileSource, ValueType
    from feast.types import Float64, Int64, String

    work.mkdir(exist_ok=True)
    (work / "feature_store.yaml").write_text(
        "project: bench\nregistry: registry.db\nprovider: local\n"
        f"online_store:\n  type: redis\n  connection_string: 127.0.0.1:{url_port}\n"
        "offline_store:\n  type: file\nentity_key_serialization_version: 3\n")
    store = FeatureStore(repo_path=str(work))
    driver = FeastEntity(name="driver", join_keys=["driver_id"], value_type=ValueType.INT64)
    dtypes = {"float64": Float64, "int64": Int64, "string": String}
    view = FeatureView(
        name="driver_stats", entities=[driver], ttl=timedelta(days=30),
        schema=[Field(name=f"f{i}", dtype=dtypes[t]) for i, t in enumerate(TYPES)],
        source=FileSource(path=str(rows_path), timestamp_field="event_timestamp"))
    store.apply([driver, view])
    end = dt.datetime.fromtimestamp(END / US, dt.timezone.utc)
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        store.materialize(start_date=end - timedelta(days=8), end_date=end + timedelta(seconds=1))
    return {"seconds": round(time.perf_counter() - t0, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--feast-rows", type=int, default=30_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--events", type=int, default=1_000_000)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-materialize-") as tmp:
        work = Path(tmp)
        server = redis_local.start(work / "redis")
        try:
            result = run(args, work, server)
        finally:
            server.stop()
    print(json.dumps(result))


def run(args, work: Path, server) -> dict:
    big, small, events = work / "rows.parquet", work / "rows_small.parquet", work / "events.parquet"
    write_rows(big, args.rows)
    write_rows(small, args.feast_rows)
    write_events(events, args.events, entities=max(args.events // 100, 1))
    print(f"data: {args.rows:,} and {args.feast_rows:,} entity rows x 10 features; "
          f"{args.events:,} events; Redis {server.url}", flush=True)

    runs: dict[str, list[dict]] = {"big": [], "small": [], "tiles": [], "feast": []}
    for i in range(args.repeat):
        runs["big"].append(ours(plan_for(big, events), "driver_stats", server.url))
        runs["small"].append(ours(plan_for(small, events), "driver_stats", server.url))
        runs["tiles"].append(ours(plan_for(small, events), "driver_trips", server.url))
        runs["feast"].append(feast(small, server.port, work / f"feast{i}"))
        print(f"  run {i + 1}: ours {runs['big'][-1]['seconds']:.2f} s, "
              f"Feast {runs['feast'][-1]['seconds']:.2f} s", flush=True)
    ours_big, ours_small, tiles, feast_small = (median(runs[k]) for k in ("big", "small", "tiles", "feast"))

    rate = lambda rows, s: round(rows / s)  # noqa: E731
    r_big, r_small = rate(args.rows, ours_big["seconds"]), rate(args.feast_rows, ours_small["seconds"])
    r_feast = rate(args.feast_rows, feast_small["seconds"])
    r_events = rate(args.events, tiles["seconds"])
    print(f"ours,  {args.rows:>9,} rows: {ours_big['seconds']:7.2f} s  {r_big:>10,} rows/s")
    print(f"ours,  {args.feast_rows:>9,} rows: {ours_small['seconds']:7.2f} s  {r_small:>10,} rows/s")
    print(f"Feast, {args.feast_rows:>9,} rows: {feast_small['seconds']:7.2f} s  {r_feast:>10,} rows/s")
    print(f"ratio (rows/s, ours at {args.rows:,} / Feast): {r_big / r_feast:.1f}x; "
          f"same size: {r_small / r_feast:.1f}x")
    print(f"tiles: {args.events:,} events -> {tiles['tiles']:,} tiles of {tiles['entities']:,} "
          f"entities in {tiles['seconds']:.2f} s ({r_events:,} events/s)")
    return {
        "benchmark": "materialize", "rows": args.rows, "feast_rows": args.feast_rows,
        "features": 10, "repeat": args.repeat,
        "ours_seconds": ours_big["seconds"], "ours_rows_per_s": r_big,
        "ours_same_size_seconds": ours_small["seconds"], "ours_same_size_rows_per_s": r_small,
        "feast_seconds": feast_small["seconds"], "feast_rows_per_s": r_feast,
        "ratio_vs_feast": round(r_big / r_feast, 1),
        "ratio_vs_feast_same_size": round(r_small / r_feast, 1),
        "tile_events": args.events, "tiles": tiles["tiles"], "tile_seconds": tiles["seconds"],
        "tile_events_per_s": r_events,
    }


def median(runs: list[dict]) -> dict:
    """The run with the median time."""
    seconds = statistics.median_low(r["seconds"] for r in runs)
    return next(r for r in runs if r["seconds"] == seconds)


if __name__ == "__main__":
    main()
