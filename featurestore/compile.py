"""Compiled artifacts: what every backend makes of a plan, as readable files.

`featurestore compile` writes them so that a change to the definitions can be
reviewed as a diff of what each engine will run:

    plan.txt              the logical plan
    duckdb/<view>.sql     the batch queries of each view, with $start_us and
                          $end_us as DuckDB parameters (epoch microseconds)
    feast/<kind>.yaml     the Feast objects `apply` registers, in Feast's own
                          field names (enum names, never numbers)
    redis/layout.txt      key patterns and value shapes of each view
    flink/...             the streaming job, when the streaming engine is installed

Output is deterministic: the same definitions give the same bytes, with no
paths or times of the machine that compiled them. Everything here is pure;
`write` is the only function that touches the disk.
"""
from __future__ import annotations

import re
import shutil
from pathlib import Path

from dsl.plan import Aggregation, Plan, View, format_duration
from featurestore import layout, tiles, windows
from featurestore.backends import duckdb_sql

MARKER = ".featurestore-compile"   # marks a folder as ours to clear and rewrite
# The function of `streaming.flink_sql` that renders a plan: plan -> {file name: text}.
FLINK_HOOK = "artifacts"
# Relative paths keep the artifacts free of the compiling machine's folders.
_ROOT = Path("")


def artifacts(plan: Plan, project: str) -> dict[str, str]:
    """Relative path -> text of every artifact of `plan`."""
    out = {"plan.txt": plan.render()}
    for view in plan.views:
        out[f"duckdb/{view.name}.sql"] = duckdb_view_sql(plan, view)
    out.update(feast_yaml(plan))
    out["redis/layout.txt"] = redis_layout(plan, project)
    out.update({f"flink/{name}": text for name, text in flink_artifacts(plan).items()})
    return out


def write(files: dict[str, str], out: Path) -> None:
    """Replace the contents of `out` with `files`. A folder that holds other
    things and was not written by `write` is refused, not cleared."""
    if out.exists() and any(out.iterdir()) and not (out / MARKER).exists():
        raise FileExistsError(f"{out} is not empty and was not written by `featurestore compile`")
    if out.exists():
        shutil.rmtree(out)
    for rel, text in {MARKER: "", **files}.items():
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


# ---------------------------------------------------------------- DuckDB
def duckdb_view_sql(plan: Plan, view: View) -> str:
    """The queries that materialize a view, each introduced by a comment."""
    source = plan.source(view.source)
    parts = [f"-- view {view.name}: the queries `featurestore materialize` runs\n"
             "-- parameters: $start_us, $end_us (epoch microseconds, UTC)\n"]
    try:
        attach = duckdb_sql.attach_sql(source, _ROOT)
        if attach:
            parts.append(f"-- first, the source's database\n{attach};\n")
        if view.aggregations:
            sql = duckdb_sql.tiles_sql(view, source, _ROOT, "$end_us", "$start_us")
            parts.append(f"-- tiles: one row per entity and tile, one state per aggregation\n"
                         f"{layout_sql(sql)};\n")
        if view.row_features:
            sql = duckdb_sql.latest_rows_sql(view, source, _ROOT, "$end_us", None)
            parts.append(f"-- latest row of each entity\n{layout_sql(sql)};\n")
    except duckdb_sql.Unsupported as e:
        parts.append(f"-- not computed by DuckDB: {e}\n")
    return "\n".join(parts)


# Quoted text, a parenthesis, or a clause keyword.
_SQL_TOKEN = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|\(|\)"
                        r"| (FROM|WHERE|GROUP BY|ORDER BY|QUALIFY) ")


def layout_sql(sql: str) -> str:
    """One clause per line, indented by nesting of subqueries; only whitespace
    outside string literals changes, so the query stays the same query.
    Clauses inside other parentheses (OVER, FILTER, function calls) stay put."""
    out, last = [], 0
    parens: list[bool] = []  # per open '(': is it a subquery, whose clauses break?
    for m in _SQL_TOKEN.finditer(sql):
        token = m.group(0)
        if token.endswith("("):
            parens.append(sql.startswith("SELECT ", m.end()))
        elif token == ")" and parens:
            parens.pop()
        elif m.group(1) and all(parens):
            out.append(sql[last:m.start()] + "\n" + "  " * len(parens) + m.group(1) + " ")
            last = m.end()
    return "".join(out) + sql[last:]


# ---------------------------------------------------------------- Feast
def feast_yaml(plan: Plan) -> dict[str, str]:
    """feast/<kind>.yaml: the Feast objects of the plan as their protos say
    them, minus the registry's timestamps."""
    import yaml
    from google.protobuf import json_format

    from featurestore.backends import feast_registry

    docs: dict[str, list] = {kind: [] for kind in feast_registry.KINDS}
    views = {v.name: v for v in plan.views}
    for (kind, name), obj in sorted(feast_registry.feast_objects(plan, _ROOT).items()):
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


_PLURAL = {"entity": "entities", "source": "sources", "view": "views", "service": "services"}


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


# ---------------------------------------------------------------- Redis
def redis_layout(plan: Plan, project: str) -> str:
    """Key patterns and value shapes of every view, from `featurestore.layout`."""
    lines = [f"Redis layout version {layout.LAYOUT_VERSION}, project {project}", ""]
    for v in plan.views:
        entity_key = "{" + "|".join(f"<{k}>" for k, _ in v.keys) + "}"
        # The placeholder goes in as the encoded key, so it is not escaped.
        args = (project, v.name, v.fingerprint(), entity_key[1:-1])
        keys = ", ".join(f"{k}: {t}" for k, t in v.keys)
        lines.append(f"view {v.name} (entity {v.entity} [{keys}], tile "
                     f"{format_duration(v.tile_us)}, fingerprint {v.fingerprint()})")
        if v.row_features:
            values = ", ".join(f"{f.name}: {f.type}" for f in v.row_features)
            lines += [f"  {layout.row_key(*args).decode()}",
                      f"    latest row, JSON [event_ts_us, {values}]"]
        if v.aggregations:
            slots = v.state_slots()
            states = ", ".join(
                "/".join(a.name for a, s in zip(v.aggregations, slots) if s == slot)
                + f": {_state(v.aggregations[k])}" for slot, k in enumerate(v.state_owners()))
            sizes = windows.levels(v)
            lines += [f"  {layout.tiles_key(*args).decode()}",
                      f"    hash: tile start (epoch µs) -> JSON [{states}]"]
            if len(sizes) > 1:
                lines.append(f"    and rollups of {', '.join(map(format_duration, sizes[1:]))}: "
                             "'<size µs>:<start µs>' -> the same JSON, merged")
        lines.append("")
    return "\n".join(lines)


def _state(a: Aggregation) -> str:
    """`sum [h, l, n_out]`: the function and its state's columns, as
    `featurestore.tiles` defines them."""
    try:
        state = tiles.aggregation(a.function, a.arg.type if a.arg is not None else None)
    except ValueError:
        return f"{a.function} (no tile state)"
    names = [c.name for c in state.columns]
    return f"{a.function} {names[0] if state.bare else '[' + ', '.join(names) + ']'}"


# ---------------------------------------------------------------- Flink
def flink_artifacts(plan: Plan) -> dict[str, str]:
    """The streaming engine's files for the plan: {} until `streaming.flink_sql`
    exists and offers FLINK_HOOK(plan) -> {file name: text}."""
    try:
        from streaming import flink_sql
    except ImportError:
        return {}
    hook = getattr(flink_sql, FLINK_HOOK, None)
    return dict(sorted(hook(plan).items())) if hook is not None else {}
