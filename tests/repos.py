"""Feature repos for tests: the template `featurestore init` writes, with
its generated data, and pointing a repo at a Redis."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from featurestore.cli import main as cli

REDIS_LINE = "  # url: redis://localhost:6379/0"   # the templates' unset online_store.url


def template_repo(root: Path, *generate_args: str) -> Path:
    """`featurestore init root`, then its generate_data.py with `generate_args`."""
    assert cli(["init", str(root)]) == 0
    subprocess.run([sys.executable, "generate_data.py", *generate_args], cwd=root, check=True,
                   capture_output=True)
    return root


def use_redis(root: Path, url: str) -> Path:
    """Point the repo's featurestore.yaml (a template's) at the Redis at `url`."""
    return use_online_store(root, url=url)


def use_online_store(root: Path, **settings: str) -> Path:
    """Set the repo's (a template's) online_store settings, e.g.
    type="redis_cluster", connection_string="h1:p1,h2:p2"."""
    path = root / "featurestore.yaml"
    text = path.read_text()
    assert REDIS_LINE in text, path
    lines = "\n".join(f"  {key}: {value!r}" if key == "connection_string" else
                      f"  {key}: {value}" for key, value in settings.items())
    path.write_text(text.replace(REDIS_LINE, lines))
    return root
