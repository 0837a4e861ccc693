"""Online lookup latency and throughput: our gRPC server against Feast's own
in-process `get_online_features`, on the same data in the same Redis.

    .venv/bin/python bench/serving.py [--users 10000] [--requests 2000]

Both sides serve the same row-level view (5 features of 10,000 users). Ours
runs as a separate server process and is measured through the Python client,
network hop and all; Feast is called in-process (no network: its best case).
A second section measures a windowed service (count/sum over 1h and 1d on
5-minute tiles), which Feast's lookups have no equivalent for.
The last line is one JSON object with the figures and the ratios.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from featurestore import config, redis_local, repo  # noqa: E402
from featurestore.materialize import materialize  # noqa: E402
from featurestore.redis_local import free_port  # noqa: E402
from serving.client import FeatureClient  # noqa: E402

END = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
END_US = int(END.timestamp()) * 1_000_000
FEATS = """
entity user { key user_id: string }
source profiles {
    batch parquet "data/profiles.parquet"
    timestamp updated_at
    schema { user_id: string, country: string, age: int64, score: float64, plan: string,
             logins: int64, updated_at: timestamp }
}
source events {
    batch parquet "data/events.parquet"
    timestamp ts
    schema { user_id: string, amount: float64, ts: timestamp }
}
view profile {
    entity user
    from profiles
    features { country = country  age = age  score = score  plan = plan  logins = logins }
}
view activity {
    entity user
    from events
    tile 5m
    features {
        n_1h = count() over 1h
        spend_1h = sum(amount) over 1h
        n_1d = count() over 1d
        spend_1d = sum(amount) over 1d
    }
}
service windows { activity.* }
"""


def write_data(root: Path, users: int, events: int) -> list[str]:
    rng = np.random.default_rng(1)
    ids = np.char.add("u", np.arange(users).astype(str))
    data = root / "data"
    data.mkdir(parents=True)
    ts = pa.array(np.full(users, END_US - 3_600_000_000), pa.int64()).cast(pa.timestamp("us", "UTC"))
    pq.write_table(pa.table({
        "user_id": ids, "country": rng.choice(["DE", "US", "BR"], users),
        "age": rng.integers(16, 80, users), "score": rng.random(users),
        "plan": rng.choice(["free", "pro"], users), "logins": rng.integers(0, 1000, users),
        "updated_at": ts}), data / "profiles.parquet")
    ev_ts = END_US - rng.integers(0, 86_400_000_000, events)
    pq.write_table(pa.table({
        "user_id": ids[rng.integers(0, users, events)], "amount": rng.random(events) * 100,
        "ts": pa.array(ev_ts, pa.int64()).cast(pa.timestamp("us", "UTC"))}), data / "events.parquet")
    return list(ids)


def percentiles(samples: list[float]) -> dict:
    a = np.array(samples) * 1000
    return {"p50_ms": round(float(np.percentile(a, 50)), 3),
            "p99_ms": round(float(np.percentile(a, 99)), 3)}


def measure(call, requests: int) -> dict:
    for _ in range(min(50, requests)):  # warm up connections and caches
        call()
    samples = []
    for _ in range(requests):
        t0 = time.perf_counter()
        call()
        samples.append(time.perf_counter() - t0)
    return percentiles(samples)


def throughput(make_call, threads: int, seconds: float) -> float:
    done, stop = [0] * threads, time.perf_counter() + seconds

    def worker(i: int) -> None:
        call = make_call()
        while time.perf_counter() < stop:
            call()
            done[i] += 1
    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return round(sum(done) / seconds, 1)


def start_ours(root: Path, url: str) -> tuple[subprocess.Popen, int]:
    cfg = config.load(root)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "serving.server", "--manifest",
                             str(cfg.manifest_path), "--redis", url, "--port", str(port)],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with FeatureClient(f"127.0.0.1:{port}") as c:
        for _ in range(100):
            try:
                if c.health(timeout=1) == "SERVING":
                    return proc, port
            except Exception:
                time.sleep(0.1)
    proc.kill()
    raise RuntimeError("our server did not start")


def bench_ours(root: Path, url: str, ids: list[str], n: int) -> dict:
    proc, port = start_ours(root, url)
    target, rng = f"127.0.0.1:{port}", np.random.default_rng(2)
    feats = [f"profile:{f}" for f in ("country", "age", "score", "plan", "logins")]
    out = {}
    try:
        with FeatureClient(target) as c:
            for batch in (1, 100):
                keys = [list(rng.choice(ids, batch)) for _ in range(64)]
                it = iter(range(10**9))
                out[f"rows_{batch}"] = measure(lambda: c.get_online_features(
                    feats, entities={"user_id": keys[next(it) % 64]}), n)
                out[f"windows_{batch}"] = measure(lambda: c.get_online_features(
                    service="windows", entities={"user_id": keys[next(it) % 64]}), n // 4)

        def make_call():
            client = FeatureClient(target)
            return lambda: client.get_online_features(feats, entities={"user_id": [ids[7]]})
        out["rows_1_rps_c8"] = throughput(make_call, 8, 3.0)
    finally:
        proc.terminate()
        proc.wait(10)
    return out


def bench_feast(root: Path, redis_port: int, ids: list[str], n: int) -> dict:
    import logging
    from datetime import timedelta

    from feast import Entity, FeatureStore, FeatureView, Field, FileSource, ValueType
    from feast.types import Float64, Int64, String

    logging.getLogger("feast").setLevel(logging.ERROR)
    repo_dir = root / "feast_repo"
    repo_dir.mkdir()
    (repo_dir / "feature_store.yaml").write_text(
        f"project: bench\nregistry: {repo_dir / 'registry.db'}\nprovider: local\n"
        f"online_store:\n  type: redis\n  connection_string: \"127.0.0.1:{redis_port},db=1\"\n"
        "offline_store:\n  type: file\nentity_key_serialization_version: 3\n")
    store = FeatureStore(repo_path=str(repo_dir))
    user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.STRING)
    source = FileSource(path=str(root / "data" / "profiles.parquet"), timestamp_field="updated_at")
    view = FeatureView(name="profile", entities=[user], ttl=timedelta(days=365), source=source,
                       schema=[Field(name="country", dtype=String), Field(name="age", dtype=Int64),
                               Field(name="score", dtype=Float64), Field(name="plan", dtype=String),
                               Field(name="logins", dtype=Int64)])
    store.apply([user, view])
    store.materialize(END - timedelta(days=2), END)
    feats = [f"profile:{f}" for f in ("country", "age", "score", "plan", "logins")]
    rng, out = np.random.default_rng(2), {}
    for batch in (1, 100):
        keys = [list(rng.choice(ids, batch)) for _ in range(64)]
        it = iter(range(10**9))
        out[f"rows_{batch}"] = measure(lambda: store.get_online_features(
            feats, entity_rows=[{"user_id": k} for k in keys[next(it) % 64]]).to_dict(), n)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--users", type=int, default=10_000)
    p.add_argument("--events", type=int, default=200_000)
    p.add_argument("--requests", type=int, default=2000)
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        server = redis_local.start(root / "redis")
        try:
            ids = write_data(root, a.users, a.events)
            (root / "features").mkdir()
            (root / "features" / "bench.feat").write_text(FEATS)
            (root / "featurestore.yaml").write_text(
                f"project: bench\nonline_store:\n  url: {server.url}\n")
            cfg = config.load(root)
            plan = repo.require_plan(cfg)
            repo.apply(cfg, plan, print)
            materialize(plan, root, cfg.project, server.url, end_us=END_US)
            ours = bench_ours(root, server.url, ids, a.requests)
            feast = bench_feast(root, server.port, ids, a.requests)
        finally:
            server.stop()
    report(ours, feast)


def report(ours: dict, feast: dict) -> None:
    print(f"{'lookup':<34}{'ours p50':>10}{'ours p99':>10}{'feast p50':>11}{'feast p99':>11}")
    for batch in (1, 100):
        o, f = ours[f"rows_{batch}"], feast[f"rows_{batch}"]
        print(f"{f'{batch} entities x 5 row features':<34}{o['p50_ms']:>10}{o['p99_ms']:>10}"
              f"{f['p50_ms']:>11}{f['p99_ms']:>11}")
    for batch in (1, 100):
        o = ours[f"windows_{batch}"]
        print(f"{f'{batch} entities x 4 windowed (1h, 1d)':<34}{o['p50_ms']:>10}{o['p99_ms']:>10}")
    print(f"ours, 1 entity, 8 concurrent clients: {ours['rows_1_rps_c8']} req/s")
    figures = {"ours": ours, "feast_in_process": feast,
               "ratio_p99_feast_over_ours_1": round(feast["rows_1"]["p99_ms"] / ours["rows_1"]["p99_ms"], 2),
               "ratio_p99_feast_over_ours_100":
                   round(feast["rows_100"]["p99_ms"] / ours["rows_100"]["p99_ms"], 2)}
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
