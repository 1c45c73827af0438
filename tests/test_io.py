"""Atomic writes: permissions as a plain open() gives them, and no temporaries left behind."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from alice.io import atomic_path, save_npy, write_json, write_text


@pytest.fixture
def umask():
    """Set the process umask for one test and restore it afterwards."""
    old = os.umask(0o022)
    os.umask(old)
    yield os.umask
    os.umask(old)


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)], ids=["022", "002", "077"])
def test_written_files_get_the_mode_of_a_plain_open(tmp_path, umask, mask, mode):
    umask(mask)
    write_text(tmp_path / "a.txt", "x")
    write_json(tmp_path / "b.json", {"a": 1})
    save_npy(tmp_path / "c.npy", np.zeros(3))
    with open(tmp_path / "plain.txt", "w") as fh:
        fh.write("x")
    for name in ("a.txt", "b.json", "c.npy", "plain.txt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode, name


def test_stale_temporaries_of_the_target_are_removed(tmp_path):
    stale = [tmp_path / ".resume.pt.ab12cd.tmp.pt", tmp_path / ".resume.pt.x_9y8z7w6.tmp.pt"]
    kept = [
        tmp_path / ".resume.pt.other",  # not a temporary
        tmp_path / ".resume.pt.bak.ab12cd.tmp.bak",  # a temporary of resume.pt.bak
        tmp_path / ".model.pt.ab12cd.tmp.pt",  # a temporary of another target
        tmp_path / "resume.pt.ab12cd.tmp.pt",  # not hidden: not ours
    ]
    for path in stale + kept:
        path.write_bytes(b"partial")
    with atomic_path(tmp_path / "resume.pt") as tmp:
        tmp.write_bytes(b"complete")
    assert (tmp_path / "resume.pt").read_bytes() == b"complete"
    assert not [p for p in stale if p.exists()]
    assert all(p.exists() for p in kept)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["resume.pt"] + [p.name for p in kept])


def test_failed_block_leaves_neither_target_nor_temporary(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "out.json") as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
