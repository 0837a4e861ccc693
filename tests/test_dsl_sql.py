"""One table for the language's expressions in every engine: each row pairs
a DSL expression with the SQL of each dialect (DuckDB for batch, Flink for
the stream: featurestore.backends.sql_dialect) and its values on the sample
rows below, and both engines must compute exactly those values (DuckDB in
process; Flink in one batch TableEnvironment for the whole table). A row
whose Flink SQL is `refused(...)` is one the stream refuses, by name.

Every function, operator and cast of the language has a row:
`test_every_function_operator_and_cast_has_a_row` fails when one is added
without. tests/test_unicode_case.py checks upper and lower on every code
point."""
from __future__ import annotations

import dataclasses
import datetime as dt
import math
import warnings
from pathlib import Path

import duckdb
import pytest

import dsl
from dsl import checker_expr, compile_files
from dsl.plan import Binary, Call, Case, Cast, Column, Literal, Unary
from featurestore.backends import unicode_case
from featurestore.backends.duckdb_sql import DUCKDB
from featurestore.backends.sql_dialect import Unsupported
from streaming import flink_sql
from streaming.flink_expr import FLINK

SCHEMA = (("s", "string"), ("n", "int64"), ("x", "float64"), ("b", "bool"), ("t", "timestamp"),
          ("v", "list<float32>"), ("ns", "string"), ("nx", "float64"), ("txt", "string"))
SOURCE = ("entity user { key user_id: string }\n"
          'source row { batch parquet "row.parquet" timestamp t schema { user_id: string, '
          + ", ".join(f"{c}: {t}" for c, t in SCHEMA) + " } }\n")
NAN, INF = math.nan, math.inf


def _us(text: str) -> int:
    """Epoch microseconds of a UTC time."""
    t = dt.datetime.fromisoformat(text).replace(tzinfo=dt.timezone.utc)
    return (t - dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)) // dt.timedelta(microseconds=1)


# The rows every expression is evaluated on: plain values; Unicode that case
# mapping in Java (ß, ﬃ, İ, final sigma) and DuckDB would disagree on, NaN, -0.0, a time
# just before 1970; empty and null values, the year 1; titlecase, Unicode 14 letters,
# a float that rounds differently in decimal text, and one that overflows x * 100.
SAMPLES = [
    dict(s=" Hello ", n=-7, x=2.5, b=True, t=_us("2026-01-04 13:45:30"), v=[0.5, 1.5],
         ns=None, nx=None, txt=" 42 "),
    dict(s="Straße ﬃ İ ΣΑΣ 𐐀", n=0, x=NAN, b=False, t=_us("1969-12-31 23:59:59.999999"), v=[],
         ns="ok", nx=-0.0, txt="1d"),
    dict(s="", n=3, x=-0.4, b=None, t=_us("0001-01-01 00:00:00"), v=None, ns="", nx=INF,
         txt=" -1.5e3 "),
    dict(s="ǅ ς σ ŉ ᾳ Ꟁ", n=12, x=0.285, b=True, t=_us("2024-02-29 23:59:00.5"), v=[2.5],
         ns=None, nx=1e308, txt="NaN"),
]


# ---------------------------------------------------------------- Flink's longer SQL
class refused(str):
    """The construct the stream names when it refuses an expression."""


def _f_us(c: str) -> str:
    return f"(EXTRACT(EPOCH FROM {c}) * 1000000 + EXTRACT(MICROSECOND FROM {c}))"


def _f_mod(sql: str, step: int) -> str:
    return f"MOD(MOD({sql}, {step}) + {step}, {step})"


_DAY = 86400000000
_MIDNIGHT = f"TO_TIMESTAMP_LTZ(({_f_us('`t`')} - {_f_mod(_f_us('`t`'), _DAY)}) / 1000, 3)"


def _f_round(y: str) -> str:
    return (f"(CASE WHEN {y} < 0 THEN (CASE WHEN CEIL({y}) - {y} >= 0.5E0 THEN CEIL({y}) - 1E0 "
            f"ELSE CEIL({y}) END) ELSE (CASE WHEN {y} - FLOOR({y}) >= 0.5E0 THEN FLOOR({y}) + 1E0 "
            f"ELSE FLOOR({y}) END) END)")


def _f_round_to(x: str, scale: str) -> str:
    y = f"({x} * {scale})"
    return (f"(CASE WHEN ABS({y}) < CAST('Infinity' AS DOUBLE) THEN {_f_round(y)} / {scale} "
            f"ELSE {x} END)")


def _f_case(function: str, sql: str) -> str:
    source, target = unicode_case.translation(function)
    return f"TRANSLATE({sql}, '{source}', '{target}')"


def _f_nan(c: str) -> str:
    return f"(POWER({c}, 1E0) <> {c})"


_F_FLOAT_TEXT = r"([+-]?([0-9]+[.]?[0-9]*|[.][0-9]+)([eE][+-]?[0-9]+)?|[+-]?Infinity|NaN)"
_D_FLOAT_TEXT = _F_FLOAT_TEXT
_I64 = "9.223372036854776E18"
_D2026 = dt.datetime(2026, 1, 2, 3, 4, 5)

# dsl, DuckDB SQL, Flink SQL (or refused(construct)), values on SAMPLES
CASES = [
    # arithmetic: `/` is always float64 (x / 0 is an infinity or NaN), x % 0 is null
    ("n + 1", '("n" + 1)', "(`n` + CAST(1 AS BIGINT))", (-6, 1, 4, 13)),
    ("x * 2", '("x" * 2)', "(`x` * CAST(2 AS BIGINT))", (5.0, NAN, -0.8, 0.57)),
    ("n - x", '("n" - "x")', "(`n` - `x`)", (-9.5, NAN, 3.4, 11.715)),
    ("n / 2", '(CAST("n" AS DOUBLE) / 2)', "(CAST(`n` AS DOUBLE) / CAST(2 AS BIGINT))",
     (-3.5, 0.0, 1.5, 6.0)),
    ("x / n", '(CAST("x" AS DOUBLE) / "n")', "(CAST(`x` AS DOUBLE) / `n`)",
     (-0.35714285714285715, NAN, -0.13333333333333333, 0.023749999999999997)),
    ("n / 0", '(CAST("n" AS DOUBLE) / 0)', "(CAST(`n` AS DOUBLE) / CAST(0 AS BIGINT))",
     (-INF, NAN, INF, INF)),
    ("n % 3", '("n" % 3)',
     "(CASE WHEN CAST(3 AS BIGINT) = 0 THEN NULL ELSE MOD(`n`, CAST(3 AS BIGINT)) END)",
     (-1, 0, 0, 0)),
    ("n % 0", '("n" % 0)',
     "(CASE WHEN CAST(0 AS BIGINT) = 0 THEN NULL ELSE MOD(`n`, CAST(0 AS BIGINT)) END)",
     (None, None, None, None)),
    ("x % 2", '("x" % 2)', refused("'%' of float64 values"), (0.5, NAN, -0.4, 0.285)),
    ("-x", '(-"x")', "(-`x`)", (-2.5, NAN, 0.4, -0.285)),
    ("-n", '(-"n")', "(-`n`)", (7, 0, -3, -12)),
    ("1.5 + x", '(CAST(1.5 AS DOUBLE) + "x")', "(1.5E0 + `x`)", (4.0, NAN, 1.1, 1.785)),
    # logic (null is unknown) and comparisons: NaN equals NaN and is above every number
    ("n < 0 and not b", '(("n" < 0) AND (NOT "b"))', "((`n` < CAST(0 AS BIGINT)) AND (NOT `b`))",
     (False, False, False, False)),
    ("n == -7 or b", '(("n" = (-7)) OR "b")', "((`n` = (-CAST(7 AS BIGINT))) OR `b`)",
     (True, False, None, True)),
    ("b == true", '("b" = TRUE)', "(`b` = TRUE)", (True, False, None, True)),
    ('s != "x"', "(\"s\" <> 'x')", "(`s` <> 'x')", (True, True, True, True)),
    ("x > 1", '("x" > 1)', f"((`x` > CAST(1 AS BIGINT)) OR {_f_nan('`x`')})",
     (True, True, False, False)),
    ("n >= x", '("n" >= "x")', "(`n` >= `x`)", (False, False, True, True)),
    ("x <= nx", '("x" <= "nx")',
     "(CASE WHEN `x` IS NULL OR `nx` IS NULL THEN CAST(NULL AS BOOLEAN) "
     f"WHEN {_f_nan('`x`')} OR {_f_nan('`nx`')} THEN {_f_nan('`nx`')} ELSE (`x` <= `nx`) END)",
     (None, False, True, True)),
    ("nx < x", '("nx" < "x")',
     "(CASE WHEN `nx` IS NULL OR `x` IS NULL THEN CAST(NULL AS BOOLEAN) "
     f"WHEN {_f_nan('`nx`')} OR {_f_nan('`x`')} THEN {_f_nan('`x`')} AND NOT ({_f_nan('`nx`')}) "
     "ELSE (`nx` < `x`) END)", (None, True, False, False)),
    ("x == x", '("x" = "x")',
     "(CASE WHEN `x` IS NULL OR `x` IS NULL THEN CAST(NULL AS BOOLEAN) "
     f"WHEN {_f_nan('`x`')} OR {_f_nan('`x`')} THEN {_f_nan('`x`')} AND {_f_nan('`x`')} "
     "ELSE (`x` = `x`) END)", (True, True, True, True)),
    ("x != nx", '("x" <> "nx")',
     "(CASE WHEN `x` IS NULL OR `nx` IS NULL THEN CAST(NULL AS BOOLEAN) "
     f"WHEN {_f_nan('`x`')} OR {_f_nan('`nx`')} THEN NOT ({_f_nan('`x`')} AND {_f_nan('`nx`')}) "
     "ELSE (`x` <> `nx`) END)", (None, True, True, True)),
    # null
    ("ns is null", '("ns" IS NULL)', "(`ns` IS NULL)", (True, False, False, True)),
    ("x is not null", '("x" IS NOT NULL)', "(`x` IS NOT NULL)", (True, True, True, True)),
    ("coalesce(ns, s)", 'coalesce("ns", "s")', "COALESCE(`ns`, `s`)",
     (" Hello ", "ok", "", "ǅ ς σ ŉ ᾳ Ꟁ")),
    ("coalesce(nx, n, 0)", 'coalesce("nx", "n", 0)', "COALESCE(`nx`, `n`, CAST(0 AS BIGINT))",
     (-7.0, -0.0, INF, 1e308)),
    ("coalesce(ns, null)", 'coalesce("ns", NULL)', "COALESCE(`ns`, NULL)", (None, "ok", "", None)),
    ("cast(null as string)", "CAST(NULL AS VARCHAR)", "CAST(NULL AS STRING)",
     (None, None, None, None)),
    # case and if: a null condition counts as false
    ('case when n > 0 then "pos" when n < 0 then "neg" else "zero" end',
     "(CASE WHEN (\"n\" > 0) THEN 'pos' WHEN (\"n\" < 0) THEN 'neg' ELSE 'zero' END)",
     "(CASE WHEN (`n` > CAST(0 AS BIGINT)) IS TRUE THEN 'pos' "
     "WHEN (`n` < CAST(0 AS BIGINT)) IS TRUE THEN 'neg' ELSE 'zero' END)",
     ("neg", "zero", "pos", "pos")),
    ("case when nx > 0 then 1 end", '(CASE WHEN ("nx" > 0) THEN 1 END)',
     f"(CASE WHEN ((`nx` > CAST(0 AS BIGINT)) OR {_f_nan('`nx`')}) IS TRUE "
     "THEN CAST(1 AS BIGINT) END)", (None, None, 1, 1)),
    ("if(b, x, 0)", '(CASE WHEN "b" THEN "x" ELSE 0 END)',
     "(CASE WHEN `b` IS TRUE THEN `x` ELSE CAST(0 AS BIGINT) END)", (2.5, 0.0, 0.0, 0.285)),
    # numbers: round is C's round(x * 10^d) / 10^d, halves away from zero, sign kept
    ("abs(n)", 'abs("n")', "ABS(`n`)", (7, 0, 3, 12)),
    ("abs(x)", 'abs("x")', "ABS(`x`)", (2.5, NAN, 0.4, 0.285)),
    ("round(x)", 'round("x")', _f_round("`x`"), (3.0, NAN, -0.0, 0.0)),
    ("round(-x)", 'round((-"x"))', _f_round("(-`x`)"), (-3.0, NAN, 0.0, -0.0)),
    ("round(x, 2)", 'round("x", 2)', _f_round_to("`x`", "100.0E0"), (2.5, NAN, -0.4, 0.28)),
    ("round(x / 3, 2)", 'round((CAST("x" AS DOUBLE) / 3), 2)',
     _f_round_to("(CAST(`x` AS DOUBLE) / CAST(3 AS BIGINT))", "100.0E0"),
     (0.83, NAN, -0.13, 0.09)),
    ("round(nx, 2)", 'round("nx", 2)', _f_round_to("`nx`", "100.0E0"),
     (None, -0.0, INF, 1e308)),
    ("round(n, 1)", 'round("n", 1)', "`n`", (-7, 0, 3, 12)),
    # strings: one code point to one (featurestore.backends.unicode_case); lengths
    # count code points
    ("lower(s)", 'lower("s")', _f_case("lower", "`s`"),
     (" hello ", "straße ﬃ i σασ 𐐨", "", "ǆ ς σ ŉ ᾳ ꟁ")),
    ("upper(s)", 'upper("s")', _f_case("upper", "`s`"),
     (" HELLO ", "STRAẞE ﬃ İ ΣΑΣ 𐐀", "", "Ǆ Σ Σ ŉ ᾼ Ꟁ")),
    ('upper("straße")', "upper('straße')", _f_case("upper", "'straße'"), ("STRAẞE",) * 4),
    ('upper("ﬃ")', "upper('ﬃ')", _f_case("upper", "'ﬃ'"), ("ﬃ",) * 4),
    ('lower("İ")', "lower('İ')", _f_case("lower", "'İ'"), ("i",) * 4),
    ('lower("ΌΣΟΣ")', "lower('ΌΣΟΣ')", _f_case("lower", "'ΌΣΟΣ'"), ("όσοσ",) * 4),
    ("length(s)", 'length("s")', "CHAR_LENGTH(`s`)", (7, 16, 0, 11)),
    ('length("😀")', "length('😀')", "CHAR_LENGTH('😀')", (1,) * 4),
    ("length(v)", 'len("v")', "CARDINALITY(`v`)", (2, 0, None, 1)),
    ('concat(s, "!", txt)', "(\"s\" || '!' || \"txt\")", "(`s` || '!' || `txt`)",
     (" Hello ! 42 ", "Straße ﬃ İ ΣΑΣ 𐐀!1d", "! -1.5e3 ", "ǅ ς σ ŉ ᾳ Ꟁ!NaN")),
    ("concat(s, ns)", '("s" || "ns")', "(`s` || `ns`)", (None, "Straße ﬃ İ ΣΑΣ 𐐀ok", "", None)),
    # date parts, UTC; Flink's from epoch microseconds (its EXTRACT errs before 1970)
    ("year(t)", 'year("t")', f"EXTRACT(YEAR FROM {_MIDNIGHT})", (2026, 1969, 1, 2024)),
    ("month(t)", 'month("t")', f"EXTRACT(MONTH FROM {_MIDNIGHT})", (1, 12, 1, 2)),
    ("day(t)", 'day("t")', f"EXTRACT(DAY FROM {_MIDNIGHT})", (4, 31, 1, 29)),
    ("hour(t)", 'hour("t")', f"({_f_mod(_f_us('`t`'), _DAY)} / 3600000000)", (13, 23, 0, 23)),
    ("minute(t)", 'minute("t")', f"({_f_mod(_f_us('`t`'), 3600000000)} / 60000000)",
     (45, 59, 0, 59)),
    ("day_of_week(t)", 'isodow("t")',
     f"(MOD(MOD((({_f_us('`t`')} - {_f_mod(_f_us('`t`'), _DAY)}) / {_DAY}) + 3, 7) + 7, 7) + 1)",
     (7, 3, 1, 4)),
    # casts: null when a value does not convert; text only when it spells one
    ("cast(n as float64)", 'CAST("n" AS DOUBLE)', "CAST(`n` AS DOUBLE)", (-7.0, 0.0, 3.0, 12.0)),
    ("cast(x as int64)", 'TRY_CAST(trunc("x") AS BIGINT)',
     f"(CASE WHEN `x` >= -{_I64} AND `x` < {_I64} THEN CAST(`x` AS BIGINT) END)",
     (2, None, 0, 0)),
    ("cast(-x as int64)", 'TRY_CAST(trunc((-"x")) AS BIGINT)',
     f"(CASE WHEN (-`x`) >= -{_I64} AND (-`x`) < {_I64} THEN CAST((-`x`) AS BIGINT) END)",
     (-2, None, 0, 0)),
    ("cast(nx as int64)", 'TRY_CAST(trunc("nx") AS BIGINT)',
     f"(CASE WHEN `nx` >= -{_I64} AND `nx` < {_I64} THEN CAST(`nx` AS BIGINT) END)",
     (None, 0, None, None)),
    ("cast(-9223372036854775808.0 as int64)",
     'TRY_CAST(trunc((-CAST(9.223372036854776e+18 AS DOUBLE))) AS BIGINT)',
     f"(CASE WHEN (-{_I64}) >= -{_I64} AND (-{_I64}) < {_I64} THEN CAST((-{_I64}) AS BIGINT) END)",
     (-2 ** 63,) * 4),
    ("cast(txt as int64)", "(CASE WHEN regexp_full_match(trim(\"txt\"), '[+-]?[0-9]+') "
                           "THEN TRY_CAST(trim(\"txt\") AS BIGINT) END)",
     "(CASE WHEN REGEXP(TRIM(`txt`), '^[+-]?[0-9]+\\z') THEN TRY_CAST(TRIM(`txt`) AS BIGINT) END)",
     (42, None, None, None)),
    ('cast("1.5" as int64)', "(CASE WHEN regexp_full_match(trim('1.5'), '[+-]?[0-9]+') "
                             "THEN TRY_CAST(trim('1.5') AS BIGINT) END)",
     "(CASE WHEN REGEXP(TRIM('1.5'), '^[+-]?[0-9]+\\z') THEN TRY_CAST(TRIM('1.5') AS BIGINT) END)",
     (None,) * 4),
    ("cast(txt as float64)", f"(CASE WHEN regexp_full_match(trim(\"txt\"), '{_D_FLOAT_TEXT}') "
                             "THEN TRY_CAST(trim(\"txt\") AS DOUBLE) END)",
     f"(CASE WHEN REGEXP(TRIM(`txt`), '^{_F_FLOAT_TEXT}\\z') "
     "THEN TRY_CAST(TRIM(`txt`) AS DOUBLE) END)", (42.0, None, -1500.0, NAN)),
    ("cast(s as float64)", f"(CASE WHEN regexp_full_match(trim(\"s\"), '{_D_FLOAT_TEXT}') "
                           "THEN TRY_CAST(trim(\"s\") AS DOUBLE) END)",
     f"(CASE WHEN REGEXP(TRIM(`s`), '^{_F_FLOAT_TEXT}\\z') "
     "THEN TRY_CAST(TRIM(`s`) AS DOUBLE) END)", (None,) * 4),
    ('cast(" TRUE " as bool)', "(CASE lower(trim(' TRUE ')) WHEN 'true' THEN TRUE "
                               "WHEN 'false' THEN FALSE END)",
     "(CASE LOWER(TRIM(' TRUE ')) WHEN 'true' THEN TRUE WHEN 'false' THEN FALSE END)",
     (True,) * 4),
    ("cast(txt as bool)", "(CASE lower(trim(\"txt\")) WHEN 'true' THEN TRUE "
                          "WHEN 'false' THEN FALSE END)",
     "(CASE LOWER(TRIM(`txt`)) WHEN 'true' THEN TRUE WHEN 'false' THEN FALSE END)", (None,) * 4),
    ("cast(n as bool)", '("n" <> 0)', "(`n` <> 0)", (True, False, True, True)),
    ("cast(b as int64)", 'CAST("b" AS BIGINT)', "CAST(`b` AS BIGINT)", (1, 0, None, 1)),
    ("cast(n as string)", 'CAST("n" AS VARCHAR)', "CAST(`n` AS STRING)", ("-7", "0", "3", "12")),
    ("cast(b as string)", 'CAST("b" AS VARCHAR)',
     "(CASE WHEN `b` THEN 'true' WHEN NOT `b` THEN 'false' END)", ("true", "false", None, "true")),
    # text that differs between engines: refused by the stream
    ("cast(x as string)", 'CAST("x" AS VARCHAR)', refused("cast from float64 to string"),
     ("2.5", "nan", "-0.4", "0.285")),
    ("cast(t as string)", 'CAST("t" AS VARCHAR)', refused("cast from timestamp to string"),
     ("2026-01-04 13:45:30", "1969-12-31 23:59:59.999999", "0001-01-01 00:00:00",
      "2024-02-29 23:59:00.5")),
    ('cast("2026-01-02 03:04:05" as timestamp)',
     "TRY_CAST(trim('2026-01-02 03:04:05') AS TIMESTAMP)", refused("cast from string to timestamp"),
     (_D2026,) * 4),
    ('cast("soon" as timestamp)', "TRY_CAST(trim('soon') AS TIMESTAMP)",
     refused("cast from string to timestamp"), (None,) * 4),
    ('t > cast("2026-01-01" as timestamp)', "(\"t\" > TRY_CAST(trim('2026-01-01') AS TIMESTAMP))",
     refused("cast from string to timestamp"), (True, False, False, False)),
    # lists pass through; quotes in text stay literal
    ("v", '"v"', "`v`", ([0.5, 1.5], [], None, [2.5])),
    ('"it\'s"', "'it''s'", "'it''s'", ("it's",) * 4),
]


def _expr(text: str):
    feat = SOURCE + f"view probe {{ entity user from row features {{ f = {text} }} }}"
    result = compile_files({"features/probe.feat": feat})
    assert result.ok, result.render()
    return result.plan.view("probe").row_features[0].expr


def _same(got, want) -> bool:
    """Equal values of the same type; NaN equals NaN, -0.0 is not 0.0."""
    if isinstance(want, float) and isinstance(got, float):
        return (math.isnan(got) and math.isnan(want)) or (
            got == want and math.copysign(1, got) == math.copysign(1, want))
    if isinstance(want, list) and isinstance(got, list):
        return len(got) == len(want) and all(map(_same, got, want))
    return type(got) is type(want) and got == want


_IDS = [c[0] for c in CASES]


# ---------------------------------------------------------------- SQL
@pytest.mark.parametrize("dsl, duckdb_sql, flink_sql, values", CASES, ids=_IDS)
def test_sql_of_each_engine(dsl, duckdb_sql, flink_sql, values):
    expr = _expr(dsl)
    assert DUCKDB.expr(expr) == duckdb_sql
    if isinstance(flink_sql, refused):
        with pytest.raises(Unsupported) as refusal:
            FLINK.expr(expr)
        assert (refusal.value.engine, str(refusal.value)) == ("Flink", flink_sql)
    else:
        assert FLINK.expr(expr) == flink_sql


# ---------------------------------------------------------------- DuckDB
@pytest.fixture(scope="module")
def duckdb_rows():
    """The samples as DuckDB's `probe` view (timestamps as TIMESTAMP, UTC)."""
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    columns = ", ".join(f"{DUCKDB.ident(c)} {'BIGINT' if t == 'timestamp' else DUCKDB.sql_type(t)}"
                        for c, t in SCHEMA)
    con.execute(f"CREATE TABLE raw (id INTEGER, {columns})")
    con.executemany(f"INSERT INTO raw VALUES (?{', ?' * len(SCHEMA)})",
                    [[i, *(row[c] for c, _ in SCHEMA)] for i, row in enumerate(SAMPLES)])
    values = ", ".join(f"make_timestamp({c}) AS {c}" if t == "timestamp" else c for c, t in SCHEMA)
    con.execute(f"CREATE VIEW probe AS SELECT id, {values} FROM raw")
    yield con
    con.close()


@pytest.mark.parametrize("dsl, duckdb_sql, flink_sql, values", CASES, ids=_IDS)
def test_duckdb_values(duckdb_rows, dsl, duckdb_sql, flink_sql, values):
    got = tuple(v for (v,) in duckdb_rows.execute(
        f"SELECT {duckdb_sql} FROM probe ORDER BY id").fetchall())
    assert all(map(_same, got, values)), got


# ---------------------------------------------------------------- Flink
@pytest.fixture(scope="module")
def flink_values() -> dict[str, tuple]:
    """Every row's values in Flink, from one query over the samples in a
    batch TableEnvironment (UTC, as the job runs)."""
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    from pyflink.common import Configuration
    from pyflink.table import DataTypes, EnvironmentSettings, TableEnvironment

    conf = Configuration.from_dict({"table.local-time-zone": "UTC", "parallelism.default": "1"})
    env = TableEnvironment.create(
        EnvironmentSettings.new_instance().in_batch_mode().with_configuration(conf).build())
    types = {"string": DataTypes.STRING(), "int64": DataTypes.BIGINT(),
             "float64": DataTypes.DOUBLE(), "bool": DataTypes.BOOLEAN(),
             "timestamp": DataTypes.BIGINT(), "list<float32>": DataTypes.ARRAY(DataTypes.FLOAT())}
    schema = DataTypes.ROW([DataTypes.FIELD("id", DataTypes.BIGINT()),
                            *(DataTypes.FIELD(c, types[t]) for c, t in SCHEMA)])
    env.create_temporary_view("raw", env.from_elements(
        [(i, *(row[c] for c, _ in SCHEMA)) for i, row in enumerate(SAMPLES)], schema))
    values = ", ".join(f"TO_TIMESTAMP_LTZ({FLINK.ident(c)}, 6) AS {FLINK.ident(c)}"
                       if t == "timestamp" else FLINK.ident(c) for c, t in SCHEMA)
    env.execute_sql(f"CREATE TEMPORARY VIEW `probe` AS SELECT `id`, {values} FROM `raw`")
    runs = [(dsl, sql) for dsl, _, sql, _ in CASES if not isinstance(sql, refused)]
    columns = ", ".join(f"{sql} AS `c{i}`" for i, (_, sql) in enumerate(runs))
    with env.execute_sql(f"SELECT `id`, {columns} FROM `probe`").collect() as result:
        rows = sorted((tuple(r) for r in result), key=lambda r: r[0])
    return {dsl: tuple(r[i + 1] for r in rows) for i, (dsl, _) in enumerate(runs)}


_FLINK_CASES = [(c, i) for c, i in zip(CASES, _IDS) if not isinstance(c[2], refused)]


@pytest.mark.parametrize("dsl, duckdb_sql, flink_sql, values", [c for c, _ in _FLINK_CASES],
                         ids=[i for _, i in _FLINK_CASES])
def test_flink_values(flink_values, dsl, duckdb_sql, flink_sql, values):
    """(What the stream refuses is test_the_stream_reports_what_it_refuses'.)"""
    got = flink_values[dsl]
    assert all(map(_same, got, values)), got


# ---------------------------------------------------------------- coverage
def _parts(e) -> set:
    """The functions, operators and casts an expression uses."""
    if isinstance(e, Call):
        return {e.func}.union(*map(_parts, e.args))
    if isinstance(e, Binary):
        return {e.op} | _parts(e.left) | _parts(e.right)
    if isinstance(e, Unary):
        return {f"unary {e.op}"} | _parts(e.operand)
    if isinstance(e, Cast):
        cast = ("cast", e.operand.type, e.type)
        return _parts(e.operand) | ({cast} if e.operand.type not in ("null", e.type) else set())
    if isinstance(e, Case):
        parts = [c for when in e.whens for c in when] + [e.else_] * (e.else_ is not None)
        return {"case"}.union(*map(_parts, parts))
    return set()


def test_every_function_operator_and_cast_has_a_row():
    language = {
        *(f for f in checker_expr.FUNCTIONS if f != "if"), "is_null", "is_not_null", "case",
        *checker_expr.ARITHMETIC, *checker_expr.ORDERING, *checker_expr.LOGIC, "=", "!=",
        "unary -", "unary not",
        *(("cast", frm, to) for to, froms in checker_expr.CASTS.items() for frm in froms
          if frm != to)}
    covered = set().union(*(_parts(_expr(dsl)) for dsl, *_ in CASES))
    assert "if" in checker_expr.FUNCTIONS and any(dsl.startswith("if(") for dsl, *_ in CASES)
    assert language - covered == set()


def test_every_function_has_sql_in_both_engines():
    functions = set(checker_expr.FUNCTIONS) - {"if"} | {"is_null", "is_not_null"}
    assert functions <= set(DUCKDB.FUNCTIONS)
    assert functions <= set(FLINK.FUNCTIONS)


def test_the_stream_reports_what_it_refuses():
    """`featurestore compile` writes the refusal into the job's file, and
    `featurestore stream` fails with it: the engine and the construct."""
    plan = dsl.compile_repo(Path(__file__).parent / "example_repos" / "streaming").plan
    text = Cast(Column("amount", "float64"), "string")
    view = dataclasses.replace(plan.view("user_spend"),
                               filter=Binary("!=", text, Literal("", "string"), "bool"))
    plan = dataclasses.replace(plan, views=(view,))
    assert flink_sql.render(plan) == {
        "job.sql": "-- the streaming job cannot run: cast from float64 to string\n"}
    with pytest.raises(Unsupported) as refusal:
        flink_sql.compile_job(plan)
    assert refusal.value.engine == "Flink"
