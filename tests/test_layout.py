"""The Redis layout is a contract between writers and servers of different
releases: its exact bytes are pinned here. A change needs a new version.
The SQL encoders must produce exactly the bytes of the Python ones."""
from __future__ import annotations

import json
import math
import random
import struct
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest

from featurestore import layout, tiles

GOLDEN = Path(__file__).parent / "golden" / f"layout_v{layout.LAYOUT_VERSION}.json"


# a view with a state of every width: count, sum(float64), avg(int64),
# min(float64), last(bool), variance(float64), max(timestamp)
_BINARY = layout.tile_codec([tiles.aggregation(f, t) for f, t in (
    ("count", None), ("sum", "float64"), ("avg", "int64"), ("min", "float64"),
    ("last", "bool"), ("variance", "float64"), ("max", "timestamp"))])


def _vectors() -> dict[str, str]:
    ek = layout.encode_entity_key
    return {
        "entity key, string": ek(["user_42"]),
        "entity key, composite": ek(["u1", 7]),
        "entity key, escaped": ek(["a|b{c}:d%e"]),
        "entity key, unicode and empty": ek(["größe", ""]),
        "row key": layout.row_key("shop", "user_spend", "0a1b2c3d", ek(["user_42"])).decode(),
        "tiles key": layout.tiles_key("shop", "user_spend", "0a1b2c3d", ek(["u1", 7])).decode(),
        "tile field": layout.tile_field(1767225600000000).decode(),
        "rollup field, 1 hour": layout.tile_field(1767225600000000, 3_600_000_000).decode(),
        "row value": layout.encode_row(1767225600123456, ["DE", 31, None, 2.5, True]).decode(),
        "tile value": layout.encode_tile(
            [3, [12, 3458764513820540928, 0], [2, 12, 3458764513820540928, 0], 7.5,
             [1767225600000000, "x"], ["a", "ü"], None, [4, 10, 0, 0, 30, 0]]).decode(),
        "tile value, binary (hex)": _BINARY.encode(
            [3, [12, 3458764513820540928, 0], [2, 17], -0.5, [1767225600000000, True],
             [4, 10, 0, 0, 30, 0], 1767225600000000]).hex(),
        "tile value, binary, nulls (hex)": _BINARY.encode(
            [1, [None, None, 1], [0, None], None, None, [1, 3, 0, 0, 9, 0], None]).hex(),
        "tile value, binary view beyond 64 bits": _BINARY.encode(
            [1, [2 ** 70, 0, 0], [1, 5], 1.0, None, [1, 3, 0, 0, 9, 0], 0]).decode(),
        "watermark key": layout.watermark_key("shop", "user_spend", "0a1b2c3d").decode(),
        "watermark value": layout.encode_watermark(1767225600000000).decode(),
        "live key": layout.live_key("shop", "user_spend", "0a1b2c3d").decode(),
        "held key": layout.held_key(layout.tiles_key("shop", "user_spend", "0a1b2c3d",
                                                     ek(["u1", 7]))).decode(),
        "deferred key": layout.deferred_key("shop", "user_spend", "0a1b2c3d").decode(),
        "deferred entry": layout.deferred_entry(b"k", b"1767225600000000").decode(),
        "deferred value": layout.encode_deferred(1767225600000001, 1767312000000,
                                                 b"[1]").decode(),
        "live value": layout.encode_live(1767225600000000).decode(),
    }


def test_layout_bytes_match_golden_file(request):
    vectors = _vectors()
    if request.config.getoption("--update-golden"):
        GOLDEN.write_text(json.dumps(vectors, indent=2, ensure_ascii=False) + "\n")
    assert vectors == json.loads(GOLDEN.read_text())


def test_values_round_trip():
    assert layout.decode_row(layout.encode_row(5, ["a", 1.5, None])) == (5, ["a", 1.5, None])
    states = [1, None, [0.1 + 0.2, 3], -0.0, 1e300]
    assert layout.decode_tile(layout.encode_tile(states)) == states
    assert layout.parse_tile_field(layout.tile_field(-300_000_000)) == (None, -300_000_000)
    assert layout.parse_tile_field(layout.tile_field(-3600, 3600)) == (3600, -3600)


def test_sql_tile_fields_are_the_python_ones():
    con = duckdb.connect()
    for start, size in [(1767225600000000, None), (-3_600_000_000, 3_600_000_000), (0, 86400)]:
        sql = layout.sql_tile_field(str(start), size)
        assert con.sql(f"SELECT {sql}").fetchall()[0][0].encode() == layout.tile_field(start, size)


def test_escaping_keeps_distinct_keys_distinct():
    ek = layout.encode_entity_key
    assert ek(["a|b"]) != ek(["a", "b"])
    assert "{" not in ek(["{x}"]) and "}" not in ek(["{x}"])


def test_unsupported_key_type_is_refused():
    with pytest.raises(TypeError, match="strings or integers"):
        layout.encode_entity_key([1.5])


def test_tiles_decode_in_one_parse_in_start_order():
    raw = {layout.tile_field(600): layout.encode_tile([2, None]),
           layout.tile_field(-300): layout.encode_tile([1, [5, 0, 0]]),
           layout.tile_field(0): layout.encode_tile([0, "é"])}
    assert layout.decode_tiles(raw) == ([-300, 0, 600], [[1, [5, 0, 0]], [0, "é"], [2, None]])
    assert layout.decode_tiles({}) == ([], [])


def _random_strings(rng: random.Random, n: int) -> list[str]:
    alphabet = ["a", "Z", " ", '"', "\\", "/", "|", "{", "}", ":", "%", "é", "日", "\u2028",
                "\U0001F600", "\x7f", *map(chr, range(32))]
    return [""] + ["".join(rng.choice(alphabet) for _ in range(rng.randrange(12)))
                   for _ in range(n)]


def _random_floats(rng: random.Random, n: int) -> list[float]:
    specials = [0.0, -0.0, math.nan, math.inf, -math.inf, 5e-324, 1e16, 1e-5, 0.1, 2.0 ** -10,
                1.7976931348623157e308, 123456789.125, -1.5e-7]
    bits = [struct.unpack("<d", rng.getrandbits(64).to_bytes(8, "little"))[0] for _ in range(n)]
    decimals = [round(rng.uniform(-1e6, 1e6), rng.randrange(8)) for _ in range(n)]
    return specials + bits + decimals


def test_sql_encoders_write_the_bytes_of_the_python_encoders():
    rng = random.Random(4)
    strings = _random_strings(rng, 3000)
    floats = _random_floats(rng, 3000)
    ints = [0, -1, 2 ** 63 - 1, -2 ** 63] + [rng.randrange(-2 ** 63, 2 ** 63) for _ in range(3000)]
    n = min(len(strings), len(floats), len(ints))
    table = pa.table({"s": strings[:n], "f": pa.array(floats[:n], pa.float64()),
                      "i": pa.array(ints[:n], pa.int64()),
                      "b": [None if i % 5 == 0 else i % 3 == 0 for i in range(n)]})
    con = duckdb.connect()
    con.register("t", table)
    entity = layout.sql_entity_key([("s", "string"), ("i", "int64")])
    row = layout.sql_json_array([layout.sql_json("i", "int64"), layout.sql_json("s", "string"),
                                 layout.sql_json("f", "float64"), layout.sql_json("b", "bool"),
                                 layout.sql_json("NULL::DOUBLE", "float64"),
                                 layout.sql_json_list("[f, f]", "float64"),
                                 layout.sql_json_list("[s]", "string")])
    key = layout.sql_key("p", "v", "ff00", entity, "t")
    got = con.execute(f"SELECT {key}, {row} FROM t").fetchall()
    for (sql_key, sql_row), s, f, i, b in zip(got, strings, floats, ints, table["b"].to_pylist()):
        ek = layout.encode_entity_key([s, i])
        assert sql_key == layout.tiles_key("p", "v", "ff00", ek).decode()
        assert sql_row.encode() == layout.encode_row(i, [s, f, b, None, [f, f], [s]])


def test_encode_tiles_writes_the_bytes_of_encode_tile():
    """The streaming writers' column-wise encoder, against encode_tile of
    each row's state list: counts, exact sums (None, huge, negative), float
    extremes, sets, pairs, strings to escape, and a column shared by two
    states."""
    rng = random.Random(7)
    floats = [0.0, -0.0, 1.5, -2.25e-300, 1e16, 5e-324, math.inf, -math.inf, math.nan, None,
              0.1, 255.17, -1e22]
    ints = [0, -1, 2 ** 100, -(2 ** 70), None, 7, 10 ** 30]
    rows = 200
    count = [rng.randrange(10 ** 6) for _ in range(rows)]
    hi, lo = ([rng.choice(ints) for _ in range(rows)] for _ in range(2))
    top = [rng.choice(floats) for _ in range(rows)]
    sets = [sorted(rng.sample(range(-5, 5), rng.randrange(4))) for _ in range(rows)]
    pairs = [rng.choice([None, [rng.randrange(-10, 10 ** 15), rng.choice(["a", "é\"\\\n\0", ""])]])
             for _ in range(rows)]
    flags = [rng.choice([True, False, None]) for _ in range(rows)]
    # states: count, sum [hi, lo, n_out], avg [count, hi, lo, n_out] (sharing
    # the sum's columns), max, count_distinct, first, a bare bool
    shapes = [None, 3, 4, None, None, None, None]
    columns = [count, hi, lo, count, count, hi, lo, count, top, sets, pairs, flags]
    kinds = ["int", "int", "int", "int", "int", "int", "int", "int", "float", "any", "any", "any"]
    got = layout.encode_tiles(shapes, columns, kinds)
    for r in range(rows):
        state = [count[r], [hi[r], lo[r], count[r]], [count[r], hi[r], lo[r], count[r]],
                 top[r], sets[r], pairs[r], flags[r]]
        assert got[r] == layout.encode_tile(state)
    assert layout.encode_tiles([None], [[]], ["int"]) == []


def _random_column(rng: random.Random, column, input_type: str | None, rows: int) -> list:
    """Values of one state column (tiles.StateColumn) for random tiles:
    nulls, edges of int64 and of the 62-bit words, values beyond 64 bits
    (those tiles are JSON), NaN, -0.0, infinities, bools, pairs."""
    edges = [0, 1, -1, 2 ** 62 - 1, 2 ** 62, -(2 ** 62), 2 ** 63 - 1, -(2 ** 63), 2 ** 61 + 5,
             -(2 ** 59) - 3, 2 ** 59 - 1, 2 ** 60, 3 * 2 ** 62]
    big = [2 ** 63, -(2 ** 63) - 1, 2 ** 64 + 3, -(2 ** 90), 10 ** 30, 2 ** 125]
    floats = [0.0, -0.0, 1.5, -2.25e-300, 1e16, 5e-324, math.inf, -math.inf, math.nan,
              -math.nan, 0.1, 255.17, -1e22, 1.7976931348623157e308]

    def integer() -> int:
        pick = rng.random()
        if pick < 0.5:
            return rng.randrange(-10 ** 6, 10 ** 6)
        if pick < 0.75:
            return rng.choice(edges) + rng.randrange(-2, 3)
        if pick < 0.9:
            return rng.randrange(-(2 ** 63), 2 ** 63)
        return rng.choice(big) + rng.randrange(-2, 3)

    def value():
        if input_type in ("float64", "bool", "string"):
            return _random_value(rng, input_type)
        return integer()

    def one():
        if rng.random() < 0.15:
            return None
        if column.reduce == "count":
            return rng.randrange(10 ** 6) if rng.random() < 0.9 else integer()
        if column.reduce == "set":
            return sorted({value() for _ in range(rng.randrange(3))}, key=lambda v: (v != v, v))
        if column.input == "ts_value":
            return [integer() if rng.random() < 0.1 else rng.randrange(10 ** 15), value()]
        if column.reduce in ("min", "max"):
            return value()
        return integer()
    return [one() for _ in range(rows)]


def _random_value(rng: random.Random, input_type: str | None):
    """An argument of `input_type`."""
    if input_type == "float64":
        return (rng.choice([0.0, -0.0, 1.5, -2.25e-300, 5e-324, math.inf, -math.inf, math.nan,
                            0.1, 255.17, -1e22, 3e9, -2.0 ** 62])
                if rng.random() < 0.5 else rng.uniform(-1e9, 1e9))
    if input_type == "bool":
        return rng.random() < 0.5
    if input_type == "string":
        return rng.choice(["", "a", "é\"\\\n\0"])
    return rng.choice([rng.randrange(-(2 ** 63), 2 ** 63), rng.randrange(-100, 100)])


def _consistent(agg, states: list) -> list:
    """States with a variance's (A, B, C) all null or all present (`encode`
    refuses A without B or C)."""
    names = [c.name for c in agg.columns]
    if "a2" not in names:
        return states
    a, b, c = (names.index(n) for n in ("a2", "ab", "b2"))
    for state in states:
        if state[a] is None or state[b] is None or state[c] is None:
            state[a] = state[b] = state[c] = None
    return states


@pytest.mark.parametrize("seed", range(3))
def test_encode_columns_writes_the_bytes_of_encode(seed):
    """The streaming writers' column-wise encoder against `TileCodec.encode`
    of each tile: every aggregation with random states (nulls, NaN, -0.0,
    int64 edges, ints beyond 64 bits, bools, pairs), states computed from
    rows, and a column that two slots share."""
    from featurestore import tiles

    rng = random.Random(seed)
    every = [tiles.aggregation(f, t) for f in tiles.FUNCTIONS
             for t in (None, "int64", "float64", "bool", "timestamp", "string")
             if _has_state(f, t)]
    fixed = [a for a in every if layout.tile_codec([a]).fixed]
    views = [[a] for a in every] + [rng.sample(fixed, 4) for _ in range(6)] + [
        rng.sample(every, 3) for _ in range(3)]
    for aggregations in views:
        codec = layout.tile_codec(aggregations)
        rows = 300
        states = [[] for _ in range(rows)]
        for agg in aggregations:
            columns = [_random_column(rng, c, agg.input_type, rows) for c in agg.columns]
            per_row = _consistent(agg, [list(r) for r in zip(*columns)])
            for r in range(rows):
                if r % 5 == 0:   # also states of rows
                    data = [(rng.randrange(10 ** 12), _random_value(rng, agg.input_type))
                            for _ in range(rng.randrange(4))]
                    state = agg.state_of(data)
                    per_row[r] = [state] if agg.bare else state
                states[r].append(per_row[r][0] if agg.bare else per_row[r])
        columns = [[(s[j] if agg.bare else s[j][c]) for s in states]
                   for j, agg in enumerate(aggregations) for c in range(len(agg.columns))]
        got = codec.encode_columns(columns)
        assert len(got) == rows
        for r in range(rows):
            assert got[r] == codec.encode(states[r]), (aggregations, states[r])
        if codec.fixed:
            assert any(g[0] == layout.BINARY_TAG for g in got)
        for r in range(0, rows, 5):   # the states of rows read back as their values
            decoded = codec.decode(got[r])
            for agg, state, back in zip(aggregations, states[r], decoded):
                assert _same_value(agg.value(back), agg.value(state))


def _has_state(function: str, input_type: str | None) -> bool:
    from featurestore import tiles
    try:
        tiles.aggregation(function, input_type)
    except ValueError:
        return False
    return (input_type is None) == (function == "count") or input_type is not None


def _same_value(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return struct.pack("<d", a) == struct.pack("<d", b) or (a != a and b != b)
    return a == b and type(a) is type(b)


def test_encode_columns_shares_columns_and_refuses_what_encode_refuses():
    from featurestore import tiles

    count, var = tiles.aggregation("count", None), tiles.aggregation("variance", "float64")
    codec = layout.tile_codec([count, count, var])
    n = [1, None, 2 ** 70, 5]
    var_columns = [[2, 3, 4, None], [7, -2, 2 ** 80, None], [2 ** 61, 3, 1, None],
                   [-(2 ** 40), 5, 2 ** 64, None], [2 ** 64 + 1, 0, 2 ** 66, None], [0, 1, 0, None]]
    got = codec.encode_columns([n, n, *var_columns])
    for r in range(4):
        assert got[r] == codec.encode([n[r], n[r], [c[r] for c in var_columns]])
    assert [g[0] for g in got] == [layout.BINARY_TAG, layout.BINARY_TAG, ord("["),
                                   layout.BINARY_TAG]
    assert codec.encode_columns([[], [], *([[]] * 6)]) == []
    with pytest.raises(ValueError):
        codec.encode_columns([n, *var_columns])
    with pytest.raises(TypeError):   # A without B, as `encode` refuses it
        codec.encode_columns([[1], [1], [2], [0], [1], [None], [3], [0]])
