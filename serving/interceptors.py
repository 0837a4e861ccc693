"""Server interceptors, one concern each: API-key auth and Prometheus metrics.

Health checking stays open to everyone, so load balancers and orchestrators
can probe a server without holding a key.
"""
from __future__ import annotations

import hmac
import time
from typing import Iterable

import grpc

HEALTH_PREFIX = "/grpc.health.v1.Health/"


def _unary_handler(handler: grpc.RpcMethodHandler, behavior) -> grpc.RpcMethodHandler:
    return grpc.unary_unary_rpc_method_handler(
        behavior, request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer)


class ApiKeyInterceptor(grpc.aio.ServerInterceptor):
    """Refuses calls without a known key in `x-api-key` (or `authorization:
    Bearer <key>`) metadata with UNAUTHENTICATED."""

    def __init__(self, keys: Iterable[str]):
        self._keys = [k.encode() for k in keys if k]
        if not self._keys:
            raise ValueError("ApiKeyInterceptor needs at least one non-empty key")

    def _allowed(self, metadata) -> bool:
        for name, value in metadata or ():
            if name == "authorization" and value.startswith("Bearer "):
                value = value[len("Bearer "):]
            elif name != "x-api-key":
                continue
            given = value.encode() if isinstance(value, str) else value
            # Compare against every key in constant time: no timing oracle.
            if any(hmac.compare_digest(given, k) for k in self._keys):
                return True
        return False

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if details.method.startswith(HEALTH_PREFIX) or handler is None:
            return handler
        if self._allowed(details.invocation_metadata):
            return handler

        async def refuse(request, context):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                                "missing or unknown API key: send it as 'x-api-key' metadata")
        return _unary_handler(handler, refuse) if handler.unary_unary else handler


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    """Counts calls by method and status code and records their latency."""

    def __init__(self, registry):
        from prometheus_client import Counter, Histogram

        self.calls = Counter("featurestore_grpc_requests", "gRPC calls handled",
                             ["method", "code"], registry=registry)
        self.latency = Histogram(
            "featurestore_grpc_latency_seconds", "gRPC call latency", ["method"],
            buckets=(.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5),
            registry=registry)

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None or handler.unary_unary is None:
            return handler
        inner, method = handler.unary_unary, details.method.rsplit("/", 1)[-1]

        async def timed(request, context):
            t0 = time.perf_counter()
            code = "OK"
            try:
                return await inner(request, context)
            except BaseException:
                code = _code_name(context)
                raise
            finally:
                self.latency.labels(method).observe(time.perf_counter() - t0)
                self.calls.labels(method, code).inc()
        return _unary_handler(handler, timed)


def _code_name(context) -> str:
    try:
        code = context.code()
    except Exception:  # older grpcio: the code is not readable from the context
        code = None
    if isinstance(code, grpc.StatusCode):
        return code.name
    return "UNKNOWN" if code is None else str(code)
