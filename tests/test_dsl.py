"""The feature-definition language: example -> exact plan, bad input -> exact
diagnostics (tests/dsl_cases/), rendering, repo loading, and fuzzing."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dsl import CODES, CompileResult, Diagnostic, compile_files, compile_repo
from dsl.checker import AGGREGATIONS, SUPPORTED_AGGREGATIONS

CASES = Path(__file__).parent / "dsl_cases"
PRELUDE = "_prelude.feat"

EXAMPLE = """\
# comment
entity user {
    key user_id: string
    description "A buyer"            # optional
}

source purchases {
    batch parquet "data/purchases/*.parquet"    # path relative to the repo root; glob allowed
    timestamp event_time
    schema { user_id: string, item_id: int64, amount: float64, category: string, event_time: timestamp }
}

view user_spend {
    entity user
    from purchases where amount > 0          # filter optional
    tile 5m
    ttl 30d                                  # optional
    description "Spend of a user"            # optional
    tags { team: "risk", tier: "1" }         # optional
    features {
        purchases_1h  = count()                      over 1h
        spend_1d      = sum(amount)                  over 1d
        big_1d        = count() where amount >= 100  over 1d
        avg_spend_7d  = avg(amount)                  over 7d
        max_spend_7d  = max(amount)                  over 7d
        min_spend_7d  = min(amount)                  over 7d
        spend_all     = sum(amount)                  # no over: all history within ttl
        last_amount   = amount                       # row-level: expression on the latest row
        amount_x2     = amount * 2
        is_big        = amount >= 100 and category != "toys"
    }
}

service fraud_v1 { user_spend.*, user_spend.purchases_1h }
"""

EXAMPLE_PLAN = """\
entity user [user_id: string]
  description 'A buyer'
source purchases (batch parquet 'data/purchases/*.parquet', timestamp event_time) \
[user_id: string, item_id: int64, amount: float64, category: string, event_time: timestamp]
view user_spend (entity user [user_id: string], source purchases)
  filter (amount > 0)
  tile 5m
  ttl 30d
  row last_amount: float64 = amount
  row amount_x2: float64 = (amount * 2)
  row is_big: bool = ((amount >= 100) and (category != "toys"))
  agg purchases_1h: int64 = count() over 1h
  agg spend_1d: float64 = sum(amount) over 1d
  agg big_1d: int64 = count() where (amount >= 100) over 1d
  agg avg_spend_7d: float64 = avg(amount) over 1w
  agg max_spend_7d: float64 = max(amount) over 1w
  agg min_spend_7d: float64 = min(amount) over 1w
  agg spend_all: float64 = sum(amount)
  description 'Spend of a user'
  tags team=risk, tier=1
service fraud_v1 [user_spend.purchases_1h, user_spend.spend_1d, user_spend.big_1d, \
user_spend.avg_spend_7d, user_spend.max_spend_7d, user_spend.min_spend_7d, user_spend.spend_all, \
user_spend.last_amount, user_spend.amount_x2, user_spend.is_big]
"""


def compile_one(text: str, path: str = "features/test.feat") -> CompileResult:
    return compile_files({path: text})


def codes(result: CompileResult) -> list[str]:
    return [d.code for d in result.diagnostics]


# ---------------------------------------------------------------- the example
def test_example_compiles_to_the_expected_plan():
    result = compile_one(EXAMPLE, "features/spend.feat")
    assert result.ok
    assert result.plan.render() == EXAMPLE_PLAN
    # `user_spend.*` already lists purchases_1h: kept once, with a warning.
    assert [(d.code, d.line, d.col) for d in result.diagnostics] == [("W501", 34, 34)]


def test_example_plan_objects():
    plan = compile_one(EXAMPLE).plan
    view = plan.view("user_spend")
    assert view.keys == (("user_id", "string"),)
    assert view.tile_us == 5 * 60_000_000 and view.ttl_us == 30 * 86_400_000_000
    assert view.tags == (("team", "risk"), ("tier", "1"))
    assert plan.entity("user").description == "A buyer"
    spend = view.aggregations[1]
    assert (spend.function, spend.window_us, spend.type) == ("sum", 86_400_000_000, "float64")
    assert view.aggregations[0].arg is None
    assert plan.service("fraud_v1").features[0] == ("user_spend", "purchases_1h")


def test_plan_is_independent_of_file_order():
    first, second = EXAMPLE.split("view user_spend")
    files = {"features/a.feat": first, "features/b.feat": "view user_spend" + second}
    forward = compile_files(files)
    backward = compile_files(dict(reversed(list(files.items()))))
    assert forward.plan == backward.plan
    assert forward.plan.render() == EXAMPLE_PLAN
    assert forward.diagnostics == backward.diagnostics


def test_definitions_are_sorted_by_name():
    text = EXAMPLE + """
entity account { key account_id: string }
view a_view { entity user from purchases features { x = amount } }
service a_service { a_view.x }
"""
    plan = compile_one(text).plan
    assert [e.name for e in plan.entities] == ["account", "user"]
    assert [v.name for v in plan.views] == ["a_view", "user_spend"]
    assert [s.name for s in plan.services] == ["a_service", "fraud_v1"]


# ---------------------------------------------------------------- types
SOURCE = """
entity user { key user_id: string }
source purchases {
    batch parquet "data/p/*.parquet"
    timestamp event_time
    schema { user_id: string, quantity: int64, amount: float64, category: string,
             paid: bool, event_time: timestamp }
}
"""


@pytest.mark.parametrize("feature, rendered, type_", [
    ("count() over 1h", "count() over 1h", "int64"),
    ("count(category) over 1h", "count(category) over 1h", "int64"),
    ("sum(quantity) over 1h", "sum(quantity) over 1h", "int64"),
    ("sum(amount)", "sum(amount)", "float64"),
    ("avg(quantity) over 1d", "avg(quantity) over 1d", "float64"),
    ("min(category) over 1d", "min(category) over 1d", "string"),
    ("max(event_time) over 1d", "max(event_time) over 1d", "timestamp"),
    ("count() where paid over 1h", "count() where paid over 1h", "int64"),
    ("quantity + 1", "(quantity + 1)", "int64"),
    ("quantity * 1.5", "(quantity * 1.5)", "float64"),
    ("quantity / 2", "(quantity / 2)", "float64"),
    ("quantity % 2", "(quantity % 2)", "int64"),
    ("-amount", "(-amount)", "float64"),
    ('category == "x"', '(category = "x")', "bool"),
    ("not paid or quantity >= 2", "((not paid) or (quantity >= 2))", "bool"),
    ("1 + 2 * 3 - 4", "((1 + (2 * 3)) - 4)", "int64"),
    ("(1 + 2) * 3", "((1 + 2) * 3)", "int64"),
    ('"a\\"b"', '"a\\"b"', "string"),
    ("event_time", "event_time", "timestamp"),
    ("amount is null", "is_null(amount)", "bool"),
    ("amount is not null", "is_not_null(amount)", "bool"),
])
def test_feature_types(feature, rendered, type_):
    text = SOURCE + f"view v {{ entity user from purchases tile 1h features {{ f = {feature} }} }}"
    result = compile_one(text)
    assert result.ok, result.render()
    line = next(x for x in result.plan.render().splitlines() if " f: " in x)
    assert line.split(" = ", 1)[1] == rendered
    assert result.plan.view("v").feature_type("f") == type_


def test_string_escapes():
    text = SOURCE + 'view v { entity user from purchases features { f = "q\\"b\\\\n\\t\\u00e9" } }'
    expr = compile_one(text).plan.view("v").row_features[0].expr
    assert expr.value == 'q"b\\n\té'


@pytest.mark.parametrize("name", sorted(AGGREGATIONS))
def test_every_aggregation_is_typed_and_gated_in_one_place(name, monkeypatch):
    text = SOURCE + f"view v {{ entity user from purchases tile 1h features {{ f = {name}(amount) }} }}"
    result = compile_one(text)
    assert result.ok == (name in SUPPORTED_AGGREGATIONS)
    monkeypatch.setattr("dsl.checker.SUPPORTED_AGGREGATIONS", SUPPORTED_AGGREGATIONS - {name})
    result = compile_one(text)
    assert codes(result) == ["E404"]
    assert result.diagnostics[0].message == f"aggregation '{name}' is not supported yet"


def test_row_only_view_needs_no_tile_and_gets_the_default():
    text = SOURCE + "view v { entity user from purchases features { f = amount } }"
    view = compile_one(text).plan.view("v")
    assert view.tile_us == 5 * 60_000_000 and view.ttl_us is None and view.aggregations == ()


def test_keywords_stay_usable_as_names():
    text = """
entity user { key user_id: string }
source events {
    batch parquet "data/e/*.parquet"
    timestamp timestamp
    schema { user_id: string, timestamp: timestamp, key: string, tile: int64 }
}
view v {
    entity user
    from events where tile > 0
    features {
        key = key
        tile = tile + 1
        timestamp = timestamp
        description = key
    }
}
"""
    result = compile_one(text)
    assert result.ok, result.render()
    assert result.plan.view("v").feature_names == ("key", "tile", "timestamp", "description")


# ---------------------------------------------------------------- bad input
def _expectations(text: str) -> list[tuple[str, str, str, str | None]]:
    """(code, line:col, message, hint) from a case file's header."""
    out: list[list] = []
    for line in text.splitlines():
        if m := re.match(r"# expect: (\S+) (\d+:\d+) (.*)$", line):
            out.append([m.group(1), m.group(2), m.group(3), None])
        elif m := re.match(r"# hint: (.*)$", line):
            out[-1][3] = m.group(1)
    return [tuple(x) for x in out]


CASE_FILES = sorted(p.name for p in CASES.glob("*.feat") if p.name != PRELUDE)


@pytest.mark.parametrize("name", CASE_FILES)
def test_bad_input_case(name):
    text = (CASES / name).read_text()
    expected = _expectations(text)
    assert expected, f"{name} has no '# expect:' line"
    result = compile_files({PRELUDE: (CASES / PRELUDE).read_text(), name: text})
    got = [(d.code, f"{d.line}:{d.col}", d.message, d.hint) for d in result.diagnostics]
    assert got == expected, "\n" + result.render()
    assert all(d.file == name for d in result.diagnostics)
    assert (result.plan is None) == any(c.startswith("E") for c, *_ in expected)


def test_there_are_many_cases_and_every_code_has_one():
    assert len(CASE_FILES) >= 40
    covered = {c for name in CASE_FILES for c, *_ in _expectations((CASES / name).read_text())}
    repo_level = {"E001", "E002"}  # tested with compile_repo below
    data_level = {c for c in CODES if c.startswith("E6")}  # tests/test_schema_check.py
    assert set(CODES) - repo_level - data_level <= covered
    assert covered <= set(CODES)


def test_all_errors_of_a_file_come_in_one_run():
    text = (CASES / "many_errors_one_run.feat").read_text()
    result = compile_files({PRELUDE: (CASES / PRELUDE).read_text(), "f.feat": text})
    assert codes(result) == ["E202", "E303", "E204", "E305", "E402", "E304"]
    assert result.plan is None and not result.ok


def test_rendering_with_caret_is_exact():
    text = """\
entity user { key user_id: string }
source purchases {
    batch parquet "data/purchases/*.parquet"
    timestamp event_time
    schema { user_id: string, amount: float64, event_time: timestamp }
}
view user_spend {
    entity user
    from purchases
    tile 5m
    features {
        spend_1d = sum(amout) over 1d
    }
}
"""
    result = compile_one(text, "features/spend.feat")
    [diagnostic] = result.diagnostics
    assert str(diagnostic) == (
        "features/spend.feat:12:24: error[E204]: unknown column 'amout' in source 'purchases'\n"
        "   12 |         spend_1d = sum(amout) over 1d\n"
        "      |                        ^^^^^\n"
        "  hint: did you mean 'amount'?")
    assert diagnostic.render({"features/spend.feat": text}) == str(diagnostic)
    assert (diagnostic.col, diagnostic.end_col, diagnostic.severity) == (24, 29, "error")
    assert result.render() == str(diagnostic)


def test_diagnostic_without_source_renders_its_header():
    d = Diagnostic("E204", "error", "unknown column 'x'", "f.feat", 3, 5, 6)
    assert str(d) == "f.feat:3:5: error[E204]: unknown column 'x'"
    assert d.title == CODES["E204"][1]


def test_duplicates_across_files_point_at_both():
    result = compile_files({
        "features/a.feat": "entity user { key user_id: string }",
        "features/b.feat": "\nentity user { key id: string }",
    })
    [d] = result.diagnostics
    assert (d.code, d.file, d.line, d.col) == ("E201", "features/b.feat", 2, 8)
    assert d.hint == "first defined at features/a.feat:1:8"


def test_a_broken_file_does_not_stop_the_others():
    result = compile_files({
        "features/a.feat": "view broken { features { a = } }",
        "features/b.feat": SOURCE + "view ok { entity user from purchases features { b = amout } }",
        "features/c.feat": "service s { broken.a, ok.b }",
    })
    # The service's reference to the unparsable view is not reported again.
    assert [(d.file, d.code) for d in result.diagnostics] == [
        ("features/a.feat", "E101"), ("features/b.feat", "E204")]


def test_warnings_do_not_block_the_plan():
    result = compile_one(SOURCE.replace('"data/p/*.parquet"', '"/abs/p/*.parquet"'))
    assert result.ok and result.plan is not None and codes(result) == ["W502"]
    assert result.warnings == result.diagnostics and result.errors == []


# ---------------------------------------------------------------- repo
def test_compile_repo_reads_features_recursively(tmp_path):
    first, second = EXAMPLE.split("view user_spend")
    (tmp_path / "features" / "spend").mkdir(parents=True)
    (tmp_path / "features" / "base.feat").write_text(first)
    (tmp_path / "features" / "spend" / "views.feat").write_text("view user_spend" + second)
    (tmp_path / "features" / "notes.txt").write_text("not a feature file {")
    result = compile_repo(tmp_path)
    assert result.plan.render() == EXAMPLE_PLAN
    assert [d.file for d in result.diagnostics] == ["features/spend/views.feat"]


def test_compile_repo_without_features(tmp_path):
    result = compile_repo(tmp_path)
    assert codes(result) == ["E001"] and result.plan is None


def test_compile_repo_reports_unreadable_files(tmp_path):
    (tmp_path / "features").mkdir()
    (tmp_path / "features" / "ok.feat").write_text("entity user { key user_id: string }")
    (tmp_path / "features" / "bad.feat").write_bytes(b"entity \xff {}")
    result = compile_repo(tmp_path)
    assert [(d.code, d.file) for d in result.diagnostics] == [("E002", "features/bad.feat")]
    assert result.plan is None


# ---------------------------------------------------------------- robustness
def test_large_repo_compiles():
    views = []
    for v in range(100):
        feats = "\n".join(f"        f{i} = sum(amount) where amount > {i} over {i + 1}h"
                          for i in range(10))
        views.append(f"view v{v} {{\n    entity user\n    from purchases\n    tile 1h\n"
                     f"    features {{\n{feats}\n    }}\n}}\n")
    result = compile_one(SOURCE + "\n".join(views))
    assert result.ok and len(result.plan.views) == 100
    assert sum(len(v.aggregations) for v in result.plan.views) == 1000


@pytest.mark.parametrize("text", [
    "(" * 5000, "-" * 5000 + "1", "view v { features { a = " + "(" * 3000 + "1" + ")" * 3000 + " } }",
    "view v { features { a = " + "not " * 1000 + "true } }",
    "view v { features { a = " + " + ".join(["amount"] * 2000) + " } }",
    "view v {" * 500, '"' * 1000, "}" * 1000, "\x00\x0c\u2028",
])
def test_pathological_input_gives_diagnostics(text):
    result = compile_one(text)
    assert not result.ok and result.plan is None
    assert all(isinstance(str(d), str) for d in result.diagnostics)


DSL_PIECES = ["entity", "source", "view", "service", "key", "from", "where", "over", "tile", "ttl",
              "features", "schema", "timestamp", "batch", "parquet", "tags", "description",
              "count()", "sum(amount)", "{", "}", "(", ")", "=", "==", ":", ",", ".", "*", "5m",
              "5", "1.5", '"s"', '"', "\\", "#", "\n", " ", "and", "not", "null", "true", "<",
              "list<float32>", "user", "amount", "@", "-", "\t", "\r", "import", "case", "when",
              "then", "else", "end", "cast(", "as", "is", "lateness", "stream", "kafka", "files",
              "datagen", "topic", "owner", "v2", "1h, 1d", "if(", "coalesce(", "year(", "%"]


def _mutate(text: str, edits: list[tuple[int, int, str]]) -> str:
    for pos, length, insert in edits:
        pos %= len(text) + 1
        text = text[:pos] + insert + text[pos + length:]
    return text


FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _compiles_to_diagnostics(text: str) -> None:
    result = compile_files({"features/fuzz.feat": text})
    assert isinstance(result, CompileResult)
    assert (result.plan is None) == (not result.ok)
    for d in result.diagnostics:
        assert d.code in CODES and d.line >= 1 and d.col >= 1
        str(d)


@FUZZ
@given(st.text(alphabet='{}()<>=!.,:*/%+-#"\\ \n\tabcdefiklmnoprstuvwy_0159', max_size=120))
def test_fuzz_character_soup_never_raises(text):
    _compiles_to_diagnostics(text)


@FUZZ
@given(st.lists(st.sampled_from(DSL_PIECES), max_size=60).map(" ".join))
def test_fuzz_token_sequences_never_raise(text):
    _compiles_to_diagnostics(text)


@FUZZ
@given(st.lists(st.tuples(st.integers(0, len(EXAMPLE)), st.integers(0, 8),
                          st.sampled_from(DSL_PIECES + [""])), min_size=1, max_size=4))
def test_fuzz_mutated_example_never_raises(edits):
    _compiles_to_diagnostics(_mutate(EXAMPLE, edits))


@FUZZ
@given(st.text(max_size=200))
def test_fuzz_arbitrary_text_never_raises(text):
    _compiles_to_diagnostics(text)


VALID_FILES = sorted((Path(__file__).parent / "example_repos").rglob("*.feat"))


@FUZZ
@given(st.sampled_from(VALID_FILES),
       st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 8),
                          st.sampled_from(DSL_PIECES + [""])), min_size=1, max_size=4))
def test_fuzz_mutated_valid_files_never_raise(path, edits):
    _compiles_to_diagnostics(_mutate(path.read_text(), edits))
