"""Prometheus metrics of the streaming job (`featurestore stream --metrics-port N`).

The job's Python writers run in Flink's worker processes, on any machine of
a cluster; what they did is in Redis, in each view's counts hash
(`featurestore.layout.dropped_key`) and held updates hash. The endpoint runs
in the process that started the job and reads those at each scrape, so its
values are the job's own whatever its parallelism, and survive restarts of
the job (a restored job rewrites the counts of the hours it replays, whole):

    featurestore_stream_events_total{view}          events the view counted
    featurestore_stream_dropped_total{view,reason}  events and lines dropped, by reason
    featurestore_stream_held_updates{view}          updates held until their event is due
    featurestore_stream_lag_seconds{view}           scrape time minus the newest event counted
    featurestore_stream_redis_up                    1 when Redis answered this scrape

Every reason the job knows (`layout.STREAM_DROPS`) is exported, 0 until it
happens, so that a rate can be taken from the start. The lag is measured
against the newest event the view counted that was not ahead of the job's
clock: it grows when the job falls behind its sources, and also when the
producers stop sending.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

from featurestore import layout


@dataclass(frozen=True)
class ViewCounts:
    """What Redis holds of one view's stream: its counts and held updates."""
    counts: layout.StreamCounts
    held: int


Read = Callable[[], dict[str, ViewCounts]]


class StreamCollector:
    """Reads the views' counts from Redis at each scrape (`read`)."""

    def __init__(self, read: Read, clock: Callable[[], float] = time.time):
        self._read, self._clock = read, clock

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        from featurestore.redis_client import ERRORS

        up = GaugeMetricFamily("featurestore_stream_redis_up",
                               "1 when Redis answered the scrape's reads, else 0")
        try:
            views = self._read()
        except ERRORS:
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        now = self._clock()
        events = CounterMetricFamily("featurestore_stream_events",
                                     "events the view counted (its tiles or latest rows updated)",
                                     labels=["view"])
        dropped = CounterMetricFamily("featurestore_stream_dropped",
                                      "events the view dropped and lines of its source that "
                                      "could not be read, by reason", labels=["view", "reason"])
        held = GaugeMetricFamily("featurestore_stream_held_updates",
                                 "updates held until the clock reaches their newest event",
                                 labels=["view"])
        lag = GaugeMetricFamily("featurestore_stream_lag_seconds",
                                "scrape time minus the time of the newest event the view counted "
                                "(events ahead of the job's clock excluded)", labels=["view"])
        for view, v in sorted(views.items()):
            events.add_metric([view], v.counts.counted)
            for reason in sorted({*layout.STREAM_DROPS, *v.counts.dropped}):
                dropped.add_metric([view, reason], v.counts.dropped.get(reason, 0))
            held.add_metric([view], v.held)
            if v.counts.newest_us is not None:
                lag.add_metric([view], max(0.0, now - v.counts.newest_us / 1e6))
        yield from (up, events, dropped, held, lag)


def serve(read: Read, host: str, port: int):
    """Serve /metrics on host:port (0: a free port) in a thread; returns the
    HTTP server (`server_port`, `shutdown()`)."""
    from prometheus_client import CollectorRegistry, start_http_server

    registry = CollectorRegistry()
    registry.register(StreamCollector(read))
    http, _ = start_http_server(port, addr=host, registry=registry)
    return http
