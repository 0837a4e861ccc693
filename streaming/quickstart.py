"""The quickstart's streaming step: a stream view, an event pushed, the
served feature changing within a second.

`featurestore.quickstart` calls `add_live_view` before `apply` (so the
server serves the view) and `show_live_update` while its server runs.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Callable

LIVE_FEAT = """\
# Purchases as they happen: `featurestore push purchase_events --json '{...}'`
# appends events, `featurestore stream` keeps this view fresh within a second.

source purchase_events {
    stream files "data/purchase_events/" format json
    timestamp event_time
    schema {
        user_id: string,
        item_id: int64,
        amount: float64,
        category: string,
        event_time: timestamp,
    }
}

view user_live {
    entity user
    from purchase_events where amount > 0
    tile 1m
    ttl 1d
    description "What a user bought in the last minutes, as it streams in"
    features {
        purchases_10m   = count()     over 10m
        spend_10m       = sum(amount) over 10m
        latest_category = category
    }
}
"""
FEATURES = ["user_live:purchases_10m", "user_live:spend_10m", "user_live:latest_category"]


def add_live_view(root: Path) -> bool:
    """Write features/live.feat unless there is one; False when PyFlink (the
    streaming extra) is not installed, so that the quickstart skips the step."""
    try:
        import pyflink  # noqa: F401
    except ImportError:
        return False
    path = root / "features" / "live.feat"
    if not path.exists():
        path.write_text(LIVE_FEAT)
    return True


class LiveJob:
    """The streaming job, started in a thread: the JVM starts while the
    quickstart goes on."""

    def __init__(self, plan, root: Path, project: str, store):
        from streaming.job import StreamJob, StreamOptions

        self.job = StreamJob(plan, root, project, store,
                             StreamOptions(checkpoint_dir=root / ".featurestore" / "stream",
                                           heap="768m"))
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._start, name="stream-start", daemon=True)
        self._thread.start()

    def _start(self) -> None:
        try:
            self.job.start()
        except BaseException as e:  # reported by ready()
            self.error = e

    def ready(self, timeout_s: float = 120) -> None:
        self._thread.join(timeout_s)
        if self.error is not None:
            raise self.error

    def stop(self) -> None:
        self.job.stop()


def show_live_update(live: LiveJob, plan, root: Path, client, user: str,
                     say: Callable[[str], None]) -> None:
    """Push a purchase of `user` and show the served features before and
    after, with the time between (after one warm-up event, so that the
    figure is the job's freshness and not its start)."""
    from streaming.push import push

    live.ready()
    _push_and_wait(plan, root, client, "user_warmup", timeout_s=60)
    before = _features(client, user)
    say(f"before: {_shown(before)}")
    path, seconds = _push_and_wait(plan, root, client, user, before=before)
    say(f"pushed 1 purchase of {user} ({path.relative_to(root)})")
    say(f"after {seconds:.2f} s: {_shown(_features(client, user))}")


def _push_and_wait(plan, root: Path, client, user: str, before: dict | None = None,
                   timeout_s: float = 10) -> tuple[Path, float]:
    from streaming.push import push

    before = before or _features(client, user)
    category = "games"
    path, _ = push(plan, root, "purchase_events",
                   [{"user_id": user, "item_id": 42, "amount": 42.5, "category": category}])
    start = time.monotonic()

    def shown(now: dict) -> bool:
        # Tiles and the latest row are written separately: wait for both
        # the count and the latest category, not just for any change.
        return ((now["purchases_10m"] or 0) > (before["purchases_10m"] or 0)
                and now["latest_category"] == category)

    while not shown(_features(client, user)):
        if time.monotonic() - start > timeout_s:
            raise TimeoutError(f"the pushed event did not show within {timeout_s:g} s")
        time.sleep(0.01)
    return path, time.monotonic() - start


def _features(client, user: str) -> dict:
    got = client.get_online_features(features=FEATURES, entities={"user_id": [user]}).to_dict()
    return {k: v[0] for k, v in got.items() if k != "user_id"}


def _shown(values: dict) -> str:
    return ", ".join(f"{k} = {v}" for k, v in values.items())
