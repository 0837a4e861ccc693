"""`featurestore.yaml`: where a feature repo keeps its settings.

    project: shop                       # namespace for keys and the registry
    registry: .featurestore/registry.db # Feast registry file (relative to the repo)
    online_store:
      url: redis://localhost:6379/0     # absent: a private redis-server is started
      # or, as Feast spells it (featurestore.redis_client):
      # type: redis_cluster             # redis (default) | redis_cluster | redis_sentinel
      # connection_string: "host1:6379,host2:6379,ssl=true,password=${REDIS_PASSWORD}"
      # sentinel_master: mymaster       # redis_sentinel: the master the sentinels watch
    serving:
      host: 127.0.0.1
      port: 6566
      workers: 4                        # server processes (default: one per core)
      api_keys: [k1, "sha256:9f86d0..."] # optional; callers send one as x-api-key
      api_keys_file: secrets/keys.yaml  # optional: hashed keys with allow-lists, re-read
                                        # when changed and on SIGHUP (serving.auth)
      tls_cert: certs/server.pem        # optional, with tls_key: serve TLS
      tls_key: certs/server.key
      tls_client_ca: certs/ca.pem       # optional: mutual TLS, clients need a cert it signed
      http_port: 6567                   # optional: Feast's HTTP API, POST /get-online-features
      log_format: text                  # or json: one JSON object per line, with request ids
      access_log: false                 # true: one log line per call
      metrics_port: 9464                # optional: Prometheus /metrics
      max_entities: 10000               # entity rows per request
      max_request_bytes: 4194304
      max_pending_rows: 50000           # entity rows a worker holds at once (RESOURCE_EXHAUSTED beyond)
      redis_connections: 32             # Redis connections per worker
      reload_interval: 2.0              # seconds between checks for an applied change
    batch:
      memory_limit: 4GB                 # DuckDB spills to disk beyond this

Every section is a typed model (`Settings` and its parts) that refuses keys
it does not know, with the closest known key and the file:line of the
mistake. The defaults written here are the only ones: the CLI and the server
both read them from these models.

Any string value may name environment variables, as Feast's
feature_store.yaml does: `${NAME}` (an error when NAME is unset) or
`${NAME:-default}`. The variables FEATURESTORE_REDIS_URL,
FEATURESTORE_SERVING_PORT and FEATURESTORE_API_KEYS (comma-separated)
override the file.
"""
from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from featurestore.errors import ConfigError

CONFIG_FILE = "featurestore.yaml"
STATE_DIR = ".featurestore"
ENV_OVERRIDES = {"FEATURESTORE_REDIS_URL": ("online_store", "url"),
                 "FEATURESTORE_SERVING_PORT": ("serving", "port"),
                 "FEATURESTORE_API_KEYS": ("serving", "api_keys")}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)


class OnlineStore(_Section):
    """Where the online store is (`featurestore.redis_client` reads it).
    Feast's `redis_type` is read as `type` (`load`)."""
    type: Literal["redis", "redis_cluster", "redis_sentinel"] = "redis"
    url: Optional[str] = None                   # None (and no connection_string): a private redis-server
    connection_string: Optional[str] = None     # Feast's "host:port,...,ssl=true,password=..."
    sentinel_master: str = "mymaster"           # redis_sentinel: the master's name (Feast's default)

    @property
    def configured(self) -> bool:
        """Whether it names a Redis (otherwise the repo's private redis-server serves)."""
        return bool(self.url or self.connection_string)


class Serving(_Section):
    host: str = "127.0.0.1"
    port: int = Field(6566, ge=1, le=65535)
    workers: Optional[int] = Field(None, ge=1)  # None: one per core
    api_keys: tuple[str, ...] = ()              # each the key, or sha256:<hex>
    api_keys_file: Optional[str] = None         # keys with allow-lists (serving.auth)
    tls_cert: Optional[str] = None
    tls_key: Optional[str] = None
    tls_client_ca: Optional[str] = None         # with it, clients need a certificate it signed
    http_port: Optional[int] = Field(None, ge=0, le=65535)   # Feast's HTTP API (serving.http_api)
    log_format: Literal["text", "json"] = "text"              # serving.logs
    access_log: bool = False                                  # a log line per call
    metrics_port: Optional[int] = Field(None, ge=0, le=65535)
    max_entities: int = Field(10_000, ge=1)
    max_request_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    max_pending_rows: int = Field(50_000, ge=1)
    redis_connections: int = Field(32, ge=1)
    reload_interval: float = Field(2.0, gt=0)

    @field_validator("api_keys", mode="before")
    @classmethod
    def _keys(cls, value: Any):
        if isinstance(value, str):
            raise ValueError("must be a list of keys, e.g. [k1, k2]")
        if value is not None and not all(isinstance(k, str) and k for k in value):
            raise ValueError("every key must be a non-empty string")
        return () if value is None else value


class Batch(_Section):
    memory_limit: str = "4GB"


class Settings(_Section):
    project: Optional[str] = None               # None: the repo folder's name
    registry: str = f"{STATE_DIR}/registry.db"
    online_store: OnlineStore = OnlineStore()
    serving: Serving = Serving()
    batch: Batch = Batch()

    @field_validator("online_store", "serving", "batch", mode="before")
    @classmethod
    def _empty_section(cls, value: Any):
        return {} if value is None else value   # a section holding only comments


@dataclass(frozen=True)
class RepoConfig:
    root: Path
    settings: Settings

    @property
    def project(self) -> str:
        return self.settings.project or self.root.name

    @property
    def registry(self) -> Path:
        return self.root / self.settings.registry

    @property
    def redis_target(self):
        """The configured online store (`featurestore.redis_client.RedisTarget`),
        or None: the repo's private redis-server."""
        from featurestore import redis_client

        store = self.settings.online_store
        if not store.configured:
            return None
        return redis_client.parse(store.type, store.url, store.connection_string,
                                  store.sentinel_master)

    @property
    def serving(self) -> Serving:
        return self.settings.serving

    @property
    def memory_limit(self) -> str:
        return self.settings.batch.memory_limit

    def path(self, relative: str | None) -> Path | None:
        return None if relative is None else self.root / relative

    @property
    def state_dir(self) -> Path:
        return self.root / STATE_DIR

    @property
    def manifest_path(self) -> Path:
        return self.state_dir / "manifest.json"

    @property
    def local_redis_dir(self) -> Path:
        return self.state_dir / "redis"

    @property
    def feast_dir(self) -> Path:
        return self.state_dir / "feast"

    def effective(self) -> dict:
        """The settings in force, secrets masked (`featurestore config`)."""
        doc = self.settings.model_dump(mode="json")
        doc["project"] = self.project
        doc["online_store"]["url"] = mask_url(doc["online_store"]["url"])
        doc["online_store"]["connection_string"] = mask_connection_string(
            doc["online_store"]["connection_string"])
        doc["serving"]["api_keys"] = ["***"] * len(doc["serving"]["api_keys"])
        return doc


def mask_url(url: str | None) -> str | None:
    """`url` with its password replaced by ***."""
    if not url:
        return url
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}{port}"))


def mask_connection_string(text: str | None) -> str | None:
    """A Feast connection string with its password replaced by ***."""
    if not text:
        return text
    return ",".join("password=***" if p.strip().startswith("password=") else p
                    for p in text.split(","))


def find_repo(start: Path) -> Path:
    """The nearest folder at or above `start` that holds featurestore.yaml."""
    start = start.resolve()
    for d in (start, *start.parents):
        if (d / CONFIG_FILE).is_file():
            return d
    raise ConfigError(f"no {CONFIG_FILE} in {start} or any parent folder; "
                      "run inside a feature repo, pass --repo DIR, or create one with "
                      "`featurestore init DIR`")


# ----------------------------------------------------------------- loading
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class _Positions:
    """Where each setting of one featurestore.yaml is written (its dotted
    path -> YAML mark; `<path>#value` for the value's own position)."""

    def __init__(self, file: Path):
        self.file = file
        self.marks: dict = {}

    def fail(self, path: str, msg: str):
        mark = self.marks.get(path) or self.marks.get(path.partition("#")[0])
        where = f"{self.file}:{mark.line + 1}:{mark.column + 1}" if mark else str(self.file)
        name = path.partition("#")[0]
        raise ConfigError(f"{where}: {name + ': ' if name else ''}{msg}")

    def plain(self, node, path: str = "") -> Any:
        """The YAML node as plain Python, positions recorded and ${ENV}
        references in strings expanded."""
        import yaml

        self.marks.setdefault(path, node.start_mark)
        if isinstance(node, yaml.MappingNode):
            out = {}
            for key_node, value_node in node.value:
                key = str(key_node.value)
                sub = f"{path}.{key}" if path else key
                self.marks[sub] = key_node.start_mark
                self.marks[f"{sub}#value"] = value_node.start_mark
                out[key] = self.plain(value_node, sub)
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self.plain(item, f"{path}.{i}") for i, item in enumerate(node.value)]
        value = yaml.constructor.SafeConstructor().construct_object(node, deep=True)
        if isinstance(value, str) and "${" in value:
            value = _expand(value, lambda msg: self.fail(f"{path}#value", msg))
        return value


def _expand(text: str, fail) -> str:
    """`text` with ${NAME} and ${NAME:-default} replaced from the environment."""
    def one(m: re.Match) -> str:
        name, default = m.group(1), m.group(2)
        if name in os.environ:
            return os.environ[name]
        if default is not None:
            return default
        fail(f"environment variable {name} is not set (write ${{{name}:-default}} "
             "for a fallback)")
    return _ENV_REF.sub(one, text)


def _known(model: type[BaseModel], loc: tuple) -> list[str]:
    """The keys the section at `loc` (the error's location minus its last
    part) accepts."""
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        if field is None or not (isinstance(field.annotation, type)
                                 and issubclass(field.annotation, BaseModel)):
            return []
        model = field.annotation
    return list(model.model_fields)


def load(root: Path) -> RepoConfig:
    import yaml

    path = root / CONFIG_FILE
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path} does not exist") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {' '.join(str(e).split())}") from None
    pos = _Positions(path)
    doc = pos.plain(node) if node is not None else {}
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: expected a mapping of settings")
    _feast_redis_type(pos, doc)
    for var, (section, key) in ENV_OVERRIDES.items():
        value = os.environ.get(var)
        if value:
            sub = doc.get(section)
            doc[section] = sub = dict(sub) if isinstance(sub, dict) else {}
            sub[key] = value.split(",") if key == "api_keys" else value
            if key == "url":   # the variable names the whole address
                sub.pop("connection_string", None)
    try:
        settings = Settings.model_validate(doc)
    except ValidationError as e:
        err = e.errors()[0]
        loc = tuple(str(p) for p in err["loc"])
        dotted = ".".join(loc)
        if err["type"] == "extra_forbidden":
            known = _known(Settings, loc)
            close = difflib.get_close_matches(loc[-1], known, n=1, cutoff=0.6)
            hint = (f"did you mean {close[0]!r}?" if close else
                    f"known keys: {', '.join(known)}")
            pos.fail(dotted, f"unknown setting; {hint}")
        env = [v for v, target in ENV_OVERRIDES.items()
               if target == loc[:2] and os.environ.get(v)]
        source = f" (from {env[0]})" if env else ""
        pos.fail(f"{dotted}#value",
              f"{err['msg']}, not {err.get('input')!r}{source}")
    if settings.project is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*",
                                                         settings.project):
        pos.fail("project#value",
              f"project {settings.project!r} must be letters, digits and '_'")
    if not settings.project and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", root.name):
        raise ConfigError(f"{path}: set `project:` (the folder name {root.name!r} is not "
                          "letters, digits and '_')")
    if settings.online_store.configured or settings.online_store.type != "redis":
        _check_online_store(pos, settings.online_store)
    if bool(settings.serving.tls_cert) != bool(settings.serving.tls_key):
        pos.fail("serving", "tls_cert and tls_key go together: set both or neither")
    if settings.serving.tls_client_ca and not settings.serving.tls_cert:
        pos.fail("serving.tls_client_ca", "mutual TLS needs tls_cert and tls_key too")
    return RepoConfig(root=root, settings=settings)


def _feast_redis_type(pos: _Positions, doc: dict) -> None:
    """Feast writes `type: redis` and `redis_type: redis_cluster`: read
    `redis_type` as our `type`."""
    store = doc.get("online_store")
    if not isinstance(store, dict) or "redis_type" not in store:
        return
    kind = store.pop("redis_type")
    if store.get("type", "redis") not in ("redis", kind):
        pos.fail("online_store.redis_type", f"type {store['type']!r} and redis_type "
                 f"{kind!r} disagree: give one")
    store["type"] = kind
    pos.marks["online_store.type"] = pos.marks["online_store.redis_type"]
    pos.marks["online_store.type#value"] = pos.marks["online_store.redis_type#value"]


def _check_online_store(pos: _Positions, store: OnlineStore) -> None:
    """Refuse an online store that names no Redis or names one wrongly."""
    from featurestore import redis_client

    if not store.configured:
        pos.fail("online_store.type#value",
                 f"{store.type} needs connection_string (the "
                 f"{'sentinels' if store.type == 'redis_sentinel' else 'seed nodes'}, "
                 "host1:port1,host2:port2); the private redis-server is a single node")
    where = "connection_string" if store.connection_string else "url"
    try:
        redis_client.parse(store.type, store.url, store.connection_string,
                           store.sentinel_master)
    except ValueError as e:
        pos.fail(f"online_store.{where}#value", str(e))
