"""The streaming engine against the batch engine and the brute-force
reference, on tests/differential.py's data (edges, NaN, huge and tiny
numbers, unicode, duplicate timestamps), through a real PyFlink job, a real
redis-server and the gRPC server:

* differential: the events, shuffled over files that Flink reads in no fixed
  order, plus events beyond every window, from the future, without a time
  and with a field of the wrong type, and lines that are not JSON objects
  (nested 2,000 deep among them) or not UTF-8; every served value equals
  batch's and the reference's, and every dropped event or line is counted
  by reason, every counted event too, and the job's /metrics says so;
* restart: more events (older ones among them) while the job is killed
  outright mid-stream; restarted, it restores its checkpoint and the values
  are still exact: nothing lost, nothing counted twice.

One job process serves the module (started once, killed and restarted once).
The wall clock matters to a stream (it decides what is too old): the data is
shifted so that the served time lies 25 to 30 minutes ahead of now.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from featurestore import layout, redis_local
from featurestore.export import export
from featurestore.materialize import materialize
from streaming import push
from tests import differential as d

ROOT_DIR = Path(__file__).resolve().parent.parent
WAIT_S = 150
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


def _shift() -> tuple[int, int]:
    """(shift of every event time, served time t): t is mid-tile, 35 to 40
    minutes before now (the job never serves an event before its time), and
    the shift keeps both views' tiles aligned."""
    base = d.T0 + d.SPAN + 150 * d.US + 30
    now = time.time_ns() // 1000
    k, rest = divmod(now - 40 * d.MIN - base, d.HOUR)
    j = -(-rest // d.TILE)
    k, j = (k + 1, 0) if j == d.HOUR // d.TILE else (k, j)
    return k * d.HOUR, base + k * d.HOUR + j * d.TILE


def _shifted(events: list[dict], shift: int) -> list[dict]:
    # Events of the first two hours would sit next to the rows' 2-day cut of
    # the job's clock: left out, so that what the job drops is known exactly.
    return [dict(e, ts=e["ts"] + shift,
                 paid_at=None if e["paid_at"] is None else e["paid_at"] + shift)
            for e in events if e["ts"] >= d.T0 + 2 * d.HOUR]


def _json_line(e: dict) -> str:
    """An event as push writes it (times ISO-8601, NaN and infinities quoted)."""
    return push.json_line({k: EPOCH + dt.timedelta(microseconds=v)
                           if k in ("ts", "paid_at") and v is not None else v
                           for k, v in e.items()})


def _write(folder: Path, name: str, lines: list[str | bytes]) -> None:
    tmp = folder / f".{name}.tmp"   # hidden until complete: Flink skips it
    tmp.write_bytes(b"".join((line if isinstance(line, bytes) else line.encode()) + b"\n"
                             for line in lines))
    os.replace(tmp, folder / name)


class Job:
    """The streaming job in a process group of its own."""

    def __init__(self, root: Path, url: str):
        self.root, self.url, self.proc, self.log = root, url, None, root / "job.log"
        with socket.socket() as s:   # the job's /metrics, the same port after a restart
            s.bind(("127.0.0.1", 0))
            self.metrics_port = s.getsockname()[1]

    def start(self) -> None:
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tests.streaming_runner", str(self.root), self.url,
                 str(self.metrics_port)],
                cwd=ROOT_DIR, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def kill(self) -> None:
        """SIGKILL to every process of the job: the JVM and the Python workers too."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def output(self) -> str:
        return self.log.read_text()

    def metrics(self) -> dict[tuple, float]:
        """(name, labels...) -> value of the job's /metrics ({} while it starts)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics",
                                        timeout=5) as response:
                text = response.read().decode()
        except OSError:
            return {}
        return {(m.name, *(m.labels[k] for k in ("view", "reason") if k in m.labels)): m.value
                for family in text_string_to_metric_families(text) for m in family.samples}


@dataclass
class Stream:
    root: Path
    url: str             # the redis-server, without a db: /0 the stream's, /1 batch's
    job: Job
    t: int               # the served time
    shift: int
    counted: list[dict]  # events any engine may count at t
    dropped: dict        # view -> reason -> events (or lines) the job must drop
    kept: dict           # view -> events the job must count


@pytest.fixture(scope="module")
def stream(tmp_path_factory):
    """The job running on the differential events, shuffled over six files,
    plus 25 events beyond every window of `buys`, 5 beyond the future it
    accepts, 4 ahead of its clock within it, 2 without a time and 7 with a
    field of the wrong type."""
    root = tmp_path_factory.mktemp("stream")
    server = redis_local.start(root / "redis")
    url = server.url.rsplit("/", 1)[0]
    shift, t = _shift()
    events = _shifted(d.generate_events(), shift)
    rng = random.Random(3)
    now = time.time_ns() // 1000
    beyond = [dict(e, ts=t - 3 * d.DAY, paid_at=None) for e in rng.sample(events, 25)]
    future = [dict(e, ts=now + 3 * d.HOUR) for e in rng.sample(events, 5)]
    # ahead of the job's clock, within what it accepts: held until their
    # time, so never served at t (before the fix the rows and current tiles
    # of these entities held them)
    ahead = [dict(e, user="ahead", shop=s, kind="buy", ts=now + 20 * d.MIN + i)
             for i, (e, s) in enumerate(zip(rng.sample(events, 4), (1, 1, 2, 2)))]
    lines = [_json_line(e) for e in events + beyond + future + ahead]
    lines += [json.dumps({"user": "u1", "shop": 1, "kind": "buy", "ts": None}),
              json.dumps({"user": "u2", "shop": 2, "kind": "buy", "ts": "yesterday"})]
    # Fields their declared type cannot hold, in events the views would
    # otherwise count: each is dropped as invalid, never stored as null,
    # truncated (2.5 for an int64) or guessed ("yes" for a bool).
    at = push.format_time(EPOCH + dt.timedelta(microseconds=t - d.MIN))
    mistyped = [{"qty": "lots"}, {"qty": 2.5}, {"amount": "abc"}, {"amount": True},
                {"flag": "yes"}, {"flag": 1}, {"shop": "two"}]
    lines += [json.dumps({"user": "u1", "shop": 1, "kind": "buy", "ts": at, **m})
              for m in mistyped]
    # Lines Flink's reader cannot use, counted for both views: not JSON
    # objects (deeper than its limit of 1,000 levels, too), not UTF-8.
    deep = "[" * 2000 + "]" * 2000
    unparsable = ["not json", "[1, 2]", '"buy"', "", '{"user": "u1", "shop": 1',
                  f'{{"user": "u1", "shop": 1, "kind": "buy", "ts": "{at}", "x": {deep}}}']
    invalid_utf8 = [f'{{"user": "u1", "shop": 1, "kind": "buy", "ts": "{at}"}}'.encode()
                    .replace(b'"u1"', b'"u\xff\xfe1"'), b'\xc3{"user": "u1"}']
    lines += unparsable + invalid_utf8
    # Lines it reads that a strict JSON test would refuse: a byte order mark,
    # a control character inside a string; and a U+FFFD that is UTF-8.
    odd = [dict(e, user=u) for e, u in zip(rng.sample(events, 3), ("bom", "ctl\x01", "r\ufffd"))]
    events += odd
    lines += ["\ufeff" + _json_line(odd[0]), _json_line(odd[1]).replace("\\u0001", "\x01"),
              _json_line(odd[2])]
    rng.shuffle(lines)
    folder = root / "data" / "events"
    folder.mkdir(parents=True)
    for i in range(6):
        _write(folder, f"part-{i}.json", lines[i::6])
    kept = sum(1 for e in future if e["kind"] != "test")
    invalid = 2 + len(mistyped)
    unread = {"unparsable": len(unparsable), "invalid_utf8": len(invalid_utf8)}
    dropped = {"buys": {"late": sum(1 for e in beyond if e["kind"] != "test"), "future": kept,
                        "invalid": invalid, **unread},
               "shops": {"future": kept, "invalid": invalid, **unread}}
    counts = {"buys": _passing(events + ahead), "shops": _passing(events + beyond + ahead)}
    dropped["nums"], counts["nums"] = dropped["buys"], counts["buys"]   # the same source and rules
    job = Job(root, url + "/0")
    job.start()
    try:
        yield Stream(root, url, job, t, shift, events + beyond + ahead, dropped, counts)
    finally:
        job.kill()
        server.stop()


def _passing(events: list[dict]) -> int:
    """How many of the events pass the views' filter (`kind != 'test'`)."""
    return sum(1 for e in events if e["kind"] is not None and e["kind"] != "test")


def _differences(got: dict, want: dict) -> list:
    return [(name, i, got[name][i], want[name][i]) for name in d.FEATURES
            for i in range(len(want[name])) if not d.same(got[name][i], want[name][i])]


def _batch_values(root: Path, url: str, events: list[dict], entities, t: int) -> dict:
    """What the batch engine serves at t for the same events (Redis db 1)."""
    d.write_events(root / "batch", events)
    redis.Redis.from_url(url + "/1").flushdb()
    materialize(d.PLAN, root / "batch", d.PROJECT, url + "/1", end_us=t)
    return d.served_at(url + "/1", entities, t)


def _wait_for(url: str, entities, t: int, want: dict, job: Job) -> dict:
    """Served values once they equal `want` (the job catches up), or the
    last ones after WAIT_S; fails at once if the job died."""
    end = time.monotonic() + WAIT_S
    while True:
        got = d.served_at(url + "/0", entities, t)
        if not _differences(got, want) or time.monotonic() > end:
            return got
        assert job.proc.poll() is None, f"the job died:\n{job.output()[-3000:]}"
        time.sleep(1)


def _check_reference(got: dict, events: list[dict], entities, t: int) -> None:
    bad = []
    for i, (user, shop) in enumerate(entities):
        want = d.expected(events, user, shop, t)
        for name in d.FEATURES:
            value = d.as_micros(got[name][i]) if name in d.TIMESTAMP_FEATURES else got[name][i]
            if not d.same(value, want[name]):
                bad.append((user, shop, name, value, want[name]))
    assert not bad, f"{len(bad)} differences from the reference, e.g. {bad[:5]}"


def _dropped(url: str) -> dict[str, dict[str, int]]:
    r = redis.Redis.from_url(url + "/0")
    return {v.name: layout.dropped_totals(r.hgetall(layout.dropped_key(d.PROJECT, v.name,
                                                                       v.fingerprint())))
            for v in d.PLAN.views}


def test_stream_equals_batch_and_reference(stream):
    entities = sorted({(e["user"], e["shop"]) for e in stream.counted}) + [("nobody", 7)]
    want = _batch_values(stream.root, stream.url, stream.counted, entities, stream.t)
    got = _wait_for(stream.url, entities, stream.t, want, stream.job)

    assert not _differences(got, want), _differences(got, want)[:5]
    d.check_served(lambda ents, at: d.served_at(stream.url + "/0", ents, at),
                   lambda labels: export(d.PLAN, stream.root / "batch", labels,
                                         service="everything"),
                   stream.counted, stream.t)
    _check_reference(got, stream.counted, entities, stream.t)
    _until(lambda: _dropped(stream.url) == stream.dropped, "dropped counts")
    assert _dropped(stream.url) == stream.dropped
    _check_metrics(stream, stream.kept, stream.counted)


def _check_metrics(stream: Stream, kept: dict, events: list[dict]) -> None:
    """The job's /metrics: per view the events counted, the drops by reason
    (every reason, 0 where none), the held updates and the lag."""
    _until(lambda: all(stream.job.metrics().get(("featurestore_stream_events_total", v)) == n
                       for v, n in kept.items()), "events counted in /metrics")
    now = time.time()
    metrics = stream.job.metrics()
    assert metrics[("featurestore_stream_redis_up",)] == 1
    for view, drops in stream.dropped.items():
        assert {r: metrics[("featurestore_stream_dropped_total", view, r)]
                for r in layout.STREAM_DROPS} == {r: drops.get(r, 0) for r in layout.STREAM_DROPS}
    assert metrics[("featurestore_stream_held_updates", "buys")] > 0   # the events ahead
    newest = max(e["ts"] for e in events if e["ts"] <= now * 1e6
                 and e["kind"] not in (None, "test")) / 1e6
    assert now - newest <= metrics[("featurestore_stream_lag_seconds", "buys")] <= time.time() - newest


def test_restart_mid_stream_loses_and_doubles_nothing(stream):
    events = _shifted(d.generate_events(seed=11, n=900), stream.shift)
    first, second, third = events[:300], events[300:600], events[600:]
    folder = stream.root / "data" / "events"
    checkpoints = stream.root / "checkpoints"

    for i, part in enumerate((first[::2], first[1::2])):
        _write(folder, f"more-a{i}.json", [_json_line(e) for e in part])
    written = time.time()
    _until(lambda: any(p.stat().st_mtime > written + 1
                       for p in checkpoints.glob("*/*/chk-*/_metadata")),
           "checkpoint after the first events")
    for i, part in enumerate((second[::2], second[1::2])):
        _write(folder, f"more-b{i}.json", [_json_line(e) for e in part])
    time.sleep(0.3)  # some of them read, none of them in a checkpoint
    stream.job.kill()
    for i, part in enumerate((third[::2], third[1::2])):  # while it is down; older ones too
        _write(folder, f"more-c{i}.json", [_json_line(e) for e in part])
    stream.job.start()

    everything = stream.counted + events
    entities = sorted({(e["user"], e["shop"]) for e in everything}) + [("nobody", 7)]
    want = _batch_values(stream.root, stream.url, everything, entities, stream.t)
    got = _wait_for(stream.url, entities, stream.t, want, stream.job)
    assert not _differences(got, want), _differences(got, want)[:5]
    _check_reference(got, everything, entities, stream.t)
    assert "restored from" in stream.job.output()
    assert _dropped(stream.url) == stream.dropped
    _check_metrics(stream, {view: n + _passing(events) for view, n in stream.kept.items()},
                   everything)


def _until(condition, what: str, timeout_s: float = WAIT_S) -> None:
    end = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < end, f"no {what} within {timeout_s} s"
        time.sleep(0.2)
