"""`featurestore.yaml`: where a feature repo keeps its settings.

    project: shop                       # namespace for keys and the registry
    registry: .featurestore/registry.db # Feast registry file (relative to the repo)
    online_store:
      url: redis://localhost:6379/0     # absent: a private redis-server is started
    serving:
      host: 127.0.0.1
      port: 6566
      workers: 4                        # server processes (default: one per core)
      api_keys: [k1, k2]                # optional; callers send one as x-api-key
      tls_cert: certs/server.pem        # optional, with tls_key: serve TLS
      tls_key: certs/server.key
      metrics_port: 9464                # optional: Prometheus /metrics
      max_entities: 10000               # entity rows per request
      max_request_bytes: 4194304
      max_pending_rows: 50000           # entity rows a worker holds at once (RESOURCE_EXHAUSTED beyond)
      redis_connections: 32             # Redis connections per worker
    batch:
      memory_limit: 4GB                 # DuckDB spills to disk beyond this

Environment variables override the file: FEATURESTORE_REDIS_URL,
FEATURESTORE_SERVING_PORT, FEATURESTORE_API_KEYS (comma-separated).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

CONFIG_FILE = "featurestore.yaml"
STATE_DIR = ".featurestore"


class ConfigError(Exception):
    """A problem with the repo or its settings, worded for the user."""


@dataclass(frozen=True)
class RepoConfig:
    root: Path
    project: str
    registry: Path
    redis_url: str | None
    serving_host: str
    serving_port: int
    memory_limit: str
    api_keys: tuple[str, ...] = ()
    tls_cert: Path | None = None
    tls_key: Path | None = None
    metrics_port: int | None = None
    max_entities: int = 10_000
    max_request_bytes: int = 4 * 1024 * 1024
    serving_workers: int | None = None
    max_pending_rows: int | None = None      # None: the server's default (ServerOptions)
    redis_connections: int | None = None

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


def find_repo(start: Path) -> Path:
    """The nearest folder at or above `start` that holds featurestore.yaml."""
    start = start.resolve()
    for d in (start, *start.parents):
        if (d / CONFIG_FILE).is_file():
            return d
    raise ConfigError(f"no {CONFIG_FILE} in {start} or any parent folder; "
                      "run inside a feature repo, pass --repo DIR, or create one with "
                      "`featurestore init DIR`")


def load(root: Path) -> RepoConfig:
    import yaml

    path = root / CONFIG_FILE
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path} does not exist") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {e}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: expected a mapping of settings")
    project = str(doc.get("project") or root.name)
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", project):
        raise ConfigError(f"{path}: project {project!r} must be letters, digits and '_'")
    online = doc.get("online_store") or {}
    serving = doc.get("serving") or {}
    batch = doc.get("batch") or {}
    url = os.environ.get("FEATURESTORE_REDIS_URL") or online.get("url")
    port = os.environ.get("FEATURESTORE_SERVING_PORT") or serving.get("port", 6566)
    try:
        port = int(port)
    except (TypeError, ValueError):
        raise ConfigError(f"{path}: serving.port must be a number, not {port!r}") from None
    keys = os.environ.get("FEATURESTORE_API_KEYS")
    keys = keys.split(",") if keys else serving.get("api_keys") or []
    if isinstance(keys, str) or not all(isinstance(k, str) and k for k in keys):
        raise ConfigError(f"{path}: serving.api_keys must be a list of non-empty strings")
    return RepoConfig(
        root=root,
        project=project,
        registry=root / str(doc.get("registry", f"{STATE_DIR}/registry.db")),
        redis_url=url,
        serving_host=str(serving.get("host", "127.0.0.1")),
        serving_port=port,
        memory_limit=str(batch.get("memory_limit", "4GB")),
        api_keys=tuple(keys),
        tls_cert=root / serving["tls_cert"] if serving.get("tls_cert") else None,
        tls_key=root / serving["tls_key"] if serving.get("tls_key") else None,
        metrics_port=_int(path, serving, "metrics_port", None),
        max_entities=_int(path, serving, "max_entities", 10_000),
        max_request_bytes=_int(path, serving, "max_request_bytes", 4 * 1024 * 1024),
        serving_workers=_int(path, serving, "workers", None),
        max_pending_rows=_int(path, serving, "max_pending_rows", None),
        redis_connections=_int(path, serving, "redis_connections", None),
    )


def _int(path: Path, section: dict, name: str, default: int | None) -> int | None:
    value = section.get(name, default)
    if value is None or isinstance(value, int) and not isinstance(value, bool):
        return value
    raise ConfigError(f"{path}: serving.{name} must be a whole number, not {value!r}")
