"""The streaming job: the stream views of a plan, run by PyFlink, into Redis.

    job = StreamJob(plan, root, project, store, StreamOptions())
    job.start()          # local MiniCluster (or a cluster: options.jobmanager)
    job.wait()           # until stopped; job.stop() cancels it

One job computes every stream view (`streaming.flink_sql`): sources, per
(entity, tile) states and latest rows in Flink SQL; per view and output a
Python function, the only Python of the job, writes the updates to Redis
(`streaming.sink`), in worker processes of their own.

Restarts: the job checkpoints its state (Flink's, which includes which files
it has read and the Kafka offsets) every `checkpoint_interval_ms` into
`checkpoint_dir/<job fingerprint>/`, and keeps the last ones when it is
cancelled or killed. A new start restores the newest checkpoint of the same
job, so it neither re-reads what it counted nor forgets what it has not
written: the Python functions write everything before a checkpoint
completes, and every write is a full state, so the updates replayed after a
crash rewrite the same values. A changed definition is another job: it
starts from the beginning of its sources.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import sys
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from dsl.plan import Plan
from featurestore import layout, redis_client
from featurestore.errors import ServiceError
from streaming import flink_sql, metrics
from streaming.udf import sink_function

CHECKPOINT_PREFIX = "chk-"


@dataclass
class StreamOptions:
    """How and where the job runs."""
    jobmanager: str | None = None      # host:port of a Flink cluster's REST API; None: local
    parallelism: int = 1
    heap: str = "1g"                   # JVM heap of the local MiniCluster
    checkpoint_dir: Path | str | None = None   # local path or a URI the cluster can reach
    checkpoint_interval_ms: int = 10_000
    restore: str | None = None         # a checkpoint or savepoint; None: the newest local one
    monitor_interval_ms: int = 100     # how often files sources list their folders
    count_lines: bool = True           # count the lines Flink's json reader skips (a second read)
    metrics_port: int | None = None    # Prometheus /metrics of the views' counts (streaming.metrics)
    metrics_host: str = "127.0.0.1"
    bounded: bool = False              # read the files there are, then finish (benchmarks)
    tuning: flink_sql.Tuning = field(default_factory=flink_sql.Tuning)
    python: str | None = None          # Python of the cluster's workers (remote only)
    conf: dict[str, str] = field(default_factory=dict)  # any other Flink setting


class StreamJob:
    """One streaming job of a plan's stream views."""

    def __init__(self, plan: Plan, root: Path, project: str,
                 store: redis_client.RedisTarget | str, options: StreamOptions | None = None):
        self.plan = plan
        self.root = Path(root).resolve()
        self.project = project
        self.store = redis_client.target(store)
        self.options = options or StreamOptions()
        settings = flink_sql.SourceSettings(self.root, self.options.monitor_interval_ms,
                                            self.options.bounded, self.options.count_lines)
        self.job = flink_sql.compile_job(plan, settings, self.options.tuning)
        self.restored_from: str | None = None
        self._client = None

    # ------------------------------------------------------------ building
    @property
    def local(self) -> bool:
        return self.options.jobmanager is None

    @property
    def checkpoints(self) -> str | None:
        """Where this job's checkpoints go (a folder per job fingerprint)."""
        base = self.options.checkpoint_dir
        if base is None:
            return None
        base = str(base)
        if "://" in base:
            return f"{base.rstrip('/')}/{self.job.fingerprint}"
        return str(Path(base).resolve() / self.job.fingerprint)

    def table_environment(self, discard: bool = False):
        """A TableEnvironment with the job's tables, views and functions."""
        # httplib2 (under apache-beam, under PyFlink) calls pyparsing's
        # deprecated names as it is imported: noise in our users' terminals.
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"httplib2(\.|$)")
        # PyFlink 2.x warns about its own deprecated APIs that it calls itself.
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"pyflink(\.|$)")
        from pyflink.common import Configuration
        from pyflink.table import EnvironmentSettings, TableEnvironment

        if self.local:
            # The MiniCluster lives in the gateway JVM that PyFlink starts now.
            os.environ.setdefault("JVM_ARGS", f"-Xmx{self.options.heap}")
        # Python functions in worker processes of their own, in parallel.
        # PyFlink's default for a MiniCluster runs them all in this process,
        # under one GIL: half the throughput. (PyFlink reads this variable as
        # the environment is made; on a cluster, callbacks here would fail.)
        os.environ["_python_worker_execution_mode"] = "process"
        settings = EnvironmentSettings.new_instance().in_streaming_mode() \
            .with_configuration(Configuration.from_dict(self._config())).build()
        env = TableEnvironment.create(settings)
        if not self.local:
            env.add_python_file(_python_packages(self.root / ".featurestore" / "stream"))
        for statement in self.job.statements:
            env.execute_sql(statement)
        for out in self.job.outputs:
            if discard:
                env.execute_sql(out.discard_table)
            else:
                env.create_temporary_system_function(out.function, sink_function(
                    self.project, self.job.sinks[out.view], out.part, self.store))
        return env

    def statement_set(self, discard: bool = False):
        """Every output's INSERT (or, with `discard`, the same updates into
        blackholes: a benchmark's baseline) as one Flink job."""
        env = self.table_environment(discard)
        statements = env.create_statement_set()
        for out in self.job.outputs:
            statements.add_insert_sql(out.discard if discard else out.insert)
        return statements

    def _config(self) -> dict[str, str]:
        o = self.options
        conf = {**self.job.config, "parallelism.default": str(o.parallelism),
                "pipeline.name": f"featurestore {self.project}: {', '.join(self.job.views)}",
                "python.executable": o.python or (sys.executable if self.local else "python3"),
                "python.client.executable": sys.executable}
        if o.checkpoint_interval_ms > 0:
            conf.update({
                "execution.checkpointing.interval": f"{o.checkpoint_interval_ms} ms",
                "execution.checkpointing.externalized-checkpoint-retention":
                    "RETAIN_ON_CANCELLATION",
                "execution.checkpointing.num-retained": "2",
            })
            if self.checkpoints:
                conf["execution.checkpointing.dir"] = _uri(self.checkpoints)
        restore = o.restore or (self.latest_checkpoint() if self.local else None)
        if restore:
            conf["execution.state-recovery.path"] = restore
            self.restored_from = restore
        if not self.local:
            host, _, port = o.jobmanager.rpartition(":")
            conf.update({"execution.target": "remote", "rest.address": host, "rest.port": port,
                         # the cluster may lack PyFlink's operators (opt/, not lib/)
                         "pipeline.jars": ";".join(_python_jars())})
        conf.update(o.conf)
        return conf

    def latest_checkpoint(self) -> str | None:
        """The newest complete checkpoint of this job under a local folder."""
        if not self.checkpoints or "://" in self.checkpoints:
            return None
        found = sorted(Path(self.checkpoints).glob(f"*/{CHECKPOINT_PREFIX}*/_metadata"),
                       key=lambda p: p.stat().st_mtime)
        return str(found[-1].parent) if found else None

    # ------------------------------------------------------------ running
    def start(self, discard: bool = False) -> str:
        """Submit the job; returns its Flink job id. With `discard`, the same
        updates go to a blackhole instead of Redis (a benchmark's baseline)."""
        self._prepare_sources()
        result = self.statement_set(discard).execute()
        self._client = result.get_job_client()
        self._forget_older_checkpoints()
        return str(self._client.get_job_id())

    def status(self) -> str:
        return self._client.get_job_status().result().name

    def wait(self, timeout_s: float | None = None):
        """Block until the job ends (its bounded sources ran out) or timeout_s;
        returns Flink's JobExecutionResult."""
        future = self._client.get_job_execution_result()
        return future.result() if timeout_s is None else future.result(timeout_s)

    def stop(self) -> None:
        """Cancel the job; its last checkpoints stay for the next start."""
        if self._client is not None:
            try:
                self._client.cancel().result()
            except Exception:  # already finished or failed: nothing to cancel
                pass

    def dropped(self) -> dict[str, dict[str, int]]:
        """View -> reason -> events dropped so far (read from Redis)."""
        r = redis_client.sync_client(self.store)
        try:
            return {view: dict(v.counts.dropped) for view, v in self.counts(r).items()}
        finally:
            r.close()

    def counts(self, r) -> dict[str, metrics.ViewCounts]:
        """View -> what the job counted and dropped, and the updates it
        holds, read from Redis with the client `r`."""
        return {o.name: metrics.ViewCounts(
                    layout.stream_counts(r.hgetall(
                        layout.dropped_key(self.project, o.name, o.fingerprint))),
                    r.hlen(layout.deferred_key(self.project, o.name, o.fingerprint)))
                for o in self.job.sinks}

    def serve_metrics(self):
        """Prometheus /metrics of the views' counts on `options.metrics_port`
        (streaming.metrics); returns the HTTP server."""
        r = redis_client.sync_client(self.store, socket_timeout=2.0, socket_connect_timeout=2.0)
        try:
            return metrics.serve(lambda: self.counts(r), self.options.metrics_host,
                                 self.options.metrics_port)
        except OSError as e:
            r.close()
            raise ServiceError(f"cannot serve metrics on {self.options.metrics_host}:"
                               f"{self.options.metrics_port}: {e.strerror}; choose another "
                               "port with --metrics-port") from None

    def _prepare_sources(self) -> None:
        """Folders of files sources must exist before Flink lists them."""
        for name in {self.plan.view(v).source for v in self.job.views}:
            source = self.plan.source(name)
            if source.format == "files":
                path = Path(source.path)
                (path if path.is_absolute() else self.root / path).mkdir(parents=True,
                                                                       exist_ok=True)

    def _forget_older_checkpoints(self) -> None:
        """Keep the checkpoints of the job restored from and of this run only."""
        if not self.local or not self.checkpoints or not Path(self.checkpoints).is_dir():
            return
        keep = {str(self._client.get_job_id())}
        if self.restored_from:
            keep.add(Path(self.restored_from).parent.name)
        for run in Path(self.checkpoints).iterdir():
            if run.is_dir() and run.name not in keep:
                shutil.rmtree(run, ignore_errors=True)


def _uri(path: str) -> str:
    return path if "://" in path else Path(path).resolve().as_uri()


def _python_jars() -> list[str]:
    """PyFlink's own jar (its Python operators), as the job ships it."""
    import pyflink

    return [Path(p).resolve().as_uri()
            for p in sorted((Path(pyflink.__file__).parent / "opt").glob("flink-python-*.jar"))]


def _python_packages(folder: Path) -> str:
    """The packages the Python functions import (streaming.udf: the writers,
    the layout, the tile states), zipped for a cluster's workers."""
    import featurestore
    import streaming

    folder.mkdir(parents=True, exist_ok=True)
    out = folder / "featurestore-job.zip"
    with zipfile.ZipFile(out, "w") as z:
        for package in (featurestore, streaming):
            base = Path(package.__file__).parent
            for path in sorted(base.rglob("*.py")):
                z.write(path, Path(base.name) / path.relative_to(base))
    return str(out)


@contextlib.contextmanager
def _stopped_by_signals():
    """An event set by SIGINT or SIGTERM while in the block."""
    import signal
    import threading

    stopping = threading.Event()
    previous = {s: signal.signal(s, lambda signum, frame: stopping.set())
                for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stopping
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def run_until_stopped(job: StreamJob, say: Callable[[str], None],
                      poll_s: float = 5.0) -> None:
    """Run a local job until SIGINT/SIGTERM or its end, printing the counts
    of dropped events as they change."""
    from redis.exceptions import RedisError

    last: dict = {}
    redis_down = False
    try:
        with _stopped_by_signals() as stopping:
            while not stopping.wait(poll_s):
                status = job.status()
                if status in ("FAILED", "CANCELED", "FINISHED"):
                    say(f"the job is {status.lower()}")
                    return
                try:
                    drops = job.dropped()
                except RedisError as e:  # the job retries its writes; so does the report
                    if not redis_down:
                        say(f"  Redis does not answer ({e}); the job retries until it does")
                    redis_down = True
                    continue
                redis_down = False
                for view, totals in drops.items():
                    if totals and totals != last.get(view):
                        shown = ", ".join(f"{n:,} {reason}"
                                          for reason, n in sorted(totals.items()))
                        say(f"  {view}: dropped {shown}")
                last = drops
    finally:
        say("stopping: cancelling the job (its checkpoints stay for the next start)")
        job.stop()


def stream(plan: Plan, root: Path, project: str,
           store: redis_client.RedisTarget | str | Callable[[], redis_client.RedisTarget | str],
           options: StreamOptions, say: Callable[[str], None], fresh: bool = False) -> None:
    """`featurestore stream`: run the job locally until stopped, or submit it
    to a cluster and return (with `options.metrics_port`, serve the metrics
    until stopped). `store` may be a function, called once the job is known
    to compile. Raises UserError for what the user can fix."""
    from featurestore.errors import UserError

    try:
        flink_sql.compile_job(plan)
    except flink_sql.Unsupported as e:
        raise UserError(f"the streaming job cannot run: {e}") from None
    store = store() if callable(store) else store
    job = StreamJob(plan, root, project, store, options)
    if fresh and job.checkpoints and job.local:
        shutil.rmtree(job.checkpoints, ignore_errors=True)
    parts = ", ".join(f"{s.name} ({', '.join(p for p in s.parts if p != 'dropped')})"
                      for s in job.job.sinks)
    say(f"streaming {parts} of project {project} into {job.store}")
    # before the job starts: a port in use fails the command, not a running job
    http = job.serve_metrics() if options.metrics_port is not None else None
    try:
        job_id = job.start()
        if http is not None:
            say(f"metrics of the views' counts on "
                f"http://{options.metrics_host}:{http.server_port}/metrics")
        if not job.local:
            say(f"submitted job {job_id} to {options.jobmanager}; stop it with "
                f"`flink cancel -s <savepoint dir> {job_id}` and restart with --restore")
            if http is not None:
                say("serving its metrics until Ctrl-C")
                with _stopped_by_signals() as stopping:
                    stopping.wait()
            return
        where = f"in {job.checkpoints}" if job.checkpoints else "nowhere (no checkpoints)"
        say(f"job {job_id} running on a local MiniCluster (parallelism {options.parallelism}); "
            + (f"restored from {job.restored_from}" if job.restored_from
               else "reading the sources from their beginning"))
        if options.checkpoint_interval_ms > 0:
            say(f"checkpoints every {options.checkpoint_interval_ms / 1000:g} s {where}")
        say("Ctrl-C stops it; `featurestore stream` again continues where it stopped")
        run_until_stopped(job, say)
    finally:
        if http is not None:
            http.shutdown()
