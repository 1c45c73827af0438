"""Atomic file writes: every output appears complete under its final name or not at all."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator, Sequence

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
    """Names `atomic_path` and `atomic_set` give the temporaries of `path`: `.NAME.RANDOM.tmpSUFFIX`."""
    return re.compile(re.escape(f".{path.name}.") + r"[A-Za-z0-9_]+\.tmp.*", re.ASCII | re.DOTALL)


def remove_stale_temporaries(path: str | Path) -> None:
    """Remove temporaries of `path` (files, or folders of `atomic_set`) that an interrupted earlier
    write left beside it."""
    path = Path(path)
    pattern = temporary_pattern(path)
    for entry in path.parent.glob(f".{glob.escape(path.name)}.*"):
        if not pattern.fullmatch(entry.name):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        elif entry.is_file():
            entry.unlink(missing_ok=True)


def _remove(path: Path) -> None:
    """Remove a file or a folder tree; nothing if it is absent."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _aside(path: Path) -> Path:
    """Rename `path` (a file or a folder) to a fresh temporary name of it and return that name: it
    disappears whole, and a killed process leaves a temporary that the next write removes."""
    if path.is_dir() and not path.is_symlink():
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp = Path(name)
    try:
        os.replace(path, tmp)  # a folder replaces the empty one that reserved the name
    except BaseException:
        _remove(tmp)
        raise
    return tmp


def remove_set(marker: str | Path, folders: Sequence[str | Path] = ()) -> None:
    """Remove an output set of `atomic_set`: the marker first (the set no longer claims to be
    complete), then each folder, which is renamed away before it is deleted, and the temporaries
    an interrupted earlier write of the set left."""
    marker = Path(marker)
    marker.unlink(missing_ok=True)
    for folder in map(Path, folders):
        if folder.exists() or folder.is_symlink():
            _remove(_aside(folder))
    for path in (marker, *map(Path, folders)):
        if path.parent.is_dir():
            remove_stale_temporaries(path)


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


@contextlib.contextmanager
def atomic_set(marker: str | Path, folders: Sequence[str | Path] = ()) -> Iterator[tuple[Path, list[Path]]]:
    """Yield a temporary file for `marker` and a fresh temporary folder for each of `folders`, all
    beside their targets; only if the block succeeds, swap them in as one set (outputs that belong
    together, e.g. metrics.json and the predictions it scored).

    The swap moves the old marker aside first and renames the new one in last, so whenever
    `marker` exists the folders beside it were written with it; the old files are deleted only
    once the new set is in place. A failed block (or a failed rename, which is undone) leaves the
    old set as it was; a process killed during the swap's few renames leaves no marker (an
    incomplete set). Temporaries of an interrupted earlier write are removed first; the new files
    get the modes of a plain `open()` / `mkdir()`.
    """
    marker = Path(marker)
    folders = [Path(f) for f in folders]
    for path in (marker, *folders):
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(path)
    fd, name = tempfile.mkstemp(prefix=f".{marker.name}.", suffix=".tmp" + "".join(marker.suffixes),
                                dir=marker.parent)
    os.close(fd)
    new = [Path(name)]
    try:
        for folder in folders:
            new.append(Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent)))
        yield new[0], new[1:]
        mask = _umask()
        os.chmod(new[0], 0o666 & ~mask)
        for tmp in new[1:]:
            os.chmod(tmp, 0o777 & ~mask)
        _swap(list(zip(new, [marker, *folders])))
    finally:
        for tmp in new:
            if tmp.exists():
                _remove(tmp)


def _swap(pairs: list[tuple[Path, Path]]) -> None:
    """Rename each (new, target) of `pairs` onto its target, the first pair being the marker:
    every old target aside (the marker first), the folders in, the marker in last; on an error the
    renames done are undone, and the old targets are deleted only after the last rename."""
    done: list[tuple[Path, Path]] = []  # (from, to)
    old: list[Path] = []
    try:
        for _, target in pairs:
            if target.exists() or target.is_symlink():
                aside = _aside(target)
                done.append((target, aside))
                old.append(aside)
        for new, target in [*pairs[1:], pairs[0]]:
            os.replace(new, target)
            done.append((new, target))
    except BaseException:
        for src, dst in reversed(done):
            with contextlib.suppress(OSError):
                os.replace(dst, src)
        raise
    for aside in old:
        _remove(aside)


def json_text(obj: Any) -> str:
    """`obj` as the indented JSON text that `write_json` writes."""
    return json.dumps(obj, indent=2, sort_keys=False) + "\n"


def file_sha256(path: str | Path) -> str:
    """The hex SHA-256 of a file's content (which model file a score belongs to)."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def files_under(root: str | Path) -> list[str]:
    """Every non-folder entry under `root` (relative POSIX paths, sorted), symlinks to folders
    included and not followed: what an output folder holds when deciding whether it is ours."""
    root = Path(root)
    found = []
    for folder, dirs, files in os.walk(root):
        for name in files + [d for d in dirs if os.path.islink(os.path.join(folder, d))]:
            found.append(Path(folder, name).relative_to(root).as_posix())
    return sorted(found)


def write_json(path: str | Path, obj: Any) -> None:
    """Write `obj` as indented JSON, atomically."""
    with atomic_path(path, suffix=".json") as tmp:
        tmp.write_text(json_text(obj))


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
