"""Feast's Python SDK reading our store: `FeatureStore(".featurestore/feast")`
over a repo applied and materialized by featurestore returns what
FeatureClient gets from the server, row-level and window features alike;
`get_historical_features` names `featurestore export`; the Feast config
holds only relative paths, so the repo can move."""
from __future__ import annotations

import asyncio
import math
import shutil

import pytest

from featurestore import config
from featurestore.cli import main as cli
from featurestore.manifest import Manifest
from serving.client import FeatureClient
from serving.server import start_server
from tests.repos import template_repo, use_redis

FEATURES = ["user_spend:purchases_1h", "user_spend:spend_1h", "user_spend:purchases_1d",
            "user_spend:spend_1d", "user_spend:avg_amount_1d", "user_spend:max_amount_1d",
            "user_spend:big_1d", "user_spend:last_category", "user_profile:country",
            "user_profile:age"]


@pytest.fixture(scope="module")
def shop_data(tmp_path_factory):
    return template_repo(tmp_path_factory.mktemp("shop") / "shop", "--events", "5000",
                         "--days", "2", "--users", "300")


@pytest.fixture
def shop(shop_data, tmp_path, redis_url):
    root = tmp_path / "shop"
    shutil.copytree(shop_data, root)
    use_redis(root, redis_url)
    assert cli(["apply", "--repo", str(root)]) == 0
    assert cli(["materialize", "--repo", str(root)]) == 0
    return root


def _feast(root, users):
    from feast import FeatureStore

    store = FeatureStore(repo_path=str(root / ".featurestore" / "feast"))
    return store, store.get_online_features(
        features=FEATURES, entity_rows=[{"user_id": u} for u in users])


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    return a == b


async def test_feast_sdk_reads_what_the_server_serves(shop, redis_url):
    users = ["user_000000", "user_000001", "user_000042", "user_000299", "nobody"]
    cfg = config.load(shop)
    server = await start_server(Manifest.load(cfg.manifest_path), redis_url, port=0)
    loop = asyncio.get_running_loop()
    try:
        def ours():
            with FeatureClient(server.address) as client:
                return client.get_online_features(FEATURES, entities={"user_id": users})
        served = await loop.run_in_executor(None, ours)
        store, feast = await loop.run_in_executor(None, _feast, shop, users)
    finally:
        await server.stop(0)
    got, want = feast.to_dict(), served.to_dict()
    assert got["user_id"] == users
    for ref in FEATURES:
        name = ref.split(":")[1]
        assert all(_same(a, b) for a, b in zip(got[name], want[name])), (name, got[name],
                                                                          want[name])
    assert want["purchases_1d"][0] > 0 and want["country"][0] is not None   # real data
    assert got["purchases_1d"][-1] == 0 and got["country"][-1] is None      # nobody

    import pandas as pd

    with pytest.raises(NotImplementedError, match="featurestore export"):
        store.get_historical_features(
            entity_df=pd.DataFrame({"user_id": ["user_000001"],
                                    "event_timestamp": [pd.Timestamp.now(tz="UTC")]}),
            features=["user_spend:spend_1d"]).to_df()


def test_the_feast_config_moves_with_the_repo(shop, tmp_path):
    text = (shop / ".featurestore" / "feast" / "feature_store.yaml").read_text()
    assert str(tmp_path) not in text            # no absolute path
    moved = tmp_path / "elsewhere"
    shutil.move(str(shop), moved)
    _, feast = _feast(moved, ["user_000001"])
    assert feast.to_dict()["purchases_1d"][0] is not None


async def test_feasts_remote_online_store_reads_our_http_api(shop, redis_url, tmp_path):
    """Feast's own HTTP client (`online_store: type: remote`) against
    `featurestore serve`'s Feast HTTP API."""
    from serving.server import ServerOptions

    users = ["user_000000", "user_000001", "user_000042", "nobody"]
    cfg = config.load(shop)
    server = await start_server(Manifest.load(cfg.manifest_path), redis_url, port=0,
                                options=ServerOptions(http_port=0))
    client_repo = tmp_path / "feast_client"
    client_repo.mkdir()
    (client_repo / "feature_store.yaml").write_text(
        f"project: {cfg.project}\nregistry: {cfg.registry}\nprovider: local\n"
        f"online_store:\n  type: remote\n  path: http://127.0.0.1:{server.http_port}\n"
        "entity_key_serialization_version: 3\n")
    loop = asyncio.get_running_loop()

    def remote():
        from feast import FeatureStore

        return FeatureStore(repo_path=str(client_repo)).get_online_features(
            features=FEATURES, entity_rows=[{"user_id": u} for u in users]).to_dict()

    def ours():
        with FeatureClient(server.address) as client:
            return client.get_online_features(FEATURES, entities={"user_id": users}).to_dict()
    try:
        got = await loop.run_in_executor(None, remote)
        want = await loop.run_in_executor(None, ours)
    finally:
        await server.stop(0)
    for ref in FEATURES:
        name = ref.split(":")[1]
        assert all(_same(a, b) for a, b in zip(got[name], want[name])), (name, got[name],
                                                                          want[name])
    assert want["purchases_1d"][0] > 0
