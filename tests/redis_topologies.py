"""Real multi-process Redis setups on loopback for the tests: a Redis Cluster
of masters and replicas, and a master with a replica watched by Sentinel.
Each process is a `redis-server` on a free port (`featurestore.redis_local`)."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import redis

from featurestore import redis_client, redis_local

NODE_TIMEOUT_MS = 2000   # a master silent this long is failed over by its replica (not
# less: on a busy 2-core machine a node may be starved for a second)


def _wait(condition, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            got = condition()
        except (redis.RedisError, OSError):
            got = None
        if got:
            return got
        time.sleep(0.05)
    raise TimeoutError(f"{what} within {timeout_s} s")


class LocalCluster:
    """`masters` masters with `replicas` replicas each, made a cluster by
    `redis-cli --cluster create`."""

    def __init__(self, dir: Path, masters: int = 3, replicas: int = 1):
        self.dir = Path(dir)
        self.nodes: list[redis_local.LocalRedis] = []
        for i in range(masters * (1 + replicas)):
            self.nodes.append(self._start(self.dir / f"node{i}"))
        subprocess.run([shutil.which("redis-cli"), "--cluster", "create",
                        *(f"127.0.0.1:{n.port}" for n in self.nodes),
                        "--cluster-replicas", str(replicas), "--cluster-yes"],
                       check=True, capture_output=True, timeout=60)
        self.wait_ok()

    @staticmethod
    def _start(dir: Path, port: int | None = None) -> redis_local.LocalRedis:
        bus = dir / "bus.port"   # the cluster bus: a free port of its own, kept on restarts
        if not bus.exists():
            dir.mkdir(parents=True, exist_ok=True)
            bus.write_text(str(redis_local.free_port()))
        return redis_local.start(dir, port=port, args=[
            "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
            "--cluster-port", bus.read_text(),
            "--cluster-node-timeout", str(NODE_TIMEOUT_MS), "--save", ""])

    @property
    def connection_string(self) -> str:
        """Feast's spelling of the seed nodes (two of them)."""
        return ",".join(f"127.0.0.1:{n.port}" for n in self.nodes[:2])

    @property
    def target(self) -> redis_client.RedisTarget:
        return redis_client.parse("redis_cluster", None, self.connection_string)

    def client(self, node: redis_local.LocalRedis) -> redis.Redis:
        return redis.Redis(port=node.port, socket_timeout=2)

    def masters(self) -> list[redis_local.LocalRedis]:
        """The nodes that are masters now, by a node that answers."""
        for node in self.nodes:
            try:
                with self.client(node) as r:
                    text = r.execute_command("CLUSTER", "NODES")
            except (redis.RedisError, OSError):
                continue
            text = text.decode() if isinstance(text, bytes) else text
            ports = set()
            for line in text.splitlines():
                fields = line.split()
                if "master" in fields[2] and "fail" not in fields[2]:
                    ports.add(int(fields[1].split("@")[0].rpartition(":")[2]))
            return [n for n in self.nodes if n.port in ports]
        raise RuntimeError("no node of the cluster answers")

    def ok(self) -> bool:
        """Every live node says cluster_state:ok, and every live replica
        is in sync with its master."""
        for node in self.nodes:
            if not node.alive():
                continue
            with self.client(node) as r:
                info = r.execute_command("CLUSTER", "INFO")
                info = info.decode() if isinstance(info, bytes) else info
                if "cluster_state:ok" not in info:
                    return False
                replication = r.info("replication")
                if replication["role"] != "master" and \
                        replication.get("master_link_status") != "up":
                    return False
        return True

    def wait_ok(self, timeout_s: float = 30.0) -> None:
        _wait(self.ok, timeout_s, "the cluster did not report cluster_state:ok")

    def flush(self) -> None:
        for node in self.nodes:
            if node.alive():
                with self.client(node) as r:
                    if r.info("replication")["role"] == "master":
                        r.flushall()

    def kill(self, node: redis_local.LocalRedis) -> None:
        """SIGKILL, as a crashed host."""
        try:
            os.kill(node.pid, signal.SIGKILL)
            os.waitpid(node.pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass

    def restart(self, node: redis_local.LocalRedis) -> None:
        """Start a killed node again on its port: it rejoins (as a replica
        when its slots were failed over)."""
        i = self.nodes.index(node)
        self.nodes[i] = self._start(node.dir, node.port)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


class LocalSentinel:
    """A master, its replica and one sentinel watching them as `master_name`."""

    master_name = "featurestore"

    def __init__(self, dir: Path):
        self.dir = Path(dir)
        self.master = redis_local.start(self.dir / "master")
        self.replica = redis_local.start(self.dir / "replica", args=[
            "--replicaof", "127.0.0.1", str(self.master.port)])
        port = redis_local.free_port()
        conf = self.dir / "sentinel" / "sentinel.conf"
        conf.parent.mkdir(parents=True, exist_ok=True)
        conf.write_text(
            f"port {port}\nbind 127.0.0.1\ndir {conf.parent}\n"
            f"logfile {conf.parent / 'sentinel.log'}\n"
            f"sentinel monitor {self.master_name} 127.0.0.1 {self.master.port} 1\n"
            f"sentinel down-after-milliseconds {self.master_name} 1000\n"
            f"sentinel failover-timeout {self.master_name} 5000\n")
        self._sentinel = subprocess.Popen([shutil.which("redis-server"), str(conf), "--sentinel"],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.sentinel_port = port
        _wait(lambda: self.replica_synced(), 20, "the replica did not sync")
        _wait(lambda: self.master_address() is not None, 20, "the sentinel did not answer")

    @property
    def target(self) -> redis_client.RedisTarget:
        return redis_client.parse("redis_sentinel", None, f"127.0.0.1:{self.sentinel_port}",
                                  self.master_name)

    def replica_synced(self) -> bool:
        with redis.Redis(port=self.replica.port, socket_timeout=1) as r:
            return r.info("replication").get("master_link_status") == "up"

    def master_address(self) -> tuple[str, int] | None:
        with redis.Redis(port=self.sentinel_port, socket_timeout=1) as r:
            got = r.execute_command("SENTINEL", "get-master-addr-by-name", self.master_name)
        return None if not got else (got[0].decode() if isinstance(got[0], bytes) else got[0],
                                     int(got[1]))

    def wait_failover(self, timeout_s: float = 30.0) -> None:
        _wait(lambda: self.master_address() == ("127.0.0.1", self.replica.port), timeout_s,
              "the sentinel did not promote the replica")

    def stop(self) -> None:
        self._sentinel.terminate()
        try:
            self._sentinel.wait(10)
        except subprocess.TimeoutExpired:
            self._sentinel.kill()
        for node in (self.master, self.replica):
            node.stop()
