"""The Redis layout, version 3: the one place that knows how keys and values look.

Every writer (batch materialize, the streaming sink) and the server import this
module; nothing else builds a key or decodes a value. Version 3 added rollup
tiles (`featurestore.windows`), so that a window reads a bounded number of
tiles whatever its length; version 2 made the tile states exact
(`featurestore.tiles`). Keys of older versions (`fs1:`, `fs2:`) are never read.

Keys (UTF-8):

    fs3:<project>:<view>:<fingerprint>:{<entity key>}:r   latest row of the view
    fs3:<project>:<view>:<fingerprint>:{<entity key>}:t   tiles of the view (a hash)
    fs3:<project>:<view>:<fingerprint>:{<entity key>}:h   stream updates held for the entity (a hash)
    fs3:<project>:<view>:<fingerprint>:materialized       the batch watermark (JSON)
    fs3:<project>:<view>:<fingerprint>:dropped            the stream's counts of events (a hash)
    fs3:<project>:<view>:<fingerprint>:live               the stream job writes this version (JSON)
    fs3:<project>:<view>:<fingerprint>:deferred           stream updates held until their time (a hash)

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
* tiles hash field = tile start in epoch microseconds (decimal ASCII) for a
  tile of the view's own size, `<size>:<start>` (both in microseconds) for a
  rollup tile of a larger size (`featurestore.windows.levels`); value = compact
  JSON list of partial states (see `featurestore.tiles`), one per slot: the
  view's aggregations in order, those that differ only in their window
  (`sum(x) over 1h, 1d`) sharing the slot of the first (`View.state_slots`,
  the manifest's `state`). A rollup holds the merged states of the tiles inside
  it; both engines write them, whole, as they write tiles.
* watermark `{"end_us": E}`: batch materialization has written every event
  with ts <= E (`featurestore materialize --incremental` continues after E).
* held (`:h`) and deferred: updates of the stream that hold an event later
  than the job's clock, written only once the clock reaches it
  (`streaming.sink`): field `<key>` NUL `<tiles hash field>` (empty for a
  row), value `<release µs> <expiry ms> <the value to write>`. Each entry is
  in the entity's held hash, in the entity's slot, so that a release checks
  it and writes the value in one script on a cluster too, and in the view's
  deferred hash, which lists them all for a restarted job (and for status).
* live `{"since_us": T}`: the stream job has written this version of the view
  since T (wall clock). The watermark or the live key is what tells a server
  that Redis holds a version of a view (`serving.versions`).

JSON text is Python's `json.dumps(separators=(",", ":"), ensure_ascii=False)`:
floats in their shortest round-trip form (`repr`), NaN and infinities as
NaN/Infinity/-Infinity, strings with only quotes, backslashes and control characters
escaped. The SQL encoders at the end of this module produce the same bytes
inside DuckDB, so that batch writes need no Python per value; the tests pin
the equality.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field as _field
from typing import Iterable, Mapping, Sequence

LAYOUT_VERSION = 3
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


def watermark_key(project: str, view: str, fingerprint: str) -> bytes:
    return f"{PREFIX}:{project}:{view}:{fingerprint}:materialized".encode()


def deferred_key(project: str, view: str, fingerprint: str) -> bytes:
    return f"{PREFIX}:{project}:{view}:{fingerprint}:deferred".encode()


def held_key(key: bytes) -> bytes:
    """The held hash of the entity whose row or tiles key is `key`."""
    head, sep, kind = key.rpartition(b":")
    if not sep or kind not in (b"r", b"t") or not head.endswith(b"}"):
        raise ValueError(f"not a row or tiles key: {key!r}")
    return head + b":h"


def deferred_entry(key: bytes, field: bytes = b"") -> bytes:
    return key + b"\x00" + field


def encode_deferred(release_us: int, expire_ms: int | None, value: bytes) -> bytes:
    return b"%d %d " % (release_us, expire_ms or 0) + value


def decode_deferred(raw: bytes) -> tuple[int, int | None, bytes]:
    release, expire, value = raw.split(b" ", 2)
    return int(release), int(expire) or None, value


def live_key(project: str, view: str, fingerprint: str) -> bytes:
    return f"{PREFIX}:{project}:{view}:{fingerprint}:live".encode()


def encode_live(since_us: int) -> bytes:
    return _dumps({"since_us": int(since_us)}).encode()


def dropped_key(project: str, view: str, fingerprint: str) -> bytes:
    """Hash of what the streaming job did with the view's input, per hour of
    its clock: field `<reason>:<hour start µs>`, value the count (decimal
    ASCII), where the reason is why events were dropped (`STREAM_DROPS`
    names those the job knows) or `counted` (events the view counted);
    `newest:<hour start µs>` holds the time (µs) of the newest event counted
    that hour which was not ahead of the job's clock."""
    return f"{PREFIX}:{project}:{view}:{fingerprint}:dropped".encode()


# Why the stream drops a line or an event (streaming.flink_sql); the hash
# may hold others, written by another version of the job.
STREAM_DROPS = ("late", "future", "invalid", "unparsable", "invalid_utf8")
COUNTED, NEWEST = "counted", "newest"


def dropped_field(reason: str, hour_us: int) -> bytes:
    return f"{reason}:{int(hour_us)}".encode()


@dataclass(frozen=True)
class StreamCounts:
    """A view's `dropped_key` hash, summed over hours."""
    counted: int = 0                    # events the view counted
    dropped: Mapping[str, int] = _field(default_factory=dict)   # reason -> events dropped
    newest_us: int | None = None        # the newest event counted, not ahead of the clock


def stream_counts(raw: Mapping[bytes, bytes]) -> StreamCounts:
    """The counts of a `dropped_key` hash: counts summed over hours, the newest time the latest."""
    counted, dropped, newest = 0, {}, None
    for name, value in raw.items():
        reason = name.decode().partition(":")[0]
        if reason == NEWEST:
            newest = int(value) if newest is None else max(newest, int(value))
        elif reason == COUNTED:
            counted += int(value)
        else:
            dropped[reason] = dropped.get(reason, 0) + int(value)
    return StreamCounts(counted, dropped, newest)


def dropped_totals(raw: Mapping[bytes, bytes]) -> dict[str, int]:
    """Reason -> events dropped, summed over hours, from a `dropped_key` hash."""
    return dict(stream_counts(raw).dropped)


def tile_field(tile_start_us: int, size_us: int | None = None) -> bytes:
    """The hash field of a tile: its start, or `<size>:<start>` for a rollup
    (pass the size only for rollups: a tile of the view's own size is bare)."""
    if size_us is None:
        return b"%d" % tile_start_us
    return b"%d:%d" % (size_us, tile_start_us)


def parse_tile_field(field: bytes) -> tuple[int | None, int]:
    """(size, start) of a tiles hash field; size None for the view's own tiles."""
    size, sep, start = field.partition(b":")
    return (int(size), int(start)) if sep else (None, int(field))


def _make_dumps():
    """`json.dumps` with the layout's options. The streaming writers encode
    tens of thousands of values per second: where CPython's C encoder can be
    made once (instead of once per call, as `JSONEncoder.encode` does), it
    is, after checking that both give the same text."""
    encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=True)
    try:
        make = json.encoder.c_make_encoder
        chunks = make(None, encoder.default, json.encoder.encode_basestring, None, ":", ",",
                      False, False, True)
        probe = [1, -2.5, [None, True, "\u00e9\"\n"], {"a": 1e300}, float("nan")]
        if "".join(chunks(probe, 0)) != encoder.encode(probe):
            raise ValueError("C encoder differs")
    except (AttributeError, TypeError, ValueError):
        return encoder.encode
    return lambda value: "".join(chunks(value, 0))


_dumps = _make_dumps()


def encode_row(event_ts_us: int, values: Iterable[object]) -> bytes:
    return _dumps([int(event_ts_us), *values]).encode()


def decode_row(raw: bytes) -> tuple[int, list]:
    doc = json.loads(raw)
    return doc[0], doc[1:]


def encode_tile(states: Sequence[object]) -> bytes:
    return _dumps(list(states)).encode()


def encode_tiles(shapes: Sequence[int | None], columns: Sequence[Sequence[object]],
                 kinds: Sequence[str]) -> list[bytes]:
    """`encode_tile` of many tiles at once, from their states' columns: the
    bytes of row r are encode_tile(states of r), where aggregation j's state
    is its next column's value when shapes[j] is None (a bare state), or a
    list of the values of its next shapes[j] columns. kinds[c] says what
    column c holds: "int" (ints or None), "float" (floats or None) or "any".
    A column passed more than once (the same list: a column that states
    share) is spelled once. The streaming writers encode a batch this way,
    column by column, instead of building and encoding a list per tile."""
    spelled: dict[int, list[str]] = {}
    texts = []
    for column, kind in zip(columns, kinds, strict=True):
        text = spelled.get(id(column))
        if text is None:
            text = spelled[id(column)] = _SPELL[kind](column)
        texts.append(text)
    template = "[" + ",".join("%s" if n is None else "[" + ",".join(["%s"] * n) + "]"
                              for n in shapes) + "]"
    return [(template % row).encode() for row in zip(*texts)]


def _spell_ints(values: Sequence[object]) -> list[str]:
    if None in values:
        return ["null" if v is None else str(v) for v in values]
    return list(map(str, values))


def _spell_float(v: float | None) -> str:
    if v is None:
        return "null"
    if v != v:
        return "NaN"
    if v in (math.inf, -math.inf):
        return "Infinity" if v > 0 else "-Infinity"
    return float.__repr__(v)


_SPELL = {"int": _spell_ints,
          "float": lambda values: [_spell_float(v) for v in values],
          "any": lambda values: [_dumps(v) for v in values]}


def decode_tile(raw: bytes) -> list:
    return json.loads(raw)


def decode_tiles(raw: Mapping[bytes, bytes]) -> tuple[list[int], list[list]]:
    """All tiles of one hash (as HGETALL returns it), in ascending start order:
    the starts and the state lists. One JSON parse for the whole hash."""
    if not raw:
        return [], []
    starts = [int(f) for f in raw]
    states = json.loads(b"[" + b",".join(raw.values()) + b"]")
    if len(starts) > 1:
        order = sorted(range(len(starts)), key=starts.__getitem__)
        starts = [starts[i] for i in order]
        states = [states[i] for i in order]
    return starts, states


def encode_watermark(end_us: int) -> bytes:
    return _dumps({"end_us": int(end_us)}).encode()


def decode_watermark(raw: bytes | None) -> int | None:
    return None if raw is None else int(json.loads(raw)["end_us"])


# ------------------------------------------------------------------ SQL side
# DuckDB expressions that build the same bytes as the encoders above, from
# SQL values: keys and JSON text for millions of rows without Python per row.

def sql_text(text: str) -> str:
    """A SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


def sql_entity_key(columns: Sequence[tuple[str, str]]) -> str:
    """`encode_entity_key` of key columns given as (SQL expression, type)."""
    parts = []
    for sql, type_ in columns:
        if type_ == "string":
            for char, escaped in _ESCAPES.items():  # "%" first, as in the table
                sql = f"replace({sql}, {sql_text(char)}, {sql_text(escaped)})"
            parts.append(sql)
        elif type_ == "int64":
            parts.append(f"CAST({sql} AS VARCHAR)")
        else:
            raise TypeError(f"entity key values must be strings or integers, not {type_}")
    return " || '|' || ".join(parts)


def sql_tile_field(start_sql: str, size_us: int | None = None) -> str:
    """`tile_field` as a SQL expression over a tile start."""
    text = f"CAST({start_sql} AS VARCHAR)"
    return text if size_us is None else f"('{int(size_us)}:' || {text})"


def sql_key(project: str, view: str, fingerprint: str, entity_key_sql: str, kind: str) -> str:
    """`row_key` (kind "r") or `tiles_key` (kind "t") as a SQL expression."""
    head = f"{PREFIX}:{project}:{view}:{fingerprint}:{{"
    return f"({sql_text(head)} || {entity_key_sql} || {sql_text('}:' + kind)})"


_CONTROL = r"[\x00-\x1f]"  # an RE2 class: the regex engine reads the escapes
_SHORT_ESCAPES = {8: r"\b", 9: r"\t", 10: r"\n", 12: r"\f", 13: r"\r"}


def _sql_json_string(sql: str) -> str:
    # DuckDB's to_json escapes as Python does except for control characters
    # (\u001F, not \u001f): those rare strings take a slower, exact path.
    slow = f"replace(replace({sql}, '\\', '\\\\'), '\"', '\\\"')"
    for code in range(32):
        short = _SHORT_ESCAPES.get(code, f"\\u{code:04x}")
        slow = f"replace({slow}, chr({code}), {sql_text(short)})"
    return (f"CASE WHEN {sql} IS NULL THEN 'null' WHEN regexp_matches({sql}, '{_CONTROL}') "
            f"THEN '\"' || {slow} || '\"' ELSE CAST(to_json({sql}) AS VARCHAR) END")


def sql_json(sql: str, type_: str) -> str:
    """JSON text of one value of `type_` (int64, int32, float64, float32,
    string, bool, timestamp as epoch microseconds, list<T>, or `int` for any
    exact integer); null values become `null`. One CASE per value: this runs
    for every value of every row a batch writes."""
    if type_.startswith("list<") and type_.endswith(">"):
        return sql_json_list(sql, type_[5:-1])
    if type_ in ("int64", "int32", "timestamp", "int"):
        return f"COALESCE(CAST({sql} AS VARCHAR), 'null')"
    if type_ in ("float64", "float32"):
        # float32 is written as the float64 it widens to, as Python writes it
        sql = f"CAST({sql} AS DOUBLE)" if type_ == "float32" else sql
        return (f"CASE WHEN isfinite({sql}) THEN CAST({sql} AS VARCHAR) WHEN {sql} IS NULL "
                f"THEN 'null' WHEN isnan({sql}) THEN 'NaN' WHEN {sql} > 0 THEN 'Infinity' "
                f"ELSE '-Infinity' END")
    if type_ == "bool":
        return f"CASE WHEN {sql} THEN 'true' WHEN NOT {sql} THEN 'false' ELSE 'null' END"
    if type_ == "string":
        return _sql_json_string(sql)
    raise TypeError(f"no JSON encoding for type {type_!r}")


def sql_json_array(items: Sequence[str]) -> str:
    """A JSON array of JSON texts given as SQL expressions (concat() builds
    the string once; a chain of || would copy it per part)."""
    return "concat('[', " + ", ',', ".join(items) + ", ']')" if items else "'[]'"


def sql_json_list(list_sql: str, type_: str) -> str:
    """A JSON array of the elements of a SQL list (in the list's order)."""
    element = sql_json("v", type_)
    return (f"COALESCE('[' || array_to_string(list_transform({list_sql}, lambda v: {element}), ',')"
            " || ']', 'null')")
