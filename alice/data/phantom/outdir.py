"""The phantom writer's output folder: a marker file claims it, so that a rerun may rewrite it and
nothing else (a real release, a user's notes) is ever overwritten.

`MARKER` (`out/.alice-phantom.json`) names the writer, dataset, seed, counts, geometry and every
file of the phantom (paths relative to `out`). `claim(root, files, record)` accepts a missing or
file-less folder, or one holding only an earlier phantom: its listed files, temporaries of them
left by an interrupted write and Snakemake's stamp of the `phantom` rule's output. It removes the
earlier files and writes the new marker before any case is written. Anything else is refused with
an `InputError` naming the folder, before any write.
"""

from __future__ import annotations

from pathlib import Path

from alice.errors import InputError
from alice.io import files_under, read_json, temporary_pattern, write_json

MARKER = ".alice-phantom.json"
WRITER = "alice phantom"
# Snakemake's stamp in a `directory()` output (the `phantom` rule's): part of an earlier phantom.
BOOKKEEPING = frozenset({".snakemake_timestamp"})
_ADVICE = "empty it or choose another folder"


def _listed(root: Path) -> list[str] | None:
    """The files the marker in `root` lists, or None when there is no readable marker of ours."""
    try:
        record = read_json(root / MARKER)
    except (OSError, ValueError):
        return None
    files = record.get("files") if isinstance(record, dict) and record.get("writer") == WRITER else None
    if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
        return None
    return files


def _is_temporary_of(rel: str, listed: set[str]) -> bool:
    """Whether `rel` is a temporary `alice.io.atomic_path` made for a listed file (or the marker)."""
    path = Path(rel)
    return any(
        temporary_pattern(Path(path.parent, target)).fullmatch(path.name)
        for target in {Path(t).name for t in listed if Path(t).parent == path.parent}
    )


def _foreign(present: list[str], listed: set[str]) -> list[str]:
    return [rel for rel in present if rel not in listed and not _is_temporary_of(rel, listed)]


def _remove(root: Path, rels: list[str]) -> None:
    """Remove earlier phantom files, then the folders they leave empty (never `root` itself)."""
    folders = set()
    for rel in rels:
        (root / rel).unlink(missing_ok=True)
        folders.update(p for p in Path(rel).parents if p != Path("."))
    for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
        try:
            (root / folder).rmdir()
        except OSError:  # not empty: something else still lives there
            pass


def claim(root: Path, files: list[str], record: dict) -> None:
    """Make `root` the phantom's folder: refuse it if it holds anything but an earlier phantom,
    remove that earlier phantom and write the marker listing `files` (plus `record`)."""
    if root.exists() and not root.is_dir():
        raise InputError(root, f"output path exists and is not a folder; {_ADVICE}")
    present = files_under(root) if root.is_dir() else []
    if present:
        listed = _listed(root)
        if listed is None:
            raise InputError(
                root,
                f"output folder is not empty ({len(present)} file(s), e.g. {present[0]}) and holds no "
                f"earlier phantom ({MARKER}); {_ADVICE}",
            )
        foreign = _foreign([rel for rel in present if rel not in BOOKKEEPING], {MARKER, *listed})
        if foreign:
            more = f" and {len(foreign) - 1} more file(s)" if len(foreign) > 1 else ""
            raise InputError(
                root, f"output folder holds {foreign[0]}{more} besides an earlier phantom; {_ADVICE}"
            )
        _remove(root, [rel for rel in present if rel != MARKER and rel not in BOOKKEEPING])
    write_json(root / MARKER, {"writer": WRITER, **record, "files": sorted(files)})
