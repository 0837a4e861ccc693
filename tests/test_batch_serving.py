"""How the server merges tiles (`serving.lookup`), without I/O: the window's
tiles only, every aggregation's value through `tiles.Aggregation.value`, and
state that does not match the view refused."""
from __future__ import annotations

from fractions import Fraction

import pytest

from featurestore import layout, tiles
from featurestore.manifest import FeatureSpec, Manifest, ViewSpec
from serving import lookup
from serving.v1 import serving_pb2 as pb
from tests.reference import correctly_rounded_sqrt

US = 1_000_000
TILE = 300 * US
NOW = 1_767_225_600 * US + 7 * US
FLOOR = NOW - NOW % TILE
AGGS = (FeatureSpec("n", "int64", "count", TILE),
        FeatureSpec("total", "float64", "sum", 2 * TILE, "float64"),
        FeatureSpec("sd", "float64", "stddev", 2 * TILE, "int64"),
        FeatureSpec("last", "string", "last", None, "string"),
        FeatureSpec("kinds", "int64", "count_distinct", 2 * TILE, "string"))
VIEW = ViewSpec("v", "user", (("user_id", "string"),), "ff", TILE, 3 * TILE, (), AGGS)
MANIFEST = Manifest("p", {"v": VIEW}, {"s": (("v", "*"),)})


def _respond(hashes: list[dict]):
    request = pb.GetOnlineFeaturesRequest(feature_service="s")
    request.entities["user_id"].string_list.values.extend(f"u{i}" for i in range(len(hashes)))
    prepared = lookup.prepare(MANIFEST, request, NOW)
    fields = prepared.views[0].tiles.fields
    if fields is not None:  # what HMGET returns for them
        hashes = [[h.get(f) for f in fields] for h in hashes]
    return lookup.respond(prepared, [([None] * len(hashes), hashes)])


ARGUMENTS = {"n": lambda amount, kind: None, "total": lambda amount, kind: amount,
             "sd": lambda amount, kind: int(amount), "last": lambda amount, kind: kind,
             "kinds": lambda amount, kind: kind}


def _tile(start: int, rows: list[tuple[int, float, str]]) -> tuple[bytes, bytes]:
    """A tile of (ts, amount, kind) rows, its states computed by tiles.py."""
    states = [tiles.aggregation(a.function, a.input_type).state_of(
        [(ts, ARGUMENTS[a.name](amount, kind)) for ts, amount, kind in rows]) for a in AGGS]
    return layout.tile_field(start), layout.encode_tile(states)


def test_each_aggregation_merges_the_tiles_of_its_window():
    rows_now = [(FLOOR + 1, 2.5, "b"), (FLOOR + 2, 0.1, "a")]
    rows_before = [(FLOOR - TILE, 0.2, "c")]
    rows_old = [(FLOOR - 3 * TILE, 100.0, "z")]  # only in the ttl-wide window
    hashes = [dict([_tile(FLOOR, rows_now), _tile(FLOOR - TILE, rows_before),
                    _tile(FLOOR - 3 * TILE, rows_old), _tile(FLOOR + TILE, [(FLOOR + TILE, 9.0, "x")])])]
    columns = {f.name: c for f, c in zip(AGGS, _respond(hashes).results[1:])}
    assert list(columns["n"].values.int64_list.values) == [3]    # this tile and the one before
    total = float(Fraction(2.5) + Fraction(0.1) + Fraction(0.2))    # exact, rounded once
    assert list(columns["total"].values.double_list.values) == [total]
    assert columns["sd"].values.double_list.values[0] == correctly_rounded_sqrt(Fraction(4, 3))
    assert list(columns["last"].values.string_list.values) == ["a"]
    assert list(columns["kinds"].values.int64_list.values) == [3]
    assert list(columns["n"].event_timestamps) == [FLOOR]


@pytest.mark.parametrize("raw, message", [
    (b"[1,2]", "has 2 states; the view has 5 states"),
    (b"7", "has 7; the view has 5 states"),
    (b"[1,", "are not valid JSON"),
])
def test_tiles_that_do_not_match_the_view_are_invalid_for_their_entity_only(raw, message):
    good = dict([_tile(FLOOR, [(FLOOR + 1, 2.5, "b")])])
    request = pb.GetOnlineFeaturesRequest(feature_service="s")
    request.entities["user_id"].string_list.values.extend(["bad", "good"])
    prepared = lookup.prepare(MANIFEST, request, NOW)
    fields = prepared.views[0].tiles.fields
    hashes = [[h.get(f) for f in fields] for h in ({layout.tile_field(FLOOR): raw}, good)]
    response = lookup.respond(prepared, [([None, None], hashes)])
    [problem] = prepared.problems
    assert problem.view == "v" and "'bad'" in str(problem) and message in str(problem)
    for column in response.results[1:]:   # the other entity is served as ever
        assert list(column.statuses)[0] == pb.INVALID
        assert list(column.statuses)[1] in (pb.PRESENT, pb.NULL_VALUE)
    assert list(response.results[1].values.int64_list.values)[0] == 0   # INVALID: zero
