"""Tiny NIfTI datasets written in the real release layouts (12×10×6 volumes unless told otherwise)."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

SHAPE = (12, 10, 6)
SPACING = (1.6, 1.5, 2.5)
ORIGIN = (-9.0, -7.5, 4.0)


def ras_affine(spacing=SPACING, origin=ORIGIN) -> np.ndarray:
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = origin
    return affine


def ct_volume(shape=SHAPE, seed=0) -> np.ndarray:
    """HU-like intensities: a smooth ramp from about -400 to 500 plus noise."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(0.0, 1.0, n) for n in shape], indexing="ij")
    ramp = -400.0 + 500.0 * grids[0] + 250.0 * grids[1] + 150.0 * grids[2]
    return (ramp + rng.normal(0.0, 20.0, shape)).astype(np.float32)


def organ_labels(shape=SHAPE, ids=(1, 2, 3)) -> np.ndarray:
    """Axis-aligned blocks with the given ids (distinct positions, so flips/permutations show)."""
    label = np.zeros(shape, dtype=np.uint8)
    x, y, z = shape
    boxes = [
        (slice(1, x // 2), slice(1, y // 2), slice(1, z - 1)),
        (slice(x // 2, x - 1), slice(1, y // 3 + 1), slice(0, z // 2)),
        (slice(x // 3, x - 2), slice(y // 2, y - 1), slice(z // 2, z)),
    ]
    for value, box in zip(ids, boxes):
        label[box] = value
    return label


def write_nifti(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data), ras_affine() if affine is None else affine), str(path))
    return path


def patch_header(path: Path, edit=None, **fields) -> Path:
    """Rewrite NIfTI-1 header fields of `path` in place, as stored (no nibabel fix-ups), keeping
    its voxel bytes; `edit(header)` may change more (e.g. `set_qform`)."""
    path = Path(path)
    raw = path.read_bytes()
    gz = path.name.endswith(".gz")
    if gz:
        raw = gzip.decompress(raw)
    hdr = nib.Nifti1Header(raw[:348], check=False)
    for key, value in fields.items():
        hdr[key] = value
    if edit is not None:
        edit(hdr)
    raw = hdr.binaryblock + raw[348:]
    path.write_bytes(gzip.compress(raw, mtime=0) if gz else raw)
    return path


def _pair(image: Path, label: Path | None, seed: int) -> None:
    write_nifti(image, np.rint(ct_volume(seed=seed)).astype(np.int16))
    if label is not None:
        write_nifti(label, organ_labels())


def _extras(folder: Path) -> None:
    """Files a real download also carries; discovery must ignore them."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / ".DS_Store").write_bytes(b"\x00\x01junk")
    (folder / "README.txt").write_text("notes")


def make_flare22(root: Path, train=(1, 2, 3), val=(1, 2), val_labels="Validation/labels") -> Path:
    labeled = root / "Training" / "FLARE22_LabeledCase50"
    for i in train:
        _pair(labeled / "images" / f"FLARE22_Tr_{i:04d}_0000.nii.gz", labeled / "labels" / f"FLARE22_Tr_{i:04d}.nii.gz", i)
    for i in val:
        _pair(root / "Validation" / f"FLARETs_{i:04d}_0000.nii.gz", root / val_labels / f"FLARETs_{i:04d}.nii.gz", 100 + i)
    _extras(labeled / "images")
    _extras(root)
    write_nifti(root / "phantom_truth" / "whatever.nii.gz", organ_labels())  # ignored folder
    return root


def make_pool(root: Path, first=(1, 2), second=(1001,)) -> Path:
    for i in first:
        _pair(root / "Training" / "FLARE22_UnlabeledCase1-1000" / f"Case_{i:05d}_0000.nii.gz", None, i)
    for i in second:
        _pair(root / "Training" / "FLARE22_UnlabeledCase1001-2000" / f"Case_{i:05d}_0000.nii.gz", None, i)
    _extras(root / "Training" / "FLARE22_UnlabeledCase1-1000")
    return root


def make_btcv(root: Path, train=(1, 2, 21), test=(61, 62)) -> Path:
    raw = root / "RawData"
    for i in train:
        _pair(raw / "Training" / "img" / f"img{i:04d}.nii.gz", raw / "Training" / "label" / f"label{i:04d}.nii.gz", i)
    for i in test:
        _pair(raw / "Testing" / "img" / f"img{i:04d}.nii.gz", None, i)
    _extras(raw / "Training" / "img")
    return root


def make_mosmed(root: Path, studies=None, masks=(3,)) -> Path:
    """`studies`: {category: [study numbers]}; masks for the given study numbers (binary)."""
    studies = studies or {0: [1, 2], 1: [3, 4], 2: [5], 3: [6], 4: [7]}
    for category, numbers in studies.items():
        for n in numbers:
            _pair(root / "studies" / f"CT-{category}" / f"study_{n:04d}.nii.gz", None, n)
    for n in masks:
        write_nifti(root / "masks" / f"study_{n:04d}_mask.nii.gz", (organ_labels() > 0).astype(np.uint8))
    _extras(root / "studies")
    return root


@pytest.fixture
def flare22_root(tmp_path):
    return make_flare22(tmp_path / "FLARE22")


@pytest.fixture
def pool_root(tmp_path):
    return make_pool(tmp_path / "FLARE22")


@pytest.fixture
def btcv_root(tmp_path):
    return make_btcv(tmp_path / "BTCV")


@pytest.fixture
def mosmed_root(tmp_path):
    return make_mosmed(tmp_path / "COVID19_1110")


@pytest.fixture
def out_dir(tmp_path):
    return tmp_path / "cache"


SEG_SETTINGS = {"spacing": list(SPACING), "window": [-175.0, 250.0]}
MOSMED_SETTINGS = {"window": [-1000.0, 400.0], "rotate90": 1, "size": [8, 8, 4]}


def assert_failed_cleanly(out_dir: Path, case_id: str | None = None) -> None:
    """After a failed prepare: no manifest, no temp files, nothing for the bad case (the marker
    that claims the folder may stay)."""
    from alice.data.preprocess import MARKER

    if not out_dir.exists():
        return
    names = [p.name for p in out_dir.iterdir() if p.name != MARKER]
    assert "manifest.json" not in names
    assert not [n for n in names if n.startswith(".") or ".tmp" in n], names
    if case_id is not None:
        assert not [n for n in names if n.startswith(case_id + ".") or n.startswith(case_id + "_")], names


@pytest.fixture
def fx():
    """The helpers above, for tests (importing conftest by name is fragile across test folders)."""
    from types import SimpleNamespace

    return SimpleNamespace(
        SHAPE=SHAPE,
        SPACING=SPACING,
        ras_affine=ras_affine,
        ct_volume=ct_volume,
        organ_labels=organ_labels,
        write_nifti=write_nifti,
        patch_header=patch_header,
        make_flare22=make_flare22,
        make_pool=make_pool,
        make_btcv=make_btcv,
        make_mosmed=make_mosmed,
        seg_settings=lambda **kw: {**SEG_SETTINGS, **kw},
        mosmed_settings=lambda **kw: {**MOSMED_SETTINGS, **kw},
        assert_failed_cleanly=assert_failed_cleanly,
    )
