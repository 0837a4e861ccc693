"""The CLI as a user meets it: exit codes, messages, never a traceback."""
from __future__ import annotations

import subprocess
import sys

import pytest

from featurestore.cli import main as cli


def run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "featurestore.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def shop(tmp_path):
    assert cli(["init", str(tmp_path / "shop")]) == 0
    return tmp_path / "shop"


def test_init_scaffolds_a_repo_that_checks(shop, capsys):
    assert {p.name for p in shop.iterdir()} >= {"featurestore.yaml", "features", "generate_data.py"}
    assert cli(["check", "--repo", str(shop)]) == 0
    assert "2 views" in capsys.readouterr().out
    assert cli(["init", str(shop)]) == 1


def test_a_broken_definition_prints_diagnostics_and_exits_1(shop):
    feat = shop / "features" / "shop.feat"
    feat.write_text(feat.read_text().replace("sum(amount)                 over 1d",
                                             "sum(amout) over 1d"))
    p = run("check", cwd=shop)
    assert p.returncode == 1
    assert "features/shop.feat:" in p.stderr and "unknown column 'amout'" in p.stderr
    assert "did you mean 'amount'?" in p.stderr and "Traceback" not in p.stderr


def test_outside_a_repo_is_a_clear_error(tmp_path):
    p = run("check", cwd=tmp_path)
    assert p.returncode == 1 and "featurestore init" in p.stderr and "Traceback" not in p.stderr


def test_plan_apply_plan(shop, capsys):
    assert cli(["plan", "--repo", str(shop)]) == 0
    assert "+ view user_spend" in capsys.readouterr().out
    assert cli(["apply", "--repo", str(shop)]) == 1   # apply checks the data: there is none
    assert "error[E601]: no file matches 'data/purchases/*.parquet'" in capsys.readouterr().err
    subprocess.run([sys.executable, "generate_data.py", "--events", "1000", "--days", "1"],
                   cwd=shop, check=True, capture_output=True)
    assert cli(["apply", "--repo", str(shop)]) == 0
    assert (shop / ".featurestore" / "manifest.json").exists()
    capsys.readouterr()
    assert cli(["plan", "--repo", str(shop)]) == 0
    assert "No changes" in capsys.readouterr().out
    feat = shop / "features" / "shop.feat"
    feat.write_text(feat.read_text().replace("over 1h", "over 2h"))
    assert cli(["plan", "--repo", str(shop)]) == 0
    out = capsys.readouterr().out
    assert "~ view user_spend" in out and "1 to update" in out


def test_materialize_before_apply_and_get_without_server_exit_1(shop, redis_url):
    (shop / "featurestore.yaml").write_text(f"project: shop\nonline_store:\n  url: {redis_url}\n")
    p = run("materialize", cwd=shop)
    assert p.returncode == 1 and "featurestore apply" in p.stderr
    p = run("get", "--target", "127.0.0.1:1", "--timeout", "0.5", "--service", "fraud_v1",
            "--entity", "user_id=u1", cwd=shop)
    assert p.returncode == 1 and "Traceback" not in p.stderr and "error:" in p.stderr
