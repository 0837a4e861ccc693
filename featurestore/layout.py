"""The Redis layout, version 4: the one place that knows how keys and values look.

Every writer (batch materialize, the streaming sink) and the server import this
module; nothing else builds a key or decodes a value. Version 4 stores tiles
as fixed-width binary words (`TileCodec`), which a server decodes and merges
with numpy instead of parsing JSON per value; version 3 added rollup tiles
(`featurestore.windows`), so that a window reads a bounded number of tiles
whatever its length; version 2 made the tile states exact
(`featurestore.tiles`). Keys of older versions (`fs1:` to `fs3:`) are never read.

Keys (UTF-8):

    fs4:<project>:<view>:<fingerprint>:{<entity key>}:r   latest row of the view
    fs4:<project>:<view>:<fingerprint>:{<entity key>}:t   tiles of the view (a hash)
    fs4:<project>:<view>:<fingerprint>:{<entity key>}:h   stream updates held for the entity (a hash)
    fs4:<project>:<view>:<fingerprint>:materialized       the batch watermark (JSON)
    fs4:<project>:<view>:<fingerprint>:dropped            the stream's counts of events (a hash)
    fs4:<project>:<view>:<fingerprint>:live               the stream job writes this version (JSON)
    fs4:<project>:<view>:<fingerprint>:deferred           stream updates held until their time (a hash)

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
  rollup tile of a larger size (`featurestore.windows.levels`); value = the
  tile's partial states (see `featurestore.tiles`), one per slot: the view's
  aggregations in order, those that differ only in their window
  (`sum(x) over 1h, 1d`) sharing the slot of the first (`View.state_slots`,
  the manifest's `state`), encoded by the view's `TileCodec`: binary words
  where every state has a fixed width and its words fit in 64 bits, else
  the compact JSON list of the states. A rollup holds the merged states of
  the tiles inside it; both engines write them, whole, as they write tiles.
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

import functools
import json
import math
import struct
from dataclasses import dataclass, field as _field
from typing import Iterable, Mapping, Sequence

import numpy as np

LAYOUT_VERSION = 4
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


def decode_tiles(raw: Mapping[bytes, bytes],
                 codec: "TileCodec | None" = None) -> tuple[list[int], list[list]]:
    """All tiles of one hash (as HGETALL returns it), in ascending start order:
    the starts and the state lists. JSON tiles in one parse for the whole
    hash; binary ones (which need the view's `codec`) one by one."""
    if not raw:
        return [], []
    starts = [int(f) for f in raw]
    if codec is not None and any(v[:1] == bytes([BINARY_TAG]) for v in raw.values()):
        states = [codec.decode(v) for v in raw.values()]
    else:
        states = json.loads(b"[" + b",".join(raw.values()) + b"]")
    if len(starts) > 1:
        order = sorted(range(len(starts)), key=starts.__getitem__)
        starts = [starts[i] for i in order]
        states = [states[i] for i in order]
    return starts, states


# ------------------------------------------------------------------ binary tiles
BINARY_TAG = 0x01           # first byte of a binary tile value (JSON starts with "[")
_HEADER = 9                 # the tag and the null mask
_BASE = 62                  # (H, L) and Q are stored as high word, 62-bit low word
_MASK = (1 << _BASE) - 1
_I64 = (-(1 << 63), (1 << 63) - 1)
_MAX_WORDS = 64             # one null bit per word in a 64-bit mask

# word kinds: "n" count, "s" exact integer sum, "h"/"l" high and low word of
# H * 2**62 + L (float sums), "qh"/"ql" the same of the squares
# Q = A * 2**64 + B * 2**33 + C (variance), "i"/"f"/"b" an int64, float64 or
# bool value (min, max), "t" the time of a (time, value) pair
_VALUE_WORDS = {"int64": "i", "int32": "i", "timestamp": "i", "float64": "f",
                "float32": "f", "bool": "b"}


@dataclass(frozen=True)
class TileCodec:
    """How the tiles of one view are stored, from the aggregations of its
    state slots (`View.state_owners`, in slot order).

    A view whose every state column is a number of fixed width (counts,
    sums, averages, variances, min/max/first/last of int64, float64, bool
    or timestamps) has *binary* tiles: the byte 0x01, a little-endian uint64
    whose bit w is set when word w is null, then 8 bytes per word, little
    endian (int64, or float64 for a float value). Its state columns map to
    words (`words`): a count to one word; an exact sum S to one; the pair
    (H, L) of a float sum to the words of T = H * 2**62 + L, written as
    (T >> 62, T & (2**62 - 1)); the squares (A, B, C) of a variance to the
    same two words of Q = A * 2**64 + B * 2**33 + C (decoded as A = Q >> 64,
    B = 0, C = Q mod 2**64: the same value); a min or max to one; a first or
    last to two (time, value). A tile one of whose words does not fit in an
    int64, and every tile of a view with another state (count_distinct,
    strings), is stored as JSON (`encode_tile`). Readers tell the two apart
    by the first byte."""
    slots: tuple[tuple[tuple[str, ...], ...], ...]   # per slot, per state column: its word kinds
    bare: tuple[bool, ...]                         # per slot: the state is its single column
    fixed: bool                                    # binary tiles
    reduces: tuple[str, ...]                       # per word: how words merge (count, sum, min, max)

    @property
    def words(self) -> tuple[str, ...]:
        return tuple(w for slot in self.slots for column in slot for w in column)

    @property
    def size(self) -> int:
        """Bytes of a binary tile value."""
        return _HEADER + 8 * len(self.words)

    @property
    def dtype(self):
        """The numpy record of a binary tile value."""
        return np.dtype([("tag", "u1"), ("nulls", "<u8"), ("words", "<i8", (len(self.words),))])

    # -------------------------------------------------------------- one tile
    def encode(self, states: Sequence[object]) -> bytes:
        """The value of one tile from its states (as `featurestore.tiles`
        builds them, one per slot)."""
        if self.fixed:
            words = self._words(states)
            if words is not None:
                nulls = sum(1 << k for k, w in enumerate(words) if w is None)
                return _pack_one(self.words, nulls, words)
        return encode_tile(states)

    def _words(self, states: Sequence[object]) -> list | None:
        words: list = []
        for slot, bare, state in zip(self.slots, self.bare, states, strict=True):
            columns = [state] if bare else (state or [None] * len(slot))
            if len(columns) != len(slot):
                raise ValueError(f"a state of {len(columns)} columns where {len(slot)} belong")
            skip = 0
            for kinds, at in zip(slot, range(len(slot))):
                if skip:
                    skip -= 1
                    continue
                value = columns[at]
                first = kinds[0] if kinds else None
                if first == "h":
                    hi, lo = columns[at], columns[at + 1]
                    words += _split(None if hi is None else hi * (1 << _BASE) + (lo or 0))
                    skip = 1
                elif first == "qh":
                    a, b, c = columns[at:at + 3]
                    words += _split(None if a is None else (a << 64) + (b << 33) + c)
                    skip = 2
                elif first == "t":
                    words += [None, None] if value is None else [value[0], value[1]]
                elif first == "n":
                    words.append(value or 0)
                else:
                    words.append(value)
        for kind, w in zip(self.words, words):
            if w is not None and kind != "f" and not _I64[0] <= w <= _I64[1]:
                return None
        return words

    def unpack(self, rows: Sequence[Sequence[bytes | None]]):
        """(words, nulls, present) of the tile values of `rows` (each a list
        of values, None standing for an absent tile), in order: words an
        (n, words) int64 array (float words hold their float64 bits), nulls
        a bool array of the same shape, present a bool array of n. None when
        a value present is not a binary tile of this codec (a JSON tile, or
        a corrupt one)."""
        if not self.fixed:
            return None
        absent = self._absent     # tag 0: an absent tile, no word present
        blob = b"".join([v or absent for values in rows for v in values])
        n = sum(map(len, rows))
        if len(blob) != n * self.size:
            return None
        records = np.frombuffer(blob, self.dtype)
        present = records["tag"] == BINARY_TAG
        if int(present.sum()) != n - sum(values.count(None) for values in rows):
            return None   # a value present whose first byte is not the tag
        masks = np.ascontiguousarray(records["nulls"]).view(np.uint8).reshape(-1, 8)
        nulls = np.unpackbits(masks, axis=1, count=len(self.words), bitorder="little")
        return records["words"], nulls.view(np.bool_), present

    @functools.cached_property
    def _absent(self) -> bytes:
        return b"\x00" + _pack_one(self.words, (1 << len(self.words)) - 1,
                                   [None] * len(self.words))[1:]

    def decode(self, raw: bytes) -> list:
        """The states of one tile value, binary or JSON."""
        if raw[:1] != bytes([BINARY_TAG]):
            return decode_tile(raw)
        if len(raw) != self.size:
            raise ValueError(f"a binary tile of {len(raw)} bytes; this view's are {self.size}")
        nulls = int.from_bytes(raw[1:_HEADER], "little")
        values = struct.unpack_from("<%dq" % len(self.words), raw, _HEADER)
        words = [None if nulls >> k & 1 else _word_value(kind, v)
                 for k, (kind, v) in enumerate(zip(self.words, values))]
        return self._states(words)

    def _states(self, words: list) -> list:
        states, at = [], 0
        for slot, bare in zip(self.slots, self.bare):
            columns = []
            for kinds in slot:
                if not kinds:
                    continue    # B of a variance: folded into the words of Q
                got = words[at:at + len(kinds)]
                at += len(kinds)
                first = kinds[0]
                if first in ("h", "qh"):
                    total = None if got[0] is None else (got[0] << _BASE) + got[1]
                    if first == "h":
                        columns += [None, None] if total is None else [total >> _BASE,
                                                                         total & _MASK]
                    else:
                        columns += ([None, None, None] if total is None else
                                    [total >> 64, 0, total & ((1 << 64) - 1)])
                elif first == "t":
                    columns.append(None if got[0] is None else [got[0], got[1]])
                else:
                    columns.append(got[0])
            states.append(columns[0] if bare else columns)
        return states

    # -------------------------------------------------------------- many tiles
    def pack(self, words: Sequence, nulls: Sequence) -> list[bytes] | None:
        """Binary values of n tiles from their words (as `records` takes
        them). None when the view's tiles are not binary."""
        if not self.fixed:
            return None
        data = self.records(words, nulls).tobytes()
        size = self.size
        return [data[at:at + size] for at in range(0, len(data), size)]

    def records(self, words: Sequence, nulls: Sequence) -> np.ndarray:
        """The binary values of n tiles as an array of `dtype` records:
        `words[w]` an int64 (or float64, for an "f" word) array of n,
        `nulls[w]` a bool array of n (or None: no nulls); a null word is 0."""
        n = len(words[0]) if words else 0
        out = np.zeros(n, self.dtype)
        out["tag"] = BINARY_TAG
        mask = np.zeros(n, np.uint64)
        for k, (word, null) in enumerate(zip(words, nulls, strict=True)):
            word = np.asarray(word)
            if word.dtype.kind == "f":
                word = word.view(np.int64)
            if null is not None:
                null = np.asarray(null, np.bool_)
                word = np.where(null, 0, word)
                mask |= null.astype(np.uint64) << np.uint64(k)
            out["words"][:, k] = word
        out["nulls"] = mask
        return out

    def encode_columns(self, columns: Sequence[Sequence[object]]) -> list[bytes]:
        """The values of many tiles from their state columns (one list per
        state column of every slot, in order, as `encode` reads them): binary
        where the tile's words fit, else JSON. The streaming writers encode a
        batch this way: the words of all tiles are worked out column by
        column with numpy (Python ints only for the (H, L) and (A, B, C)
        parts beyond 64 bits) and packed at once; a tile that holds anything
        else (a word beyond int64, a value of an odd type) is encoded alone,
        by `encode`."""
        n = len(columns[0]) if columns else 0
        shapes = [None if bare else len(slot) for slot, bare in zip(self.slots, self.bare)]
        if not self.fixed:
            return encode_tiles(shapes, columns, ["any"] * len(columns))
        width = sum(len(slot) for slot in self.slots)
        if len(columns) != width:
            raise ValueError(f"{len(columns)} state columns where {width} belong")
        if n == 0:
            return []
        words: list[np.ndarray] = []
        nulls: list[np.ndarray | None] = []
        alone = np.zeros(n, np.bool_)    # the tiles `encode` encodes one by one
        seen: dict[tuple, tuple] = {}    # a column that states share is read once

        def read(column, convert):
            got = seen.get((id(column), convert))
            if got is None:
                got = seen[(id(column), convert)] = convert(column)
            return got

        at = 0
        for slot in self.slots:
            mine, at = columns[at:at + len(slot)], at + len(slot)
            skip = 0
            for c, kinds in enumerate(slot):
                if skip:
                    skip -= 1
                    continue
                first = kinds[0] if kinds else None
                if first == "h":
                    hi, lo, null, odd = _sum_words(read(mine[c], _int_words),
                                                   read(mine[c + 1], _low62_limbs))
                    words += [hi, lo]
                    nulls += [null, null]
                    skip = 1
                elif first == "qh":
                    hi, lo, null, odd = _square_words(read(mine[c], _int_words),
                                                      read(mine[c + 1], _low29_limbs),
                                                      read(mine[c + 2], _low62_limbs))
                    words += [hi, lo]
                    nulls += [null, null]
                    skip = 2
                elif first == "t":
                    times, values = _pair_columns(mine[c])
                    word, null, odd = _int_words(times)
                    value, value_null, value_odd = (_float_words if kinds[1] == "f"
                                                    else _int_words)(values)
                    words += [word, value]
                    nulls += [null, value_null]
                    odd = _either(odd, value_odd)
                elif first == "n":
                    word, _, odd = read(mine[c], _count_words)
                    words.append(word)
                    nulls.append(None)
                else:
                    word, null, odd = read(mine[c], _float_words if first == "f" else _int_words)
                    words.append(word)
                    nulls.append(null)
                if odd is not None:
                    alone |= odd
        out = self.pack(words, nulls)
        for r in np.flatnonzero(alone).tolist():
            out[r] = self.encode(_row_states(shapes, columns, r))
        return out


# Columns of encode_columns: each helper returns int64 (float64 for "f")
# arrays of the column's words, a bool array of its nulls (None: none), and
# a bool array of the rows whose value it cannot put in a word as `encode`
# would (None: none), which are then encoded alone.
_INTS = frozenset((int, bool))


def _either(a: np.ndarray | None, b: np.ndarray | None) -> np.ndarray | None:
    return b if a is None else a if b is None else a | b


def _null_mask(values: Sequence, zero: object = 0) -> tuple[Sequence, np.ndarray | None]:
    """The values with None as `zero`, and where they were None."""
    if None not in values:
        return values, None
    null = np.array([v is None for v in values], np.bool_)
    return [zero if v is None else v for v in values], null


def _int_words(values: Sequence) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    values, null = _null_mask(values)
    if set(map(type, values)) <= _INTS:
        try:
            return np.array(values, np.int64), null, None
        except OverflowError:
            pass
    fits = [type(v) in _INTS and _I64[0] <= v <= _I64[1] for v in values]
    words = np.array([v if ok else 0 for v, ok in zip(values, fits)], np.int64)
    return words, null, ~np.array(fits, np.bool_)


def _count_words(values: Sequence) -> tuple[np.ndarray, None, np.ndarray | None]:
    """A count's word: a null count is 0 (`encode` writes `value or 0`)."""
    word, _, odd = _int_words(values)
    return word, None, odd


def _float_words(values: Sequence) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    values, null = _null_mask(values, 0.0)
    if set(map(type, values)) <= {float}:
        return np.array(values, np.float64), null, None
    words, odd = [], []
    for v in values:
        try:
            words.append(float(v) if type(v) in (float, int, bool) else None)
        except OverflowError:
            words.append(None)
        odd.append(words[-1] is None)
    return (np.array([0.0 if w is None else w for w in words], np.float64), null,
            np.array(odd, np.bool_))


def _limbs(values: Sequence, shift: int):
    """(values >> shift, values & (2**shift - 1)) as int64 arrays (None as
    0), where they were None, and the rows whose high part is beyond int64
    or whose value is not an int."""
    values, null = _null_mask(values)
    mask = (1 << shift) - 1
    if set(map(type, values)) <= _INTS:
        try:
            whole = np.array(values, np.int64)
            return whole >> shift, whole & mask, null, None
        except OverflowError:
            pass
    ints = [v if type(v) in _INTS else 0 for v in values]
    high, _, odd = _int_words([v >> shift for v in ints])
    low = np.array([v & mask for v in ints], np.int64)
    kinds = np.array([type(v) in _INTS for v in values], np.bool_)
    return high, low, null, _either(odd, None if kinds.all() else ~kinds)


def _low62_limbs(values: Sequence):
    return _limbs(values, _BASE)


def _low29_limbs(values: Sequence):
    return _limbs(values, 29)    # B * 2**33 = (B >> 29) * 2**62 + (B & (2**29 - 1)) * 2**33


def _sum_words(h, l_limbs):
    """The words (T >> 62, T & (2**62 - 1)) of T = H * 2**62 + L, from H's
    `_int_words` and L's 62-bit `_limbs` (a null L counts as 0; a null H
    makes both words null)."""
    h, null, h_odd = h
    l_high, l_low, _, l_odd = l_limbs
    hi = h + l_high
    over = ((h ^ hi) & (l_high ^ hi)) < 0   # the sum wrapped: beyond int64
    odd = _either(h_odd, l_odd)
    if over.any():
        odd = _either(odd, over)
    return hi, l_low, null, odd


def _square_words(a, b_limbs, c_limbs):
    """The words of Q = A * 2**64 + B * 2**33 + C, from A's `_int_words`,
    B's 29-bit and C's 62-bit `_limbs`: B * 2**33 = (B >> 29) * 2**62 +
    (B & (2**29 - 1)) * 2**33, so that Q = (4A + (B >> 29) + (C >> 62)) *
    2**62 + (B & (2**29 - 1)) * 2**33 + (C & (2**62 - 1)), the last two
    below 2**63. Rows where that high word could pass int64, and rows with
    A but no B or C (which `encode` refuses), are encoded alone."""
    a, null, a_odd = a
    b_high, b_low, b_null, b_odd = b_limbs
    c_high, c_low, c_null, c_odd = c_limbs
    rest = (b_low << 33) + c_low
    hi = a * 4 + b_high + c_high + (rest >> _BASE)
    safe = ((a > -(1 << 59)) & (a < 1 << 59) & (b_high > -(1 << 60)) & (b_high < 1 << 60)
            & (c_high > -(1 << 60)) & (c_high < 1 << 60))
    odd = _either(_either(a_odd, b_odd), c_odd)
    if not safe.all():
        odd = _either(odd, ~safe)
    missing = _either(b_null, c_null)
    if missing is not None:
        odd = _either(odd, missing if null is None else missing & ~null)
    return hi, rest & _MASK, null, odd


def _pair_columns(pairs: Sequence) -> tuple[list, list]:
    """The times and the values of a column of (time, value) pairs or None."""
    if None in pairs:
        return ([None if p is None else p[0] for p in pairs],
                [None if p is None else p[1] for p in pairs])
    return [p[0] for p in pairs], [p[1] for p in pairs]


def _row_states(shapes: Sequence[int | None], columns: Sequence[Sequence[object]],
                r: int) -> list:
    """The states of tile r from the state columns."""
    at, states = 0, []
    for shape in shapes:
        if shape is None:
            states.append(columns[at][r])
            at += 1
        else:
            states.append([columns[at + c][r] for c in range(shape)])
            at += shape
    return states


def _split(total: int | None) -> list:
    return [None, None] if total is None else [total >> _BASE, total & _MASK]


def _word_value(kind: str, word: int):
    if kind == "f":
        return struct.unpack("<d", struct.pack("<q", word))[0]
    if kind == "b":
        return bool(word)
    return word


def _pack_one(kinds: Sequence[str], nulls: int, words: Sequence) -> bytes:
    values = [0 if w is None else (struct.unpack("<q", struct.pack("<d", w))[0] if k == "f"
                                   else int(w)) for k, w in zip(kinds, words)]
    return bytes([BINARY_TAG]) + nulls.to_bytes(8, "little") + struct.pack(
        "<%dq" % len(values), *values)


def tile_codec(aggregations: Sequence) -> TileCodec:
    """The codec of a view whose state slots hold `aggregations`
    (`featurestore.tiles.Aggregation`, in slot order)."""
    return _codec(tuple(aggregations))


@functools.lru_cache(maxsize=1024)
def _codec(aggregations: tuple) -> TileCodec:
    slots, fixed, reduces = [], True, []
    for agg in aggregations:
        columns = []
        value_word = _VALUE_WORDS.get(agg.input_type or "")
        for c in agg.columns:
            if c.reduce == "count":
                kinds: tuple[str, ...] = ("n",)
            elif c.reduce == "sum" and c.input == "hi":
                kinds = ("h", "l")
            elif c.reduce == "sum" and c.input == "lo":
                kinds = ()
            elif c.reduce == "sum" and c.input == "a2":
                kinds = ("qh", "ql")
            elif c.reduce == "sum" and c.input in ("ab", "b2"):
                kinds = ()
            elif c.reduce == "sum":
                kinds = ("s",)
            elif c.reduce in ("min", "max") and value_word is not None:
                kinds = ("t", value_word) if c.input == "ts_value" else (value_word,)
            else:   # a set, or a value of no fixed width
                kinds, fixed = ("?",), False
            columns.append(kinds)
            reduces += [c.reduce] * len(kinds)
        slots.append(tuple(columns))
    words = sum(len(k) for slot in slots for k in slot)
    return TileCodec(tuple(slots), tuple(a.bare for a in aggregations),
                     fixed and 0 < words <= _MAX_WORDS, tuple(reduces))


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
