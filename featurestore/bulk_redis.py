"""Bulk writes to Redis: commands encoded by DuckDB, sent as raw RESP.

Building a command per key in Python costs microseconds each, which is what
makes Feast's materialization slow. Here DuckDB builds every command's RESP
bytes (the wire format Redis reads) as a string column, vectorized, or its
parts, which `group_commands` joins into one command per key with one Arrow
`take`, and `BulkWriter` sends the column's Arrow buffer as it is, one large
pipelined write per batch, then checks the replies without parsing each one.

The writer knows how many reply lines each command produces (every command
used here answers with one-line replies: +OK, :n, +QUEUED, or an EXEC array
of those), so a batch is complete when its lines have arrived, and any line
starting with `-` is an error, raised with its text. On a Redis Cluster the
batch is split by the slot of each command's key (`redis_client.key_slots`,
vectorized) and each part goes to its master's connection.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pyarrow as pa

from featurestore import redis_client
from featurestore.layout import sql_text

CRLF = "\r\n"


def resp_command(*args: str | bytes) -> bytes:
    """One command with constant arguments, as RESP bytes."""
    out = [f"*{len(args)}{CRLF}".encode()]
    for arg in args:
        data = arg.encode() if isinstance(arg, str) else arg
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def bulk_sql(arg_sql: str) -> str:
    """A RESP bulk string of a SQL VARCHAR expression (its length in bytes)."""
    return f"concat('$', strlen({arg_sql}), {sql_text(CRLF)}, {arg_sql}, {sql_text(CRLF)})"


def command_sql(name: str, args_sql: list[str], tail_sql: str = "",
                tail_count_sql: str = "0") -> str:
    """A command `name args... <tail>` as a SQL expression; `tail_sql` holds
    `tail_count_sql` more bulk strings already encoded (e.g. hash fields)."""
    parts = ["'*'", f"{1 + len(args_sql)} + {tail_count_sql}", sql_text(CRLF),
             sql_text(resp_command(name).decode()[len(f"*1{CRLF}"):])]
    parts += [bulk_sql(a) for a in args_sql]
    if tail_sql:
        parts.append(tail_sql)
    return f"concat({', '.join(parts)})"


def literal_sql(data: bytes) -> str:
    """Constant RESP bytes as a SQL string literal."""
    return sql_text(data.decode())


def group_commands(heads: pa.Array, items: Sequence[pa.Array], offsets: np.ndarray,
                   tails: pa.Array | None = None) -> pa.LargeBinaryArray:
    """One command per group from encoded parts (binary or string arrays):
    group g's bytes are heads[g], then for each of its items i
    (offsets[g] <= i < offsets[g + 1]) items[0][i], items[1][i], ..., then
    tails[g]. One `take` copies every part into place: no Python per group
    or item."""
    n, width = len(heads), len(items)
    count = len(items[0]) if items else 0
    offsets = np.asarray(offsets, np.int64)
    if len(offsets) != n + 1 or offsets[0] != 0 or offsets[-1] != count:
        raise ValueError("the offsets of the groups do not match the items")
    per_group = np.diff(offsets)
    parts = per_group * width + 1 + (tails is not None)
    starts = np.zeros(n + 1, np.int64)
    np.cumsum(parts, out=starts[1:])
    order = np.empty(starts[-1], np.int64)
    order[starts[:-1]] = np.arange(n)
    group = np.repeat(np.arange(n), per_group)
    first = starts[group] + 1 + (np.arange(count) - offsets[group]) * width
    for p in range(width):
        order[first + p] = n + p * count + np.arange(count)
    if tails is not None:
        order[starts[1:] - 1] = n + width * count + np.arange(n)
    arrays = [heads, *items] + ([] if tails is None else [tails])
    joined = pa.concat_arrays([a.cast(pa.large_binary()) for a in arrays]).take(pa.array(order))
    if joined.null_count:
        raise ValueError("a part of a bulk Redis command is null")
    bounds = np.frombuffer(joined.buffers()[1], np.int64, len(joined) + 1, joined.offset * 8)
    return pa.Array.from_buffers(pa.large_binary(), n,
                                 [None, pa.py_buffer(np.ascontiguousarray(bounds[starts])),
                                  joined.buffers()[2]])


class RedisReplyError(RuntimeError):
    """Redis refused a command of a bulk write."""


class BulkWriter:
    """Pipelines pre-encoded commands: on one connection to a single node
    (or the master Sentinel names), or on a cluster one connection per
    master, each command sent to the master of its key's slot.

    `send` writes a batch and then reads the replies of the batch before it,
    so Redis works on one batch while the caller prepares the next; `flush`
    waits for everything. Errors raise RedisReplyError. A cluster whose slots
    move during a write answers MOVED or ASK: that is an error too (the
    write is idempotent: run it again)."""

    def __init__(self, where: redis_client.RedisTarget | str):
        store = redis_client.target(where)
        self._slots = redis_client.fetch_slot_map(store) if store.cluster else None
        addresses = self._slots.masters if self._slots else (None,)
        self._nodes: dict = {}
        try:
            for address in addresses:
                self._nodes[address] = _Node(redis_client.raw_connection(store, address))
        except BaseException:
            self.close()
            raise
        self.commands = 0

    @property
    def needs_keys(self) -> bool:
        """Whether `send` needs each command's key (a cluster's writer does)."""
        return self._slots is not None

    def send(self, commands: pa.Array | pa.ChunkedArray, lines_per_command: int,
             keys: pa.Array | pa.ChunkedArray | None = None) -> None:
        """Send a string or binary column of RESP commands, each answered by
        `lines_per_command` reply lines; `keys`, the key of each command,
        places it on a cluster (every key a command names shares one slot)."""
        chunks = commands.chunks if isinstance(commands, pa.ChunkedArray) else [commands]
        key_chunks = ([None] * len(chunks) if keys is None else
                      keys.chunks if isinstance(keys, pa.ChunkedArray) else [keys])
        for chunk, key_chunk in zip(chunks, key_chunks, strict=True):
            if len(chunk) == 0:
                continue
            if chunk.null_count:
                raise ValueError("a bulk Redis command is null")
            if self._slots is None:
                self._nodes[None].send(_data(chunk), len(chunk) * lines_per_command)
            else:
                if key_chunk is None:
                    raise ValueError("a cluster's writer needs the key of each command")
                slots = redis_client.key_slots(key_chunk)
                for address, rows in self._slots.group(slots):
                    part = chunk.take(pa.array(rows)) if len(rows) < len(chunk) else chunk
                    self._nodes[address].send(_data(part), len(rows) * lines_per_command)
            self.commands += len(chunk)

    def send_bytes(self, data, lines: int) -> None:
        """Send encoded commands answered by `lines` reply lines to the
        single node, then wait for the replies of everything sent before them."""
        if self._slots is not None:
            raise ValueError("a cluster's writer sends commands with their keys: use send")
        self._nodes[None].send(data, lines)

    def flush(self) -> None:
        """Wait for the replies of everything sent."""
        for node in self._nodes.values():
            node.wait(0)

    def close(self) -> None:
        for node in self._nodes.values():
            node.close()

    def __enter__(self) -> "BulkWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Node:
    """One connection of a BulkWriter, and the replies it still owes."""

    def __init__(self, conn):
        self._conn = conn
        # redis-py has no public raw read: the socket is read directly, after
        # the handshake (AUTH, SELECT, TLS) is complete.
        self._sock = conn._sock
        self._outstanding = 0    # reply lines sent for and not yet read
        self._last = b"\n"       # last byte read: an error line starts after "\n"

    def send(self, data, lines: int) -> None:
        self._sock.sendall(data)
        self._outstanding += lines
        self.wait(lines)

    def wait(self, limit: int) -> None:
        """Read replies until at most `limit` lines are outstanding."""
        buffer = bytearray(1 << 20)
        view = memoryview(buffer)
        while self._outstanding > limit:
            n = self._sock.recv_into(buffer)
            if n == 0:
                raise ConnectionError("Redis closed the connection during a bulk write")
            data = bytes(view[:n])
            if (self._last + data).find(b"\n-") != -1:
                raise RedisReplyError(_first_error(self._last + data))
            self._last = data[-1:]
            self._outstanding -= data.count(b"\n")
        if self._outstanding < 0:
            raise RedisReplyError("Redis sent more replies than the commands sent ask for")

    def close(self) -> None:
        self._conn.disconnect()


def _data(chunk: pa.Array) -> memoryview:
    """The bytes of a string or binary array's values, concatenated, without copying."""
    large = pa.types.is_large_string(chunk.type) or pa.types.is_large_binary(chunk.type)
    offset_type = "q" if large else "i"
    offsets = memoryview(chunk.buffers()[1]).cast(offset_type)
    start, end = offsets[chunk.offset], offsets[chunk.offset + len(chunk)]
    return memoryview(chunk.buffers()[2])[start:end]


def _first_error(data: bytes) -> str:
    at = data.find(b"\n-") + 1
    return data[at + 1:data.find(b"\r", at)].decode(errors="replace")
