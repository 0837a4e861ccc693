"""Operations on a feature repo: compile, apply, materialize, and the Redis it uses.

The CLI is a thin shell over these; tests and the quickstart call them too.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from featurestore import redis_client, redis_local
from featurestore.config import RepoConfig
from featurestore.errors import DefinitionError, ServiceError, UserError

Say = Callable[[str], None]
TEMPLATE = Path(__file__).parent / "templates" / "repo"


@dataclass
class Compiled:
    plan: object              # dsl.plan.Plan, or None when there are errors
    report: str               # rendered diagnostics
    errors: int
    warnings: int


def compile_repo(cfg: RepoConfig) -> Compiled:
    import dsl

    result = dsl.compile_repo(cfg.root)
    errors = sum(1 for d in result.diagnostics if d.severity == "error")
    report = "\n".join(str(d) for d in result.diagnostics)
    return Compiled(result.plan, report, errors, len(result.diagnostics) - errors)


def require_plan(cfg: RepoConfig):
    """The repo's plan, or a DefinitionError holding every diagnostic."""
    c = compile_repo(cfg)
    if c.errors:
        raise DefinitionError(f"{c.report}\n{c.errors} error(s) in the feature definitions")
    if not c.plan.views:
        raise UserError(f"no views are defined under {cfg.root / 'features'}")
    return c.plan


def init(dir: Path, say: Say) -> Path:
    """Scaffold a feature repo in `dir` (which must not hold one already)."""
    if (dir / "featurestore.yaml").exists():
        raise UserError(f"{dir} already holds a feature repo (featurestore.yaml exists)")
    dir.mkdir(parents=True, exist_ok=True)
    shutil.copytree(TEMPLATE, dir, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("__pycache__"))
    say(f"created a feature repo in {dir}:\n"
        "  featurestore.yaml    settings (project, registry, Redis, serving)\n"
        "  features/shop.feat   example feature definitions\n"
        "  generate_data.py     writes the example data to data/\n"
        f"next: cd {dir} && python generate_data.py && featurestore apply && "
        "featurestore materialize")
    return dir


def apply(cfg: RepoConfig, plan, say: Say, dry_run: bool = False):
    """Write the plan to the Feast registry and the serving manifest."""
    from featurestore.backends import feast_registry
    from featurestore.backends.serving_manifest import manifest_from_plan

    store = feast_registry.open_store(cfg)
    if dry_run:
        return feast_registry.diff(plan, store)
    changes = feast_registry.apply(plan, cfg, store)
    manifest_from_plan(plan, cfg.project).succeeding(load_manifest(cfg)).save(cfg.manifest_path)
    return changes


def unwritten(cfg: RepoConfig, plan) -> list[str]:
    """One line per view whose applied definition Redis does not hold yet:
    what writes it, roughly what that reads, and what serves meanwhile."""
    store = _configured_or_running(cfg)
    held = _written(cfg, plan, store) if store else {}
    if held is None:
        return [f"(Redis at {store} did not answer: cannot tell which views it holds)"]
    previous = load_manifest(cfg)
    sources = {s.name: s for s in plan.sources}
    lines = []
    for v in plan.views:
        if held.get(v.name):
            continue
        source = sources[v.source]
        earlier = previous is not None and any(
            old.fingerprint != v.fingerprint() and held.get((v.name, old.fingerprint))
            for old in (previous.versions(v.name) if v.name in previous.views else ()))
        meanwhile = ("servers keep serving its previous version" if earlier else
                     "it has no values (NOT_FOUND; counts are 0)")
        if source.kind == "stream":
            lines.append(f"  {v.name}: (re)start `featurestore stream` to write it; "
                         f"until it writes, {meanwhile}")
        else:
            lines.append(f"  {v.name}: run `featurestore materialize --views {v.name}` "
                         f"({_reads(cfg, source)}); until then {meanwhile}")
    return lines


def _configured_or_running(cfg: RepoConfig):
    """The configured online store, else the repo's private redis-server
    when it runs, else None."""
    if cfg.redis_target is not None:
        return cfg.redis_target
    running = redis_local.find_running(cfg.local_redis_dir)
    return redis_client.single(running.url) if running else None


def _written(cfg: RepoConfig, plan, store) -> dict | None:
    """View name -> whether Redis holds its planned version, and
    (view, fingerprint) -> the same for the versions the manifest remembers;
    None when Redis does not answer."""
    from featurestore import layout

    previous = load_manifest(cfg)
    asked = [(v.name, v.name, v.fingerprint()) for v in plan.views]
    if previous is not None:
        asked += [((name, old.fingerprint), name, old.fingerprint)
                  for name in previous.views for old in previous.versions(name)]
    try:
        with redis_client.sync_client(store, socket_timeout=1.0,
                                      socket_connect_timeout=1.0) as r:
            pipe = r.pipeline(transaction=False)
            for _, name, fp in asked:   # one key per EXISTS: on a cluster they lie apart
                pipe.exists(layout.watermark_key(cfg.project, name, fp))
                pipe.exists(layout.live_key(cfg.project, name, fp))
            held = pipe.execute()
            return {label: bool(held[2 * i] or held[2 * i + 1])
                    for i, (label, _, _) in enumerate(asked)}
    except redis_client.ERRORS:
        return None


def _reads(cfg: RepoConfig, source) -> str:
    """Roughly what materializing from `source` reads."""
    if source.format in ("parquet", "csv"):
        files = [p for p in cfg.root.glob(source.path) if p.is_file()] \
            if not Path(source.path).is_absolute() else \
            [p for p in Path("/").glob(source.path.lstrip("/")) if p.is_file()]
        size = sum(p.stat().st_size for p in files)
        return f"reads {len(files)} file(s), {size / 1e6:,.1f} MB, of {source.path}"
    return f"reads {source.format} {source.path}"


def gc(cfg: RepoConfig, say: Say, dry_run: bool = False) -> int:
    """Remove from Redis the keys no server reads: earlier versions of views
    whose applied version Redis holds, views no longer defined, and older
    layouts (`fs1:` to `fs3:`). Versions still served while their view's new
    version is being written are kept. Returns the number of keys removed
    (or, with `dry_run`, that would be)."""
    manifest = load_manifest(cfg)
    if manifest is None:
        raise UserError("the repo has not been applied: run `featurestore apply` first")
    store = redis_target(cfg, say, start=False)
    try:
        return _gc(cfg, manifest, store, say, dry_run)
    except redis_client.ERRORS as e:
        raise ServiceError(f"Redis at {store} failed: {e}; nothing after the keys "
                           "already removed was changed: run `featurestore gc` again") from None


def _gc(cfg: RepoConfig, manifest, store, say: Say, dry_run: bool) -> int:
    from featurestore import layout

    keep: set[tuple[str, str]] = set()
    retired: list[str] = []
    with redis_client.sync_client(store, socket_timeout=10.0) as r:
        for name, view in manifest.views.items():
            keep.add((name, view.fingerprint))
            if not manifest.previous.get(name):
                continue
            if r.exists(layout.watermark_key(cfg.project, name, view.fingerprint),
                        layout.live_key(cfg.project, name, view.fingerprint)):
                retired += [f"{name} version {old.fingerprint}" for old in manifest.previous[name]]
            else:
                keep.update((name, old.fingerprint) for old in manifest.previous[name])
                say(f"  {name}: kept its previous version: servers read it until the applied "
                    f"version {view.fingerprint} is materialized")
        removed = 0
        for prefix in {layout.PREFIX, "fs3", "fs2", "fs1"}:
            batch = []
            for key in r.scan_iter(match=f"{prefix}:{cfg.project}:*", count=1000):
                parts = key.split(b":", 4)
                owner = (parts[2].decode(), parts[3].decode()) if len(parts) == 5 else None
                if prefix == layout.PREFIX and owner in keep:
                    continue
                batch.append(key)
                if len(batch) >= 1000:
                    removed += _unlink(r, batch, dry_run)
            removed += _unlink(r, batch, dry_run)
    if not dry_run and retired:
        kept = {n: tuple(v for v in vs if (n, v.fingerprint) in keep)
                for n, vs in manifest.previous.items()}
        replace(manifest, previous={n: vs for n, vs in kept.items() if vs}).save(
            cfg.manifest_path)
    for line in retired:
        say(f"  retired {line}")
    say(f"{'would remove' if dry_run else 'removed'} {removed:,} key(s) no server reads "
        f"from {store}")
    return removed


def _unlink(r, batch: list, dry_run: bool) -> int:
    n = len(batch)
    if n and not dry_run:   # a command per key: on a cluster the keys lie in many slots
        redis_client.execute(r, [(b"UNLINK", key) for key in batch])
    batch.clear()
    return n


def status(cfg: RepoConfig, say: Say, now_us: int | None = None) -> None:
    """Per view: what Redis holds of the version applied (the last batch
    run, the stream's writes, its drops and held updates), and what a
    server at the configured address reports."""
    import datetime as dt
    import time

    from featurestore import layout

    manifest = load_manifest(cfg)
    if manifest is None:
        raise UserError("the repo has not been applied: run `featurestore apply` first")
    now_us = time.time_ns() // 1000 if now_us is None else now_us

    def when(us: int) -> str:
        at = dt.datetime.fromtimestamp(us / 1e6, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")
        age = (now_us - us) / 1e6
        ago = (f"{age:.0f} s" if abs(age) < 120 else f"{age / 60:.0f} min" if abs(age) < 7200
               else f"{age / 3600:.1f} h")
        return f"{at} ({ago} ago)"

    store = _configured_or_running(cfg)
    if store is None:
        say(f"project {cfg.project}: no Redis configured and the private redis-server is "
            "not running (`featurestore materialize` starts it)")
        return
    try:
        with redis_client.sync_client(store, socket_timeout=2.0,
                                      socket_connect_timeout=2.0) as r:
            say(f"project {cfg.project}, Redis at {store}")
            for name, view in sorted(manifest.views.items()):
                fp = view.fingerprint
                mark = layout.decode_watermark(r.get(layout.watermark_key(cfg.project, name, fp)))
                live = r.get(layout.live_key(cfg.project, name, fp))
                drops = layout.dropped_totals(r.hgetall(layout.dropped_key(cfg.project, name, fp)))
                held = r.hlen(layout.deferred_key(cfg.project, name, fp))
                parts = []
                if mark is not None:
                    parts.append(f"materialized up to {when(mark)}")
                if live is not None:
                    import json

                    parts.append(f"written by the stream since {when(json.loads(live)['since_us'])}")
                if drops:
                    parts.append("the stream dropped " + ", ".join(
                        f"{n:,} {reason}" for reason, n in sorted(drops.items())))
                if held:
                    parts.append(f"{held:,} stream update(s) held until their time")
                if not (mark is not None or live is not None):
                    older = [v.fingerprint for v in manifest.previous.get(name, ())]
                    parts.append("NOT written: run `featurestore materialize --views "
                                 f"{name}` (or the stream)"
                                 + (f"; servers read its previous version {older[0]}"
                                    if older else ""))
                say(f"  {name} (version {fp}): " + "; ".join(parts))
    except redis_client.ERRORS as e:
        raise ServiceError(f"Redis at {store} did not answer: {e}") from None
    _server_status(cfg, manifest, say)


def _server_status(cfg: RepoConfig, manifest, say: Say) -> None:
    """What a server at the configured address says about its health."""
    try:
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc
    except ModuleNotFoundError:
        return
    target = f"{cfg.serving.host}:{cfg.serving.port}"
    names = ["", *(f"view:{v}" for v in sorted(manifest.views))]
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            got = [health_pb2.HealthCheckResponse.ServingStatus.Name(stub.Check(
                health_pb2.HealthCheckRequest(service=n), timeout=2).status) for n in names]
        except grpc.RpcError as e:
            say(f"server at {target}: no answer ({e.code().name})")
            return
    views = ", ".join(f"{n[5:]} {g}" for n, g in zip(names[1:], got) if g != "SERVING")
    say(f"server at {target}: {got[0]}" + (f"; views not written: {views}" if views else ""))


def load_manifest(cfg: RepoConfig):
    """The serving manifest `apply` last wrote, or None."""
    from featurestore.manifest import Manifest

    try:
        return Manifest.load(cfg.manifest_path)
    except FileNotFoundError:
        return None
    except (ValueError, KeyError):   # an older release's manifest: nothing to keep
        return None


def redis_target(cfg: RepoConfig, say: Say, start: bool = True):
    """The configured online store (`redis_client.RedisTarget`), or this
    repo's private redis-server (started when not running, kept running for
    later commands until `featurestore down`)."""
    if cfg.redis_target is not None:
        return cfg.redis_target
    running = redis_local.find_running(cfg.local_redis_dir)
    if running:
        return redis_client.single(running.url)
    if not start:
        raise UserError("no Redis is configured and this repo's private redis-server is not "
                        "running: run `featurestore materialize` first, or set online_store.url")
    # the port it had before (`down`, a reboot), so that a running server
    # and the URLs users noted keep working; a new one only when it is taken
    port = redis_local.last_port(cfg.local_redis_dir)
    moved = port is not None and not redis_local.port_free(port)
    try:
        server = redis_local.start(cfg.local_redis_dir, port=None if moved else port,
                                   persist=True, daemonize=True)
    except redis_local.RedisNotInstalled as e:
        raise ServiceError(str(e)) from None
    (cfg.local_redis_dir / "redis.port").write_text(str(server.port))
    note = (f" (its port {port} is taken now: restart `featurestore serve`)" if moved else
            " again" if port is not None else "")
    say(f"no online_store.url configured: started a private redis-server on 127.0.0.1:"
        f"{server.port}{note} (files in {cfg.local_redis_dir}); `featurestore down` stops it")
    return redis_client.single(server.url)


def down(cfg: RepoConfig, say: Say) -> None:
    running = redis_local.find_running(cfg.local_redis_dir)
    if running is None:
        say("no private redis-server is running for this repo")
        return
    running.stop()
    say(f"stopped the private redis-server on 127.0.0.1:{running.port}")
