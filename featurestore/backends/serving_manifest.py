"""Serving backend: the plan as the manifest the gRPC server loads."""
from __future__ import annotations

from dsl.plan import Plan
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
