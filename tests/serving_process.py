"""`featurestore serve` as a process of its own, for the tests that need a
real server process (signals, logs, memory): started on a repo, waited for
until its health says SERVING, terminated afterwards with its output kept."""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time

import grpc

from serving.client import FeatureClient


class Served:
    def __init__(self, proc: subprocess.Popen, target: str):
        self.proc, self.target = proc, target
        self.output = ""     # what it printed, once it stopped


@contextlib.contextmanager
def serving(repo, port: int, *args: str, timeout_s: float = 60.0):
    """Yield a Served `featurestore serve --repo REPO` on 127.0.0.1:PORT
    (extra `args` appended) once it answers health checks SERVING."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "featurestore.cli", "serve", "--repo",
                             str(repo), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, env=env, text=True)
    served = Served(proc, f"127.0.0.1:{port}")
    try:
        deadline = time.monotonic() + timeout_s
        with FeatureClient(served.target) as client:
            while True:
                assert proc.poll() is None, f"serve exited with {proc.returncode}"
                assert time.monotonic() < deadline, "serve did not answer in time"
                try:
                    if client.health() == "SERVING":
                        break
                except grpc.RpcError:
                    pass
                time.sleep(0.2)
        yield served
    finally:
        proc.terminate()
        served.output = proc.communicate(timeout=20)[0]
