"""Where the online store is, and the clients that reach it: the one module
that turns `online_store:` of featurestore.yaml into Redis connections.

Three kinds, as Feast names them (`redis_type`):

    redis            one node: `url` (redis://, rediss://, unix://) or
                     `connection_string: "host:port,db=0,ssl=true,password=..."`
    redis_cluster    Redis Cluster: `connection_string` lists seed nodes
                     ("host1:port1,host2:port2,ssl=true,password=..."), or `url` one
    redis_sentinel   a master watched by Sentinel: `connection_string` lists
                     the sentinels, `sentinel_master` names the master

A `RedisTarget` says which; it is small and picklable, so the server's
worker processes and the stream job's Python workers get it as it is. Every
module asks this one for its clients: `sync_client`, `async_client`,
`raw_connection` (the batch writer's socket), `execute` (a pipeline of raw
commands; on a cluster one per master, `ClusterClient`, and `AsyncCluster`
for the server) and the slot map (`SlotMap`, `fetch_slot_map`) that groups
keys by the master that holds them (`key_slots`: Redis' own rule, hash tags
included, vectorized).
"""
from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any, Iterable, Sequence
from urllib.parse import urlsplit

import hiredis
import numpy as np
import redis
from redis.cluster import RedisCluster
from redis.exceptions import RedisClusterException, RedisError

SINGLE, CLUSTER, SENTINEL = "redis", "redis_cluster", "redis_sentinel"
KINDS = (SINGLE, CLUSTER, SENTINEL)
SLOTS = 16384
# connection_string parameters (Feast's spelling) and what each must be
PARAMETERS = {"password": str, "username": str, "ssl": bool, "db": int}
# what a client raises when Redis fails (a cluster's client raises the
# second when no node answers), besides OSError
ERRORS = (RedisError, RedisClusterException, OSError)
# error replies that say the cluster's slots moved or are moving: refresh the
# slot map and try again
REDIRECTS = ("MOVED", "ASK", "TRYAGAIN", "CLUSTERDOWN")


@dataclass(frozen=True)
class RedisTarget:
    """Where the online store is. `nodes`: the node, a cluster's seed nodes
    or the sentinels; `options`: what every connection takes (password,
    username, db, ssl, and a URL's query options); `url`: a single node's
    URL as configured (its query options apply as redis-py reads them)."""
    kind: str = SINGLE
    nodes: tuple[tuple[str, int], ...] = ()
    options: tuple[tuple[str, Any], ...] = ()
    master: str | None = None
    url: str | None = None

    def __repr__(self) -> str:   # never a password, in logs or test reports
        return f"RedisTarget({self.describe()})"

    @property
    def cluster(self) -> bool:
        return self.kind == CLUSTER

    def describe(self) -> str:
        """Where it is, for messages: passwords masked."""
        from featurestore.config import mask_url

        if self.kind == SINGLE and self.url:
            return mask_url(self.url)
        where = ",".join(f"{h}:{p}" for h, p in self.nodes)
        if self.kind == SENTINEL:
            return f"redis-sentinel master {self.master!r} via {where}"
        if self.kind == CLUSTER:
            return f"redis-cluster {where}"
        return f"redis {where}"

    def __str__(self) -> str:
        return self.describe()


def single(url: str) -> RedisTarget:
    """A single node at `url`."""
    if urlsplit(url).scheme not in ("redis", "rediss", "unix"):
        raise ValueError(f"a Redis URL starts with redis://, rediss:// or unix://, not "
                         f"{url.partition('://')[0] or url!r}")
    return RedisTarget(SINGLE, (), (), None, url)


def target(where: RedisTarget | str) -> RedisTarget:
    """`where` as a RedisTarget: a string is a single node's URL."""
    return where if isinstance(where, RedisTarget) else single(where)


def parse(kind: str, url: str | None, connection_string: str | None,
          master: str | None = None) -> RedisTarget:
    """The target `online_store:` describes (ValueError saying what is wrong;
    neither url nor connection_string: None is not accepted here)."""
    if kind not in KINDS:
        raise ValueError(f"type must be one of {', '.join(KINDS)}, not {kind!r}")
    if url and connection_string:
        raise ValueError("give url or connection_string, not both")
    if kind == SENTINEL:
        if not connection_string:
            raise ValueError("redis_sentinel needs connection_string: the sentinels, "
                             "e.g. \"host1:26379,host2:26379,password=...\" (and sentinel_master)")
        if not master:
            raise ValueError("redis_sentinel needs sentinel_master: the name the sentinels "
                             "know the master by")
        nodes, options = parse_connection_string(connection_string)
        return RedisTarget(SENTINEL, nodes, options, master)
    if url:
        if kind == SINGLE:
            return single(url)
        return _cluster_from_url(url)
    if not connection_string:
        raise ValueError(f"{kind} needs url or connection_string")
    nodes, options = parse_connection_string(connection_string)
    if kind == SINGLE and len(nodes) > 1:
        raise ValueError("type redis takes one host:port; several nodes are a "
                         "redis_cluster (or the sentinels of a redis_sentinel)")
    if kind == CLUSTER and dict(options).get("db", 0) != 0:
        raise ValueError("Redis Cluster has only database 0: remove db=")
    return RedisTarget(kind, nodes, options)


def _cluster_from_url(url: str) -> RedisTarget:
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError(f"a cluster's url starts with redis:// or rediss://, not "
                         f"{parts.scheme or url!r}://")
    options = redis.connection.parse_url(url)
    host, port = options.pop("host", "localhost"), options.pop("port", 6379)
    options.pop("connection_class", None)
    if options.pop("db", 0) != 0:
        raise ValueError("Redis Cluster has only database 0: remove the /db from the url")
    if parts.scheme == "rediss":
        options["ssl"] = True
    return RedisTarget(CLUSTER, ((host, port),), tuple(sorted(options.items())))


def parse_connection_string(text: str) -> tuple[tuple[tuple[str, int], ...],
                                                tuple[tuple[str, Any], ...]]:
    """Feast's connection string, "host1:port1,host2:port2,ssl=true,password=...":
    the nodes and the connection options."""
    nodes, options = [], {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        if "=" in part:
            name, _, value = part.partition("=")
            name = name.strip()
            if name not in PARAMETERS:
                raise ValueError(f"unknown connection_string parameter {name!r}; "
                                 f"known: {', '.join(PARAMETERS)}")
            options[name] = _parameter(name, value.strip())
            continue
        host, sep, port = part.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{part!r} is not host:port (or name=value)")
        nodes.append((host.strip("[]"), int(port)))
    if not nodes:
        raise ValueError("connection_string names no host:port")
    return tuple(nodes), tuple(sorted(options.items()))


def _parameter(name: str, value: str) -> Any:
    want = PARAMETERS[name]
    if want is bool:
        if value.lower() not in ("true", "false"):
            raise ValueError(f"{name} must be true or false")
        return value.lower() == "true"
    if want is int:
        try:
            return int(value)
        except ValueError:
            raise ValueError(f"{name} must be an integer") from None
    try:   # Feast reads values as JSON when they are (a numeric password)
        decoded = json.loads(value)
        return value if not isinstance(decoded, (str, int, float)) else str(decoded)
    except json.JSONDecodeError:
        return value


# ------------------------------------------------------------------ clients
def _options(t: RedisTarget, overrides: dict) -> dict:
    return {**dict(t.options), **overrides}


def sync_client(where: RedisTarget | str, **overrides):
    """A redis-py client: `redis.Redis` for one node or a Sentinel's master
    (which follows failovers), a `ClusterClient` (a RedisCluster) for a cluster.
    `overrides`: client options (socket timeouts)."""
    t = target(where)
    if t.kind == CLUSTER:
        return ClusterClient(t, **overrides)
    if t.kind == SENTINEL:
        return _sentinel(t, overrides).master_for(t.master, **_options(t, overrides))
    if t.url:
        return redis.Redis.from_url(t.url, **overrides)
    (host, port), = t.nodes
    return redis.Redis(host=host, port=port, **_options(t, overrides))


def _sentinel(where: RedisTarget, overrides: dict):
    """The sentinels of `where`, asked with the overrides' socket timeouts;
    the connection options (password, ...) are the master's, as in Feast."""
    from redis.sentinel import Sentinel

    return Sentinel(where.nodes, **_options(where, overrides))


def async_client(where: RedisTarget | str, **overrides):
    """A redis.asyncio client of one node or of a Sentinel's master (a
    cluster is read through its masters' pools: `async_node_pool`)."""
    import redis.asyncio as aioredis

    t = target(where)
    if t.kind == CLUSTER:
        raise ValueError("a cluster has no single client: group keys with SlotMap and "
                         "read each master through async_node_pool")
    if t.kind == SENTINEL:   # as `_sentinel`, on the event loop
        from redis.asyncio.sentinel import Sentinel

        options = _options(t, overrides)
        return Sentinel(t.nodes, **options).master_for(t.master, **options)
    if t.url:
        return aioredis.Redis.from_url(t.url, **overrides)
    (host, port), = t.nodes
    return aioredis.Redis(host=host, port=port, **_options(t, overrides))


def _pool_options(where: RedisTarget, overrides: dict, ssl_class) -> dict:
    """Connection pool options: a pool takes TLS as its connection class."""
    options = _options(where, overrides)
    if options.pop("ssl", False):
        options["connection_class"] = ssl_class
    return options


def node_pool(where: RedisTarget, address: tuple[str, int], **overrides):
    """A redis-py connection pool to the node at `address`."""
    return redis.ConnectionPool(host=address[0], port=address[1],
                                **_pool_options(where, overrides, redis.SSLConnection))


def async_node_pool(where: RedisTarget, address: tuple[str, int], **overrides):
    """A redis.asyncio connection pool to the node at `address`."""
    import redis.asyncio as aioredis

    return aioredis.ConnectionPool(host=address[0], port=address[1],
                                   **_pool_options(where, overrides, aioredis.SSLConnection))


def raw_connection(where: RedisTarget | str, address: tuple[str, int] | None = None,
                   **overrides):
    """A connected redis-py `Connection` (AUTH, SELECT and TLS done) to the
    node (for a cluster, the one at `address`; for Sentinel, the master it
    names now), for writers that send RESP bytes themselves."""
    t = target(where)
    if t.kind == SINGLE and t.url:
        pool = redis.ConnectionPool.from_url(t.url, **overrides)
    else:
        if address is None:
            address = master_address(t) if t.kind == SENTINEL else t.nodes[0]
        pool = node_pool(t, address, **overrides)
    conn = pool.make_connection()
    conn.connect()
    return conn


def master_address(where: RedisTarget) -> tuple[str, int]:
    """The address of the master the sentinels name now."""
    return _sentinel(where, {"socket_timeout": 1.0, "socket_connect_timeout": 1.0}
                     ).discover_master(where.master)


def execute(client, commands: Sequence[tuple]) -> list:
    """The replies of `commands` (tuples of bytes, str or int; the keys of
    one command in one slot), in order, raw (bytes, ints, flat lists), an
    error reply raised. One node or a Sentinel's master: one round trip on
    one connection. A cluster (a `sync_client`): one round trip per master
    holding any of the keys; a redirection or a master that does not answer
    refreshes the slot map and the commands are sent once more (they must
    be idempotent: every write of featurestore is)."""
    if not commands:
        return []
    if isinstance(client, ClusterClient):
        return client.execute_raw(commands)
    return _round_trip(client.connection_pool, commands)


def _round_trip(pool, commands: Sequence[tuple]) -> list:
    """Every command in one round trip on one connection of `pool`, packed
    by hiredis in C: redis-py's own pipeline packs in Python, which costs
    more than Redis itself for a thousand HMGETs."""
    conn = pool.get_connection()
    try:
        conn.send_packed_command([b"".join([hiredis.pack_command(c) for c in commands])])
        return [conn.read_response(disable_decoding=True) for _ in commands]
    except BaseException:
        conn.disconnect()  # replies may be left unread: never reuse it
        raise
    finally:
        pool.release(conn)


class ClusterClient(RedisCluster):
    """redis-py's RedisCluster (single commands, scans, scripts), plus raw
    pipelines grouped by master (`execute`)."""

    def __init__(self, where: RedisTarget, **overrides):
        from redis.cluster import ClusterNode

        self._target = where
        self._overrides = overrides
        self._slot_map: SlotMap | None = None
        self._pools: dict[tuple[str, int], Any] = {}
        super().__init__(startup_nodes=[ClusterNode(h, p) for h, p in where.nodes],
                         **_options(where, overrides))

    def execute_raw(self, commands: Sequence[tuple]) -> list:
        for attempt in (1, 2):
            try:
                if self._slot_map is None:
                    self._slot_map = fetch_slot_map(self._target)
                return self._once(commands, self._slot_map)
            except (RedisError, OSError, LookupError) as e:
                self._slot_map = None
                retry_after(e, attempt)
        raise AssertionError("unreachable")

    def _once(self, commands: Sequence[tuple], slot_map: SlotMap) -> list:
        replies: list = [None] * len(commands)
        slots = key_slots([command_key(command) for command in commands])
        for address, rows in slot_map.group(slots):
            pool = self._pools.get(address)
            if pool is None:
                pool = self._pools[address] = node_pool(self._target, address,
                                                        **self._overrides)
            for i, reply in zip(rows, _round_trip(pool, [commands[i] for i in rows])):
                replies[i] = reply
        return replies

    def close(self) -> None:
        for pool in self._pools.values():
            pool.disconnect()
        super().close()


def command_key(command: tuple):
    """The key that places a command on a cluster: its first argument, or
    a script's first key (EVAL script numkeys key ...)."""
    name = command[0]
    if name in (b"EVAL", b"EVALSHA", "EVAL", "EVALSHA"):
        return command[3]
    return command[1]


def retry_after(error: BaseException, attempt: int) -> None:
    """The one retry rule of a cluster's commands, after attempt 1 or 2
    failed with `error` (the caller has dropped its slot map): an error reply
    other than a slot move is raised as it is; a slot move or a master that
    did not answer is tried once more with a fresh slot map, then raised as
    ConnectionError (the server answers UNAVAILABLE)."""
    if isinstance(error, redis.ResponseError) and not is_redirect(error):
        raise error
    if attempt == 2:
        raise redis.ConnectionError(f"the cluster did not take the commands after its slot "
                                    f"map was refreshed: {error}") from None


def is_redirect(error: BaseException) -> bool:
    """Whether a Redis error reply says the slot lives elsewhere now."""
    return str(error).split(" ", 1)[0] in REDIRECTS or type(error).__name__ in (
        "MovedError", "AskError", "TryAgainError", "ClusterDownError")


# ------------------------------------------------------------------ slots
def _crc16_table() -> np.ndarray:
    table = np.zeros(256, dtype=np.uint32)
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
        table[byte] = crc & 0xFFFF
    return table


_CRC16 = _crc16_table()


def key_slots(keys) -> np.ndarray:
    """The cluster slot of each key (a pyarrow string or binary array, or a
    sequence of bytes), by Redis' rule: CRC16 of the hash tag (what lies
    between the first `{` and the next `}`, when not empty), else of the
    whole key, modulo 16384. Vectorized: numpy passes over byte positions."""
    import pyarrow as pa

    arr = keys if isinstance(keys, (pa.Array, pa.ChunkedArray)) else pa.array(keys, pa.binary())
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if pa.types.is_string(arr.type) or pa.types.is_binary(arr.type):
        offset_type = np.int32
    else:
        offset_type = np.int64
    n = len(arr)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    if arr.null_count:
        raise ValueError("a key is null")
    offsets = np.frombuffer(arr.buffers()[1], dtype=offset_type)[arr.offset:arr.offset + n + 1]
    data = arr.buffers()[2]
    data = np.frombuffer(data, dtype=np.uint8) if data is not None else np.zeros(0, np.uint8)
    starts, ends = offsets[:-1].astype(np.int64), offsets[1:].astype(np.int64)
    # the hash tag: the first "{" of the key, the first "}" after it
    opens = np.flatnonzero(data == ord("{"))
    closes = np.flatnonzero(data == ord("}"))
    i = np.searchsorted(opens, starts)
    has_open = i < len(opens)
    open_at = np.where(has_open, opens[np.minimum(i, len(opens) - 1)] if len(opens) else 0, -1)
    has_open &= open_at < ends
    j = np.searchsorted(closes, open_at + 1)
    has_close = has_open & (j < len(closes))
    close_at = np.where(has_close, closes[np.minimum(j, len(closes) - 1)] if len(closes) else 0, -1)
    tagged = has_close & (close_at < ends) & (close_at > open_at + 1)
    lo = np.where(tagged, open_at + 1, starts)
    length = np.where(tagged, close_at, ends) - lo
    # CRC16 over each [lo, lo + length): longest first, so that the keys
    # still going at byte k are a prefix
    order = np.argsort(-length, kind="stable")
    lo_sorted, len_sorted = lo[order], length[order]
    crc = np.zeros(n, dtype=np.uint32)
    going = n
    for k in range(int(len_sorted[0]) if n else 0):
        while going and len_sorted[going - 1] <= k:
            going -= 1
        byte = data[lo_sorted[:going] + k]
        head = crc[:going]
        crc[:going] = ((head << 8) & 0xFFFF) ^ _CRC16[((head >> 8) ^ byte) & 0xFF]
    slots = np.empty(n, dtype=np.int64)
    slots[order] = crc % SLOTS
    return slots


@dataclass(frozen=True)
class SlotMap:
    """Which master of a cluster holds each slot: `masters` their
    addresses, `owner[slot]` an index into them (-1: no master)."""
    masters: tuple[tuple[str, int], ...]
    owner: np.ndarray

    @classmethod
    def from_cluster_slots(cls, reply: Sequence, asked: tuple[str, int]) -> "SlotMap":
        """From a CLUSTER SLOTS reply, given by the node at `asked` (a node
        that does not know its own address names it "")."""
        masters: list[tuple[str, int]] = []
        owner = np.full(SLOTS, -1, dtype=np.int64)
        for entry in reply:
            first, last, node = int(entry[0]), int(entry[1]), entry[2]
            host = node[0].decode() if isinstance(node[0], bytes) else str(node[0])
            address = (host or asked[0], int(node[1]))
            if address not in masters:
                masters.append(address)
            owner[first:last + 1] = masters.index(address)
        return cls(tuple(masters), owner)

    @property
    def complete(self) -> bool:
        return bool((self.owner >= 0).all())

    def group(self, slots: np.ndarray) -> list[tuple[tuple[str, int], np.ndarray]]:
        """(master, row numbers in order) per master holding any of `slots`.
        Raises LookupError when a slot has no master."""
        owners = self.owner[slots]
        if len(owners) and owners.min() < 0:
            raise LookupError(f"slot {int(slots[owners.argmin()])} has no master "
                              "(the cluster is failing over or incomplete)")
        order = np.argsort(owners, kind="stable")
        sorted_owners = owners[order]
        cuts = np.flatnonzero(np.diff(sorted_owners)) + 1
        return [(self.masters[int(owners[part[0]])], part)
                for part in np.split(order, cuts) if len(part)]


def fetch_slot_map(where: RedisTarget, known: Iterable[tuple[str, int]] = (),
                   timeout: float = 1.0) -> SlotMap:
    """The cluster's slot map, asked of the first node that answers (the
    `known` masters first, then the seed nodes); ConnectionError when none does."""
    errors: list[str] = []
    options = _options(where, {"socket_timeout": timeout, "socket_connect_timeout": timeout})
    for address in _candidates(where, known):
        try:
            with redis.Redis(host=address[0], port=address[1], **options) as r:
                reply = r.execute_command("CLUSTER", "SLOTS")
        except (RedisError, OSError) as e:
            errors.append(f"{address[0]}:{address[1]}: {e}")
            continue
        slot_map = _complete(reply, address, errors)
        if slot_map is not None:
            return slot_map
    raise redis.ConnectionError("no node of the cluster gave its slot map: " + "; ".join(errors))


def _candidates(where: RedisTarget, known: Iterable[tuple[str, int]]) -> list[tuple[str, int]]:
    return list(dict.fromkeys([*known, *where.nodes]))


def _complete(reply, address: tuple[str, int], errors: list[str]) -> SlotMap | None:
    """The slot map of a CLUSTER SLOTS reply when every slot has a master."""
    slot_map = SlotMap.from_cluster_slots(reply, address)
    if slot_map.complete:
        return slot_map
    errors.append(f"{address[0]}:{address[1]}: not every slot has a master")
    return None


def ping_masters(where: RedisTarget, timeout: float,
                 known: Iterable[tuple[str, int]] = ()) -> SlotMap:
    """PING every master of the cluster's slot map, each within `timeout`
    seconds; the map (raises when a master, or every node, does not answer)."""
    slot_map = fetch_slot_map(where, known, timeout)
    options = _options(where, {"socket_timeout": timeout, "socket_connect_timeout": timeout})
    for host, port in slot_map.masters:
        with redis.Redis(host=host, port=port, **options) as r:
            r.ping()
    return slot_map


# ------------------------------------------------------------------ asyncio (the server)
async def round_trip_async(pool, commands: Sequence[tuple]) -> list:
    """`_round_trip` on the event loop, raw replies in order. A connection
    that died while idle (a restarted Redis) gets one retry on a fresh one."""
    packed = b"".join(map(hiredis.pack_command, commands))
    for attempt in (1, 2):
        conn = await pool.get_connection()
        try:
            await conn.send_packed_command(packed, check_health=False)
            return [await conn.read_response(disable_decoding=True) for _ in commands]
        except redis.ConnectionError:
            await conn.disconnect()
            if attempt == 2:
                raise
        except BaseException:
            await conn.disconnect()   # replies may be left unread: never reuse it
            raise
        finally:
            await pool.release(conn)
    raise AssertionError("unreachable")


class AsyncCluster:
    """Reads of a Redis Cluster on the event loop: commands grouped by the
    master that holds their key's slot, one round trip per master, all at
    once, replies put back in order. A redirection (MOVED, ASK: the slots
    moved) or a master that does not answer refreshes the slot map and the
    commands go once more; then ConnectionError. Replicas are never read.
    `pool_options`: of each master's connection pool (timeouts)."""

    def __init__(self, where: RedisTarget, **pool_options):
        self._target = where
        self._options = pool_options
        self._map: SlotMap | None = None   # also refreshed by `ping_masters`
        self._pools: dict[tuple[str, int], Any] = {}

    async def execute(self, commands: Sequence[tuple]) -> list:
        for attempt in (1, 2):
            try:
                if self._map is None:
                    # rare (a first read, a slot move): the one fetch, on a thread
                    self._map = await asyncio.to_thread(
                        fetch_slot_map, self._target,
                        timeout=self._options.get("socket_connect_timeout") or 1.0)
                return await self._once(commands, self._map)
            except (RedisError, OSError, LookupError) as e:
                self._map = None
                retry_after(e, attempt)
        raise AssertionError("unreachable")

    async def _once(self, commands: Sequence[tuple], slot_map: SlotMap) -> list:
        replies: list = [None] * len(commands)

        async def on(address: tuple[str, int], rows) -> None:
            pool = self._pools.get(address)
            if pool is None:
                pool = self._pools[address] = async_node_pool(self._target, address,
                                                              **self._options)
            got = await round_trip_async(pool, [commands[i] for i in rows])
            for i, reply in zip(rows, got):
                replies[i] = reply

        slots = key_slots([command_key(command) for command in commands])
        sends = [asyncio.ensure_future(on(address, rows))
                 for address, rows in slot_map.group(slots)]
        try:
            done, _ = await asyncio.wait(sends, return_when=asyncio.FIRST_EXCEPTION)
        finally:
            for send in sends:
                send.cancel()
        for send in done:
            if send.exception() is not None:
                raise send.exception()
        return replies

    def ping_masters(self, timeout: float) -> None:
        """PING every master of a fresh slot map (blocking: for a thread;
        raises when one does not answer); reads then use that map."""
        self._map = ping_masters(self._target, timeout,
                                 self._map.masters if self._map else ())

    async def close(self) -> None:
        for pool in self._pools.values():
            await pool.disconnect()
