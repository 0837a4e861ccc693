"""The serving manifest: what the server must know about views, and nothing more.

`apply` writes it as JSON beside the registry; the server loads it at start
and again whenever it changes. Besides each view as applied, it keeps the
view's earlier versions (`previous`): a server keeps serving the newest
version that has been written to Redis until the applied one has been
(`serving.versions`), and `featurestore gc` retires them.
It depends on nothing but the standard library, so that serving never imports
the compiler, DuckDB or PyFlink.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

MANIFEST_VERSION = 2   # 2: aggregations name their state's slot in a tile (layout v3)


@dataclass(frozen=True)
class FeatureSpec:
    name: str
    type: str                  # value type: string, int64, float64, bool, timestamp
    function: str | None       # None for a row-level feature; else count, sum, ...
    window_us: int | None      # aggregation window; None means the view's ttl
    input_type: str | None = None  # an aggregation's argument type (None for count()):
                                   # it decides the tile state (featurestore.tiles)
    state: int | None = None       # an aggregation's slot in a tile: aggregations that
                                   # differ only in their window share one state (None:
                                   # its own slot, its position among the aggregations)


@dataclass(frozen=True)
class ViewSpec:
    name: str
    entity: str
    keys: tuple[tuple[str, str], ...]
    fingerprint: str
    tile_us: int
    ttl_us: int | None
    row_features: tuple[FeatureSpec, ...]
    aggregations: tuple[FeatureSpec, ...]

    def feature(self, name: str) -> FeatureSpec | None:
        for f in (*self.row_features, *self.aggregations):
            if f.name == name:
                return f
        return None

    @property
    def features(self) -> tuple[FeatureSpec, ...]:
        return (*self.row_features, *self.aggregations)

    def slot(self, aggregation: FeatureSpec) -> int:
        """The position of an aggregation's state in the view's tiles."""
        if aggregation.state is not None:
            return aggregation.state
        return next(i for i, f in enumerate(self.aggregations) if f.name == aggregation.name)

    @property
    def states(self) -> int:
        """The number of states in each of the view's tiles."""
        return 1 + max((self.slot(f) for f in self.aggregations), default=-1)


KEEP_PREVIOUS = 2      # earlier versions of a view a manifest remembers


@dataclass(frozen=True)
class Manifest:
    project: str
    views: dict[str, ViewSpec]
    services: dict[str, tuple[tuple[str, str], ...]]
    previous: dict[str, tuple[ViewSpec, ...]] = field(default_factory=dict)  # newest first

    def versions(self, view: str) -> tuple[ViewSpec, ...]:
        """The view as applied, then its earlier versions, newest first."""
        return (self.views[view], *self.previous.get(view, ()))

    def succeeding(self, older: "Manifest | None") -> "Manifest":
        """This manifest, remembering the versions of its views that `older`
        (the manifest it replaces) applied or remembered: a view whose
        definition changed keeps its earlier version, until `gc`."""
        if older is None or older.project != self.project:
            return self
        previous = {}
        for name, view in self.views.items():
            if name not in older.views:
                continue
            seen, kept = {view.fingerprint}, []
            for v in older.versions(name):
                if v.fingerprint not in seen and v.keys == view.keys:
                    seen.add(v.fingerprint)
                    kept.append(v)
            if kept:
                previous[name] = tuple(kept[:KEEP_PREVIOUS])
        return replace(self, previous=previous)

    def without_previous(self) -> "Manifest":
        return replace(self, previous={})

    # -------------------------------------------------------------- json
    def to_json(self) -> str:
        def fs(f: FeatureSpec) -> dict:
            doc = {"name": f.name, "type": f.type, "function": f.function,
                   "window_us": f.window_us}
            if f.input_type is not None:
                doc["input_type"] = f.input_type
            if f.state is not None:
                doc["state"] = f.state
            return doc

        def vs(v: ViewSpec) -> dict:
            return {"entity": v.entity, "keys": [list(k) for k in v.keys],
                    "fingerprint": v.fingerprint, "tile_us": v.tile_us, "ttl_us": v.ttl_us,
                    "row_features": [fs(f) for f in v.row_features],
                    "aggregations": [fs(f) for f in v.aggregations]}

        doc = {
            "version": MANIFEST_VERSION,
            "project": self.project,
            "views": {n: vs(v) for n, v in sorted(self.views.items())},
            "services": {n: [list(r) for r in refs] for n, refs in sorted(self.services.items())},
        }
        if self.previous:
            doc["previous"] = {n: [vs(v) for v in vs_] for n, vs_ in sorted(self.previous.items())}
        return json.dumps(doc, indent=2, sort_keys=True) + "\n"

    @staticmethod
    def from_json(text: str) -> "Manifest":
        doc = json.loads(text)
        if doc.get("version") != MANIFEST_VERSION:
            raise ValueError(f"manifest version {doc.get('version')!r} is not {MANIFEST_VERSION}; "
                             "run `featurestore apply` with this release")

        def fs(d: dict) -> FeatureSpec:
            return FeatureSpec(d["name"], d["type"], d["function"], d["window_us"],
                               d.get("input_type"), d.get("state"))

        def vs(n: str, v: dict) -> ViewSpec:
            return ViewSpec(n, v["entity"], tuple(tuple(k) for k in v["keys"]), v["fingerprint"],
                            v["tile_us"], v["ttl_us"], tuple(fs(f) for f in v["row_features"]),
                            tuple(fs(f) for f in v["aggregations"]))

        views = {n: vs(n, v) for n, v in doc["views"].items()}
        services = {n: tuple(tuple(r) for r in refs) for n, refs in doc["services"].items()}
        previous = {n: tuple(vs(n, v) for v in vs_)
                    for n, vs_ in doc.get("previous", {}).items() if n in views}
        return Manifest(doc["project"], views, services, previous)

    @staticmethod
    def load(path: str | Path) -> "Manifest":
        return Manifest.from_json(Path(path).read_text())

    def save(self, path: str | Path) -> None:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_suffix(".tmp")
        tmp.write_text(self.to_json())
        tmp.replace(p)
