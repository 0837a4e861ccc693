"""Shared fixtures: a real Redis for the whole session, cleaned between tests."""
from __future__ import annotations

from dataclasses import dataclass

import prometheus_client  # noqa: F401  (before feast: see below)
import pytest
import redis

# Importing feast sets PROMETHEUS_MULTIPROC_DIR for its own server, and
# prometheus_client picks its value store when first imported: imported
# here first, the in-process servers of the tests keep per-object values
# (a `featurestore serve` process imports no feast; its workers set the
# variable themselves before they start).

from featurestore import redis_client, redis_local


def _docker_redis():
    """A Redis container when a Docker engine answers; None otherwise."""
    try:
        import docker
        docker.from_env().ping()
    except Exception:
        return None
    from testcontainers.redis import RedisContainer
    container = RedisContainer("redis:7")
    container.start()
    return container


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """A real redis-server for the session: testcontainers when a Docker engine
    exists, the local `redis-server` binary on a free port otherwise."""
    container = _docker_redis()
    if container is not None:
        host = container.get_container_host_ip()
        port = container.get_exposed_port(6379)
        yield f"redis://{host}:{port}/0"
        container.stop()
        return
    server = redis_local.start(tmp_path_factory.mktemp("redis"))
    yield server.url
    server.stop()


@pytest.fixture
def redis_url(redis_server):
    """The session's Redis, emptied before each test."""
    r = redis.Redis.from_url(redis_server)
    r.flushall()
    r.close()
    return redis_server


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory):
    """A Redis Cluster of 3 masters and 3 replicas on free loopback ports,
    for the session (`tests.redis_topologies.LocalCluster`)."""
    from tests.redis_topologies import LocalCluster

    cluster = LocalCluster(tmp_path_factory.mktemp("cluster"))
    yield cluster
    cluster.stop()


@dataclass
class Store:
    """An emptied online store of one kind: its target and a client that reads it."""
    kind: str
    target: redis_client.RedisTarget
    client: object


@pytest.fixture(params=[redis_client.SINGLE, redis_client.CLUSTER])
def store(request):
    """The session's single node, then the session's cluster, each emptied."""
    if request.param == redis_client.CLUSTER:
        cluster = request.getfixturevalue("redis_cluster")
        cluster.flush()
        target = cluster.target
    else:
        target = redis_client.single(request.getfixturevalue("redis_url"))
    client = redis_client.sync_client(target)
    yield Store(request.param, target, client)
    client.close()


def pytest_addoption(parser):
    parser.addoption("--update-golden", action="store_true",
                     help="rewrite golden files from the current output")
