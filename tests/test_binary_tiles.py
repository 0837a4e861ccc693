"""Binary tiles (layout v4, `layout.TileCodec`): every fixed-width state
survives encoding with its value, words beyond 64 bits fall back to JSON, and
the server's vectorized merge of binary tiles answers exactly what its
per-entity merge of the same states as JSON answers."""
from __future__ import annotations

import math
import random

import pytest

from featurestore import layout, tiles, windows
from featurestore.manifest import FeatureSpec, Manifest, ViewSpec
from serving import lookup
from serving.v1 import serving_pb2 as pb

US = 1_000_000
TILE = 300 * US
HOUR, DAY = 3600 * US, 86400 * US
NOW = 1_767_225_600 * US + 5 * HOUR + 3 * TILE + 17 * US

# (name, function, argument type, output type): every aggregation with a fixed-width state
FIXED = (("n", "count", None, "int64"), ("n_x", "count", "float64", "int64"),
         ("sum_i", "sum", "int64", "int64"), ("sum_f", "sum", "float64", "float64"),
         ("avg_i", "avg", "int64", "float64"), ("avg_f", "avg", "float64", "float64"),
         ("min_i", "min", "int64", "int64"), ("max_f", "max", "float64", "float64"),
         ("min_f", "min", "float64", "float64"), ("max_b", "max", "bool", "bool"),
         ("min_t", "min", "timestamp", "timestamp"), ("first_f", "first", "float64", "float64"),
         ("last_i", "last", "int64", "int64"), ("last_b", "last", "bool", "bool"),
         ("var_i", "variance", "int64", "float64"), ("std_f", "stddev", "float64", "float64"))
AGGS = [tiles.aggregation(function, arg) for _, function, arg, _ in FIXED]
CODEC = layout.tile_codec(AGGS)


def _value(rng: random.Random, arg: str | None, wide: bool):
    if arg is None:
        return None
    if rng.random() < 0.15:
        return None
    if arg == "bool":
        return rng.random() < 0.5
    if arg in ("int64", "timestamp"):
        top = 2 ** 62 if wide else 10 ** 6
        return rng.randrange(-top, top)
    pick = rng.random()
    if pick < 0.05:
        return math.nan
    if pick < 0.1:
        return rng.choice([0.0, -0.0, math.inf, -math.inf, 1e300 if wide else 5e-324])
    return round(rng.uniform(-1e4, 1e4), rng.choice([0, 2, 6]))


def _states(rng: random.Random, wide: bool = False) -> list:
    """One tile's states: each aggregation over a few random rows."""
    rows = [(NOW - rng.randrange(TILE), k) for k in range(rng.randrange(0, 5))]
    out = []
    for (_, _, arg, _), agg in zip(FIXED, AGGS):
        out.append(agg.state_of([(ts, _value(rng, arg, wide)) for ts, _ in rows]))
    return out


def _same(a, b) -> bool:
    return a == b or (isinstance(a, float) and isinstance(b, float) and a != a and b != b)


def test_every_fixed_state_round_trips_with_its_value():
    assert CODEC.fixed and CODEC.size == 9 + 8 * len(CODEC.words)
    rng = random.Random(7)
    for _ in range(400):
        states, other = _states(rng), _states(rng)
        raw = CODEC.encode(states)
        assert raw[0] == layout.BINARY_TAG and len(raw) == CODEC.size
        decoded = CODEC.decode(raw)
        assert CODEC.encode(decoded) == raw
        for agg, state, back, more in zip(AGGS, states, decoded, other):
            assert _same(agg.value(back), agg.value(state)), (agg, state, back)
            # a decoded state merges as the state it stands for
            assert _same(agg.value(agg.merge([back, more])), agg.value(agg.merge([state, more])))


def test_words_beyond_64_bits_and_variable_states_are_json():
    rng = random.Random(3)
    wide = next(s for s in (_states(rng, wide=True) for _ in range(200))
                if CODEC.encode(s)[:1] == b"[")
    raw = CODEC.encode(wide)
    assert raw == layout.encode_tile(wide)
    assert layout.encode_tile(CODEC.decode(raw)) == raw
    sets = layout.tile_codec([tiles.aggregation("count_distinct", "int64"),
                              tiles.aggregation("max", "string")])
    assert not sets.fixed
    assert sets.encode([[1, 2], "b"]) == b'[[1,2],"b"]'


def test_a_binary_tile_of_another_width_is_refused():
    with pytest.raises(ValueError, match="bytes"):
        CODEC.decode(CODEC.encode(_states(random.Random(1)))[:-8])


# ----------------------------------------------------------------- the server
SPECS = tuple(FeatureSpec(f"{name}_{label}", out, function, span, arg, slot)
              for label, span in (("1d", DAY), ("7d", 7 * DAY))
              for slot, (name, function, arg, out) in enumerate(FIXED))
VIEW = ViewSpec("v", "user", (("user_id", "string"),), "0badc0de", TILE, 30 * DAY, (), SPECS)
MANIFEST = Manifest("p", {"v": VIEW}, {"all": (("v", "*"),)})


def _hashes(rng: random.Random, entities: int, encode) -> list[dict[bytes, bytes]]:
    """Tiles hashes of entities with sparse and dense activity, rollups
    included, some with no tile in the last day or at all."""
    out = []
    for e in range(entities):
        density = rng.choice([0.0, 0.002, 0.02, 0.3])
        floor = NOW - NOW % TILE
        fine = {floor - k * TILE: _states(rng) for k in range(7 * DAY // TILE + 1)
                if rng.random() < density and (e % 5 or k > DAY // TILE)}
        hashed = {layout.tile_field(s): encode(states) for s, states in fine.items()}
        for size in windows.levels(VIEW)[1:]:
            groups: dict[int, list] = {}
            for s, states in fine.items():
                groups.setdefault(s - s % size, []).append(states)
            for start, members in groups.items():
                merged = [a.merge(list(c)) for a, c in zip(AGGS, zip(*members))]
                hashed[layout.tile_field(start, size)] = encode(merged)
        out.append(hashed)
    return out


def _respond(hashes, corrupt: dict[int, bytes] | None = None) -> pb.GetOnlineFeaturesResponse:
    request = pb.GetOnlineFeaturesRequest(feature_service="all")
    request.entities["user_id"].string_list.values.extend(f"u{i}" for i in range(len(hashes)))
    prepared = lookup.prepare(MANIFEST, request, NOW)
    fields = prepared.views[0].tiles.fields
    rows = [[h.get(f) for f in fields] for h in hashes]
    for i, raw in (corrupt or {}).items():
        at = next(k for k, v in enumerate(rows[i]) if v is not None)
        rows[i][at] = raw
    return lookup.respond(prepared, [([bool(h) for h in hashes], rows)])


def test_vectorized_merge_answers_as_the_per_entity_merge():
    binary = _hashes(random.Random(11), 60, CODEC.encode)
    text = _hashes(random.Random(11), 60, layout.encode_tile)   # the same states, as JSON
    assert all(v[0] == layout.BINARY_TAG for h in binary for v in h.values())
    fast, slow = _respond(binary), _respond(text)
    assert fast.SerializeToString(deterministic=True) == slow.SerializeToString(deterministic=True)
    statuses = {s for vector in fast.results[1:] for s in vector.statuses}
    assert {pb.PRESENT, pb.NULL_VALUE} <= statuses   # windows with values and without


def test_an_entity_with_a_json_tile_is_merged_alone_and_the_rest_with_numpy():
    rng = random.Random(5)
    binary = _hashes(rng, 20, CODEC.encode)
    wide = next(s for s in (_states(rng, wide=True) for _ in range(200))
                if CODEC.encode(s)[:1] == b"[")
    text = [dict(h) for h in binary]
    field = layout.tile_field(NOW - NOW % TILE)
    binary[3][field] = CODEC.encode(wide)        # JSON: a word beyond 64 bits
    text[3][field] = layout.encode_tile(wide)
    mixed = _respond(binary)
    json_only = _respond([{f: layout.encode_tile(CODEC.decode(v)) for f, v in h.items()}
                          for h in text])
    assert mixed.SerializeToString(deterministic=True) == \
        json_only.SerializeToString(deterministic=True)


def test_a_corrupt_binary_tile_makes_only_its_entity_invalid():
    hashes = _hashes(random.Random(2), 12, CODEC.encode)
    victim = next(i for i, h in enumerate(hashes) if h)
    bad = bytes([layout.BINARY_TAG]) + b"\x00" * 5
    response = _respond(hashes, {victim: bad})
    healthy = _respond(hashes)
    for got, want in zip(response.results[1:], healthy.results[1:]):
        for i, (s, w) in enumerate(zip(got.statuses, want.statuses)):
            assert s == (pb.INVALID if i == victim else w)


def test_a_request_of_no_entities_answers_empty_columns():
    response = _respond([])
    assert len(response.results) == 1 + len(SPECS)
    assert all(len(vector.statuses) == 0 for vector in response.results)
