"""Server interceptors, one concern each: API-key auth, Prometheus metrics,
and requests whose bytes do not decode.

Health checking stays open to everyone, so load balancers and orchestrators
can probe a server without holding a key.
"""
from __future__ import annotations

import time
from typing import Callable, Iterable

import grpc

from serving.auth import ApiKey, KeyRing

HEALTH_PREFIX = "/grpc.health.v1.Health/"


def _unary_handler(handler: grpc.RpcMethodHandler, behavior) -> grpc.RpcMethodHandler:
    return grpc.unary_unary_rpc_method_handler(
        behavior, request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer)


class ApiKeyInterceptor(grpc.aio.ServerInterceptor):
    """Refuses every call but health checks without a known key in
    `x-api-key` (or `authorization: Bearer <key>`) metadata with
    UNAUTHENTICATED, streaming ones (server reflection) included; and a
    lookup the key may not make with PERMISSION_DENIED (`serving.auth`).
    `views_of(service)` names the views a feature service reads."""

    def __init__(self, ring: KeyRing,
                 views_of: Callable[[str], Iterable[str] | None] = lambda service: None):
        if not ring.enabled:
            raise ValueError("ApiKeyInterceptor needs at least one key")
        self.ring = ring
        self._views_of = views_of

    def _key(self, metadata) -> ApiKey | None:
        for name, value in metadata or ():
            if name == "authorization" and value.startswith("Bearer "):
                value = value[len("Bearer "):]
            elif name != "x-api-key":
                continue
            key = self.ring.find(value)
            if key is not None:
                return key
        return None

    def check_http(self, headers, request) -> tuple[grpc.StatusCode, str] | None:
        """The refusal of an HTTP lookup (`serving.http_api`): its headers
        carry the key as gRPC metadata does; None when it may go on."""
        key = self._key([(name, headers[name]) for name in ("x-api-key", "authorization")
                         if name in headers])
        if key is None:
            return (grpc.StatusCode.UNAUTHENTICATED,
                    "missing or unknown API key: send it as the 'x-api-key' header")
        service, views = _asked(request)
        refusal = key.refusal(service, views, self._views_of)
        return None if refusal is None else (grpc.StatusCode.PERMISSION_DENIED, refusal)

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if details.method.startswith(HEALTH_PREFIX) or handler is None:
            return handler
        key = self._key(details.invocation_metadata)
        if key is None:
            return _refused(handler, grpc.StatusCode.UNAUTHENTICATED,
                            "missing or unknown API key: send it as 'x-api-key' metadata")
        if key.unlimited or handler.unary_unary is None:
            return handler
        inner, views_of = handler.unary_unary, self._views_of

        async def checked(request, context):
            service, views = _asked(request)
            refusal = key.refusal(service, views, views_of)
            if refusal is not None:
                await context.abort(grpc.StatusCode.PERMISSION_DENIED, refusal)
            return await inner(request, context)
        return _unary_handler(handler, checked)


def _asked(request) -> tuple[str | None, set[str]]:
    """The feature service, or the views of the features, a lookup names."""
    which = getattr(request, "WhichOneof", None)
    kind = which("kind") if which else None
    if kind == "feature_service":
        return request.feature_service, set()
    if kind == "features":   # ours names them `features`, Feast's `val`
        listed = request.features
        refs = listed.val if hasattr(listed, "val") else listed.features
        return None, {ref.partition(":")[0] for ref in refs}
    return None, set()


def _refused(handler: grpc.RpcMethodHandler, code: grpc.StatusCode,
             message: str) -> grpc.RpcMethodHandler:
    """A handler of the same shape as `handler` that aborts every call."""
    async def refuse(request_or_iterator, context):
        await context.abort(code, message)

    args = dict(request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(refuse, **args)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(refuse, **args)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(refuse, **args)
    return grpc.stream_stream_rpc_method_handler(refuse, **args)


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


class Undecodable:
    """A request whose bytes are not a message of the method's type."""

    def __init__(self, reason: str):
        self.reason = reason


class DecodeInterceptor(grpc.aio.ServerInterceptor):
    """Answers a request whose bytes do not decode with INVALID_ARGUMENT
    saying so (gRPC itself would answer UNKNOWN). Innermost in the chain,
    so the other interceptors see its decoder."""

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None or handler.unary_unary is None or handler.request_deserializer is None:
            return handler
        decode, inner = handler.request_deserializer, handler.unary_unary
        method = details.method.rsplit("/", 1)[-1]

        def safe(data: bytes):
            try:
                return decode(data)
            except Exception as e:  # DecodeError, or anything a decoder raises on bad bytes
                return Undecodable(f"{type(e).__name__}: {e}")

        async def behavior(request, context):
            if isinstance(request, Undecodable):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                    f"the request bytes are not a {method} request "
                                    f"({request.reason})")
            return await inner(request, context)
        return grpc.unary_unary_rpc_method_handler(
            behavior, request_deserializer=safe,
            response_serializer=handler.response_serializer)
