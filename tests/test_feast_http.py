"""Feast's HTTP API (`feast serve`'s POST /get-online-features) on our
server: Feast's JSON request shape in, Feast's response shape out, the same
values and statuses as FeatureClient; failures as HTTP statuses."""
from __future__ import annotations

import contextlib
import json
import math
import urllib.error
import urllib.request

import pytest
import redis

from serving.client import FeatureClient, FieldStatus
from serving.server import ServerOptions, start_server
from test_feast_api import FEATURES, USERS
from test_serving_options import loop  # noqa: F401  (a fixture)
from test_serving import (DAY, FLOOR, HOUR, MANIFEST, NOW, USER_PROFILE, USER_SPEND,
                          put_row, put_tile, spend_states)


@pytest.fixture
def server(loop, redis_url):  # noqa: F811
    with contextlib.closing(redis.Redis.from_url(redis_url)) as r:
        put_row(r, USER_PROFILE, ["u1"], NOW - HOUR, ["DE", 41, math.nan, True, NOW - DAY])
        put_row(r, USER_PROFILE, ["u2"], NOW - 2 * HOUR, ["FR", None, 1.5, False, None])
        put_row(r, USER_PROFILE, ["old"], NOW - DAY - HOUR, ["JP", 7, 0.0, True, 0])
        put_row(r, USER_SPEND, ["u1"], NOW - 60 * 1_000_000, ["books"])
        put_tile(r, USER_SPEND, ["u1"], FLOOR, spend_states(2, 30, 2, 20.0, 30))
    running = loop.run(start_server(MANIFEST, redis_url, host="127.0.0.1", clock=lambda: NOW,
                                    options=ServerOptions(http_port=0, api_keys=("k",))))
    yield running
    loop.run(running.stop(None))


def post(server, body, key="k", raw: bytes | None = None):
    request = urllib.request.Request(
        f"http://127.0.0.1:{server.http_port}/get-online-features",
        data=raw if raw is not None else json.dumps(body).encode(), method="POST",
        headers={"content-type": "application/json", **({"x-api-key": key} if key else {})})
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_feast_json_gets_what_our_client_gets(server):
    status, got = post(server, {"features": FEATURES, "entities": {"user_id": USERS}})
    assert status == 200
    with FeatureClient(server.address, api_key="k") as client:
        ours = client.get_online_features(FEATURES, entities={"user_id": USERS})
    assert got["metadata"]["feature_names"] == ours.names
    values = ours.to_dict()
    for name, column in zip(ours.names, got["results"]):
        if name == "user_id":
            assert column["values"] == USERS
            continue
        assert column["statuses"] == [FieldStatus(s).name for s in ours.statuses[name]], name
        want = values[name]
        if name == "signup_at":
            want = [None if w is None else int(w.timestamp()) for w in want]
        if name == "score":
            want = ["NaN" if w is not None and math.isnan(w) else w for w in want]
        assert column["values"] == want, name
        assert len(column["event_timestamps"]) == len(USERS)
    country = got["results"][got["metadata"]["feature_names"].index("country")]
    assert country["statuses"] == ["PRESENT", "PRESENT", "OUTSIDE_MAX_AGE", "NOT_FOUND"]
    assert country["values"] == ["DE", "FR", None, None]
    assert country["event_timestamps"][0] == "2024-05-01T11:07:30Z"


def test_feature_service_and_full_names(server):
    status, got = post(server, {"feature_service": "fraud_v1", "full_feature_names": True,
                                "entities": {"user_id": ["u1"]}})
    assert status == 200
    assert got["metadata"]["feature_names"] == ["user_id", "user_spend__purchases_1h",
                                                "user_profile__country"]
    assert [r["values"] for r in got["results"]] == [["u1"], [2], ["DE"]]


@pytest.mark.parametrize("body, key, status, detail", [
    ({"features": ["user_profile:nope"], "entities": {"user_id": ["u1"]}}, "k", 400,
     "unknown feature 'user_profile:nope'"),
    ({"features": ["user_profile:country"], "entities": {"user_id": [1.5]}}, "k", 422,
     "keys are all strings or all integers"),
    ({"features": ["user_profile:country"]}, "k", 422, "entities must be an object"),
    ({"features": ["user_profile:country"], "entities": {"user_id": ["u1"]}, "x": 1}, "k",
     422, "unknown field(s): x"),
    ({"features": ["user_profile:country"], "entities": {"user_id": ["u1"]}}, None, 401,
     "x-api-key"),
    ({"features": ["user_profile:country"], "entities": {"user_id": ["u1"]}}, "nope", 401,
     "x-api-key"),
])
def test_failures_are_http_statuses_with_a_detail(server, body, key, status, detail):
    got_status, got = post(server, body, key=key)
    assert got_status == status and detail in got["detail"]


def test_a_body_that_is_not_json_is_422(server):
    status, got = post(server, None, raw=b"{not json")
    assert status == 422 and "not JSON" in got["detail"]
