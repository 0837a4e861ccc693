"""DSL expressions -> DuckDB SQL: each case pairs an expression with the exact
SQL it compiles to and the value DuckDB computes on one known row."""
from __future__ import annotations

import datetime as dt
import math

import duckdb
import pytest

from dsl import compile_files
from featurestore.backends.duckdb_sql import expr_sql

SOURCE = """
entity user { key user_id: string }
source row {
    batch parquet "row.parquet"
    timestamp t
    schema { user_id: string, s: string, n: int64, x: float64, b: bool, t: timestamp,
             v: list<float32>, ns: string, nx: float64, txt: string }
}
"""

# The one row every expression is evaluated on.
ROW = """SELECT 'u1' AS user_id, ' Hello ' AS s, CAST(-7 AS BIGINT) AS n, CAST(2.5 AS DOUBLE) AS x,
         TRUE AS b, TIMESTAMP '2026-01-04 13:45:30' AS t, [0.5, 1.5]::FLOAT[] AS v,
         CAST(NULL AS VARCHAR) AS ns, CAST(NULL AS DOUBLE) AS nx, ' 42 ' AS txt"""

CASES = [
    # arithmetic and comparison
    ("n + 1", '("n" + 1)', -6),
    ("x * 2", '("x" * 2)', 5.0),
    ("n / 2", '(CAST("n" AS DOUBLE) / 2)', -3.5),
    ("n % 3", '("n" % 3)', -1),
    ("-x", '(-"x")', -2.5),
    ("n < 0 and not b", '(("n" < 0) AND (NOT "b"))', False),
    ("n == -7 or b", '(("n" = (-7)) OR "b")', True),
    ('s != "x"', "(\"s\" <> 'x')", True),
    ("1.5 + x", '(CAST(1.5 AS DOUBLE) + "x")', 4.0),
    # null
    ("ns is null", '("ns" IS NULL)', True),
    ("x is not null", '("x" IS NOT NULL)', True),
    ("coalesce(ns, s)", 'coalesce("ns", "s")', " Hello "),
    ("coalesce(nx, n, 0)", 'coalesce("nx", "n", 0)', -7.0),
    ("cast(null as string)", "CAST(NULL AS VARCHAR)", None),
    # case and if
    ('case when n > 0 then "pos" when n < 0 then "neg" else "zero" end',
     "(CASE WHEN (\"n\" > 0) THEN 'pos' WHEN (\"n\" < 0) THEN 'neg' ELSE 'zero' END)", "neg"),
    ("case when nx > 0 then 1 end", '(CASE WHEN ("nx" > 0) THEN 1 END)', None),
    ("if(b, x, 0)", '(CASE WHEN "b" THEN "x" ELSE 0 END)', 2.5),
    # numbers
    ("abs(n)", 'abs("n")', 7),
    ("round(x)", 'round("x")', 3.0),
    ("round(-x)", 'round((-"x"))', -3.0),
    ("round(x / 3, 2)", 'round((CAST("x" AS DOUBLE) / 3), 2)', 0.83),
    ("round(n, 1)", 'round("n", 1)', -7),
    # strings
    ("lower(s)", 'lower("s")', " hello "),
    ("upper(s)", 'upper("s")', " HELLO "),
    ("length(s)", 'length("s")', 7),
    ("length(v)", 'len("v")', 2),
    ('concat(s, "!", txt)', "(\"s\" || '!' || \"txt\")", " Hello ! 42 "),
    ('concat(s, ns)', '("s" || "ns")', None),
    # date parts (UTC)
    ("year(t)", 'year("t")', 2026),
    ("month(t)", 'month("t")', 1),
    ("day(t)", 'day("t")', 4),
    ("hour(t)", 'hour("t")', 13),
    ("minute(t)", 'minute("t")', 45),
    ("day_of_week(t)", 'isodow("t")', 7),
    # casts
    ("cast(n as float64)", 'CAST("n" AS DOUBLE)', -7.0),
    ("cast(x as int64)", 'TRY_CAST(trunc("x") AS BIGINT)', 2),
    ("cast(-x as int64)", 'TRY_CAST(trunc((-"x")) AS BIGINT)', -2),
    ("cast(txt as int64)", "(CASE WHEN regexp_full_match(trim(\"txt\"), '[+-]?[0-9]+') "
                           "THEN TRY_CAST(trim(\"txt\") AS BIGINT) END)", 42),
    ('cast("1.5" as int64)', "(CASE WHEN regexp_full_match(trim('1.5'), '[+-]?[0-9]+') "
                             "THEN TRY_CAST(trim('1.5') AS BIGINT) END)", None),
    ("cast(s as float64)", 'TRY_CAST(trim("s") AS DOUBLE)', None),
    ('cast(" TRUE " as bool)', "(CASE lower(trim(' TRUE ')) WHEN 'true' THEN TRUE "
                               "WHEN 'false' THEN FALSE END)", True),
    ("cast(n as bool)", '("n" <> 0)', True),
    ("cast(b as int64)", 'CAST("b" AS BIGINT)', 1),
    ("cast(n as string)", 'CAST("n" AS VARCHAR)', "-7"),
    ("cast(b as string)", 'CAST("b" AS VARCHAR)', "true"),
    ("cast(t as string)", 'CAST("t" AS VARCHAR)', "2026-01-04 13:45:30"),
    ('cast("2026-01-02 03:04:05" as timestamp)',
     "TRY_CAST(trim('2026-01-02 03:04:05') AS TIMESTAMP)", dt.datetime(2026, 1, 2, 3, 4, 5)),
    ('cast("soon" as timestamp)', "TRY_CAST(trim('soon') AS TIMESTAMP)", None),
    ("t > cast(\"2026-01-01\" as timestamp)",
     "(\"t\" > TRY_CAST(trim('2026-01-01') AS TIMESTAMP))", True),
    # lists pass through
    ("v", '"v"', [0.5, 1.5]),
    # strings with quotes stay literal
    ('"it\'s"', "'it''s'", "it's"),
]


def _expr(text: str):
    feat = SOURCE + f"view probe {{ entity user from row features {{ f = {text} }} }}"
    result = compile_files({"features/probe.feat": feat})
    assert result.ok, result.render()
    return result.plan.view("probe").row_features[0].expr


@pytest.fixture(scope="module")
def con():
    c = duckdb.connect()
    c.execute("SET TimeZone = 'UTC'")
    yield c
    c.close()


@pytest.mark.parametrize("dsl, sql, value", CASES, ids=[c[0] for c in CASES])
def test_expression_sql_and_value(con, dsl, sql, value):
    expr = _expr(dsl)
    assert expr_sql(expr) == sql
    [(got,)] = con.execute(f"SELECT {sql} FROM ({ROW})").fetchall()
    if isinstance(value, float) and got is not None:
        assert math.isclose(got, value, abs_tol=1e-9)
    else:
        assert got == value


def test_every_function_has_sql():
    from dsl.checker_expr import FUNCTIONS
    from featurestore.backends import duckdb_sql

    tested = {name for name in FUNCTIONS if any(f"{name}(" in dsl for dsl, _, _ in CASES)}
    assert tested == set(FUNCTIONS)
    assert set(FUNCTIONS) - {"if"} <= set(duckdb_sql._FUNCTIONS)
