"""The differential tests of the batch engine (see tests/differential.py):

* the export equals the brute-force reference on a data set full of edges;
* values served through gRPC right after `materialize`, at a known time,
  equal the export for labels at that time, for every aggregation.
"""
from __future__ import annotations

import asyncio
import threading

import pytest

from featurestore.backends.serving_manifest import manifest_from_plan
from featurestore.export import export
from featurestore.materialize import materialize
from serving.client import FeatureClient
from serving.server import start_server
from tests import differential as d


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("differential")
    events = d.generate_events()
    d.write_events(root, events)
    return root, events


def test_export_equals_brute_force_reference(data):
    root, events = data
    labels = d.generate_labels(events)
    table = export(d.PLAN, root, d.labels_table(labels), service="everything")
    d.check_export(table, labels, events)


@pytest.mark.parametrize("at", [d.T0 + d.DAY + 7 * d.MIN + 30 * d.US,   # mid-tile
                                d.T0 + 2 * d.DAY])                       # a tile's first instant
def test_served_after_materialize_equals_export(data, redis_url, at):
    root, events = data
    materialize(d.PLAN, root, d.PROJECT, redis_url, end_us=at)

    def served(entities, t):
        return _serve_and_get(redis_url, entities, t)

    d.check_served(served, lambda labels: export(d.PLAN, root, labels, service="everything"),
                   events, at)


def _serve_and_get(redis_url: str, entities, t: int) -> dict[str, list]:
    """Start the gRPC server with its clock at t, look every entity up."""
    result: dict = {}

    async def run():
        server = await start_server(manifest_from_plan(d.PLAN, d.PROJECT), redis_url, port=0,
                                    clock=lambda: t)
        try:
            loop = asyncio.get_running_loop()
            result.update(await loop.run_in_executor(None, _lookup, server.address, entities))
        finally:
            await server.stop(None)

    thread = threading.Thread(target=lambda: asyncio.run(run()))
    thread.start()
    thread.join()
    return result


def _lookup(address: str, entities) -> dict[str, list]:
    with FeatureClient(address) as client:
        got = client.get_online_features(
            service="everything",
            entities={"user": [u for u, _ in entities], "shop": [s for _, s in entities]})
        return got.to_dict()
