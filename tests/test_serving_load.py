"""The server under load, against a real Redis and real gRPC ports.

* Overload is not an outage: concurrent heavy window requests (1,000
  entities x 10 windows over 1 and 7 days) next to small ones get answers or
  RESOURCE_EXHAUSTED, never UNAVAILABLE; health stays SERVING; small requests
  keep being answered meanwhile.
* `--workers 2`: two processes serve one port, both take requests, a worker
  that dies is started again, and SIGTERM stops them all.
"""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from featurestore import layout, windows
from featurestore.manifest import FeatureSpec, Manifest, ViewSpec
from serving import lookup
from serving.client import FeatureClient
from serving.server import start_server
from featurestore.redis_local import free_port
from tests.test_serving import LoopThread

ROOT = Path(__file__).resolve().parent.parent
US = 1_000_000
TILE = 300 * US
HOUR, DAY = 3600 * US, 86400 * US
NOW = 1_767_225_600 * US + 4 * HOUR + 7 * TILE + 123 * US
FEATURES = tuple(
    FeatureSpec(f"{name}_{label}", type_, function, span, None if function == "count" else "float64")
    for label, span in (("1d", DAY), ("7d", 7 * DAY))
    for name, function, type_ in (("n", "count", "int64"), ("sum", "sum", "float64"),
                                  ("avg", "avg", "float64"), ("max", "max", "float64"),
                                  ("std", "stddev", "float64")))
VIEW = ViewSpec("spend", "user", (("user_id", "string"),), "00ff00ff", TILE, 30 * DAY,
                (FeatureSpec("country", "string", None, None),), FEATURES)
MANIFEST = Manifest("load", {"spend": VIEW}, {"all": (("spend", "*"),)})
USERS = [f"user_{i}" for i in range(1000)]


def _write_data(url: str, row_ts: int = NOW - HOUR) -> None:
    """Every tile and rollup a window at NOW reads, for every user, full;
    and a row at `row_ts`."""
    rng = random.Random(1)
    aggregations = [lookup.tile_aggregation(f) for f in FEATURES]
    pool = [layout.encode_tile([a.state_of([(0, rng.uniform(1, 300)) for _ in range(3)])
                                for a in aggregations]) for _ in range(50)]
    fields = set()
    for f in FEATURES:
        lower = windows.window_start(NOW, TILE, f.window_us)
        for size, start in windows.cover(lower, NOW, windows.levels(VIEW)):
            fields.add(layout.tile_field(start, None if size == TILE else size))
    r = redis.Redis.from_url(url)
    pipe = r.pipeline(transaction=False)
    for user in USERS:
        key = layout.encode_entity_key([user])
        pipe.hset(layout.tiles_key("load", "spend", VIEW.fingerprint, key),
                  mapping={f: rng.choice(pool) for f in fields})
        pipe.set(layout.row_key("load", "spend", VIEW.fingerprint, key),
                 layout.encode_row(row_ts, ["DE"]))
    pipe.execute()
    r.close()


def test_heavy_window_requests_next_to_small_ones_are_no_outage(redis_url):
    _write_data(redis_url)
    loop = LoopThread()
    server = loop.run(start_server(MANIFEST, redis_url, clock=lambda: NOW))
    codes: dict[str, int] = {}
    small_answers, health_seen = [], set()
    stop = threading.Event()

    def heavy():
        with FeatureClient(server.address, timeout=60) as client:
            for _ in range(2):
                try:
                    got = client.get_online_features(service="all", entities={"user_id": USERS})
                    assert got.to_dict()["n_7d"][0] > 0
                    codes["OK"] = codes.get("OK", 0) + 1
                except grpc.RpcError as e:
                    codes[e.code().name] = codes.get(e.code().name, 0) + 1

    def small():
        with FeatureClient(server.address, timeout=5) as client:
            while not stop.is_set():
                try:
                    got = client.get_online_features(["spend:country", "spend:n_1d"],
                                                     entities={"user_id": ["user_7"]})
                    small_answers.append(got.to_dict()["country"] == ["DE"])
                except grpc.RpcError as e:
                    small_answers.append(e.code().name)

    def health():
        with grpc.insecure_channel(server.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while not stop.is_set():
                health_seen.add(stub.Check(health_pb2.HealthCheckRequest(), timeout=5).status)
                time.sleep(0.05)

    watchers = [threading.Thread(target=small), threading.Thread(target=health)]
    heavies = [threading.Thread(target=heavy) for _ in range(6)]
    try:
        for t in watchers + heavies:
            t.start()
        for t in heavies:
            t.join()
    finally:
        stop.set()
        for t in watchers:
            t.join()
        loop.run(server.stop(None))
        loop.close()
    assert "UNAVAILABLE" not in codes and codes.get("OK", 0) >= 6, codes
    assert set(codes) <= {"OK", "RESOURCE_EXHAUSTED"}, codes
    assert health_seen == {health_pb2.HealthCheckResponse.SERVING}
    assert len(small_answers) >= 10 and all(a is True for a in small_answers), small_answers


# ------------------------------------------------------------------ workers
def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])   # utime + stime


def _children(pid: int) -> list[int]:
    """The worker processes of a server (multiprocessing's resource tracker
    is a child too)."""
    tasks = Path(f"/proc/{pid}/task")
    children = sorted(int(c) for t in tasks.iterdir() for c in (t / "children").read_text().split())
    return [c for c in children if b"spawn_main" in _cmdline(c)]


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return b""


def _wait_serving(address: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with grpc.insecure_channel(address) as channel:
                status = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=1).status
            if status == health_pb2.HealthCheckResponse.SERVING:
                return
        except grpc.RpcError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"no server on {address}")
        time.sleep(0.2)


def _burst(address: str, n: int) -> None:
    """n requests of 100 users, each on a new connection: the kernel spreads
    connections, not requests, over the workers."""
    for _ in range(n):
        with FeatureClient(address, timeout=30) as client:
            got = client.get_online_features(["spend:country"], entities={"user_id": USERS[:100]})
            assert got.to_dict()["country"] == ["DE"] * 100


def test_two_workers_share_one_port(redis_url, tmp_path):
    _write_data(redis_url, row_ts=time.time_ns() // 1000)   # the workers' clock is the wall
    manifest = tmp_path / "manifest.json"
    MANIFEST.save(manifest)
    port, metrics_port = free_port(), free_port()
    parent = subprocess.Popen(
        [sys.executable, "-m", "serving.server", "--manifest", str(manifest),
         "--redis", redis_url, "--port", str(port), "--workers", "2",
         "--metrics-port", str(metrics_port)], cwd=ROOT,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    address = f"127.0.0.1:{port}"
    try:
        _wait_serving(address)
        workers = _children(parent.pid)
        assert len(workers) == 2, workers
        before = {pid: _cpu_ticks(pid) for pid in workers}
        _burst(address, 60)
        used = {pid: _cpu_ticks(pid) - before[pid] for pid in workers}
        assert all(ticks >= 3 for ticks in used.values()), used   # both did real work
        # one /metrics for both workers, counting every request once
        text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics",
                                      timeout=10).read().decode()
        assert 'featurestore_grpc_requests_total{code="OK",method="GetOnlineFeatures"} 60.0' \
            in text

        os.kill(workers[0], signal.SIGKILL)                         # a worker dies ...
        deadline = time.monotonic() + 30
        while workers[0] in _children(parent.pid) or len(_children(parent.pid)) < 2:
            assert time.monotonic() < deadline, "the worker was not started again"
            time.sleep(0.2)
        _wait_serving(address)
        _burst(address, 10)                                         # ... and is replaced
        workers = _children(parent.pid)
        parent.send_signal(signal.SIGTERM)
        assert parent.wait(timeout=30) == 0
        assert not _alive(workers)
    finally:
        if parent.poll() is None:
            parent.kill()        # its workers notice and stop (serving.workers)
            parent.wait()
        stderr = parent.stderr.read()
    assert "worker 1/2: serving project 'load'" in stderr and "starting it again" in stderr


def _alive(pids):
    alive = []
    for pid in pids:
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                alive.append(pid)
        except FileNotFoundError:
            pass
    return alive


def test_a_taken_port_is_a_one_line_error(redis_url, tmp_path):
    import socket

    manifest = tmp_path / "manifest.json"
    MANIFEST.save(manifest)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "serving.server", "--manifest", str(manifest), "--redis",
             redis_url, "--port", str(port), "--workers", "2"], cwd=ROOT,
            capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and f"cannot serve on 127.0.0.1:{port}" in done.stderr

