"""The online serving server: `ServingService` over Redis, on grpc.aio.

Besides ServingService it serves grpc health checking (SERVING while Redis
answers, NOT_SERVING while it does not) and server reflection, so `grpcurl`
and load balancers work without the proto files.

It imports the manifest, the Redis layout, tiles, redis and grpc, and nothing
of the compiler (lark), DuckDB, PyFlink or Feast: a server starts in well under
a second and its image stays small.

    featurestore serve            # the CLI, which calls `serve`
    python -m serving.server --manifest PATH --redis redis://HOST:6379/0 [--workers N]
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import gc
import logging
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import grpc
from grpc_health.v1 import health as grpc_health
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from featurestore import config, layout, redis_client
from featurestore.manifest import Manifest
from featurestore.errors import ServiceError
from serving import auth, feast_api, interceptors, logs, lookup
from serving.versions import Versions
from serving.v1 import serving_pb2, serving_pb2_grpc

log = logging.getLogger("featurestore.serving")

SERVICE_NAME = serving_pb2.DESCRIPTOR.services_by_name["ServingService"].full_name
_DEFAULTS = config.Serving()   # the one home of every serving default
DEFAULT_PORT = _DEFAULTS.port  # Feast's serving port: what users' configs already say
SHUTDOWN_GRACE_S = 5.0
PROBE_INTERVAL_S = 2.0

# Redis must answer a whole lookup within READ_TIMEOUT_S (or the client's
# deadline, when sooner), so a client gets UNAVAILABLE in about a second rather
# than waiting out its deadline. One timer per lookup, not a socket timeout per
# command: those cost a third of the read time of a large pipeline. The timer
# also runs while the event loop is busy with other lookups, so when it fires
# a PING on a socket of its own (timed by the kernel, in a thread) tells an
# outage (UNAVAILABLE, health NOT_SERVING) from a busy server (the read goes
# on, within the client's deadline; health unchanged). One retry on a fresh connection
# covers connections that died while idle (a restarted Redis). Options in the
# Redis URL's query string override these.
READ_TIMEOUT_S = 1.0
PING_TIMEOUT_S = 1.0
REDIS_OPTIONS: dict[str, Any] = {
    "socket_connect_timeout": 0.5,
    "socket_timeout": None,
}
_UNAVAILABLE = (RedisConnectionError, RedisTimeoutError, OSError)
# Lookups with more values than this (entity rows x features) are answered on
# a thread, so that merging tiles for a large request never holds the event
# loop that answers the small ones; smaller ones are cheaper answered inline.
INLINE_VALUES = 2_000


@dataclass(frozen=True)
class ServerOptions:
    """Production settings of a server (featurestore.yaml `serving:` section).

    api_keys          callers must send one of these as `x-api-key` metadata
                      (each the key or sha256:<hex>; none and no file: no
                      auth); health checks stay open (`serving.auth`)
    api_keys_file     YAML of hashed keys with allow-lists, re-read when it
                      changes and on SIGHUP
    tls_cert/tls_key  PEM files: serve TLS instead of plaintext
    tls_client_ca     PEM: mutual TLS, clients need a certificate it signed
    http_port         Feast's HTTP API (`serving.http_api`) on this port (0: a
                      free one; None: off)
    log_format        "text" or "json" (`serving.logs`)
    access_log        one log line per call
    metrics_port      Prometheus /metrics on this port (0: a free one; None: off)
    max_request_bytes larger requests are refused by gRPC (RESOURCE_EXHAUSTED)
    max_entities      more entity rows in one request get INVALID_ARGUMENT
    max_pending_rows  entity rows a worker holds at once (read or being
                      answered); a request beyond them gets RESOURCE_EXHAUSTED
                      (one request alone is always taken)
    redis_connections Redis connections per worker; more lookups wait for one
    reload_interval   seconds between checks of the manifest file and of the
                      view versions Redis holds (`serving.versions`)
    """
    api_keys: tuple[str, ...] = ()
    api_keys_file: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None
    http_port: int | None = None
    log_format: str = _DEFAULTS.log_format
    access_log: bool = _DEFAULTS.access_log
    metrics_port: int | None = None
    max_request_bytes: int = _DEFAULTS.max_request_bytes
    max_entities: int = _DEFAULTS.max_entities
    max_pending_rows: int = _DEFAULTS.max_pending_rows
    redis_connections: int = _DEFAULTS.redis_connections
    reload_interval: float = _DEFAULTS.reload_interval

    @classmethod
    def from_config(cls, cfg: config.RepoConfig, metrics_port: int | None = None
                    ) -> "ServerOptions":
        """The options `featurestore.yaml`'s serving section sets
        (`metrics_port`, when given, overrides it)."""
        s = cfg.serving
        def path(p):
            return str(cfg.path(p)) if p else None

        return cls(api_keys=s.api_keys, api_keys_file=path(s.api_keys_file),
                   tls_cert=path(s.tls_cert), tls_key=path(s.tls_key),
                   tls_client_ca=path(s.tls_client_ca), http_port=s.http_port,
                   log_format=s.log_format, access_log=s.access_log,
                   metrics_port=s.metrics_port if metrics_port is None else metrics_port,
                   max_request_bytes=s.max_request_bytes, max_entities=s.max_entities,
                   max_pending_rows=s.max_pending_rows,
                   redis_connections=s.redis_connections, reload_interval=s.reload_interval)


class StoreUnavailable(RuntimeError):
    """Redis did not answer."""


class LookupFailed(Exception):
    """A lookup answered with a status code other than OK, and why."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code, self.message = code, message


Clock = Callable[[], int]


def wall_clock_us() -> int:
    """Now, in microseconds since the Unix epoch."""
    return time.time_ns() // 1000


class OnlineStore:
    """The server's Redis: reads views' state and tells health whether Redis
    answers. One node or a Sentinel's master: every lookup is one pipelined
    round trip on one connection. A cluster: one pipeline per master
    holding any of the lookup's keys (an entity's keys share a slot), sent
    at once (`redis_client.AsyncCluster`)."""

    def __init__(self, project: str, store: redis_client.RedisTarget | str,
                 health: grpc_health.aio.HealthServicer,
                 connections: int = ServerOptions.redis_connections):
        self._project = project
        self._target = redis_client.target(store)
        self._cluster = redis_client.AsyncCluster(self._target, **REDIS_OPTIONS) \
            if self._target.cluster else None
        self._redis = None if self._cluster else redis_client.async_client(self._target,
                                                                           **REDIS_OPTIONS)
        # PINGs that decide health run on a thread with a socket timeout, so
        # that only Redis' silence counts, never the event loop's own work
        self._pinger = None if self._cluster else redis_client.sync_client(
            self._target, socket_timeout=PING_TIMEOUT_S, socket_connect_timeout=PING_TIMEOUT_S)
        self._ping_thread = ThreadPoolExecutor(1, thread_name_prefix="redis-ping")
        self._slots = asyncio.Semaphore(connections)  # bounds the connection pool
        self._health = health
        self._up: bool | None = None
        self.location = self._target.describe()
        self.timed = None   # a Prometheus histogram of round trips, when metrics are on

    async def read(self, prepared: lookup.Prepared,
                   time_left: float | None = None) -> list[tuple[list, list | None]]:
        """For each view of `prepared`: the rows and (when needed) the tiles
        of its entities, read in one pipelined round trip (per cluster master).

        Raises StoreUnavailable when Redis does not answer within
        READ_TIMEOUT_S (or a cluster's slots still move after one retry),
        and TimeoutError when `time_left` (the caller's deadline, in
        seconds) runs out first. A read that takes longer while Redis
        answers PINGs (the server is busy, not Redis) goes on."""
        loop = asyncio.get_running_loop()
        deadline = None if time_left is None else loop.time() + time_left
        async with _within(self._slots, time_left):
            watch = _ReadWatch(self, None if deadline is None else deadline - loop.time())
            try:
                replies = await self._execute(list(lookup.commands(self._project, prepared)),
                                              timed=True)
            except asyncio.CancelledError:
                if watch.outcome is None:   # cancelled from outside: the call went away
                    raise
                asyncio.current_task().uncancel()
                if watch.outcome == _DEADLINE:  # an OSError, not Redis' fault
                    raise asyncio.TimeoutError from None
                await self.report(f"no answer within {READ_TIMEOUT_S} s")
                raise StoreUnavailable(f"the online store (Redis at {self.location}) did not "
                                       f"answer within {READ_TIMEOUT_S} s") from None
            except _UNAVAILABLE as e:
                await self.report(e)
                raise StoreUnavailable(f"the online store (Redis at {self.location}) "
                                       f"is unavailable: {e}") from None
            finally:
                watch.stop()
        if self._up is not True and self._cluster is None:
            # (on a cluster a read that succeeds shows only that the masters
            # it needed answer: the probe, which PINGs every one, decides)
            await self.report(None)
        return lookup.split_replies(prepared, replies)

    async def exists(self, keys) -> list[bool]:
        """Which of `keys` Redis holds (raises when it does not answer)."""
        async with self._slots:
            replies = await asyncio.wait_for(self._execute([(b"EXISTS", k) for k in keys]),
                                             READ_TIMEOUT_S)
        return [bool(n) for n in replies]

    async def _execute(self, commands: list[tuple], timed: bool = False) -> list:
        """The replies of `commands`, in order (the keys of one command
        share a slot); `timed`: a lookup's, observed by the metrics."""
        started = time.perf_counter()
        if self._cluster is not None:
            replies = await self._cluster.execute(commands)
        else:
            replies = await redis_client.round_trip_async(self._redis.connection_pool, commands)
        if timed and self.timed is not None:
            self.timed.observe(time.perf_counter() - started)
        return replies

    async def answers(self) -> bool:
        """Whether Redis (on a cluster: every master) answers a PING within
        PING_TIMEOUT_S, timed by the kernel on a thread: a busy event loop
        does not make Redis look down."""
        ping = (functools.partial(self._cluster.ping_masters, PING_TIMEOUT_S) if self._cluster
                else self._pinger.ping)
        try:
            await asyncio.get_running_loop().run_in_executor(self._ping_thread, ping)
        except redis_client.ERRORS:
            return False
        return True

    async def probe(self) -> None:
        """Ping Redis and report the outcome to health."""
        await self.report(None if await self.answers() else "no answer to PING")

    async def watch(self, interval: float) -> None:
        """Probe forever, so health follows Redis even while no requests come."""
        while True:
            await asyncio.sleep(interval)
            await self.probe()

    async def report(self, error: BaseException | str | None) -> None:
        """Record whether Redis answered; log and update health on a change only."""
        up, was_up = error is None, self._up
        if up == was_up:
            return
        self._up = up
        if up:
            if was_up is not None:  # at start, the "serving" line says enough
                log.info("Redis at %s answers again", self.location)
        else:
            log.warning("Redis at %s does not answer (%s); reporting NOT_SERVING until it does",
                        self.location, error)
        status = health_pb2.HealthCheckResponse.SERVING if up else \
            health_pb2.HealthCheckResponse.NOT_SERVING
        for service in (grpc_health.OVERALL_HEALTH, SERVICE_NAME):
            await self._health.set(service, status)

    async def close(self) -> None:
        if self._cluster is not None:
            await self._cluster.close()
        else:
            await self._redis.aclose()
            self._pinger.close()
        self._ping_thread.shutdown(wait=False)


_DEADLINE, _SILENT = "deadline", "silent"


class _ReadWatch:
    """Watches the read of the current task, with timers instead of a task
    of its own (a lookup's read costs no more than its round trip): at the
    caller's deadline it cancels the read (outcome _DEADLINE); every
    READ_TIMEOUT_S it asks whether Redis answers a PING and cancels the
    read only when it does not (outcome _SILENT). A read that takes longer
    while Redis answers (the server is busy, not Redis) goes on."""

    def __init__(self, store: "OnlineStore", time_left: float | None):
        loop = asyncio.get_running_loop()
        self.outcome: str | None = None
        self._store, self._loop, self._task = store, loop, asyncio.current_task()
        self._probe: asyncio.Task | None = None
        self._timers = [loop.call_later(READ_TIMEOUT_S, self._ask)]
        if time_left is not None:
            self._timers.append(loop.call_later(max(0.0, time_left), self._end, _DEADLINE))

    def _end(self, outcome: str) -> None:
        if self.outcome is None:
            self.outcome = outcome
            self._task.cancel()

    def _ask(self) -> None:
        self._probe = self._loop.create_task(self._answers())

    async def _answers(self) -> None:
        if await self._store.answers():
            log.debug("a read took over %s s while Redis answers: the server is busy",
                      READ_TIMEOUT_S)
            self._timers.append(self._loop.call_later(READ_TIMEOUT_S, self._ask))
        else:
            self._end(_SILENT)

    def stop(self) -> None:
        for timer in self._timers:
            timer.cancel()
        if self._probe is not None:
            self._probe.cancel()


@contextlib.asynccontextmanager
async def _within(semaphore: asyncio.Semaphore, time_left: float | None):
    """Hold `semaphore`, waiting at most `time_left` seconds (TimeoutError).
    A free one is taken at once: `wait_for` would make a task of every wait."""
    if semaphore.locked():
        await asyncio.wait_for(semaphore.acquire(), time_left)
    else:
        await semaphore.acquire()
    try:
        yield
    finally:
        semaphore.release()


class FeatureServicer(serving_pb2_grpc.ServingServiceServicer):
    """ServingService: validates with `serving.lookup`, reads the `OnlineStore`,
    and maps failures to status codes."""

    def __init__(self, manifest: Manifest | Versions, store: OnlineStore,
                 clock: Clock = wall_clock_us,
                 max_entities: int = ServerOptions.max_entities,
                 max_pending_rows: int = ServerOptions.max_pending_rows):
        self.versions = manifest if isinstance(manifest, Versions) else Versions(manifest)
        self.metrics: _Metrics | None = None
        self.health = None    # health servicer: `view:<name>` follows `written`
        self._store = store
        self._clock = clock
        self._max_entities = max_entities
        self._max_pending = max_pending_rows
        self._pending = 0   # entity rows admitted and not yet answered
        # one thread: merging is CPU work under the GIL, a second would not
        # add throughput, only contention with the event loop
        self._merger = ThreadPoolExecutor(1, thread_name_prefix="merge")

    async def GetOnlineFeatures(self, request: serving_pb2.GetOnlineFeaturesRequest,
                                context: grpc.aio.ServicerContext
                                ) -> serving_pb2.GetOnlineFeaturesResponse:
        try:
            # The client's deadline bounds the Redis read: none outlives its RPC.
            return await self.lookup(request, context.time_remaining())
        except LookupFailed as e:
            await context.abort(e.code, e.message)

    async def lookup(self, request: serving_pb2.GetOnlineFeaturesRequest,
                     time_left: float | None = None) -> serving_pb2.GetOnlineFeaturesResponse:
        """Answer one request within `time_left` seconds (None: no deadline),
        for every API of the server (ours, Feast's gRPC and HTTP); raises
        LookupFailed with the status code and message to answer instead."""
        try:
            prepared = lookup.prepare(self.versions.resolver, request, self._clock())
        except lookup.BadRequest as e:
            raise LookupFailed(grpc.StatusCode.INVALID_ARGUMENT, str(e)) from None
        rows = prepared.rows
        if rows > self._max_entities:
            raise LookupFailed(grpc.StatusCode.INVALID_ARGUMENT,
                               f"{rows} entity rows in one request; this server "
                               f"takes at most {self._max_entities}: split the request")
        if self._pending and self._pending + rows > self._max_pending:
            raise LookupFailed(grpc.StatusCode.RESOURCE_EXHAUSTED,
                               f"this server is busy ({self._pending} entity rows in progress, "
                               f"at most {self._max_pending}): retry with backoff")
        self._pending += rows
        try:
            replies = await self._read(prepared, time_left)
            if rows * len(prepared.features) <= INLINE_VALUES:
                response = lookup.respond(prepared, replies)
            else:
                response = await asyncio.get_running_loop().run_in_executor(
                    self._merger, lookup.respond, prepared, replies)
            if prepared.problems:
                self._report(prepared.problems)
            if self.metrics is not None:
                self.metrics.observe(prepared, response)
            return response
        except lookup.CorruptState as e:
            log.error("%s", e)
            if self.metrics is not None:
                self.metrics.corrupt.labels(e.view).inc()
            raise LookupFailed(grpc.StatusCode.INTERNAL, str(e)) from None
        finally:
            self._pending -= rows

    def _report(self, problems: list) -> None:
        """State that could not be decoded: its entities' values were served
        INVALID (the others were served); logged, and counted per view."""
        for problem in problems[:3]:
            log.error("%s (served INVALID)", problem)
        if len(problems) > 3:
            log.error("... and %d more entities whose state could not be decoded",
                      len(problems) - 3)
        if self.metrics is not None:
            for problem in problems:
                self.metrics.corrupt.labels(problem.view).inc()

    def views_of(self, service: str) -> set[str] | None:
        """The views a feature service reads (None: no such service)."""
        refs = self.versions.manifest.services.get(service)
        return None if refs is None else {view for view, _ in refs}

    async def watch_versions(self, interval: float) -> None:
        """Pick up applied changes and newly written view versions, every
        `interval` seconds (`serving.versions`)."""
        while True:
            await asyncio.sleep(interval)
            await self.refresh_versions()

    async def refresh_versions(self) -> None:
        before = self.versions.unwritten
        try:
            await self.versions.refresh(self._store.exists)
        except (RedisError, OSError, asyncio.TimeoutError) as e:
            log.debug("could not check which view versions Redis holds: %s", e)
            return
        after = self.versions.unwritten
        if after == before:
            return
        for name in sorted(after - (before or set())):
            log.warning("view %r: Redis at %s holds no materialization of the version served "
                        "(an empty Redis, or not the one materialized?): its lookups are "
                        "NOT_FOUND until `featurestore materialize` (or the stream) writes it",
                        name, self._store.location)
        for name in sorted((before or set()) - after):
            log.info("view %r: Redis holds its materialization", name)
        for name in self.versions.manifest.views:
            if self.health is not None:
                await self.health.set(f"view:{name}", health_pb2.HealthCheckResponse.NOT_SERVING
                                      if name in after else health_pb2.HealthCheckResponse.SERVING)
            if self.metrics is not None:
                self.metrics.written.labels(name).set(0 if name in after else 1)

    async def _read(self, prepared: lookup.Prepared, time_left: float | None):
        try:
            return await self._store.read(prepared, time_left)
        except asyncio.TimeoutError:
            raise LookupFailed(grpc.StatusCode.DEADLINE_EXCEEDED,
                               "the deadline passed while reading the online store") from None
        except StoreUnavailable as e:
            raise LookupFailed(grpc.StatusCode.UNAVAILABLE, str(e)) from None
        except RedisError as e:
            log.error("Redis failed a lookup: %s", e)
            raise LookupFailed(grpc.StatusCode.INTERNAL, f"the online store failed: {e}") from None

    def close(self) -> None:
        self._merger.shutdown(wait=False)


class RunningServer:
    """A started server: where it listens, and how to stop it."""

    def __init__(self, server: grpc.aio.Server, host: str, port: int, store: OnlineStore,
                 servicer: FeatureServicer, health: grpc_health.aio.HealthServicer,
                 tasks: list[asyncio.Task], keys: auth.KeyRing,
                 metrics: "_Metrics | None" = None, http: tuple | None = None):
        self.port = port
        self._servicer = servicer
        self.address = _host_port(host, port)
        self.location = store.location   # the online store, passwords masked
        self.metrics_port = metrics.port if metrics else None
        self._metrics = metrics
        self._server = server
        self._store = store
        self._health = health
        self._tasks = tasks
        self.keys = keys
        self._http = http   # (uvicorn server, its task, its port) or None
        self.http_port = http[2] if http else None

    async def stop(self, grace: float | None = None) -> None:
        """Report NOT_SERVING, refuse new RPCs, give in-flight ones `grace`
        seconds (None: cancel them now), then close the Redis connections."""
        await self._health.enter_graceful_shutdown()
        for task in self._tasks:
            task.cancel()
        if self._http:
            http_server, task, _ = self._http
            http_server.should_exit = True
            await task
        await self._server.stop(grace)
        self._servicer.close()
        await self._store.close()
        if self._metrics:
            self._metrics.close()

    async def wait_for_termination(self) -> None:
        await self._server.wait_for_termination()


class _Metrics:
    """A Prometheus registry of one server and the HTTP endpoint that exposes
    it; `port` None: no endpoint (a worker of `serving.workers`, whose
    parent exports every worker's metrics)."""

    def __init__(self, host: str, port: int | None):
        from prometheus_client import (CollectorRegistry, Counter, Gauge, Histogram,
                                       start_http_server)

        self.registry = CollectorRegistry()
        self.interceptor = interceptors.MetricsInterceptor(self.registry)
        self.corrupt = Counter("featurestore_corrupt_values",
                               "state in Redis the server cannot decode: per entity served "
                               "INVALID (or a lookup failed INTERNAL)", ["view"],
                               registry=self.registry)
        self.written = Gauge("featurestore_view_written",
                             "1 when Redis holds a materialization of the view version served, "
                             "0 when it holds none (an empty or another Redis)", ["view"],
                             registry=self.registry, multiprocess_mode="max")
        self.age = Histogram("featurestore_served_age_seconds",
                             "per response and view: the age of the newest event behind "
                             "its values", ["view"], registry=self.registry,
                             buckets=(1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 86400, 7 * 86400))
        self.statuses = Counter("featurestore_served_entities",
                                "entity rows served per view, by the status of the view's "
                                "values (its row features, else its windows)",
                                ["view", "status"], registry=self.registry)
        self.redis_seconds = Histogram(
            "featurestore_redis_seconds", "one lookup's pipelined round trip to Redis",
            buckets=(.0002, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, 1),
            registry=self.registry)
        self._http = None
        if port is not None:
            self._http, _ = start_http_server(port, addr=host, registry=self.registry)
        self.port = self._http.server_port if self._http else None

    def observe(self, prepared: lookup.Prepared, response) -> None:
        """Freshness and statuses of one response, per view."""
        for fresh in response.metadata.freshness:
            if fresh.newest_event:
                self.age.labels(fresh.view).observe(fresh.age / 1e6)
        first = len(prepared.entity_names)
        seen = set()
        for i, f in enumerate(prepared.features):
            if f.view.name in seen or (f.spec.function is not None and f.view.row_features):
                continue   # one column per view: a row feature where it has one
            if f.spec.function in ("count", "count_distinct"):
                continue   # a count is a value for every entity: it tells nothing
            seen.add(f.view.name)
            statuses = list(response.results[first + i].statuses)
            for status, name in ((serving_pb2.NOT_FOUND, "NOT_FOUND"),
                                 (serving_pb2.OUTSIDE_MAX_AGE, "OUTSIDE_MAX_AGE")):
                n = statuses.count(status)
                if n:
                    self.statuses.labels(f.view.name, name).inc(n)
            self.statuses.labels(f.view.name, "served").inc(len(statuses))

    def close(self) -> None:
        if self._http:
            self._http.shutdown()
            self._http.server_close()


def _grpc_server(options: ServerOptions, metrics: _Metrics | None, reuse_port: bool,
                 auth: interceptors.ApiKeyInterceptor | None) -> grpc.aio.Server:
    chain: list = []
    if metrics:  # first, so refused calls are counted too
        chain.append(metrics.interceptor)
    chain.append(logs.RequestIdInterceptor(options.access_log))
    if auth is not None:
        chain.append(auth)
    chain.append(interceptors.DecodeInterceptor())   # innermost: the others see its decoder
    # so_reuseport only for the workers of one `serve --workers N`: otherwise
    # Linux would let a second server bind the same port and steal half the
    # connections.
    return grpc.aio.server(interceptors=chain, options=[
        ("grpc.so_reuseport", int(reuse_port)),
        ("grpc.max_receive_message_length", options.max_request_bytes)])


def _bind(server: grpc.aio.Server, address: str, options: ServerOptions) -> int:
    if not (options.tls_cert or options.tls_key):
        return server.add_insecure_port(address)
    if not (options.tls_cert and options.tls_key):
        raise ValueError("TLS needs both tls_cert and tls_key")
    ca = Path(options.tls_client_ca).read_bytes() if options.tls_client_ca else None
    creds = grpc.ssl_server_credentials(
        [(Path(options.tls_key).read_bytes(), Path(options.tls_cert).read_bytes())],
        root_certificates=ca, require_client_auth=ca is not None)
    return server.add_secure_port(address, creds)


async def start_server(manifest: Manifest, store: redis_client.RedisTarget | str,
                       host: str = "127.0.0.1",
                       port: int = 0, clock: Clock | None = None,
                       options: ServerOptions | None = None, *,
                       worker: bool = False,
                       manifest_path: str | Path | None = None) -> RunningServer:
    """Start serving `manifest` from the online store `store` (a RedisTarget,
    or a single node's URL) on `host:port`
    (port 0: any free port, see `.port`). `clock` returns "now" in epoch
    microseconds (default: the wall clock); windows end and ttls count back
    from it. Raises ValueError when the manifest has features this server
    cannot serve. Redis may be down at start: health says NOT_SERVING, lookups
    get UNAVAILABLE, and both recover when Redis answers. `worker`: one of
    the processes of `serving.workers` sharing the port (SO_REUSEPORT), its
    metrics exported by the parent."""
    lookup.check_manifest(manifest)
    options = options or ServerOptions()
    health = grpc_health.aio.HealthServicer()
    store = OnlineStore(manifest.project, store, health, options.redis_connections)
    metrics = None
    if options.metrics_port is not None:
        metrics = _Metrics(host, None if worker else options.metrics_port)
    servicer = FeatureServicer(Versions(manifest, manifest_path), store, clock or wall_clock_us,
                               options.max_entities, options.max_pending_rows)
    servicer.metrics = metrics
    store.timed = metrics.redis_seconds if metrics else None
    servicer.health = health
    try:
        ring = auth.KeyRing(options.api_keys, options.api_keys_file)
    except auth.KeysFileError as e:
        await store.close()
        raise ServiceError(f"cannot serve: {e}") from None
    guard = interceptors.ApiKeyInterceptor(ring, servicer.views_of) if ring.enabled else None
    server = _grpc_server(options, metrics, reuse_port=worker, auth=guard)
    serving_pb2_grpc.add_ServingServiceServicer_to_server(servicer, server)
    server.add_generic_rpc_handlers(feast_api.handlers(servicer))   # Feast's clients
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, grpc_health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    http = None
    try:
        bound = _bind(server, _host_port(host, port), options)
        await store.probe()
        await servicer.refresh_versions()
        await server.start()
        if options.http_port is not None:
            from serving import http_api
            http = await http_api.start(http_api.app(servicer, guard), host, options.http_port,
                                        reuse_port=worker)
    except BaseException:
        await server.stop(None)
        await store.close()
        if metrics:
            metrics.close()
        raise
    tasks = [asyncio.create_task(store.watch(PROBE_INTERVAL_S)),
             asyncio.create_task(servicer.watch_versions(options.reload_interval)),
             asyncio.create_task(_watch_keys(ring, options.reload_interval))]
    return RunningServer(server, host, bound, store, servicer, health, tasks, ring, metrics,
                         http)


async def _watch_keys(ring: auth.KeyRing, interval: float) -> None:
    """Re-read the API keys file when it changes."""
    while ring.path is not None:
        await asyncio.sleep(interval)
        ring.reload()


def serve(manifest_path: str | Path, store: redis_client.RedisTarget | str, host: str = "127.0.0.1",
          port: int = DEFAULT_PORT, options: ServerOptions | None = None,
          workers: int = 1) -> None:
    """Serve the manifest at `manifest_path` until SIGINT or SIGTERM (blocking),
    in this process (`workers` 1) or in `workers` processes sharing the port
    (`serving.workers`)."""
    from serving import workers as pool

    options = options or ServerOptions()
    logs.configure(options.log_format)
    if workers > 1:
        pool.serve(str(manifest_path), store, host, port, options, workers)
        return
    port = pool.claim(host, port)   # a taken port is one message, not a bind traceback
    asyncio.run(serve_until_signalled(manifest_path, store, host, port, options))


# Young collections wait for this many new container objects (CPython's
# default is 700): decoding the tiles of a large request allocates hundreds
# of thousands of small lists, which by default start hundreds of young and
# several full collections per request (85 ms of a 1,000-entity window
# lookup's 330 ms, bench/tile_merge.py's data over a 300k-object heap).
GC_YOUNG_THRESHOLD = 50_000


def tune_gc() -> None:
    """Collect once, then move every object alive now (modules, the manifest,
    the server's own) out of the collector's sight: full collections no
    longer walk them. Young collections run every GC_YOUNG_THRESHOLD
    allocations. Cycles are still collected, only less often."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


async def serve_until_signalled(manifest_path: str | Path, store: redis_client.RedisTarget | str,
                                host: str, port: int,
                                options: ServerOptions, worker: str | None = None,
                                on_ready: Callable[[], object] | None = None) -> None:
    """Serve the manifest at `manifest_path` (re-read when it changes) until
    SIGINT or SIGTERM, then stop gracefully. `worker` names the process when
    it is one of several sharing the port; `on_ready` is called once it serves."""
    manifest = Manifest.load(manifest_path)
    # Switch threads every ms (not 5): a thread merging a large request then
    # hands the event loop the GIL soon enough for small requests' latency.
    sys.setswitchinterval(0.001)
    running = await start_server(manifest, store, host, port, options=options,
                                 worker=worker is not None, manifest_path=manifest_path)
    tune_gc()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: running.keys.reload(force=True))
    log.info("%sserving project %r (%d views, %d services) on %s%s from Redis at %s%s%s%s",
             f"{worker}: " if worker else "", manifest.project, len(manifest.views),
             len(manifest.services), running.address, " (TLS)" if options.tls_cert else "",
             running.location,
             f"; metrics on :{running.metrics_port}/metrics" if running.metrics_port else "",
             f"; Feast's HTTP API on :{running.http_port}" if running.http_port else "",
             "; API keys required" if running.keys.enabled else "")
    if on_ready:
        on_ready()
    try:
        await stopping.wait()
    finally:
        await running.stop(SHUTDOWN_GRACE_S)


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve online features over gRPC.")
    parser.add_argument("--manifest", required=True, help="the serving manifest (JSON)")
    parser.add_argument("--redis", required=True, help="Redis URL, e.g. redis://localhost:6379/0")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--workers", type=int, default=1, help="server processes on the port")
    parser.add_argument("--metrics-port", type=int, help="expose Prometheus /metrics on this port")
    args = parser.parse_args(argv)
    try:
        serve(args.manifest, args.redis, args.host, args.port,
              ServerOptions(metrics_port=args.metrics_port), args.workers)
    except OSError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
