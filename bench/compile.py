"""Compile benchmark: a generated repo of 100 views with 1000 features.

    .venv/bin/python bench/compile.py [--runs 7]

Times, as the median of several runs: `check` (parse and type-check every
file: what every command does first) and `compile` (check, then every
backend's artifacts, as `featurestore compile` writes them). The baseline,
measured in the same run on the same text, is lark alone parsing it with the
project's grammar: the floor that any front end built on lark pays. The last
line printed is one JSON object with the figures.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import dsl  # noqa: E402
from dsl.parser import grammar  # noqa: E402
from featurestore.compile import artifacts  # noqa: E402

N_FILES, VIEWS_PER_FILE = 10, 10   # 100 views, 10 features each

HEADER = """\
entity user { key user_id: string }
entity user_item { key user_id: string, item_id: int64 }

source purchases {
    batch parquet "data/purchases/*.parquet"
    timestamp event_time
    schema {
        user_id: string,
        item_id: int64,
        amount: float64,
        quantity: int64,
        category: string,
        coupon: string,
        paid: bool,
        event_time: timestamp,
    }
}
"""


def view(n: int) -> str:
    """One view with 10 features: aggregations (several windows, filters) and
    row-level expressions."""
    entity = "user_item" if n % 5 == 0 else "user"
    return f"""
view v{n} {{
    entity {entity}
    from purchases where amount > {n % 7}
    tile 5m
    ttl 30d
    description "generated view {n}"
    tags {{ team: "t{n % 4}" }}
    features {{
        spend = sum(amount * quantity) where paid over 1h, 1d, 7d
        n     = count() where category == "c{n % 9}"  over 1h, 1d
        avg_1d    = avg(amount)                 over 1d
        max_7d    = max(amount)                 over 7d
        last_cat  = upper(coalesce(category, "none"))
        size      = case when amount >= {n} then "big" when amount >= 10 then "mid" else "small" end
        hour_bought = hour(event_time) + cast(paid as int64)
    }}
}}
"""


def generate() -> dict[str, str]:
    files = {"features/base.feat": HEADER}
    for f in range(N_FILES):
        views = "".join(view(f * VIEWS_PER_FILE + i) for i in range(VIEWS_PER_FILE))
        files[f"features/views_{f}.feat"] = views
    services = "".join(f"service s{i} v{i % 3 + 1} {{ v{i}.*, v{(i + 1) % 100}.spend_1d }}\n"
                       for i in range(100))
    files["features/services.feat"] = services
    return files


def median_seconds(fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=7)
    args = ap.parse_args()
    files = generate()
    result = dsl.compile_files(files)
    assert result.ok, result.render()
    plan = result.plan
    features = sum(len(v.feature_names) for v in plan.views)
    lines = sum(t.count("\n") for t in files.values())
    print(f"repo: {len(files)} files, {lines} lines, {len(plan.views)} views, {features} features, "
          f"{len(plan.services)} services")

    parser = grammar()
    lark_parse = median_seconds(lambda: [parser.parse(t) for t in files.values()], args.runs)
    check = median_seconds(lambda: dsl.compile_files(files), args.runs)
    emit = median_seconds(lambda: artifacts(plan, "bench"), args.runs)
    full = median_seconds(lambda: artifacts(dsl.compile_files(files).plan, "bench"), args.runs)
    print(f"lark parse (baseline): {lark_parse * 1000:8.1f} ms")
    print(f"check (parse + types): {check * 1000:8.1f} ms  ({check / lark_parse:.2f}x lark)")
    print(f"artifacts from a plan: {emit * 1000:8.1f} ms")
    print(f"compile (check + all): {full * 1000:8.1f} ms  ({full / lark_parse:.2f}x lark); "
          f"target < 2000 ms")
    print(json.dumps({
        "benchmark": "compile", "views": len(plan.views), "features": features,
        "lines": lines, "runs": args.runs,
        "lark_parse_ms": round(lark_parse * 1000, 1), "check_ms": round(check * 1000, 1),
        "artifacts_ms": round(emit * 1000, 1), "compile_ms": round(full * 1000, 1),
        "check_vs_lark_parse": round(check / lark_parse, 2),
        "compile_vs_lark_parse": round(full / lark_parse, 2),
        "target_ms": 2000, "within_target": full < 2.0,
    }))


if __name__ == "__main__":
    main()
