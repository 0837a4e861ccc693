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

from featurestore import layout

GOLDEN = Path(__file__).parent / "golden" / f"layout_v{layout.LAYOUT_VERSION}.json"


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
