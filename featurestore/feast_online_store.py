"""Feast's SDK reading our store: a Feast `OnlineStore` over layout v3.

`featurestore apply` writes `.featurestore/feast/feature_store.yaml` naming
this class, so that

    FeatureStore(repo_path=".featurestore/feast").get_online_features(
        features=["user_spend:spend_1d", "user_profile:country"],
        entity_rows=[{"user_id": "user_000001"}])

returns what `featurestore serve` returns: each `online_read` is a lookup of
`serving.lookup` (the server's own rules: rows, tiles merged for windows,
the view version Redis holds) run at the current time, in one pipelined
round trip. Feast then applies its statuses: an entity with no state in the
view is NOT_FOUND; a row past the view's ttl is OUTSIDE_MAX_AGE.

The Redis is the repo's, found as `featurestore serve` finds it: the
config's `url` when given, else the repo's settings (`online_store`: one
node, a cluster or a Sentinel's master; `FEATURESTORE_REDIS_URL`), else its
running private redis-server.
Writes belong to `featurestore materialize` and the stream job: Feast's own
materialization and push are refused with a message saying so, and so is
`get_historical_features` (the offline store below names `featurestore
export`).
"""
from __future__ import annotations

import os
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal, Optional

from feast.infra.offline_stores.offline_store import OfflineStore
from feast.infra.online_stores.online_store import OnlineStore
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from feast.repo_config import FeastConfigBaseModel

CLASS = "featurestore.feast_online_store.FeaturestoreOnlineStore"
OFFLINE_CLASS = "featurestore.feast_online_store.FeaturestoreOfflineStore"


class FeaturestoreOnlineStoreConfig(FeastConfigBaseModel):
    type: Literal["featurestore.feast_online_store.FeaturestoreOnlineStore"] = CLASS
    repo: str = "../.."                       # the feature repo, relative to the Feast folder
    url: Optional[str] = None                 # None: the repo's Redis


class FeaturestoreOfflineStoreConfig(FeastConfigBaseModel):
    type: Literal["featurestore.feast_online_store.FeaturestoreOfflineStore"] = OFFLINE_CLASS


class FeaturestoreOnlineStore(OnlineStore):
    """Reads what featurestore wrote; writes nothing."""

    def __init__(self):
        self._clients: dict[str, Any] = {}
        self._resolvers: dict[tuple, Any] = {}

    # -------------------------------------------------------------- reads
    def online_read(self, config, table, entity_keys, requested_features=None):
        from serving import lookup
        from serving.v1 import serving_pb2 as pb

        if not entity_keys:
            return []
        resolver = self._resolver(config)
        request = pb.GetOnlineFeaturesRequest()
        names = requested_features or [f.name for f in table.features]
        request.features.features.extend(f"{table.name}:{name}" for name in names)
        for column in _key_columns(entity_keys):
            name, kind, values = column
            getattr(request.entities[name], kind).values.extend(values)
        now = time.time_ns() // 1000
        try:
            prepared = lookup.prepare(resolver, request, now)
        except lookup.BadRequest as e:
            raise ValueError(f"featurestore cannot read {table.name!r}: {e}") from None
        from featurestore import redis_client

        replies = redis_client.execute(self._client(config),
                                       list(lookup.commands(resolver.manifest.project, prepared)))
        response = lookup.respond(prepared, lookup.split_replies(prepared, replies))
        return _rows(response, len(entity_keys), names)

    def _repo(self, config):
        from featurestore import config as settings

        return settings.load((Path(config.repo_path or ".") / config.online_store.repo).resolve())

    def _resolver(self, config):
        from featurestore.manifest import Manifest
        from serving.lookup import Resolver

        path = self._repo(config).manifest_path
        stat = path.stat()
        key = (str(path), stat.st_mtime_ns, stat.st_size)
        if key not in self._resolvers:
            self._resolvers = {key: Resolver(Manifest.load(path))}
        return self._resolvers[key]

    def _client(self, config):
        from featurestore import redis_client, redis_local

        url = config.online_store.url
        store = redis_client.single(url) if url else None
        if store is None:
            repo = self._repo(config)
            running = redis_local.find_running(repo.local_redis_dir)
            store = repo.redis_target or (redis_client.single(running.url) if running else None)
            if store is None:
                raise ConnectionError(f"the feature repo at {repo.root} has no Redis configured "
                                      "and its private redis-server is not running: run "
                                      "`featurestore materialize` first")
        if store not in self._clients:
            self._clients[store] = redis_client.sync_client(store)
        return self._clients[store]

    # ------------------------------------------------------------- writes
    def online_write_batch(self, config, table, data, progress):
        raise NotImplementedError(
            f"featurestore writes {table.name!r}: run `featurestore materialize` (batch views) "
            "or `featurestore stream` / `featurestore push` (stream views), not Feast's "
            "materialize or push")

    def update(self, config, tables_to_delete, tables_to_keep, entities_to_delete,
               entities_to_keep, partial):
        """Nothing to reconcile: `featurestore apply` owns the layout."""

    def teardown(self, config, tables, entities):
        """Nothing to tear down: `featurestore gc` removes keys no server reads."""


def _key_columns(entity_keys) -> list[tuple[str, str, list]]:
    """Feast's entity keys as our request's key columns: (name, kind, values)."""
    names = list(entity_keys[0].join_keys)
    columns = []
    for i, name in enumerate(names):
        values = []
        kinds = set()
        for key in entity_keys:
            value = key.entity_values[i]
            which = value.WhichOneof("val")
            if which in ("string_val",):
                kinds.add("string_list")
            elif which in ("int64_val", "int32_val"):
                kinds.add("int64_list")
            else:
                raise ValueError(f"entity key {name!r}: featurestore keys are strings or "
                                 f"integers, not {which}")
            values.append(getattr(value, which))
        if len(kinds) > 1:
            raise ValueError(f"entity key {name!r} mixes strings and integers")
        columns.append((name, kinds.pop(), values))
    return columns


def _rows(response, n: int, names: list[str]):
    """Our columnar response as Feast's per-entity (event time, values):
    (None, None) for an entity NOT_FOUND in every requested feature."""
    from serving import feast_api
    from serving.v1 import serving_pb2 as pb

    out: list[list] = [[None, {}, False] for _ in range(n)]   # newest µs, values, any state
    columns = list(response.results)[-len(names):]
    for name, column in zip(names, columns):
        statuses = list(column.statuses)
        times = list(column.event_timestamps)
        for i, value in enumerate(feast_api.values(column.values, statuses, ValueProto)):
            row = out[i]
            row[1][name] = value
            if statuses[i] != pb.NOT_FOUND:
                row[2] = True
            if times[i] and (row[0] is None or times[i] > row[0]):
                row[0] = times[i]
    result = []
    for newest, values, known in out:
        if not known:
            result.append((None, None))
            continue
        ts = datetime.fromtimestamp((newest or 0) / 1_000_000, tz=timezone.utc)
        result.append((ts, values))
    return result


class FeaturestoreOfflineStore(OfflineStore):
    """Training sets come from `featurestore export`; Feast's offline reads
    say so instead of computing something else."""

    @staticmethod
    def _refuse(*args, **kwargs):
        raise NotImplementedError(
            "training sets of this repo come from `featurestore export --labels LABELS "
            "--service SERVICE --out OUT` (or featurestore.export.export), which computes "
            "them exactly as the server serves; Feast's get_historical_features does not")

    get_historical_features = _refuse
    pull_latest_from_table_or_query = _refuse
    pull_all_from_table_or_query = _refuse
