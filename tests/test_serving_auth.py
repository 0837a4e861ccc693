"""Every RPC behind a key (reflection included), hashed keys with allow-lists
re-read on change and on SIGHUP, mutual TLS, and request bytes that do not
decode answered INVALID_ARGUMENT: a real server on a loopback port."""
from __future__ import annotations

import hashlib
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from featurestore import redis_local
from serving.client import FeatureClient
from serving.server import ServerOptions, start_server
from serving.v1 import serving_pb2 as pb
from test_serving import MANIFEST, NOW
from test_serving_options import code_of, loop, running, stored  # noqa: F401  (fixtures)
from tests.serving_process import serving

ASK = dict(features=["user_profile:country"], entities={"user_id": ["u1"]})
METHOD = "/featurestore.serving.v1.ServingService/GetOnlineFeatures"


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _reflect(target: str, metadata=None) -> list[str]:
    with grpc.insecure_channel(target) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        replies = stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
            metadata=metadata, timeout=5)
        return [s.name for r in replies for s in r.list_services_response.service]


def test_reflection_needs_a_key_too(loop, stored):
    with running(loop, stored, api_keys=("k1",)) as server:
        target = f"localhost:{server.port}"
        code, details = code_of(lambda: _reflect(target))
        assert code == grpc.StatusCode.UNAUTHENTICATED and "x-api-key" in details
        assert "featurestore.serving.v1.ServingService" in _reflect(target, (("x-api-key", "k1"),))
    with running(loop, stored) as server:   # no keys configured: open, as before
        assert "grpc.health.v1.Health" in _reflect(f"localhost:{server.port}")


def _keys_file(path: Path, entries: list[dict]) -> Path:
    import yaml

    path.write_text(yaml.safe_dump({"keys": entries}))
    return path


def test_hashed_keys_and_allow_lists(loop, stored, tmp_path):
    keys = _keys_file(tmp_path / "keys.yaml", [
        {"name": "fraud-model", "sha256": sha("fraud-secret"), "services": ["fraud_v1"]},
        {"name": "profiles", "key": "profile-secret", "views": ["user_profile"]},
        {"name": "ops", "sha256": sha("ops-secret")},
    ])
    with running(loop, stored, api_keys=(f"sha256:{sha('hashed-in-config')}",),
                 api_keys_file=str(keys)) as server:
        target = f"localhost:{server.port}"

        def ask(key, **request):
            with FeatureClient(target, api_key=key) as client:
                return client.get_online_features(**request)

        assert ask("hashed-in-config", **ASK).to_dict()["country"] == ["DE"]
        assert ask("ops-secret", **ASK).to_dict()["country"] == ["DE"]
        assert code_of(lambda: ask(sha("ops-secret"), **ASK))[0] == \
            grpc.StatusCode.UNAUTHENTICATED   # the digest is not the key
        # a key limited to a service reads it, and nothing else
        fraud = dict(service="fraud_v1", entities={"user_id": ["u1"]})
        assert ask("fraud-secret", **fraud).to_dict()["country"] == ["DE"]
        code, details = code_of(lambda: ask("fraud-secret", **ASK))
        assert code == grpc.StatusCode.PERMISSION_DENIED
        assert details == ("key 'fraud-model' may not read view(s) 'user_profile' "
                           "(it may read services: fraud_v1)")
        code, details = code_of(lambda: ask("fraud-secret", service="spend_all",
                                            entities={"user_id": ["u1"]}))
        assert code == grpc.StatusCode.PERMISSION_DENIED
        assert "may not read feature service 'spend_all'" in details
        # a key limited to a view reads its features, and no service reading others
        assert ask("profile-secret", **ASK).to_dict()["country"] == ["DE"]
        code, details = code_of(lambda: ask("profile-secret", **fraud))
        assert code == grpc.StatusCode.PERMISSION_DENIED
        assert details == ("key 'profiles' may not read feature service 'fraud_v1' "
                           "(it may read views: user_profile)")
        code, _ = code_of(lambda: ask("profile-secret", features=["user_spend:purchases_1h"],
                                      entities={"user_id": ["u1"]}))
        assert code == grpc.StatusCode.PERMISSION_DENIED


def test_the_keys_file_is_reread_when_it_changes(loop, stored, tmp_path):
    keys = _keys_file(tmp_path / "keys.yaml", [{"name": "a", "key": "old-key"}])
    with running(loop, stored, api_keys_file=str(keys), reload_interval=0.05) as server:
        target = f"localhost:{server.port}"
        with FeatureClient(target, api_key="old-key") as old, \
                FeatureClient(target, api_key="new-key") as new:
            assert old.get_online_features(**ASK).to_dict()["country"] == ["DE"]
            _keys_file(keys, [{"name": "b", "sha256": sha("new-key")}])
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                try:
                    new.get_online_features(**ASK)
                    break
                except grpc.RpcError:
                    time.sleep(0.05)
            assert new.get_online_features(**ASK).to_dict()["country"] == ["DE"]
            assert code_of(lambda: old.get_online_features(**ASK))[0] == \
                grpc.StatusCode.UNAUTHENTICATED
            keys.write_text("keys: [")       # broken: the keys in force stay
            time.sleep(0.3)
            assert new.get_online_features(**ASK).to_dict()["country"] == ["DE"]


def test_sighup_rereads_the_keys_without_dropping_connections(stored, tmp_path):
    """A real `featurestore serve` process: SIGHUP re-reads the keys file,
    and a channel opened before it keeps working."""
    root = Path(__file__).parent / "example_repos"
    repo = tmp_path / "repo"
    import shutil

    shutil.copytree(root / "streaming", repo)
    keys = _keys_file(tmp_path / "keys.yaml", [{"name": "a", "key": "first"}])
    port = redis_local.free_port()
    (repo / "featurestore.yaml").write_text(
        f"project: shop\nonline_store:\n  url: {stored}\nserving:\n  port: {port}\n"
        f"  api_keys_file: {keys}\n  reload_interval: 3600\n")
    applied = subprocess.run([sys.executable, "-m", "featurestore.cli", "apply", "--repo",
                              str(repo)], capture_output=True, text=True)
    assert applied.returncode == 0, applied.stderr
    with serving(repo, port, "--workers", "1") as served:
        with FeatureClient(served.target, api_key="first") as first, \
                FeatureClient(served.target, api_key="second") as second:
            request = dict(features=["user_spend:purchases_1h"], entities={"user_id": ["u1"]})
            first.get_online_features(**request)
            assert code_of(lambda: second.get_online_features(**request))[0] == \
                grpc.StatusCode.UNAUTHENTICATED
            _keys_file(keys, [{"name": "a", "key": "first"}, {"name": "b", "key": "second"}])
            served.proc.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 10
            while True:
                try:
                    second.get_online_features(**request)
                    break
                except grpc.RpcError:
                    assert time.monotonic() < deadline, "SIGHUP did not reload the keys"
                    time.sleep(0.1)
            first.get_online_features(**request)      # the same channel as before SIGHUP
            assert served.proc.poll() is None
    out = served.output
    assert "API keys reloaded" in out


def test_mutual_tls(loop, stored, tmp_path):
    def openssl(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=tmp_path)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-keyout", "ca.key",
            "-out", "ca.pem", "-subj", "/CN=test-ca")
    for name, cn in (("server", "localhost"), ("client", "model-server")):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out",
                f"{name}.csr", "-subj", f"/CN={cn}", "-addext", f"subjectAltName=DNS:{cn}")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                "-CAcreateserial", "-days", "1", "-out", f"{name}.pem", "-copy_extensions", "copy")
    read = lambda name: (tmp_path / name).read_bytes()  # noqa: E731
    with running(loop, stored, tls_cert=str(tmp_path / "server.pem"),
                 tls_key=str(tmp_path / "server.key"),
                 tls_client_ca=str(tmp_path / "ca.pem")) as server:
        target = f"localhost:{server.port}"
        with_cert = grpc.ssl_channel_credentials(read("ca.pem"), read("client.key"),
                                                 read("client.pem"))
        with FeatureClient(target, credentials=with_cert) as client:
            assert client.get_online_features(**ASK).to_dict()["country"] == ["DE"]
        without = grpc.ssl_channel_credentials(read("ca.pem"))
        with FeatureClient(target, credentials=without, timeout=2) as client:
            assert code_of(lambda: client.get_online_features(**ASK))[0] == \
                grpc.StatusCode.UNAVAILABLE


def test_a_list_column_as_an_entity_key_is_invalid(loop, stored):
    with running(loop, stored) as server:
        request = pb.GetOnlineFeaturesRequest(features=pb.FeatureList(
            features=["user_profile:country"]))
        request.entities["user_id"].list_column.lengths.append(1)
        with grpc.insecure_channel(f"localhost:{server.port}") as channel:
            call = channel.unary_unary(METHOD, request_serializer=lambda m: m.SerializeToString())
            code, details = code_of(lambda: call(request, timeout=5))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "entity key column 'user_id' must be sent as string_list, not list_column" in details


@pytest.fixture(scope="module")
def fuzz_server(loop, redis_server):
    server = loop.run(start_server(MANIFEST, redis_server, host="localhost", clock=lambda: NOW,
                                   options=ServerOptions(max_entities=50)))
    channel = grpc.insecure_channel(f"localhost:{server.port}")
    yield server, channel.unary_unary(METHOD), channel
    channel.close()
    loop.run(server.stop(None))


CLIENT_INPUT = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.OK,
                grpc.StatusCode.RESOURCE_EXHAUSTED}


def _code(call, data: bytes) -> grpc.StatusCode:
    try:
        call(data, timeout=5)
        return grpc.StatusCode.OK
    except grpc.RpcError as e:
        return e.code()


@settings(max_examples=1500, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.binary(max_size=200))
def test_fuzzed_request_bytes_are_never_unknown_or_internal(fuzz_server, data):
    _, call, _ = fuzz_server
    assert _code(call, data) in CLIENT_INPUT, data


def _value_list():
    return st.one_of(
        st.builds(lambda v: pb.ValueList(string_list=pb.StringList(values=v)),
                  st.lists(st.text(max_size=5), max_size=4)),
        st.builds(lambda v: pb.ValueList(int64_list=pb.Int64List(values=v)),
                  st.lists(st.integers(-2 ** 63, 2 ** 63 - 1), max_size=4)),
        st.builds(lambda v: pb.ValueList(double_list=pb.DoubleList(values=v)),
                  st.lists(st.floats(), max_size=4)),
        st.builds(lambda v: pb.ValueList(bool_list=pb.BoolList(values=v)),
                  st.lists(st.booleans(), max_size=4)),
        st.builds(lambda n: pb.ValueList(list_column=pb.ListColumn(lengths=[n])),
                  st.integers(0, 3)),
        st.just(pb.ValueList()))


_REFS = ["user_profile:country", "user_spend:purchases_1h", "merchant_risk:score",
         "user_spend:*", "nope:x", "user_profile", ":", ""]


@settings(max_examples=1500, deadline=None, suppress_health_check=list(HealthCheck))
@given(refs=st.lists(st.sampled_from(_REFS), max_size=3),
       service=st.sampled_from([None, "fraud_v1", "spend_all", "nope", ""]),
       keys=st.dictionaries(st.sampled_from(["user_id", "merchant_id", "x", ""]), _value_list(),
                            max_size=3),
       as_of=st.one_of(st.none(), st.integers(-2 ** 63, 2 ** 63 - 1)),
       full=st.booleans())
def test_fuzzed_requests_are_answered_or_invalid(fuzz_server, refs, service, keys, as_of, full):
    _, call, _ = fuzz_server
    request = pb.GetOnlineFeaturesRequest(full_feature_names=full)
    if service is not None:
        request.feature_service = service
    elif refs:
        request.features.features.extend(refs)
    for name, column in keys.items():
        request.entities[name].CopyFrom(column)
    if as_of is not None:
        request.as_of = as_of
    assert _code(call, request.SerializeToString()) in CLIENT_INPUT, request


def test_the_server_is_well_after_the_fuzzing(fuzz_server):
    server, _, channel = fuzz_server
    with FeatureClient(server.address) as client:
        assert client.health() == "SERVING"
