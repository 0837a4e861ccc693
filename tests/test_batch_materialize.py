"""Materialization modes against a real Redis: incremental runs continue from
the watermark and end where a full run ends, range runs merge the tiles they
touch, every mode is idempotent, keys expire with the view's ttl and
retention, and Redis' refusals surface."""
from __future__ import annotations

import pytest
import redis

from featurestore import layout, materialize as mat, windows
from featurestore.errors import ServiceError
from featurestore.materialize import materialize, plan_run
from tests import differential as d

E1 = d.T0 + d.DAY + 2 * d.MIN + 7          # mid-tile
E2 = d.T0 + d.DAY + 5 * d.HOUR + 30 * d.US  # later: some tiles fell out of the 1d ttl


def _dump(url: str) -> dict:
    r = redis.Redis.from_url(url)
    out = {}
    for k in r.keys("*"):
        out[k] = r.hgetall(k) if r.type(k) == b"hash" else r.get(k)
    return out


def _write(root, events):
    for f in (root / "data" / "events").glob("*.parquet") if (root / "data").exists() else ():
        f.unlink()
    d.write_events(root, events)


@pytest.fixture
def events():
    return d.generate_events(seed=21, n=1200)


def _stale(key: bytes, value, end: int) -> bool:
    """A key a run at `end` would not write: its rows are past 2 * ttl."""
    if not key.endswith(b":r") or not (b":buys:" in key or b":nums:" in key):
        return False   # (both views have a ttl of a day)
    return layout.decode_row(value)[0] + 2 * d.BUYS.ttl_us <= end


def test_incremental_run_ends_where_a_full_run_ends(tmp_path, redis_url, events):
    _write(tmp_path, [e for e in events if e["ts"] <= E1])
    first = materialize(d.PLAN, tmp_path, d.PROJECT, redis_url, end_us=E1, incremental=True)
    assert [v.mode for v in first.views] == ["full"] * len(d.PLAN.views)   # no watermark yet
    _write(tmp_path, events)                                    # later events arrive
    second = materialize(d.PLAN, tmp_path, d.PROJECT, redis_url, end_us=E2, incremental=True)
    assert [v.mode for v in second.views] == ["incremental"] * len(d.PLAN.views)
    assert second.views[0].start_us == E1 + 1 and second.views[0].pruned > 0
    incremental = _dump(redis_url)

    redis.Redis.from_url(redis_url).flushall()
    materialize(d.PLAN, tmp_path, d.PROJECT, redis_url, end_us=E2)
    full = _dump(redis_url)
    assert {k: v for k, v in incremental.items() if not _stale(k, v, E2)} == full


def test_incremental_run_serves_what_export_computes(tmp_path, redis_url, events):
    from featurestore.export import export

    _write(tmp_path, [e for e in events if e["ts"] <= E1])
    materialize(d.PLAN, tmp_path, d.PROJECT, redis_url, end_us=E1)
    _write(tmp_path, events)
    materialize(d.PLAN, tmp_path, d.PROJECT, redis_url, end_us=E2, incremental=True)
    d.check_served(lambda entities, t: d.served_at(redis_url, entities, t),
                   lambda labels: export(d.PLAN, tmp_path, labels, service="everything"),
                   events, E2)


def test_every_mode_is_idempotent(tmp_path, redis_url, events):
    _write(tmp_path, events)
    for kwargs in ({"end_us": E1}, {"end_us": E2, "incremental": True},
                   {"end_us": E2, "start_us": E1 - d.HOUR}):
        materialize(d.PLAN, tmp_path, d.PROJECT, redis_url, **kwargs)
        before = _dump(redis_url)
        again = materialize(d.PLAN, tmp_path, d.PROJECT, redis_url, **kwargs)
        assert _dump(redis_url) == before, kwargs
    assert [v.mode for v in again.views] == ["range"] * len(d.PLAN.views)
    up_to_date = materialize(d.PLAN, tmp_path, d.PROJECT, redis_url, end_us=E2, incremental=True)
    assert [v.mode for v in up_to_date.views] == ["up to date"] * len(d.PLAN.views)


def test_range_run_recomputes_whole_tiles_and_keeps_older_ones(tmp_path, redis_url, events):
    _write(tmp_path, events)
    materialize(d.PLAN, tmp_path, d.PROJECT, redis_url, end_us=E2)
    full = _dump(redis_url)
    r = redis.Redis.from_url(redis_url)
    for key in r.keys("*:t"):  # a crash lost every tile after E1, and the rollups of them
        for field in r.hkeys(key):
            size, start = layout.parse_tile_field(field)
            if start + (size or d.TILE) > E1:
                r.hdel(key, field)
    stats = materialize(d.PLAN, tmp_path, d.PROJECT, redis_url, end_us=E2, start_us=E1)
    assert stats.views[0].mode == "range"
    assert _dump(redis_url) == full


def test_watermark_moves_only_over_contiguous_runs():
    view = d.BUYS
    assert plan_run(view, None, E1, True, None).watermark == E1
    run = plan_run(view, None, E2, True, E1)
    assert (run.mode, run.start_us, run.watermark) == ("incremental", E1 + 1, E2)
    assert run.tiles_from == E1 - E1 % d.HOUR   # the tile of E1 and its hour rollup, whole
    kept = d.DAY + windows.AS_OF_HORIZON_US   # the longest window, and as_of's horizon
    assert run.prune == (E1 - E1 % d.TILE - kept, E2 - E2 % d.TILE - kept)
    assert plan_run(view, E1 + d.HOUR, E2, False, E1).watermark == E1  # a gap: unchanged
    assert plan_run(view, E1 - d.HOUR, E2, False, E1).watermark == E2
    assert plan_run(view, E1 - d.HOUR, E1 - 1, False, E2).watermark == E2  # a backfill


def test_keys_expire_with_ttl_and_retention(tmp_path, redis_url, events):
    _write(tmp_path, events)
    materialize(d.PLAN, tmp_path, d.PROJECT, redis_url, end_us=E2)
    r = redis.Redis.from_url(redis_url)
    fp = d.BUYS.fingerprint()
    checked = 0
    for key in r.keys(f"{layout.PREFIX}:{d.PROJECT}:buys:{fp}:*:r"):
        left = layout.decode_row(r.get(key))[0] + 2 * d.BUYS.ttl_us - E2
        assert left // 1000 - 5000 <= r.pttl(key) <= left // 1000
        checked += 1
    for key in r.keys(f"{layout.PREFIX}:{d.PROJECT}:buys:{fp}:*:t"):
        starts = [layout.parse_tile_field(f)[1] for f in r.hkeys(key)]
        newest = max(starts)
        left = newest + d.DAY + windows.AS_OF_HORIZON_US + 2 * d.TILE - E2
        assert left // 1000 - 5000 <= r.pttl(key) <= left // 1000
        assert min(starts) >= E2 - E2 % d.TILE - d.DAY - windows.AS_OF_HORIZON_US
        checked += 1
    shops = r.keys(f"{layout.PREFIX}:{d.PROJECT}:shops:*")  # no ttl: kept
    assert checked >= 20 and shops and all(r.pttl(k) == -1 for k in shops)
    watermark = r.get(layout.watermark_key(d.PROJECT, "buys", fp))
    assert layout.decode_watermark(watermark) == E2


def test_many_batches_reach_redis(tmp_path, redis_url, events, monkeypatch):
    monkeypatch.setattr(mat, "BATCH_ROWS", 7)
    _write(tmp_path, events)
    stats = materialize(d.PLAN, tmp_path, d.PROJECT, redis_url, end_us=E2)
    r = redis.Redis.from_url(redis_url)
    assert len(r.keys("*:t")) == sum(v.entities for v in stats.views) > 7
    assert stats.views[1].tiles == sum(r.hlen(k) for k in r.keys(f"{layout.PREFIX}:*:shops:*:t"))


def test_a_refused_command_is_raised_with_its_reason(tmp_path, redis_url, events):
    _write(tmp_path, events)
    key = layout.tiles_key(d.PROJECT, "shops", d.SHOP_VIEW.fingerprint(),
                           layout.encode_entity_key(["u1", 1]))
    redis.Redis.from_url(redis_url).set(key, "not a hash")
    with pytest.raises(ServiceError, match="refused a write while materializing view 'shops': "
                                           ".*WRONGTYPE"):
        materialize(d.PLAN, tmp_path, d.PROJECT, redis_url, end_us=E2, start_us=E1)


def test_stream_views_are_left_to_the_streaming_job(tmp_path, redis_url, events):
    import dataclasses

    from featurestore.errors import UserError

    _write(tmp_path, events)
    stream = dataclasses.replace(d.PLAN.sources[0], name="clicks", kind="stream", format="files")
    view = dataclasses.replace(d.SHOP_VIEW, name="clicks", source="clicks")
    plan = dataclasses.replace(d.PLAN, sources=(*d.PLAN.sources, stream),
                               views=(*d.PLAN.views, view))
    stats = materialize(plan, tmp_path, d.PROJECT, redis_url, end_us=E2)
    assert [v.mode for v in stats.views] == ["full"] * len(d.PLAN.views) + ["stream (skipped)"]
    with pytest.raises(UserError, match="'clicks' reads a stream"):
        materialize(plan, tmp_path, d.PROJECT, redis_url, end_us=E2, views=["clicks"])


def test_cli_materializes_incrementally(tmp_path, redis_url, capsys):
    from featurestore.cli import main as cli
    from tests.test_export import FEATURES

    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "features").mkdir()
    (tmp_path / "features" / "f.feat").write_text(FEATURES)
    (tmp_path / "featurestore.yaml").write_text(f"project: cli\nonline_store:\n  url: {redis_url}\n")
    (tmp_path / "data").mkdir()
    pq.write_table(pa.table({"user_id": ["a", "b"], "amount": [1.0, 2.0],
                             "ts": pa.array([d.T0, d.T0 + d.MIN], pa.timestamp("us", "UTC"))}),
                   tmp_path / "data" / "buys.parquet")
    repo = ["--repo", str(tmp_path)]
    assert cli(["apply", *repo]) == 0
    run = ["materialize", *repo, "--incremental", "--end", "2026-01-10T01:00:00"]
    assert cli(run) == 0 and "spend (full)" in capsys.readouterr().out
    assert cli(run) == 0 and "spend (up to date)" in capsys.readouterr().out
    assert cli([*run, "--start", "2026-01-10T00:00:00"]) == 1
    assert "--start or --incremental" in capsys.readouterr().err
