"""The quickstart: every stage of the product, end to end, on generated data.

init -> generate data -> check -> apply -> materialize (DuckDB -> Redis)
-> gRPC server -> lookups through the Python client -> shut down.
"""
from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

from featurestore import config, redis_local, repo
from featurestore.errors import UserError


class _Step:
    def __init__(self, say: Callable[[str], None]):
        self.say, self.t0, self.times = say, time.perf_counter(), []

    def __call__(self, title: str) -> None:
        self.say(f"\n== {title}")
        self.times.append((title, time.perf_counter()))


def _server_thread(manifest_path: Path, store):
    """Start the gRPC server on a free port in a thread of its own."""
    from featurestore.manifest import Manifest
    from serving.server import start_server

    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, name="grpc-server", daemon=True).start()
    coro = start_server(Manifest.load(manifest_path), store, host="127.0.0.1", port=0)
    server = asyncio.run_coroutine_threadsafe(coro, loop).result(timeout=30)

    def stop() -> None:
        asyncio.run_coroutine_threadsafe(server.stop(0), loop).result(timeout=30)
        loop.call_soon_threadsafe(loop.stop)

    return server, stop


def _sample_users(cfg: config.RepoConfig) -> list[str]:
    """The three most active users, the least active one, and one unknown."""
    import duckdb

    path = str(cfg.root / "data" / "purchases" / "*.parquet")
    rows = duckdb.sql(f"SELECT user_id, count(*) n FROM read_parquet('{path}') "
                      "GROUP BY ALL ORDER BY n DESC, user_id").fetchall()
    return [r[0] for r in rows[:3]] + [rows[-1][0], "user_unknown"]


def run(dir: Path, events: int, say: Callable[[str], None]) -> None:
    step = _Step(say)
    dir = dir.resolve()
    step(f"feature repo in {dir}")
    if not (dir / config.CONFIG_FILE).exists():
        repo.init(dir, say)
    else:
        say("using the existing repo")
    cfg = config.load(dir)

    step(f"generating {events:,} purchase events")
    subprocess.run([sys.executable, str(dir / "generate_data.py"), "--events", str(events)],
                   check=True)

    # a stream view for the last step (streaming/quickstart.py); skipped without PyFlink
    from streaming.quickstart import add_live_view

    live = add_live_view(dir)

    step("featurestore check")
    plan = repo.require_plan(cfg)
    say(f"ok: {len(plan.views)} views, {sum(len(v.feature_names) for v in plan.views)} features, "
        f"services: {', '.join(s.name for s in plan.services)}")

    step("featurestore apply")
    say(repo.apply(cfg, plan, say).render("Applied"))

    local = None
    store = cfg.redis_target
    if store is None:
        try:
            local = redis_local.start(cfg.state_dir / "quickstart-redis")
        except redis_local.RedisNotInstalled as e:
            raise UserError(str(e)) from None
        store = local.url
        say(f"no online_store.url configured: started a private redis-server on {store}")
    try:
        _serve_and_lookup(cfg, plan, store, step, say, live)
    finally:
        if local:
            local.stop()
            say("stopped the private redis-server")
    total = time.perf_counter() - step.t0
    say(f"\nquickstart finished in {total:.1f} s")


def _serve_and_lookup(cfg, plan, store, step: _Step, say, live: bool = False) -> None:
    from featurestore.materialize import materialize
    from serving.client import FeatureClient
    from streaming.quickstart import LiveJob, show_live_update

    live_job = LiveJob(plan, cfg.root, cfg.project, store) if live else None  # starts meanwhile

    step("featurestore materialize (DuckDB -> Redis)")
    from featurestore.cli import view_progress

    stats = materialize(plan, cfg.root, cfg.project, store, memory_limit=cfg.memory_limit,
                        progress=lambda st: say(view_progress(st)))
    say(f"done in {stats.seconds:.2f} s")

    step("featurestore serve (gRPC)")
    server, stop = _server_thread(cfg.manifest_path, store)
    say(f"listening on 127.0.0.1:{server.port}")
    try:
        users = _sample_users(cfg)
        service = plan.services[0].name
        step(f"featurestore get --service {service} (Python client, {len(users)} users)")
        with FeatureClient(f"127.0.0.1:{server.port}") as client:
            result = client.get_online_features(service=service, entities={"user_id": users})
        import pandas as pd

        with pd.option_context("display.max_columns", None, "display.width", 250,
                               "display.float_format", "{:.2f}".format):
            say(result.to_pandas().to_string(index=False))
        if live_job:
            step("featurestore stream, then featurestore push (PyFlink -> Redis -> gRPC)")
            with FeatureClient(f"127.0.0.1:{server.port}") as client:
                show_live_update(live_job, plan, cfg.root, client, users[0], say)
    finally:
        if live_job:
            live_job.stop()
            say("stream job stopped")
        stop()
        say("server stopped")
