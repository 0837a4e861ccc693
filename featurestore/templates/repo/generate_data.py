"""Generate the example shop's data: purchases (events) and user profiles (a snapshot).

    python generate_data.py                      # 1M purchases over 7 days ending now
    python generate_data.py --events 100000 --days 2 --end 2026-01-01T00:00:00

Writes data/purchases/day=YYYY-MM-DD.parquet (one file per day) and
data/profiles.parquet. Needs only numpy and pyarrow; edit it freely.
"""
from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

CATEGORIES = np.array(["books", "games", "music", "toys", "garden", "food", "sports", "tech"])
COUNTRIES = np.array(["US", "BR", "DE", "FR", "GB", "IN", "JP", "MX", "PH", "ID"])
US_PER_DAY = 86_400_000_000
TS = pa.timestamp("us", tz="UTC")


def user_ids(n: int) -> np.ndarray:
    return np.char.add("user_", np.char.zfill(np.arange(n).astype(str), 6))


def purchases(rng: np.random.Generator, events: int, users: int, end_us: int, days: int) -> pa.Table:
    # A few users buy a lot (Zipf-like), as in real shops.
    weights = 1.0 / np.arange(1, users + 1) ** 0.8
    user = rng.choice(users, size=events, p=weights / weights.sum())
    ts = end_us - rng.integers(0, days * US_PER_DAY, size=events)
    amount = np.round(rng.lognormal(mean=3.0, sigma=1.0, size=events), 2)
    refund = rng.random(events) < 0.05
    amount[refund] = -amount[refund]
    order = np.argsort(ts, kind="stable")
    ids = user_ids(users)
    return pa.table({
        "user_id": pa.array(ids[user[order]]),
        "item_id": pa.array(rng.integers(1, 50_000, size=events)[order]),
        "amount": pa.array(amount[order]),
        "category": pa.array(CATEGORIES[rng.integers(0, len(CATEGORIES), size=events)[order]]),
        "event_time": pa.array(ts[order], type=pa.int64()).cast(TS),
    })


def profiles(rng: np.random.Generator, users: int, end_us: int) -> pa.Table:
    updated = end_us - rng.integers(0, 300 * US_PER_DAY, size=users)
    return pa.table({
        "user_id": pa.array(user_ids(users)),
        "country": pa.array(COUNTRIES[rng.integers(0, len(COUNTRIES), size=users)]),
        "age": pa.array(rng.integers(16, 80, size=users)),
        "updated_at": pa.array(updated, type=pa.int64()).cast(TS),
    })


def write(out: Path, events: int, users: int, days: int, end: dt.datetime, seed: int) -> None:
    rng = np.random.default_rng(seed)
    end_us = int(end.timestamp() * 1_000_000)
    table = purchases(rng, events, users, end_us, days)
    folder = out / "purchases"
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.parquet"):
        old.unlink()
    day = pc.strftime(table["event_time"], format="%Y-%m-%d")
    for d in sorted(set(day.to_pylist())):
        part = table.filter(pc.equal(day, d))
        pq.write_table(part, folder / f"day={d}.parquet")
    pq.write_table(profiles(rng, users, end_us), out / "profiles.parquet")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=1_000_000)
    p.add_argument("--users", type=int, default=10_000)
    p.add_argument("--days", type=int, default=7)
    p.add_argument("--end", help="ISO time (UTC) of the newest event; default now")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "data")
    a = p.parse_args()
    end = (dt.datetime.fromisoformat(a.end).replace(tzinfo=dt.timezone.utc) if a.end
           else dt.datetime.now(dt.timezone.utc).replace(microsecond=0))
    write(a.out, a.events, a.users, a.days, end, a.seed)
    print(f"wrote {a.events:,} purchases of {a.users:,} users over {a.days} days "
          f"ending {end.isoformat()} to {a.out}")


if __name__ == "__main__":
    main()
