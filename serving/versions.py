"""Which version of each view a server reads: changing a view is no outage.

`featurestore apply` of a changed view writes the new manifest at once, but
Redis holds the new version's state only once `materialize` (or the stream
job, for a stream view) has written it: the view's fingerprint is part of
every key (`featurestore.layout`). Until then a server keeps reading the
newest earlier version that Redis holds, which the manifest remembers
(`Manifest.previous`), and switches to the applied version as soon as Redis
holds it, between two requests:

* a version is *written* when Redis holds its batch watermark
  (`layout.watermark_key`, set at the end of a view's materialization) or
  its stream mark (`layout.live_key`, set by the stream job's first write);
* features of the applied version that the earlier one lacks are read from
  the applied version (NOT_FOUND until it is written); the others keep the
  earlier version's values, as they were defined then;
* a view whose entity keys changed has no earlier version to fall back on.

The server re-reads the manifest file when it changes (`serving.reload_interval`,
default 2 s), so `apply` needs no restart, and checks Redis for the versions
at the same pace. A view whose read version Redis does not hold at all (an
empty Redis, or another one than materialized) is `unwritten`: the server
says so in its log, health (`view:<name>` NOT_SERVING) and metrics.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Awaitable, Callable, Sequence

from featurestore import layout
from featurestore.manifest import Manifest, ViewSpec
from serving.lookup import Resolver, check_manifest

log = logging.getLogger("featurestore.serving")

Exists = Callable[[Sequence[bytes]], Awaitable[Sequence[bool]]]


def written_keys(project: str, view: ViewSpec) -> tuple[bytes, bytes]:
    """The keys of which either says Redis holds `view`'s version."""
    return (layout.watermark_key(project, view.name, view.fingerprint),
            layout.live_key(project, view.name, view.fingerprint))


class Versions:
    """The applied manifest, which version of each view is read, and the
    `Resolver` requests go through (replaced whole, never changed in place)."""

    def __init__(self, manifest: Manifest, path: str | Path | None = None):
        self.path = Path(path) if path else None
        self._stamp = self._stat()
        self._written: set[tuple[str, str]] = set()   # (view, fingerprint) Redis holds
        self.unwritten: set[str] | None = None        # views whose read version it does not
        self._use(manifest, {})

    def _use(self, manifest: Manifest, served: dict[str, ViewSpec]) -> None:
        self.manifest = manifest
        self.served = served      # view -> the earlier version read instead of the applied
        self.resolver = Resolver(manifest, served)

    def _stat(self) -> tuple[int, int] | None:
        if self.path is None:
            return None
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size

    def _reload(self) -> Manifest | None:
        """The manifest file's new content, or None when it did not change
        (or cannot be used: the last good one stays, and the log says why)."""
        stamp = self._stat()
        if stamp is None or stamp == self._stamp:
            return None
        self._stamp = stamp
        try:
            manifest = Manifest.load(self.path)
            check_manifest(manifest)
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.error("the manifest at %s changed but cannot be served; still serving the "
                      "previous one: %s", self.path, e)
            return None
        if manifest.project != self.manifest.project:
            log.error("the manifest at %s is now of project %r, not %r; still serving the "
                      "previous one (restart the server to change project)",
                      self.path, manifest.project, self.manifest.project)
            return None
        log.info("the manifest at %s changed: now %d views, %d services", self.path,
                 len(manifest.views), len(manifest.services))
        return manifest

    async def refresh(self, exists: Exists) -> bool:
        """Pick up a changed manifest and newly written versions; True when
        what requests read changed. `exists` tells which keys Redis holds
        (raising when Redis does not answer: nothing changes then)."""
        manifest = self._reload() or self.manifest
        # every version a view might be read from, checked afresh each time:
        # Redis may have been emptied or replaced since
        asked = [(name, v) for name in manifest.views
                 for v in (manifest.versions(name) if manifest.previous.get(name)
                           else (manifest.views[name],))]
        keys = [k for _, v in asked for k in written_keys(manifest.project, v)]
        held = await exists(keys) if keys else []
        self._written = {(name, v.fingerprint) for i, (name, v) in enumerate(asked)
                         if held[2 * i] or held[2 * i + 1]}
        served = {}
        for name in manifest.views:
            versions = manifest.versions(name)
            chosen = next((v for v in versions if (name, v.fingerprint) in self._written),
                          versions[0])
            if chosen is not versions[0]:
                served[name] = chosen
        self.unwritten = {name for name in manifest.views
                          if (name, served.get(name, manifest.views[name]).fingerprint)
                          not in self._written}
        if manifest is self.manifest and _same(served, self.served):
            return False
        for name in manifest.views:
            before = self.served.get(name)
            after = served.get(name)
            applied = manifest.views[name].fingerprint
            if after is not None and (before is None or before.fingerprint != after.fingerprint):
                log.warning("view %r: version %s is applied but Redis does not hold it yet; "
                            "serving version %s until `featurestore materialize` (or the "
                            "stream job) writes it", name, applied, after.fingerprint)
            elif after is None and before is not None:
                log.info("view %r: version %s is written; serving it", name, applied)
        self._use(manifest, served)
        return True


def _same(a: dict[str, ViewSpec], b: dict[str, ViewSpec]) -> bool:
    return a.keys() == b.keys() and all(a[n].fingerprint == b[n].fingerprint for n in a)
