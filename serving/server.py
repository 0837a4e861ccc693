"""The online serving server: `ServingService` over Redis, on grpc.aio.

Besides ServingService it serves grpc health checking (SERVING while Redis
answers, NOT_SERVING while it does not) and server reflection, so `grpcurl`
and load balancers work without the proto files.

It imports the manifest, the Redis layout, tiles, redis and grpc, and nothing
of the compiler (lark), DuckDB, PyFlink or Feast: a server starts in well under
a second and its image stays small.

    featurestore serve            # the CLI, which calls `serve`
    python -m serving.server --manifest PATH --redis redis://HOST:6379/0
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

import grpc
import redis.asyncio as aioredis
from grpc_health.v1 import health as grpc_health
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from featurestore import layout
from featurestore.manifest import Manifest
from serving import interceptors, lookup
from serving.v1 import serving_pb2, serving_pb2_grpc

log = logging.getLogger("featurestore.serving")

SERVICE_NAME = serving_pb2.DESCRIPTOR.services_by_name["ServingService"].full_name
DEFAULT_PORT = 6566  # Feast's serving port: what users' configs already say
SHUTDOWN_GRACE_S = 5.0
PROBE_INTERVAL_S = 2.0

# Redis must answer a whole lookup within READ_TIMEOUT_S (or the client's
# deadline, when sooner), so a client gets UNAVAILABLE in about a second rather
# than waiting out its deadline. One timer per lookup, not a socket timeout per
# command: those cost a third of the read time of a large pipeline. One retry
# on a fresh connection covers connections that died while idle (a restarted
# Redis). Options in the Redis URL's query string override these.
READ_TIMEOUT_S = 1.0
REDIS_OPTIONS: dict[str, Any] = {
    "socket_connect_timeout": 0.5,
    "socket_timeout": None,
    "retry": Retry(NoBackoff(), 1),
    "retry_on_error": [RedisConnectionError],
}
_UNAVAILABLE = (RedisConnectionError, RedisTimeoutError, OSError)


@dataclass(frozen=True)
class ServerOptions:
    """Production settings of a server (featurestore.yaml `serving:` section).

    api_keys          callers must send one of these as `x-api-key` metadata
                      (none: no auth); health checks stay open
    tls_cert/tls_key  PEM files: serve TLS instead of plaintext
    metrics_port      Prometheus /metrics on this port (0: a free one; None: off)
    max_request_bytes larger requests are refused by gRPC (RESOURCE_EXHAUSTED)
    max_entities      more entity rows in one request get INVALID_ARGUMENT
    """
    api_keys: tuple[str, ...] = ()
    tls_cert: str | None = None
    tls_key: str | None = None
    metrics_port: int | None = None
    max_request_bytes: int = 4 * 1024 * 1024
    max_entities: int = 10_000


class StoreUnavailable(RuntimeError):
    """Redis did not answer."""


Clock = Callable[[], int]


def wall_clock_us() -> int:
    """Now, in microseconds since the Unix epoch."""
    return time.time_ns() // 1000


class OnlineStore:
    """The server's Redis: reads views' state and tells health whether Redis answers."""

    def __init__(self, project: str, redis_url: str, health: grpc_health.aio.HealthServicer):
        self._project = project
        self._redis = aioredis.Redis.from_url(redis_url, **REDIS_OPTIONS)
        self._health = health
        self._up: bool | None = None
        self.location = _without_credentials(redis_url)

    async def read(self, prepared: lookup.Prepared,
                   time_left: float | None = None) -> list[tuple[list, list | None]]:
        """For each view of `prepared`: the rows and (when needed) the tile
        hashes of its entities, read in one pipelined round trip.

        Raises StoreUnavailable when Redis does not answer within
        READ_TIMEOUT_S, and TimeoutError when `time_left` (the caller's
        deadline, in seconds) runs out first."""
        deadline_first = time_left is not None and time_left < READ_TIMEOUT_S
        try:
            replies = await asyncio.wait_for(
                self._pipeline(prepared), time_left if deadline_first else READ_TIMEOUT_S)
        except asyncio.TimeoutError:
            if deadline_first:
                raise
            await self.report(f"no answer within {READ_TIMEOUT_S} s")
            raise StoreUnavailable(f"the online store (Redis at {self.location}) did not "
                                   f"answer within {READ_TIMEOUT_S} s") from None
        except _UNAVAILABLE as e:
            await self.report(e)
            raise StoreUnavailable(f"the online store (Redis at {self.location}) "
                                   f"is unavailable: {e}") from None
        await self.report(None)
        return _per_view(prepared, replies)

    async def _pipeline(self, prepared: lookup.Prepared) -> list:
        async with self._redis.pipeline(transaction=False) as pipe:
            for v in prepared.views:
                name, fingerprint = v.view.name, v.view.fingerprint
                for key in v.entity_keys:
                    if v.view.row_features:
                        pipe.get(layout.row_key(self._project, name, fingerprint, key))
                    else:
                        pipe.exists(layout.tiles_key(self._project, name, fingerprint, key))
                if v.needs_tiles:
                    fields = v.tiles.fields
                    for key in v.entity_keys:
                        tiles_key = layout.tiles_key(self._project, name, fingerprint, key)
                        if fields is None:
                            pipe.hgetall(tiles_key)
                        else:
                            pipe.hmget(tiles_key, fields)
            return await pipe.execute()

    async def probe(self, timeout: float = 1.0) -> None:
        """Ping Redis and report the outcome to health."""
        try:
            await asyncio.wait_for(self._redis.ping(), timeout)
        except (*_UNAVAILABLE, RedisError, asyncio.TimeoutError) as e:
            await self.report(e)
        else:
            await self.report(None)

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
        await self._redis.aclose()


def _per_view(prepared: lookup.Prepared, replies: list) -> list[tuple[list, list | None]]:
    """Split the pipeline's flat replies as `_pipeline` queued them."""
    per_view, at = [], 0
    for v in prepared.views:
        n = len(v.entity_keys)
        rows, at = replies[at:at + n], at + n
        hashes = None
        if v.needs_tiles:
            hashes, at = replies[at:at + n], at + n
        per_view.append((rows, hashes))
    return per_view


class FeatureServicer(serving_pb2_grpc.ServingServiceServicer):
    """ServingService: validates with `serving.lookup`, reads the `OnlineStore`,
    and maps failures to status codes."""

    def __init__(self, manifest: Manifest, store: OnlineStore, clock: Clock = wall_clock_us,
                 max_entities: int = ServerOptions.max_entities):
        self._manifest = manifest
        self._store = store
        self._clock = clock
        self._max_entities = max_entities

    async def GetOnlineFeatures(self, request: serving_pb2.GetOnlineFeaturesRequest,
                                context: grpc.aio.ServicerContext
                                ) -> serving_pb2.GetOnlineFeaturesResponse:
        try:
            prepared = lookup.prepare(self._manifest, request, self._clock())
        except lookup.BadRequest as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        if prepared.rows > self._max_entities:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"{prepared.rows} entity rows in one request; this server "
                                f"takes at most {self._max_entities}: split the request")
        replies = await self._read(prepared, context)
        try:
            return lookup.respond(prepared, replies)
        except lookup.CorruptState as e:
            log.error("%s", e)
            await context.abort(grpc.StatusCode.INTERNAL, str(e))

    async def _read(self, prepared: lookup.Prepared, context: grpc.aio.ServicerContext):
        try:
            # The client's deadline bounds the Redis read: none outlives its RPC.
            return await self._store.read(prepared, context.time_remaining())
        except asyncio.TimeoutError:
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED,
                                "the deadline passed while reading the online store")
        except StoreUnavailable as e:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(e))
        except RedisError as e:
            log.error("Redis failed a lookup: %s", e)
            await context.abort(grpc.StatusCode.INTERNAL, f"the online store failed: {e}")


class RunningServer:
    """A started server: where it listens, and how to stop it."""

    def __init__(self, server: grpc.aio.Server, host: str, port: int, store: OnlineStore,
                 health: grpc_health.aio.HealthServicer, watcher: asyncio.Task,
                 metrics: "_Metrics | None" = None):
        self.port = port
        self.address = _host_port(host, port)
        self.metrics_port = metrics.port if metrics else None
        self._metrics = metrics
        self._server = server
        self._store = store
        self._health = health
        self._watcher = watcher

    async def stop(self, grace: float | None = None) -> None:
        """Report NOT_SERVING, refuse new RPCs, give in-flight ones `grace`
        seconds (None: cancel them now), then close the Redis connections."""
        await self._health.enter_graceful_shutdown()
        self._watcher.cancel()
        await self._server.stop(grace)
        await self._store.close()
        if self._metrics:
            self._metrics.close()

    async def wait_for_termination(self) -> None:
        await self._server.wait_for_termination()


class _Metrics:
    """A Prometheus registry of one server and the HTTP endpoint that exposes it."""

    def __init__(self, host: str, port: int):
        from prometheus_client import CollectorRegistry, start_http_server

        self.registry = CollectorRegistry()
        self.interceptor = interceptors.MetricsInterceptor(self.registry)
        self._http, _ = start_http_server(port, addr=host, registry=self.registry)
        self.port = self._http.server_port

    def close(self) -> None:
        self._http.shutdown()
        self._http.server_close()


def _grpc_server(options: ServerOptions, metrics: _Metrics | None) -> grpc.aio.Server:
    chain = []
    if metrics:  # first, so refused calls are counted too
        chain.append(metrics.interceptor)
    if options.api_keys:
        chain.append(interceptors.ApiKeyInterceptor(options.api_keys))
    # so_reuseport 0: without it Linux lets a second server bind the same
    # port and steal half the connections.
    return grpc.aio.server(interceptors=chain, options=[
        ("grpc.so_reuseport", 0),
        ("grpc.max_receive_message_length", options.max_request_bytes)])


def _bind(server: grpc.aio.Server, address: str, options: ServerOptions) -> int:
    if not (options.tls_cert or options.tls_key):
        return server.add_insecure_port(address)
    if not (options.tls_cert and options.tls_key):
        raise ValueError("TLS needs both tls_cert and tls_key")
    creds = grpc.ssl_server_credentials(
        [(Path(options.tls_key).read_bytes(), Path(options.tls_cert).read_bytes())])
    return server.add_secure_port(address, creds)


async def start_server(manifest: Manifest, redis_url: str, host: str = "127.0.0.1",
                       port: int = 0, clock: Clock | None = None,
                       options: ServerOptions | None = None) -> RunningServer:
    """Start serving `manifest` from the Redis at `redis_url` on `host:port`
    (port 0: any free port, see `.port`). `clock` returns "now" in epoch
    microseconds (default: the wall clock); windows end and ttls count back
    from it. Raises ValueError when the manifest has features this server
    cannot serve. Redis may be down at start: health says NOT_SERVING, lookups
    get UNAVAILABLE, and both recover when Redis answers."""
    lookup.check_manifest(manifest)
    options = options or ServerOptions()
    health = grpc_health.aio.HealthServicer()
    store = OnlineStore(manifest.project, redis_url, health)
    metrics = _Metrics(host, options.metrics_port) if options.metrics_port is not None else None
    server = _grpc_server(options, metrics)
    serving_pb2_grpc.add_ServingServiceServicer_to_server(
        FeatureServicer(manifest, store, clock or wall_clock_us, options.max_entities), server)
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, grpc_health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    try:
        bound = _bind(server, _host_port(host, port), options)
        await store.probe()
        await server.start()
    except BaseException:
        await store.close()
        if metrics:
            metrics.close()
        raise
    watcher = asyncio.create_task(store.watch(PROBE_INTERVAL_S))
    return RunningServer(server, host, bound, store, health, watcher, metrics)


def serve(manifest_path: str | Path, redis_url: str, host: str = "127.0.0.1",
          port: int = DEFAULT_PORT, options: ServerOptions | None = None) -> None:
    """Serve the manifest at `manifest_path` until SIGINT or SIGTERM (blocking)."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(_serve_until_signalled(Manifest.load(manifest_path), redis_url, host, port,
                                       options or ServerOptions()))


async def _serve_until_signalled(manifest: Manifest, redis_url: str, host: str, port: int,
                                 options: ServerOptions) -> None:
    running = await start_server(manifest, redis_url, host, port, options=options)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    log.info("serving project %r (%d views, %d services) on %s%s from Redis at %s%s%s",
             manifest.project, len(manifest.views), len(manifest.services), running.address,
             " (TLS)" if options.tls_cert else "", _without_credentials(redis_url),
             f"; metrics on :{running.metrics_port}/metrics" if running.metrics_port else "",
             "; API keys required" if options.api_keys else "")
    try:
        await stopping.wait()
    finally:
        await running.stop(SHUTDOWN_GRACE_S)


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


def _without_credentials(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve online features over gRPC.")
    parser.add_argument("--manifest", required=True, help="the serving manifest (JSON)")
    parser.add_argument("--redis", required=True, help="Redis URL, e.g. redis://localhost:6379/0")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    args = parser.parse_args(argv)
    serve(args.manifest, args.redis, args.host, args.port)


if __name__ == "__main__":
    main()
