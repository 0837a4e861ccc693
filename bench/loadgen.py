"""A closed-loop, multi-process load generator for gRPC and HTTP servers.

The client does the same work for every server: it sends pre-serialized
request bodies and reads raw response bytes, never building or parsing a
message while timed.

* gRPC: one channel (one TCP connection: a local subchannel pool) per
  connection, `channel.unary_unary(method, request_serializer=None,
  response_deserializer=None)`: bytes in, bytes out; a non-OK status raises.
* HTTP: one keep-alive `http.client.HTTPConnection` per connection, POSTing a
  pre-built JSON body; a status other than 200 counts as an error.

`LoadGen(processes)` spawns worker processes once; `run()` spreads C
connections over min(C, processes) of them (one thread per connection, each
with one request in flight), warms up, then counts the requests that complete
inside the timed interval [start, end] and their latencies. `on_start` and
`on_end` are called in the parent at the start and the end of that interval
(to read server CPU counters there).
"""
from __future__ import annotations

import http.client
import multiprocessing as mp
import threading
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

GRPC_OPTIONS = [("grpc.use_local_subchannel_pool", 1),  # a connection of its own
                ("grpc.max_receive_message_length", 256 * 1024 * 1024),
                ("grpc.max_send_message_length", 256 * 1024 * 1024)]


@dataclass(frozen=True)
class Target:
    kind: str          # "grpc" or "http"
    address: str       # host:port
    path: str          # gRPC method ("/pkg.Service/Method") or HTTP path
    timeout: float = 30.0


@dataclass
class Result:
    requests: int              # completed OK inside the timed interval
    errors: int                # failed inside the timed interval
    warmup_requests: int
    warmup_errors: int         # failed before it
    drain_errors: int          # failed after it (in flight when it ended)
    seconds: float             # length of the timed interval
    latencies_ns: np.ndarray   # of the OK requests inside the interval
    first_error: str | None

    @property
    def rps(self) -> float:
        return self.requests / self.seconds


def _connect(target: Target) -> tuple[Callable[[bytes], bytes], Callable[[], None]]:
    if target.kind == "grpc":
        import grpc

        channel = grpc.insecure_channel(target.address, options=GRPC_OPTIONS)
        try:
            grpc.channel_ready_future(channel).result(timeout=10)
        except grpc.FutureTimeoutError:
            pass  # the calls will fail and be counted
        stub = channel.unary_unary(target.path, request_serializer=None,
                                   response_deserializer=None)
        timeout = target.timeout

        def call(body: bytes) -> bytes:
            return stub(body, timeout=timeout)
        return call, channel.close

    host, port = target.address.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=target.timeout)
    headers = {"Content-Type": "application/json", "Connection": "keep-alive"}
    path = target.path

    def call(body: bytes) -> bytes:
        try:
            conn.request("POST", path, body, headers)
            resp = conn.getresponse()
            data = resp.read()
        except Exception:
            conn.close()  # the next request opens a fresh connection
            raise
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status}: {data[:300]!r}")
        return data
    return call, conn.close


def _describe(e: Exception) -> str:
    code, details = getattr(e, "code", None), getattr(e, "details", None)
    if callable(code) and callable(details):  # a grpc.RpcError
        return f"{code().name}: {details()}"[:300]
    return f"{type(e).__name__}: {e}"[:300]


def _connect_or_fail(target: Target):
    try:
        return _connect(target)
    except Exception as e:  # noqa: BLE001 - counted as errors by the calls
        def fail(body: bytes, e=e) -> bytes:
            raise e
        return fail, lambda: None


def _worker(pipe) -> None:
    """A load generator process: prepare connections, then run when told."""
    while True:
        job = pipe.recv()
        if job is None:
            return
        target, payloads, connections, seed = job
        calls = [_connect_or_fail(target) for _ in range(connections)]
        pipe.send("ready")
        start_ns, end_ns = pipe.recv()
        out = [None] * connections

        def loop(i: int) -> None:
            call = calls[i][0]
            n = len(payloads)
            j = (seed * 7919 + i * 104_729) % n
            lat: list[int] = []
            errors = warm = warm_errors = drain_errors = 0
            first = None
            while True:
                t0 = time.monotonic_ns()
                if t0 >= end_ns:
                    break
                ok = True
                try:
                    call(payloads[j])
                except Exception as e:  # noqa: BLE001 - every failure counts
                    ok = False
                    if first is None:
                        first = _describe(e)
                t1 = time.monotonic_ns()
                j = j + 1 if j + 1 < n else 0
                if start_ns <= t1 <= end_ns:
                    if ok:
                        lat.append(t1 - t0)
                    else:
                        errors += 1
                elif t1 < start_ns:
                    warm += 1
                    warm_errors += not ok
                else:
                    drain_errors += not ok
            out[i] = (lat, errors, warm, warm_errors, first, drain_errors)

        threads = [threading.Thread(target=loop, args=(i,)) for i in range(connections)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for _, close in calls:
            close()
        lat = np.fromiter((x for o in out for x in o[0]), dtype=np.int64)
        first = next((o[4] for o in out if o[4]), None)
        pipe.send((lat, sum(o[1] for o in out), sum(o[2] for o in out),
                   sum(o[3] for o in out), first, sum(o[5] for o in out)))


class LoadGen:
    """`processes` worker processes, spawned once and reused for every run."""

    def __init__(self, processes: int = 2):
        ctx = mp.get_context("spawn")  # no inherited gRPC state
        self._pipes, self._procs = [], []
        for _ in range(processes):
            parent, child = ctx.Pipe()
            p = ctx.Process(target=_worker, args=(child,), daemon=True)
            p.start()
            self._pipes.append(parent)
            self._procs.append(p)

    def run(self, target: Target, payloads: Sequence[bytes], concurrency: int,
            seconds: float, warmup: float,
            on_start: Callable[[], None] | None = None,
            on_end: Callable[[], None] | None = None) -> Result:
        n = min(concurrency, len(self._pipes))
        shares = [concurrency // n + (i < concurrency % n) for i in range(n)]
        pipes = self._pipes[:n]
        for i, (pipe, c) in enumerate(zip(pipes, shares)):
            pipe.send((target, list(payloads), c, i))
        for pipe in pipes:
            pipe.recv()  # connections are up
        start = time.monotonic_ns() + int(warmup * 1e9)
        end = start + int(seconds * 1e9)
        for pipe in pipes:
            pipe.send((start, end))
        _sleep_until(start)
        if on_start:
            on_start()
        _sleep_until(end)
        if on_end:
            on_end()
        parts = [pipe.recv() for pipe in pipes]
        return Result(requests=sum(len(p[0]) for p in parts), errors=sum(p[1] for p in parts),
                      warmup_requests=sum(p[2] for p in parts),
                      warmup_errors=sum(p[3] for p in parts),
                      drain_errors=sum(p[5] for p in parts), seconds=seconds,
                      latencies_ns=np.concatenate([p[0] for p in parts]),
                      first_error=next((p[4] for p in parts if p[4]), None))

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._procs]

    def close(self) -> None:
        for pipe in self._pipes:
            try:
                pipe.send(None)
            except OSError:
                pass
        for p in self._procs:
            p.join(5)
            if p.is_alive():
                p.kill()

    def __enter__(self) -> "LoadGen":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _sleep_until(t_ns: int) -> None:
    while True:
        left = (t_ns - time.monotonic_ns()) / 1e9
        if left <= 0:
            return
        time.sleep(min(left, 0.05) if left > 0.002 else 0)
