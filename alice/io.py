"""Atomic file writes: every output appears complete under its final name or not at all."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np


def _umask() -> int:
    """The process umask, read without changing it where Linux shows it (/proc/self/status);
    elsewhere set and restored at once (racy only against a thread changing it meanwhile)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def temporary_pattern(path: Path) -> re.Pattern[str]:
    """Names `atomic_path` gives the temporaries of `path`: `.NAME.RANDOM.tmpSUFFIX`."""
    return re.compile(re.escape(f".{path.name}.") + r"[A-Za-z0-9_]+\.tmp.*", re.ASCII | re.DOTALL)


def remove_stale_temporaries(path: str | Path) -> None:
    """Remove temporaries of `path` that an interrupted earlier write left beside it."""
    path = Path(path)
    pattern = temporary_pattern(path)
    for entry in path.parent.glob(f".{glob.escape(path.name)}.*"):
        if pattern.fullmatch(entry.name) and entry.is_file():
            entry.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds.

    The temporary file lives in the same folder so the final rename is atomic on POSIX.
    `suffix` keeps an extension that writers key on (e.g. ".nii.gz", ".npy").
    Temporaries of `path` left by an interrupted earlier write are removed first (one writer per
    target at a time), and the final file gets the mode a plain `open(path, "w")` would give it
    (0666 less the umask) rather than the 0600 of `mkstemp`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    suffix = suffix if suffix is not None else "".join(path.suffixes)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_json(path: str | Path, obj: Any) -> None:
    """Write `obj` as indented JSON, atomically."""
    with atomic_path(path, suffix=".json") as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_text(path: str | Path, text: str) -> None:
    """Write text atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def save_npy(path: str | Path, array: np.ndarray) -> None:
    """Save one array as .npy (memory-mappable with np.load(mmap_mode='r')), atomically."""
    with atomic_path(path, suffix=".npy") as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, np.ascontiguousarray(array))


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def read_json_object(path: str | Path, missing: str) -> dict:
    """The JSON object in `path`; an InputError naming the file when it is absent (`missing` says
    what it should have been), not valid JSON or not an object."""
    from alice.errors import InputError

    path = Path(path)
    if not path.is_file():
        raise InputError(path, missing)
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(path, f"not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise InputError(path, "not a JSON object")
    return data


def load_torch_dict(path: str | Path, required: list[str] | tuple[str, ...], what: str) -> dict:
    """Load a torch file with `weights_only=True` (never unpickling arbitrary objects) and check it
    is a dict holding `required` keys; any problem is an InputError naming the file."""
    import torch

    from alice.errors import InputError

    path = Path(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - unreadable or unsafe file = bad input
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise InputError(path, f"not a readable weights-only torch {what} ({first})") from None
    if not isinstance(obj, dict):
        raise InputError(path, f"{what} must be a dict, got {type(obj).__name__}")
    missing = [k for k in required if k not in obj]
    if missing:
        raise InputError(path, f"{what} lacks keys {missing} (has {sorted(map(str, obj))})")
    return obj


def settings_hash(obj: Any) -> str:
    """A short stable hash of a JSON-able object (records which settings made an output)."""
    import hashlib

    blob = json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:12]
