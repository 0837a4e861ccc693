"""The language beyond the basics: stream and batch connectors, composite
keys, several windows, versioned services, lists, imports, and the plan each
gives (the contract the engines read)."""
from __future__ import annotations

from pathlib import Path

import pytest

from dsl import compile_files, compile_repo

BASE = """
entity user { key user_id: string }
entity user_item { key user_id: string, item_id: int64 }
source purchases {
    batch parquet "data/p/*.parquet"
    timestamp event_time
    schema { user_id: string, item_id: int64, amount: float64, category: string,
             vec: list<float32>, event_time: timestamp }
}
"""


def plan_of(text: str, base: str = BASE):
    result = compile_files({"features/a.feat": base + text})
    assert result.ok, result.render()
    return result.plan


# ---------------------------------------------------------------- sources
@pytest.mark.parametrize("connector, kind, format_, path, options", [
    ('stream files "data/in/" format json', "stream", "files", "data/in/", (("format", "json"),)),
    ('stream kafka topic "purchases" servers "host:9092" format json', "stream", "kafka",
     "purchases", (("format", "json"), ("servers", "host:9092"))),
    ('stream kafka servers "h:1" format csv start latest group "g" topic "t"', "stream", "kafka",
     "t", (("format", "csv"), ("group", "g"), ("servers", "h:1"), ("start", "latest"))),
    ("stream datagen rows_per_second 1000", "stream", "datagen", "", (("rows_per_second", "1000"),)),
    ("stream datagen", "stream", "datagen", "", ()),
    ('batch parquet "data/x/*.parquet"', "batch", "parquet", "data/x/*.parquet", ()),
    ('batch csv "data/x.csv" delimiter ";" header false', "batch", "csv", "data/x.csv",
     (("delimiter", ";"), ("header", "false"))),
    ('batch table "main.events" database "w.duckdb"', "batch", "table", "main.events",
     (("database", "w.duckdb"),)),
    ("batch query \"select * from read_json('x.json')\"", "batch", "query",
     "select * from read_json('x.json')", ()),
])
def test_connectors_give_the_plan_source(connector, kind, format_, path, options):
    text = f"source s {{ {connector} timestamp ts schema {{ user_id: string, ts: timestamp }} }}"
    source = plan_of(text).source("s")
    assert (source.kind, source.format, source.path, source.options) == \
        (kind, format_, path, options)
    assert source.lateness_us is None


def test_stream_lateness():
    text = """source s { stream files "in/" format json timestamp ts lateness 10m
                         schema { user_id: string, ts: timestamp } }
              source z { stream files "in/" format json timestamp ts lateness 1s
                         schema { user_id: string, ts: timestamp } }"""
    plan = plan_of(text)
    assert plan.source("s").lateness_us == 600_000_000 and plan.source("z").lateness_us == 1_000_000


def test_stream_view_within_its_ttl():
    text = """source s { stream files "in/" format json timestamp ts
                         schema { user_id: string, ts: timestamp } }
              view v { entity user from s tile 5m ttl 7d
                       features { n = count() over 1h, 7d  m = count() } }"""
    view = plan_of(text).view("v")
    assert [a.window_us for a in view.aggregations] == [3_600_000_000, 7 * 86_400_000_000, None]


# ---------------------------------------------------------------- views
def test_several_windows_make_one_feature_each():
    text = """view v { entity user from purchases tile 1h features {
        spend = sum(amount) where amount > 1 over 1h, 1d, 7d
        n = count() over 2h } }"""
    view = plan_of(text).view("v")
    assert view.feature_names == ("spend_1h", "spend_1d", "spend_7d", "n")
    assert {a.where is not None for a in view.aggregations[:3]} == {True}
    assert view.aggregations[2].window_us == 7 * 86_400_000_000


def test_composite_keys():
    text = "view v { entity user_item from purchases tile 1h features { n = count() over 1d } }"
    plan = plan_of(text)
    assert plan.entity("user_item").keys == (("user_id", "string"), ("item_id", "int64"))
    assert plan.view("v").keys == (("user_id", "string"), ("item_id", "int64"))


def test_lists_are_typed_and_row_features_may_hold_them():
    text = """view v { entity user from purchases tile 1h features {
        vec = vec
        dims = length(vec)
        last_vec = last(vec) over 1d
        has_vec = vec is not null } }"""
    result = compile_files({"a.feat": BASE + text})
    # last() is checked in full; at most the engines' support is missing
    assert [d.code for d in result.diagnostics] in ([], ["E404"])
    view = plan_of(text.replace("last_vec = last(vec) over 1d", "")).view("v")
    assert [f.type for f in view.row_features] == ["list<float32>", "int64", "bool"]


@pytest.mark.parametrize("function, type_", [("first", "string"), ("last", "string"),
                                             ("count_distinct", "int64"), ("stddev", "float64"),
                                             ("variance", "float64")])
def test_later_aggregations_are_typed(function, type_, monkeypatch):
    from dsl import checker

    monkeypatch.setattr(checker, "SUPPORTED_AGGREGATIONS",
                        checker.SUPPORTED_AGGREGATIONS | {function})
    arg = "amount" if function in ("stddev", "variance") else "category"
    text = f"view v {{ entity user from purchases tile 1h features {{ f = {function}({arg}) over 1d }} }}"
    assert plan_of(text).view("v").feature_type("f") == type_


def test_docs_reach_the_plan():
    text = """view v { entity user from purchases owner "o@x" description "d" tags { a: "1" }
                       features { x = amount } }
              service s v3 { owner "team" tags { b: "2" } v.x }"""
    plan = plan_of(text)
    assert (plan.view("v").owner, plan.view("v").description, plan.view("v").tags) == \
        ("o@x", "d", (("a", "1"),))
    service = plan.service("s")
    assert (service.version, service.ref, service.owner, service.tags) == \
        (3, "s:v3", "team", (("b", "2"),))


def test_service_versions_are_separate_services_in_number_order():
    text = """view v { entity user from purchases features { x = amount  y = category } }
              service fraud v10 { v.* }
              service fraud v2 { v.x }
              service fraud { v.y }"""
    services = plan_of(text).services
    assert [(s.ref, s.features) for s in services] == [
        ("fraud", (("v", "y"),)), ("fraud:v2", (("v", "x"),)),
        ("fraud:v10", (("v", "x"), ("v", "y")))]


# ---------------------------------------------------------------- imports
def test_imports_add_files_from_elsewhere_once():
    files = {"features/views.feat": 'import "../lib/base.feat"\nimport "../lib/./base.feat"\n'
                                    "view v { entity user from purchases features { x = amount } }"}
    loaded = []

    def load(path):
        loaded.append(path)
        return (path, BASE) if path == "lib/base.feat" else None

    result = compile_files(files, load)
    assert result.ok, result.render()
    assert loaded == ["lib/base.feat"]


def test_diagnostics_in_an_imported_file_name_it():
    files = {"features/views.feat": 'import "../lib/base.feat"'}
    result = compile_files(files, lambda p: (p, "entity user { key id: strin }"))
    [d] = result.diagnostics
    assert (d.file, d.code, d.line) == ("lib/base.feat", "E301", 1)


def test_compile_repo_follows_imports_outside_features(tmp_path):
    (tmp_path / "features").mkdir()
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "base.feat").write_text(BASE)
    (tmp_path / "features" / "v.feat").write_text(
        'import "../shared/base.feat"\nview v { entity user from purchases features { x = amount } }')
    (tmp_path / "features" / "w.feat").write_text(
        'import "../../' + tmp_path.name + '/shared/base.feat"\n')   # the same file, spelt otherwise
    result = compile_repo(tmp_path)
    assert result.ok, result.render()
    assert [v.name for v in result.plan.views] == ["v"]


def test_a_missing_import_is_reported_at_the_import(tmp_path):
    (tmp_path / "features").mkdir()
    (tmp_path / "features" / "base.feat").write_text(BASE)
    (tmp_path / "features" / "v.feat").write_text('import "bsae.feat"\n')
    [d] = compile_repo(tmp_path).diagnostics
    assert (d.code, d.file, d.hint) == ("E217", "features/v.feat", "did you mean 'base.feat'?")


def test_the_example_repos_compile():
    for repo in (Path(__file__).parent / "example_repos").iterdir():
        result = compile_repo(repo)
        assert result.ok and not result.diagnostics, result.render()
