"""Changing a view under a running server: no outage, then the new values.

A real repo (`.feat`, Parquet), a real Redis, the CLI's apply / materialize
/ gc, and a real gRPC server re-reading its manifest, read continuously from
a thread while the view changes.
"""
from __future__ import annotations

import asyncio
import threading
import time

import grpc
import redis

from featurestore import config, layout
from featurestore.cli import main as cli
from featurestore.manifest import Manifest
from serving.client import FeatureClient
from serving.server import ServerOptions, start_server
from tests.test_end_to_end import FEATURES, T, feature_repo  # noqa: F401  (a fixture)

NEW = FEATURES.replace("big_1h    = count() where amount >= 100   over 1h",
                       "big_1h    = count() where amount >= 200   over 1h\n"
                       "        max_1h    = max(amount)                   over 1h")
USERS = [f"u{i}" for i in range(30)]
ASKED = ["activity:big_1h", "activity:n_1h"]


async def _run(fn, *args):
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)


def _get(address: str, features=ASKED) -> dict:
    with FeatureClient(address) as client:
        return client.get_online_features(features=features,
                                          entities={"user_id": USERS}).to_dict()


async def _until(check, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def _until_answered(address: str, features: list[str], timeout: float = 20.0) -> dict:
    """The first answer once the server knows every feature (it re-reads
    the manifest every reload_interval)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await _run(_get, address, features)
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, e
            assert time.monotonic() < deadline, "the server never saw the applied change"
            await asyncio.sleep(0.05)


async def test_a_changed_view_serves_its_previous_version_until_materialized(
        feature_repo, redis_url, capsys):  # noqa: F811
    root, _ = feature_repo
    repo = ["--repo", str(root)]
    assert cli(["apply", *repo]) == 0
    assert cli(["materialize", "--end", "2026-01-01T12:02:30", *repo]) == 0
    cfg = config.load(root)
    old_fp = Manifest.load(cfg.manifest_path).views["activity"].fingerprint
    options = ServerOptions(reload_interval=0.05)
    server = await start_server(Manifest.load(cfg.manifest_path), redis_url, port=0,
                                clock=lambda: T, options=options,
                                manifest_path=cfg.manifest_path)
    address = f"127.0.0.1:{server.port}"
    before = await _run(_get, address)
    had = [i for i, v in enumerate(before["n_1h"]) if v is not None]
    assert had and any(before["big_1h"][i] for i in had)

    seen, failures, stop = [], [], threading.Event()

    def read_continuously():
        while not stop.is_set():
            got = _get(address)
            missing = [USERS[i] for i in had
                       if got["n_1h"][i] is None or got["big_1h"][i] is None]
            if missing:
                failures.append(missing)
            seen.append(got["big_1h"])

    reader = threading.Thread(target=read_continuously)
    reader.start()
    try:
        (root / "features" / "activity.feat").write_text(NEW)
        capsys.readouterr()
        assert await _run(cli, ["plan", *repo]) == 0
        planned = capsys.readouterr().out
        assert "~ view activity" in planned
        assert "run `featurestore materialize --views activity` (reads 2 file(s)" in planned
        assert "servers keep serving its previous version" in planned

        assert await _run(cli, ["apply", *repo]) == 0
        new_fp = Manifest.load(cfg.manifest_path).views["activity"].fingerprint
        assert new_fp != old_fp
        # the server picks the applied manifest up and still serves the old version;
        # the feature only the new version has is NOT_FOUND until it is written
        mixed = await _until_answered(address, ["activity:max_1h", "activity:big_1h"])
        assert all(v is None for v in mixed["max_1h"])
        assert mixed["big_1h"] == before["big_1h"]
        # a server started now (after apply, before materialize) does the same
        second = await start_server(Manifest.load(cfg.manifest_path), redis_url, port=0,
                                    clock=lambda: T, options=options,
                                    manifest_path=cfg.manifest_path)
        try:
            assert (await _run(_get, f"127.0.0.1:{second.port}"))["big_1h"] == before["big_1h"]
        finally:
            await second.stop(0)

        assert await _run(cli, ["materialize", "--end", "2026-01-01T12:02:30", *repo]) == 0
        await _until(lambda: seen and seen[-1] != before["big_1h"])
    finally:
        stop.set()
        await _run(reader.join)
    try:
        after = await _run(_get, address, ["activity:big_1h", "activity:max_1h"])
        assert failures == []
        assert len(seen) > 10
        # the new definition (amount >= 200) counts no more than the old one (>= 100)
        assert all(a <= b for a, b in zip(after["big_1h"], before["big_1h"]) if b is not None)
        assert after["big_1h"] != before["big_1h"]
        assert any(v is not None for v in after["max_1h"])

        # gc removes the old version's keys and nothing the server reads
        r = redis.Redis.from_url(redis_url)
        old = list(r.scan_iter(match=f"{layout.PREFIX}:e2e:activity:{old_fp}:*"))
        assert old
        capsys.readouterr()
        assert await _run(cli, ["gc", *repo]) == 0
        out = capsys.readouterr().out
        assert f"retired activity version {old_fp}" in out
        assert f"removed {len(old):,} key(s)" in out
        assert not list(r.scan_iter(match=f"{layout.PREFIX}:e2e:activity:{old_fp}:*"))
        assert Manifest.load(cfg.manifest_path).previous == {}
        await asyncio.sleep(0.2)
        assert await _run(_get, address, ["activity:big_1h", "activity:max_1h"]) == after
    finally:
        await server.stop(0)


async def test_gc_keeps_a_previous_version_while_it_is_served(feature_repo, redis_url,
                                                              capsys):  # noqa: F811
    root, _ = feature_repo
    repo = ["--repo", str(root)]
    assert cli(["apply", *repo]) == 0
    assert cli(["materialize", "--end", "2026-01-01T12:02:30", *repo]) == 0
    (root / "features" / "activity.feat").write_text(NEW)
    assert cli(["apply", *repo]) == 0
    r = redis.Redis.from_url(redis_url)
    keys = r.dbsize()
    capsys.readouterr()
    assert cli(["gc", *repo]) == 0
    out = capsys.readouterr().out
    assert "activity: kept its previous version" in out
    assert "removed 0 key(s)" in out
    assert r.dbsize() == keys
    cfg = config.load(root)
    assert len(Manifest.load(cfg.manifest_path).previous["activity"]) == 1
