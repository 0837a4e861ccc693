"""Faults, on loopback and bounded in time: Redis killed and restarted under
load, `materialize` killed and run again, and a soak of a real server
process with its memory sampled."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
import redis

from featurestore import redis_local
from featurestore.cli import main as cli
from serving.client import FeatureClient
from serving.server import start_server
from test_serving import MANIFEST, MERCHANT_RISK, NOW, put_row
from test_serving_options import loop  # noqa: F401  (a fixture)
from tests.repos import template_repo, use_redis
from tests.serving_process import serving

ALLOWED = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}


def test_redis_killed_and_restarted_under_load(loop, tmp_path):  # noqa: F811
    """SIGKILL of Redis while four clients read: every answer is right or
    UNAVAILABLE / DEADLINE_EXCEEDED, health follows, and reads succeed again
    within seconds of Redis coming back (its snapshot reloaded)."""
    store = redis_local.start(tmp_path / "redis", persist=True)
    r = redis.Redis.from_url(store.url)
    for i in range(200):
        put_row(r, MERCHANT_RISK, [i], NOW, [i / 10])
    r.save()
    server = loop.run(start_server(MANIFEST, store.url, clock=lambda: NOW))
    outcomes: list = []
    stop = threading.Event()

    def read(seed: int):
        with FeatureClient(server.address, timeout=2) as client:
            n = 0
            while not stop.is_set():
                ids = [(seed * 31 + n + k) % 200 for k in range(5)]
                n += 1
                try:
                    got = client.get_online_features(["merchant_risk:score"],
                                                     entities={"merchant_id": ids}).to_dict()
                    outcomes.append((time.monotonic(), "ok", got["score"] == [i / 10 for i in ids]))
                except grpc.RpcError as e:
                    outcomes.append((time.monotonic(), e.code(), True))
                    time.sleep(0.01)

    readers = [threading.Thread(target=read, args=(s,)) for s in range(4)]
    for t in readers:
        t.start()
    restarted = None
    try:
        time.sleep(1.0)
        os.kill(store.pid, signal.SIGKILL)
        killed = time.monotonic()
        time.sleep(1.5)
        with FeatureClient(server.address) as client:
            assert client.health() == "NOT_SERVING"
        store = redis_local.start(tmp_path / "redis", port=store.port, persist=True)
        restarted = time.monotonic()
        time.sleep(3.0)
        with FeatureClient(server.address) as client:
            assert client.health() == "SERVING"
    finally:
        stop.set()
        for t in readers:
            t.join()
        loop.run(server.stop(None))
        store.stop()
    assert all(right for _, kind, right in outcomes), "a wrong value was served"
    errors = {kind for _, kind, _ in outcomes if kind != "ok"}
    assert errors and errors <= ALLOWED, errors
    assert any(kind == "ok" for at, kind, _ in outcomes if at < killed)
    recovered = min(at for at, kind, _ in outcomes if kind == "ok" and at > restarted)
    assert recovered - restarted < 5.0    # loosely: it is about 10-100 ms here


@pytest.fixture(scope="module")
def shop_data(tmp_path_factory):
    return template_repo(tmp_path_factory.mktemp("shop") / "shop", "--events", "400000",
                         "--days", "3", "--end", "2026-01-01T00:00:00")


def _contents(url: str) -> dict:
    r = redis.Redis.from_url(url)
    out = {}
    for key in r.scan_iter(count=1000):
        kind = r.type(key)
        out[key] = r.hgetall(key) if kind == b"hash" else r.get(key)
    return out


def test_materialize_killed_then_run_again_leaves_what_a_clean_run_does(shop_data, tmp_path,
                                                                        redis_url):
    root = tmp_path / "shop"
    shutil.copytree(shop_data, root)
    use_redis(root, redis_url)
    repo = ["--repo", str(root)]
    assert cli(["apply", *repo]) == 0
    end = ["--end", "2026-01-01T00:00:00"]
    r = redis.Redis.from_url(redis_url)
    proc = subprocess.Popen([sys.executable, "-m", "featurestore.cli", "materialize", *end,
                             *repo], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while r.dbsize() == 0:   # killed as soon as it writes
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = r.dbsize()
    assert cli(["materialize", *end, *repo]) == 0
    rerun = _contents(redis_url)
    r.flushdb()
    assert cli(["materialize", *end, *repo]) == 0
    clean = _contents(redis_url)
    assert 0 < partial < len(clean)   # killed mid-run
    assert rerun == clean


def test_a_minute_of_load_keeps_the_server_s_memory_flat(redis_url, tmp_path):
    """A real `featurestore serve` process under 60 s of requests: its RSS,
    sampled from /proc, grows by less than 40 MB after the first 10 s."""
    repo = tmp_path / "repo"
    shutil.copytree(Path(__file__).parent / "example_repos" / "streaming", repo)
    port = redis_local.free_port()
    (repo / "featurestore.yaml").write_text(
        f"project: shop\nonline_store:\n  url: {redis_url}\nserving:\n  port: {port}\n")
    assert cli(["apply", "--repo", str(repo)]) == 0
    samples, stop = [], threading.Event()
    with serving(repo, port, "--workers", "1") as served:
        status = Path(f"/proc/{served.proc.pid}/status")

        def rss_mb() -> float:
            line = next(x for x in status.read_text().splitlines() if x.startswith("VmRSS:"))
            return int(line.split()[1]) / 1024

        def load(seed: int):
            with FeatureClient(served.target, timeout=5) as client:
                n = 0
                while not stop.is_set():
                    n += 1
                    users = [f"u{(seed * 7919 + n * 13 + k) % 5000}" for k in range(50)]
                    client.get_online_features(service="fraud:v2",
                                               entities={"user_id": users})

        threads = [threading.Thread(target=load, args=(s,)) for s in range(2)]
        for t in threads:
            t.start()
        started = time.monotonic()
        while time.monotonic() - started < 60:
            samples.append((time.monotonic() - started, rss_mb()))
            time.sleep(2)
        stop.set()
        for t in threads:
            t.join()
        assert served.proc.poll() is None
    settled = [mb for at, mb in samples if at >= 10]
    assert max(settled) - settled[0] < 40, samples
