"""Atomic writes: permissions as a plain open() gives them, no temporaries left behind, and sets of
outputs replaced together or not at all."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from alice.io import atomic_path, atomic_set, remove_set, save_npy, write_json, write_text


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


def _old_set(root):
    """A finished set: marker m.json and folder preds/ with two files."""
    (root / "preds").mkdir(parents=True)
    (root / "preds" / "a").write_text("old a")
    (root / "preds" / "b").write_text("old b")
    (root / "m.json").write_text("old")


def _snapshot(root):
    return {str(p.relative_to(root)): p.read_text() for p in sorted(root.rglob("*")) if p.is_file()}


def test_atomic_set_replaces_marker_and_folder_together(tmp_path, umask):
    umask(0o022)
    _old_set(tmp_path)
    (tmp_path / ".preds.ab12cd.tmp").mkdir()  # temporaries a killed earlier write left
    (tmp_path / ".preds.ab12cd.tmp" / "a").write_text("half")
    (tmp_path / ".m.json.x_9y8z.tmp.json").write_text("half")
    with atomic_set(tmp_path / "m.json", [tmp_path / "preds"]) as (marker, (folder,)):
        assert not (folder / "a").exists() and marker.parent == folder.parent == tmp_path
        (folder / "c").write_text("new c")
        marker.write_text("new")
    assert _snapshot(tmp_path) == {"m.json": "new", "preds/c": "new c"}
    assert stat.S_IMODE((tmp_path / "m.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "preds").stat().st_mode) == 0o755


def test_atomic_set_failure_leaves_the_old_set_whole(tmp_path):
    _old_set(tmp_path)
    with pytest.raises(PermissionError):
        with atomic_set(tmp_path / "m.json", [tmp_path / "preds"]) as (marker, (folder,)):
            (folder / "a").write_text("new a")
            raise PermissionError("preds/b")
    assert _snapshot(tmp_path) == {"m.json": "old", "preds/a": "old a", "preds/b": "old b"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "preds"]


def test_atomic_set_undoes_a_failed_swap(tmp_path, monkeypatch):
    """The marker's final rename fails: the old folder and marker are put back, the new set is gone."""
    _old_set(tmp_path)
    real, failed = os.replace, []

    def replace(src, dst):
        if os.fspath(dst) == str(tmp_path / "m.json") and not failed:
            failed.append(src)
            raise OSError("disk gone")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match="disk gone"):
        with atomic_set(tmp_path / "m.json", [tmp_path / "preds"]) as (marker, (folder,)):
            (folder / "c").write_text("new c")
            marker.write_text("new")
    assert failed
    assert _snapshot(tmp_path) == {"m.json": "old", "preds/a": "old a", "preds/b": "old b"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "preds"]


def test_remove_set_removes_marker_and_folders(tmp_path):
    _old_set(tmp_path)
    (tmp_path / "other").write_text("kept")
    remove_set(tmp_path / "m.json", [tmp_path / "preds"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other"]
    remove_set(tmp_path / "m.json", [tmp_path / "preds"])  # nothing to remove: no error
