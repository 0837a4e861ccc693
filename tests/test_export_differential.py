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


@pytest.mark.parametrize("end, at", [
    (d.T0 + 2 * d.DAY,) * 2,
    (d.T0 + 2 * d.DAY, d.T0 + 2 * d.DAY + 20 * d.HOUR),
    (d.T0 + 2 * d.DAY, d.T0 + 3 * d.DAY + 5 * d.HOUR + 7 * d.US),
    (d.T0 + 2 * d.DAY, d.T0 + 5 * d.DAY),
])
def test_exported_statuses_are_the_served_ones(data, redis_url, end, at):
    """`export(statuses=True)`: per view with row-level features, the status
    the server gives them at t, including rows past the ttl and past their
    key's life, and entities never seen."""
    from featurestore.backends.serving_manifest import manifest_from_plan
    from serving.client import FeatureClient, FieldStatus

    root, events = data
    materialize(d.PLAN, root, d.PROJECT, redis_url, end_us=end)
    entities = sorted({(e["user"], e["shop"]) for e in events}) + [("nobody", 7)]

    def statuses(address):
        with FeatureClient(address) as client:
            got = client.get_online_features(
                features=["buys:buys_last_amount", "shops:shops_last_amount"],
                entities={"user": [u for u, _ in entities], "shop": [s for _, s in entities]})
            return {view: [FieldStatus(s).name for s in got.statuses[f"{view}_last_amount"]]
                    for view in ("buys", "shops")}

    served = d.with_server(manifest_from_plan(d.PLAN, d.PROJECT), redis_url, at, statuses)
    labels = d.labels_table([{"user": u, "shop": s, "event_timestamp": at, "label": 0,
                              "weight": 0.0, "note": None} for u, s in entities])
    table = export(d.PLAN, root, labels, features=["buys:buys_last_amount",
                                                   "shops:shops_last_amount"], statuses=True)
    for view in ("buys", "shops"):
        exported = table[f"{view}__status"].to_pylist()
        # a null value that is PRESENT online is NULL_VALUE: the export's
        # value column says so; the status column is the row's
        online = ["PRESENT" if s == "NULL_VALUE" else s for s in served[view]]
        assert exported == online, view
    kinds = set(served["buys"]) - {"NULL_VALUE"}
    assert "NOT_FOUND" in kinds   # ("nobody")
    assert kinds == {"NOT_FOUND"} if at - end > 2 * d.DAY else \
        "OUTSIDE_MAX_AGE" in kinds if at - end > d.DAY else "PRESENT" in kinds
