"""Serving cost of tiles: 1,000 entities x a 1-day window of 5-minute tiles
(289 tiles each) x 5 aggregations (count 1h, sum, avg, max, stddev 1d).

    .venv/bin/python bench/tile_merge.py [--entities 1000] [--repeat 5]

Measures `serving.lookup.respond` (decode and merge, no I/O) on layout v2
states, against the layout v1 way in the same run (one JSON parse per tile,
merging with generators, float states: what the server did before exact
states), and the whole request through gRPC and a real Redis. Prints the
figures; the last line is one JSON object.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from featurestore import layout, redis_local, tiles  # noqa: E402
from featurestore.manifest import FeatureSpec, Manifest, ViewSpec  # noqa: E402
from serving import lookup  # noqa: E402
from serving.v1 import serving_pb2 as pb  # noqa: E402

US = 1_000_000
TILE = 300 * US
NOW = 1_767_225_600 * US + 123 * US
AGGREGATIONS = (FeatureSpec("n_1h", "int64", "count", 3600 * US),
                FeatureSpec("sum_1d", "float64", "sum", 86400 * US, "float64"),
                FeatureSpec("avg_1d", "float64", "avg", 86400 * US, "float64"),
                FeatureSpec("max_1d", "float64", "max", 86400 * US, "float64"),
                FeatureSpec("std_1d", "float64", "stddev", 86400 * US, "float64"))
VIEW = ViewSpec("spend", "user", (("user_id", "string"),), "00ff00ff", TILE, 30 * 86400 * US, (),
                AGGREGATIONS)
MANIFEST = Manifest("bench", {"spend": VIEW}, {"spend": (("spend", "*"),)})


def tile_hashes(entities: int, seed: int = 1) -> tuple[list[dict], list[dict]]:
    """Per entity, its tiles hash in layout v2 and in layout v1."""
    rng = random.Random(seed)
    floor = NOW - NOW % TILE
    v2, v1 = [], []
    for _ in range(entities):
        h2, h1 = {}, {}
        for k in range(289):
            amounts = [(0, round(rng.uniform(1, 300), 2)) for _ in range(rng.randrange(1, 5))]
            field = layout.tile_field(floor - k * TILE)
            h2[field] = layout.encode_tile([tiles.aggregation(a.function, a.input_type).state_of(amounts)
                                           for a in AGGREGATIONS])
            xs = [x for _, x in amounts]
            h1[field] = layout.encode_tile([len(xs), sum(xs), [sum(xs), len(xs)], max(xs),
                                           [len(xs), sum(xs), sum(x * x for x in xs)]])
        v2.append(h2)
        v1.append(h1)
    return v2, v1


def v1_merge(hashes: list[dict]) -> list[list]:
    """The layout v1 server's work: decode each tile, filter, merge per feature."""
    out = []
    for raw in hashes:
        windowed = []
        for field, encoded in raw.items():
            start = int(field)
            if start <= NOW and start >= NOW - NOW % TILE - 86400 * US:
                windowed.append((start, json.loads(encoded)))
        windowed.sort(key=lambda t: t[0], reverse=True)
        row = []
        for j, a in enumerate(AGGREGATIONS):
            lower = NOW - NOW % TILE - a.window_us
            states = [s[j] for start, s in windowed if start >= lower]
            if a.function in ("count",):
                row.append(sum(states))
            elif a.function == "sum":
                row.append(sum(s for s in states if s is not None))
            elif a.function == "max":
                row.append(max((s for s in states if s is not None), default=None))
            elif a.function == "avg":
                total, n = 0.0, 0
                for s, c in states:
                    total, n = total + s, n + c
                row.append(total / n if n else None)
            else:  # stddev from float sums, as an inexact state would have it
                n = total = squares = 0
                for c, s, q in states:
                    n, total, squares = n + c, total + s, squares + q
                row.append(math.sqrt(max(0.0, (squares - total * total / n) / (n - 1)))
                           if n > 1 else None)
        out.append(row)
    return out


def timed(fn, repeat: int) -> float:
    runs = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t0)
    return statistics.median(runs)


def grpc_lookup(v2: list[dict], repeat: int) -> float:
    """Median seconds of one gRPC request for every entity, Redis included."""
    import redis

    users = [f"user_{i}" for i in range(len(v2))]
    with tempfile.TemporaryDirectory() as tmp:
        server = redis_local.start(Path(tmp))
        try:
            r = redis.Redis.from_url(server.url)
            pipe = r.pipeline(transaction=False)
            for user, hash_ in zip(users, v2):
                key = layout.tiles_key("bench", "spend", VIEW.fingerprint, layout.encode_entity_key([user]))
                pipe.hset(key, mapping=hash_)
            pipe.execute()
            return _serve(server.url, users, repeat)
        finally:
            server.stop()


def _serve(url: str, users: list[str], repeat: int) -> float:
    from serving.client import FeatureClient
    from serving.server import start_server

    result = {}

    async def run():
        server = await start_server(MANIFEST, url, port=0, clock=lambda: NOW)
        loop = asyncio.get_running_loop()

        def requests():
            with FeatureClient(server.address, timeout=60) as client:
                get = lambda: client.get_online_features(service="spend", entities={"user_id": users})  # noqa: E731
                get()
                return timed(get, repeat)
        try:
            result["seconds"] = await loop.run_in_executor(None, requests)
        finally:
            await server.stop(None)

    thread = threading.Thread(target=lambda: asyncio.run(run()))
    thread.start()
    thread.join()
    return result["seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entities", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    v2, v1 = tile_hashes(args.entities)
    request = pb.GetOnlineFeaturesRequest(feature_service="spend")
    request.entities["user_id"].string_list.values.extend(f"user_{i}" for i in range(args.entities))
    prepared = lookup.prepare(MANIFEST, request)
    replies = [([None] * args.entities, v2)]
    ours = timed(lambda: lookup.respond(prepared, replies, NOW), args.repeat)
    before = timed(lambda: v1_merge(v1), args.repeat)
    end_to_end = grpc_lookup(v2, args.repeat)
    print(f"{args.entities:,} entities x 289 tiles x {len(AGGREGATIONS)} aggregations")
    print(f"respond (decode + merge), exact v2 states: {ours * 1000:8.1f} ms")
    print(f"the v1 way on v1 float states:             {before * 1000:8.1f} ms  "
          f"({before / ours:.2f}x ours)")
    print(f"one gRPC request, Redis included:          {end_to_end * 1000:8.1f} ms")
    print(json.dumps({"benchmark": "tile_merge", "entities": args.entities, "tiles_per_entity": 289,
                      "aggregations": len(AGGREGATIONS), "respond_ms": round(ours * 1000, 1),
                      "v1_way_ms": round(before * 1000, 1),
                      "v1_way_over_ours": round(before / ours, 2),
                      "grpc_request_ms": round(end_to_end * 1000, 1)}))


if __name__ == "__main__":
    main()
