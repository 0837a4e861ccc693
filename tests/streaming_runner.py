"""Runs the streaming job of the differential plan, as `featurestore stream`
does, in a process of its own (so that a test can kill it outright):

    python -m tests.streaming_runner ROOT REDIS_URL METRICS_PORT

The plan is tests/differential.py's, its source read as a `stream files`
folder of JSON lines (ROOT/data/events/), checkpoints every second in
ROOT/checkpoints.
"""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from streaming.job import StreamOptions, stream
from tests import differential as d

STREAM_SOURCE = dataclasses.replace(d.PLAN.sources[0], kind="stream", format="files",
                                    path="data/events/", options=(("format", "json"),))
STREAM_PLAN = dataclasses.replace(d.PLAN, sources=(STREAM_SOURCE,))


def main(root: str, redis_url: str, metrics_port: str) -> None:
    options = StreamOptions(checkpoint_dir=Path(root) / "checkpoints", checkpoint_interval_ms=1000,
                            heap="768m", metrics_port=int(metrics_port))
    stream(STREAM_PLAN, Path(root), d.PROJECT, redis_url, options,
           lambda line: print(line, flush=True))


if __name__ == "__main__":
    main(*sys.argv[1:4])
