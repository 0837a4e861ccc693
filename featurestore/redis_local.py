"""A private `redis-server` process on a free port, for repos with no Redis URL
configured and for tests.

The server is started from the OS package's binary, bound to 127.0.0.1, and
keeps its files (pid, log, snapshot) in a folder of its own.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

INSTALL_HINT = ("redis-server was not found on PATH: install it (Debian/Ubuntu: "
                "`sudo apt-get install redis-server`, macOS: `brew install redis`) "
                "or set online_store.url in featurestore.yaml")


class RedisNotInstalled(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ping(port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@dataclass
class LocalRedis:
    """A running private redis-server; `url` is what clients connect to."""
    port: int
    dir: Path
    pid: int

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def alive(self) -> bool:
        return _ping(self.port)

    def stop(self, timeout: float = 5.0) -> None:
        try:
            os.kill(self.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                return
            try:  # reap it when it is our child
                if os.waitpid(self.pid, os.WNOHANG)[0]:
                    return
            except ChildProcessError:
                pass
            time.sleep(0.02)
        os.kill(self.pid, signal.SIGKILL)


def start(dir: str | Path, port: int | None = None, persist: bool = False,
          daemonize: bool = False, wait_s: float = 10.0,
          args: Sequence[str] = ()) -> LocalRedis:
    """Start redis-server with its files in `dir`. `persist` keeps an RDB
    snapshot so data survives a restart; `daemonize` lets it outlive us;
    `args`: more options (`--cluster-enabled yes`, `--replicaof H P`)."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RedisNotInstalled(INSTALL_HINT)
    d = Path(dir).resolve()
    d.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(d),
            "--pidfile", str(d / "redis.pid"), "--logfile", str(d / "redis.log"),
            "--appendonly", "no", "--protected-mode", "yes",
            "--save", "60 1" if persist else "", "--dbfilename", "dump.rdb",
            "--daemonize", "yes" if daemonize else "no", *args]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=daemonize)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if _ping(port):
            pid = proc.pid
            if daemonize:
                proc.wait()
                pid = int((d / "redis.pid").read_text())
            return LocalRedis(port, d, pid)
        if not daemonize and proc.poll() is not None:
            break
        time.sleep(0.02)
    proc.kill()
    log = (d / "redis.log").read_text()[-2000:] if (d / "redis.log").exists() else ""
    raise RuntimeError(f"redis-server did not start on port {port}:\n{log}")


def last_port(dir: str | Path) -> int | None:
    """The port the server with files in `dir` last listened on."""
    try:
        return int((Path(dir) / "redis.port").read_text())
    except (OSError, ValueError):
        return None


def port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def find_running(dir: str | Path) -> LocalRedis | None:
    """The daemonized server whose files are in `dir`, when it still answers."""
    d = Path(dir)
    try:
        pid = int((d / "redis.pid").read_text())
        port = int((d / "redis.port").read_text())
    except (OSError, ValueError):
        return None
    r = LocalRedis(port, d.resolve(), pid)
    return r if r.alive() else None
