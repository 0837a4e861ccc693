"""The server's logs: plain text or JSON lines, every line of a request
carrying its request id, and an access log line per call (on demand).

    featurestore serve --log-format json --access-log

A caller may send `x-request-id` metadata (gRPC calls); otherwise
the server makes one. It is returned to the caller as `x-request-id`
trailing metadata (gRPC) and is in every log line written while the call
runs (`request_id`). An access line holds the method, the status code, the
entity rows asked for, the latency in ms and the peer.
"""
from __future__ import annotations

import contextvars
import json
import logging
import secrets
import time

import grpc

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id",
                                                                        default=None)
access = logging.getLogger("featurestore.access")


class _RequestId(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request_id,
    and the fields an access line carries."""

    FIELDS = ("method", "code", "rows", "ms", "peer")

    def format(self, record: logging.LogRecord) -> str:
        doc = {"time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
               "level": record.levelname, "logger": record.name,
               "message": record.getMessage()}
        if getattr(record, "request_id", None):
            doc["request_id"] = record.request_id
        for name in self.FIELDS:
            if hasattr(record, name):
                doc[name] = getattr(record, name)
        if record.exc_info:
            doc["error"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False)


def configure(log_format: str = "text") -> None:
    """Log to stderr as text or JSON lines, unless logging is set up already."""
    root = logging.getLogger()
    if root.handlers:
        for handler in root.handlers:
            if not any(isinstance(f, _RequestId) for f in handler.filters):
                handler.addFilter(_RequestId())
        return
    handler = logging.StreamHandler()
    handler.addFilter(_RequestId())
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
        logging.Formatter.converter = time.gmtime
    else:
        handler.setFormatter(logging.Formatter(
            "%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(logging.INFO)


def new_id(given: str | None) -> str:
    """The caller's request id when it sent a sensible one, else a new one."""
    if given and len(given) <= 128 and given.isprintable():
        return given
    return secrets.token_hex(8)


class RequestIdInterceptor(grpc.aio.ServerInterceptor):
    """Gives each unary call a request id (the caller's `x-request-id` or a
    new one), in the logs of the call and its trailing metadata; with
    `access_log`, one access line per call."""

    def __init__(self, access_log: bool = False):
        self.access_log = access_log

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None or handler.unary_unary is None:
            return handler
        inner, method = handler.unary_unary, details.method.rsplit("/", 1)[-1]
        given = dict(details.invocation_metadata or ()).get("x-request-id")
        log_access = self.access_log

        async def with_id(request, context):
            rid = new_id(given if isinstance(given, str) else None)
            token = request_id.set(rid)
            context.set_trailing_metadata((("x-request-id", rid),))
            started, code = time.perf_counter(), "OK"
            try:
                return await inner(request, context)
            except BaseException:
                code = _code(context)
                raise
            finally:
                if log_access:
                    rows = _rows(request)
                    ms = round((time.perf_counter() - started) * 1000, 3)
                    access.info("%s %s %d rows %.3f ms", method, code, rows, ms,
                                extra={"method": method, "code": code, "rows": rows, "ms": ms,
                                       "peer": context.peer()})
                request_id.reset(token)
        return grpc.unary_unary_rpc_method_handler(
            with_id, request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer)


def _rows(request) -> int:
    """The entity rows a lookup names (ours or Feast's); 0 for other calls."""
    for column in getattr(request, "entities", {}).values():
        if hasattr(column, "val"):            # Feast's RepeatedValue
            return len(column.val)
        kind = column.WhichOneof("kind")
        values = getattr(getattr(column, kind), "values", None) if kind else None
        return len(values) if values is not None else 0
    return 0


def _code(context) -> str:
    try:
        code = context.code()
    except Exception:
        code = None
    return code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"
