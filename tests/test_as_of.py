"""`as_of`: a request for the values at a past time gets exactly what export
computes for labels at that time, for every aggregation of the differential
plan; row-level features whose latest row is newer are NOT_FOUND; times
the online store cannot answer are INVALID_ARGUMENT, naming why."""
from __future__ import annotations


import grpc
import pytest

from featurestore import windows
from featurestore.backends.serving_manifest import manifest_from_plan
from featurestore.export import export
from featurestore.materialize import materialize
from serving.client import FeatureClient, FieldStatus
from tests import differential as d

MIN, HOUR = d.MIN, d.HOUR
END = d.T0 + d.SPAN - 20 * HOUR + 40 * MIN + 3 * d.US   # 40 minutes into an hour
ROW_FEATURES = {f.name for v in d.PLAN.views for f in v.row_features}


def _lookups(redis_url: str, entities, asks) -> list:
    """OnlineFeatures (or the RpcError) of each `as_of` in `asks`, from a
    server whose clock says END."""
    def ask_all(address):
        results = []
        with FeatureClient(address) as client:
            for as_of in asks:
                try:
                    results.append(client.get_online_features(
                        service="everything", as_of=as_of,
                        entities={"user": [u for u, _ in entities],
                                  "shop": [s for _, s in entities]}))
                except grpc.RpcError as e:
                    results.append(e)
        return results
    return d.with_server(manifest_from_plan(d.PLAN, d.PROJECT), redis_url, END, ask_all)


@pytest.fixture(scope="module")
def answers(tmp_path_factory, redis_server):
    import redis
    redis.Redis.from_url(redis_server).flushall()
    root = tmp_path_factory.mktemp("as_of")
    events = d.generate_events(seed=31, n=1500)
    events += [dict(e, ts=END - k * 7 * MIN, kind="buy") for k, e in enumerate(events[:8])]
    d.write_events(root, events)
    materialize(d.PLAN, root, d.PROJECT, redis_server, end_us=END)
    entities = sorted({(e["user"], e["shop"]) for e in events}) + [("nobody", 7)]
    asks = [END - 1, END - 17 * MIN - 5, END - 31 * MIN, END, None]
    return root, entities, asks, _lookups(redis_server, entities, asks)


def test_as_of_serves_what_export_computes_at_that_time(answers):
    root, entities, asks, results = answers
    checked_rows = 0
    for as_of, got in zip(asks, results):
        t = got.served_at
        # buys has 5-minute tiles, shops 1-hour ones: the last instant ending both
        assert t == (END if as_of is None else windows.as_of_instant(as_of, [d.TILE, HOUR]))
        exported = export(d.PLAN, root, d.labels_table([
            {"user": u, "shop": s, "event_timestamp": t, "label": 0, "weight": 0.0, "note": None}
            for u, s in entities]), service="everything").to_pylist()
        values, statuses, times = got.to_dict(), got.statuses, got.event_timestamps
        mismatches = []
        for i, ((user, shop), row) in enumerate(zip(entities, exported)):
            for name in d.FEATURES:
                served, want = values[name][i], row[name]
                if name in d.TIMESTAMP_FEATURES:
                    served, want = d.as_micros(served), d.as_micros(want)
                if name in ROW_FEATURES and statuses[name][i] == FieldStatus.NOT_FOUND \
                        and want is not None:
                    # the latest row is newer than t: served NOT_FOUND, as documented
                    assert times[name][i] == 0
                    checked_rows += 1
                    continue
                if not d.same(served, want):
                    mismatches.append((as_of, user, shop, name, served, want))
        assert not mismatches, f"{len(mismatches)} mismatches, e.g. {mismatches[:5]}"
    assert checked_rows > 0   # some rows were newer than an as_of


def test_responses_say_how_fresh_each_view_is(answers):
    _, _, asks, results = answers
    got = results[asks.index(None)]   # now
    assert set(got.freshness) == {"buys", "shops", "nums"}
    newest, age = got.freshness["buys"]
    assert newest == END and age == 0            # a recent row was written at END
    assert got.freshness["shops"][0] == END
    past = results[asks.index(END)]    # as of END: answered at the hour's end before it
    assert past.served_at < END and all(newest <= past.served_at and age >= 0
                                        for newest, age in past.freshness.values())


def test_times_the_store_cannot_answer_are_invalid_argument(redis_url):
    entities = [("u1", 1)]
    too_old, future, rounded_too_far = END - HOUR - 1, END + 1, END - 45 * MIN
    results = _lookups(redis_url, entities, [too_old, future, rounded_too_far])
    for e, words in zip(results, ["holds no older tiles", "is in the future",
                                  "holds no older tiles"]):
        assert isinstance(e, grpc.RpcError) and e.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert words in e.details()
