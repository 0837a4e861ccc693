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
    (out / "featurestore.yaml").write_text(
        (out / "featurestore.yaml").read_text().replace(
            "  # url: redis://localhost:6379/0", f"  url: {redis_url}"))
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
