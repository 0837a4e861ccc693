"""Operations on a feature repo: compile, apply, materialize, and the Redis it uses.

The CLI is a thin shell over these; tests and the quickstart call them too.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from featurestore import redis_local
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


def load_manifest(cfg: RepoConfig):
    """The serving manifest `apply` last wrote, or None."""
    from featurestore.manifest import Manifest

    try:
        return Manifest.load(cfg.manifest_path)
    except FileNotFoundError:
        return None
    except (ValueError, KeyError):   # an older release's manifest: nothing to keep
        return None


def redis_url(cfg: RepoConfig, say: Say, start: bool = True) -> str:
    """The configured Redis, or this repo's private redis-server (started when
    not running, kept running for later commands until `featurestore down`)."""
    if cfg.redis_url:
        return cfg.redis_url
    running = redis_local.find_running(cfg.local_redis_dir)
    if running:
        return running.url
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
    return server.url


def down(cfg: RepoConfig, say: Say) -> None:
    running = redis_local.find_running(cfg.local_redis_dir)
    if running is None:
        say("no private redis-server is running for this repo")
        return
    running.stop()
    say(f"stopped the private redis-server on 127.0.0.1:{running.port}")
