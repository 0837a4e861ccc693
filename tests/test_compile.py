"""`featurestore compile`: every backend's artifacts for the example repos,
pinned byte for byte in tests/golden/compile/<repo>/ (refresh with
`pytest --update-golden` after an intended change, and review the diff)."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import dsl
from featurestore import compile as artifacts_mod
from featurestore import config
from featurestore.backends import duckdb_sql
from featurestore.cli import main as cli

HERE = Path(__file__).parent
GOLDEN = HERE / "golden" / "compile"
REPOS = {
    "shop": HERE.parent / "featurestore" / "templates" / "repo",   # what `init` scaffolds
    "streaming": HERE / "example_repos" / "streaming",
    "language": HERE / "example_repos" / "language",
}


def _artifacts(repo: Path) -> dict[str, str]:
    result = dsl.compile_repo(repo)
    assert result.ok, result.render()
    return artifacts_mod.artifacts(result.plan, config.load(repo).project)


@pytest.mark.parametrize("name", sorted(REPOS))
def test_artifacts_match_golden_files(name, request):
    files = _artifacts(REPOS[name])
    folder = GOLDEN / name
    if request.config.getoption("--update-golden"):
        shutil.rmtree(folder, ignore_errors=True)
        for rel, text in files.items():
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            (folder / rel).write_text(text, encoding="utf-8")
    held = {p.relative_to(folder).as_posix(): p.read_text(encoding="utf-8")
            for p in folder.rglob("*") if p.is_file()}
    assert sorted(held) == sorted(files), "artifacts added or removed: run --update-golden"
    for rel, text in files.items():
        assert text == held[rel], f"{name}/{rel} changed: run --update-golden and review"


def test_every_backend_has_artifacts():
    files = _artifacts(REPOS["language"])
    assert {"plan.txt", "redis/layout.txt", "feast/entities.yaml", "feast/sources.yaml",
            "feast/views.yaml", "feast/services.yaml"} <= set(files)
    assert {f"duckdb/{v}.sql" for v in ("user_orders", "user_profile", "user_embedding",
                                        "item_interest")} <= set(files)


def test_artifacts_are_deterministic_and_machine_free():
    first = _artifacts(REPOS["language"])
    assert _artifacts(REPOS["language"]) == first
    text = "\n".join(first.values())
    assert str(HERE.parent) not in text and "created_timestamp" not in text


def test_feast_artifacts_use_names_not_numbers():
    views = _artifacts(REPOS["language"])["feast/views.yaml"]
    assert "value_type: FLOAT_LIST" in views and "value_type: 11" not in views


def test_layout_sql_changes_only_whitespace():
    sql = ("SELECT a, 'x FROM y' AS s FROM (SELECT * FROM t WHERE b) "
           "QUALIFY row_number() OVER (PARTITION BY a ORDER BY c) = 1 ORDER BY a")
    laid = duckdb_sql.layout_sql(sql)
    assert " ".join(laid.split()) == sql
    assert laid.splitlines() == [
        "SELECT a, 'x FROM y' AS s",
        "FROM (SELECT *",
        "  FROM t",
        "  WHERE b)",
        "QUALIFY row_number() OVER (PARTITION BY a ORDER BY c) = 1",
        "ORDER BY a",
    ]


def test_cli_compile_writes_the_artifacts(tmp_path, capsys):
    repo = tmp_path / "streaming"
    shutil.copytree(REPOS["streaming"], repo)
    assert cli(["compile", "--repo", str(repo)]) == 0
    out = repo / ".featurestore" / "compiled"
    assert (out / "plan.txt").read_text() == (GOLDEN / "streaming" / "plan.txt").read_text()
    assert "artifacts to" in capsys.readouterr().out
    (repo / "stale").mkdir()
    assert cli(["compile", "--repo", str(repo), "--out", str(repo / "features")]) == 1
    assert cli(["compile", "--repo", str(repo)]) == 0   # its own folder is rewritten


def test_compile_is_each_backends_artifacts():
    """compile.py knows no backend's internals: its files are the plan's and
    those of each backend's `artifacts(plan, project)`, none claimed twice."""
    result = dsl.compile_repo(REPOS["streaming"])
    project = config.load(REPOS["streaming"]).project
    files = artifacts_mod.artifacts(result.plan, project)
    by_backend = [backend(result.plan, project) for backend in artifacts_mod.BACKENDS]
    assert sum(len(b) for b in by_backend) + 1 == len(files)
    assert {"plan.txt": result.plan.render()} | {k: v for b in by_backend for k, v in b.items()} \
        == files
    from streaming import flink_sql
    assert flink_sql.artifacts in artifacts_mod.BACKENDS
    assert list(flink_sql.artifacts(result.plan, project)) == ["flink/job.sql"]


def test_write_takes_text_and_bytes(tmp_path):
    artifacts_mod.write({"a/b.txt": "é\n", "c.bin": b"\x00\xff"}, tmp_path / "out")
    assert (tmp_path / "out" / "a" / "b.txt").read_text(encoding="utf-8") == "é\n"
    assert (tmp_path / "out" / "c.bin").read_bytes() == b"\x00\xff"
