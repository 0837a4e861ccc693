"""The gRPC serving layer against a real Redis and a real port.

State is written with `featurestore.layout` exactly as the writers write it;
the server runs at a fixed instant (NOW) so windows and ttls are exact.
The servers run on an event loop of their own thread (`LoopThread`).
"""
from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import threading
from datetime import datetime, timezone
from pathlib import Path

import grpc
import numpy as np
import pytest
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from featurestore import layout, redis_local, windows
from featurestore.manifest import FeatureSpec, Manifest, ViewSpec
from serving import lookup
from serving.client import FeatureClient, FieldStatus, entity_column
from serving.server import READ_TIMEOUT_S, SERVICE_NAME, start_server
from serving.v1 import serving_pb2 as pb
from serving.v1 import serving_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
PROJECT = "shop"
S = 1_000_000
MIN, HOUR, DAY = 60 * S, 3600 * S, 86400 * S
TILE = 5 * MIN
NOW = int(datetime(2024, 5, 1, 12, 7, 30, tzinfo=timezone.utc).timestamp()) * S
FLOOR = NOW - NOW % TILE  # 12:05:00, the start of the current tile

P, NULL, MISSING, OLD = (FieldStatus.PRESENT, FieldStatus.NULL_VALUE,
                         FieldStatus.NOT_FOUND, FieldStatus.OUTSIDE_MAX_AGE)


def feature(name, type_, function=None, window=None, input_type=None):
    return FeatureSpec(name, type_, function, window, input_type)


USER_SPEND = ViewSpec(
    "user_spend", "user", (("user_id", "string"),), "5a1e5f00", TILE, 30 * DAY,
    row_features=(feature("last_category", "string"),),
    aggregations=(feature("purchases_1h", "int64", "count", HOUR),
                  feature("spend_1d", "float64", "sum", DAY),
                  feature("avg_spend_1h", "float64", "avg", HOUR, "float64"),
                  feature("max_spend_1h", "float64", "max", HOUR),
                  feature("spend_all", "float64", "sum")))  # no window: the ttl
USER_PROFILE = ViewSpec(
    "user_profile", "user", (("user_id", "string"),), "9f0e1d2c", TILE, DAY,
    row_features=(feature("country", "string"), feature("age", "int64"),
                  feature("score", "float64"), feature("verified", "bool"),
                  feature("signup_at", "timestamp")),
    aggregations=())
MERCHANT_RISK = ViewSpec(
    "merchant_risk", "merchant", (("merchant_id", "int64"),), "77aa88bb", TILE, None,
    row_features=(feature("score", "float64"),), aggregations=())
MANIFEST = Manifest(
    PROJECT, {v.name: v for v in (USER_SPEND, USER_PROFILE, MERCHANT_RISK)},
    {"fraud_v1": (("user_spend", "purchases_1h"), ("user_profile", "country")),
     "spend_all": (("user_spend", "*"),)})


def put_row(r, view, key, ts, values):
    entity = layout.encode_entity_key(key)
    r.set(layout.row_key(PROJECT, view.name, view.fingerprint, entity), layout.encode_row(ts, values))


def spend_states(purchases, spend, priced, max_spend, spend_all):
    """USER_SPEND's tile states (`featurestore.tiles`) for whole-number
    amounts: a float sum is [sum of integer parts, of fractions * 2**62,
    inputs out of range], an avg [n, the same three]."""
    def total(whole):
        return [whole, 0 if whole is not None else None, 0]
    return [purchases, total(spend), [priced, *total(spend if priced else None)], max_spend,
            total(spend_all)]


def put_tile(r, view, key, start, states):
    """Write a tile, and rewrite the rollups it lies in as the writers do."""
    entity = layout.encode_entity_key(key)
    hash_key = layout.tiles_key(PROJECT, view.name, view.fingerprint, entity)
    r.hset(hash_key, layout.tile_field(start), layout.encode_tile(states))
    fine = {s: layout.decode_tile(v) for (size, s), v in
            ((layout.parse_tile_field(f), v) for f, v in r.hgetall(hash_key).items())
            if size is None}
    aggregations = [lookup.tile_aggregation(f) for f in view.aggregations]
    for size, rollup in windows.rollup_starts(start, windows.levels(view)[1:]):
        inside = [fine[s] for s in sorted(fine) if rollup <= s < rollup + size]
        merged = [agg.merge(column) for agg, column in zip(aggregations, zip(*inside))]
        r.hset(hash_key, layout.tile_field(rollup, size), layout.encode_tile(merged))


class LoopThread:
    """One event loop on a thread of its own, hosting every server of this
    module: the tests then call them with the synchronous client, as a model
    server would, and grpc.aio sees a single event loop, as it expects."""

    def __init__(self):
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    def close(self):
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


@pytest.fixture(scope="module")
def loop():
    thread = LoopThread()
    yield thread
    thread.close()


@pytest.fixture(scope="module")
def server(loop, redis_server):
    running = loop.run(start_server(MANIFEST, redis_server, clock=lambda: NOW))
    yield running
    loop.run(running.stop(None))


@pytest.fixture
def client(server):
    with FeatureClient(server.address) as c:
        yield c


@pytest.fixture
def r(redis_url):
    conn = redis.Redis.from_url(redis_url)
    yield conn
    conn.close()


# ------------------------------------------------------------------ values

def test_row_features_values_statuses_and_timestamps(client, r):
    put_row(r, USER_PROFILE, ["u1"], NOW - HOUR, ["DE", 41, 0.75, True, NOW - 400 * DAY])
    put_row(r, USER_PROFILE, ["u2"], NOW - HOUR, [None, None, 1.5, False, None])
    put_row(r, USER_PROFILE, ["u3"], NOW - DAY, ["FR", 30, 0.5, True, 0])  # ts = now - ttl
    put_row(r, USER_PROFILE, ["u4"], NOW - DAY + 1, ["IT", 50, 2.0, False, 0])
    refs = [f"user_profile:{f.name}" for f in USER_PROFILE.row_features]

    got = client.get_online_features(refs, entities={"user_id": ["u1", "u2", "u3", "u4", "u5"]})

    assert got.names == ["user_id", "country", "age", "score", "verified", "signup_at"]
    values = got.to_dict()
    assert values["user_id"] == ["u1", "u2", "u3", "u4", "u5"]
    assert values["country"] == ["DE", None, None, "IT", None]
    assert values["age"] == [41, None, None, 50, None]
    assert values["score"] == [0.75, 1.5, None, 2.0, None]
    assert values["verified"] == [True, False, None, False, None]
    assert values["signup_at"][0] == datetime(2023, 3, 28, 12, 7, 30, tzinfo=timezone.utc)
    assert got.statuses["country"].tolist() == [P, NULL, OLD, P, MISSING]
    assert got.statuses["score"].tolist() == [P, P, OLD, P, MISSING]
    assert got.event_timestamps["age"].tolist() == [NOW - HOUR, NOW - HOUR, NOW - DAY,
                                                   NOW - DAY + 1, 0]
    # Slots that are not PRESENT carry the zero value on the wire, never stale data.
    country = got.response.results[1]
    assert list(country.values.string_list.values) == ["DE", "", "", "IT", ""]


def test_window_boundaries_of_aggregations(client, r):
    # count, sum, avg, max (1h windows, except the 1d sum) and the ttl-wide sum
    put_tile(r, USER_SPEND, ["u1"], FLOOR + TILE, spend_states(100, 100, 1, 100.0, 100))  # future
    put_tile(r, USER_SPEND, ["u1"], FLOOR, spend_states(2, 30, 2, 20.0, 30))
    put_tile(r, USER_SPEND, ["u1"], FLOOR - HOUR, spend_states(1, 5, 1, 50.0, 5))  # first in
    put_tile(r, USER_SPEND, ["u1"], FLOOR - HOUR - TILE, spend_states(7, 7, 1, 70.0, 7))  # out
    put_tile(r, USER_SPEND, ["u1"], FLOOR - DAY, spend_states(4, 4, 4, 4.0, 4))  # first in 1d
    put_tile(r, USER_SPEND, ["u1"], FLOOR - DAY - TILE, spend_states(9, 9, 9, 9.0, 9))  # out of 1d
    put_tile(r, USER_SPEND, ["u1"], FLOOR - 30 * DAY - TILE, spend_states(3, 3, 3, 3.0, 3))  # > ttl
    put_row(r, USER_SPEND, ["u1"], NOW - MIN, ["books"])
    names = [f.name for f in USER_SPEND.features]

    got = client.get_online_features([f"user_spend:{n}" for n in names],
                                     entities={"user_id": ["u1"]})

    values = got.to_dict()
    assert values["last_category"] == ["books"]
    assert values["purchases_1h"] == [3]
    assert values["spend_1d"] == [30.0 + 5.0 + 7.0 + 4.0]
    assert values["avg_spend_1h"] == [35.0 / 3]
    assert values["max_spend_1h"] == [50.0]
    assert values["spend_all"] == [30.0 + 5.0 + 7.0 + 4.0 + 9.0]
    assert all(got.statuses[n].tolist() == [P] for n in names)
    # an aggregation's event time is the start of the latest tile in its window
    assert got.event_timestamps["purchases_1h"].tolist() == [FLOOR]
    assert got.event_timestamps["last_category"].tolist() == [NOW - MIN]


def test_aggregation_statuses_when_windows_are_empty(client, r):
    put_row(r, USER_SPEND, ["row_only"], NOW - HOUR, ["toys"])
    put_tile(r, USER_SPEND, ["old_tiles"], FLOOR - 2 * HOUR, spend_states(2, 8, 2, 5.0, 8))
    put_tile(r, USER_SPEND, ["null_sum"], FLOOR, spend_states(1, None, 0, None, None))
    refs = ["user_spend:purchases_1h", "user_spend:spend_1d", "user_spend:avg_spend_1h",
            "user_spend:max_spend_1h"]

    got = client.get_online_features(
        refs, entities={"user_id": ["row_only", "old_tiles", "null_sum", "nobody"]})

    values, statuses = got.to_dict(), got.statuses
    assert values["purchases_1h"] == [0, 0, 1, 0]  # a count of nothing is 0, seen or not
    assert statuses["purchases_1h"].tolist() == [P, P, P, P]
    assert values["spend_1d"] == [None, 8.0, None, None]
    assert statuses["spend_1d"].tolist() == [NULL, P, NULL, MISSING]
    assert statuses["avg_spend_1h"].tolist() == [NULL, NULL, NULL, MISSING]
    assert statuses["max_spend_1h"].tolist() == [NULL, NULL, NULL, MISSING]
    assert got.event_timestamps["purchases_1h"].tolist() == [0, 0, FLOOR, 0]
    # the newest tile read with state: here the hour rollup around that tile
    hour = (FLOOR - 2 * HOUR) // HOUR * HOUR
    assert got.event_timestamps["spend_1d"].tolist() == [0, hour, FLOOR, 0]


def test_service_full_names_and_entity_columns_first(client, r):
    put_tile(r, USER_SPEND, ["u1"], FLOOR, spend_states(2, 30, 2, 20.0, 30))
    put_row(r, USER_PROFILE, ["u1"], NOW, ["DE", 41, 0.75, True, 0])

    got = client.get_online_features(service="fraud_v1", entities={"user_id": ["u1", "u2"]},
                                     full_feature_names=True)

    assert got.names == ["user_id", "user_spend__purchases_1h", "user_profile__country"]
    assert got.feature_names == ["user_spend__purchases_1h", "user_profile__country"]
    assert got.to_dict() == {"user_id": ["u1", "u2"], "user_spend__purchases_1h": [2, 0],
                             "user_profile__country": ["DE", None]}
    assert got.response.metadata.served_at == NOW
    everything = client.get_online_features(service="spend_all", entities={"user_id": ["u1"]})
    assert everything.feature_names == [f.name for f in USER_SPEND.features]


def test_int_keys_from_numpy_and_two_entities(client, r):
    put_row(r, MERCHANT_RISK, [7], NOW - 100 * DAY, [0.25])  # no ttl: never too old
    put_row(r, USER_PROFILE, ["u1"], NOW, ["DE", 41, 0.75, True, NOW])

    got = client.get_online_features(
        ["merchant_risk:score", "user_profile:age", "user_profile:signup_at"],
        entities={"merchant_id": np.array([7, 8], dtype=np.int32), "user_id": ["u1", "u1"]})

    assert got.names == ["merchant_id", "user_id", "score", "age", "signup_at"]
    assert got.to_dict()["merchant_id"] == [7, 8]
    arrays = got.to_numpy()
    assert arrays["score"].dtype == np.float64 and arrays["score"].mask.tolist() == [False, True]
    assert arrays["score"][0] == 0.25
    assert arrays["signup_at"].dtype == np.dtype("datetime64[us]")
    frame = got.to_pandas()
    assert list(frame.columns) == got.names
    assert [str(t) for t in frame.dtypes] == ["Int64", "string", "Float64", "Int64",
                                              "datetime64[us, UTC]"]
    assert frame["score"].isna().tolist() == [False, True]
    assert frame["signup_at"][0].value // 1000 == NOW


def test_zero_entity_rows_is_an_empty_answer(client):
    got = client.get_online_features(["user_profile:age"], entities={"user_id": []})
    assert len(got) == 0 and got.to_dict() == {"user_id": [], "age": []}


def test_entity_columns_are_typed_from_their_values():
    assert list(entity_column("k", [3, 4]).int64_list.values) == [3, 4]
    assert list(entity_column("k", np.array([3, 4], np.uint8)).int64_list.values) == [3, 4]
    assert list(entity_column("k", ("a", "b")).string_list.values) == ["a", "b"]
    assert list(entity_column("k", np.array(["a", "b"])).string_list.values) == ["a", "b"]
    for bad in ([True], [1.5], [1, "a"], np.array([1.5]), np.array([[1]])):
        with pytest.raises((TypeError, ValueError), match="entity column 'k'"):
            entity_column("k", bad)


# ------------------------------------------------------------ bad requests

BAD_REQUESTS = [
    (dict(features=["user_spend:spnd_1d"], entities={"user_id": ["u"]}),
     "unknown feature 'user_spend:spnd_1d'; did you mean 'spend_1d'?"),
    (dict(features=["user_spnd:spend_1d"], entities={"user_id": ["u"]}),
     "unknown view 'user_spnd' in 'user_spnd:spend_1d'; did you mean 'user_spend'?"),
    (dict(features=["spend_1d"], entities={"user_id": ["u"]}),
     "feature reference 'spend_1d' is not of the form 'view:feature'"),
    (dict(service="fraud_v2", entities={"user_id": ["u"]}),
     "unknown feature service 'fraud_v2'; did you mean 'fraud_v1'?"),
    (dict(features=[], entities={"user_id": ["u"]}), "empty request"),
    (dict(features=["user_spend:spend_1d", "user_spend:spend_1d"], entities={"user_id": ["u"]}),
     "feature 'user_spend:spend_1d' is requested twice"),
    (dict(features=["user_profile:score", "merchant_risk:score"],
          entities={"user_id": ["u"], "merchant_id": [1]}),
     "would both be named 'score'; set full_feature_names"),
    (dict(features=["user_profile:age", "merchant_risk:score"], entities={"user_id": ["u"]}),
     "missing entity key column 'merchant_id' (a key of view 'merchant_risk')"),
    (dict(features=["user_profile:age"], entities={"user_id": ["u"], "merchant_id": [1]}),
     "unexpected entity key column 'merchant_id'"),
    (dict(features=["user_profile:age"], entities={"user_ids": ["u"]}),
     "missing entity key column 'user_id'"),
    (dict(features=["user_profile:age"], entities={"user_id": [1, 2]}),
     "entity key column 'user_id' must be sent as string_list, not int64_list"),
    (dict(features=["merchant_risk:score"], entities={"merchant_id": ["7"]}),
     "entity key column 'merchant_id' must be sent as int64_list, not string_list"),
    (dict(features=["user_profile:age", "merchant_risk:score"],
          entities={"user_id": ["a", "b"], "merchant_id": [1]}),
     "entity key columns differ in length: 'user_id' has 2, 'merchant_id' has 1"),
]


@pytest.mark.parametrize("kwargs, message", BAD_REQUESTS, ids=[m for _, m in BAD_REQUESTS])
def test_bad_requests_are_invalid_argument_naming_the_problem(client, kwargs, message):
    with pytest.raises(grpc.RpcError) as caught:
        client.get_online_features(**kwargs)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in caught.value.details()


def test_a_request_naming_nothing_is_invalid(server):
    with grpc.insecure_channel(server.address) as channel:
        stub = serving_pb2_grpc.ServingServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.GetOnlineFeatures(pb.GetOnlineFeaturesRequest(), timeout=5)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "empty request: set feature_service or features" in caught.value.details()


def test_state_that_does_not_match_the_view_is_invalid_for_that_entity(client, r):
    put_row(r, USER_PROFILE, ["u1"], NOW, ["DE", 41])  # two values, the view has five
    put_row(r, USER_PROFILE, ["u2"], NOW, ["FR", 7, 0.5, True, 0])
    got = client.get_online_features(["user_profile:age"], entities={"user_id": ["u1", "u2"]})
    assert list(got.statuses["age"]) == [FieldStatus.INVALID, FieldStatus.PRESENT]
    assert got.to_dict()["age"] == [None, 7]


def test_manifest_with_unservable_features_is_refused():
    view = ViewSpec("emb", "user", (("user_id", "string"),), "00", TILE, None,
                    (feature("vector", "list<decimal>"),), (feature("p50", "float64", "median"),))
    with pytest.raises(ValueError) as caught:
        lookup.check_manifest(Manifest(PROJECT, {"emb": view}, {"s": (("emb", "nope"),)}))
    message = str(caught.value)
    assert "feature 'emb:vector' has type 'list<decimal>'" in message
    assert "aggregates with 'median'" in message
    assert "service 's' names 'emb:nope'" in message


# ------------------------------------------------ health, reflection, Redis

def test_health_and_reflection(server, client):
    assert client.health() == "SERVING"
    with grpc.insecure_channel(server.address) as channel:
        overall = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert overall.status == health_pb2.HealthCheckResponse.SERVING
        replies = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
        listed = {s.name for reply in replies for s in reply.list_services_response.service}
    assert {SERVICE_NAME, "grpc.health.v1.Health"} <= listed


class PrivateRedis:
    """A redis-server of the test's own, to pause, stop and start again on its port."""

    def __init__(self, dir: Path):
        self._dir, self._starts = dir, 0
        self._server: redis_local.LocalRedis | None = redis_local.start(dir / "0")
        self.port, self.url = self._server.port, self._server.url

    def stop(self):
        if self._server is not None:
            self._server.stop()
            self._server = None

    def start(self):
        self._starts += 1
        self._server = redis_local.start(self._dir / str(self._starts), port=self.port)


@contextlib.contextmanager
def private_server(loop, tmp_path):
    """A server over a PrivateRedis, and a client of it."""
    store = PrivateRedis(tmp_path)
    server = loop.run(start_server(MANIFEST, store.url, clock=lambda: NOW))
    try:
        with FeatureClient(server.address) as client:
            yield store, client
    finally:
        loop.run(server.stop(None))
        store.stop()


def test_deadline_and_read_timeout_bound_the_redis_read(loop, tmp_path):
    with private_server(loop, tmp_path) as (store, client), \
            contextlib.closing(redis.Redis(port=store.port)) as r:
        put_row(r, USER_PROFILE, ["u1"], NOW, ["DE", 41, 0.75, True, 0])
        put_row(r, USER_PROFILE, ["u2"], NOW, ["FR", 30, 0.5, True, 0])
        r.execute_command("CLIENT", "PAUSE", 3000, "ALL")  # Redis stops answering for 3 s

        with pytest.raises(grpc.RpcError) as caught:
            client.get_online_features(["user_profile:age"], entities={"user_id": ["u1"]},
                                       timeout=0.2)
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        with pytest.raises(grpc.RpcError) as caught:  # a deadline beyond the read timeout
            client.get_online_features(["user_profile:age"], entities={"user_id": ["u1"]})
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert f"did not answer within {READ_TIMEOUT_S} s" in caught.value.details()

        r.ping()  # returns once the pause is over
        # The abandoned reads' replies must not be taken for this one's.
        got = client.get_online_features(["user_profile:country"], entities={"user_id": ["u2"]})
        assert got.to_dict()["country"] == ["FR"]


def test_redis_outage_is_unavailable_then_recovers_by_itself(loop, tmp_path):
    with private_server(loop, tmp_path) as (store, client), \
            contextlib.closing(redis.Redis(port=store.port)) as r:
        put_row(r, MERCHANT_RISK, [1], NOW, [0.5])
        ask = lambda: client.get_online_features(["merchant_risk:score"],  # noqa: E731
                                                 entities={"merchant_id": [1]})
        assert ask().to_dict()["score"] == [0.5]

        store.stop()
        with pytest.raises(grpc.RpcError) as caught:
            ask()
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "the online store (Redis at redis://127.0.0.1:" in caught.value.details()
        assert client.health() == "NOT_SERVING"

        store.start()
        got = ask()  # no restart of the server, no wait
        assert got.statuses["score"].tolist() == [MISSING]  # a fresh, empty Redis
        assert client.health() == "SERVING"


# ------------------------------------------------------------- the build

def test_generated_code_is_not_stale():
    done = subprocess.run([sys.executable, "protos/generate.py", "--check"], cwd=ROOT,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("module, banned", [
    ("serving.server", {"lark", "duckdb", "pyflink", "dsl", "feast"}),
    ("serving.client", {"lark", "duckdb", "pyflink", "dsl", "feast", "pandas", "redis"}),
])
def test_imports_stay_small(module, banned):
    code = (f"import {module}, sys; "
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in {sorted(banned)!r}))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
