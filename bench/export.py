"""Training export at scale: 1M labels x 10M events, 5 window features and 5
row-level features, under a DuckDB memory limit; and the row-level part
against Feast's `get_historical_features` on the same data, same run.

    .venv/bin/python bench/export.py [--labels 1000000] [--events 10000000]
                                     [--memory-limit 4GB] [--compare-labels 200000]

Feast's file offline store (the one installed; its DuckDB store needs ibis)
holds everything in pandas/dask memory: at 100k labels x 1M events it peaks
above 2 GB, so the side-by-side row-level comparison runs on the first
--compare-labels labels and the first 2M events of the same data, both sides
on exactly the same rows. Each measurement runs in a child process of its
own, so its peak memory (RSS) is its own. Prints the figures and ratios; the
last line is one JSON object.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

US = 1_000_000
DAY = 86400 * US
START = int(dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc).timestamp()) * US
SPAN = 30 * DAY
ROW_FEATURES = ["last_amount", "last_category", "last_item", "last_big", "last_score"]


EVENTS_PER_FILE = 2_000_000


def write_data(work: Path, events: int, labels: int, users: int, compare_labels: int) -> None:
    """events/part-<n>.parquet (user_id, amount, item_id, category, ts),
    labels.parquet (user_id, event_timestamp, label, label_id), and the
    comparison's subset: compare/events (the first file) and compare/labels."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(5)
    names = pa.array([f"user_{i:07d}" for i in range(users)])
    (work / "events").mkdir()
    for n, at in enumerate(range(0, events, EVENTS_PER_FILE)):
        k = min(EVENTS_PER_FILE, events - at)
        pq.write_table(pa.table({
            "user_id": names.take(pa.array(rng.integers(0, users, k))),
            "amount": rng.gamma(2.0, 20.0, k).round(2),
            "item_id": rng.integers(0, 5000, k),
            "category": pa.array(rng.integers(0, 40, k)).cast(pa.string()),
            "ts": pa.array(START + rng.integers(0, SPAN, k)).cast(pa.timestamp("us", "UTC")),
        }), work / "events" / f"part-{n}.parquet", row_group_size=500_000)
    table = pa.table({
        "user_id": names.take(pa.array(rng.integers(0, users, labels))),
        "event_timestamp": pa.array(START + 7 * DAY + rng.integers(0, SPAN - 7 * DAY, labels))
        .cast(pa.timestamp("us", "UTC")),
        "label": rng.integers(0, 2, labels),
        "label_id": np.arange(labels),
    })
    pq.write_table(table, work / "labels.parquet")
    (work / "compare" / "events").mkdir(parents=True)
    (work / "compare" / "events" / "part-0.parquet").hardlink_to(work / "events" / "part-0.parquet")
    pq.write_table(table.slice(0, compare_labels), work / "compare" / "labels.parquet")


def plan(work: Path):
    from dsl.plan import Aggregation, Binary, Column, Entity, Literal, Plan, RowFeature, Service
    from dsl.plan import Source, View

    keys = (("user_id", "string"),)
    amount = Column("amount", "float64")
    schema = (("user_id", "string"), ("amount", "float64"), ("item_id", "int64"),
              ("category", "string"), ("ts", "timestamp"))
    windows = View("user_windows", "user", keys, "events", None, 5 * 60 * US, SPAN, (), (
        Aggregation("purchases_1h", "count", None, None, 3600 * US, "int64"),
        Aggregation("spend_1d", "sum", amount, None, DAY, "float64"),
        Aggregation("avg_amount_7d", "avg", amount, None, 7 * DAY, "float64"),
        Aggregation("max_amount_1d", "max", amount, None, DAY, "float64"),
        Aggregation("items_1d", "count_distinct", Column("item_id", "int64"), None, DAY, "int64")))
    rows = View("user_latest", "user", keys, "events", None, 5 * 60 * US, SPAN, (
        RowFeature("last_amount", amount, "float64"),
        RowFeature("last_category", Column("category", "string"), "string"),
        RowFeature("last_item", Column("item_id", "int64"), "int64"),
        RowFeature("last_big", Binary(">=", amount, Literal(100, "int64"), "bool"), "bool"),
        RowFeature("last_score", Binary("*", amount, Literal(0.5, "float64"), "float64"), "float64"),
    ), ())
    return Plan(entities=(Entity("user", keys),),
                sources=(Source("events", "batch", "parquet", str(work / "events" / "*.parquet"),
                                "ts", schema),),
                views=(windows, rows),
                services=(Service("all", (("user_windows", "*"), ("user_latest", "*"))),
                          Service("rows", (("user_latest", "*"),))))


# ------------------------------------------------------------------ children
def child_ours(work: Path, service: str, memory_limit: str) -> dict:
    from featurestore.export import export_to_parquet

    last = [0.0]

    def progress(step: str, done: float) -> None:
        if time.monotonic() - last[0] > 5:
            last[0] = time.monotonic()
            print(f"    {done:6.1%} {step}", file=sys.stderr, flush=True)

    t0 = time.perf_counter()
    stats = export_to_parquet(plan(work), ROOT, str(work / "labels.parquet"),
                              work / f"out_{service}.parquet", service=service,
                              memory_limit=memory_limit, temp_directory=work, progress=progress)
    return {"seconds": time.perf_counter() - t0, "rows": stats.rows,
            "steps": [(s, round(t, 2)) for s, t in stats.steps]}


def child_feast(work: Path) -> dict:
    """Feast's get_historical_features for the row-level features."""
    from datetime import timedelta

    import pandas as pd
    from feast import Entity, FeatureStore, FeatureView, Field, FileSource, ValueType
    from feast.types import Bool, Float64, Int64, String

    repo = work / "feast"
    repo.mkdir(exist_ok=True)
    (repo / "feature_store.yaml").write_text(
        "project: bench\nregistry: registry.db\nprovider: local\nonline_store:\n  type: sqlite\n"
        "offline_store:\n  type: file\nentity_key_serialization_version: 3\n")
    # Feast reads one file or folder per source: the same rows, with the
    # derived columns materialized so both sides compute nothing extra.
    import duckdb
    duckdb.sql(f"COPY (SELECT user_id, amount AS last_amount, category AS last_category, "
               f"item_id AS last_item, amount >= 100 AS last_big, amount * 0.5 AS last_score, ts "
               f"FROM '{work}/events/*.parquet') TO '{repo}/events.parquet'")
    store = FeatureStore(repo_path=str(repo))
    user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.STRING)
    view = FeatureView(name="user_latest", entities=[user], ttl=timedelta(days=30), schema=[
        Field(name="last_amount", dtype=Float64), Field(name="last_category", dtype=String),
        Field(name="last_item", dtype=Int64), Field(name="last_big", dtype=Bool),
        Field(name="last_score", dtype=Float64)],
        source=FileSource(path=str(repo / "events.parquet"), timestamp_field="ts"))
    store.apply([user, view])
    labels = pd.read_parquet(work / "labels.parquet")
    t0 = time.perf_counter()
    got = store.get_historical_features(
        entity_df=labels, features=[f"user_latest:{f}" for f in ROW_FEATURES]).to_df()
    seconds = time.perf_counter() - t0
    got.to_parquet(work / "feast_out.parquet")
    return {"seconds": seconds, "rows": len(got)}


def agreement(work: Path) -> float:
    """Share of (label, row-level feature) values on which Feast and we agree."""
    import duckdb

    same = " + ".join(f"CASE WHEN o.{f} IS NOT DISTINCT FROM f.{f} THEN 1 ELSE 0 END"
                      for f in ROW_FEATURES)
    total, equal = duckdb.sql(
        f"SELECT count(*) * {len(ROW_FEATURES)}, sum({same}) FROM '{work}/out_rows.parquet' o "
        f"JOIN '{work}/feast_out.parquet' f USING (label_id)").fetchall()[0]
    return equal / total


def run_child(kind: str, work: Path, *args: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", kind, "--work", str(work), *args],
                         stdout=subprocess.PIPE, check=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--labels", type=int, default=1_000_000)
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--memory-limit", default="4GB")
    parser.add_argument("--compare-labels", type=int, default=200_000)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--service", default="all", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        work = Path(args.work)
        result = (child_ours(work, args.service, args.memory_limit) if args.child == "ours"
                  else child_feast(work))
        result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
        print(json.dumps(result))
        return
    with tempfile.TemporaryDirectory(prefix="bench-export-") as tmp:
        print(json.dumps(measure(args, Path(tmp))))


def measure(args, work: Path) -> dict:
    t0 = time.perf_counter()
    write_data(work, args.events, args.labels, args.users, args.compare_labels)
    compare_events = min(args.events, EVENTS_PER_FILE)
    print(f"data: {args.events:,} events of {args.users:,} users, {args.labels:,} labels "
          f"({time.perf_counter() - t0:.0f} s to generate)", flush=True)
    full = run_child("ours", work, "--service", "all", "--memory-limit", args.memory_limit)
    print(f"ours, 5 window + 5 row-level features: {full['seconds']:.1f} s, "
          f"{args.labels / full['seconds']:,.0f} labels/s, peak RSS {full['peak_rss_mb']:,} MB "
          f"(DuckDB memory limit {args.memory_limit})", flush=True)
    for step, seconds in full["steps"]:
        print(f"    {seconds:7.2f} s  {step}")
    compare = work / "compare"
    rows = run_child("ours", compare, "--service", "rows", "--memory-limit", args.memory_limit)
    feast = run_child("feast", compare)
    share = agreement(compare)
    print(f"row-level only, {args.compare_labels:,} labels x {compare_events:,} events: "
          f"ours {rows['seconds']:.1f} s (peak {rows['peak_rss_mb']:,} MB), "
          f"Feast get_historical_features {feast['seconds']:.1f} s (peak "
          f"{feast['peak_rss_mb']:,} MB): {feast['seconds'] / rows['seconds']:.1f}x; "
          f"values agree on {share:.2%}")
    return {
        "benchmark": "export", "labels": args.labels, "events": args.events,
        "window_features": 5, "row_features": 5, "memory_limit": args.memory_limit,
        "seconds": round(full["seconds"], 2), "labels_per_s": round(args.labels / full["seconds"]),
        "peak_rss_mb": full["peak_rss_mb"],
        "compare_labels": args.compare_labels, "compare_events": compare_events,
        "row_level_seconds": round(rows["seconds"], 2), "row_level_peak_rss_mb": rows["peak_rss_mb"],
        "feast_row_level_seconds": round(feast["seconds"], 2),
        "feast_peak_rss_mb": feast["peak_rss_mb"],
        "speedup_vs_feast_row_level": round(feast["seconds"] / rows["seconds"], 2),
        "row_level_agreement_with_feast": round(share, 4),
    }


if __name__ == "__main__":
    main()
