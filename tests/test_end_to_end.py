"""From a .feat file to values read through gRPC, checked against a brute-force
computation over the raw events written by the test itself.

The served time t is fixed, and events sit on both sides of every window
boundary, so a window off by one tile (or one microsecond) fails the test.
"""
from __future__ import annotations

import datetime as dt
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from featurestore import config, repo
from featurestore.cli import main as cli
from featurestore.manifest import Manifest
from featurestore.materialize import materialize
from serving.client import FeatureClient
from serving.server import start_server

US = 1_000_000
MIN = 60 * US
HOUR = 60 * MIN
DAY = 24 * HOUR
T = int(dt.datetime(2026, 1, 1, 12, 2, 30, tzinfo=dt.timezone.utc).timestamp()) * US
TILE = 5 * MIN

FEATURES = """
entity user { key user_id: string }

source events {
    batch parquet "data/events/*.parquet"
    timestamp ts
    schema { user_id: string, amount: float64, kind: string, ts: timestamp }
}

view activity {
    entity user
    from events where kind != "test"
    tile 5m
    ttl 1d
    features {
        n_10m     = count()                       over 10m
        n_1h      = count()                       over 1h
        spend_1h  = sum(amount)                   over 1h
        big_1h    = count() where amount >= 100   over 1h
        n_all     = count()
        last_amount = amount
    }
}

service scoring { activity.* }
"""


def _boundary_events() -> list[tuple]:
    """Events on both sides of each window edge for user 'edge'."""
    floor_t = T - T % TILE                  # 12:00:00
    return [
        ("edge", 1.0, "buy", floor_t - HOUR),            # first instant of the 1h window: in
        ("edge", 2.0, "buy", floor_t - HOUR - 1),        # one microsecond before: out
        ("edge", 4.0, "buy", floor_t - HOUR - TILE),     # one tile before: out
        ("edge", 8.0, "buy", floor_t - 10 * MIN),        # first instant of the 10m window: in
        ("edge", 16.0, "buy", floor_t - 10 * MIN - 1),   # out of 10m, in 1h
        ("edge", 32.0, "buy", T),                        # at t: in
        ("edge", 64.0, "buy", T + 1),                    # after t: never seen
        ("edge", 500.0, "test", T - MIN),                # filtered out by the view
        ("edge", 128.0, "buy", floor_t - DAY),           # in the ttl window (n_all): in
        ("edge", 256.0, "buy", floor_t - DAY - 1),       # out of every window
    ]


def _events(seed: int = 11) -> list[tuple]:
    rng = random.Random(seed)
    rows = _boundary_events()
    for i in range(400):
        user = f"u{rng.randrange(30)}"
        amount = rng.choice([None, round(rng.uniform(-50, 300), 2)])
        rows.append((user, amount, rng.choice(["buy", "buy", "test"]), T - rng.randrange(2 * DAY)))
    rows.append(("stale", 5.0, "buy", T - 3 * DAY))     # only event older than the ttl
    rng.shuffle(rows)
    return rows


def _expected(events: list[tuple], user: str) -> dict:
    """Brute force over raw events: DESIGN.md's sawtooth window, written plainly."""
    rows = [e for e in events if e[0] == user and e[2] != "test" and e[3] <= T]
    floor_t = (T // TILE) * TILE

    def window(w):
        return [e for e in rows if floor_t - w <= e[3] <= T]

    def total(es):
        vals = [e[1] for e in es if e[1] is not None]
        return sum(vals) if vals else None

    latest = max(rows, key=lambda e: e[3]) if rows else None
    fresh = latest is not None and latest[3] > T - DAY
    return {
        "n_10m": len(window(10 * MIN)),
        "n_1h": len(window(HOUR)),
        "spend_1h": total(window(HOUR)),
        "big_1h": sum(1 for e in window(HOUR) if e[1] is not None and e[1] >= 100),
        "n_all": len(window(DAY)),
        "last_amount": latest[1] if fresh else None,
    }


@pytest.fixture
def feature_repo(tmp_path, redis_url):
    (tmp_path / "features").mkdir()
    (tmp_path / "features" / "activity.feat").write_text(FEATURES)
    (tmp_path / "featurestore.yaml").write_text(
        f"project: e2e\nonline_store:\n  url: {redis_url}\n")
    events = _events()
    folder = tmp_path / "data" / "events"
    folder.mkdir(parents=True)
    half = len(events) // 2
    for i, part in enumerate((events[:half], events[half:])):
        pq.write_table(pa.table({
            "user_id": [e[0] for e in part],
            "amount": pa.array([e[1] for e in part], pa.float64()),
            "kind": [e[2] for e in part],
            "ts": pa.array([e[3] for e in part], pa.int64()).cast(pa.timestamp("us", "UTC")),
        }), folder / f"part-{i}.parquet")
    return tmp_path, events


async def test_feat_file_to_grpc_matches_brute_force(feature_repo, redis_url):
    root, events = feature_repo
    assert cli(["apply", "--repo", str(root)]) == 0
    cfg = config.load(root)
    plan = repo.require_plan(cfg)
    materialize(plan, root, cfg.project, redis_url, end_us=T)

    server = await start_server(Manifest.load(cfg.manifest_path), redis_url, port=0,
                                clock=lambda: T)
    users = ["edge", "stale", "nobody"] + [f"u{i}" for i in range(30)]
    try:
        with FeatureClient(f"127.0.0.1:{server.port}") as client:
            got = await _in_thread(lambda: client.get_online_features(
                service="scoring", entities={"user_id": users}).to_dict())
    finally:
        await server.stop(0)

    assert got["user_id"] == users
    for i, user in enumerate(users):
        # "nobody" and "stale" have nothing within reach: counts 0, the rest null
        want = _expected(events, user)
        for name, value in want.items():
            assert got[name][i] == pytest.approx(value), (user, name)

    nobody = users.index("nobody")
    assert [got[name][nobody] for name in ("n_1h", "spend_1h", "last_amount")] == [0, None, None]
    edge = users.index("edge")
    assert (got["n_10m"][edge], got["n_1h"][edge], got["n_all"][edge]) == (2, 4, 7)
    assert got["spend_1h"][edge] == pytest.approx(1 + 8 + 16 + 32)
    assert got["last_amount"][edge] == 32.0


async def _in_thread(fn):
    import asyncio

    return await asyncio.get_running_loop().run_in_executor(None, fn)
