"""The `featurestore` command line.

Exit codes: 0 ok, 1 a failure (printed as one message with what to do; the
traceback only with --debug), 2 bad command-line usage, 130 interrupted.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import os
import sys
import time
from pathlib import Path

from featurestore.errors import FeaturestoreError, MissingDependency, ServiceError, UserError

# Top-level module -> the extra that installs it, for a one-line message
# when a command runs where its extra is not installed.
EXTRA_OF = {"duckdb": "batch", "lark": "batch", "feast": "batch", "pyflink": "streaming",
            "redis": "server", "hiredis": "server", "grpc_health": "server",
            "grpc_reflection": "server", "prometheus_client": "server", "yaml": "server",
            "pydantic": "server", "pandas": "client", "pyarrow": "client", "torch": "gpu"}
# Verbs that need more than the module they first miss: the extra with all of it.
VERB_EXTRA = {verb: "batch" for verb in ("check", "compile", "fmt", "plan", "apply",
                                         "materialize", "export", "push", "import-feast")}
VERB_EXTRA.update({"stream": "streaming", "quickstart": "streaming"})


def say(msg: str) -> None:
    print(msg, flush=True)


def parse_time(text: str) -> int:
    """ISO 8601 (UTC unless an offset is given) or 'now' -> epoch microseconds."""
    if text == "now":
        return int(dt.datetime.now(dt.timezone.utc).timestamp() * 1_000_000)
    try:
        t = dt.datetime.fromisoformat(text)
    except ValueError:
        raise UserError(f"cannot read time {text!r}: use ISO 8601, e.g. 2026-01-31T12:00:00") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.timezone.utc)
    return int(t.timestamp()) * 1_000_000 + t.microsecond


def _cfg(args):
    """The repo's settings (featurestore.config.RepoConfig)."""
    from featurestore import config

    root = Path(args.repo) if args.repo else config.find_repo(Path.cwd())
    if args.repo and not (root / config.CONFIG_FILE).is_file():
        raise UserError(f"{root} is not a feature repo: {config.CONFIG_FILE} is missing")
    return config.load(root)


def view_progress(st) -> str:
    """One line about a materialized view."""
    if st.mode.startswith("stream"):
        return f"  {st.view}: a stream view, kept fresh by `featurestore stream`"
    pruned = f", {st.pruned:,} pruned" if st.pruned else ""
    return (f"  {st.view} ({st.mode}): {st.entities:,} entities, {st.tiles:,} tiles, "
            f"{st.rows:,} rows{pruned} in {st.seconds:.2f} s")


# ------------------------------------------------------------------- verbs
def cmd_init(args) -> None:
    from featurestore import repo

    repo.init(Path(args.dir), say)


def cmd_check(args) -> None:
    from featurestore import repo

    cfg = _cfg(args)
    c = repo.compile_repo(cfg)
    if c.report:
        print(c.report, file=sys.stderr if c.errors else sys.stdout)
    if c.errors:
        raise UserError(f"{c.errors} error(s), {c.warnings} warning(s)")
    p = c.plan
    say(f"ok: {len(p.entities)} entities, {len(p.sources)} sources, {len(p.views)} views "
        f"({sum(len(v.feature_names) for v in p.views)} features), {len(p.services)} services")
    if args.data:
        from featurestore.schema_check import require_valid_data

        require_valid_data(p, cfg.root)
        batch = sum(1 for s in p.sources if s.kind == "batch")
        say(f"ok: the data of {batch} batch source{'s' if batch != 1 else ''} "
            "matches the declared schemas")


def cmd_compile(args) -> None:
    from featurestore import repo
    from featurestore.compile import artifacts, write

    cfg = _cfg(args)
    files = artifacts(repo.require_plan(cfg), cfg.project)
    out = Path(args.out) if args.out else cfg.state_dir / "compiled"
    try:
        write(files, out)
    except (FileExistsError, NotADirectoryError) as e:
        raise UserError(f"{e}; choose another --out folder") from None
    say(f"wrote {len(files)} artifacts to {out}")


def cmd_fmt(args) -> None:
    from dsl import FEATURES_DIR
    from dsl.format import format_text

    cfg = _cfg(args)
    changed, broken = [], []
    for path in sorted((cfg.root / FEATURES_DIR).rglob("*.feat")):
        rel = path.relative_to(cfg.root).as_posix()
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            broken.append(rel)
            continue
        new = format_text(rel, text)
        if new is None:
            broken.append(rel)
        elif new != text:
            changed.append(rel)
            if not args.check:
                path.write_text(new, encoding="utf-8")
    verb = "would reformat" if args.check else "reformatted"
    say("\n".join(f"{verb} {rel}" for rel in changed) or "all files are formatted")
    if broken:
        raise UserError(f"not formatted, unreadable or with syntax errors (see "
                        f"`featurestore check`): {', '.join(broken)}")
    if args.check and changed:
        raise UserError(f"{len(changed)} file(s) need `featurestore fmt`")


def cmd_plan(args) -> None:
    from featurestore import repo

    cfg = _cfg(args)
    plan = repo.require_plan(cfg)
    say(repo.apply(cfg, plan, say, dry_run=True).render())
    _say_unwritten(repo.unwritten(cfg, plan), "after `featurestore apply`, ")


def _say_unwritten(lines: list[str], when: str = "") -> None:
    if lines:
        say(f"{when}these views serve their new definition once Redis holds it:")
        for line in lines:
            say(line)


def cmd_apply(args) -> None:
    from featurestore import repo
    from featurestore.schema_check import require_valid_data

    cfg = _cfg(args)
    plan = repo.require_plan(cfg)
    require_valid_data(plan, cfg.root)  # a mismatch applies nothing
    changes = repo.apply(cfg, plan, say)
    say(changes.render("Applied") if not changes.empty else "No changes: the registry is up to date.")
    say(f"registry: {cfg.registry}; serving manifest: {cfg.manifest_path}")
    _say_unwritten(repo.unwritten(cfg, plan))


def cmd_materialize(args) -> None:
    from featurestore import repo
    from featurestore.materialize import materialize

    cfg = _cfg(args)
    plan = repo.require_plan(cfg)
    if not cfg.manifest_path.exists():
        raise UserError("the repo has not been applied: run `featurestore apply` first")
    views = args.views.split(",") if args.views else None
    unknown = sorted(set(views or ()) - {v.name for v in plan.views})
    if unknown:
        raise UserError(f"unknown view(s): {', '.join(unknown)}")
    if args.start and args.incremental:
        raise UserError("give --start or --incremental, not both")
    store = repo.redis_target(cfg, say)
    end = parse_time(args.end) if args.end else None
    start = parse_time(args.start) if args.start else None
    if start is not None and end is not None and start > end:
        raise UserError(f"--start {args.start} is after --end {args.end}")

    def progress(st) -> None:
        say(view_progress(st))

    say(f"materializing into {store}")
    stats = materialize(plan, cfg.root, cfg.project, store, start_us=start, end_us=end,
                        incremental=args.incremental, views=views,
                        memory_limit=cfg.memory_limit, progress=progress)
    say(f"done in {stats.seconds:.2f} s")


def cmd_export(args) -> None:
    from featurestore import repo
    from featurestore.export import export_to_parquet

    cfg = _cfg(args)
    plan = repo.require_plan(cfg)
    labels = Path(args.labels)
    if not any(labels.parent.glob(labels.name)):
        raise UserError(f"no labels at {labels}")
    features = args.features.split(",") if args.features else None
    last = [0.0]

    def progress(step: str, done: float) -> None:
        now = time.monotonic()
        if now - last[0] >= 2.0 or done == 0.0:
            last[0] = now
            say(f"  {done:6.1%}  {step}")

    say(f"exporting {labels} -> {args.out}")
    stats = export_to_parquet(plan, cfg.root, labels, args.out, service=args.service,
                              features=features, timestamp=args.timestamp,
                              full_feature_names=args.full_names, statuses=args.statuses,
                              memory_limit=args.memory_limit or cfg.memory_limit,
                              progress=progress)
    say(f"wrote {stats.rows:,} rows x {stats.features} features to {stats.path} "
        f"in {stats.seconds:.1f} s ({stats.rows / max(stats.seconds, 1e-9):,.0f} rows/s)")


def cmd_serve(args) -> None:
    from featurestore import repo
    from serving.server import ServerOptions, serve
    from serving.workers import WorkerFailed, default_workers

    cfg = _cfg(args)
    if not cfg.manifest_path.exists():
        raise UserError("the repo has not been applied: run `featurestore apply` first")
    store = repo.redis_target(cfg, say, start=False)
    options = ServerOptions.from_config(cfg, metrics_port=args.metrics_port)
    if args.http_port is not None:
        options = dataclasses.replace(options, http_port=args.http_port)
    if args.log_format is not None:
        options = dataclasses.replace(options, log_format=args.log_format)
    if args.access_log:
        options = dataclasses.replace(options, access_log=True)
    workers = args.workers or cfg.serving.workers or default_workers()
    if workers < 1:
        raise UserError(f"--workers must be at least 1, not {workers}")
    try:
        serve(cfg.manifest_path, store, args.host or cfg.serving.host,
              args.port or cfg.serving.port, options, workers)
    except WorkerFailed as e:
        raise ServiceError(str(e)) from None


def cmd_get(args) -> None:
    from serving.client import FeatureClient

    target = args.target
    if not target:
        try:
            import yaml  # noqa: F401  (featurestore.config reads featurestore.yaml)

            import featurestore.config  # noqa: F401
        except ModuleNotFoundError as e:
            raise UserError(f"without --target, `featurestore get` reads the repo's "
                            f"featurestore.yaml, which needs the 'server' extra (missing "
                            f"module {e.name!r}): pass --target HOST:PORT, or pip install "
                            "'featurestore[server]'") from None
        cfg = _cfg(args)
        target = f"{cfg.serving.host}:{cfg.serving.port}"
    entities: dict[str, list] = {}
    for spec in args.entity:
        name, _, values = spec.partition("=")
        if not values:
            raise UserError(f"--entity {spec!r}: expected NAME=VALUE[,VALUE...]")
        entities[name] = [int(v) if v.lstrip("-").isdigit() and args.int_keys else v
                          for v in values.split(",")]
    features = args.features.split(",") if args.features else None
    if bool(features) == bool(args.service):
        raise UserError("give exactly one of --service NAME or --features VIEW:FEATURE,...")
    api_key = args.api_key or (os.environ.get("FEATURESTORE_API_KEYS") or "").split(",")[0]
    import grpc

    try:
        with FeatureClient(target, timeout=args.timeout, api_key=api_key or None) as client:
            result = client.get_online_features(features=features, service=args.service,
                                                entities=entities)
    except grpc.RpcError as e:
        raise ServiceError(_rpc_message(e, target)) from None
    import pandas as pd

    with pd.option_context("display.max_columns", None, "display.width", 200):
        say(result.to_pandas().to_string(index=False))


def _rpc_message(e, target: str) -> str:
    """One line for a failed call: the server's status and message, and a hint."""
    code = e.code()
    hint = {
        "UNAVAILABLE": "is `featurestore serve` running there? (--target HOST:PORT picks "
                       "another server)",
        "DEADLINE_EXCEEDED": "the server did not answer in time (--timeout SECONDS)",
        "UNAUTHENTICATED": "pass a key with --api-key or FEATURESTORE_API_KEYS",
    }.get(code.name if code else "")
    return (f"the feature server at {target} answered {code.name if code else 'UNKNOWN'}: "
            f"{e.details() or ''}" + (f"; {hint}" if hint else ""))


def cmd_stream(args) -> None:
    from featurestore import repo
    from streaming.job import StreamOptions, stream

    cfg = _cfg(args)
    plan = repo.require_plan(cfg)
    conf = {}
    for item in args.conf:
        key, sep, value = item.partition("=")
        if not sep:
            raise UserError(f"--conf {item!r}: expected KEY=VALUE")
        conf[key] = value
    checkpoints = args.checkpoints or (None if args.jobmanager else
                                       str(cfg.state_dir / "stream" / "checkpoints"))
    options = StreamOptions(jobmanager=args.jobmanager, parallelism=args.parallelism,
                            heap=args.heap, checkpoint_dir=checkpoints,
                            checkpoint_interval_ms=int(args.checkpoint_interval * 1000),
                            restore=args.restore, python=args.python, conf=conf,
                            count_lines=not args.no_line_count, metrics_port=args.metrics_port,
                            **({"metrics_host": args.metrics_host} if args.metrics_host else {}))
    if not cfg.manifest_path.exists():
        say("note: the repo has not been applied: the server will not serve these views "
            "until `featurestore apply`")
    stream(plan, cfg.root, cfg.project, lambda: repo.redis_target(cfg, say), options, say,
           fresh=args.fresh)


def cmd_push(args) -> None:
    from featurestore import repo
    from streaming.push import PushError, push, read_events

    cfg = _cfg(args)
    if bool(args.json) == bool(args.file):
        raise UserError("give exactly one of --json TEXT or --file PATH ('-' for stdin)")
    if args.file:
        try:
            text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text("utf-8")
        except OSError as e:
            raise UserError(f"cannot read {args.file}: {e}") from None
    else:
        text = args.json
    try:
        path, n = push(repo.require_plan(cfg), cfg.root, args.name, read_events(text))
    except PushError as e:
        raise UserError(str(e)) from None
    say(f"pushed {n} event{'s' if n != 1 else ''} to {path.relative_to(cfg.root)}")


def cmd_quickstart(args) -> None:
    from featurestore.quickstart import run

    run(Path(args.dir), events=args.events, say=say)


def cmd_import_feast(args) -> None:
    from featurestore.import_feast import import_feast

    say(import_feast(Path(args.feast_repo), Path(args.out) if args.out else None).render())


def cmd_status(args) -> None:
    from featurestore import repo

    repo.status(_cfg(args), say)


def cmd_gc(args) -> None:
    from featurestore import repo

    repo.gc(_cfg(args), say, dry_run=args.dry_run)


def cmd_config(args) -> None:
    import yaml

    cfg = _cfg(args)
    say(f"# {cfg.root / 'featurestore.yaml'}, with environment overrides; secrets masked")
    say(yaml.safe_dump(cfg.effective(), sort_keys=False).rstrip())


def cmd_down(args) -> None:
    from featurestore import repo

    repo.down(_cfg(args), say)


# ------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="featurestore", description="A real-time feature store.")
    p.add_argument("--debug", action="store_true", help="print tracebacks of failures")
    sub = p.add_subparsers(dest="verb", required=True, metavar="VERB")

    def verb(name: str, fn, help: str, repo: bool = True) -> argparse.ArgumentParser:
        s = sub.add_parser(name, help=help, description=help)
        s.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="print tracebacks of failures")
        if repo:
            s.add_argument("--repo", help="feature repo folder (default: the one around .)")
        s.set_defaults(fn=fn)
        return s

    s = verb("init", cmd_init, "scaffold a feature repo", repo=False)
    s.add_argument("dir", help="folder to create")
    s = verb("check", cmd_check, "parse and type-check the .feat files")
    s.add_argument("--data", action="store_true",
                   help="also compare each batch source's data with its declared schema")
    s = verb("compile", cmd_compile, "write every backend's artifacts (plan, SQL, Feast, Redis)")
    s.add_argument("--out", help="folder for the artifacts (default .featurestore/compiled)")
    s = verb("fmt", cmd_fmt, "rewrite the .feat files in the canonical layout")
    s.add_argument("--check", action="store_true",
                   help="change nothing; exit 1 if a file is not formatted")
    verb("plan", cmd_plan, "show what `apply` would change in the registry")
    verb("apply", cmd_apply, "check the sources' data, then write the definitions to the "
                             "Feast registry")
    s = verb("materialize", cmd_materialize, "compute features with DuckDB and write them to Redis")
    s.add_argument("--end", help="materialize as of this time (ISO 8601, UTC); default now")
    s.add_argument("--start", help="read only events from this time on (ISO 8601, UTC); "
                                   "the tiles they touch are recomputed and merged")
    s.add_argument("--incremental", action="store_true",
                   help="continue from each view's last run (its watermark)")
    s.add_argument("--views", help="comma-separated views (default all)")
    s = verb("export", cmd_export, "write a point-in-time training set to Parquet")
    s.add_argument("--labels", required=True,
                   help="Parquet file (or glob) of labels: entity keys, a timestamp, any columns")
    s.add_argument("--service", help="export every feature of this feature service")
    s.add_argument("--features", help="or these comma-separated VIEW:FEATURE refs")
    s.add_argument("--out", required=True, help="the Parquet file to write")
    s.add_argument("--timestamp", help="the labels' time column (default event_timestamp, "
                                       "or the only timestamp column)")
    s.add_argument("--full-names", action="store_true", help="name columns VIEW__FEATURE")
    s.add_argument("--statuses", action="store_true",
                   help="add VIEW__status per view with row-level features: the status the "
                        "server gives them (PRESENT, OUTSIDE_MAX_AGE, NOT_FOUND)")
    s.add_argument("--memory-limit", help="DuckDB memory limit, e.g. 2GB (default batch.memory_limit)")
    s = verb("serve", cmd_serve, "run the gRPC feature server")
    s.add_argument("--host")
    s.add_argument("--port", type=int)
    s.add_argument("--metrics-port", type=int, help="expose Prometheus /metrics on this port")
    s.add_argument("--log-format", choices=("text", "json"),
                   help="text, or JSON lines with request ids (default: serving.log_format)")
    s.add_argument("--access-log", action="store_true", help="a log line per call")
    s.add_argument("--http-port", type=int,
                   help="also serve Feast's HTTP API (POST /get-online-features) on this port "
                        "(default: serving.http_port, else off)")
    s.add_argument("--workers", type=int,
                   help="server processes sharing the port (default: serving.workers, "
                        "else one per core)")
    s = verb("get", cmd_get, "look features up through the server")
    s.add_argument("--service", help="feature service name")
    s.add_argument("--features", help="comma-separated VIEW:FEATURE refs")
    s.add_argument("--entity", action="append", default=[], required=True,
                   help="NAME=VALUE[,VALUE...], once per entity key")
    s.add_argument("--int-keys", action="store_true", help="send numeric key values as int64")
    s.add_argument("--target", help="server HOST:PORT (default: the repo's serving settings)")
    s.add_argument("--timeout", type=float, default=5.0)
    s.add_argument("--api-key", help="API key (default: first of FEATURESTORE_API_KEYS)")
    s = verb("stream", cmd_stream, "run the streaming job of the stream views (PyFlink)")
    s.add_argument("--jobmanager", metavar="HOST:PORT",
                   help="submit to this Flink cluster's REST API (default: a local MiniCluster)")
    s.add_argument("--parallelism", type=int, default=1)
    s.add_argument("--checkpoints", metavar="DIR_OR_URI",
                   help="checkpoint storage (default .featurestore/stream/checkpoints locally; "
                        "the cluster's setting with --jobmanager)")
    s.add_argument("--checkpoint-interval", type=float, default=10.0, metavar="SECONDS")
    s.add_argument("--restore", metavar="PATH",
                   help="start from this checkpoint or savepoint (default: the newest local one)")
    s.add_argument("--fresh", action="store_true",
                   help="forget the job's checkpoints: read the sources from the beginning")
    s.add_argument("--heap", default="1g", help="JVM heap of the local MiniCluster")
    s.add_argument("--python", help="Python of the cluster's workers (with --jobmanager)")
    s.add_argument("--conf", action="append", default=[], metavar="KEY=VALUE",
                   help="any Flink setting, e.g. state.backend.type=rocksdb")
    s.add_argument("--metrics-port", type=int, metavar="PORT",
                   help="serve Prometheus /metrics of the views' counts, drops, held updates "
                        "and lag (0: a free port)")
    s.add_argument("--metrics-host", help="the address of --metrics-port (default: loopback)")
    s.add_argument("--no-line-count", action="store_true",
                   help="do not read json sources a second time to count the lines Flink's "
                        "reader skips (unparsable, invalid_utf8)")
    s = verb("push", cmd_push, "append events to a `stream files` source (for local use)")
    s.add_argument("name", help="the source, or a view over it")
    s.add_argument("--json", help="one event, a JSON array of events, or JSON lines")
    s.add_argument("--file", help="a file of events in the same forms ('-': stdin)")
    s = verb("quickstart", cmd_quickstart, "run the whole pipeline on generated data", repo=False)
    s.add_argument("dir", nargs="?", default="quickstart", help="folder for the example repo")
    s.add_argument("--events", type=int, default=1_000_000)
    verb("status", cmd_status, "per view: the last materialization, the stream's writes, "
                               "drops and held updates; the server's health")
    s = verb("import-feast", cmd_import_feast, "write a feature repo from a Feast repo's "
                                               "registry (after `feast apply`)", repo=False)
    s.add_argument("feast_repo", help="the Feast repo (the folder of its feature_store.yaml)")
    s.add_argument("--out", help="folder for the new repo (default: FEAST_REPO_featurestore "
                                 "beside it)")
    s = verb("gc", cmd_gc, "remove keys of retired view versions, removed views and older "
                           "layouts from Redis")
    s.add_argument("--dry-run", action="store_true", help="count them, remove nothing")
    verb("config", cmd_config, "print the settings in force (featurestore.yaml and the "
                               "environment), secrets masked")
    verb("down", cmd_down, "stop the repo's private redis-server")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.fn(args)
    except KeyboardInterrupt:
        return 130
    except Exception as e:
        message = explain(e, args)
        if args.debug:
            import traceback

            traceback.print_exc()
        print(f"error: {message or f'unexpected {type(e).__name__}: {e}'}", file=sys.stderr)
        if message is None and not args.debug:
            print("this is a bug in featurestore: please report it with the output of "
                  "the same command run with --debug", file=sys.stderr)
        return 1
    return 0


def explain(e: Exception, args) -> str | None:
    """The one-line message for a failure a user can act on; None for a bug."""
    if isinstance(e, FeaturestoreError):
        return str(e)
    if isinstance(e, ModuleNotFoundError) and e.name:
        extra = EXTRA_OF.get(e.name.split(".")[0])
        if extra:
            extra = VERB_EXTRA.get(args.verb, extra)   # the extra that brings all it needs
            return str(MissingDependency(e.name, extra, f"`featurestore {args.verb}`"))
    if isinstance(e, OSError) and e.filename:
        return f"{e.strerror or e}: {e.filename}"
    return None


if __name__ == "__main__":
    sys.exit(main())
