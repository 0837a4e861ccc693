"""Who may call the server, and what each caller may read.

Keys come from `serving.api_keys` in featurestore.yaml (each the key itself,
or `sha256:<hex digest>`) and from `serving.api_keys_file`, a YAML file the
server re-reads when it changes and on SIGHUP, without dropping connections:

    keys:
      - name: fraud-model            # named in logs and refusals (never the key)
        sha256: 9f86d08...           # the key's SHA-256, hex; or `key: <plain>`
        services: [fraud_v1]         # optional: the feature services it may read
        views: [user_profile]        # optional: the views whose features it may read
      - name: ops
        sha256: 60303ae...           # neither list: it may read everything

A caller sends its key as `x-api-key` metadata (or `authorization: Bearer
<key>`). Only SHA-256 digests are held in memory and compared, each in
constant time. A request naming a feature service is allowed when the key
lists the service, or lists every view the service reads; one naming
features when the key lists each feature's view. Otherwise PERMISSION_DENIED
names what was refused. Health checks need no key; every other RPC does,
server reflection included.
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

log = logging.getLogger("featurestore.serving")

_DIGEST = re.compile(r"sha256:([0-9a-fA-F]{64})")


def digest(key: str | bytes) -> bytes:
    return hashlib.sha256(key.encode() if isinstance(key, str) else key).digest()


@dataclass(frozen=True)
class ApiKey:
    name: str
    sha256: bytes
    services: frozenset[str] | None = None   # None: no limit (with views None too)
    views: frozenset[str] | None = None

    @property
    def unlimited(self) -> bool:
        return self.services is None and self.views is None

    def refusal(self, service: str | None, views: Iterable[str],
                views_of: Callable[[str], Iterable[str] | None]) -> str | None:
        """Why this key may not make a request for `service` or the features
        of `views`; None when it may."""
        if self.unlimited:
            return None
        allowed_views = self.views or frozenset()
        if service is not None:
            if service in (self.services or ()):
                return None
            read = set(views_of(service) or ())
            if read and read <= allowed_views:
                return None
            return (f"key {self.name!r} may not read feature service {service!r}"
                    + self._lists())
        refused = sorted(set(views) - allowed_views)
        if not refused:
            return None
        return (f"key {self.name!r} may not read view(s) {', '.join(map(repr, refused))}"
                + self._lists())

    def _lists(self) -> str:
        parts = [f"{what}: {', '.join(sorted(items))}"
                 for what, items in (("services", self.services), ("views", self.views))
                 if items]
        return f" (it may read {'; '.join(parts)})" if parts else " (it may read nothing)"


def parse_key(text: str, name: str | None = None) -> ApiKey:
    """A key as `serving.api_keys` spells it: plain, or `sha256:<hex>`."""
    m = _DIGEST.fullmatch(text)
    sha = bytes.fromhex(m.group(1)) if m else digest(text)
    return ApiKey(name or f"key-{sha.hex()[:8]}", sha)


class KeysFileError(ValueError):
    pass


def load_keys_file(path: str | Path) -> list[ApiKey]:
    import yaml

    try:
        doc = yaml.safe_load(Path(path).read_text())
    except OSError as e:
        raise KeysFileError(f"cannot read {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise KeysFileError(f"{path} is not valid YAML: {' '.join(str(e).split())}") from None
    entries = (doc or {}).get("keys") if isinstance(doc, dict) else None
    if not isinstance(entries, list):
        raise KeysFileError(f"{path}: expected `keys:`, a list of keys")
    keys = []
    for i, entry in enumerate(entries, 1):
        if not isinstance(entry, dict):
            raise KeysFileError(f"{path}: key {i} is not a mapping")
        unknown = set(entry) - {"name", "sha256", "key", "services", "views"}
        if unknown:
            raise KeysFileError(f"{path}: key {i}: unknown setting(s) {', '.join(sorted(unknown))}"
                                " (known: name, sha256, key, services, views)")
        name = str(entry.get("name") or f"key {i}")
        if ("sha256" in entry) == ("key" in entry):
            raise KeysFileError(f"{path}: key {name!r}: give exactly one of sha256 or key")
        if "sha256" in entry:
            m = re.fullmatch(r"[0-9a-fA-F]{64}", str(entry["sha256"]))
            if not m:
                raise KeysFileError(f"{path}: key {name!r}: sha256 must be 64 hex digits")
            sha = bytes.fromhex(str(entry["sha256"]))
        else:
            if not entry["key"]:
                raise KeysFileError(f"{path}: key {name!r}: the key is empty")
            sha = digest(str(entry["key"]))
        lists = {}
        for what in ("services", "views"):
            items = entry.get(what)
            if items is not None and (isinstance(items, str) or not all(
                    isinstance(x, str) for x in items)):
                raise KeysFileError(f"{path}: key {name!r}: {what} must be a list of names")
            lists[what] = None if items is None else frozenset(items)
        keys.append(ApiKey(name, sha, lists["services"], lists["views"]))
    return keys


class KeyRing:
    """The keys in force: those of the config, then those of the keys file,
    re-read by `reload` when the file changed (or always, `force`). A file
    that cannot be read keeps the keys it last gave, and the log says why."""

    def __init__(self, plain: Iterable[str] = (), path: str | Path | None = None):
        self._plain = [parse_key(k) for k in plain if k]
        self.path = Path(path) if path else None
        self._stamp = None
        self._from_file: list[ApiKey] = []
        if self.path is not None:
            self._from_file = load_keys_file(self.path)   # a bad file stops the start
            self._stamp = self._stat()
        self.keys = [*self._plain, *self._from_file]

    @property
    def enabled(self) -> bool:
        return bool(self._plain) or self.path is not None

    def _stat(self):
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size, st.st_ino

    def reload(self, force: bool = False) -> bool:
        """Re-read the keys file when it changed; True when the keys changed."""
        if self.path is None:
            return False
        stamp = self._stat()
        if not force and stamp == self._stamp:
            return False
        self._stamp = stamp
        try:
            keys = load_keys_file(self.path)
        except KeysFileError as e:
            log.error("API keys not reloaded, the previous ones stay in force: %s", e)
            return False
        self._from_file = keys
        self.keys = [*self._plain, *keys]
        log.info("API keys reloaded from %s: %d key(s)", self.path, len(self.keys))
        return True

    def find(self, given: str | bytes) -> ApiKey | None:
        """The key `given` is, compared by digest in constant time against
        every key (no early exit: no timing oracle)."""
        sha, found = digest(given), None
        for key in self.keys:
            if hmac.compare_digest(sha, key.sha256) and found is None:
                found = key
        return found
