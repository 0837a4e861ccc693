"""The differential tests of the batch engine (see tests/differential.py):

* the export equals the brute-force reference on a data set full of edges;
* values served through gRPC right after `materialize`, at a known time,
  equal the export for labels at that time, for every aggregation.
"""
from __future__ import annotations

import pytest

from featurestore.export import export
from featurestore.materialize import materialize
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


@pytest.mark.parametrize("end, at", [
    (d.T0 + d.DAY + 7 * d.MIN + 30 * d.US,) * 2,     # mid-tile
    (d.T0 + 2 * d.DAY,) * 2,                         # a tile's first instant
    # served later than materialized: rows past their ttl, then past their
    # key's life (2 x ttl), windows emptying; then every key of the ttl view gone
    (d.T0 + 2 * d.DAY, d.T0 + 3 * d.DAY + 5 * d.HOUR + 7 * d.US),
    (d.T0 + 2 * d.DAY, d.T0 + 5 * d.DAY),
])
def test_served_after_materialize_equals_export(data, redis_url, end, at):
    root, events = data
    materialize(d.PLAN, root, d.PROJECT, redis_url, end_us=end)

    def served(entities, t):
        return d.served_at(redis_url, entities, t)

    d.check_served(served, lambda labels: export(d.PLAN, root, labels, service="everything"),
                   events, at)
