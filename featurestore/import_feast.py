"""`featurestore import-feast FEAST_REPO [--out DIR]`: a feature repo from a
Feast repo's registry (after `feast apply`).

What maps (README "Coming from Feast"):

    Entity                      entity (its join key; the key type as the views declare it)
    FileSource (parquet)        source ... batch parquet, the schema gathered from the
                                views over it, paths relative to the new repo
    FeatureView                 view with one row-level feature per field, its ttl
    FeatureView over a PushSource   the same, over the push source's batch source
                                (featurestore push / a stream source keep it fresh)
    FeatureService              service with the features that map

What does not (listed in the report with the reason): on-demand feature
views, request sources, fields of types featurestore does not hold (Map,
Struct; Json is read as its text), stream feature views with Feast-side
transformations, sources other than Parquet files, label views; Feast's
online and offline store settings (featurestore reads Redis, DuckDB).
Feast itself is imported here only: the rest of featurestore never needs it.
"""
from __future__ import annotations

import json
import os
import re
import warnings
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from dsl.plan import format_duration
from featurestore.errors import UserError

_TYPES = {"Int64": "int64", "Int32": "int64", "Float64": "float64", "Float32": "float64",
          "String": "string", "Bool": "bool", "UnixTimestamp": "timestamp", "Json": "string"}
_LISTS = {"Float32": "float32", "Float64": "float64", "Int64": "int64", "Int32": "int32",
          "String": "string", "Bool": "bool"}
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass
class Report:
    out: Path
    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)   # "what: why"
    notes: list[str] = field(default_factory=list)

    def render(self) -> str:
        lines = [f"wrote {', '.join(self.written)} in {self.out}"]
        lines += [f"  note: {n}" for n in self.notes]
        if self.skipped:
            lines.append("not imported (no equivalent in featurestore):")
            lines += [f"  - {s}" for s in self.skipped]
        lines.append(f"next: cd {self.out} && featurestore check --data && featurestore apply "
                     "&& featurestore materialize")
        return "\n".join(lines)


def _type(dtype) -> str | None:
    text = str(dtype)
    if text in _TYPES:
        return _TYPES[text]
    m = re.fullmatch(r"Array\((\w+)\)", text)
    if m and m.group(1) in _LISTS:
        return f"list<{_LISTS[m.group(1)]}>"
    return None


def _string(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def _duration(td: timedelta | None) -> str | None:
    if not td:
        return None
    return format_duration(int(td.total_seconds() * 1_000_000))


def import_feast(feast_repo: Path, out: Path | None = None) -> Report:
    """Write a feature repo equivalent to the Feast repo at `feast_repo`
    into `out` (default: `<feast_repo>_featurestore` beside it)."""
    feast_repo = Path(feast_repo).resolve()
    if not (feast_repo / "feature_store.yaml").is_file():
        raise UserError(f"{feast_repo} is not a Feast repo: feature_store.yaml is missing")
    out = (Path(out) if out else feast_repo.with_name(feast_repo.name + "_featurestore")).resolve()
    if (out / "featurestore.yaml").exists():
        raise UserError(f"{out} already holds a feature repo; choose another --out folder")
    import logging

    from feast import FeatureStore
    from feast.data_source import PushSource
    from feast.infra.offline_stores.file_source import FileSource

    logging.getLogger("feast").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        store = FeatureStore(repo_path=str(feast_repo))
        entities = store.list_entities()
        views = store.list_feature_views()
        stream_views = store.list_stream_feature_views()
        on_demand = store.list_on_demand_feature_views()
        services = store.list_feature_services()
        project = store.project
    report = Report(out)
    if not _NAME.fullmatch(project):
        raise UserError(f"Feast project {project!r} is not a featurestore name "
                        "(letters, digits and '_')")
    for v in on_demand:
        report.skipped.append(f"on-demand feature view {v.name!r}: featurestore computes "
                              "features from sources, not at request time")
    for v in stream_views:
        report.skipped.append(f"stream feature view {v.name!r}: its Feast-side transformation "
                              "has no equivalent; declare a `stream` source and a view over it")
    for setting, what in ((store.config.online_store, "online store"),
                          (store.config.offline_store, "offline store")):
        kind = getattr(setting, "type", None)
        if kind and kind not in ("redis", "file", "dask", "duckdb"):
            report.skipped.append(f"{what} type {kind!r}: featurestore reads Redis and "
                                  "computes with DuckDB")

    key_types: dict[str, str] = {}     # join key -> type, from the views' entity columns
    sources: dict[str, dict] = {}      # source name -> {path, timestamp, columns}
    view_blocks, imported = [], {}     # view name -> its features
    for v in views:
        batch = v.batch_source
        push = v.stream_source if isinstance(v.stream_source, PushSource) else None
        if not isinstance(batch, FileSource) or not str(batch.path).endswith(".parquet"):
            report.skipped.append(f"feature view {v.name!r}: its source {batch.name!r} is not a "
                                  "Parquet file source")
            continue
        if len(v.entity_columns) != 1 or len(v.entities) != 1:
            report.skipped.append(f"feature view {v.name!r}: featurestore views have one entity")
            continue
        key = v.entity_columns[0]
        key_type = _type(key.dtype)
        if key_type not in ("int64", "string"):
            report.skipped.append(f"feature view {v.name!r}: its key {key.name!r} is "
                                  f"{key.dtype}; keys are strings or integers")
            continue
        key_types[v.entities[0]] = (key.name, key_type)
        src = sources.setdefault(batch.name, {
            "path": _relative(feast_repo, batch.path, out), "timestamp": batch.timestamp_field,
            "columns": {key.name: key_type, batch.timestamp_field: "timestamp"}})
        src["columns"].setdefault(key.name, key_type)
        features = []
        for f in v.features:
            t = _type(f.dtype)
            if t is None:
                report.skipped.append(f"feature {v.name}:{f.name}: type {f.dtype} has no "
                                      "featurestore equivalent")
                continue
            src["columns"].setdefault(f.name, t)
            features.append(f.name)
        if not features:
            report.skipped.append(f"feature view {v.name!r}: no feature of a type featurestore "
                                  "holds")
            continue
        if push is not None:
            report.notes.append(f"view {v.name} reads {batch.name} (the batch source of push "
                                f"source {push.name}); pushed events: `featurestore push` to a "
                                "`stream files` source keeps it fresh")
        imported[v.name] = features
        lines = [f"view {v.name} {{", f"    entity {v.entities[0]}",
                 f"    from {_ident(batch.name)}"]
        ttl = _duration(v.ttl)
        if ttl:
            lines.append(f"    ttl {ttl}")
        if v.description:
            lines.append(f"    description {_string(v.description)}")
        if v.owner:
            lines.append(f"    owner {_string(v.owner)}")
        width = max(len(n) for n in features)
        lines.append("    features {")
        lines += [f"        {n.ljust(width)} = {n}" for n in features]
        lines += ["    }", "}"]
        view_blocks.append("\n".join(lines))

    entity_blocks = []
    for e in entities:
        if e.name not in key_types:
            report.skipped.append(f"entity {e.name!r}: no imported view uses it")
            continue
        key, key_type = key_types[e.name]
        lines = [f"entity {e.name} {{", f"    key {key}: {key_type}"]
        if e.description:
            lines.append(f"    description {_string(e.description)}")
        entity_blocks.append("\n".join(lines + ["}"]))
    source_blocks = []
    for name, src in sources.items():
        columns = ", ".join(f"{c}: {t}" for c, t in src["columns"].items())
        source_blocks.append("\n".join([
            f"source {_ident(name)} {{", f"    batch parquet {_string(src['path'])}",
            f"    timestamp {src['timestamp']}", f"    schema {{ {columns} }}", "}"]))
    service_blocks = []
    for s in services:
        refs, lost = [], []
        for p in s.feature_view_projections:
            for f in p.features:
                (refs if f.name in imported.get(p.name, ()) else lost).append(
                    f"{p.name}.{f.name}")
        if lost and refs:
            report.skipped.append(f"from service {s.name!r}: {', '.join(lost)} (above)")
        if not refs:
            report.skipped.append(f"feature service {s.name!r}: none of its features maps")
            continue
        service_blocks.append(f"service {s.name} {{ {', '.join(refs)} }}")

    (out / "features").mkdir(parents=True, exist_ok=True)
    header = (f"# Imported from the Feast repo {feast_repo} by `featurestore import-feast`.\n"
              "# Row-level features keep their Feast names; add windows with `agg(x) over W`.\n")
    feat = header + "\n\n".join(entity_blocks + source_blocks + view_blocks + service_blocks) + "\n"
    (out / "features" / f"{project}.feat").write_text(feat)
    (out / "featurestore.yaml").write_text(
        f"# Imported from the Feast repo {feast_repo}.\n"
        f"project: {project}\n"
        "online_store:\n"
        "  # Redis that serving reads from; unset: a private redis-server for this repo.\n"
        "  # url: redis://localhost:6379/0\n")
    report.written = [f"features/{project}.feat", "featurestore.yaml"]
    return report


def _ident(name: str) -> str:
    """A Feast name as a featurestore name (letters, digits and '_')."""
    ident = re.sub(r"[^A-Za-z0-9_]", "_", name)
    return ident if _NAME.fullmatch(ident) else f"_{ident}"


def _relative(feast_repo: Path, path: str, out: Path) -> str:
    """A source path, as the new repo reads it (relative to it when it can)."""
    if "://" in path:
        return path
    absolute = Path(path) if Path(path).is_absolute() else feast_repo / path
    return os.path.relpath(absolute, out)
