"""The Redis layout is a contract between writers and servers of different
releases: its exact bytes are pinned here. A change needs a new version."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from featurestore import layout

GOLDEN = Path(__file__).parent / "golden" / "layout_v1.json"


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
        "row value": layout.encode_row(1767225600123456, ["DE", 31, None, 2.5, True]).decode(),
        "tile value": layout.encode_tile([3, 12.75, None, [10.5, 2], "x"]).decode(),
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
    assert layout.parse_tile_field(layout.tile_field(-300_000_000)) == -300_000_000


def test_escaping_keeps_distinct_keys_distinct():
    ek = layout.encode_entity_key
    assert ek(["a|b"]) != ek(["a", "b"])
    assert "{" not in ek(["{x}"]) and "}" not in ek(["{x}"])


def test_unsupported_key_type_is_refused():
    with pytest.raises(TypeError, match="strings or integers"):
        layout.encode_entity_key([1.5])
