"""The Flink SQL compiler, without Flink: expressions with the DSL's
meaning, source DDL per connector, the job's outputs and settings. Flink
itself runs the SQL in tests/test_streaming.py."""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest

import dsl
from dsl.plan import (Aggregation, Binary, Case, Cast, Column, Literal, Plan, RowFeature, Source,
                      View)
from featurestore import windows
from streaming import flink_sql, flink_states, sink
from streaming.flink_expr import Unsupported, cast_sql, double, expr_sql, literal

REPO = Path(__file__).parent / "example_repos" / "streaming"
US, HOUR = 1_000_000, 3_600_000_000
AMOUNT = Column("amount", "float64")


def _plan() -> Plan:
    compiled = dsl.compile_repo(REPO)
    assert compiled.ok, compiled.render()
    return compiled.plan


def test_expressions_are_parenthesized_quoted_and_typed():
    e = Binary("and", Binary("<=", AMOUNT, Literal(0, "int64"), "bool"),
               Binary("!=", Column("we`ird", "string"), Literal("it's", "string"), "bool"), "bool")
    assert expr_sql(e) == "((`amount` <= CAST(0 AS BIGINT)) AND (`we``ird` <> 'it''s'))"
    assert expr_sql(Binary("/", Column("n", "int64"), Literal(2, "int64"), "float64")) == \
        "(CAST(`n` AS DOUBLE) / CAST(2 AS BIGINT))"
    assert literal(None, "string") == "CAST(NULL AS STRING)"
    assert [double(x) for x in (1.5, 1e300, 2.0 ** -70, float("-inf"))] == \
        ["1.5E0", "1E300", "8.470329472543003E-22", "CAST('-Infinity' AS DOUBLE)"]


def test_modulo_is_null_on_zero_and_refused_for_floats():
    n = Column("n", "int64")
    assert expr_sql(Binary("%", n, Literal(0, "int64"), "int64")) == \
        "(CASE WHEN CAST(0 AS BIGINT) = 0 THEN NULL ELSE MOD(`n`, CAST(0 AS BIGINT)) END)"
    with pytest.raises(Unsupported, match="'%' of float64"):
        expr_sql(Binary("%", AMOUNT, Literal(2.0, "float64"), "float64"))


def test_casts_follow_the_dsl_and_refuse_what_engines_would_spell_differently():
    s = Column("s", "string")
    assert "REGEXP(TRIM(`s`), '^[+-]?[0-9]+\\z')" in cast_sql(s, "int64")   # \z: not $
    assert cast_sql(Column("b", "bool"), "string") == \
        "(CASE WHEN `b` THEN 'true' WHEN NOT `b` THEN 'false' END)"
    with pytest.raises(Unsupported, match="cast from float64 to string"):
        cast_sql(AMOUNT, "string")
    case = Case(((Binary("<", AMOUNT, Literal(1, "int64"), "bool"), Literal("small", "string")),),
                None, "string")
    assert expr_sql(case) == "(CASE WHEN (`amount` < CAST(1 AS BIGINT)) IS TRUE THEN 'small' END)"
    assert expr_sql(Cast(Column("n", "int64"), "float64")) == "CAST(`n` AS DOUBLE)"


def test_source_ddl_per_connector():
    plan = _plan()
    files = flink_sql.source_ddl(plan.source("purchases"),
                                 flink_sql.SourceSettings(root=Path("/repo")))
    assert "'path' = 'file:///repo/data/purchases'" in files
    assert "'source.monitor-interval' = '100 ms'" in files
    assert "WATERMARK" not in files   # lateness is an arrival delay (see the rows view)
    kafka = flink_sql.source_ddl(plan.source("clicks"))
    for option in ("'connector' = 'kafka'", "'topic' = 'clicks'",
                   "'properties.bootstrap.servers' = 'localhost:9092'",
                   "'properties.group.id' = 'features'", "'scan.startup.mode' = 'earliest-offset'"):
        assert option in kafka
    datagen = flink_sql.source_ddl(plan.source("synthetic"))
    assert "'rows-per-second' = '1000'" in datagen and "'fields.user_id.length' = '4'" in datagen
    bounded = flink_sql.source_ddl(plan.source("purchases"), flink_sql.SourceSettings(bounded=True))
    assert "monitor-interval" not in bounded


def test_kafka_starts_from_the_groups_offsets_else_the_earliest():
    clicks = _plan().source("clicks")
    default = dataclasses.replace(clicks, options=(("format", "json"),
                                                   ("servers", "k:9092")))
    ddl = flink_sql.source_ddl(default)
    assert "'scan.startup.mode' = 'group-offsets'" in ddl
    assert "'properties.auto.offset.reset' = 'earliest'" in ddl
    assert "'properties.group.id' = 'featurestore-clicks'" in ddl


def test_an_event_is_late_when_it_arrives_later_than_the_lateness_or_out_of_reach():
    plan = _plan()
    spend = flink_sql.view_rows_sql(plan.view("user_spend"), plan.source("purchases"))
    # lateness 10m; tiles reach back 7d and as_of's horizon (+ the current
    # tile); rows live 14d
    history = 7 * 24 * HOUR + windows.AS_OF_HORIZON_US
    assert "WHEN `__ts` < `__now` - 600000000 OR NOT (((`__ts` - MOD(MOD(`__ts`, 300000000) " \
           "+ 300000000, 300000000)) >= (`__now` - MOD(MOD(`__now`, 300000000) + 300000000, " \
           f"300000000)) - {history}) OR (`__ts` > `__now` - 1209600000000)) THEN 'late'" in spend
    synthetic = flink_sql.view_rows_sql(plan.view("load_test"), plan.source("synthetic"))
    assert f"60000000)) - {HOUR + windows.AS_OF_HORIZON_US})) THEN 'late'" in synthetic


def test_job_has_one_output_per_view_part_and_functions_take_the_sink_fields():
    plan = _plan()
    job = flink_sql.compile_job(plan, flink_sql.SourceSettings(root=REPO))
    assert job.views == ("load_test", "user_clicks", "user_spend")
    assert [(o.view, o.part) for o in job.outputs] == [
        (0, "tiles"), (0, "dropped"), (1, "tiles"), (1, "dropped"),
        (2, "tiles"), (2, "latest"), (2, "dropped")]
    for out in job.outputs:
        fields = sink.input_fields(job.sinks[out.view], out.part)
        call = out.insert.split(f"{out.function}(", 1)[1].rsplit(") FROM", 1)[0]
        assert _top_level_items(call) == len(fields), out.function
        assert f"{out.function}(" not in out.discard
    spend = job.sinks[2]
    assert spend.tiles_keep_us == 7 * 24 * HOUR + windows.AS_OF_HORIZON_US + 2 * 300 * US
    assert spend.rows_keep_us == 2 * 7 * 24 * HOUR
    assert spend.future_us == windows.MAX_FUTURE_US
    # a view without a ttl keeps its latest rows forever, and so does its state
    assert job.config["table.exec.state.ttl"].endswith(" ms")


def test_one_aggregation_computes_the_tiles_of_every_level():
    """A view with rollups: each row's inputs, computed once, are copied
    once per size it keeps into one GROUP BY; a view without keeps today's
    tiles SQL."""
    plan = _plan()
    spend, clicks = plan.view("user_spend"), plan.view("user_clicks")
    assert windows.levels(spend) == (300 * US, HOUR, 24 * HOUR)
    assert windows.levels(clicks) == (60 * US,)
    inputs, tiles = flink_states.tiles_sql(spend, "rows", "CUT")
    assert inputs.startswith("CREATE TEMPORARY VIEW `user_spend__tile_inputs` AS\nSELECT *, ")
    assert inputs.count("CUT") == 1 and " AS `__x" in inputs   # the cut is per row
    assert "`__tile`" not in inputs and " AS `__x" not in tiles
    assert tiles == (
        "CREATE TEMPORARY VIEW `user_spend__tiles` AS\n"
        f"SELECT `user_id`, `__size`, `__tile`, {tiles.split('`__tile`, ', 1)[1].split(chr(10))[0]}\n"
        "FROM (SELECT *, CAST(300000000 AS BIGINT) AS `__size`, (`__ts` - MOD(MOD(`__ts`, "
        "300000000) + 300000000, 300000000)) AS `__tile` FROM `user_spend__tile_inputs`\n"
        "  UNION ALL SELECT *, CAST(3600000000 AS BIGINT) AS `__size`, (`__ts` - MOD(MOD(`__ts`, "
        "3600000000) + 3600000000, 3600000000)) AS `__tile` FROM `user_spend__tile_inputs`\n"
        "  UNION ALL SELECT *, CAST(86400000000 AS BIGINT) AS `__size`, (`__ts` - MOD(MOD(`__ts`, "
        "86400000000) + 86400000000, 86400000000)) AS `__tile` FROM `user_spend__tile_inputs`)\n"
        "GROUP BY `user_id`, `__size`, `__tile`")
    [single] = flink_states.tiles_sql(clicks, "rows", "CUT")
    assert "__size" not in single and "UNION" not in single
    assert single.startswith("CREATE TEMPORARY VIEW `user_clicks__tiles` AS\n"
                             "SELECT `user_id`, `__tile`, MAX(`__ts`) AS `__newest`, COUNT(*)")
    assert single.endswith("GROUP BY `user_id`, `__tile`")
    # the writers receive the size where there are rollups
    job = flink_sql.compile_job(plan)
    fields = {o.name: [f.name for f in sink.input_fields(o, sink.TILES)][:4] for o in job.sinks}
    assert fields["user_spend"] == ["k0", "size", "tile", "newest"]
    assert fields["user_clicks"][:3] == ["k0", "tile", "newest"]
    insert = next(o.insert for o in job.outputs if o.function == "featurestore_user_spend_tiles")
    assert "featurestore_user_spend_tiles(CAST(`user_id` AS STRING), CAST(`__size` AS BIGINT), " \
           "CAST(`__tile` AS BIGINT), CAST(`__newest` AS BIGINT), " in insert


def _top_level_items(sql: str) -> int:
    depth, items = 0, 1
    for ch in sql:
        depth += {"(": 1, ")": -1}.get(ch, 0)
        items += ch == "," and depth == 0
    return items


def test_state_lives_as_long_as_an_update_can_reach_it():
    view = View("v", "user", (("user_id", "string"),), "s", None, 300 * US, None,
                (RowFeature("last", AMOUNT, "float64"),), ())
    assert flink_sql.job_config([view], flink_sql.Tuning())["table.exec.state.ttl"] == "0 ms"


def test_unsupported_constructs_are_named():
    plan = _plan()
    view = dataclasses.replace(plan.view("user_spend"), row_features=(
        RowFeature("embedding", Column("e", "list<float32>"), "list<float32>"),))
    with pytest.raises(Unsupported, match="row feature 'embedding' of type list<float32>"):
        flink_sql.compile_job(dataclasses.replace(plan, views=(view,)))
    batch_only = dataclasses.replace(plan, views=(), sources=())
    with pytest.raises(Unsupported, match="no view reads a stream source"):
        flink_sql.compile_job(batch_only)
    assert flink_sql.render(batch_only) == {}


def test_render_is_deterministic_and_machine_free():
    plan = _plan()
    first = flink_sql.render(plan)
    assert list(first) == ["job.sql"] and flink_sql.render(plan) == first
    text = first["job.sql"]
    assert "file://" not in text and str(REPO) not in text
    assert text.count("INSERT INTO `featurestore_written`") == 7


def test_float_comparisons_put_nan_above_every_number():
    """As DuckDB does (Java compares by IEEE): only where NaN can meet a
    number on its `>` side, or NaN meet NaN, does the SQL change; the
    differential stream test checks the values through Flink."""
    n, qty = Literal(0, "int64"), Column("qty", "int64")

    def sql(op, a, b):
        return expr_sql(Binary(op, a, b, "bool"))

    assert sql("<", AMOUNT, n) == "(`amount` < CAST(0 AS BIGINT))"
    assert sql("=", AMOUNT, n) == "(`amount` = CAST(0 AS BIGINT))"
    nan = "(POWER(`amount`, 1E0) <> `amount`)"   # not `amount` <> `amount`: see nan_sql
    assert sql(">", AMOUNT, n) == f"((`amount` > CAST(0 AS BIGINT)) OR {nan})"
    assert sql("<=", n, AMOUNT) == f"((CAST(0 AS BIGINT) <= `amount`) OR {nan})"
    assert sql(">", qty, Literal(1, "int64")) == "(`qty` > CAST(1 AS BIGINT))"
    # a column that may be null on the other side: null stays null
    assert sql("<", qty, AMOUNT) == (f"(CASE WHEN {nan} THEN `qty` = `qty` "
                                     "ELSE (`qty` < `amount`) END)")
    both = sql(">=", AMOUNT, Column("price", "float64"))
    assert both.startswith("(CASE WHEN `amount` IS NULL OR `price` IS NULL THEN CAST(NULL")
    assert f"WHEN {nan} OR (POWER(`price`, 1E0) <> `price`) THEN {nan} ELSE" in both
    assert sql("<", AMOUNT, Literal(math.nan, "float64")).startswith("(CASE WHEN")


def test_every_aggregation_compiles():
    functions = ["count", "sum", "avg", "min", "max", "first", "last", "count_distinct",
                 "stddev", "variance"]
    aggs = tuple(Aggregation(f"{f}_{t}", f, Column(c, t), None, HOUR,
                             "float64" if f in ("avg", "stddev", "variance") else t)
                 for f in functions for c, t in (("amount", "float64"), ("n", "int64")))
    view = View("all", "user", (("user_id", "string"),), "s", None, 300 * US, HOUR, (), aggs)
    source = Source("s", "stream", "files", "d/", "ts", (("user_id", "string"),
                    ("amount", "float64"), ("n", "int64"), ("ts", "timestamp")),
                    options=(("format", "json"),))
    job = flink_sql.compile_job(Plan(sources=(source,), views=(view,)))
    tiles = "\n".join(s for s in job.statements if "`all__tile" in s)
    # exact sums without DECIMAL arithmetic, but for variance's b*b (64 unsigned bits)
    assert "DECIMAL(38" not in tiles
    # (stddev and variance of one column share their sums)
    assert tiles.count("AS DECIMAL(20, 0)) * CAST(") == 2
    assert tiles.count("ARRAY_AGG(DISTINCT") == 2 and tiles.count("MIN(`__pair") == 2


def test_aggregations_that_share_a_column_compute_it_once():
    """`sum(amount) over 1h, 1d` and `avg(amount)` hold the same sum in their
    tile states: Flink computes it once, and the writer gives each its copy."""
    amount = Column("amount", "float64")
    big = Binary(">=", amount, Literal(100, "int64"), "bool")
    aggs = (Aggregation("spend_1h", "sum", amount, None, HOUR, "float64"),
            Aggregation("spend_1d", "sum", amount, None, 24 * HOUR, "float64"),
            Aggregation("avg_1d", "avg", amount, None, 24 * HOUR, "float64"),
            Aggregation("big_1h", "count", None, big, HOUR, "int64"),
            Aggregation("big_1d", "count", None, big, 24 * HOUR, "int64"),
            Aggregation("big_spend", "sum", amount, big, 24 * HOUR, "float64"))
    view = View("v", "user", (("user_id", "string"),), "s", None, 300 * US, 24 * HOUR, (), aggs)
    source = Source("s", "stream", "files", "d/", "ts", (("user_id", "string"),
                    ("amount", "float64"), ("ts", "timestamp")), options=(("format", "json"),))
    job = flink_sql.compile_job(Plan(sources=(source,), views=(view,)))
    tiles = "\n".join(s for s in job.statements if "`v__tile" in s)
    head = next(s for s in job.statements if "`v__tiles`" in s).split("FROM (")[0]
    # one sum of amount over all rows (hi and lo, each as two halves) and one
    # over the filtered rows; counts: amounts (avg's n), filtered rows, and
    # amounts out of range for each of the two sums
    assert head.count("SUM(") == 8 and head.count("COUNT(") == 4
    assert head.count(" AS `__x") == 0 and tiles.count(" AS `__x") == 1
    assert tiles.count(" AS `__w") == 1
    fields = [f.name for f in flink_states.state_fields(view)]
    assert len(fields) == len(set(fields))
    out = job.sinks[0]
    assert [f.name for f in sink.input_fields(out, sink.TILES) if not f.name.endswith("__null")
            ] == ["k0", "size", "tile", "newest", *fields]   # (hour rollups: a 1-day window)


def test_json_sources_are_read_again_to_count_the_lines_flink_skips():
    """files and Kafka json sources: a raw read counted into each view's
    drops (Kafka in a consumer group of its own); none for datagen, or when
    turned off."""
    plan = _plan()
    job = flink_sql.compile_job(plan, flink_sql.SourceSettings(root=REPO))
    text = "\n".join(job.statements)
    assert "CREATE TEMPORARY TABLE `purchases__lines` (\n  `line` BYTES\n)" in text
    assert "'properties.group.id' = 'features-lines'" in text
    assert "synthetic__lines" not in text
    spend = next(s for s in job.statements if s.startswith(
        "CREATE TEMPORARY VIEW `user_spend__dropped`"))
    assert "UNION ALL SELECT `__drop`, `__hour`, CAST(NULL AS BIGINT) FROM `purchases__unread`" \
        in spend
    off = flink_sql.compile_job(plan, flink_sql.SourceSettings(root=REPO, count_lines=False))
    assert not any("__lines" in s or "__unread" in s for s in off.statements)
    csv = dataclasses.replace(plan.source("purchases"), options=(("format", "csv"),))
    assert not flink_sql.counts_lines(csv, flink_sql.SourceSettings())
