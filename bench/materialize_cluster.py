"""Materialization into one Redis node against a local Redis Cluster (3
masters, 3 replicas), same data, same run.

    .venv/bin/python bench/materialize_cluster.py [--rows 300000] [--repeat 2]

The data is bench/materialize.py's: one row per entity with 10 features
(the row view), and events over a tenth as many entities (the window view).
Every process runs on this machine: on a machine with few cores the
cluster's six redis-servers compete with the writer for them, which a real
cluster on its own hosts does not. Each figure is the median of --repeat
runs, taken in turns. Prints rows/s per view and the ratio cluster / one
node; the last line is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import materialize as data  # noqa: E402  (bench/materialize.py: the data and the plan)

from featurestore import redis_client, redis_local  # noqa: E402
from featurestore.materialize import materialize  # noqa: E402
from tests.redis_topologies import LocalCluster  # noqa: E402

VIEWS = ("driver_stats", "driver_trips")


def run(plan, work: Path, store, empty, view: str) -> float:
    """Keys written per second by one materialize of `view`."""
    empty()
    t0 = time.perf_counter()
    st = materialize(plan, work, "bench", store, end_us=data.END, views=[view]).views[0]
    return (st.rows or st.entities) / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=300_000)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    data.write_rows(work / "rows.parquet", args.rows)
    data.write_events(work / "events.parquet", args.rows, max(1, args.rows // 10))
    plan = data.plan_for(work / "rows.parquet", work / "events.parquet")
    single = redis_local.start(work / "single")
    cluster = LocalCluster(work / "cluster")

    def empty_single():
        with redis_client.sync_client(single.url) as r:
            r.flushall()

    stores = {"single": (redis_client.single(single.url), empty_single),
              "cluster": (cluster.target, cluster.flush)}
    figures: dict = {name: {view: [] for view in VIEWS} for name in stores}
    try:
        for _ in range(args.repeat):
            for name, (store, empty) in stores.items():
                for view in VIEWS:
                    figures[name][view].append(run(plan, work, store, empty, view))
    finally:
        cluster.stop()
        single.stop()
    result = {"rows": args.rows, "repeat": args.repeat}
    for view in VIEWS:
        one, many = (statistics.median(figures[n][view]) for n in ("single", "cluster"))
        print(f"{view:13s} one node {one:10,.0f} rows/s   cluster {many:10,.0f} rows/s   "
              f"cluster / one node {many / one:.2f}")
        result[view] = {"single_rows_s": round(one), "cluster_rows_s": round(many),
                        "ratio": round(many / one, 3)}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
