"""Production settings of the server: API keys, TLS, metrics, request limits."""
from __future__ import annotations

import contextlib
import subprocess
import time
import urllib.request

import grpc
import pytest
import redis

from serving.client import FeatureClient
from serving.server import ServerOptions, start_server
from test_serving import MANIFEST, NOW, PROJECT, USER_PROFILE, LoopThread, put_row

ASK = dict(features=["user_profile:country"], entities={"user_id": ["u1"]})


@pytest.fixture(scope="module")
def loop():
    thread = LoopThread()
    yield thread
    thread.close()


@pytest.fixture
def stored(redis_url):
    with contextlib.closing(redis.Redis.from_url(redis_url)) as r:
        put_row(r, USER_PROFILE, ["u1"], NOW, ["DE", 41, 0.75, True, 0])
    return redis_url


@contextlib.contextmanager
def running(loop, redis_url, **options):
    server = loop.run(start_server(MANIFEST, redis_url, host="localhost", clock=lambda: NOW,
                                   options=ServerOptions(**options)))
    try:
        yield server
    finally:
        loop.run(server.stop(None))


def code_of(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value.code(), caught.value.details()


def test_api_keys_are_required_except_for_health(loop, stored):
    with running(loop, stored, api_keys=("k1", "s3cret")) as server:
        target = f"localhost:{server.port}"
        with FeatureClient(target) as anonymous, FeatureClient(target, api_key="nope") as wrong, \
                FeatureClient(target, api_key="s3cret") as good:
            code, details = code_of(lambda: anonymous.get_online_features(**ASK))
            assert code == grpc.StatusCode.UNAUTHENTICATED and "x-api-key" in details
            assert code_of(lambda: wrong.get_online_features(**ASK))[0] == \
                grpc.StatusCode.UNAUTHENTICATED
            assert good.get_online_features(**ASK).to_dict()["country"] == ["DE"]
            assert anonymous.health() == "SERVING"


def scrape_until(port: int, line: str, tries: int = 100) -> str:
    """The metrics page once it shows `line`: a call is counted after its
    status has reached the client, so the page can lag the client by a moment."""
    for _ in range(tries):
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        if line in text:
            break
        time.sleep(0.05)
    return text


def test_metrics_count_calls_by_code(loop, stored):
    with running(loop, stored, metrics_port=0) as server:
        with FeatureClient(f"localhost:{server.port}") as client:
            client.get_online_features(**ASK)
            code_of(lambda: client.get_online_features(["user_profile:nope"],
                                                       entities={"user_id": ["u1"]}))
        text = scrape_until(server.metrics_port,
                            'featurestore_grpc_latency_seconds_count{method="GetOnlineFeatures"} 2.0')
    assert 'featurestore_grpc_requests_total{code="OK",method="GetOnlineFeatures"} 1.0' in text
    assert ('featurestore_grpc_requests_total{code="INVALID_ARGUMENT",'
            'method="GetOnlineFeatures"} 1.0') in text
    assert 'featurestore_grpc_latency_seconds_count{method="GetOnlineFeatures"} 2.0' in text


def test_request_limits(loop, stored):
    with running(loop, stored, max_entities=2, max_request_bytes=2000) as server:
        with FeatureClient(f"localhost:{server.port}") as client:
            code, details = code_of(lambda: client.get_online_features(
                ["user_profile:country"], entities={"user_id": ["a", "b", "c"]}))
            assert code == grpc.StatusCode.INVALID_ARGUMENT
            assert "3 entity rows" in details and "at most 2" in details
            code, _ = code_of(lambda: client.get_online_features(
                ["user_profile:country"], entities={"user_id": ["x" * 3000]}))
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_tls(loop, stored, tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost"], check=True, capture_output=True)
    with running(loop, stored, tls_cert=str(cert), tls_key=str(key)) as server:
        target = f"localhost:{server.port}"
        creds = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
        with FeatureClient(target, credentials=creds) as client:
            assert client.get_online_features(**ASK).to_dict()["country"] == ["DE"]
        with FeatureClient(target, timeout=1) as plaintext:
            assert code_of(lambda: plaintext.get_online_features(**ASK))[0] == \
                grpc.StatusCode.UNAVAILABLE


def test_an_undecodable_value_is_invalid_for_its_entity_named_and_counted(loop, stored,
                                                                         caplog):
    from featurestore import layout

    with contextlib.closing(redis.Redis.from_url(stored)) as r:
        # what a writer that ignored the schema left: `[ts,toys]` is not JSON
        r.set(layout.row_key(PROJECT, "user_profile", USER_PROFILE.fingerprint, "u2"),
              b"[1795897281692761,toys,1,2,3]")
    with running(loop, stored, metrics_port=0) as server:
        with FeatureClient(f"localhost:{server.port}") as client:
            got = client.get_online_features(["user_profile:country"],
                                              entities={"user_id": ["u1", "u2"]})
            assert got.to_dict()["country"] == ["DE", None]
            assert [int(s) for s in got.statuses["country"]] == [1, 0]   # PRESENT, INVALID
        text = scrape_until(server.metrics_port,
                            'featurestore_corrupt_values_total{view="user_profile"} 1.0')
    assert 'featurestore_corrupt_values_total{view="user_profile"} 1.0' in text
    assert "the row of view 'user_profile' for entity 'u2' is not a row of layout v4" \
        in caplog.text


def test_a_view_redis_holds_nothing_of_is_reported(loop, redis_url):
    """An empty Redis (or another one than materialized): health `view:<name>`
    NOT_SERVING and featurestore_view_written 0, until the view is written."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from featurestore import layout

    def view_health(server, name):
        with grpc.insecure_channel(f"localhost:{server.port}") as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=f"view:{name}"), timeout=5)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)

    with running(loop, redis_url, metrics_port=0, reload_interval=0.05) as server:
        assert view_health(server, "user_profile") == "NOT_SERVING"
        with FeatureClient(f"localhost:{server.port}") as client:
            assert client.health() == "SERVING"        # Redis answers: the server serves
        scrape_until(server.metrics_port, 'featurestore_view_written{view="user_profile"} 0.0')
        with contextlib.closing(redis.Redis.from_url(redis_url)) as r:
            r.set(layout.watermark_key(PROJECT, "user_profile", USER_PROFILE.fingerprint),
                  layout.encode_watermark(NOW))
        deadline = time.monotonic() + 10
        while view_health(server, "user_profile") != "SERVING":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        text = scrape_until(server.metrics_port,
                            'featurestore_view_written{view="user_profile"} 1.0')
        assert 'featurestore_view_written{view="user_profile"} 1.0' in text
        assert 'featurestore_view_written{view="user_spend"} 0.0' in text


def test_metrics_of_freshness_statuses_and_redis(loop, stored):
    """Per view: the age of the newest event served, entity rows by status;
    the Redis round trip of each lookup."""
    with contextlib.closing(redis.Redis.from_url(stored)) as r:
        put_row(r, USER_PROFILE, ["old"], NOW - 2 * 86400 * 10 ** 6 + 1, ["JP", 7, 0.0, True, 0])
    with running(loop, stored, metrics_port=0) as server:
        with FeatureClient(f"localhost:{server.port}") as client:
            client.get_online_features(["user_profile:country"],
                                       entities={"user_id": ["u1", "old", "nobody"]})
        text = scrape_until(server.metrics_port, "featurestore_redis_seconds_count 1.0")
    assert 'featurestore_served_entities_total{status="served",view="user_profile"} 3.0' in text
    assert 'featurestore_served_entities_total{status="NOT_FOUND",view="user_profile"} 1.0' in text
    assert ('featurestore_served_entities_total{status="OUTSIDE_MAX_AGE",view="user_profile"} '
            '1.0') in text
    assert 'featurestore_served_age_seconds_count{view="user_profile"} 1.0' in text
    assert "featurestore_redis_seconds_count 1.0" in text
