"""The Redis writers of the streaming job, and the contract of their input.

Each stream view has up to three outputs in the Flink job, each ending in a
Python function (`streaming.job`) that hands Arrow batches to a `RedisSink`:

    tiles     per (entity, tile): the state columns of every aggregation, for
              tiles of the view's size and for its rollups (windows.levels)
    latest    per entity: the latest row, as streaming.wire spells it
    dropped   per reason and hour: how many events the view dropped, and
              how many it counted with the time of the newest of those

Every update carries the full state of what it describes, so a write replaces
what Redis held, and an update replayed after a failure writes the same bytes
again: delivery is at-least-once, the effect exactly-once. Keys and values
are built by `featurestore.layout` only.

Events ahead of the job's clock (producers' clocks disagree; the job accepts
them up to `windows.MAX_FUTURE_US` ahead) are never served before their time:
an update that holds one (a tile whose newest event, or a latest row, is
later than the clock) is held (`layout.held_key`, and listed in the view's
`deferred` hash) and written when the clock reaches that event, by the next
write or a timer of the sink, unless a later update of the same tile or row
replaced it first. Meanwhile the tile or row keeps the value it had: a
request at t never counts an event after t, at the price of that one tile or
row lagging until its newest event is due. A release checks that the
entity's held hash still holds the value and writes it in one script, on the
entity's slot (on a cluster too), so a current update of the same tile or
row, which removes the held entry before it writes, can never be overwritten
by the older held one, whichever sink subtask releases it (after a restart
every subtask of the view loads every held update from the deferred hash).

The sink writes to one node, a Sentinel's master or a cluster
(`featurestore.redis_client`: one pipeline per master there).

`input_fields` is the contract with `streaming.flink_sql`: the columns each
function receives, in order; how their values are spelled and read back is
`streaming.wire`'s. This module imports neither pyflink nor pandas:
the Python workers import it, and tests drive it with plain lists.
"""
from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from operator import itemgetter
from typing import Callable, Sequence

from featurestore import layout, redis_client, tiles
from streaming.wire import DECODERS, Field, decoded_kind, latest_decoder, unflag

TILES, LATEST, DROPPED = "tiles", "latest", "dropped"
RELEASE_INTERVAL_S = 0.25   # how often a sink looks for held updates that are due

# Writes a held update (KEYS[1] the entity's held hash, KEYS[2] its key, one
# slot; ARGV: the entry, its stored value, the hash field or '' for a row, the
# value, the expiry in ms or 0) only while the held hash still holds that very
# value: a later update of the same tile or row replaced or removed it otherwise.
_RELEASE = """
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
local expire = tonumber(ARGV[5])
if ARGV[3] == '' then
  if expire > 0 then redis.call('SET', KEYS[2], ARGV[4], 'PXAT', expire)
  else redis.call('SET', KEYS[2], ARGV[4]) end
  return 1
end
redis.call('HSET', KEYS[2], ARGV[3], ARGV[4])
if expire > 0 and redis.call('PEXPIRETIME', KEYS[2]) < expire then
  redis.call('PEXPIREAT', KEYS[2], expire)
end
return 1
"""

# Removes entries from the deferred hash (KEYS[1]; ARGV: entry, value, entry,
# value, ...), each only while it still lists that value: once released (or
# found replaced), a held update leaves the list.
_FORGET = """
local n = 0
for i = 1, #ARGV, 2 do
  if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[i + 1] then
    redis.call('HDEL', KEYS[1], ARGV[i])
    n = n + 1
  end
end
return n
"""


@dataclass(frozen=True)
class StateColumn:
    """The fields that carry one column of a tile state (featurestore.tiles),
    and the decoder (`wire.DECODERS`) that makes the column's values from them."""
    decoder: str
    fields: tuple[Field, ...]


@dataclass(frozen=True)
class State:
    """The tile state of one aggregation: `tiles.aggregation(function,
    input_type).state(...)` of its decoded columns."""
    function: str
    input_type: str | None
    columns: tuple[StateColumn, ...]


@dataclass(frozen=True)
class ViewOutput:
    """What the writers must know of one stream view."""
    name: str
    fingerprint: str
    keys: tuple[Field, ...]
    states: tuple[State, ...]          # empty when the view has no aggregations
    row_kinds: tuple[str, ...]         # kind of each row feature; empty when none
    tile_us: int
    levels: tuple[int, ...]            # tile sizes it keeps, finest first (windows.levels)
    tiles_keep_us: int | None          # a tiles key lives this long after its newest tile
    rows_keep_us: int | None           # a row key lives this long after its event time
    future_us: int                     # how far ahead of the clock an event may be

    @property
    def parts(self) -> tuple[str, ...]:
        return tuple(p for p, present in ((TILES, bool(self.states)),
                                          (LATEST, bool(self.row_kinds)), (DROPPED, True))
                     if present)

    @property
    def rollups(self) -> bool:
        """Whether it keeps tiles larger than its own: then its tiles carry their size."""
        return len(self.levels) > 1


def input_fields(view: ViewOutput, part: str) -> list[Field]:
    """The columns the function of `part` receives, in order, each flagged
    field followed by its null flag. Tiles: the entity's keys, the tile's
    size (only where the view has rollups) and start, the time of its newest
    event, its state fields."""
    if part == TILES:
        size = [Field("size", "int", False)] if view.rollups else []
        fields = [*view.keys, *size, Field("tile", "int", False), Field("newest", "int", False),
                  *state_fields(view)]
    elif part == LATEST:
        fields = [*view.keys, Field("latest", "string", False)]
    else:
        fields = [Field("reason", "string", False), Field("hour", "int", False),
                  Field("count", "int", False), Field("newest", "int", True)]
    out = []
    for f in fields:
        out.append(f)
        if f.flagged:
            out.append(Field(f.flag, "bool", False))
    return out


def state_fields(view: ViewOutput) -> list[Field]:
    """The fields of the view's tile states, each once (aggregations may
    share a column: `sum(x) over 1h, 1d`), where it first appears."""
    return list({f.name: f for s in view.states for c in s.columns for f in c.fields}.values())


# ------------------------------------------------------------ the writer
def _pick(columns: Sequence[list], rows: list[int]) -> list[list]:
    """The given rows of every column."""
    if len(rows) == 1:
        return [[column[rows[0]]] for column in columns]
    get = itemgetter(*rows)
    return [list(get(column)) for column in columns]


Clock = Callable[[], int]


def wall_clock_us() -> int:
    return time.time_ns() // 1000


@dataclass
class WriteStats:
    """What a sink wrote since it started."""
    written: int = 0
    expired: int = 0      # updates of keys that no request can reach any more: not written
    superseded: int = 0   # updates replaced by a later one of the same batch
    deferred: int = 0     # updates held until the clock reaches their newest event
    released: int = 0     # held updates written once due


def _unpack(held: list[tuple[bytes, bytes]]):
    """(entry, stored value, key, hash field or b"", expiry ms or None, value
    to write) of each held update."""
    for entry, value in held:
        key, _, field = entry.partition(b"\x00")
        _, expire_ms, payload = layout.decode_deferred(value)
        yield entry, value, key, field, expire_ms, payload


class RedisSink:
    """Writes one output of one view to Redis, one pipelined round trip per batch."""

    def __init__(self, project: str, view: ViewOutput, part: str,
                 store: redis_client.RedisTarget | str, clock: Clock = wall_clock_us):
        if part not in view.parts:
            raise ValueError(f"view {view.name!r} has no {part!r} output")
        self.project, self.view, self.part = project, view, part
        self.fields = input_fields(view, part)
        self._redis = redis_client.sync_client(store)
        self._clock = clock
        self._keys: dict[tuple, bytes] = {}
        self._expiry: dict[bytes, int] = {}   # the expiry each tiles key was last given
        self._decode_latest = latest_decoder(view.row_kinds)
        self._live = False   # the version's live key is set (serving.versions)
        # per state column of every aggregation, in order: (decoder, index of
        # each of its fields among the state fields) and what it holds; per
        # aggregation, None for a bare state or its number of columns
        at = {f.name: i for i, f in enumerate(state_fields(view))}
        self._state_columns = [((c.decoder, *(at[f.name] for f in c.fields)),
                                decoded_kind(c.decoder, c.fields))
                               for s in view.states for c in s.columns]
        aggregations = [tiles.aggregation(s.function, s.input_type) for s in view.states]
        self._shapes = [None if a.bare else len(s.columns)
                        for a, s in zip(aggregations, view.states)]
        self._codec = layout.tile_codec(aggregations)
        self.stats = WriteStats()
        # updates held until their newest event is due: entry -> (release µs, stored value)
        self._deferred_key = layout.deferred_key(project, view.name, view.fingerprint)
        self._pending: dict[bytes, tuple[int, bytes]] = {}
        self._lock = threading.Lock()   # guards _pending
        self._io = threading.RLock()     # one write or release at a time
        self._stop = threading.Event()
        self._timer = None
        if part != DROPPED:
            self._load_pending()

    def close(self) -> None:
        self._stop.set()
        if self._timer is not None:
            self._timer.join(5)
        self._redis.close()

    # ------------------------------------------------------- held updates
    def _mine(self, entry: bytes) -> bool:
        """Whether a deferred entry is this part's: tiles name a hash field."""
        return (self.part == TILES) == (not entry.endswith(b"\x00"))

    def _load_pending(self) -> None:
        """Updates held before a restart: the sink writes them when due. One
        listed without its held copy (a sink before held hashes wrote only the
        list) is given one, so that it is released, not dropped."""
        held = self._redis.hgetall(self._deferred_key)
        for entry, value in held.items():
            if self._mine(entry):
                self._pending[entry] = (layout.decode_deferred(value)[0], value)
        redis_client.execute(self._redis, [
            (b"HSETNX", layout.held_key(entry.partition(b"\x00")[0]), entry, value)
            for entry, (_, value) in self._pending.items()])
        if self._pending:
            self._start_timer()

    def _start_timer(self) -> None:
        if self._timer is None:
            self._timer = threading.Thread(target=self._release_loop, daemon=True,
                                           name=f"featurestore-{self.view.name}-{self.part}-due")
            self._timer.start()

    def _release_loop(self) -> None:
        while not self._stop.wait(RELEASE_INTERVAL_S):
            try:
                self.release_due()
            except Exception:   # Redis away: the next round (or write) retries
                pass

    def release_due(self) -> int:
        """Write the held updates whose newest event the clock has reached,
        each only if no later update replaced it meanwhile. Returns how many."""
        with self._io:
            now = self._clock()
            with self._lock:
                due = [(entry, value) for entry, (release, value) in self._pending.items()
                       if release <= now]
            if not due:
                return 0
            released = sum(redis_client.execute(self._redis, [
                (b"EVAL", _RELEASE, 2, layout.held_key(key), key, entry, value, field, payload,
                 expire_ms or 0)
                for entry, value, key, field, expire_ms, payload in _unpack(due)]))
            redis_client.execute(self._redis, [
                (b"EVAL", _FORGET, 1, self._deferred_key,
                 *(part for pair in due for part in pair))])
            with self._lock:
                for entry, value in due:
                    if self._pending.get(entry, (0, None))[1] == value:
                        del self._pending[entry]
            self.stats.released += released
            return released

    def _defer(self, commands: list, key: bytes, field: bytes, release_us: int,
               expire_ms: int | None, value: bytes) -> None:
        entry = layout.deferred_entry(key, field)
        stored = layout.encode_deferred(release_us, expire_ms, value)
        commands += [(b"HSET", layout.held_key(key), entry, stored),
                     (b"HSET", self._deferred_key, entry, stored)]
        with self._lock:
            self._pending[entry] = (release_us, stored)
        self.stats.deferred += 1
        self._start_timer()

    def _replaces_held(self, commands: list, key: bytes, field: bytes = b"") -> None:
        """A current update of what a held one would have written: the held
        one is dropped (it would write older state over it)."""
        if not self._pending:
            return
        entry = layout.deferred_entry(key, field)
        with self._lock:
            held = self._pending.pop(entry, None)
        if held is not None:
            commands += [(b"HDEL", layout.held_key(key), entry),
                         (b"HDEL", self._deferred_key, entry)]

    def write(self, columns: Sequence[list]) -> int:
        """Write one batch, given as columns in `input_fields` order (flags
        included). Only the last update of a key (and tile) in the batch is
        written: Flink may send several. Returns the number of writes."""
        if len(columns) != len(self.fields):
            raise ValueError(f"{self.part} of view {self.view.name!r} takes "
                             f"{len(self.fields)} columns, not {len(columns)}")
        with self._io:
            return self._write(columns)

    def _write(self, columns: Sequence[list]) -> int:
        if self.part != DROPPED and self._pending:
            self.release_due()
        if self.part != DROPPED:
            # a key (and tile) may come more than once: Flink's mini-batches
            # queue up when the writers fall behind
            n = len(self.view.keys) + (self.part == TILES) * (1 + self.view.rollups)
            rows = self._last(list(zip(*columns[:n])))
            if len(rows) < len(columns[0]):
                columns = _pick(columns, rows)
        values = self._unflag(columns)
        expiries: dict[bytes, int] = {}
        if self.part == TILES:
            commands = self._tiles(values, expiries)
        elif self.part == LATEST:
            commands = self._latest(values)
        else:
            key = layout.dropped_key(self.project, self.view.name, self.view.fingerprint)
            commands = [(b"HSET", key, layout.dropped_field(reason, hour), count)
                        + (() if newest is None else (layout.dropped_field(layout.NEWEST, hour),
                                                      newest))
                        for reason, hour, count, newest in zip(*values)]
        written = len(commands)
        if commands and not self._live and self.part != DROPPED:
            commands.append((b"SET", layout.live_key(self.project, self.view.name,
                                                     self.view.fingerprint),
                             layout.encode_live(self._clock()), b"NX"))
        self._send(commands)
        self._live = self._live or (bool(commands) and self.part != DROPPED)
        if len(self._expiry) + len(expiries) > 1_000_000:
            self._expiry.clear()
        self._expiry.update(expiries)   # only once Redis has them
        self.stats.written += written
        return written

    def _send(self, commands: list[tuple]) -> None:
        """Send commands in one round trip (per cluster master) and read every
        reply (an error reply raises: the job fails and replays from its last
        checkpoint)."""
        redis_client.execute(self._redis, commands)

    def _unflag(self, columns: Sequence[list]) -> list[list]:
        """The value columns, None where a field's null flag is set."""
        out, i = [], 0
        for f in (f for f in self.fields if not f.name.endswith("__null")):
            flags = columns[i + 1] if f.flagged else None
            out.append(unflag(columns[i], flags))
            i += 2 if f.flagged else 1
        return out

    def _entity_keys(self, values: list[list], kind: Callable) -> list[bytes]:
        """The Redis key of each row's entity (the same entities recur in
        every batch: their keys are kept)."""
        n = len(self.view.keys)
        out = []
        for entity in zip(*values[:n]):
            key = self._keys.get(entity)
            if key is None:
                if len(self._keys) >= 1_000_000:
                    self._keys.clear()
                key = self._keys[entity] = kind(self.project, self.view.name,
                                                self.view.fingerprint,
                                                layout.encode_entity_key(entity))
            out.append(key)
        return out

    def _last(self, targets: list[tuple]) -> list[int]:
        """Row numbers of the last update of each target, in batch order."""
        last = {t: r for r, t in enumerate(targets)}
        self.stats.superseded += len(targets) - len(last)
        return sorted(last.values())

    def _tiles(self, values: list[list], expiries: dict[bytes, int]) -> list[tuple]:
        """One HSET per key of the states of all its tiles in the batch (a
        rollup's under its size and start: `layout.tile_field`), then
        PEXPIREAT of each key whose expiry changes (noted in `expiries`)."""
        view, n = self.view, len(self.view.keys)
        keys, starts = self._entity_keys(values, layout.tiles_key), values[n + view.rollups]
        newest = values[n + 1 + view.rollups]
        fields = self._tile_fields(values[n] if view.rollups else None, starts)
        states = self._encoded_states(values[n + 2 + view.rollups:])
        now, keep = self._clock(), view.tiles_keep_us
        # (a rollup starts before its tiles: once its start is out of reach,
        # no window reads it whole, so none reads it at all)
        cut = -math.inf if keep is None else now - keep
        # A key lives while a window reaches its newest tile, and at least
        # until `floor` + keep: tiles arrive at most future_us ahead of now,
        # so this expiry is never earlier than one set before it.
        floor = now - now % view.tile_us + view.future_us
        hsets: dict[bytes, list] = {}    # key -> HSET key field state field state ...
        ahead: dict[bytes, int] = {}     # key -> its newest start after floor (rare)
        held: list[tuple] = []           # HSETs and HDELs of the deferred hash
        for key, start, field, state, last in zip(keys, starts, fields, states, newest):
            if start <= cut:
                self.stats.expired += 1
                continue
            if last > now:   # holds an event after the clock: written when it is due
                self._defer(held, key, field, last,
                            None if keep is None else (max(start, floor) + keep) // 1000, state)
                continue
            self._replaces_held(held, key, field)
            hset = hsets.get(key)
            if hset is None:
                hsets[key] = [b"HSET", key, field, state]
            else:
                hset += (field, state)
            if start > floor:
                ahead[key] = max(ahead.get(key, start), start)
        # the held entries a current update replaces are removed before it is
        # written: a release running in between then finds nothing to write
        commands = held + list(map(tuple, hsets.values()))
        if keep is None:
            return commands
        for key in hsets:
            expire_ms = (ahead.get(key, floor) + keep) // 1000
            if self._expiry.get(key) != expire_ms:   # one that is unchanged is not sent again
                expiries[key] = expire_ms
                commands.append((b"PEXPIREAT", key, expire_ms))
        return commands

    def _tile_fields(self, sizes: list[int] | None, starts: list[int]) -> list[bytes]:
        """The hash field of each tile: its start for a tile of the view's
        size (all of them when `sizes` is None), else its size and start."""
        if sizes is None:
            return [layout.tile_field(start) for start in starts]
        fine, field = self.view.tile_us, layout.tile_field
        return [field(start) if size == fine else field(start, size)
                for size, start in zip(sizes, starts)]

    def _encoded_states(self, values: list[list]) -> list[bytes]:
        """Each tile's value, from the state fields' columns: decoded column
        by column (a column that aggregations share, once), then encoded by
        the view's `layout.TileCodec` (binary words), or spelled as JSON by
        `layout.encode_tiles` for a view whose tiles are JSON."""
        decoded: dict[tuple, list] = {}
        columns, kinds = [], []
        for c, kind in self._state_columns:
            if c not in decoded:
                decoded[c] = DECODERS[c[0]]([values[i] for i in c[1:]])
            columns.append(decoded[c])
            kinds.append(kind)
        if self._codec.fixed:
            return self._codec.encode_columns(columns)
        return layout.encode_tiles(self._shapes, columns, kinds)

    def _latest(self, values: list[list]) -> list[tuple]:
        view, n = self.view, len(self.view.keys)
        keys, texts = self._entity_keys(values, layout.row_key), values[n]
        now, keep = self._clock(), view.rows_keep_us
        commands, decode = [], self._decode_latest
        for key, text in zip(keys, texts):
            ts, row = decode(text)
            if keep is not None and ts + keep <= now:
                self.stats.expired += 1
            elif ts > now:   # a row from after the clock: written when it is due
                self._defer(commands, key, b"", ts,
                            None if keep is None else (ts + keep) // 1000,
                            layout.encode_row(ts, row))
            else:
                self._replaces_held(commands, key)
                commands.append((b"SET", key, layout.encode_row(ts, row))
                                + (() if keep is None else (b"PXAT", (ts + keep) // 1000)))
        return commands
