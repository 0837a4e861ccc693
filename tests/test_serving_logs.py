"""`featurestore serve --log-format json --access-log`: JSON lines, an
access line per call, the caller's request id (or a new one) in the logs of
the call and in its trailing metadata. A real server process."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import grpc

from featurestore import redis_local
from serving.v1 import serving_pb2 as pb
from serving.v1 import serving_pb2_grpc
from tests.serving_process import serving


def test_json_access_log_with_request_ids(redis_url, tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(Path(__file__).parent / "example_repos" / "streaming", repo)
    port = redis_local.free_port()
    (repo / "featurestore.yaml").write_text(
        f"project: shop\nonline_store:\n  url: {redis_url}\nserving:\n  port: {port}\n")
    assert subprocess.run([sys.executable, "-m", "featurestore.cli", "apply", "--repo",
                           str(repo)], capture_output=True).returncode == 0
    with serving(repo, port, "--workers", "1", "--log-format", "json",
                 "--access-log") as served:
        request = pb.GetOnlineFeaturesRequest(features=pb.FeatureList(
            features=["user_spend:purchases_1h"]))
        request.entities["user_id"].string_list.values.extend(["u1", "u2"])
        with grpc.insecure_channel(served.target) as channel:
            stub = serving_pb2_grpc.ServingServiceStub(channel)
            _, call = stub.GetOnlineFeatures.with_call(
                request, metadata=(("x-request-id", "req-42"),), timeout=5)
            assert dict(call.trailing_metadata())["x-request-id"] == "req-42"
            bad = pb.GetOnlineFeaturesRequest(features=pb.FeatureList(features=["nope:x"]))
            try:
                stub.GetOnlineFeatures(bad, timeout=5)
            except grpc.RpcError as e:
                minted = dict(e.trailing_metadata()).get("x-request-id")
            assert minted and minted != "req-42"
    out = served.output
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert lines and all({"time", "level", "logger", "message"} <= set(d) for d in lines)
    access = [d for d in lines if d["logger"] == "featurestore.access"]
    ok = next(d for d in access if d.get("request_id") == "req-42")
    assert (ok["method"], ok["code"], ok["rows"]) == ("GetOnlineFeatures", "OK", 2)
    assert ok["ms"] >= 0 and ok["peer"]
    refused = next(d for d in access if d.get("request_id") == minted)
    assert refused["code"] == "INVALID_ARGUMENT"
