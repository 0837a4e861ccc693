"""A Python client for the serving API.

Needs only grpcio, protobuf and numpy; `to_pandas()` imports pandas when
called, `health()` imports grpcio-health-checking when called.

    with FeatureClient("localhost:6566") as client:
        features = client.get_online_features(
            ["user_spend:spend_1d", "user_profile:country"],
            entities={"user_id": ["u1", "u2"]})
        features.to_dict()     # {"user_id": ["u1", "u2"], "spend_1d": [12.5, None], ...}
        features.to_pandas()   # one row per entity, key columns first

Columns come back as packed arrays and are converted with numpy, not with a
Python loop per value.
"""
from __future__ import annotations

import datetime as _dt
import enum
from typing import Any, Mapping, Sequence

import grpc
import numpy as np

from serving.v1 import serving_pb2 as pb
from serving.v1 import serving_pb2_grpc

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["ServingService"].full_name


class FieldStatus(enum.IntEnum):
    """The status of one value: the proto's FieldStatus as a Python enum."""
    INVALID = pb.INVALID
    PRESENT = pb.PRESENT
    NULL_VALUE = pb.NULL_VALUE
    NOT_FOUND = pb.NOT_FOUND
    OUTSIDE_MAX_AGE = pb.OUTSIDE_MAX_AGE


# Responses for many entities outgrow gRPC's 4 MiB default.
DEFAULT_OPTIONS = (("grpc.max_receive_message_length", 256 * 1024 * 1024),)

_DTYPES = {"int64_list": np.int64, "double_list": np.float64, "bool_list": np.bool_,
           "timestamp_list": np.int64, "float_list": np.float32}
_INT64_MAX = np.iinfo(np.int64).max


class FeatureClient:
    """A connection to a featurestore server (`target` is "host:port").

    `timeout` is the default deadline of each call, in seconds. Pass
    `credentials` (grpc.ssl_channel_credentials(...)) for TLS, and `api_key` when
    the server requires one (sent as `x-api-key` metadata). Failed calls raise
    grpc.RpcError: INVALID_ARGUMENT for a bad request (the details say what is
    wrong), UNAVAILABLE when the server or its Redis is down.
    """

    def __init__(self, target: str, timeout: float = 5.0, *,
                 credentials: grpc.ChannelCredentials | None = None,
                 api_key: str | None = None,
                 options: Sequence[tuple[str, Any]] = DEFAULT_OPTIONS):
        self.target = target
        self.timeout = timeout
        self._metadata = (("x-api-key", api_key),) if api_key else None
        if credentials is None:
            self._channel = grpc.insecure_channel(target, options=list(options))
        else:
            self._channel = grpc.secure_channel(target, credentials, options=list(options))
        self._stub = serving_pb2_grpc.ServingServiceStub(self._channel)

    def get_online_features(self, features: Sequence[str] | None = None,
                            service: str | None = None, *,
                            entities: Mapping[str, Sequence | np.ndarray],
                            full_feature_names: bool = False,
                            as_of: "int | _dt.datetime | None" = None,
                            timeout: float | None = None) -> "OnlineFeatures":
        """Look up `features` ("view:feature" refs) or the feature service
        `service` (exactly one of them) for the entity rows in `entities`: one
        column per key name, all of the same length (a pandas DataFrame of the
        key columns works too). A column of ints (or a numpy integer array) is
        sent as int64, a column of strings as string. `as_of` (epoch
        microseconds, or an aware datetime) asks for the values at that past
        time instead of now (see the proto; `.served_at` says when)."""
        if (features is None) == (service is None):
            raise ValueError("pass exactly one of features and service")
        if isinstance(features, str):
            raise TypeError("features must be a list of 'view:feature' refs, not one string")
        request = pb.GetOnlineFeaturesRequest(full_feature_names=full_feature_names)
        if as_of is not None:
            request.as_of = _epoch_us(as_of)
        if service is not None:
            request.feature_service = service
        else:
            request.features.features.extend(features)
        for name, values in entities.items():
            request.entities[name].CopyFrom(entity_column(name, values))
        response = self._stub.GetOnlineFeatures(
            request, timeout=self.timeout if timeout is None else timeout,
            metadata=self._metadata)
        return OnlineFeatures(response, tuple(entities))

    def health(self, timeout: float | None = None) -> str:
        """The server's health as the grpc health service names it: "SERVING"
        or "NOT_SERVING" (the server says NOT_SERVING while Redis is down)."""
        try:
            from grpc_health.v1 import health_pb2, health_pb2_grpc
        except ImportError as e:
            raise ImportError("FeatureClient.health() needs grpcio-health-checking: "
                              "pip install grpcio-health-checking") from e
        reply = health_pb2_grpc.HealthStub(self._channel).Check(
            health_pb2.HealthCheckRequest(service=SERVICE_NAME),
            timeout=self.timeout if timeout is None else timeout)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "FeatureClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _epoch_us(t: "int | _dt.datetime") -> int:
    if isinstance(t, _dt.datetime):
        if t.tzinfo is None:
            raise ValueError("as_of must be an aware datetime: a naive one names no instant")
        epoch = _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)
        return (t - epoch) // _dt.timedelta(microseconds=1)
    return int(t)


def entity_column(name: str, values: Sequence | np.ndarray) -> pb.ValueList:
    """One entity key column as a typed ValueList (int64 or string)."""
    if hasattr(values, "dtype"):  # numpy arrays, pandas Series and Index
        return _array_column(name, np.asarray(values))
    values = list(values)
    if not values:
        return pb.ValueList()
    first = values[0]
    try:
        if isinstance(first, (int, np.integer)) and not isinstance(first, (bool, np.bool_)):
            return pb.ValueList(int64_list=pb.Int64List(values=values))
        if isinstance(first, str):
            return pb.ValueList(string_list=pb.StringList(values=values))
    except (TypeError, ValueError) as e:
        raise TypeError(f"entity column {name!r}: {e}") from None
    raise TypeError(f"entity column {name!r} must hold ints or strings, "
                    f"not {type(first).__name__}")


def _array_column(name: str, array: np.ndarray) -> pb.ValueList:
    if array.ndim != 1:
        raise ValueError(f"entity column {name!r} must be one-dimensional, not {array.shape}")
    if array.dtype.kind in "iu":
        if array.dtype.kind == "u" and array.size and array.max() > _INT64_MAX:
            raise ValueError(f"entity column {name!r} has values beyond int64")
        return pb.ValueList(int64_list=pb.Int64List(values=array.astype(np.int64).tolist()))
    if array.dtype.kind in "UO":
        return entity_column(name, array.tolist())
    raise TypeError(f"entity column {name!r} must hold ints or strings, not {array.dtype}")


class OnlineFeatures:
    """The answer to one lookup: one column per entity key, then one per
    feature, each with one slot per entity row in request order.

    A slot is a value only where its status is PRESENT; elsewhere (NULL_VALUE,
    NOT_FOUND, OUTSIDE_MAX_AGE) the conversions give None, a masked slot or a
    missing value. `response` is the raw protobuf message.
    """

    def __init__(self, response: pb.GetOnlineFeaturesResponse, entity_names: tuple[str, ...]):
        self.response = response
        self.entity_names = entity_names
        self.names: list[str] = list(response.metadata.feature_names.features)
        self.served_at: int = response.metadata.served_at
        # view -> (newest event time behind its values, its age at served_at), µs
        self.freshness: dict[str, tuple[int, int]] = {
            f.view: (f.newest_event, f.age) for f in response.metadata.freshness}
        self._columns: dict[str, tuple[str | None, np.ndarray, np.ndarray, np.ndarray]] = {}
        for name, vector in zip(self.names, response.results, strict=True):
            self._columns[name] = _decode(vector)

    @property
    def feature_names(self) -> list[str]:
        """The names of the feature columns (the key columns excluded)."""
        return [n for n in self.names if n not in self.entity_names]

    def __len__(self) -> int:
        return len(next(iter(self._columns.values()))[1]) if self._columns else 0

    def __repr__(self) -> str:
        return f"<OnlineFeatures {len(self)} rows: {', '.join(self.names)}>"

    @property
    def statuses(self) -> dict[str, np.ndarray]:
        """Column name -> int32 array of FieldStatus codes (compare with FieldStatus.PRESENT)."""
        return {name: col[2] for name, col in self._columns.items()}

    @property
    def event_timestamps(self) -> dict[str, np.ndarray]:
        """Column name -> int64 array of event times in epoch microseconds UTC,
        0 where unknown."""
        return {name: col[3] for name, col in self._columns.items()}

    def to_numpy(self) -> dict[str, np.ma.MaskedArray]:
        """Column name -> masked array, masked where the status is not PRESENT.
        dtypes: int64, float64, bool, object (strings), datetime64[us] (UTC).
        `arr.filled(np.nan)` (after `.astype(float)` for ints) gives NaN-filled arrays."""
        out = {}
        for name, (kind, values, status, _) in self._columns.items():
            missing = status != FieldStatus.PRESENT
            if kind == "list_column":
                try:  # embeddings of one dimension: a rows x dim matrix
                    matrix = _dense_lists(name, values, ~missing)
                    mask = np.broadcast_to(missing[:, None], matrix.shape)
                    out[name] = np.ma.MaskedArray(matrix, mask=mask, copy=True)
                    continue
                except ValueError:
                    pass
            out[name] = np.ma.MaskedArray(_typed(kind, values), mask=missing, copy=True)
        return out

    def to_dict(self) -> dict[str, list]:
        """Column name -> list of Python values, None where the status is not
        PRESENT. Timestamps become timezone-aware (UTC) datetimes."""
        out = {}
        for name, (kind, values, status, _) in self._columns.items():
            objects = _typed(kind, values).astype(object)
            objects[status != FieldStatus.PRESENT] = None
            column = objects.tolist()
            if kind == "list_column":
                column = [None if v is None else v.tolist() for v in column]
            if kind == "timestamp_list":  # numpy gives naive datetimes; these are UTC
                column = [None if d is None else d.replace(tzinfo=_dt.timezone.utc)
                          for d in column]
            out[name] = column
        return out

    def to_pandas(self):
        """A DataFrame, one row per entity, key columns first, with nullable
        dtypes (Int64, Float64, boolean, string, datetime64[us, UTC]) that hold
        <NA> where the status is not PRESENT. Needs pandas."""
        import pandas as pd

        data = {}
        for name, (kind, values, status, _) in self._columns.items():
            missing = status != FieldStatus.PRESENT
            if kind == "int64_list":
                data[name] = pd.arrays.IntegerArray(values, missing, copy=True)
            elif kind == "double_list":
                data[name] = pd.arrays.FloatingArray(values, missing, copy=True)
            elif kind == "bool_list":
                data[name] = pd.arrays.BooleanArray(values, missing, copy=True)
            elif kind == "list_column":
                objects = values.copy()
                objects[missing] = None
                data[name] = objects
            elif kind == "timestamp_list":
                times = values.view("datetime64[us]").copy()
                times[missing] = np.datetime64("NaT")
                data[name] = pd.DatetimeIndex(times).tz_localize("UTC").array
            else:
                objects = values.astype(object)
                objects[missing] = None
                data[name] = pd.array(objects, dtype="string")
        return pd.DataFrame(data)


    def to_torch(self, device: str | None = None, names: Sequence[str] | None = None):
        """(values, present): two dicts of torch tensors, name -> tensor, for
        the numeric, bool, timestamp (epoch µs) and list columns (lists of one
        length become rows x dim matrices: embeddings). Slots that are not
        PRESENT hold NaN in float columns and 0 elsewhere; `present` holds the
        bool masks. On a CUDA device the copies go through pinned memory,
        asynchronously. String columns are left out unless named (an error)."""
        import torch

        values, present = {}, {}
        for name in names or [n for n in self.names if self._tensorable(n)]:
            if not self._tensorable(name):
                raise TypeError(f"column {name!r} holds strings, which have no tensor form")
            kind, raw, status, _ = self._columns[name]
            mask = status == FieldStatus.PRESENT
            dense = _dense_lists(name, raw, mask) if kind == "list_column" else raw.copy()
            if dense.dtype.kind == "f":
                dense[~mask] = np.nan
            else:
                dense[~mask] = 0
            values[name] = _to_device(torch.from_numpy(np.ascontiguousarray(dense)), device)
            present[name] = _to_device(torch.from_numpy(mask.copy()), device)
        return values, present

    def _tensorable(self, name: str) -> bool:
        kind, raw, _, _ = self._columns[name]
        if kind == "list_column":
            return all(v.dtype != object for v in raw)
        return kind in _DTYPES


def _to_device(tensor, device: str | None):
    if device is None or str(device) == "cpu":
        return tensor
    if str(device).startswith("cuda"):
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def _decode(vector: pb.FeatureVector) -> tuple[str | None, np.ndarray, np.ndarray, np.ndarray]:
    """(kind, raw values, statuses, event timestamps) of one response column."""
    kind = vector.values.WhichOneof("kind")
    if kind == "list_column":
        values = _decode_lists(vector.values.list_column)
    else:
        values = _flat(vector.values)
    status = np.fromiter(vector.statuses, np.int32, len(vector.statuses))
    times = np.fromiter(vector.event_timestamps, np.int64, len(vector.event_timestamps))
    return kind, values, status, times


def _flat(column: pb.ValueList) -> np.ndarray:
    kind = column.WhichOneof("kind")
    packed = getattr(column, kind).values if kind else ()
    if kind in _DTYPES:
        return np.fromiter(packed, _DTYPES[kind], len(packed))
    return np.array(list(packed), dtype=object)


def _decode_lists(column: pb.ListColumn) -> np.ndarray:
    """An object array holding one numpy array per row (views into one buffer)."""
    flat = _flat(column.elements)
    lengths = np.fromiter(column.lengths, np.int64, len(column.lengths))
    rows = np.empty(len(lengths), dtype=object)
    rows[:] = np.split(flat, np.cumsum(lengths)[:-1]) if len(lengths) else []
    return rows


def _dense_lists(name: str, values: np.ndarray, present: np.ndarray) -> np.ndarray:
    """rows x dim array of a list column whose PRESENT rows all have one length."""
    dims = {len(v) for v in values[present]}
    if len(dims) > 1:
        raise ValueError(f"column {name!r} holds lists of lengths {sorted(dims)}: "
                         "only lists of one length make a matrix")
    dim = dims.pop() if dims else 0
    sample = values[present][0] if present.any() else np.zeros(0, np.float32)
    out = np.zeros((len(values), dim), dtype=sample.dtype if sample.dtype != object else object)
    if present.any():
        out[present] = np.stack(values[present])
    return out


def _typed(kind: str | None, values: np.ndarray) -> np.ndarray:
    return values.view("datetime64[us]") if kind == "timestamp_list" else values
