"""`featurestore serve --workers N`: N server processes on one port.

Python runs one thread of Python at a time, so one process uses one core. The
parent here starts N workers (fresh interpreters, `spawn`: gRPC's threads do
not survive a fork); each is a whole `serving.server` with its own event loop,
Redis connections and health, listening on the same port with SO_REUSEPORT,
so the kernel spreads connections over them. The parent

* checks that the port is free before any worker binds it (SO_REUSEPORT
  would otherwise let the workers join a stranger's socket),
* restarts a worker that dies once it has served (at most once a second
  per worker); one that dies before it serves stops them all (WorkerFailed),
* on SIGINT or SIGTERM stops every worker gracefully, passes SIGHUP on
  (each worker then re-reads its API keys file), and
* exports every worker's Prometheus metrics on one endpoint (the client's
  multiprocess mode: each worker writes its values to files in a folder,
  the parent sums them when scraped).

Each worker holds its own connections: N workers hold N times
`serving.redis_connections` Redis connections at most.
"""
from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
import threading
import time

from featurestore.errors import ServiceError

log = logging.getLogger("featurestore.serving")

RESTART_DELAY_S = 1.0
STOP_TIMEOUT_S = 10.0


class WorkerFailed(OSError):
    """A worker died before it served: restarting it would not help."""


def default_workers() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def serve(manifest_path: str, store, host: str, port: int, options, workers: int) -> None:
    """Run `workers` server processes on host:port until SIGINT or SIGTERM."""
    port = claim(host, port)
    metrics_dir = None
    if options.metrics_port is not None:
        metrics_dir = tempfile.mkdtemp(prefix="featurestore-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir  # the workers inherit it
    context = multiprocessing.get_context("spawn")
    stopping = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopping.set())
    # SIGHUP: every worker re-reads its API keys file
    signal.signal(signal.SIGHUP, lambda *_: [os.kill(p.pid, signal.SIGHUP) for p in procs
                                             if p.is_alive()])
    args = (manifest_path, store, host, port, options)
    procs = [_start(context, args, i, workers) for i in range(workers)]
    exporter = _export_metrics(host, options.metrics_port, metrics_dir) if metrics_dir else None
    log.info("%d workers serving on %s:%d (pids %s)%s", workers, host, port,
             ", ".join(str(p.pid) for p in procs),
             f"; metrics on :{exporter.server_port}/metrics" if exporter else "")
    try:
        while not stopping.wait(0.2):
            for i, proc in enumerate(procs):
                if proc.is_alive() or stopping.is_set():
                    continue
                if not proc.ready.is_set():
                    raise WorkerFailed(f"worker {i + 1} exited with {proc.exitcode} before it "
                                       "served (its log above says why)")
                log.warning("worker %d (pid %s) exited with %s; starting it again",
                            i + 1, proc.pid, proc.exitcode)
                time.sleep(RESTART_DELAY_S)
                procs[i] = _start(context, args, i, workers)
    finally:
        _stop(procs)
        if exporter:
            exporter.shutdown()
        if metrics_dir:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def claim(host: str, port: int) -> int:
    """The port the workers will share: `port`, checked to be free (a plain
    bind fails if anyone listens there), or a free one for port 0."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # SO_REUSEADDR: connections of a server that just stopped (TIME_WAIT)
        # do not count; a socket listening there still does
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host.strip("[]"), port))
        except OSError as e:
            raise ServiceError(f"cannot serve on {host}:{port}: {e.strerror}; stop what "
                               "listens there, or choose another port with --port N (or "
                               "serving.port in featurestore.yaml)") from None
        return probe.getsockname()[1]


def _start(context, args, index: int, workers: int):
    ready = context.Event()   # set once the worker serves
    proc = context.Process(target=_worker_main,
                           args=(*args, f"worker {index + 1}/{workers}", ready),
                           name=f"featurestore-worker-{index + 1}", daemon=False)
    proc.start()
    proc.ready = ready
    return proc


def _stop(procs) -> None:
    for proc in procs:
        if proc.is_alive():
            proc.terminate()  # SIGTERM: the worker stops gracefully
    deadline = time.monotonic() + STOP_TIMEOUT_S
    for proc in procs:
        proc.join(max(0.0, deadline - time.monotonic()))
        if proc.is_alive():
            proc.kill()
            proc.join()


def _worker_main(manifest_path: str, store, host: str, port: int, options,
                 name: str, ready) -> None:
    import asyncio

    from serving import logs, server

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    _stop_with_parent()
    logs.configure(options.log_format)
    asyncio.run(server.serve_until_signalled(manifest_path, store, host, port, options,
                                             worker=name, on_ready=ready.set))


def _stop_with_parent() -> None:
    """SIGTERM this worker when its parent is gone (killed with SIGKILL, it
    could not stop its workers), so that no orphan keeps serving the port."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _export_metrics(host: str, port: int, metrics_dir: str):
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=metrics_dir)
    http, _ = start_http_server(port, addr=host, registry=registry)
    return http
