"""Tiny UNETR settings and a tiny prepared FLARE22-layout dataset (hand-made blocks, non-RAS storage)."""

from __future__ import annotations

import copy
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

# UNETR needs crops that are multiples of its 16³ patch; 16³ = one token keeps every step tiny.
ENCODER = {"name": "vit", "embed_dim": 24, "depth": 12, "heads": 2, "mlp_ratio": 2, "patch": [16, 16, 16]}
SETTINGS = {
    "optim": {"optimizer": "adamw", "lr": 1.0e-3, "weight_decay": 1.0e-5, "momentum": 0.9, "batch_size": 2,
              "schedule": "cosine", "warmup_epochs": 1, "epochs": 2},
    "augmentation": ["flip", "rotation", "intensity_shift"],
    "crop": [16, 16, 16],
    "feature_size": 4,
    "samples_per_volume": 1,
    "val_every": 1,
    "sw_overlap": 0.25,
    "sw_batch_size": 2,
}

SHAPE = (22, 20, 12)  # stored voxel grid; z (12) is smaller than the crop, so padding is exercised
ZOOMS = (3.0, 2.5, 4.0)  # stored voxel sizes (mm) along the stored axes


def stored_affine(zooms=ZOOMS, shape=SHAPE) -> np.ndarray:
    """A non-RAS storage: voxel axis 0 runs posterior (world -y), axis 1 runs left (world -x), axis 2 superior."""
    a = np.zeros((4, 4))
    a[1, 0] = -zooms[0]
    a[0, 1] = -zooms[1]
    a[2, 2] = zooms[2]
    a[:3, 3] = [shape[1] * zooms[1] / 2, shape[0] * zooms[0] / 2, -20.0]
    a[3, 3] = 1.0
    return a


def ras_spacing(zooms=ZOOMS) -> list[float]:
    """The voxel sizes of `stored_affine` in RAS axis order (x <- stored axis 1, y <- stored axis 0)."""
    return [zooms[1], zooms[0], zooms[2]]


def make_case(seed: int, shape=SHAPE) -> tuple[np.ndarray, np.ndarray]:
    """HU image and labels 1..4 as blocks at jittered positions; organs brighter than the background."""
    rng = np.random.default_rng(seed)
    label = np.zeros(shape, np.uint8)
    x, y, z = shape
    boxes = [
        (1, (2, 10), (2, 9), (1, 10)),
        (2, (12, 20), (3, 8), (2, 7)),
        (3, (4, 12), (11, 18), (5, 11)),
        (4, (14, 19), (12, 18), (1, 5)),
    ]
    for value, (x0, x1), (y0, y1), (z0, z1) in boxes:
        d = rng.integers(-1, 2, size=3)
        label[max(0, x0 + d[0]) : x1 + d[0], max(0, y0 + d[1]) : y1 + d[1], max(0, z0 + d[2]) : z1 + d[2]] = value
    hu = np.array([-150.0, 60.0, 160.0, 230.0, 120.0], np.float32)[label]
    image = hu + rng.normal(0.0, 15.0, shape).astype(np.float32)
    return np.rint(image).astype(np.int16), label


def _write(path: Path, data: np.ndarray, affine: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), str(path))


def write_flare22(root: Path, n_train: int = 4, n_test: int = 2) -> Path:
    labeled = root / "Training" / "FLARE22_LabeledCase50"
    affine = stored_affine()
    for i in range(1, n_train + 1):
        image, label = make_case(i)
        _write(labeled / "images" / f"FLARE22_Tr_{i:04d}_0000.nii.gz", image, affine)
        _write(labeled / "labels" / f"FLARE22_Tr_{i:04d}.nii.gz", label, affine)
    for i in range(1, n_test + 1):
        image, label = make_case(100 + i)
        _write(root / "Validation" / f"FLARETs_{i:04d}_0000.nii.gz", image, affine)
        _write(root / "Validation" / "labels" / f"FLARETs_{i:04d}.nii.gz", label, affine)
    return root


def prepare_flare22(root: Path, out: Path, spacing=None, n_test: int = 2, folds: int = 2) -> Path:
    from alice.data.folds import make_folds, write_folds
    from alice.data.preprocess import prepare

    settings = {
        "spacing": list(spacing or ras_spacing()),
        "window": [-175.0, 250.0],
        "offline_test": [f"FLARETs_{i:04d}" for i in range(1, n_test + 1)],
        "validation_labels": "Validation/labels",
    }
    manifest = prepare("flare22", root, out, settings, progress=False)
    write_folds(out / "folds.json", make_folds("flare22", manifest, {"folds": folds}, seed=0))
    return out


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """A prepared tiny FLARE22 (4 train cases in 2 folds, 2 test cases) at the stored spacing."""
    base = tmp_path_factory.mktemp("tiny_flare22")
    root = write_flare22(base / "FLARE22")
    return prepare_flare22(root, base / "cache")


@pytest.fixture
def settings():
    return copy.deepcopy(SETTINGS)


@pytest.fixture
def encoder_config():
    return copy.deepcopy(ENCODER)


@pytest.fixture(scope="session")
def dx():
    """The helpers above, for tests (importing conftest by name clashes with tests/data/conftest.py)."""
    from types import SimpleNamespace

    return SimpleNamespace(
        ENCODER=ENCODER,
        SETTINGS=SETTINGS,
        write_flare22=write_flare22,
        prepare_flare22=prepare_flare22,
        make_case=make_case,
        stored_affine=stored_affine,
        ras_spacing=ras_spacing,
        CLS_SETTINGS=CLS_SETTINGS,
        CLS_ENCODER=CLS_ENCODER,
        CLS_RESNET=CLS_RESNET,
    )


# ------------------------------------------------------------------------------ MosMed (classification)
# ViT patch 8 on 16³ volumes: 2x2x2 tokens keep a classification step at a few ms
CLS_ENCODER = {"name": "vit", "embed_dim": 24, "depth": 2, "heads": 2, "mlp_ratio": 2, "patch": [8, 8, 8]}
CLS_SETTINGS = {
    "optim": {"optimizer": "adamw", "lr": 1.0e-3, "weight_decay": 1.0e-5, "betas": [0.9, 0.999], "batch_size": 2,
              "schedule": "cosine", "warmup_iterations": 1, "iterations": 4},
    "augmentation": ["rotation", "scaling", "flip", "gaussian_noise", "gaussian_blur", "brightness_contrast",
                     "low_resolution"],
    "val_every": 2,
    "selection": "best_val",
}
# the ResNet classifier's encoder: pretrain.encoders.resnet3d's network (alice.models.cnn)
CLS_RESNET = {"name": "resnet3d", "depth": 10, "widen_factor": 0.125, "features": 4}
CLS_SIZE = [16, 16, 16]
# 6 CT-0 and 6 CT-1..4 studies: enough for 2 stratified 50/25/25 splits with label fractions 0.5, 1.0
MOSMED_STUDIES = {0: [1, 2, 3, 4, 5, 6], 1: [7, 8], 2: [9, 10], 3: [11], 4: [12]}
MOSMED_FOLDS = {"repeats": 2, "split": [0.5, 0.25, 0.25], "label_fractions": [0.5, 1.0]}


def make_chest(seed: int, category: int, shape=(24, 24, 12)) -> np.ndarray:
    """HU chest: soft tissue body, two dark lungs, ground-glass blobs filling ~category/5 of them."""
    rng = np.random.default_rng(seed)
    hu = np.full(shape, -1000.0, np.float32)
    hu[2:-2, 3:-3, :] = 40.0
    lungs = np.zeros(shape, bool)
    lungs[4:11, 5:-5, 1:-1] = True
    lungs[13:20, 5:-5, 1:-1] = True
    hu[lungs] = -850.0
    if category:
        ggo = lungs & (rng.random(shape) < 0.2 * category)
        hu[ggo] = -500.0
    hu += rng.normal(0.0, 20.0, shape).astype(np.float32)
    return np.rint(hu).astype(np.int16)


def write_mosmed(root: Path, studies=None) -> Path:
    affine = np.diag([1.5, 1.5, 5.0, 1.0])
    for category, numbers in (studies or MOSMED_STUDIES).items():
        for n in numbers:
            _write(root / "studies" / f"CT-{category}" / f"study_{n:04d}.nii.gz", make_chest(n, category), affine)
    return root


def prepare_mosmed(root: Path, out: Path, folds=None) -> Path:
    from alice.data.folds import make_folds, write_folds
    from alice.data.preprocess import prepare

    manifest = prepare("mosmed", root, out, {"window": [-1000, 400], "rotate90": 1, "size": CLS_SIZE}, progress=False)
    write_folds(out / "folds.json", make_folds("mosmed", manifest, folds or MOSMED_FOLDS, seed=0))
    return out


@pytest.fixture(scope="session")
def tiny_mosmed(tmp_path_factory) -> Path:
    """A prepared tiny MosMed (12 studies, 16³) with 2 splits and label fractions 0.5, 1.0."""
    base = tmp_path_factory.mktemp("tiny_mosmed")
    return prepare_mosmed(write_mosmed(base / "COVID19_1110"), base / "cache")


@pytest.fixture
def cls_settings():
    return copy.deepcopy(CLS_SETTINGS)


@pytest.fixture
def cls_encoder():
    return copy.deepcopy(CLS_ENCODER)


@pytest.fixture
def cls_resnet():
    return copy.deepcopy(CLS_RESNET)
