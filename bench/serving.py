"""Serving, side by side: our gRPC server against Feast's gRPC and HTTP servers.

Same data, same Redis, one load generator for all three.

    .venv/bin/python bench/serving.py                 # the full run (~15 min on 2 cores)
    .venv/bin/python bench/serving.py --quick --events 100000   # a smoke test

Servers (all three run for the whole bench, against one private redis-server):
  ours        `featurestore serve` (with `--workers N` when the CLI has it)
  feast-grpc  `feast listen -w 8`, Feast's gRPC server
  feast-http  `feast serve --workers 2 --max-requests 0 --no-access-log`

Data: the quickstart generator (10k users, 1M purchases over 7 days, Zipf-like
activity) plus a heavy tail (some users with thousands of extra purchases),
with 10 columns per purchase. Both stores get the same 10 row-level features,
the latest purchase of each user: ours through `featurestore materialize`,
Feast through its own `materialize`. Before timing, the values served by all
three servers are checked against each other and against the data.

Load: one closed-loop, multi-process generator (bench/loadgen.py) sending
pre-serialized requests and reading raw bytes (gRPC: a raw channel method;
HTTP: keep-alive http.client connections), so the client costs the same for
every server. Servers alternate within each case, each case runs --reps times
after a warm-up. Server CPU is utime+stime of the server process and all its
descendants (workers) across the timed interval, per completed request.

Cases: 1 x 10 row features at concurrency 1, 8, 32; 100 x 10 and 1000 x 10 at
1 and 8 (all three servers). Ours only: 1, 100, 1000 entities x 20 windowed
features (10 aggregations over 1d and 7d on 5-minute tiles) at 1 and 8, and
1000 x 20 at 32, counting errors.

The last line is one JSON object: throughput ratios ours/Feast at concurrency 8
(medians over repetitions), the CPU ratio, the p99 of 1000 x 20 windows, errors.
"""
from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BENCH = str(Path(__file__).resolve().parent)
# the repo first: `serving` is the package, not this file; then bench/ for loadgen
sys.path[:] = [str(ROOT)] + [p for p in sys.path if p not in (BENCH, str(ROOT))] + [BENCH]

from loadgen import LoadGen, Target  # noqa: E402

US_PER_DAY = 86_400_000_000
TILE_US = 5 * 60_000_000
ROW_FEATURES = {  # name -> (our type, Feast type name)
    "item_id": ("int64", "Int64"), "amount": ("float64", "Float64"),
    "category": ("string", "String"), "quantity": ("int64", "Int64"),
    "unit_price": ("float64", "Float64"), "discount": ("float64", "Float64"),
    "channel": ("string", "String"), "device": ("string", "String"),
    "gift": ("bool", "Bool"), "session_s": ("int64", "Int64"),
}
WINDOWS = {  # 10 aggregations, each over 1d and 7d: 20 features
    "n": "count()", "spend": "sum(amount)", "avg_amount": "avg(amount)",
    "max_amount": "max(amount)", "min_amount": "min(amount)", "std_amount": "stddev(amount)",
    "items": "sum(quantity)", "refunds": "count() where amount < 0",
    "gifts": "count() where gift", "max_session": "max(session_s)",
}
ROW_REFS = [f"last_purchase:{f}" for f in ROW_FEATURES]
WINDOW_REFS = [f"activity:{n}_{w}" for n in WINDOWS for w in ("1d", "7d")]
OURS_METHOD = "/featurestore.serving.v1.ServingService/GetOnlineFeatures"
FEAST_GRPC_METHOD = "/GrpcFeatureServer/GetOnlineFeatures"  # what `feast listen` serves
SERVERS = ("ours", "feast-grpc", "feast-http")


# ------------------------------------------------------------------- data
def _template_generator():
    path = ROOT / "featurestore" / "templates" / "repo" / "generate_data.py"
    spec = importlib.util.spec_from_file_location("shop_generate_data", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def write_data(root: Path, users: int, events: int, days: int, heavy_users: int,
               heavy_events: tuple[int, int], end_us: int, seed: int = 7) -> dict:
    """data/purchases.parquet: the quickstart's purchases plus a heavy tail, with
    10 columns besides user_id and event_time. Timestamps are made unique, so
    "the latest row of a user" means one row for every store."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    gen = _template_generator()
    rng = np.random.default_rng(seed)
    base = gen.purchases(rng, events, users, end_us, days)
    ids = gen.user_ids(users)
    # the heavy tail: users of the quiet half get thousands of purchases each
    heavy = rng.choice(np.arange(users // 2, users), size=min(heavy_users, users // 2),
                       replace=False)
    counts = rng.integers(heavy_events[0], heavy_events[1] + 1, size=len(heavy))
    n_tail = int(counts.sum())
    tail_amount = np.round(rng.lognormal(3.0, 1.0, n_tail), 2)
    tail_amount[rng.random(n_tail) < 0.05] *= -1
    user = np.concatenate([base["user_id"].to_numpy(zero_copy_only=False),
                           np.repeat(ids[heavy], counts)]).astype(str)
    ts = np.concatenate([base["event_time"].cast(pa.int64()).to_numpy(),
                         end_us - rng.integers(0, days * US_PER_DAY, n_tail)])
    amount = np.concatenate([base["amount"].to_numpy(), tail_amount])
    item = np.concatenate([base["item_id"].to_numpy(), rng.integers(1, 50_000, n_tail)])
    category = np.concatenate([base["category"].to_numpy(zero_copy_only=False),
                               gen.CATEGORIES[rng.integers(0, len(gen.CATEGORIES), n_tail)]]).astype(str)
    order = np.argsort(ts, kind="stable")
    user, ts, amount = user[order], ts[order], amount[order]
    item, category = item[order], category[order]
    n = len(ts)
    step = np.arange(n, dtype=np.int64)
    ts = np.maximum.accumulate(ts - step) + step  # strictly increasing
    ts -= max(0, int(ts[-1]) - end_us)
    quantity = rng.integers(1, 6, n)
    cols = {
        "user_id": user, "item_id": item, "amount": amount, "category": category,
        "quantity": quantity, "unit_price": np.round(np.abs(amount) / quantity, 2),
        "discount": np.round(rng.random(n) * 0.3, 3),
        "channel": np.array(["web", "app", "store", "phone"])[rng.integers(0, 4, n)],
        "device": np.array(["ios", "android", "desktop", "tablet"])[rng.integers(0, 4, n)],
        "gift": rng.random(n) < 0.1, "session_s": rng.integers(5, 3600, n),
    }
    table = pa.table({**{k: pa.array(v) for k, v in cols.items()},
                      "event_time": pa.array(ts, pa.int64()).cast(pa.timestamp("us", "UTC"))})
    (root / "data").mkdir(parents=True, exist_ok=True)
    pq.write_table(table, root / "data" / "purchases.parquet", row_group_size=256 * 1024)
    # the latest row of every user, for checking what the servers return
    last = {}
    idx = np.unique(user[::-1], return_index=True)
    for u, i in zip(idx[0], n - 1 - idx[1]):
        last[str(u)] = {k: v[i].item() for k, v in cols.items() if k != "user_id"}
    by_count = np.unique(user, return_counts=True)
    top = by_count[0][np.argsort(-by_count[1])[:3]]
    return {"ids": [str(i) for i in ids], "user": user, "ts": ts, "amount": amount,
            "last": last, "rows": n, "top": [str(u) for u in top],
            "heavy": [str(ids[h]) for h in heavy], "max_events": int(by_count[1].max())}


FEAT = """\
entity user {{ key user_id: string }}

source purchases {{
    batch parquet "data/purchases.parquet"
    timestamp event_time
    schema {{ user_id: string, {schema}, event_time: timestamp }}
}}

view last_purchase {{
    entity user
    from purchases
    ttl 30d
    features {{
{rows}
    }}
}}

view activity {{
    entity user
    from purchases
    tile 5m
    ttl 30d
    features {{
{windows}
    }}
}}
"""


def write_our_repo(root: Path, redis_url: str, port: int) -> None:
    (root / "features").mkdir(exist_ok=True)
    (root / "features" / "bench.feat").write_text(FEAT.format(
        schema=", ".join(f"{k}: {t}" for k, (t, _) in ROW_FEATURES.items()),
        rows="\n".join(f"        {k} = {k}" for k in ROW_FEATURES),
        windows="\n".join(f"        {k} = {e} over 1d, 7d" for k, e in WINDOWS.items())))
    (root / "featurestore.yaml").write_text(
        f"project: bench\nregistry: .featurestore/registry.db\n"
        f"online_store:\n  url: {redis_url}\n"
        f"serving:\n  host: 127.0.0.1\n  port: {port}\n"
        f"batch:\n  memory_limit: 4GB\n")


def _cli(name: str) -> list[str]:
    script = Path(sys.executable).parent / name
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", {"featurestore": "featurestore.cli", "feast": "feast.cli.cli"}[name]]


def setup_ours(root: Path, end: dt.datetime) -> float:
    fs = _cli("featurestore")
    subprocess.run([*fs, "apply", "--repo", str(root)], check=True, stdout=subprocess.DEVNULL)
    t0 = time.perf_counter()
    subprocess.run([*fs, "materialize", "--repo", str(root), "--end", end.isoformat()], check=True)
    return time.perf_counter() - t0


def setup_feast(root: Path, redis_port: int, end: dt.datetime, days: int) -> Path:
    """A Feast repo over the same Parquet file, materialized into the same Redis
    (its own keys) with Feast's own `materialize`."""
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    from feast import Entity, FeatureStore, FeatureView, Field, FileSource, ValueType
    from feast import types as ft

    logging.getLogger("feast").setLevel(logging.ERROR)
    repo_dir = root / "feast_repo"
    repo_dir.mkdir()
    (repo_dir / "feature_store.yaml").write_text(
        f"project: bench\nregistry: {repo_dir / 'registry.db'}\nprovider: local\n"
        f"online_store:\n  type: redis\n  connection_string: \"127.0.0.1:{redis_port}\"\n"
        "offline_store:\n  type: file\nentity_key_serialization_version: 3\n")
    store = FeatureStore(repo_path=str(repo_dir))
    user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.STRING)
    source = FileSource(name="purchases", path=str(root / "data" / "purchases.parquet"),
                        timestamp_field="event_time")
    view = FeatureView(name="last_purchase", entities=[user], ttl=dt.timedelta(days=30),
                       source=source, online=True,
                       schema=[Field(name=k, dtype=getattr(ft, t))
                               for k, (_, t) in ROW_FEATURES.items()])
    store.apply([user, view])
    store.materialize(end - dt.timedelta(days=days + 1), end + dt.timedelta(seconds=1))
    return repo_dir


# ---------------------------------------------------------------- servers
@dataclass
class Server:
    name: str
    proc: subprocess.Popen
    target: Target
    log: Path
    cmd: list[str]


def _our_serve_has_workers() -> bool:
    out = subprocess.run([*_cli("featurestore"), "serve", "--help"], capture_output=True,
                         text=True).stdout
    return "--workers" in out


def start_servers(root: Path, feast_repo: Path, our_port: int, workers: int | None) -> dict:
    from featurestore.redis_local import free_port

    env = {**os.environ, "FEAST_USAGE": "False", "PYTHONWARNINGS": "ignore"}
    grpc_port, http_port = free_port(), free_port()
    ours = [*_cli("featurestore"), "serve", "--repo", str(root), "--host", "127.0.0.1",
            "--port", str(our_port)]
    if workers is not None:
        ours += ["--workers", str(workers)]
    feast = _cli("feast")
    cmds = {
        "ours": (ours, Target("grpc", f"127.0.0.1:{our_port}", OURS_METHOD, 10.0)),
        "feast-grpc": ([*feast, "-c", str(feast_repo), "listen", "-a", f"127.0.0.1:{grpc_port}",
                        "-w", "8"], Target("grpc", f"127.0.0.1:{grpc_port}", FEAST_GRPC_METHOD, 10.0)),
        "feast-http": ([*feast, "-c", str(feast_repo), "serve", "-h", "127.0.0.1", "-p",
                        str(http_port), "--workers", "2", "--max-requests", "0", "--no-access-log"],
                       Target("http", f"127.0.0.1:{http_port}", "/get-online-features", 10.0)),
    }
    servers = {}
    for name, (cmd, target) in cmds.items():
        log = root / f"{name}.log"
        proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=log.open("wb"),
                                stderr=subprocess.STDOUT)
        servers[name] = Server(name, proc, target, log, cmd)
    deadline = time.monotonic() + 90
    for s in servers.values():
        while not _ready(s):
            if s.proc.poll() is not None or time.monotonic() > deadline:
                stop_servers(servers)
                raise RuntimeError(f"{s.name} did not start ({' '.join(s.cmd)}):\n"
                                   + s.log.read_text()[-3000:])
            time.sleep(0.2)
    return servers


def _ready(s: Server) -> bool:
    if s.target.kind == "http":
        try:
            with urllib.request.urlopen(f"http://{s.target.address}/health", timeout=1) as r:
                return r.status == 200
        except OSError:
            return False
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(s.target.address) as ch:
        try:
            reply = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=1)
            return reply.status == health_pb2.HealthCheckResponse.SERVING
        except grpc.RpcError:
            return False


def stop_servers(servers: dict) -> None:
    for s in servers.values():
        if s.proc.poll() is None:
            s.proc.terminate()
    for s in servers.values():
        try:
            s.proc.wait(15)
        except subprocess.TimeoutExpired:
            s.proc.kill()
            s.proc.wait(5)


# --------------------------------------------------------------- CPU time
CLK_TCK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> tuple[int, int] | None:
    """(ppid, utime + stime in ticks) of a process, all its threads."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            rest = f.read().rsplit(b")", 1)[1].split()
    except OSError:
        return None
    return int(rest[1]), int(rest[11]) + int(rest[12])


def tree_cpu_s(pid: int) -> float:
    """CPU seconds used so far by `pid` and all its live descendants."""
    stats = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            st = _stat(int(d))
            if st:
                stats[int(d)] = st
    children: dict[int, list[int]] = {}
    for p, (ppid, _) in stats.items():
        children.setdefault(ppid, []).append(p)
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        if p in stats:
            total += stats[p][1]
            todo.extend(children.get(p, ()))
    return total / CLK_TCK


def proc_cpu_s(pid: int) -> float:
    st = _stat(pid)
    return st[1] / CLK_TCK if st else 0.0


def machine_busy_s() -> float:
    """CPU seconds the whole machine has been busy (all cores, /proc/stat)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (sum(v[:8]) - v[3] - v[4]) / CLK_TCK  # all but idle and iowait


# --------------------------------------------------------------- requests
def our_request(refs: list[str], users: list[str]) -> bytes:
    from serving.client import entity_column
    from serving.v1 import serving_pb2 as pb

    return pb.GetOnlineFeaturesRequest(
        features=pb.FeatureList(features=refs),
        entities={"user_id": entity_column("user_id", users)}).SerializeToString()


def feast_grpc_request(refs: list[str], users: list[str]) -> bytes:
    from feast.protos.feast.serving import ServingService_pb2 as fpb
    from feast.protos.feast.types import Value_pb2

    return fpb.GetOnlineFeaturesRequest(
        features=fpb.FeatureList(val=refs),
        entities={"user_id": Value_pb2.RepeatedValue(
            val=[Value_pb2.Value(string_val=u) for u in users])}).SerializeToString()


def feast_http_request(refs: list[str], users: list[str]) -> bytes:
    return json.dumps({"features": refs, "entities": {"user_id": users}}).encode()


BUILDERS = {"ours": our_request, "feast-grpc": feast_grpc_request, "feast-http": feast_http_request}


@dataclass
class Case:
    entities: int
    kind: str          # "rows" (10 row features) or "windows" (20 windowed)
    concurrency: int
    servers: tuple[str, ...]

    @property
    def refs(self) -> list[str]:
        return ROW_REFS if self.kind == "rows" else WINDOW_REFS

    @property
    def shape(self) -> str:
        return f"{self.entities}x{len(self.refs)}"

    @property
    def name(self) -> str:
        what = "rows" if self.kind == "rows" else "windows 1d+7d"
        return f"{self.shape} {what} c{self.concurrency}"


CASES = [
    *(Case(1, "rows", c, SERVERS) for c in (1, 8, 32)),
    *(Case(n, "rows", c, SERVERS) for n in (100, 1000) for c in (1, 8)),
    *(Case(n, "windows", c, ("ours",)) for n in (1, 100, 1000) for c in (1, 8)),
    Case(1000, "windows", 32, ("ours",)),
]


def payloads(case: Case, ids: list[str], server: str) -> list[bytes]:
    rng = np.random.default_rng(case.entities)  # the same entity rows for every server
    count = {1: 512, 100: 128}.get(case.entities, 32)
    sets = [list(rng.choice(ids, case.entities)) for _ in range(count)]
    return [BUILDERS[server](case.refs, [str(u) for u in s]) for s in sets]


# ------------------------------------------------------------ value checks
def _fetch_ours(target: str, refs: list[str], users: list[str]) -> tuple[dict, int]:
    import grpc

    from serving.v1 import serving_pb2 as pb

    with grpc.insecure_channel(target) as ch:
        raw = ch.unary_unary(OURS_METHOD)(our_request(refs, users), timeout=10)
    resp = pb.GetOnlineFeaturesResponse.FromString(raw)
    out = {}
    for name, vec in zip(resp.metadata.feature_names.features, resp.results):
        kind = vec.values.WhichOneof("kind")
        vals = list(getattr(vec.values, kind).values) if kind else [None] * len(users)
        out[name] = [v if st == pb.PRESENT else None for v, st in zip(vals, vec.statuses)]
    return out, resp.metadata.served_at


def _fetch_feast_grpc(target: str, refs: list[str], users: list[str]) -> dict:
    import grpc
    from feast.protos.feast.serving import ServingService_pb2 as fpb

    with grpc.insecure_channel(target) as ch:
        raw = ch.unary_unary(FEAST_GRPC_METHOD)(feast_grpc_request(refs, users), timeout=10)
    resp = fpb.GetOnlineFeaturesResponse.FromString(raw)
    out = {}
    for name, vec in zip(resp.metadata.feature_names.val, resp.results):
        col = []
        for v, st in zip(vec.values, vec.statuses):
            kind = v.WhichOneof("val")
            col.append(getattr(v, kind) if kind and kind != "null_val" and st == fpb.PRESENT else None)
        out[name] = col
    return out


def _fetch_feast_http(target: str, refs: list[str], users: list[str]) -> dict:
    req = urllib.request.Request(f"http://{target}/get-online-features",
                                 data=feast_http_request(refs, users),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        resp = json.loads(r.read())
    out = {}
    for name, vec in zip(resp["metadata"]["feature_names"], resp["results"]):
        out[name] = [v if st == "PRESENT" else None for v, st in zip(vec["values"], vec["statuses"])]
    return out


def check_values(servers: dict, data: dict, say) -> None:
    """The 10 row features of a few users: equal on all three servers and to
    the latest row of each user in the data; window counts and sums of ours
    against the data."""
    rng = np.random.default_rng(3)
    users = (data["top"] + data["heavy"][:3] + [str(u) for u in rng.choice(data["ids"], 6)]
             + ["user_unknown"])
    ours, _ = _fetch_ours(servers["ours"].target.address, ROW_REFS, users)
    got = {"ours": ours,
           "feast-grpc": _fetch_feast_grpc(servers["feast-grpc"].target.address, ROW_REFS, users),
           "feast-http": _fetch_feast_http(servers["feast-http"].target.address, ROW_REFS, users)}
    problems = []
    for i, u in enumerate(users):
        want = data["last"].get(u)
        for f in ROW_FEATURES:
            w = None if want is None else want[f]
            for name, cols in got.items():
                v = cols.get(f, [None] * len(users))[i]
                if not (v == w and type(v) is type(w)) and not (v is None and w is None):
                    problems.append(f"{name} {u} {f}: {v!r}, want {w!r}")
    if problems:
        raise AssertionError("served row features differ:\n  " + "\n  ".join(problems[:20]))
    say(f"values: {len(users)} users x {len(ROW_FEATURES)} row features equal on all three "
        f"servers and to the data (one unknown user: missing everywhere)")

    # windows (ours only): count and sum over 1d and 7d, recomputed from the data
    refs = ["activity:n_1d", "activity:n_7d", "activity:spend_1d", "activity:spend_7d"]
    users = data["top"][:2] + data["heavy"][:2] + [str(u) for u in rng.choice(data["ids"], 4)]
    cols, served_at = _fetch_ours(servers["ours"].target.address, refs, users)
    for i, u in enumerate(users):
        mine = data["user"] == u
        for w, span in (("1d", US_PER_DAY), ("7d", 7 * US_PER_DAY)):
            since = served_at // TILE_US * TILE_US - span  # floor(t, tile) - W <= ts <= t
            inside = mine & (data["ts"] >= since) & (data["ts"] <= served_at)
            n, spend = int(inside.sum()), float(data["amount"][inside].sum())
            got_n, got_s = cols[f"n_{w}"][i], cols[f"spend_{w}"][i]
            if got_n != n or (n and not np.isclose(got_s, spend, rtol=1e-9, atol=1e-6)):
                problems.append(f"{u} {w}: n={got_n} spend={got_s}, want n={n} spend={spend}")
    if problems:
        raise AssertionError("our windows differ from the data:\n  " + "\n  ".join(problems))
    say(f"values: window count and sum over 1d and 7d of {len(users)} users (heaviest: "
        f"{data['max_events']:,} events) equal to the data")


# ------------------------------------------------------------------ timing
@dataclass
class Run:
    rps: float
    cpu_ms: float        # server CPU per completed request
    redis_ms: float      # redis-server CPU per completed request
    client_ms: float     # load generator CPU per completed request
    other_cores: float   # cores busy with anything else (other jobs on the machine)
    errors: int          # inside the timed interval
    other_errors: int    # during the warm-up, or in flight when the interval ended
    latencies_ns: np.ndarray
    first_error: str | None


def timed_run(lg: LoadGen, server: Server, redis_pid: int, load: list[bytes], concurrency: int,
              seconds: float, warmup: float) -> Run:
    cpu = {}

    def mark(key: str) -> None:
        cpu[key] = np.array([tree_cpu_s(server.proc.pid), proc_cpu_s(redis_pid),
                             sum(proc_cpu_s(p) for p in lg.pids), machine_busy_s()])

    r = lg.run(server.target, load, concurrency, seconds, warmup,
               on_start=lambda: mark("start"), on_end=lambda: mark("end"))
    done = max(r.requests + r.errors, 1)
    srv, red, cli, busy = cpu["end"] - cpu["start"]
    return Run(rps=r.rps, cpu_ms=srv * 1000 / done, redis_ms=red * 1000 / done,
               client_ms=cli * 1000 / done, other_cores=max(0.0, busy - srv - red - cli) / seconds,
               errors=r.errors,
               other_errors=r.warmup_errors + r.drain_errors, latencies_ns=r.latencies_ns,
               first_error=r.first_error)


@dataclass
class Summary:
    rps: float
    values_s: float
    p50: float
    p99: float
    p999: float
    cpu_ms: float
    redis_ms: float
    client_ms: float
    other_cores: float
    errors: int
    rps_runs: list[float] = field(default_factory=list)


def summarize(case: Case, runs: list[Run]) -> Summary:
    lat = np.concatenate([r.latencies_ns for r in runs]) / 1e6
    pct = (lambda q: float(np.percentile(lat, q))) if len(lat) else (lambda q: float("nan"))
    rps = statistics.median(r.rps for r in runs)
    return Summary(rps=rps, values_s=rps * case.entities * len(case.refs), p50=pct(50),
                   p99=pct(99), p999=pct(99.9),
                   cpu_ms=statistics.median(r.cpu_ms for r in runs),
                   redis_ms=statistics.median(r.redis_ms for r in runs),
                   client_ms=statistics.median(r.client_ms for r in runs),
                   other_cores=statistics.median(r.other_cores for r in runs),
                   errors=sum(r.errors + r.other_errors for r in runs),
                   rps_runs=[round(r.rps, 1) for r in runs])


def _fmt(x: float, digits: int = 3) -> str:
    if x != x:
        return "-"
    if x >= 1000:
        return f"{x:,.0f}"
    return f"{x:.{digits}g}" if x < 100 else f"{x:.0f}"


def report(results: dict, say) -> dict:
    say("")
    say(f"{'case':<26}{'server':<12}{'req/s':>9}{'values/s':>12}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'p999 ms':>9}{'CPU ms/req':>11}{'redis':>7}{'client':>7}{'other':>6}{'errors':>7}"
        "  req/s per run")
    for case in CASES:
        for s in case.servers:
            m = results.get((case.name, s))
            if m is None:
                continue
            say(f"{case.name:<26}{s:<12}{_fmt(m.rps):>9}{_fmt(m.values_s):>12}{_fmt(m.p50):>9}"
                f"{_fmt(m.p99):>9}{_fmt(m.p999):>9}{_fmt(m.cpu_ms):>11}{_fmt(m.redis_ms, 2):>7}"
                f"{_fmt(m.client_ms, 2):>7}{m.other_cores:>6.2f}{m.errors:>7}  {m.rps_runs}")
    say("CPU ms/req: the server process and its workers; redis, client: ms/req of the "
        "redis-server and of the load generator; other: cores busy with other jobs; errors: "
        "every failed request of the case, warm-ups and requests in flight at the end included")
    say("")
    say(f"{'ours / Feast':<26}{'req/s vs gRPC':>14}{'req/s vs HTTP':>14}"
        f"{'CPU/req vs gRPC':>16}{'CPU/req vs HTTP':>16}{'p99 Feast gRPC/ours':>21}")
    ratios = {}
    for case in CASES:
        if case.servers != SERVERS or (case.name, "ours") not in results:
            continue
        o, g, h = (results.get((case.name, s)) for s in SERVERS)
        if g is None or h is None:
            continue
        r = {"rps_grpc": o.rps / g.rps if g.rps else float("nan"),
             "rps_http": o.rps / h.rps if h.rps else float("nan"),
             "cpu_grpc": o.cpu_ms / g.cpu_ms if g.cpu_ms else float("nan"),
             "cpu_http": o.cpu_ms / h.cpu_ms if h.cpu_ms else float("nan"),
             "p99_grpc": g.p99 / o.p99 if o.p99 else float("nan")}
        ratios[case.name] = r
        say(f"{case.name:<26}{r['rps_grpc']:>13.2f}x{r['rps_http']:>13.2f}x"
            f"{r['cpu_grpc']:>15.2f}x{r['cpu_http']:>15.2f}x{r['p99_grpc']:>20.2f}x")
    return ratios


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[1:]))
    p.add_argument("--users", type=int, default=10_000)
    p.add_argument("--events", type=int, default=1_000_000, help="quickstart purchases")
    p.add_argument("--days", type=int, default=7)
    p.add_argument("--heavy-users", type=int, default=50,
                   help="users given --heavy-events extra purchases each (the heavy tail)")
    p.add_argument("--heavy-events", default="1000-6000", help="MIN-MAX extra purchases")
    p.add_argument("--seconds", type=float, default=7.0, help="timed seconds per run")
    p.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds before each run")
    p.add_argument("--reps", type=int, default=2, help="runs of each case and server")
    p.add_argument("--quick", action="store_true",
                   help="smoke test: --seconds 1.5 --warmup 0.5 (keep --reps)")
    p.add_argument("--client-procs", type=int, default=2,
                   help="load generator processes (connections are spread over them)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help="our server's --workers, passed when `featurestore serve` has the "
                        "option (default: the CPU count, as Feast HTTP's 2 here; 0: the "
                        "server's own default)")
    p.add_argument("--only", help="run only cases whose name matches this regex")
    a = p.parse_args()
    if a.quick:
        a.seconds, a.warmup = 1.5, 0.5
    cases = [c for c in CASES if not a.only or re.search(a.only, c.name)]
    say = lambda msg: print(msg, flush=True)  # noqa: E731
    t_start = time.perf_counter()

    from featurestore import redis_local
    from featurestore.redis_local import free_port

    runs_total = a.reps * sum(len(c.servers) for c in cases)
    say(f"{len(cases)} cases, {runs_total} runs of {a.warmup:g} + {a.seconds:g} s "
        f"(~{runs_total * (a.warmup + a.seconds + 0.7) / 60:.1f} min of load)")
    lo, hi = (int(x) for x in a.heavy_events.split("-"))
    end = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    workers = a.workers if a.workers and _our_serve_has_workers() else None
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp, LoadGen(a.client_procs) as lg:
        root = Path(tmp)
        redis = redis_local.start(root / "redis")
        servers: dict = {}
        try:
            t0 = time.perf_counter()
            data = write_data(root, a.users, a.events, a.days, a.heavy_users, (lo, hi),
                              int(end.timestamp()) * 1_000_000)
            say(f"data: {data['rows']:,} purchases of {a.users:,} users over {a.days} days "
                f"(heaviest user {data['max_events']:,}; {a.heavy_users} heavy-tail users with "
                f"{lo:,}-{hi:,} extra) in {time.perf_counter() - t0:.1f} s")
            our_port = free_port()
            write_our_repo(root, redis.url, our_port)
            ours_s = setup_ours(root, end)
            say(f"ours: featurestore materialize in {ours_s:.1f} s")
            t0 = time.perf_counter()
            feast_repo = setup_feast(root, redis.port, end, a.days)
            say(f"feast: apply + materialize (10 row features) in {time.perf_counter() - t0:.1f} s")
            t0 = time.perf_counter()
            servers = start_servers(root, feast_repo, our_port, workers)
            say(f"servers up in {time.perf_counter() - t0:.1f} s")
            for s in servers.values():
                say(f"{s.name:<11} pid {s.proc.pid}: {Path(s.cmd[0]).name} {' '.join(s.cmd[1:])}")
            if workers is None:
                say("ours: `featurestore serve` with its default workers"
                    + ("" if not a.workers else " (the CLI has no --workers option here)"))
            check_values(servers, data, say)
            for s in servers.values():  # warm every server (lazy imports, connections)
                lg.run(s.target, payloads(Case(1, "rows", 8, SERVERS), data["ids"], s.name),
                       8, 0.0, a.warmup)
            results = run_cases(lg, servers, redis.pid, cases, data["ids"], a, say)
        finally:
            stop_servers(servers)
            redis.stop()
    ratios = report(results, say)

    def med(case: str, server: str, attr: str = "rps") -> float | None:
        m = results.get((case, server))
        return None if m is None else getattr(m, attr)

    def ratio(case: str, other: str, attr: str = "rps") -> float | None:
        o, f = med(case, "ours", attr), med(case, other, attr)
        return round(o / f, 3) if o is not None and f else None

    figures = {
        **{f"ratio_{n}x10_vs_feast_{k}": ratio(f"{n}x10 rows c8", f"feast-{k}")
           for k in ("grpc", "http") for n in (1, 100, 1000)},
        "cpu_ratio_1x10_vs_feast_grpc": ratio("1x10 rows c8", "feast-grpc", "cpu_ms"),
        "cpu_ratio_1x10_vs_feast_http": ratio("1x10 rows c8", "feast-http", "cpu_ms"),
        "p99_ms_1000x20_windows_7d": (lambda v: None if v is None else round(v, 2))(
            med("1000x20 windows 1d+7d c1", "ours", "p99")),
        "errors": sum(m.errors for (c, s), m in results.items() if s == "ours"),
        "errors_feast": sum(m.errors for (c, s), m in results.items() if s != "ours"),
        "rps": {f"{c} {s}": round(m.rps, 1) for (c, s), m in results.items()},
        "p99_ms": {f"{c} {s}": round(m.p99, 2) for (c, s), m in results.items()},
        "cpu_ms_per_req": {f"{c} {s}": round(m.cpu_ms, 3) for (c, s), m in results.items()},
        "our_workers": workers, "seconds": a.seconds, "reps": a.reps, "events": data["rows"],
        "wall_s": round(time.perf_counter() - t_start, 1),
    }
    say(f"\nwall time {figures['wall_s']:.0f} s")
    print(json.dumps(_no_nan(figures)), flush=True)


def _no_nan(x):
    """JSON has no NaN: null instead."""
    if isinstance(x, dict):
        return {k: _no_nan(v) for k, v in x.items()}
    if isinstance(x, float) and x != x:
        return None
    return x


def run_cases(lg: LoadGen, servers: dict, redis_pid: int, cases: list[Case], ids: list[str],
              a, say) -> dict:
    loads = {(c.name, s): payloads(c, ids, s) for c in cases for s in c.servers}
    runs: dict[tuple[str, str], list[Run]] = {}
    total = a.reps * sum(len(c.servers) for c in cases)
    i, dead = 0, set()
    for rep in range(a.reps):
        for case in cases:
            order = case.servers[rep % len(case.servers):] + case.servers[:rep % len(case.servers)]
            for s in order:  # servers alternate; the first one rotates with each repetition
                i += 1
                if s in dead:
                    continue
                r = timed_run(lg, servers[s], redis_pid, loads[(case.name, s)], case.concurrency,
                              a.seconds, a.warmup)
                runs.setdefault((case.name, s), []).append(r)
                lat = r.latencies_ns / 1e6
                p99 = float(np.percentile(lat, 99)) if len(lat) else float("nan")
                err = (f"  errors {r.errors} timed, {r.other_errors} in warm-up or after: "
                       f"{r.first_error}" if r.first_error else "")
                say(f"[{i:>3}/{total}] {case.name:<26}{s:<11}{r.rps:>9.1f} req/s  p99 {p99:8.2f} ms"
                    f"  CPU {r.cpu_ms:6.3f} ms/req  other load {r.other_cores:.2f} cores{err}")
                if servers[s].proc.poll() is not None:  # report it, go on with the others
                    dead.add(s)
                    say(f"{s} exited with {servers[s].proc.returncode}; its log ends:\n"
                        + servers[s].log.read_text()[-3000:])
    return {k: summarize(next(c for c in cases if c.name == k[0]), v) for k, v in runs.items()}


if __name__ == "__main__":
    main()
