"""The Redis layout, version 1: the one place that knows how keys and values look.

Every writer (batch materialize, the streaming sink) and the server import this
module; nothing else builds a key or decodes a value.

Keys (UTF-8):

    fs1:<project>:<view>:<fingerprint>:{<entity key>}:r   latest row of the view
    fs1:<project>:<view>:<fingerprint>:{<entity key>}:t   tiles of the view (a hash)

* `<fingerprint>` hashes the view's definition, so a changed view never reads
  state written under an older one.
* `{<entity key>}` is a Redis Cluster hash tag: every view of one entity lives
  in one slot, so a lookup of an entity touches one node.
* The entity key joins the key values with `|`; `%`, `|`, `{`, `}` and `:`
  inside a string value are percent-encoded, so the form is unambiguous.

Values:

* row   `[event_ts_us, v1, v2, ...]` compact JSON, one value per row feature.
  Value types in JSON: string -> string, int64 -> integer, float64 -> number
  (NaN and infinities as NaN/Infinity), bool -> true/false, timestamp ->
  integer epoch microseconds, null -> null.
* tiles hash field = tile start in epoch microseconds (decimal ASCII); value =
  compact JSON list of partial states, one per aggregation in view order
  (see `featurestore.tiles`).
"""
from __future__ import annotations

import json
from typing import Iterable, Sequence

LAYOUT_VERSION = 1
PREFIX = f"fs{LAYOUT_VERSION}"

_ESCAPES = {"%": "%25", "|": "%7C", "{": "%7B", "}": "%7D", ":": "%3A"}
_ESCAPE_TABLE = str.maketrans(_ESCAPES)


def encode_entity_key(values: Sequence[object]) -> str:
    """Encode one entity's key values (in the entity's key order)."""
    parts = []
    for v in values:
        if isinstance(v, bool):
            parts.append("true" if v else "false")
        elif isinstance(v, int):
            parts.append(str(v))
        elif isinstance(v, str):
            parts.append(v.translate(_ESCAPE_TABLE))
        else:
            raise TypeError(f"entity key values must be strings or integers, not {type(v).__name__}")
    return "|".join(parts)


def _key(project: str, view: str, fingerprint: str, entity_key: str, kind: str) -> bytes:
    return f"{PREFIX}:{project}:{view}:{fingerprint}:{{{entity_key}}}:{kind}".encode()


def row_key(project: str, view: str, fingerprint: str, entity_key: str) -> bytes:
    return _key(project, view, fingerprint, entity_key, "r")


def tiles_key(project: str, view: str, fingerprint: str, entity_key: str) -> bytes:
    return _key(project, view, fingerprint, entity_key, "t")


def tile_field(tile_start_us: int) -> bytes:
    return str(int(tile_start_us)).encode()


def parse_tile_field(field: bytes) -> int:
    return int(field)


_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=True).encode


def encode_row(event_ts_us: int, values: Iterable[object]) -> bytes:
    return _dumps([int(event_ts_us), *values]).encode()


def decode_row(raw: bytes) -> tuple[int, list]:
    doc = json.loads(raw)
    return doc[0], doc[1:]


def encode_tile(states: Sequence[object]) -> bytes:
    return _dumps(list(states)).encode()


def decode_tile(raw: bytes) -> list:
    return json.loads(raw)
