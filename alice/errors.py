"""One exception type per kind of user error, each rendering as a single line.

The CLI catches `HarnessError`, prints its message and exits non-zero; everything else is a
bug and keeps its traceback.
"""

from __future__ import annotations

from pathlib import Path


class HarnessError(Exception):
    """A user-facing error: bad input, bad config, missing file."""

    exit_code = 2


class InputError(HarnessError):
    """Bad input data. The message names the file and the problem."""

    def __init__(self, path: str | Path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class ConfigError(HarnessError):
    """Bad configuration. The message names the key and the problem."""

    def __init__(self, key: str, problem: str):
        self.key = key
        self.problem = problem
        super().__init__(f"config key '{key}': {problem}")
