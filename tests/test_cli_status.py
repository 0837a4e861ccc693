"""`featurestore status`: per view what Redis holds of the applied version
(the batch watermark, the stream's writes, drops and held updates) and what
the configured server's health says."""
from __future__ import annotations

import asyncio

import redis

from featurestore import config, layout, redis_local
from featurestore.cli import main as cli
from featurestore.manifest import Manifest
from serving.server import start_server
from tests.test_end_to_end import feature_repo  # noqa: F401  (a fixture)


async def test_status_reports_views_and_the_server(feature_repo, redis_url, capsys):  # noqa: F811
    root, _ = feature_repo
    port = redis_local.free_port()
    (root / "featurestore.yaml").write_text(
        f"project: e2e\nonline_store:\n  url: {redis_url}\nserving:\n  port: {port}\n")
    repo = ["--repo", str(root)]
    loop = asyncio.get_running_loop()
    assert await loop.run_in_executor(None, cli, ["apply", *repo]) == 0
    capsys.readouterr()
    assert await loop.run_in_executor(None, cli, ["status", *repo]) == 0
    out = capsys.readouterr().out
    assert "activity (version" in out and "NOT written: run `featurestore materialize" in out
    assert f"server at 127.0.0.1:{port}: no answer (UNAVAILABLE)" in out

    assert await loop.run_in_executor(
        None, cli, ["materialize", "--end", "2026-01-01T12:02:30", *repo]) == 0
    cfg = config.load(root)
    fp = Manifest.load(cfg.manifest_path).views["activity"].fingerprint
    r = redis.Redis.from_url(redis_url)
    r.hset(layout.dropped_key("e2e", "activity", fp), mapping={
        layout.dropped_field("late", 0): 3, layout.dropped_field("invalid", 0): 1})
    r.hset(layout.deferred_key("e2e", "activity", fp), b"k\x00", b"1 0 x")
    server = await start_server(Manifest.load(cfg.manifest_path), redis_url, port=port)
    try:
        capsys.readouterr()
        assert await loop.run_in_executor(None, cli, ["status", *repo]) == 0
        out = capsys.readouterr().out
    finally:
        await server.stop(0)
    assert "materialized up to 2026-01-01 12:02:30Z" in out
    assert "the stream dropped 1 invalid, 3 late" in out
    assert "1 stream update(s) held until their time" in out
    assert f"server at 127.0.0.1:{port}: SERVING" in out and "not written" not in out
