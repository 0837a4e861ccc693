"""The stream's /metrics endpoint (streaming.metrics) without Flink: what it
reads from a real Redis, as the job's writers leave it, and what it says
when Redis is away or the port is taken. tests/test_streaming.py scrapes it
from a running job."""
from __future__ import annotations

import socket
import time
import urllib.request

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from featurestore import layout
from featurestore.errors import ServiceError
from streaming.job import StreamJob, StreamOptions
from tests import differential as d
from tests.streaming_runner import STREAM_PLAN

HOUR = 3_600_000_000
NOW = 1_700_000_000_000_000   # in the past


def _scrape(port: int) -> dict[tuple, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {(m.name, *(m.labels[k] for k in ("view", "reason") if k in m.labels)): m.value
            for family in text_string_to_metric_families(text) for m in family.samples}


def _job(root, url: str, port: int = 0) -> StreamJob:
    return StreamJob(STREAM_PLAN, root, d.PROJECT, url, StreamOptions(metrics_port=port))


def test_metrics_are_the_counts_in_redis(tmp_path, redis_url):
    job = _job(tmp_path, redis_url)
    buys = next(s for s in job.job.sinks if s.name == "buys")
    r = redis.Redis.from_url(redis_url)
    r.hset(layout.dropped_key(d.PROJECT, "buys", buys.fingerprint), mapping={
        layout.dropped_field("counted", NOW - HOUR): 40, layout.dropped_field("counted", NOW): 2,
        layout.dropped_field("newest", NOW - HOUR): NOW - HOUR,
        layout.dropped_field("newest", NOW): NOW - 90_000_000,
        layout.dropped_field("late", NOW): 3, layout.dropped_field("unparsable", NOW): 1})
    r.hset(layout.deferred_key(d.PROJECT, "buys", buys.fingerprint), mapping={b"a": b"1"})
    http = job.serve_metrics()
    try:
        before = time.time()
        metrics = _scrape(http.server_port)
        after = time.time()
    finally:
        http.shutdown()
    assert metrics[("featurestore_stream_redis_up",)] == 1
    assert metrics[("featurestore_stream_events_total", "buys")] == 42
    assert metrics[("featurestore_stream_events_total", "shops")] == 0
    assert {r: metrics[("featurestore_stream_dropped_total", "buys", r)]
            for r in layout.STREAM_DROPS} == {"late": 3, "future": 0, "invalid": 0,
                                              "unparsable": 1, "invalid_utf8": 0}
    assert metrics[("featurestore_stream_held_updates", "buys")] == 1
    newest = (NOW - 90_000_000) / 1e6
    assert before - newest <= metrics[("featurestore_stream_lag_seconds", "buys")] <= after - newest
    assert ("featurestore_stream_lag_seconds", "shops") not in metrics  # nothing counted yet


def test_redis_away_is_a_metric_and_a_taken_port_an_error(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]    # nothing listens there once closed
    http = _job(tmp_path, f"redis://127.0.0.1:{closed}/0").serve_metrics()
    try:
        assert _scrape(http.server_port) == {("featurestore_stream_redis_up",): 0}
        with pytest.raises(ServiceError, match="cannot serve metrics on 127.0.0.1:"):
            _job(tmp_path, f"redis://127.0.0.1:{closed}/0", http.server_port).serve_metrics()
    finally:
        http.shutdown()
