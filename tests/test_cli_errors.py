"""Every failure a user meets is one line with what to do, exit code 1, and no
traceback (unless --debug): a taken port, a missing extra, a server that is
down or refuses a request, a bug. And the repo's private Redis keeps its
port across `down`, so a running server recovers."""
from __future__ import annotations

import asyncio
import socket
import subprocess
import sys

import pytest

from featurestore import config, redis_local
from featurestore import cli as cli_module
from featurestore.cli import main as cli
from featurestore.manifest import Manifest
from serving.client import FeatureClient
from serving.server import start_server
from tests.repos import template_repo, use_redis


def run(*args, cwd=None, block: str | None = None):
    """The CLI in a fresh interpreter; `block` makes importing that module
    fail, as on an install without the extra that brings it."""
    code = "import sys\n"
    if block:
        code += f"sys.modules[{block!r}] = None\n"
    code += "from featurestore.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def one_line(p: subprocess.CompletedProcess) -> str:
    assert p.returncode == 1, (p.stdout, p.stderr)
    assert "Traceback" not in p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), p.stderr
    return lines[0]


@pytest.fixture
def shop(tmp_path):
    """The template repo with a little data, applied."""
    root = template_repo(tmp_path / "shop", "--events", "2000", "--days", "2")
    assert cli(["apply", "--repo", str(root)]) == 0
    return root


@pytest.fixture
def shop_on_redis(shop, redis_url):
    use_redis(shop, redis_url)
    assert config.load(shop).redis_target.url == redis_url
    return shop


def test_a_taken_port(shop_on_redis):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for workers in ("1", "2"):
            line = one_line(run("serve", "--port", str(port), "--workers", workers,
                                cwd=shop_on_redis))
            assert f"cannot serve on 127.0.0.1:{port}: Address already in use" in line
            assert "--port N" in line


@pytest.mark.parametrize("block, verb, extra", [
    ("lark", ["check"], "batch"),
    ("duckdb", ["materialize"], "batch"),
    ("feast", ["apply"], "batch"),
])
def test_a_missing_extra_names_it(shop, block, verb, extra):
    line = one_line(run(*verb, cwd=shop, block=block))
    assert f"needs the '{extra}' extra (missing module '{block}')" in line
    assert f"pip install 'featurestore[{extra}]'" in line


def test_get_without_target_on_a_client_only_install(shop):
    line = one_line(run("get", "--service", "fraud_v1", "--entity", "user_id=u1", cwd=shop,
                        block="yaml"))
    assert "pass --target HOST:PORT, or pip install 'featurestore[server]'" in line


def test_materialize_when_redis_is_down(shop):
    port = redis_local.free_port()
    use_redis(shop, f"redis://127.0.0.1:{port}/0")
    line = one_line(run("materialize", cwd=shop))
    assert f"error: Redis at redis://127.0.0.1:{port}/0 failed" in line
    assert "Connection refused" in line
    assert "run the same command again" in line


def test_get_when_no_server_listens(shop):
    port = redis_local.free_port()
    line = one_line(run("get", "--service", "fraud_v1", "--entity", "user_id=u1",
                        "--target", f"127.0.0.1:{port}", "--timeout", "2", cwd=shop))
    assert f"the feature server at 127.0.0.1:{port} answered UNAVAILABLE" in line
    assert "is `featurestore serve` running there?" in line
    assert "debug_error_string" not in line


async def test_get_shows_the_servers_message(shop_on_redis, redis_url):
    cfg = config.load(shop_on_redis)
    server = await start_server(Manifest.load(cfg.manifest_path), redis_url, port=0)
    try:
        p = await asyncio.get_running_loop().run_in_executor(None, lambda: run(
            "get", "--features", "user_spend:spend_2d", "--entity", "user_id=u1",
            "--target", f"127.0.0.1:{server.port}", cwd=shop_on_redis))
    finally:
        await server.stop(0)
    line = one_line(p)
    assert "answered INVALID_ARGUMENT: unknown feature 'user_spend:spend_2d'" in line
    assert "did you mean 'spend_1d'?" in line


def test_a_bug_is_one_line_and_its_traceback_is_behind_debug(tmp_path, monkeypatch, capsys):
    def broken(args):
        raise KeyError("internal")

    monkeypatch.setattr(cli_module, "cmd_init", broken)
    assert cli(["init", str(tmp_path / "x")]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "error: unexpected KeyError: 'internal'" in err and "--debug" in err
    assert cli(["--debug", "init", str(tmp_path / "x")]) == 1
    assert "Traceback" in capsys.readouterr().err
    assert cli(["init", str(tmp_path / "x"), "--debug"]) == 1
    assert "Traceback" in capsys.readouterr().err


async def test_the_private_redis_keeps_its_port_and_a_server_recovers(shop):
    loop = asyncio.get_running_loop()
    repo = ["--repo", str(shop)]
    cfg = config.load(shop)
    try:
        assert await loop.run_in_executor(None, cli, ["materialize", *repo]) == 0
        first = redis_local.find_running(cfg.local_redis_dir)
        server = await start_server(Manifest.load(cfg.manifest_path), first.url, port=0)

        def get():
            with FeatureClient(f"127.0.0.1:{server.port}", timeout=3) as client:
                return client.get_online_features(
                    service="fraud_v1", entities={"user_id": ["user_000001", "user_000002"]}).to_dict()

        try:
            before = await loop.run_in_executor(None, get)
            assert before["country"] != [None, None]
            assert cli(["down", *repo]) == 0
            assert redis_local.find_running(cfg.local_redis_dir) is None
            assert await loop.run_in_executor(None, cli, ["materialize", *repo]) == 0
            again = redis_local.find_running(cfg.local_redis_dir)
            assert again.port == first.port and again.pid != first.pid
            assert await loop.run_in_executor(None, get) == before
        finally:
            await server.stop(0)
    finally:
        cli(["down", *repo])
