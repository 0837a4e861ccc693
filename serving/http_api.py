"""`feast serve`'s HTTP API beside the gRPC one: `POST /get-online-features`
with Feast's JSON request and response, so that Feast's REST clients (and
the Java and Go SDKs' HTTP mode) work unchanged; `GET /health`.

    curl -X POST localhost:6567/get-online-features -d '{
      "features": ["user_spend:spend_1d"],        (or "feature_service": "fraud_v1")
      "entities": {"user_id": ["user_000001"]},
      "full_feature_names": false}'

The request takes the gRPC path of the same process (`FeatureServicer.lookup`:
validation, one Redis round trip, merging), and the answer is Feast's JSON:
`{"metadata": {"feature_names": [...]}, "results": [{"values": [...],
"statuses": ["PRESENT", ...], "event_timestamps": ["2026-01-31T12:00:00Z",
...]}, ...]}`, entity key columns first, null where a status is not
PRESENT, timestamps as epoch seconds, NaN and the infinities as the strings
"NaN", "Infinity", "-Infinity". Failures answer Feast's way, an HTTP status
and `{"detail": message}`: 422 for a malformed body, 400 for a request that
cannot be answered as asked, 401/403 for keys, 503 when Redis does not
answer, 504 past the deadline, 500 for state the server cannot decode.

Starlette on uvicorn, in the server's own event loop: no thread, no process.
"""
from __future__ import annotations

import math
import socket

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from serving import feast_api
from serving.v1 import serving_pb2 as pb

HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400, grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403, grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNAVAILABLE: 503, grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}
STATUS_NAMES = {v: k for k, v in pb.FieldStatus.items()}
DEADLINE_S = 10.0   # a lookup over HTTP, which has no deadline of its own


class Malformed(ValueError):
    pass


def to_ours(body: object) -> pb.GetOnlineFeaturesRequest:
    """Our request for Feast's JSON request body."""
    if not isinstance(body, dict):
        raise Malformed("the body must be a JSON object")
    unknown = set(body) - {"entities", "features", "feature_service", "full_feature_names",
                           "include_feature_view_version_metadata"}
    if unknown:
        raise Malformed(f"unknown field(s): {', '.join(sorted(unknown))}")
    request = pb.GetOnlineFeaturesRequest(full_feature_names=bool(body.get("full_feature_names")))
    service, features = body.get("feature_service"), body.get("features") or []
    if service is not None:
        if not isinstance(service, str):
            raise Malformed("feature_service must be a string")
        request.feature_service = service
    elif features:
        if not isinstance(features, list) or not all(isinstance(f, str) for f in features):
            raise Malformed("features must be a list of 'view:feature' strings")
        request.features.features.extend(features)
    entities = body.get("entities")
    if not isinstance(entities, dict):
        raise Malformed("entities must be an object of key column -> list of values")
    for name, values in entities.items():
        if not isinstance(values, list):
            raise Malformed(f"entities.{name} must be a list")
        if all(isinstance(v, str) for v in values):
            request.entities[name].string_list.values.extend(values)
        elif all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            if not all(-2 ** 63 <= v < 2 ** 63 for v in values):
                raise Malformed(f"entities.{name}: an integer key is outside int64")
            request.entities[name].int64_list.values.extend(values)
        else:
            raise Malformed(f"entities.{name}: keys are all strings or all integers")
    return request


def _native(value):
    which = value.WhichOneof("val")
    if which is None or which == "null_val":
        return None
    got = getattr(value, which)
    if which.endswith("_list_val"):
        return [_number(x) for x in got.val]
    return _number(got)


def _number(x):
    if isinstance(x, float) and not math.isfinite(x):
        return "NaN" if x != x else ("Infinity" if x > 0 else "-Infinity")
    return x


def _time(micros: int) -> str:
    return Timestamp(seconds=micros // 1_000_000, nanos=micros % 1_000_000 * 1000).ToJsonString()


def to_json(response: pb.GetOnlineFeaturesResponse) -> dict:
    """Feast's JSON response for one of ours."""
    feast = feast_api.to_feast(response)
    return {
        "metadata": {"feature_names": list(feast.metadata.feature_names.val)},
        "results": [{"values": [_native(v) for v in vector.values],
                     "statuses": [STATUS_NAMES[s] for s in column.statuses],
                     "event_timestamps": [_time(t) for t in column.event_timestamps]}
                    for vector, column in zip(feast.results, response.results)],
    }


def app(servicer, guard=None):
    """The Starlette app answering through `servicer` (FeatureServicer);
    `guard` (an ApiKeyInterceptor) checks keys as the gRPC API does."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from serving.server import LookupFailed

    def failure(status: int, message: str) -> JSONResponse:
        return JSONResponse({"detail": message}, status_code=status)

    async def get_online_features(request: Request):
        try:
            body = await request.json()
            ours = to_ours(body)
        except Malformed as e:
            return failure(422, str(e))
        except ValueError as e:
            return failure(422, f"the body is not JSON: {e}")
        if guard is not None:
            refusal = guard.check_http(request.headers, ours)
            if refusal is not None:
                code, message = refusal
                return failure(HTTP_STATUS[code], message)
        try:
            response = await servicer.lookup(ours, DEADLINE_S)
        except LookupFailed as e:
            return failure(HTTP_STATUS.get(e.code, 500), e.message)
        return JSONResponse(to_json(response))

    async def health(request: Request):
        return JSONResponse({"status": "SERVING"})

    return Starlette(routes=[Route("/get-online-features", get_online_features,
                                   methods=["POST"]),
                             Route("/health", health, methods=["GET"])])


async def start(app_, host: str, port: int, reuse_port: bool):
    """Serve `app_` on host:port in this event loop; returns (server, task, port)."""
    import asyncio
    import contextlib

    import uvicorn

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host.strip("[]"), port))
    config = uvicorn.Config(app_, log_level="warning", access_log=False, lifespan="off")
    server = uvicorn.Server(config)
    server.capture_signals = contextlib.nullcontext   # the gRPC server owns the signals
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    return server, task, sock.getsockname()[1]
