"""`featurestore fmt`: one canonical layout, idempotent, comments kept, and
never a change of meaning (the compiled plan is identical before and after)."""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dsl import compile_files, compile_repo
from dsl.format import format_text
from featurestore.cli import main as cli

HERE = Path(__file__).parent
REPOS = [HERE.parent / "featurestore" / "templates" / "repo",
         *sorted((HERE / "example_repos").iterdir())]
FILES = sorted(p for repo in REPOS for p in repo.rglob("*.feat"))
CASES = sorted(p for p in (HERE / "dsl_cases").glob("*.feat"))


def _comments(text: str) -> list[str]:
    return re.findall(r"#[^\n]*", re.sub(r'"([^"\\\n]|\\.)*"', '""', text))


def _meaning(files: dict[str, str]):
    result = compile_files(files)
    return result.plan, [(d.file, d.code, d.message) for d in result.diagnostics]


@pytest.mark.parametrize("path", FILES + CASES, ids=lambda p: p.name)
def test_formatting_is_idempotent_and_keeps_meaning_and_comments(path):
    text = path.read_text()
    formatted = format_text(path.name, text)
    if formatted is None:       # a syntax-error case: nothing to format
        assert path.name.startswith("syntax_")
        return
    assert format_text(path.name, formatted) == formatted
    assert [c.rstrip() for c in _comments(formatted)] == [c.rstrip() for c in _comments(text)]
    assert _meaning({path.name: formatted}) == _meaning({path.name: text})


@pytest.mark.parametrize("repo", REPOS, ids=lambda p: p.name)
def test_fmt_on_a_repo_keeps_the_plan(repo, tmp_path):
    copy = tmp_path / repo.name
    shutil.copytree(repo, copy)
    before = compile_repo(copy).plan
    for path in (copy / "features").rglob("*.feat"):   # undo the layout first
        path.write_text(re.sub(r"(?m)^ +", "", path.read_text()))
    assert cli(["fmt", "--repo", str(copy)]) == 0
    assert compile_repo(copy).plan == before
    assert cli(["fmt", "--check", "--repo", str(copy)]) == 0


def test_example_repos_are_formatted():
    for path in FILES:
        assert format_text(path.name, path.read_text()) == path.read_text(), path


def test_the_canonical_layout():
    text = """\
# shop
import "lib.feat"
entity   user{key user_id:string}   # who
view v{entity user
from purchases where(amount>0)and not(paid)


tile 5m features{a=count()over 1h # rows
long_name=sum(amount)where category=="x"over 1d,7d
x = (1 + 2) * 3 - (4 - 5) # arithmetic
y=-(-amount)
z = case when paid then 1 else 0 end}
tags{b:"2",a:"1"}}
service s v2{v.*,v.a}
"""
    assert format_text("f.feat", text) == """\
# shop
import "lib.feat"

entity user { key user_id: string }  # who

view v {
    entity user
    from purchases where amount > 0 and not paid

    tile 5m
    features {
        a         = count()                           over 1h  # rows
        long_name = sum(amount) where category == "x" over 1d, 7d
        x         = (1 + 2) * 3 - (4 - 5)  # arithmetic
        y         = -(-amount)
        z         = case when paid then 1 else 0 end
    }
    tags { b: "2", a: "1" }
}

service s v2 { v.*, v.a }
"""


def test_long_lines_split():
    names = ", ".join(f"column_number_{i}: int64" for i in range(8))
    text = f"source s {{ schema {{ {names} }} }}"
    assert format_text("f.feat", text).splitlines()[1:4] == [
        "    schema {", "        column_number_0: int64,", "        column_number_1: int64,"]


def test_fmt_check_reports_and_changes_nothing(tmp_path, capsys):
    repo = tmp_path / "r"
    shutil.copytree(REPOS[1], repo)
    feat = next((repo / "features").rglob("*.feat"))
    feat.write_text(feat.read_text().replace("    ", "  "))
    before = feat.read_text()
    assert cli(["fmt", "--check", "--repo", str(repo)]) == 1
    assert feat.read_text() == before and "would reformat" in capsys.readouterr().out
    feat.write_text(before + "\nview broken {")
    assert cli(["fmt", "--repo", str(repo)]) == 1
    assert "syntax errors" in capsys.readouterr().err
    feat.write_bytes(b"entity \xff {}")
    assert cli(["fmt", "--repo", str(repo)]) == 1


# Mutations of valid files: whatever still parses formats to the same meaning.
SEEDS = [p.read_text() for p in FILES]
PIECES = ["(", ")", "not ", "-", " + 1", "# c\n", "\n\n", "  ", "==", " and paid", ",", "{", "}",
          " over 1h, 2h", " where amount > 0", "cast(", " as int64)", "null", '"s"', "\n"]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(SEEDS), st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 6),
                                                  st.sampled_from(PIECES)), max_size=3))
def test_fuzz_formatting_never_changes_meaning(seed, edits):
    text = seed
    for pos, length, insert in edits:
        pos %= len(text) + 1
        text = text[:pos] + insert + text[pos + length:]
    formatted = format_text("f.feat", text)
    if formatted is None:
        return
    assert format_text("f.feat", formatted) == formatted
    assert _meaning({"f.feat": formatted}) == _meaning({"f.feat": text})
