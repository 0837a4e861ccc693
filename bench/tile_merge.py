"""Serving cost of windows, without I/O: `serving.lookup.respond` for 1,000
entities x 10 window features (count, sum, avg, max, stddev over 1 day and
7 days, 5-minute tiles), every tile of every entity holding events (the worst
case).

    .venv/bin/python bench/tile_merge.py [--entities 1000] [--repeat 7]

The server reads the cover of each window (`featurestore.windows.cover`:
fine tiles at the edges, hour and day rollups between). Timed side by side
on the same states: binary tiles (layout v4, `layout.TileCodec`: decoded and
merged with numpy), the same tiles as JSON (layout v3's encoding, which v4
keeps for views with sets or strings: parsed and merged in Python), and
whole hashes of fine JSON tiles (what layout v2 read: 2,017 tiles for 7
days; on fewer entities, scaled). The two cover paths must answer the same
response. The binary path runs first with CPython's default GC thresholds,
then all with the server's (`serving.server.tune_gc`). Prints the figures,
a profile of the binary path with --profile; the last line is one JSON
object.
"""
from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from featurestore import layout, tiles, windows  # noqa: E402
from featurestore.manifest import FeatureSpec, Manifest, ViewSpec  # noqa: E402
from serving import lookup  # noqa: E402
from serving.server import tune_gc  # noqa: E402
from serving.v1 import serving_pb2 as pb  # noqa: E402

US = 1_000_000
TILE = 300 * US
HOUR, DAY = 3600 * US, 86400 * US
NOW = 1_767_225_600 * US + 4 * HOUR + 7 * TILE + 123 * US   # mid-day, mid-hour
FUNCTIONS = (("n", "count", "int64"), ("sum", "sum", "float64"), ("avg", "avg", "float64"),
             ("max", "max", "float64"), ("std", "stddev", "float64"))
AGGREGATIONS = tuple(  # the 1d and 7d versions of a function share its state's slot
    FeatureSpec(f"{name}_{label}", type_, function, span,
                "float64" if function != "count" else None, slot)
    for label, span in (("1d", DAY), ("7d", 7 * DAY))
    for slot, (name, function, type_) in enumerate(FUNCTIONS))
VIEW = ViewSpec("spend", "user", (("user_id", "string"),), "00ff00ff", TILE, 30 * DAY, (),
                AGGREGATIONS)
MANIFEST = Manifest("bench", {"spend": VIEW}, {"spend": (("spend", "*"),)})
STATE_OF = [lookup.tile_aggregation(a) for a in AGGREGATIONS[:len(FUNCTIONS)]]  # per slot
CODEC = layout.tile_codec(STATE_OF)


def entity_hash(rng: random.Random, pool: list[list], encode) -> dict[bytes, bytes]:
    """One entity's tiles hash: 7 days + 1 tile of fine tiles, with rollups."""
    floor = NOW - NOW % TILE
    fine = {floor - k * TILE: rng.choice(pool) for k in range(7 * DAY // TILE + 1)}
    out = {layout.tile_field(s): encode(states) for s, states in fine.items()}
    for size in windows.levels(VIEW)[1:]:
        groups: dict[int, list] = {}
        for s, states in fine.items():
            groups.setdefault(s - s % size, []).append(states)
        for start, members in groups.items():
            merged = [a.merge(c) for a, c in zip(STATE_OF, zip(*members))]
            out[layout.tile_field(start, size)] = encode(merged)
    return out


def request_for(n: int) -> pb.GetOnlineFeaturesRequest:
    request = pb.GetOnlineFeaturesRequest(feature_service="spend")
    request.entities["user_id"].string_list.values.extend(f"user_{i}" for i in range(n))
    return request


def timed(fn, repeat: int) -> float:
    fn()
    runs = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t0)
    return statistics.median(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entities", type=int, default=1000)
    parser.add_argument("--whole-hash-entities", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    rng = random.Random(1)
    pool = [[a.state_of([(0, round(rng.uniform(1, 300), 2)) for _ in range(rng.randrange(1, 5))])
             for a in STATE_OF] for _ in range(300)]
    count = max(args.entities, args.whole_hash_entities)
    hashes = {}
    for name, encode in (("binary", CODEC.encode), ("json", layout.encode_tile)):
        same = random.Random(2)   # the same states in both encodings
        hashes[name] = [entity_hash(same, pool, encode) for _ in range(count)]

    prepared = lookup.prepare(MANIFEST, request_for(args.entities), NOW)
    fields = prepared.views[0].tiles.fields
    replies = {name: [([0] * args.entities, [[h.get(f) for f in fields]
                                             for h in found[:args.entities]])]
               for name, found in hashes.items()}
    answers = {name: lookup.respond(prepared, r) for name, r in replies.items()}
    if answers["binary"] != answers["json"]:
        raise AssertionError("binary and JSON tiles answer differently")
    default_gc = timed(lambda: lookup.respond(prepared, replies["binary"]), args.repeat)
    tune_gc()   # as `featurestore serve` runs: the rest is timed so
    times = {name: timed(lambda r=r: lookup.respond(prepared, r), args.repeat)
             for name, r in replies.items()}

    n = args.whole_hash_entities
    whole = lookup.prepare(MANIFEST, request_for(n), NOW)
    read = whole.views[0].tiles
    whole.views[0].__dict__["tiles"] = lookup.TileRead(None, (), read.lowers)  # HGETALL
    fine_only = [{f: v for f, v in h.items() if b":" not in f} for h in hashes["json"][:n]]
    v2 = timed(lambda: lookup.respond(whole, [([0] * n, fine_only)]), max(1, args.repeat // 3))
    v2_scaled = v2 * args.entities / n
    size = {name: sum(len(v) for h in found[:100] for v in h.values()) / 100
            for name, found in hashes.items()}

    binary, text = times["binary"], times["json"]
    print(f"{args.entities:,} entities x {len(AGGREGATIONS)} window features (1d and 7d, 5-minute tiles)")
    print(f"fields read per entity: {len(fields)} (cover); whole hash {len(fine_only[0])}")
    print(f"tile value bytes: binary {CODEC.size}, JSON {size['json'] / len(hashes['json'][0]):.0f} "
          f"on average")
    print(f"respond, binary tiles (v4):     {binary * 1000:8.1f} ms  "
          f"(with CPython's default GC thresholds: {default_gc * 1000:.1f} ms)")
    print(f"respond, JSON tiles (v3):       {text * 1000:8.1f} ms  ({text / binary:.1f}x binary)")
    print(f"respond, whole hashes (scaled): {v2_scaled * 1000:8.1f} ms  ({v2_scaled / binary:.1f}x binary)")
    if args.profile:
        profile = cProfile.Profile()
        profile.runcall(lambda: [lookup.respond(prepared, replies["binary"]) for _ in range(3)])
        pstats.Stats(profile).sort_stats("tottime").print_stats(12)
    print(json.dumps({"benchmark": "tile_merge", "entities": args.entities,
                      "features": len(AGGREGATIONS), "fields": len(fields),
                      "fields_whole_hash": len(fine_only[0]),
                      "respond_ms_binary": round(binary * 1000, 1),
                      "respond_ms_binary_default_gc": round(default_gc * 1000, 1),
                      "respond_ms_json": round(text * 1000, 1),
                      "respond_ms_whole_hash": round(v2_scaled * 1000, 1),
                      "json_vs_binary": round(text / binary, 1)}))


if __name__ == "__main__":
    main()
