"""Feast backend: the plan as Feast objects, kept in Feast's registry.

Feast is the registry of record: after `apply`, Feast's own tools list what a
repo defines (`feast -c .featurestore/feast feature-views list`). Every object
carries a `featurestore.fingerprint` tag, so `plan` can tell an update from an
unchanged object without comparing Feast protos field by field.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from dsl.plan import Entity, Plan, Service, Source, View, render_plan
from featurestore.config import RepoConfig

FINGERPRINT_TAG = "featurestore.fingerprint"
KINDS = ("entity", "source", "view", "service")


@dataclass
class Changes:
    """What `apply` changes: (kind, name) pairs, sorted."""
    create: list[tuple[str, str]] = field(default_factory=list)
    update: list[tuple[str, str]] = field(default_factory=list)
    delete: list[tuple[str, str]] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.create or self.update or self.delete)

    def render(self, verb: str = "Plan") -> str:
        if self.empty:
            return "No changes: the registry matches the feature repo."
        lines = []
        for sign, items in (("+", self.create), ("~", self.update), ("-", self.delete)):
            lines += [f"  {sign} {kind} {name}" for kind, name in items]
        lines.append(f"{verb}: {len(self.create)} to create, {len(self.update)} to update, "
                     f"{len(self.delete)} to delete.")
        return "\n".join(lines)


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def fingerprints(plan: Plan) -> dict[tuple[str, str], str]:
    """(kind, name) -> fingerprint of the object's definition."""
    out: dict[tuple[str, str], str] = {}
    for e in plan.entities:
        out["entity", e.name] = _hash(render_plan(Plan(entities=(e,))) + e.description)
    for s in plan.sources:
        out["source", s.name] = _hash(render_plan(Plan(sources=(s,))) + s.description)
    for v in plan.views:
        out["view", v.name] = _hash(render_plan(Plan(views=(v,))))
    for s in plan.services:
        out["service", s.name] = _hash(render_plan(Plan(services=(s,))) + s.description)
    return out


def _feast_type(t: str):
    from feast import types

    return {"string": types.String, "int64": types.Int64, "float64": types.Float64,
            "bool": types.Bool, "timestamp": types.UnixTimestamp}[t]


def _value_type(t: str):
    from feast import ValueType

    return {"string": ValueType.STRING, "int64": ValueType.INT64}[t]


def _entity(e: Entity, fp: str):
    from feast import Entity as FeastEntity

    return FeastEntity(name=e.name, join_keys=[k for k, _ in e.keys],
                       value_type=_value_type(e.keys[0][1]) if len(e.keys) == 1 else None,
                       description=e.description, tags={FINGERPRINT_TAG: fp})


def _source(s: Source, root: Path, fp: str):
    from feast import FileSource

    path = s.path if Path(s.path).is_absolute() else str(root / s.path)
    return FileSource(name=s.name, path=path, timestamp_field=s.timestamp,
                      description=s.description, tags={FINGERPRINT_TAG: fp})


def _view(v: View, entity, source, fp: str):
    from feast import FeatureView, Field

    schema = [Field(name=k, dtype=_feast_type(t)) for k, t in v.keys]
    schema += [Field(name=n, dtype=_feast_type(v.feature_type(n))) for n in v.feature_names]
    ttl = timedelta(microseconds=v.ttl_us) if v.ttl_us else timedelta(0)
    tags = {**dict(v.tags), FINGERPRINT_TAG: fp, "featurestore.tile": str(v.tile_us)}
    return FeatureView(name=v.name, entities=[entity], ttl=ttl, schema=schema, source=source,
                       online=True, description=v.description, tags=tags)


def _service(s: Service, views: dict, fp: str):
    from feast import FeatureService

    by_view: dict[str, list[str]] = {}
    for view, feature in s.features:
        by_view.setdefault(view, []).append(feature)
    return FeatureService(name=s.name, features=[views[v][fs] for v, fs in by_view.items()],
                          description=s.description, tags={FINGERPRINT_TAG: fp})


def feast_objects(plan: Plan, root: Path) -> dict[tuple[str, str], object]:
    """(kind, name) -> the Feast object for every definition of the plan."""
    fps = fingerprints(plan)
    objs: dict[tuple[str, str], object] = {}
    entities = {e.name: _entity(e, fps["entity", e.name]) for e in plan.entities}
    sources = {s.name: _source(s, root, fps["source", s.name]) for s in plan.sources}
    views = {v.name: _view(v, entities[v.entity], sources[v.source], fps["view", v.name])
             for v in plan.views}
    services = {s.name: _service(s, views, fps["service", s.name]) for s in plan.services}
    for kind, group in (("entity", entities), ("source", sources), ("view", views),
                        ("service", services)):
        objs.update({(kind, n): o for n, o in group.items()})
    return objs


def write_feast_config(cfg: RepoConfig) -> Path:
    """A feature_store.yaml for Feast's own tools, pointing at our registry."""
    cfg.feast_dir.mkdir(parents=True, exist_ok=True)
    url = cfg.redis_url or "redis://localhost:6379/0"
    host_port = url.split("://", 1)[-1].split("/", 1)[0]
    (cfg.feast_dir / "feature_store.yaml").write_text(
        f"project: {cfg.project}\n"
        f"registry: {cfg.registry.resolve()}\n"
        "provider: local\n"
        "online_store:\n  type: redis\n"
        f"  connection_string: \"{host_port}\"\n"
        "offline_store:\n  type: file\n"
        "entity_key_serialization_version: 3\n")
    return cfg.feast_dir


def open_store(cfg: RepoConfig):
    import logging

    from feast import FeatureStore

    logging.getLogger("feast").setLevel(logging.WARNING)
    cfg.registry.parent.mkdir(parents=True, exist_ok=True)
    return FeatureStore(repo_path=str(write_feast_config(cfg)))


def registered(store) -> dict[tuple[str, str], object]:
    """(kind, name) -> object for what the registry holds in this project."""
    out: dict[tuple[str, str], object] = {}
    listings = (("entity", store.list_entities), ("source", store.list_data_sources),
                ("view", store.list_feature_views), ("service", store.list_feature_services))
    for kind, lister in listings:
        for obj in lister():
            if kind == "entity" and obj.name == "__dummy":
                continue
            out[kind, obj.name] = obj
    return out


def diff(plan: Plan, store) -> Changes:
    """What applying `plan` would change in the registry."""
    want = fingerprints(plan)
    have = {k: (o.tags or {}).get(FINGERPRINT_TAG) for k, o in registered(store).items()}
    order = {k: i for i, k in enumerate(KINDS)}
    key = lambda kn: (order[kn[0]], kn[1])  # noqa: E731
    return Changes(
        create=sorted((k for k in want if k not in have), key=key),
        update=sorted((k for k in want if k in have and have[k] != want[k]), key=key),
        delete=sorted((k for k in have if k not in want), key=key),
    )


def apply(plan: Plan, cfg: RepoConfig, store=None) -> Changes:
    """Write the plan's objects to the Feast registry; delete what it no longer has."""
    store = store or open_store(cfg)
    changes = diff(plan, store)
    if changes.empty:
        return changes
    objs = feast_objects(plan, cfg.root)
    have = registered(store)
    to_delete = [have[k] for k in changes.delete]
    store.apply(list(objs.values()), objects_to_delete=to_delete, partial=False)
    return changes
