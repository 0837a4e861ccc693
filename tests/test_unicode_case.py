"""`upper` and `lower` on every code point, in every engine: the tables of
featurestore.backends.unicode_case are the rule; DuckDB's own functions (what
batch SQL runs) must follow them, and so must Flink's TRANSLATE of them
(what the stream runs). tests/test_dsl_sql.py has the same rule on sample
strings next to every other function."""
from __future__ import annotations

import unicodedata
import warnings

import duckdb
import pytest

from dsl.plan import Call, Literal
from featurestore.backends import unicode_case
from streaming.flink_expr import FLINK

CODE_POINTS = [c for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF]   # no surrogates


@pytest.mark.parametrize("function", ["upper", "lower"])
def test_duckdb_follows_the_tables_on_every_code_point(function):
    con = duckdb.connect()
    changed = dict(con.execute(
        f"SELECT c, {function}(chr(c::INTEGER)) FROM range(1114112) t(c) "
        f"WHERE (c < 55296 OR c > 57343) AND {function}(chr(c::INTEGER)) <> chr(c::INTEGER)"
    ).fetchall())
    source, target = unicode_case.translation(function)
    assert changed == {ord(a): b for a, b in zip(source, target)}


def test_the_tables_are_unicode_simple_case_mappings_and_sharp_s():
    """Unicode's one-to-one mappings (Python's are full ones: where a full
    mapping expands, the simple one is the titlecase letter, if one code
    point, else none; lower('İ') is 'i'), plus upper('ß') = 'ẞ'. On a
    Python of another Unicode version, the pairs the tables hold must still
    be Unicode's (case pairs are stable across versions); on Unicode 14,
    they must be all of them."""

    def simple_upper(ch: str) -> str:
        if len(ch.upper()) == 1:
            return ch.upper()
        return "ẞ" if ch == "ß" else ch.title() if len(ch.title()) == 1 else ch

    def simple_lower(ch: str) -> str:
        return ch.lower() if len(ch.lower()) == 1 else "i" if ch == "İ" else ch

    if unicodedata.unidata_version == unicode_case.UNICODE_VERSION + ".0":
        text = "".join(map(chr, CODE_POINTS))
        assert unicode_case.upper(text) == "".join(map(simple_upper, text))
        assert unicode_case.lower(text) == "".join(map(simple_lower, text))
    for function, simple in (("upper", simple_upper), ("lower", simple_lower)):
        source, target = unicode_case.translation(function)
        assert "".join(map(simple, source)) == target, function


def test_one_code_point_to_one_without_locale_or_context():
    assert unicode_case.upper("straße ﬃ ŉ ᾳ") == "STRAẞE ﬃ ŉ ᾼ"
    assert unicode_case.lower("İSTANBUL ΌΣΟΣ ΣΑΣ") == "istanbul όσοσ σασ"
    assert unicode_case.upper("𐐨 ⱟ 𐖗") == "𐐀 Ⱟ 𐕰"    # outside the BMP; Unicode 14


def test_flink_translates_every_code_point_as_the_tables_say():
    """One string per table holding every code point it changes (and some it
    does not), through Flink's TRANSLATE as the stream spells it."""
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    from pyflink.common import Configuration
    from pyflink.table import EnvironmentSettings, TableEnvironment

    conf = Configuration.from_dict({"parallelism.default": "1"})
    env = TableEnvironment.create(
        EnvironmentSettings.new_instance().in_batch_mode().with_configuration(conf).build())
    upper_from, _ = unicode_case.translation("upper")
    lower_from, _ = unicode_case.translation("lower")
    text = "a-Z 😀 " + upper_from + lower_from
    calls = ", ".join(FLINK.expr(Call(f, (Literal(text, "string"),), "string"))
                      for f in ("upper", "lower"))
    with env.execute_sql(f"SELECT {calls}").collect() as result:
        [(upper, lower)] = [tuple(r) for r in result]
    assert upper == unicode_case.upper(text)
    assert lower == unicode_case.lower(text)
