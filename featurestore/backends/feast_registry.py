"""Feast backend: the plan as Feast objects, kept in Feast's registry.

Feast is the registry of record: after `apply`, Feast's own tools list what a
repo defines (`feast -c .featurestore/feast feature-views list`, and
`stream-feature-views list` for views over streams).

How the plan maps onto Feast:

* entity: one Feast Entity per key (Feast entities have one join key), named
  like the entity when it has one key, `<entity>.<key>` when it has several.
* source: FileSource (parquet, csv, DuckDB table or query), KafkaSource, or a
  PushSource for the other streams. Feast wants a batch source behind every
  stream source: a FileSource named `<source>.batch` stands in for it.
* view: FeatureView, or StreamFeatureView over a stream source. Each feature
  Field carries its type, function and window as tags.
* service: FeatureService named `fraud`, or `fraud:v2` for a version.

Every object carries `featurestore.fingerprint` (a hash of its definition, so
`plan` can tell an update from an unchanged object) and `featurestore.object`
(the definition it stands for). Dots and colons never occur in DSL names, so
the Feast names above cannot collide with a user's.
"""
from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path

from dsl.plan import (Entity, Plan, Service, Source, View, format_duration, render_expr,
                      render_plan)
from featurestore.config import RepoConfig

FINGERPRINT_TAG = "featurestore.fingerprint"
OBJECT_TAG = "featurestore.object"
KINDS = ("entity", "source", "view", "service")


@dataclass
class Changes:
    """What `apply` changes: (kind, name) pairs, sorted; and warnings about
    changes that break readers (clients, models, stored values)."""
    create: list[tuple[str, str]] = field(default_factory=list)
    update: list[tuple[str, str]] = field(default_factory=list)
    delete: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

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
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def fingerprints(plan: Plan) -> dict[tuple[str, str], str]:
    """(kind, name) -> fingerprint of the object's definition; services are
    named by their ref (`fraud:v2`)."""
    out: dict[tuple[str, str], str] = {}
    for e in plan.entities:
        out["entity", e.name] = _hash(render_plan(Plan(entities=(e,))))
    for s in plan.sources:
        out["source", s.name] = _hash(render_plan(Plan(sources=(s,))))
    for v in plan.views:
        out["view", v.name] = _hash(render_plan(Plan(views=(v,))))
    for s in plan.services:
        out["service", s.ref] = _hash(render_plan(Plan(services=(s,))))
    return out


# ---------------------------------------------------------------- plan -> Feast
def feast_type(t: str):
    """The Feast type of a DSL type (`list<float32>` is Array(Float32))."""
    from feast import types

    if t.startswith("list<"):
        return types.Array(feast_type(t[5:-1]))
    return {"string": types.String, "int64": types.Int64, "float64": types.Float64,
            "bool": types.Bool, "timestamp": types.UnixTimestamp, "float32": types.Float32,
            "int32": types.Int32}[t]


def _value_type(t: str):
    from feast import ValueType

    return {"string": ValueType.STRING, "int64": ValueType.INT64}[t]


def _tags(d, kind: str, fp: str, **extra: str) -> dict[str, str]:
    return {**dict(d.tags), **extra, FINGERPRINT_TAG: fp, OBJECT_TAG: f"{kind}:{d.name}"}


def entity_names(e: Entity) -> list[str]:
    """The Feast entity names of an entity, one per key."""
    return [e.name] if len(e.keys) == 1 else [f"{e.name}.{k}" for k, _ in e.keys]


def _entities(e: Entity, fp: str) -> list:
    from feast import Entity as FeastEntity

    return [FeastEntity(name=name, join_keys=[key], value_type=_value_type(type_),
                        description=e.description, owner=e.owner,
                        tags=_tags(e, "entity", fp, **{"featurestore.key": key}))
            for name, (key, type_) in zip(entity_names(e), e.keys)]


def _file_source(s: Source, root: Path, fp: str, name: str, **extra: str):
    from feast import FileSource
    from feast.data_format import ParquetFormat

    path = s.path
    if s.format in ("table", "query"):
        extra[f"featurestore.{s.format}"] = s.path
        path = dict(s.options).get("database", "")
    if path and not Path(path).is_absolute():
        path = str(root / path)
    return FileSource(name=name, path=path, timestamp_field=s.timestamp,
                      file_format=ParquetFormat() if s.format == "parquet" else None,
                      description=s.description, owner=s.owner,
                      tags=_tags(s, "source", fp, **{"featurestore.format": s.format}, **extra))


def _sources(s: Source, root: Path, fp: str) -> list:
    """The Feast data sources of a source: one, or a stream and its batch stand-in."""
    from feast import KafkaSource, PushSource
    from feast.data_format import JsonFormat

    if s.kind == "batch":
        return [_file_source(s, root, fp, s.name)]
    # The stand-in reads the folder of a files stream; other streams have none.
    folder = s.path if s.format == "files" else ""
    batch = _file_source(replace(s, path=folder), root, fp, f"{s.name}.batch",
                         **{"featurestore.batch_side_of": s.name})
    options = {f"featurestore.option.{k}": v for k, v in s.options}
    tags = _tags(s, "source", fp, **{"featurestore.format": s.format}, **options)
    if s.lateness_us is not None:
        tags["featurestore.lateness"] = format_duration(s.lateness_us) if s.lateness_us else "0s"
    if s.format == "kafka":
        opts = dict(s.options)
        lateness = timedelta(microseconds=s.lateness_us) if s.lateness_us else None
        stream = KafkaSource(name=s.name, timestamp_field=s.timestamp,
                             message_format=JsonFormat(schema_json=""), topic=s.path,
                             kafka_bootstrap_servers=opts["servers"], batch_source=batch,
                             watermark_delay_threshold=lateness, description=s.description,
                             owner=s.owner, tags=tags)
    else:
        stream = PushSource(name=s.name, batch_source=batch, description=s.description,
                            owner=s.owner, tags=tags)
    return [stream, batch]


def _feature_tags(v: View, name: str) -> dict[str, str]:
    """What a reader of the registry needs to know about a feature's values."""
    tags = {"featurestore.type": v.feature_type(name)}
    for a in v.aggregations:
        if a.name == name:
            tags["featurestore.function"] = a.function
            tags["featurestore.window"] = format_duration(a.window_us) if a.window_us else "ttl"
    return tags


def _view(v: View, entities: list, source, stream: bool, fp: str):
    from feast import FeatureView, Field
    from feast.stream_feature_view import StreamFeatureView

    schema = [Field(name=k, dtype=feast_type(t)) for k, t in v.keys]
    schema += [Field(name=n, dtype=feast_type(v.feature_type(n)), tags=_feature_tags(v, n))
               for n in v.feature_names]
    ttl = timedelta(microseconds=v.ttl_us) if v.ttl_us else timedelta(0)
    meaning = {"featurestore.tile": format_duration(v.tile_us)}
    if v.filter is not None:   # the rows the view reads: `from purchases where amount > 0`
        meaning["featurestore.filter"] = render_expr(v.filter)
    tags = _tags(v, "view", fp, **meaning)
    common = dict(name=v.name, entities=entities, ttl=ttl, schema=schema, source=source,
                  online=True, description=v.description, owner=v.owner, tags=tags)
    if not stream:
        return FeatureView(**common)
    return StreamFeatureView(**common, timestamp_field=source.timestamp_field)


def _service(s: Service, views: dict, fp: str):
    from feast import FeatureService

    by_view: dict[str, list[str]] = {}
    for view, feature in s.features:
        by_view.setdefault(view, []).append(feature)
    tags = {**dict(s.tags), FINGERPRINT_TAG: fp, OBJECT_TAG: f"service:{s.ref}"}
    if s.version is not None:
        tags["featurestore.version"] = str(s.version)
    return FeatureService(name=s.ref, features=[views[v][fs] for v, fs in by_view.items()],
                          description=s.description, owner=s.owner, tags=tags)


def _quiet_feast() -> None:
    """Feast warns that stream feature views are experimental each time it
    makes or copies one (projections, registry reads). Feast's imports reset
    warning filters, so this runs after them."""
    import feast  # noqa: F401

    warnings.filterwarnings("ignore", "Stream feature views are experimental", RuntimeWarning)


def feast_objects(plan: Plan, root: Path) -> dict[tuple[str, str], object]:
    """(kind, Feast name) -> Feast object, for every object the plan needs."""
    _quiet_feast()
    fps = fingerprints(plan)
    objs: dict[tuple[str, str], object] = {}
    entities = {e.name: _entities(e, fps["entity", e.name]) for e in plan.entities}
    sources = {s.name: _sources(s, root, fps["source", s.name]) for s in plan.sources}
    kinds = {s.name: s.kind for s in plan.sources}
    views = {v.name: _view(v, entities[v.entity], sources[v.source][0],
                           kinds[v.source] == "stream", fps["view", v.name])
             for v in plan.views}
    services = {s.ref: _service(s, views, fps["service", s.ref]) for s in plan.services}
    for kind, group in (("entity", entities), ("source", sources)):
        objs.update({(kind, o.name): o for parts in group.values() for o in parts})
    objs.update({("view", n): o for n, o in views.items()})
    objs.update({("service", n): o for n, o in services.items()})
    return objs


# ---------------------------------------------------------------- the registry
def write_feast_config(cfg: RepoConfig) -> Path:
    """A feature_store.yaml for Feast's own tools and SDK: our registry (a path
    relative to it, so the repo can move), and our store classes
    (`featurestore.feast_online_store`) over the repo's Redis, so that
    `FeatureStore(...).get_online_features` returns what the server serves."""
    import os

    from featurestore import feast_online_store

    cfg.feast_dir.mkdir(parents=True, exist_ok=True)
    registry = os.path.relpath(cfg.registry.resolve(), cfg.feast_dir.resolve())
    repo = os.path.relpath(cfg.root.resolve(), cfg.feast_dir.resolve())
    (cfg.feast_dir / "feature_store.yaml").write_text(
        "# written by `featurestore apply`: Feast's tools and SDK over this repo\n"
        f"project: {cfg.project}\n"
        f"registry: {registry}\n"
        "provider: local\n"
        "online_store:\n"
        f"  type: {feast_online_store.CLASS}\n"
        f"  repo: {repo}   # its Redis: online_store.url, FEATURESTORE_REDIS_URL or the private one\n"
        "offline_store:\n"
        f"  type: {feast_online_store.OFFLINE_CLASS}   # training sets: featurestore export\n"
        "entity_key_serialization_version: 3\n")
    return cfg.feast_dir


def open_store(cfg: RepoConfig):
    import logging

    from feast import FeatureStore

    logging.getLogger("feast").setLevel(logging.WARNING)
    _quiet_feast()
    cfg.registry.parent.mkdir(parents=True, exist_ok=True)
    return FeatureStore(repo_path=str(write_feast_config(cfg)))


def registered(store) -> dict[tuple[str, str], object]:
    """(kind, Feast name) -> object for what the registry holds in this project."""
    out: dict[tuple[str, str], object] = {}
    listings = (("entity", store.list_entities), ("source", store.list_data_sources),
                ("view", store.list_feature_views), ("view", store.list_stream_feature_views),
                ("service", store.list_feature_services))
    for kind, lister in listings:
        for obj in lister():
            if kind == "entity" and obj.name == "__dummy":
                continue
            out[kind, obj.name] = obj
    return out


def _definitions(objs: dict[tuple[str, str], object]) -> dict[tuple[str, str], str | None]:
    """(kind, definition name) -> fingerprint, read off Feast objects' tags;
    an object without our tags stands for itself."""
    out: dict[tuple[str, str], str | None] = {}
    for (kind, name), obj in objs.items():
        tags = obj.tags or {}
        if "featurestore.batch_side_of" in tags:
            continue
        defined = tags.get(OBJECT_TAG, f"{kind}:{name}").split(":", 1)[1]
        out[kind, defined] = tags.get(FINGERPRINT_TAG)
    return out


def diff(plan: Plan, store) -> Changes:
    """What applying `plan` would change in the registry, with warnings."""
    want = fingerprints(plan)
    held = registered(store)
    have = _definitions(held)
    order = {k: i for i, k in enumerate(KINDS)}
    key = lambda kn: (order[kn[0]], kn[1])  # noqa: E731
    return Changes(
        create=sorted((k for k in want if k not in have), key=key),
        update=sorted((k for k in want if k in have and have[k] != want[k]), key=key),
        delete=sorted((k for k in have if k not in want), key=key),
        warnings=breaking_changes(plan, held),
    )


# ---------------------------------------------------------------- breaking changes
def breaking_changes(plan: Plan, held: dict[tuple[str, str], object]) -> list[str]:
    """Changes that break a reader: a feature whose type, function or window
    changes (models trained on the old values), and a feature a registered
    service serves that it will no longer serve (clients asking for it)."""
    warnings: list[str] = []
    views = {v.name: v for v in plan.views}
    for (kind, name), obj in sorted(held.items()):
        if kind == "view" and name in views:
            warnings += _changed_features(views[name], obj)
    services = {s.ref: set(s.features) for s in plan.services}
    for (kind, name), obj in sorted(held.items()):
        if kind == "service":
            warnings += _lost_features(name, obj, services.get(name), views)
    return warnings


def _changed_features(view: View, obj) -> list[str]:
    out = []
    for f in obj.features:
        old = f.tags or {}
        if f.name not in view.feature_names or "featurestore.type" not in old:
            continue
        new = _feature_tags(view, f.name)
        ref = f"{view.name}.{f.name}"
        if old["featurestore.type"] != new["featurestore.type"]:
            out.append(f"breaking: {ref} changes type from {old['featurestore.type']} to "
                       f"{new['featurestore.type']}")
        for what in ("function", "window"):
            was, now = old.get(f"featurestore.{what}"), new.get(f"featurestore.{what}")
            if was != now:
                out.append(f"breaking: {ref} changes {what} from {was or 'none (row-level)'} "
                           f"to {now or 'none (row-level)'}; stored values and trained models "
                           "no longer match")
    return out


def _lost_features(service: str, obj, now: set | None, views: dict[str, View]) -> list[str]:
    out = []
    for projection in obj.feature_view_projections:
        for f in projection.features:
            ref = (projection.name, f.name)
            if now is not None and ref in now:
                continue
            view = views.get(ref[0])
            why = ("the service is deleted" if now is None
                   else f"view {ref[0]} is deleted" if view is None
                   else f"{ref[0]}.{ref[1]} is removed" if ref[1] not in view.feature_names
                   else "it is no longer listed")
            out.append(f"breaking: service {service} serves {ref[0]}.{ref[1]}, but {why}; "
                       "clients that ask for it will fail (publish a new version instead: "
                       f"`service {_next_version(service)}`)")
    return out


def _next_version(ref: str) -> str:
    """`fraud` -> `fraud v2`, `fraud:v2` -> `fraud v3`."""
    name, _, version = ref.partition(":v")
    return f"{name} v{int(version) + 1 if version.isdigit() else 2}"


def apply(plan: Plan, cfg: RepoConfig, store=None) -> Changes:
    """Write the plan's objects to the Feast registry; delete what it no longer has."""
    store = store or open_store(cfg)
    changes = diff(plan, store)
    if changes.empty:
        return changes
    objs = feast_objects(plan, cfg.root)
    have = registered(store)
    stale = [o for k, o in have.items()
             if k not in objs or type(o) is not type(objs[k])]
    store.apply(list(objs.values()), objects_to_delete=stale, partial=False)
    return changes


# ---------------------------------------------------------------- artifacts
_PLURAL = {"entity": "entities", "source": "sources", "view": "views", "service": "services"}


def artifacts(plan: Plan, project: str) -> dict[str, str]:
    """feast/<kind>.yaml: the Feast objects `apply` registers, as their
    protos say them (Feast's field and enum names), minus the registry's
    timestamps; paths of file sources relative to the repo."""
    import yaml
    from google.protobuf import json_format

    docs: dict[str, list] = {kind: [] for kind in KINDS}
    views = {v.name: v for v in plan.views}
    for (kind, name), obj in sorted(feast_objects(plan, Path("")).items()):
        proto = obj.to_proto()
        message = proto.spec if hasattr(proto, "spec") else proto
        doc = _without_meta(json_format.MessageToDict(message, preserving_proto_field_name=True))
        if kind == "view":
            _in_plan_order(doc, views[name])
        docs[kind].append({"type": type(obj).__name__, **doc})
    # libyaml's emitter writes the same text as PyYAML's, ten times faster.
    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    return {f"feast/{_PLURAL[kind]}.yaml":
            yaml.dump(items, Dumper=dumper, sort_keys=False, allow_unicode=True, width=100)
            for kind, items in docs.items()}


def _in_plan_order(doc: dict, view: View) -> None:
    """Columns in the view's order: Feast keeps a stream view's in a set."""
    order = {n: i for i, n in enumerate((*(k for k, _ in view.keys), *view.feature_names))}
    for key in ("features", "entity_columns"):
        if key in doc:
            doc[key].sort(key=lambda f: order.get(f["name"], len(order)))


def _without_meta(doc):
    """The document without `meta` (creation times), maps (tags) sorted by
    key: the same plan compiles to the same bytes."""
    if isinstance(doc, dict):
        return {k: (dict(sorted(v.items())) if k == "tags" else _without_meta(v))
                for k, v in doc.items() if k != "meta"}
    if isinstance(doc, list):
        return [_without_meta(v) for v in doc]
    return doc
