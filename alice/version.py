"""The code version recorded in every checkpoint, metrics file and table cell."""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

from alice import __version__


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """`<package version>+g<commit>[.dirty]` inside a git checkout, else the package version."""
    repo = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short=10", "HEAD"],
                                capture_output=True, text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return __version__
    return f"{__version__}+g{commit}{'.dirty' if dirty else ''}" if commit else __version__
