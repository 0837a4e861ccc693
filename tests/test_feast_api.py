"""Feast's serving API on our server, called through Feast's own generated
stubs (from the installed feast package): the same values, statuses and
event times as FeatureClient, for row-level and window features, feature
services and feature lists, NOT_FOUND and OUTSIDE_MAX_AGE."""
from __future__ import annotations

import contextlib

import grpc
import pytest
import redis
from feast.protos.feast.serving import GrpcServer_pb2_grpc, ServingService_pb2 as fpb
from feast.protos.feast.serving import ServingService_pb2_grpc
from feast.protos.feast.types import Value_pb2

from serving.client import FeatureClient, FieldStatus
from serving.server import ServerOptions, start_server
from test_serving import (DAY, FLOOR, HOUR, MANIFEST, NOW, USER_PROFILE, USER_SPEND, put_row,
                          put_tile, spend_states)
from test_serving_options import loop  # noqa: F401  (a fixture)

USERS = ["u1", "u2", "old", "nobody"]


@pytest.fixture
def server(loop, redis_url):
    with contextlib.closing(redis.Redis.from_url(redis_url)) as r:
        put_row(r, USER_PROFILE, ["u1"], NOW - HOUR, ["DE", 41, 0.75, True, NOW - DAY])
        put_row(r, USER_PROFILE, ["u2"], NOW - 2 * HOUR, ["FR", None, 1.5, False, None])
        put_row(r, USER_PROFILE, ["old"], NOW - DAY - HOUR, ["JP", 7, 0.0, True, 0])
        put_row(r, USER_SPEND, ["u1"], NOW - 60 * 1_000_000, ["books"])
        put_tile(r, USER_SPEND, ["u1"], FLOOR, spend_states(2, 30, 2, 20.0, 30))
        put_tile(r, USER_SPEND, ["u2"], FLOOR - 2 * HOUR, spend_states(1, 5, 1, 5.0, 5))
    running = loop.run(start_server(MANIFEST, redis_url, host="localhost", clock=lambda: NOW,
                                    options=ServerOptions(api_keys=("k",))))
    yield running
    loop.run(running.stop(None))


def _feast(server, request, stub=ServingService_pb2_grpc.ServingServiceStub):
    with grpc.insecure_channel(server.address) as channel:
        return stub(channel).GetOnlineFeatures(request, metadata=(("x-api-key", "k"),),
                                               timeout=5)


def _request(**kind) -> fpb.GetOnlineFeaturesRequest:
    request = fpb.GetOnlineFeaturesRequest(**kind)
    request.entities["user_id"].val.extend(Value_pb2.Value(string_val=u) for u in USERS)
    return request


def _as_python(value: Value_pb2.Value):
    which = value.WhichOneof("val")
    return None if which is None else getattr(value, which)


FEATURES = ["user_profile:country", "user_profile:age", "user_profile:score",
            "user_profile:verified", "user_profile:signup_at", "user_spend:last_category",
            "user_spend:purchases_1h", "user_spend:spend_1d", "user_spend:avg_spend_1h",
            "user_spend:max_spend_1h", "user_spend:spend_all"]


@pytest.mark.parametrize("stub", [ServingService_pb2_grpc.ServingServiceStub,
                                  GrpcServer_pb2_grpc.GrpcFeatureServerStub])
@pytest.mark.parametrize("full", [False, True])
def test_feast_stubs_get_what_our_client_gets(server, stub, full):
    feast = _feast(server, _request(features=fpb.FeatureList(val=FEATURES),
                                    full_feature_names=full), stub)
    with FeatureClient(server.address, api_key="k") as client:
        ours = client.get_online_features(FEATURES, entities={"user_id": USERS},
                                          full_feature_names=full)
    names = list(feast.metadata.feature_names.val)
    assert names == ours.names
    assert len(feast.results) == len(names)
    values = ours.to_dict()
    for name, vector in zip(names, feast.results):
        statuses = [FieldStatus(s) for s in vector.statuses]
        if name == "user_id":
            assert [_as_python(v) for v in vector.values] == USERS
            continue
        assert statuses == list(ours.statuses[name]), name
        got = [_as_python(v) for v in vector.values]
        want = values[name]
        if name.endswith("signup_at"):   # Feast spells times as whole epoch seconds
            want = [None if w is None else int(w.timestamp()) for w in want]
        assert got == want, name
        assert [t.seconds * 1_000_000 + t.nanos // 1000 for t in vector.event_timestamps] == \
            list(ours.event_timestamps[name]), name
    # the cases this data was written for
    by_name = {n.rpartition("__")[2]: v for n, v in zip(names, feast.results)}
    country = [FieldStatus(s) for s in by_name["country"].statuses]
    assert country == [FieldStatus.PRESENT, FieldStatus.PRESENT, FieldStatus.OUTSIDE_MAX_AGE,
                       FieldStatus.NOT_FOUND]
    assert [_as_python(v) for v in by_name["purchases_1h"].values] == [2, 0, 0, 0]
    assert [_as_python(v) for v in by_name["spend_1d"].values] == [30.0, 5.0, None, None]


def test_feature_services_and_serving_info(server):
    feast = _feast(server, _request(feature_service="fraud_v1"))
    assert list(feast.metadata.feature_names.val) == ["user_id", "purchases_1h", "country"]
    with grpc.insecure_channel(server.address) as channel:
        info = ServingService_pb2_grpc.ServingServiceStub(channel).GetFeastServingInfo(
            fpb.GetFeastServingInfoRequest(), metadata=(("x-api-key", "k"),), timeout=5)
    assert info.version.startswith("featurestore")


@pytest.mark.parametrize("request_, code, message", [
    (_request(features=fpb.FeatureList(val=["user_profile:nope"])),
     grpc.StatusCode.INVALID_ARGUMENT, "unknown feature 'user_profile:nope'"),
    (fpb.GetOnlineFeaturesRequest(features=fpb.FeatureList(val=["user_profile:country"]),
                                  entities={"user_id": Value_pb2.RepeatedValue(
                                      val=[Value_pb2.Value(double_val=1.5)])}),
     grpc.StatusCode.INVALID_ARGUMENT, "keys are strings or integers, not double_val"),
    (fpb.GetOnlineFeaturesRequest(features=fpb.FeatureList(val=["user_profile:country"]),
                                  entities={"user_id": Value_pb2.RepeatedValue(
                                      val=[Value_pb2.Value(string_val="a"), Value_pb2.Value()])}),
     grpc.StatusCode.INVALID_ARGUMENT, "holds a null key"),
])
def test_bad_feast_requests_are_invalid_argument(server, request_, code, message):
    with pytest.raises(grpc.RpcError) as caught:
        _feast(server, request_)
    assert caught.value.code() == code and message in caught.value.details()


def test_feast_calls_need_the_key_too(server):
    with grpc.insecure_channel(server.address) as channel:
        with pytest.raises(grpc.RpcError) as caught:
            ServingService_pb2_grpc.ServingServiceStub(channel).GetOnlineFeatures(
                _request(feature_service="fraud_v1"), timeout=5)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
