"""Serving backend: the plan as the server sees it, the manifest it loads
and the Redis layout it reads (`featurestore.layout`)."""
from __future__ import annotations

from dsl.plan import Aggregation, Plan, format_duration
from featurestore import layout, tiles, windows
from featurestore.backends import duckdb_sql
from featurestore.backends.sql_dialect import Unsupported
from featurestore.manifest import FeatureSpec, Manifest, ViewSpec


def manifest_from_plan(plan: Plan, project: str) -> Manifest:
    views = {}
    for v in plan.views:
        rows = tuple(FeatureSpec(f.name, f.type, None, None) for f in v.row_features)
        aggs = tuple(FeatureSpec(a.name, a.type, a.function, a.window_us,
                                 a.arg.type if a.arg is not None else None, slot)
                     for a, slot in zip(v.aggregations, v.state_slots()))
        views[v.name] = ViewSpec(v.name, v.entity, v.keys, v.fingerprint(), v.tile_us, v.ttl_us,
                                 rows, aggs)
    services = {s.ref: s.features for s in plan.services}  # `fraud`, or `fraud:v2`
    return Manifest(project, views, services)


# ---------------------------------------------------------------- artifacts
def artifacts(plan: Plan, project: str) -> dict[str, str]:
    """redis/layout.txt: the key patterns and value shapes of every view."""
    return {"redis/layout.txt": redis_layout(plan, project)}


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
            codec = _codec(v)
            form = (f"binary, {len(codec.words)} words ({' '.join(codec.words)}; JSON beyond "
                    "64 bits)" if codec is not None and codec.fixed else "JSON")
            lines += [f"  {layout.tiles_key(*args).decode()}",
                      f"    hash: tile start (epoch µs) -> {form} [{states}]"]
            if len(sizes) > 1:
                lines.append(f"    and rollups of {', '.join(map(format_duration, sizes[1:]))}: "
                             "'<size µs>:<start µs>' -> the same, merged")
        lines.append("")
    return "\n".join(lines)


def _codec(v) -> layout.TileCodec | None:
    """The view's tile codec; None when an aggregation has no tile state."""
    try:
        return duckdb_sql.tile_codec(v)
    except Unsupported:
        return None


def _state(a: Aggregation) -> str:
    """`sum [h, l, n_out]`: the function and its state's columns, as
    `featurestore.tiles` defines them."""
    try:
        state = tiles.aggregation(a.function, a.arg.type if a.arg is not None else None)
    except ValueError:
        return f"{a.function} (no tile state)"
    names = [c.name for c in state.columns]
    return f"{a.function} {names[0] if state.bare else '[' + ', '.join(names) + ']'}"
