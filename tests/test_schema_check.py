"""Data checked against its declared schema, early (issue 10).

Each mistake a new user makes on the example repo is reproduced on real
files, read by real DuckDB, materialized into a real Redis:
`check --data` and `apply` report it at the `.feat` line that declares what
the data contradicts, `apply` then changes nothing, and `materialize`
refuses before writing any view. Data the declared type accepts is cast on
read and stored exactly as data of the declared type would be."""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import redis

from dsl import compile_files
from featurestore import schema_check
from featurestore.cli import main as cli
from featurestore.errors import DataError
from featurestore.materialize import materialize
from tests.repos import template_repo

ROOT_DIR = Path(__file__).resolve().parent.parent
END_US = 1_767_268_800_000_000    # 2026-01-01T12:00:00Z


@pytest.fixture(scope="module")
def shop_with_data(tmp_path_factory):
    """The repo `featurestore init` scaffolds, with its generated data (small)."""
    return template_repo(tmp_path_factory.mktemp("shop") / "shop", "--events", "3000",
                         "--days", "1", "--end", "2026-01-01T12:00:00")


@pytest.fixture
def shop(shop_with_data, tmp_path, redis_url):
    root = tmp_path / "shop"
    shutil.copytree(shop_with_data, root)
    (root / "featurestore.yaml").write_text(f"project: shop\nonline_store:\n  url: {redis_url}\n")
    return root


def _edit(root: Path, old: str, new: str) -> None:
    feat = root / "features" / "shop.feat"
    text = feat.read_text()
    assert old in text, old
    feat.write_text(text.replace(old, new))


def _line_of(root: Path, text: str) -> int:
    lines = (root / "features" / "shop.feat").read_text().split("\n")
    return next(i for i, line in enumerate(lines, 1) if text in line)


def _check_data(root: Path, capsys) -> str:
    """`featurestore check --data`: exit 1, and what it printed to stderr."""
    assert cli(["check", "--repo", str(root)]) == 0   # plain check never reads data
    capsys.readouterr()
    assert cli(["check", "--data", "--repo", str(root)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


# ------------------------------------------------------------------ each mistake
def test_int64_over_strings_is_reported_at_the_column(shop, capsys):
    _edit(shop, "category: string", "category: int64")
    err = _check_data(shop, capsys)
    line = _line_of(shop, "category: int64")
    assert f"features/shop.feat:{line}:9: error[E603]: column 'category' is declared int64, " \
           "but data/purchases/*.parquet holds VARCHAR" in err
    assert f"{line:>5} |         category: int64," in err and "^^^^^^^^^^^^^^^" in err
    assert "the data's type is VARCHAR; int64 accepts BIGINT, INTEGER" in err
    assert "declare `category: string`" in err


def test_int64_over_floats_is_reported_not_truncated(shop, capsys):
    _edit(shop, "amount: float64", "amount: int64")
    err = _check_data(shop, capsys)
    line = _line_of(shop, "amount: int64")
    assert f"features/shop.feat:{line}:9: error[E603]: column 'amount' is declared int64, " \
           "but data/purchases/*.parquet holds DOUBLE" in err
    assert "declare `amount: float64`" in err


def test_export_refuses_data_that_does_not_fit_instead_of_rounding(shop, capsys, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    labels = tmp_path / "labels.parquet"
    pq.write_table(pa.table({"user_id": ["user_000001"], "event_timestamp": pa.array(
        [1767268800000000], pa.int64()).cast(pa.timestamp("us", "UTC"))}), labels)
    _edit(shop, "amount: float64", "amount: int64")
    assert cli(["export", "--repo", str(shop), "--labels", str(labels), "--service",
                "fraud_v1", "--out", str(tmp_path / "train.parquet")]) == 1
    err = capsys.readouterr().err
    assert "error[E603]: column 'amount' is declared int64" in err and "Traceback" not in err
    assert not (tmp_path / "train.parquet").exists()


def test_a_path_that_matches_no_file_is_reported_at_the_batch_clause(shop, capsys):
    _edit(shop, '"data/purchases/*.parquet"', '"data/purchase/*.parquet"')
    err = _check_data(shop, capsys)
    line = _line_of(shop, "data/purchase/")
    assert f"features/shop.feat:{line}:5: error[E601]: no file matches " \
           "'data/purchase/*.parquet' (source 'purchases')" in err
    assert "hint: did you mean 'data/purchases/*.parquet'?" in err


def test_a_column_missing_from_the_data_is_reported_at_the_column(shop, capsys):
    _edit(shop, "age: int64", "years: int64")
    _edit(shop, "age     = age", "age     = years")
    err = _check_data(shop, capsys)
    line = _line_of(shop, "years: int64")
    col = (shop / "features" / "shop.feat").read_text().split("\n")[line - 1].index("years") + 1
    assert f"features/shop.feat:{line}:{col}: error[E602]: column 'years' of source 'profiles' " \
           "is not in data/profiles.parquet" in err
    assert "hint: the data has user_id, country, age, updated_at" in err


def test_every_mistake_is_reported_in_one_run(shop, capsys):
    _edit(shop, "category: string", "category: int64")
    _edit(shop, '"data/profiles.parquet"', '"data/profile.parquet"')
    err = _check_data(shop, capsys)
    assert "error[E603]" in err and "error[E601]" in err
    assert "2 errors in the data of the sources" in err


def _compile(text: str):
    result = compile_files({"f.feat": text})
    assert result.ok, result.render()
    return result.plan


def _codes(plan, root) -> list[tuple[str, int, int, str]]:
    return [(d.code, d.line, d.col, d.message) for d in schema_check.check_sources(plan, root)]


def test_csv_sources_are_read_with_materialize_options(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "buys.csv").write_text(
        "user_id;amount;category;ts\n"
        "u1;12.5;toys;2026-01-01 10:00:00\nu2;3;books;2026-01-01 11:00:00\n")
    plan = _compile('''entity user { key user_id: string }
source buys {
    batch csv "data/*.csv" delimiter ";" header true
    timestamp ts
    schema { user_id: string, amount: int64, category: int64, ts: timestamp }
}
view v { entity user from buys features { a = amount } }
''')
    assert _codes(plan, tmp_path) == [
        ("E603", 5, 31, "column 'amount' is declared int64, but data/*.csv holds DOUBLE"),
        ("E603", 5, 46, "column 'category' is declared int64, but data/*.csv holds VARCHAR")]


def test_table_and_query_sources_are_described_by_duckdb(tmp_path):
    (tmp_path / "data").mkdir()
    con = duckdb.connect(str(tmp_path / "data" / "shop.duckdb"))
    con.execute("CREATE TABLE buys AS SELECT 'u1' AS user_id, 2.5 AS amount, "
                "TIMESTAMP '2026-01-01' AS ts")
    con.close()
    pq.write_table(pa.table({"user_id": ["u1"], "n": ["many"],
                             "ts": pa.array([END_US], pa.timestamp("us", "UTC"))}),
                   tmp_path / "data" / "n.parquet")
    plan = _compile(f'''entity user {{ key user_id: string }}
source from_table {{
    batch table "buys" database "data/shop.duckdb"
    timestamp ts
    schema {{ user_id: string, amount: int64, ts: timestamp }}
}}
source from_query {{
    batch query "select * from read_parquet('{tmp_path}/data/n.parquet')"
    timestamp ts
    schema {{ user_id: string, n: int64, ts: timestamp }}
}}
source no_table {{
    batch table "buyz" database "data/shop.duckdb"
    timestamp ts
    schema {{ user_id: string, ts: timestamp }}
}}
source no_database {{
    batch table "buys" database "data/shops.duckdb"
    timestamp ts
    schema {{ user_id: string, ts: timestamp }}
}}
view a {{ entity user from from_table features {{ x = amount }} }}
view b {{ entity user from from_query features {{ x = n }} }}
''')
    got = _codes(plan, tmp_path)
    assert got[:2] == [
        ("E603", 5, 31, "column 'amount' is declared int64, but table 'buys' in "
                        "data/shop.duckdb holds DECIMAL(2,1)"),
        ("E603", 10, 31, "column 'n' is declared int64, but the query holds VARCHAR")]
    assert got[2][:3] == ("E604", 13, 5)
    assert "cannot read the data of source 'no_table'" in got[2][3]
    assert got[3] == ("E601", 18, 5, "no database file matches 'data/shops.duckdb' "
                                     "(source 'no_database')")


def test_a_plan_built_in_code_names_the_source(tmp_path):
    from tests.test_materialize import PLAN

    (tmp_path / "data").mkdir()
    with pytest.raises(DataError, match=r"<source buys>:1:1: error\[E601\]: no file matches "
                                        r"'data/\*\.parquet'"):
        schema_check.require_valid_data(PLAN, tmp_path)


# ------------------------------------------------------------------ apply and materialize
def test_apply_refuses_a_mismatch_and_changes_nothing(shop, capsys):
    assert cli(["apply", "--repo", str(shop)]) == 0
    state = shop / ".featurestore"
    before = {p: p.read_bytes() for p in state.rglob("*") if p.is_file()}
    _edit(shop, "category: string", "category: int64")
    _edit(shop, "ttl 30d", "ttl 7d")   # a change apply would otherwise write
    capsys.readouterr()
    assert cli(["apply", "--repo", str(shop)]) == 1
    err = capsys.readouterr().err
    assert "error[E603]: column 'category' is declared int64" in err and "Traceback" not in err
    assert {p: p.read_bytes() for p in state.rglob("*") if p.is_file()} == before


def test_apply_of_a_fresh_repo_with_a_mismatch_writes_no_registry(shop, capsys):
    _edit(shop, "amount: float64", "amount: int64")
    assert cli(["apply", "--repo", str(shop)]) == 1
    assert "error[E603]" in capsys.readouterr().err
    assert not (shop / ".featurestore" / "manifest.json").exists()
    assert not (shop / ".featurestore" / "registry.db").exists()


def _dump(url: str) -> dict:
    r = redis.Redis.from_url(url)
    return {k: r.hgetall(k) if r.type(k) == b"hash" else r.get(k) for k in r.keys("*")}


def test_materialize_with_one_broken_view_writes_no_view(shop, redis_url, capsys):
    assert cli(["apply", "--repo", str(shop)]) == 0
    _edit(shop, "age: int64", "age: string")   # the profiles view breaks, purchases are fine
    r = redis.Redis.from_url(redis_url)
    assert r.dbsize() == 0
    capsys.readouterr()
    assert cli(["materialize", "--repo", str(shop), "--end", "2026-01-01T12:00:00"]) == 1
    err = capsys.readouterr().err
    assert "error[E603]: column 'age' is declared string, but data/profiles.parquet holds " \
           "BIGINT" in err and "Traceback" not in err
    assert r.dbsize() == 0 and r.keys("*") == []


def test_a_failed_materialize_leaves_earlier_values_untouched(shop, redis_url, capsys):
    assert cli(["apply", "--repo", str(shop)]) == 0
    assert cli(["materialize", "--repo", str(shop), "--end", "2026-01-01T12:00:00"]) == 0
    before = _dump(redis_url)
    assert len(before) > 100
    _edit(shop, '"data/profiles.parquet"', '"data/profile.parquet"')
    for run in (["materialize"], ["materialize", "--views", "user_spend,user_profile"]):
        capsys.readouterr()
        assert cli([*run, "--repo", str(shop), "--end", "2026-01-01T13:00:00"]) == 1
        assert "error[E601]: no file matches 'data/profile.parquet'" in capsys.readouterr().err
        assert _dump(redis_url) == before


# ------------------------------------------------------------------ what is accepted
def _typed_plan(declared: str, path: str = "data/x.parquet"):
    features = {"int64": "s = sum(x) over 1h\n sd = stddev(x) over 1h\n cd = count_distinct(x)"
                         " over 1h\n mn = min(x) over 1h",
                "float64": "s = sum(x) over 1h\n sd = stddev(x) over 1h\n mx = max(x) over 1h",
                "timestamp": "mx = max(x) over 1h\n f = first(x) over 1h"}[declared]
    return _compile(f'''entity e {{ key k: int64 }}
source s {{
    batch parquet "{path}" timestamp ts schema {{ k: int64, ts: timestamp, x: {declared} }}
}}
view agg {{ entity e from s tile 5m ttl 30d features {{ {features} }} }}
view row {{ entity e from s ttl 30d features {{ y = x
 z = x }} }}
''')


_CANONICAL = {"int64": "BIGINT", "float64": "DOUBLE", "timestamp": "TIMESTAMP"}
_VALUES = {"int64": ["3", "30000", "7", "NULL", "0"], "float64": ["3", "120", "0", "NULL", "7"],
           "timestamp": ["DATE '2026-01-01'", "DATE '2025-12-31'", "NULL", "DATE '2025-12-01'",
                         "DATE '2025-12-01'"]}


def _materialized(root: Path, url: str, declared: str, data_type: str, key_type: str) -> dict:
    redis.Redis.from_url(url).flushall()
    rows = " UNION ALL ".join(
        f"SELECT CAST({i % 2 + 1} AS {key_type}) AS k, TIMESTAMP '2026-01-01 11:30:00' + "
        f"INTERVAL {i} MINUTE AS ts, CAST({v} AS {data_type}) AS x"
        for i, v in enumerate(_VALUES[declared]))
    (root / "data").mkdir(parents=True, exist_ok=True)
    duckdb.execute(f"COPY ({rows}) TO '{root / 'data' / 'x.parquet'}'")
    materialize(_typed_plan(declared), root, "p", url, end_us=END_US)
    return _dump(url)


@pytest.mark.parametrize("declared, data_type, key_type", [
    ("int64", "INTEGER", "INTEGER"), ("int64", "SMALLINT", "UTINYINT"),
    ("int64", "UINTEGER", "BIGINT"), ("float64", "FLOAT", "BIGINT"),
    ("float64", "DECIMAL(9,2)", "BIGINT"), ("float64", "INTEGER", "BIGINT"),
    ("float64", "UBIGINT", "BIGINT"), ("timestamp", "DATE", "BIGINT"),
    ("timestamp", "TIMESTAMPTZ", "BIGINT"), ("timestamp", "TIMESTAMP_NS", "BIGINT")])
def test_accepted_types_are_stored_as_the_declared_type(tmp_path, redis_url, declared,
                                                        data_type, key_type):
    assert schema_check.accepts(declared, duckdb.sql(
        f"SELECT typeof(CAST(NULL AS {data_type}))").fetchall()[0][0])
    want = _materialized(tmp_path / "want", redis_url, declared, _CANONICAL[declared], "BIGINT")
    assert want
    got = _materialized(tmp_path / "got", redis_url, declared, data_type, key_type)
    assert got == want


def test_materialize_refuses_what_the_declared_type_does_not_accept(tmp_path, redis_url):
    (tmp_path / "data").mkdir()
    duckdb.execute(f"COPY (SELECT 1::BIGINT AS k, TIMESTAMP '2026-01-01 11:00:00' AS ts, "
                   f"2.5::DOUBLE AS x) TO '{tmp_path / 'data' / 'x.parquet'}'")
    with pytest.raises(DataError, match=r"f\.feat:3:\d+: error\[E603\]: column 'x' is declared "
                                        r"int64, but data/x\.parquet holds DOUBLE"):
        materialize(_typed_plan("int64"), tmp_path, "p", redis_url, end_us=END_US)
    assert redis.Redis.from_url(redis_url).dbsize() == 0


@pytest.mark.parametrize("declared, data_type, ok", [
    ("int64", "BIGINT", True), ("int64", "UBIGINT", False), ("int64", "HUGEINT", False),
    ("int64", "DOUBLE", False), ("int64", "DECIMAL(18,0)", False), ("int64", "VARCHAR", False),
    ("float64", "DECIMAL(38,10)", True), ("float64", "VARCHAR", False),
    ("string", "VARCHAR", True), ("string", "BIGINT", False), ("bool", "BOOLEAN", True),
    ("bool", "INTEGER", False), ("timestamp", "TIMESTAMP WITH TIME ZONE", True),
    ("timestamp", "VARCHAR", False), ("timestamp", "TIME", False),
    ("list<float32>", "FLOAT[]", True), ("list<float32>", "FLOAT[768]", True),
    ("list<float32>", "VARCHAR[]", False), ("list<int64>", "INTEGER[]", True),
    ("list<int64>", "BIGINT", False), ("float64", "FLOAT[]", False)])
def test_accepts(declared, data_type, ok):
    assert schema_check.accepts(declared, data_type) is ok


def test_the_reference_lists_exactly_what_each_type_accepts():
    text = (ROOT_DIR / "docs" / "reference.md").read_text()
    documented = dict(re.findall(r"^\| `(\w+)` \| ([A-Z_, ()]+?) \|", text, re.M))
    assert documented == {t: schema_check.accepted_text(t) for t in schema_check.ACCEPTED}


# ------------------------------------------------------------------ streams
def test_stream_fields_are_read_as_text_and_a_mistyped_one_is_invalid():
    """How the stream tells a wrong field from a missing one (the job itself
    runs in tests/test_streaming.py, on events with fields of wrong types)."""
    from streaming import flink_sql

    plan = _compile('''entity user { key user_id: string }
source events {
    stream files "data/events/" format json
    timestamp ts
    schema { user_id: string, n: int64, x: float64, ok: bool, ts: timestamp }
}
source fake {
    stream datagen rows_per_second 10
    timestamp ts
    schema { user_id: string, n: int64, ts: timestamp }
}
view v { entity user from events where x > 0 features { last_n = n } }
view w { entity user from fake features { last_n = n } }
''')
    events, fake = plan.source("events"), plan.source("fake")
    assert flink_sql.text_columns(events) == ["n", "x", "ok"]
    assert "`n` STRING" in flink_sql.source_ddl(events) and "`ts` TIMESTAMP_LTZ(6)" in \
        flink_sql.source_ddl(events)
    assert flink_sql.text_columns(fake) == [] and flink_sql.typed_source_sql(fake) is None
    assert "`n` BIGINT" in flink_sql.source_ddl(fake)
    typed = flink_sql.typed_source_sql(events)
    assert "REGEXP(NULLIF(`n`, ''), '^[+-]?[0-9]+$')" in typed and "AS `__mistyped`" in typed
    rows = flink_sql.view_rows_sql(plan.view("v"), events)
    assert rows.endswith("FROM `events__typed` WHERE (((`x` > CAST(0 AS BIGINT)) OR "
                         "(POWER(`x`, 1E0) <> `x`))) IS TRUE OR `__mistyped`)")
    assert "OR `__mistyped` THEN 'invalid'" in rows
    assert "`__mistyped`" not in flink_sql.view_rows_sql(plan.view("w"), fake)
