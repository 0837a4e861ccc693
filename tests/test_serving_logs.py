"""`featurestore serve --log-format json --access-log`: JSON lines, an
access line per call, the caller's request id (or a new one) in the logs of
the call and in its trailing metadata. A real server process."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import grpc

from featurestore import redis_local
from serving.client import FeatureClient
from serving.v1 import serving_pb2 as pb
from serving.v1 import serving_pb2_grpc


def test_json_access_log_with_request_ids(redis_url, tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(Path(__file__).parent / "example_repos" / "streaming", repo)
    port = redis_local.free_port()
    (repo / "featurestore.yaml").write_text(
        f"project: shop\nonline_store:\n  url: {redis_url}\nserving:\n  port: {port}\n")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    assert subprocess.run([sys.executable, "-m", "featurestore.cli", "apply", "--repo",
                           str(repo)], capture_output=True, env=env).returncode == 0
    proc = subprocess.Popen([sys.executable, "-m", "featurestore.cli", "serve", "--repo",
                             str(repo), "--workers", "1", "--log-format", "json",
                             "--access-log"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env=env, text=True)
    try:
        target = f"127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        with FeatureClient(target) as client:
            while True:
                assert time.monotonic() < deadline and proc.poll() is None
                try:
                    if client.health() == "SERVING":
                        break
                except grpc.RpcError:
                    pass
                time.sleep(0.2)
        request = pb.GetOnlineFeaturesRequest(features=pb.FeatureList(
            features=["user_spend:purchases_1h"]))
        request.entities["user_id"].string_list.values.extend(["u1", "u2"])
        with grpc.insecure_channel(target) as channel:
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
    finally:
        proc.terminate()
        out = proc.communicate(timeout=20)[0]
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert lines and all({"time", "level", "logger", "message"} <= set(d) for d in lines)
    access = [d for d in lines if d["logger"] == "featurestore.access"]
    ok = next(d for d in access if d.get("request_id") == "req-42")
    assert (ok["method"], ok["code"], ok["rows"]) == ("GetOnlineFeatures", "OK", 2)
    assert ok["ms"] >= 0 and ok["peer"]
    refused = next(d for d in access if d.get("request_id") == minted)
    assert refused["code"] == "INVALID_ARGUMENT"
