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
    path = root / "featurestore.yaml"
    text = path.read_text()
    assert REDIS_LINE in text, path
    path.write_text(text.replace(REDIS_LINE, f"  url: {url}"))
    return root
