"""Compiled artifacts: what every backend makes of a plan, as readable files.

`featurestore compile` writes them so that a change to the definitions can be
reviewed as a diff of what each engine will run:

    plan.txt              the logical plan
    duckdb/<view>.sql     the batch queries of each view (backends.duckdb_sql)
    feast/<kind>.yaml     the Feast objects `apply` registers (backends.feast_registry)
    redis/layout.txt      key patterns and value shapes of each view
                          (backends.serving_manifest)
    flink/job.sql         the streaming job, when a view reads a stream
                          (streaming.flink_sql)

Each backend module offers `artifacts(plan, project) -> {relative path:
text or bytes}`; a new backend adds itself to BACKENDS. Output is
deterministic: the same definitions give the same bytes, with no paths or
times of the machine that compiled them. Everything here is pure; `write` is
the only function that touches the disk.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable, Mapping

from dsl.plan import Plan
from featurestore.backends import duckdb_sql, feast_registry, serving_manifest
from streaming import flink_sql

MARKER = ".featurestore-compile"   # marks a folder as ours to clear and rewrite

Artifacts = dict[str, str | bytes]
# The backends, in the order their files are listed.
BACKENDS: tuple[Callable[[Plan, str], Mapping[str, str | bytes]], ...] = (
    duckdb_sql.artifacts, feast_registry.artifacts, serving_manifest.artifacts,
    flink_sql.artifacts)


def artifacts(plan: Plan, project: str) -> Artifacts:
    """Relative path -> content of every artifact of `plan`."""
    out: Artifacts = {"plan.txt": plan.render()}
    for backend in BACKENDS:
        files = backend(plan, project)
        clash = sorted(out.keys() & files.keys())
        if clash:
            raise ValueError(f"{backend.__module__} rewrites {', '.join(clash)}")
        out.update(files)
    return out


def write(files: Artifacts, out: Path) -> None:
    """Replace the contents of `out` with `files`. A folder that holds other
    things and was not written by `write` is refused, not cleared."""
    if out.exists() and any(out.iterdir()) and not (out / MARKER).exists():
        raise FileExistsError(f"{out} is not empty and was not written by `featurestore compile`")
    if out.exists():
        shutil.rmtree(out)
    for rel, content in {MARKER: "", **files}.items():
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
