"""Feast's serving API on the same port: `feast.serving.ServingService`
(GetFeastServingInfo, GetOnlineFeatures) and the GetOnlineFeatures of
`GrpcFeatureServer` (what `feast listen` serves), so that
Feast's generated stubs and the clients built on them work unchanged.

A Feast request becomes one of ours and takes the same path (validation,
one Redis round trip, tile merging, statuses), then the columnar answer is
spelled as Feast spells it: one FeatureVector per column, entity key columns
first, a `feast.types.Value` per slot (empty where the status is not
PRESENT), event timestamps as `google.protobuf.Timestamp`. Timestamp
features travel as Feast's `unix_timestamp_val`, whole seconds.

The message classes come from Feast's own descriptors (serving/feast_protos.binpb,
written by scripts/vendor_feast_protos.py) in a descriptor pool of their
own: the server imports no feast, and a process holding feast's classes too
sees no clash.
"""
from __future__ import annotations

from importlib import resources

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from serving.v1 import serving_pb2 as pb

VERSION = "featurestore (Feast serving API)"
# GrpcServer.proto declares no package: `feast listen` serves "GrpcFeatureServer"
SERVICES = ("feast.serving.ServingService", "GrpcFeatureServer")

_pool = descriptor_pool.DescriptorPool()
for _file in descriptor_pb2.FileDescriptorSet.FromString(
        resources.files("serving").joinpath("feast_protos.binpb").read_bytes()).file:
    _pool.Add(_file)


def _message(name: str):
    return message_factory.GetMessageClass(_pool.FindMessageTypeByName(name))


Request = _message("feast.serving.GetOnlineFeaturesRequest")
Response = _message("feast.serving.GetOnlineFeaturesResponse")
InfoRequest = _message("feast.serving.GetFeastServingInfoRequest")
InfoResponse = _message("feast.serving.GetFeastServingInfoResponse")
Value = _message("feast.types.Value")
Timestamp = _message("google.protobuf.Timestamp")

# Feast's FieldStatus numbers are ours (INVALID 0 ... OUTSIDE_MAX_AGE 4).
_SCALAR = {"int64_list": "int64_val", "double_list": "double_val",
           "string_list": "string_val", "bool_list": "bool_val", "float_list": "float_val",
           "timestamp_list": "unix_timestamp_val"}
_LIST = {"int64_list": "int64_list_val", "double_list": "double_list_val",
         "string_list": "string_list_val", "bool_list": "bool_list_val",
         "float_list": "float_list_val", "timestamp_list": "unix_timestamp_list_val"}
_KEY_KINDS = {"string_val": "string_list", "int64_val": "int64_list", "int32_val": "int64_list"}


class BadFeastRequest(ValueError):
    pass


def to_ours(request) -> pb.GetOnlineFeaturesRequest:
    """Our request for a Feast GetOnlineFeaturesRequest."""
    ours = pb.GetOnlineFeaturesRequest(full_feature_names=request.full_feature_names)
    kind = request.WhichOneof("kind")
    if kind == "feature_service":
        ours.feature_service = request.feature_service
    elif kind == "features":
        ours.features.features.extend(request.features.val)
    for name, repeated in request.entities.items():
        values = list(repeated.val)
        kinds = {v.WhichOneof("val") for v in values} - {None, "null_val"}
        if len(kinds) > 1:
            raise BadFeastRequest(f"entity key column {name!r} mixes value types: "
                                  f"{', '.join(sorted(kinds))}")
        given = next(iter(kinds), None)
        if given is not None and given not in _KEY_KINDS:
            raise BadFeastRequest(f"entity key column {name!r}: keys are strings or integers, "
                                  f"not {given}")
        if any(v.WhichOneof("val") in (None, "null_val") for v in values):
            raise BadFeastRequest(f"entity key column {name!r} holds a null key")
        column = ours.entities[name]
        if given is None:
            continue
        target = getattr(column, _KEY_KINDS[given]).values
        target.extend(getattr(v, given) for v in values)
    return ours


def _timestamps(micros) -> list:
    return [Timestamp(seconds=t // 1_000_000, nanos=t % 1_000_000 * 1000) for t in micros]


def to_feast(response: pb.GetOnlineFeaturesResponse):
    """Feast's GetOnlineFeaturesResponse for one of ours."""
    out = Response()
    out.metadata.feature_names.val.extend(response.metadata.feature_names.features)
    for column in response.results:
        vector = out.results.add()
        statuses = list(column.statuses)
        vector.statuses.extend(statuses)
        vector.event_timestamps.extend(_timestamps(column.event_timestamps))
        vector.values.extend(values(column.values, statuses))
    return out


def values(column: pb.ValueList, statuses: list[int], value_class=None) -> list:
    """One Feast `Value` per slot of one of our columns (empty where the
    status is not PRESENT); `value_class`: the Value message to build (by
    default this module's; feast's own in a process that has feast)."""
    value_class = value_class or Value
    kind = column.WhichOneof("kind")
    if kind is None:
        return [value_class() for _ in statuses]
    if kind == "list_column":
        elements = column.list_column.elements
        inner = elements.WhichOneof("kind")
        flat = list(getattr(elements, inner).values) if inner else []
        if inner == "timestamp_list":
            flat = [t // 1_000_000 for t in flat]
        out, at = [], 0
        for n, status in zip(column.list_column.lengths, statuses):
            items, at = flat[at:at + n], at + n
            value = value_class()
            if status == pb.PRESENT and inner is not None:
                getattr(value, _LIST[inner]).val.extend(items)
            out.append(value)
        return out
    field = _SCALAR[kind]
    raw = getattr(column, kind).values
    if kind == "timestamp_list":
        raw = [t // 1_000_000 for t in raw]
    return [value_class(**{field: v}) if s == pb.PRESENT else value_class()
            for v, s in zip(raw, statuses)]


def handlers(servicer) -> list[grpc.GenericRpcHandler]:
    """The generic handlers of both Feast services, answered by `servicer`
    (serving.server.FeatureServicer) through its own GetOnlineFeatures."""
    async def get_online_features(request, context):
        try:
            ours = to_ours(request)
        except BadFeastRequest as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        return to_feast(await servicer.GetOnlineFeatures(ours, context))

    async def get_info(request, context):
        return InfoResponse(version=VERSION)

    lookup = grpc.unary_unary_rpc_method_handler(
        get_online_features, request_deserializer=Request.FromString,
        response_serializer=Response.SerializeToString)
    info = grpc.unary_unary_rpc_method_handler(
        get_info, request_deserializer=InfoRequest.FromString,
        response_serializer=InfoResponse.SerializeToString)
    return [grpc.method_handlers_generic_handler(SERVICES[0], {
                "GetOnlineFeatures": lookup, "GetFeastServingInfo": info}),
            grpc.method_handlers_generic_handler(SERVICES[1], {"GetOnlineFeatures": lookup})]
