"""`featurestore import-feast` on Feast's own template repo (`feast init`,
`feast apply`), then check / apply / materialize / serve on the import:
the served values are the latest rows of Feast's generated data."""
from __future__ import annotations

import asyncio
import subprocess
from datetime import timedelta
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from featurestore import config
from featurestore.cli import main as cli
from featurestore.manifest import Manifest
from serving.client import FeatureClient
from serving.server import start_server
from tests.repos import use_redis

FEAST = str(Path(sys.executable).with_name("feast"))


@pytest.fixture(scope="module")
def feast_repo(tmp_path_factory):
    root = tmp_path_factory.mktemp("feast")
    subprocess.run([FEAST, "init", "demo"], cwd=root, check=True, capture_output=True)
    repo = root / "demo" / "feature_repo"
    subprocess.run([FEAST, "apply"], cwd=repo, check=True, capture_output=True)
    return repo


async def test_feast_init_repo_imports_and_serves(feast_repo, tmp_path, redis_url, capsys):
    out = tmp_path / "imported"
    assert cli(["import-feast", str(feast_repo), "--out", str(out)]) == 0
    report = capsys.readouterr().out
    assert "on-demand feature view 'transformed_conv_rate'" in report
    assert "feature driver_hourly_stats:driver_metadata: type Map" in report
    feat = (out / "features" / "demo.feat").read_text()
    assert "entity driver {\n    key driver_id: int64\n}" in feat
    assert "ttl 1d" in feat and "service driver_activity_v2 {" in feat
    use_redis(out, redis_url)
    repo = ["--repo", str(out)]
    assert cli(["check", "--data", *repo]) == 0
    assert cli(["apply", *repo]) == 0

    data = pq.read_table(feast_repo / "data" / "driver_stats.parquet").to_pylist()
    end = max(r["event_timestamp"] for r in data)
    assert cli(["materialize", "--end", end.isoformat(), *repo]) == 0
    latest = {}
    for r in sorted(data, key=lambda r: (r["event_timestamp"], r["created"])):
        latest[r["driver_id"]] = r
    drivers = sorted(latest)
    end_us = int(end.timestamp()) * 1_000_000

    cfg = config.load(out)
    server = await start_server(Manifest.load(cfg.manifest_path), redis_url, port=0,
                                clock=lambda: end_us)

    def get():
        with FeatureClient(server.address) as client:
            return client.get_online_features(service="driver_activity_v2",
                                              entities={"driver_id": drivers}).to_dict()
    try:
        got = await asyncio.get_running_loop().run_in_executor(None, get)
    finally:
        await server.stop(0)
    fresh = [d for d in drivers if latest[d]["event_timestamp"] > end - timedelta(days=1)]
    assert fresh
    for i, d in enumerate(drivers):
        if d not in fresh:
            continue
        row = latest[d]
        assert got["avg_daily_trips"][i] == row["avg_daily_trips"]
        assert got["conv_rate"][i] == pytest.approx(row["conv_rate"])
        assert got["driver_config"][i] == row["driver_config"]


def test_a_second_import_into_the_same_folder_is_refused(feast_repo, tmp_path, capsys):
    out = tmp_path / "imported"
    assert cli(["import-feast", str(feast_repo), "--out", str(out)]) == 0
    assert cli(["import-feast", str(feast_repo), "--out", str(out)]) == 1
    assert "already holds a feature repo" in capsys.readouterr().err
    assert cli(["import-feast", str(tmp_path), "--out", str(tmp_path / "x")]) == 1
    assert "is not a Feast repo" in capsys.readouterr().err


FEAST_DEFS = '''
from datetime import timedelta
from feast import Entity, FeatureService, FeatureView, Field, FileSource
from feast.types import Bool, Float64, Int64, String

user = Entity(name="user", join_keys=["user_id"], description="A shopper")
merchant = Entity(name="merchant", join_keys=["merchant_id"])
orders = FileSource(name="orders", path="data/orders.parquet", timestamp_field="ts")
shops = FileSource(name="shops", path="data/shops.parquet", timestamp_field="ts")
user_orders = FeatureView(name="user_orders", entities=[user], ttl=timedelta(days=2),
    schema=[Field(name="user_id", dtype=String), Field(name="amount", dtype=Float64),
            Field(name="items", dtype=Int64)], source=orders)
user_flags = FeatureView(name="user_flags", entities=[user], ttl=timedelta(hours=12),
    schema=[Field(name="user_id", dtype=String), Field(name="vip", dtype=Bool)], source=orders)
merchant_risk = FeatureView(name="merchant_risk", entities=[merchant], ttl=timedelta(days=30),
    schema=[Field(name="merchant_id", dtype=Int64), Field(name="score", dtype=Float64),
            Field(name="country", dtype=String)], source=shops)
checkout = FeatureService(name="checkout", features=[user_orders, merchant_risk[["score"]]])
flags = FeatureService(name="flags", features=[user_flags])
'''


def test_a_repo_with_several_views_and_services_round_trips(tmp_path, redis_url):
    import datetime as dt

    import pyarrow as pa

    repo = tmp_path / "feast_repo"
    (repo / "data").mkdir(parents=True)
    (repo / "feature_store.yaml").write_text(
        "project: checkout\nregistry: data/registry.db\nprovider: local\n"
        "online_store:\n  type: sqlite\n  path: data/online.db\n"
        "entity_key_serialization_version: 3\n")
    (repo / "definitions.py").write_text(FEAST_DEFS)
    t0 = dt.datetime(2026, 1, 10, 12, tzinfo=dt.timezone.utc)
    ts = pa.array([t0 - dt.timedelta(hours=h) for h in (1, 3, 30)], pa.timestamp("us", "UTC"))
    pq.write_table(pa.table({"user_id": ["a", "b", "a"], "amount": [10.5, 3.0, 99.0],
                             "items": [2, 1, 9], "vip": [True, False, False], "ts": ts}),
                   repo / "data" / "orders.parquet")
    pq.write_table(pa.table({"merchant_id": [7, 8, 7], "score": [0.1, 0.9, 0.5],
                             "country": ["DE", "FR", "DE"], "ts": ts}),
                   repo / "data" / "shops.parquet")
    subprocess.run([FEAST, "apply"], cwd=repo, check=True, capture_output=True)

    out = tmp_path / "imported"
    assert cli(["import-feast", str(repo), "--out", str(out)]) == 0
    feat = (out / "features" / "checkout.feat").read_text()
    assert "key user_id: string" in feat and "key merchant_id: int64" in feat
    assert "service checkout { user_orders.amount, user_orders.items, merchant_risk.score }" \
        in feat
    assert "ttl 12h" in feat and 'description "A shopper"' in feat
    use_redis(out, redis_url)
    args = ["--repo", str(out)]
    assert cli(["apply", *args]) == 0
    assert cli(["materialize", "--end", t0.isoformat(), *args]) == 0
    from featurestore.export import export
    from featurestore import repo as fs_repo

    plan = fs_repo.require_plan(config.load(out))
    labels = pa.table({"user_id": ["a", "b"], "merchant_id": [7, 8],
                       "event_timestamp": pa.array([t0, t0], pa.timestamp("us", "UTC"))})
    table = export(plan, out, labels, service="checkout").to_pylist()
    assert [(r["amount"], r["items"], r["score"]) for r in table] == [(10.5, 2, 0.1),
                                                                      (3.0, 1, 0.9)]
