"""Redis Cluster and Sentinel, with real processes on loopback: the slot
rule, materialize into a cluster (the same keys and values as one node, and
the same served values), and a master killed under load, on a cluster and
under Sentinel: every answer right or UNAVAILABLE, and serving resumes by
itself."""
from __future__ import annotations

import asyncio
import math
import os
import shutil
import signal
import threading
import time
from datetime import datetime, timezone

import grpc
import pyarrow as pa
import pytest
import redis
from redis.crc import key_slot

from featurestore import config, layout, redis_client, redis_local
from featurestore.bulk_redis import BulkWriter, resp_command
from featurestore.cli import main as cli
from featurestore.manifest import Manifest
from serving.client import FeatureClient, FieldStatus
from serving.server import start_server
from streaming import sink
from test_serving import MANIFEST, MERCHANT_RISK, NOW, PROJECT
from test_serving_options import loop  # noqa: F401  (a fixture)
from test_streaming_sink import NOW as STREAM_NOW
from test_streaming_sink import OUT, _latest_text
from tests.redis_topologies import LocalSentinel
from tests.repos import template_repo, use_online_store
from tests.serving_process import serving

END = "2026-01-01T00:00:00"
END_US = int(datetime(2026, 1, 1, tzinfo=timezone.utc).timestamp()) * 1_000_000
FEATURES = ["user_spend:purchases_1h", "user_spend:spend_1h", "user_spend:purchases_1d",
            "user_spend:spend_1d", "user_spend:avg_amount_1d", "user_spend:max_amount_1d",
            "user_spend:big_1d", "user_spend:last_category", "user_profile:country",
            "user_profile:age"]
MERCHANTS = 300
RESUME_WITHIN_S = 20.0   # loosely: a failover here takes 1-3 s


def test_key_slots_are_redis_own():
    """The vectorized slot rule against redis-py's and a node's CLUSTER
    KEYSLOT, hash tags (empty, unclosed, nested, several) included."""
    keys = [b"", b"{}", b"{", b"}", b"}{a}", b"{a}{b}", b"a{}b{c}", b"{{a}}", b"x\xc3\xa9{\xff}",
            layout.tiles_key("p", "v", "f", layout.encode_entity_key(["u{1}|", 7])),
            layout.row_key("p", "v", "f", "")]
    keys += [b"k%d{user_%d}:t" % (i, i % 97) for i in range(3000)]
    assert list(redis_client.key_slots(keys)) == [key_slot(k) for k in keys]
    column = pa.array([k.decode("utf-8", "replace") for k in keys[20:]]).slice(5)
    assert list(redis_client.key_slots(column)) == [key_slot(k.encode())
                                                    for k in column.to_pylist()]


def test_a_node_computes_the_same_slots(redis_cluster):
    keys = [b"fs3:p:v:f:{user_1}:r", b"fs3:p:v:f:materialized", b"a{}b"]
    with redis_cluster.client(redis_cluster.nodes[0]) as r:
        assert [r.execute_command("CLUSTER", "KEYSLOT", k) for k in keys] == \
            list(redis_client.key_slots(keys))


# ------------------------------------------------------------------ materialize and serve
@pytest.fixture(scope="module")
def shop_data(tmp_path_factory):
    return template_repo(tmp_path_factory.mktemp("shop") / "shop", "--events", "20000",
                         "--days", "2", "--users", "400", "--end", END)


def _materialized(shop_data, root, **online_store):
    shutil.copytree(shop_data, root)
    use_online_store(root, **online_store)
    assert cli(["apply", "--repo", str(root)]) == 0
    assert cli(["materialize", "--end", END, "--repo", str(root)]) == 0
    return root


def _contents(client) -> dict:
    out = {}
    for key in client.scan_iter(count=1000):
        out[key] = client.hgetall(key) if client.type(key) == b"hash" else client.get(key)
    return out


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    return a == b


async def test_materialize_into_a_cluster_serves_what_one_node_serves(shop_data, tmp_path,
                                                                      redis_url, redis_cluster):
    redis_cluster.flush()
    one = _materialized(shop_data, tmp_path / "one", url=redis_url)
    many = _materialized(shop_data, tmp_path / "many", type="redis_cluster",
                         connection_string=redis_cluster.connection_string)
    target = config.load(many).redis_target
    assert target.cluster
    with redis.Redis.from_url(redis_url) as r, redis_client.sync_client(target) as c:
        single, spread = _contents(r), _contents(c)
    assert len(single) > 800 and single == spread
    for node in redis_cluster.masters():   # the entities' hash tags spread them over every master
        with redis_cluster.client(node) as r:
            assert r.dbsize() > 100
    project = config.load(many).project
    stale = [f"fs2:{project}:user_spend:{{user_{i}}}:r".encode() for i in range(30)] + \
        [layout.row_key(project, "user_spend", "0ld", f"user_{i}") for i in range(30)]
    with redis_client.sync_client(target) as c:
        redis_client.execute(c, [(b"SET", key, b"x") for key in stale])
        assert cli(["gc", "--repo", str(many)]) == 0   # keys no server reads, on every master
        assert sum(c.exists(key) for key in stale) == 0 and _contents(c) == single
    assert cli(["status", "--repo", str(many)]) == 0

    users = ["user_000000", "user_000001", "user_000042", "user_000399", "nobody"] + \
        [f"user_{i:06d}" for i in range(100, 400, 7)]
    answers = []
    for root, store in ((one, redis_url), (many, target)):
        server = await start_server(Manifest.load(config.load(root).manifest_path), store,
                                    clock=lambda: END_US)

        def lookup(address=server.address):
            with FeatureClient(address) as client:
                return client.get_online_features(FEATURES, entities={"user_id": users})
        try:
            answers.append(await asyncio.get_running_loop().run_in_executor(None, lookup))
        finally:
            await server.stop(0)
    want, got = (a.to_dict() for a in answers)
    assert want["purchases_1d"][0] > 0 and want["country"][0] is not None   # real data
    for ref in FEATURES:
        name = ref.split(":")[1]
        assert all(_same(a, b) for a, b in zip(got[name], want[name])), name
    port = redis_local.free_port()   # `featurestore serve` of the repo: two workers, the cluster
    with serving(many, port, "--port", str(port), "--workers", "2") as served:
        with FeatureClient(served.target) as client:
            now = client.get_online_features(["user_profile:country"],
                                             entities={"user_id": users[:5]}).statuses
    assert "redis-cluster 127.0.0.1:" in served.output
    # now, past the profiles' ttl: found (so read from the cluster), and too old
    assert list(now["country"]) == [FieldStatus.OUTSIDE_MAX_AGE] * 4 + [FieldStatus.NOT_FOUND]


# ------------------------------------------------------------------ failover under load
def _score(i: int) -> float:
    return i / 10


def _put_merchants(client) -> None:
    redis_client.execute(client, [
        (b"SET", layout.row_key(PROJECT, MERCHANT_RISK.name, MERCHANT_RISK.fingerprint,
                                layout.encode_entity_key([i])),
         layout.encode_row(NOW, [_score(i)])) for i in range(MERCHANTS)])


class Load:
    """Four clients reading five merchants per request (on several masters)
    until stopped; each outcome is (time, "ok" or a status code, right?)."""

    def __init__(self, address: str):
        self.outcomes: list = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._read, args=(address, s)) for s in range(4)]
        for t in self._threads:
            t.start()

    def _read(self, address: str, seed: int) -> None:
        with FeatureClient(address, timeout=3) as client:
            n = 0
            while not self._stop.is_set():
                ids = [(seed * 61 + n * 5 + k * 37) % MERCHANTS for k in range(5)]
                n += 1
                try:
                    got = client.get_online_features(["merchant_risk:score"],
                                                     entities={"merchant_id": ids}).to_dict()
                    self.outcomes.append((time.monotonic(), "ok",
                                          got["score"] == [_score(i) for i in ids]))
                except grpc.RpcError as e:
                    self.outcomes.append((time.monotonic(), e.code(), True))
                    time.sleep(0.01)

    def settled(self, since: float, n: int = 20) -> bool:
        """The last `n` requests, all after `since`, were answered (a request
        of 5 merchants avoids the third of the slots a master holds 13% of
        the time: 20 in a row do not while it is down)."""
        recent = self.outcomes[-n:]
        return len(recent) == n and recent[0][0] > since and \
            all(kind == "ok" for _, kind, _ in recent)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()

    def check(self, killed: float, what: str) -> dict:
        """Right values only, UNAVAILABLE the only error, reads before the
        kill and after the last error; figures for the record."""
        assert all(right for _, _, right in self.outcomes), "a wrong value was served"
        errors = [(at, kind) for at, kind, _ in self.outcomes if kind != "ok"]
        assert {kind for _, kind in errors} <= {grpc.StatusCode.UNAVAILABLE}, errors[:3]
        assert any(kind == "ok" for at, kind, _ in self.outcomes if at < killed)
        last_error = max((at for at, _ in errors), default=killed)
        resumed = min(at for at, kind, _ in self.outcomes if kind == "ok" and at > last_error)
        figures = {"what": what, "requests": len(self.outcomes), "unavailable": len(errors),
                   "resumed_after_s": round(resumed - killed, 2)}
        print(figures)
        assert resumed - killed < RESUME_WITHIN_S
        return figures


def _wait_until(condition, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline
        time.sleep(0.1)


def _serving(address: str) -> bool:
    with FeatureClient(address) as client:
        return client.health() == "SERVING"


def test_a_master_killed_under_load_fails_over(redis_cluster, loop):  # noqa: F811
    """SIGKILL of a cluster master while four clients read: its replica
    takes over, every answer is right or UNAVAILABLE, and reads and health
    come back by themselves."""
    redis_cluster.flush()
    with redis_client.sync_client(redis_cluster.target) as c:
        _put_merchants(c)
    for node in redis_cluster.masters():   # the replicas hold every row before the kill
        with redis_cluster.client(node) as r:
            assert r.execute_command("WAIT", 1, 5000) == 1
    server = loop.run(start_server(MANIFEST, redis_cluster.target, clock=lambda: NOW))
    victim = redis_cluster.masters()[0]
    load = Load(server.address)
    try:
        time.sleep(1.0)
        redis_cluster.kill(victim)
        killed = time.monotonic()
        _wait_until(lambda: load.settled(killed), RESUME_WITHIN_S)
        _wait_until(lambda: _serving(server.address), 10)
    finally:
        load.stop()
        loop.run(server.stop(None))
        redis_cluster.restart(victim)     # back as a replica of the master that took over
        redis_cluster.wait_ok()
    assert victim not in redis_cluster.masters()
    load.check(killed, "cluster master SIGKILLed")


def test_sentinel_follows_a_failover(tmp_path, loop):  # noqa: F811
    """A master watched by Sentinel, SIGKILLed under load: the server reads
    the replica Sentinel promotes, with only right values or UNAVAILABLE
    meanwhile, and the stream's and the batch's writers write to the new master."""
    setup = LocalSentinel(tmp_path)
    try:
        with redis_client.sync_client(setup.target) as c:
            _put_merchants(c)
            assert c.execute_command("WAIT", 1, 5000) == 1
        server = loop.run(start_server(MANIFEST, setup.target, clock=lambda: NOW))
        load = Load(server.address)
        try:
            time.sleep(1.0)
            os.kill(setup.master.pid, signal.SIGKILL)
            killed = time.monotonic()
            setup.wait_failover()
            _wait_until(lambda: load.settled(killed), RESUME_WITHIN_S)
            _wait_until(lambda: _serving(server.address), 10)
        finally:
            load.stop()
            loop.run(server.stop(None))
        load.check(killed, "sentinel master killed")
        writer = sink.RedisSink("t", OUT, sink.LATEST, setup.target, clock=lambda: STREAM_NOW)
        try:
            assert writer.write([["u"], [_latest_text(STREAM_NOW - 10, [2.5, "books", 4])]]) == 1
        finally:
            writer.close()
        with BulkWriter(setup.target) as bulk:   # and the batch writer's socket
            bulk.send_bytes(resp_command("SET", "bulk", "written"), 1)
            bulk.flush()
        with redis.Redis(port=setup.replica.port) as r:   # the master now
            assert layout.decode_row(r.get(layout.row_key("t", "spend", OUT.fingerprint, "u"))) \
                == (STREAM_NOW - 10, [2.5, "books", 4])
            assert r.get("bulk") == b"written"
    finally:
        setup.stop()


async def test_a_stale_slot_map_is_refreshed_when_redis_says_moved(redis_cluster):
    """After a resharding the slot map a client holds is wrong: the MOVED
    replies refresh it and the commands go again, to the right masters."""
    redis_cluster.flush()
    right = redis_client.fetch_slot_map(redis_cluster.target)
    wrong = redis_client.SlotMap(right.masters, (right.owner + 1) % len(right.masters))
    keys = [b"k{%d}" % i for i in range(60)]
    with redis_client.sync_client(redis_cluster.target) as client:
        client._slot_map = wrong
        assert redis_client.execute(client, [(b"SET", k, k) for k in keys]) == [b"OK"] * 60
        client._slot_map = wrong
        assert redis_client.execute(client, [(b"GET", k) for k in keys]) == keys
    reads = redis_client.AsyncCluster(redis_cluster.target)
    reads._map = wrong
    try:
        assert await reads.execute([(b"GET", k) for k in keys]) == keys
    finally:
        await reads.close()
