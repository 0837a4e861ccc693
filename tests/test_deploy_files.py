"""docker-compose.yml and the images, read as files (no Docker engine here):
Kafka reachable from containers and the host, healthchecks where the
services have them, the Flink image the stream needs, pinned installs."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def test_compose_file():
    doc = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = doc["services"]
    assert set(services) == {"redis", "kafka", "jobmanager", "taskmanager", "server"}
    kafka = services["kafka"]["environment"]
    advertised = dict(part.split("://") for part in kafka["KAFKA_ADVERTISED_LISTENERS"].split(","))
    assert advertised == {"INTERNAL": "kafka:29092", "EXTERNAL": "localhost:9092"}
    assert services["kafka"]["ports"] == ["9092:9092"]
    for name in ("redis", "kafka", "server"):
        assert services[name]["healthcheck"]["test"][0] == "CMD", name
    assert services["jobmanager"]["build"]["dockerfile"] == "Dockerfile.flink"
    assert services["taskmanager"]["image"] == services["jobmanager"]["image"]
    assert services["server"]["depends_on"]["redis"]["condition"] == "service_healthy"


def test_the_server_healthcheck_command_is_python_that_runs():
    check = yaml.safe_load((ROOT / "docker-compose.yml").read_text())[
        "services"]["server"]["healthcheck"]["test"]
    assert check[:3] == ["CMD", "python", "-c"]
    compile(check[3], "healthcheck", "exec")   # valid Python
    # no server listens here: it exits non-zero rather than crashing on an import
    done = subprocess.run([sys.executable, "-c", check[3]], capture_output=True, text=True)
    assert done.returncode != 0 and "ModuleNotFoundError" not in done.stderr


def test_images_install_with_the_constraints():
    for name in ("Dockerfile", "Dockerfile.flink"):
        text = (ROOT / name).read_text()
        assert "-c .ci/constraints.txt" in text, name
    flink = (ROOT / "Dockerfile.flink").read_text()
    assert "FROM flink:2.3-java17" in flink and "python3.11" in flink
    assert "flink-sql-connector-kafka" in flink and "'.[streaming]'" in flink
