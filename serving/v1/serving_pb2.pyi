from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FieldStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    INVALID: _ClassVar[FieldStatus]
    PRESENT: _ClassVar[FieldStatus]
    NULL_VALUE: _ClassVar[FieldStatus]
    NOT_FOUND: _ClassVar[FieldStatus]
    OUTSIDE_MAX_AGE: _ClassVar[FieldStatus]
INVALID: FieldStatus
PRESENT: FieldStatus
NULL_VALUE: FieldStatus
NOT_FOUND: FieldStatus
OUTSIDE_MAX_AGE: FieldStatus

class Int64List(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, values: _Optional[_Iterable[int]] = ...) -> None: ...

class DoubleList(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, values: _Optional[_Iterable[float]] = ...) -> None: ...

class StringList(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, values: _Optional[_Iterable[str]] = ...) -> None: ...

class BoolList(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[bool]
    def __init__(self, values: _Optional[_Iterable[bool]] = ...) -> None: ...

class TimestampList(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, values: _Optional[_Iterable[int]] = ...) -> None: ...

class FloatList(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, values: _Optional[_Iterable[float]] = ...) -> None: ...

class ListColumn(_message.Message):
    __slots__ = ("elements", "lengths")
    ELEMENTS_FIELD_NUMBER: _ClassVar[int]
    LENGTHS_FIELD_NUMBER: _ClassVar[int]
    elements: ValueList
    lengths: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, elements: _Optional[_Union[ValueList, _Mapping]] = ..., lengths: _Optional[_Iterable[int]] = ...) -> None: ...

class ValueList(_message.Message):
    __slots__ = ("int64_list", "double_list", "string_list", "bool_list", "timestamp_list", "float_list", "list_column")
    INT64_LIST_FIELD_NUMBER: _ClassVar[int]
    DOUBLE_LIST_FIELD_NUMBER: _ClassVar[int]
    STRING_LIST_FIELD_NUMBER: _ClassVar[int]
    BOOL_LIST_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_LIST_FIELD_NUMBER: _ClassVar[int]
    FLOAT_LIST_FIELD_NUMBER: _ClassVar[int]
    LIST_COLUMN_FIELD_NUMBER: _ClassVar[int]
    int64_list: Int64List
    double_list: DoubleList
    string_list: StringList
    bool_list: BoolList
    timestamp_list: TimestampList
    float_list: FloatList
    list_column: ListColumn
    def __init__(self, int64_list: _Optional[_Union[Int64List, _Mapping]] = ..., double_list: _Optional[_Union[DoubleList, _Mapping]] = ..., string_list: _Optional[_Union[StringList, _Mapping]] = ..., bool_list: _Optional[_Union[BoolList, _Mapping]] = ..., timestamp_list: _Optional[_Union[TimestampList, _Mapping]] = ..., float_list: _Optional[_Union[FloatList, _Mapping]] = ..., list_column: _Optional[_Union[ListColumn, _Mapping]] = ...) -> None: ...

class FeatureList(_message.Message):
    __slots__ = ("features",)
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    features: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, features: _Optional[_Iterable[str]] = ...) -> None: ...

class GetOnlineFeaturesRequest(_message.Message):
    __slots__ = ("feature_service", "features", "entities", "full_feature_names", "as_of")
    class EntitiesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: ValueList
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[ValueList, _Mapping]] = ...) -> None: ...
    FEATURE_SERVICE_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    ENTITIES_FIELD_NUMBER: _ClassVar[int]
    FULL_FEATURE_NAMES_FIELD_NUMBER: _ClassVar[int]
    AS_OF_FIELD_NUMBER: _ClassVar[int]
    feature_service: str
    features: FeatureList
    entities: _containers.MessageMap[str, ValueList]
    full_feature_names: bool
    as_of: int
    def __init__(self, feature_service: _Optional[str] = ..., features: _Optional[_Union[FeatureList, _Mapping]] = ..., entities: _Optional[_Mapping[str, ValueList]] = ..., full_feature_names: bool = ..., as_of: _Optional[int] = ...) -> None: ...

class FeatureVector(_message.Message):
    __slots__ = ("values", "statuses", "event_timestamps")
    VALUES_FIELD_NUMBER: _ClassVar[int]
    STATUSES_FIELD_NUMBER: _ClassVar[int]
    EVENT_TIMESTAMPS_FIELD_NUMBER: _ClassVar[int]
    values: ValueList
    statuses: _containers.RepeatedScalarFieldContainer[FieldStatus]
    event_timestamps: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, values: _Optional[_Union[ValueList, _Mapping]] = ..., statuses: _Optional[_Iterable[_Union[FieldStatus, str]]] = ..., event_timestamps: _Optional[_Iterable[int]] = ...) -> None: ...

class ViewFreshness(_message.Message):
    __slots__ = ("view", "newest_event", "age")
    VIEW_FIELD_NUMBER: _ClassVar[int]
    NEWEST_EVENT_FIELD_NUMBER: _ClassVar[int]
    AGE_FIELD_NUMBER: _ClassVar[int]
    view: str
    newest_event: int
    age: int
    def __init__(self, view: _Optional[str] = ..., newest_event: _Optional[int] = ..., age: _Optional[int] = ...) -> None: ...

class GetOnlineFeaturesResponseMetadata(_message.Message):
    __slots__ = ("feature_names", "served_at", "freshness")
    FEATURE_NAMES_FIELD_NUMBER: _ClassVar[int]
    SERVED_AT_FIELD_NUMBER: _ClassVar[int]
    FRESHNESS_FIELD_NUMBER: _ClassVar[int]
    feature_names: FeatureList
    served_at: int
    freshness: _containers.RepeatedCompositeFieldContainer[ViewFreshness]
    def __init__(self, feature_names: _Optional[_Union[FeatureList, _Mapping]] = ..., served_at: _Optional[int] = ..., freshness: _Optional[_Iterable[_Union[ViewFreshness, _Mapping]]] = ...) -> None: ...

class GetOnlineFeaturesResponse(_message.Message):
    __slots__ = ("metadata", "results")
    METADATA_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    metadata: GetOnlineFeaturesResponseMetadata
    results: _containers.RepeatedCompositeFieldContainer[FeatureVector]
    def __init__(self, metadata: _Optional[_Union[GetOnlineFeaturesResponseMetadata, _Mapping]] = ..., results: _Optional[_Iterable[_Union[FeatureVector, _Mapping]]] = ...) -> None: ...
