"""Fine-tuning data: fold case lists, the loading transform, random crops and augmentations.

Volumes come from the preprocessing cache (`alice.data.preprocess.load_case`: memory-mapped
(x, y, z) arrays) and are read one at a time when a crop is drawn, so memory stays at a few volumes
at any scale; the OS page cache keeps the demo's small files hot.

Per epoch each training volume yields `samples_per_volume` crops of size `crop`:
`SpatialPadd` (to at least the crop, zeros = the bottom of the intensity window), then a crop
centre drawn by `settings["sampling"]` (see `SAMPLINGS`), then the augmentations named in
`settings["augmentation"]`, applied per crop (see `AUGMENTATIONS`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import torch

from alice.errors import ConfigError, InputError
from alice.io import read_json

KEYS = ("image", "label")


# ------------------------------------------------------------------------------------------ folds
def read_folds(data_dir: str | Path) -> dict[str, Any]:
    path = Path(data_dir) / "folds.json"
    if not path.is_file():
        raise InputError(path, "folds file not found (run `alice folds` first)")
    try:
        folds = read_json(path)
    except ValueError as exc:
        raise InputError(path, f"not valid JSON ({exc})") from None
    if not isinstance(folds, dict) or not isinstance(folds.get("folds"), list):
        raise InputError(path, "expected {'folds': [{'fold', 'train', 'val'}, ...], 'test': [...]}")
    return folds


def fold_entry(folds: Mapping[str, Any], fold: int, path: str | Path) -> Mapping[str, Any]:
    for entry in folds["folds"]:
        if entry.get("fold") == fold:
            if not entry.get("train") or "val" not in entry:
                raise InputError(path, f"fold {fold} lacks a non-empty 'train' list or a 'val' list")
            return entry
    known = [e.get("fold") for e in folds["folds"]]
    raise InputError(path, f"no fold {fold} (folds: {known})")


# Case lists of folds.json that belong to no fold: FLARE22's offline test cases, BTCV's online
# test cases (no public labels: predicted for the challenge server, never scored here).
FIXED_SPLITS = ("test", "online_test")


def split_cases(data_dir: str | Path, split: str) -> tuple[list[str], int | None]:
    """Case ids of `split`: "test", "online_test", "val:<k>" or "train:<k>"; also returns the fold
    (None for a fixed list)."""
    path = Path(data_dir) / "folds.json"
    folds = read_folds(data_dir)
    if split in FIXED_SPLITS:
        if split not in folds:
            raise InputError(path, f"no '{split}' case list")
        return list(folds[split]), None
    kind, _, k = split.partition(":")
    if kind in ("val", "train") and k.lstrip("-").isdigit():
        return list(fold_entry(folds, int(k), path)[kind]), int(k)
    raise ConfigError("split", f"must be 'test', 'online_test', 'val:<k>' or 'train:<k>', got {split!r}")


# ---------------------------------------------------------------------------------------- loading
class LoadCachedCase:
    """{"case_id": id} -> {"case_id", "image": (1, x, y, z) float32, "label": (1, x, y, z) float32}."""

    def __init__(self, data_dir: str | Path, require_label: bool = True):
        self.data_dir = Path(data_dir)
        self.require_label = require_label

    def __call__(self, item: Mapping[str, Any]) -> dict[str, Any]:
        from alice.data.preprocess import load_case

        case_id = item["case_id"]
        image, label, _meta = load_case(self.data_dir, case_id)
        out = {"case_id": case_id, "image": np.array(image, dtype=np.float32)[None]}
        if label is None:
            if self.require_label:
                raise InputError(self.data_dir / f"{case_id}.json", "case has no label; cannot train on it")
        else:
            out["label"] = np.array(label, dtype=np.float32)[None]
        return out


# ----------------------------------------------------------------------------------- augmentation
def _flip(p: float) -> Callable[[Sequence[int]], list]:
    def make(crop):
        from monai.transforms import RandFlipd

        return [RandFlipd(keys=KEYS, spatial_axis=[axis], prob=p) for axis in range(3)]

    return make


def _rotation(crop):
    from monai.transforms import RandRotate90d

    if crop[0] != crop[1]:
        raise ConfigError("augmentation", f"rotation (in-plane rot90) needs a square in-plane crop, got {list(crop)}")
    return [RandRotate90d(keys=KEYS, prob=0.1, max_k=3, spatial_axes=(0, 1))]


def _intensity_shift(crop):
    from monai.transforms import RandShiftIntensityd

    return [RandShiftIntensityd(keys="image", offsets=0.1, prob=0.5)]


def _scaling(crop):
    from monai.transforms import RandZoomd

    return [
        RandZoomd(keys=KEYS, prob=0.2, min_zoom=0.7, max_zoom=1.4, mode=("trilinear", "nearest"),
                  padding_mode="constant", keep_size=True)
    ]


def _gaussian_blur(crop):
    from monai.transforms import RandGaussianSmoothd

    return [RandGaussianSmoothd(keys="image", sigma_x=(0.5, 1.0), sigma_y=(0.5, 1.0), sigma_z=(0.5, 1.0), prob=0.2)]


# name -> builder(crop) -> list of MONAI dict transforms. Probabilities:
#   flip: each axis p=0.1, rotation: rot90 in the axial (x, y) plane k in 1..3 p=0.1,
#   intensity_shift: +-0.1 offset p=0.5 (UNETR / Swin UNETR reference recipe);
#   scaling: zoom 0.7-1.4 p=0.2, gaussian_blur: sigma 0.5-1 voxel p=0.2, mirroring: each axis
#   p=0.5 (nnU-Net / nnFormer recipe).
AUGMENTATIONS: dict[str, Callable[[Sequence[int]], list]] = {
    "flip": _flip(0.1),
    "rotation": _rotation,
    "intensity_shift": _intensity_shift,
    "scaling": _scaling,
    "gaussian_blur": _gaussian_blur,
    "mirroring": _flip(0.5),
}


def _pos_neg(crop, spv, num_classes):
    from monai.transforms import RandCropByPosNegLabeld

    return RandCropByPosNegLabeld(keys=KEYS, label_key="label", spatial_size=list(crop), pos=1, neg=1,
                                  num_samples=spv, image_key=None)


def _classes(crop, spv, num_classes):
    from monai.transforms import RandCropByLabelClassesd

    return RandCropByLabelClassesd(keys=KEYS, label_key="label", spatial_size=list(crop), num_classes=num_classes,
                                   ratios=[1] * num_classes, num_samples=spv, warn=False)


# name -> builder(crop, samples_per_volume, num_classes) of the cropping transform:
#   pos_neg: centre on a foreground (any organ) or a background voxel, 1:1 (UNETR / Swin UNETR
#            reference recipe);
#   classes: centre on a voxel of a class drawn uniformly over background and every organ present
#            in the case (nnU-Net-style oversampling of small structures).
SAMPLINGS: dict[str, Callable[[Sequence[int], int, int], Any]] = {"pos_neg": _pos_neg, "classes": _classes}


def train_transform(data_dir: str | Path, settings: Mapping[str, Any], crop: Sequence[int], num_classes: int = 2):
    """The MONAI Compose producing `samples_per_volume` augmented crops (a list) from {"case_id"}."""
    from monai.transforms import Compose, EnsureTyped, SpatialPadd

    names = settings.get("augmentation") or []
    unknown = [n for n in names if n not in AUGMENTATIONS]
    if unknown:
        raise ConfigError("augmentation", f"unknown augmentation(s) {unknown} (known: {', '.join(AUGMENTATIONS)})")
    spv = settings.get("samples_per_volume", 1)
    if isinstance(spv, bool) or not isinstance(spv, int) or spv < 1:
        raise ConfigError("samples_per_volume", f"must be a positive integer, got {spv!r}")
    sampling = settings.get("sampling", "pos_neg")
    if sampling not in SAMPLINGS:
        raise ConfigError("sampling", f"unknown sampling {sampling!r} (known: {', '.join(SAMPLINGS)})")
    transforms: list = [
        LoadCachedCase(data_dir),
        SpatialPadd(keys=KEYS, spatial_size=list(crop), mode="constant"),
        SAMPLINGS[sampling](crop, spv, num_classes),
    ]
    for name in names:
        transforms.extend(AUGMENTATIONS[name](crop))
    transforms.append(EnsureTyped(keys=KEYS, data_type="tensor", dtype=torch.float32, track_meta=False))
    return Compose(transforms)


# ---------------------------------------------------------------------------------------- batching
def _identity(x):
    return x


class CropBatches:
    """Batches of `batch_size` crops per epoch from the training volumes.

    Each epoch visits the volumes in an order drawn from `generator`, each giving
    `samples_per_volume` crops, and groups the crops in that order into batches (the last may be
    smaller): `ceil(n_volumes * samples_per_volume / batch_size)` steps per epoch.
    `num_workers` > 0 loads volumes in worker processes (MONAI seeds their transforms).
    """

    def __init__(self, case_ids, transform, batch_size: int, samples_per_volume: int, generator: torch.Generator,
                 num_workers: int = 0):
        from monai.data import Dataset

        self.dataset = Dataset([{"case_id": c} for c in case_ids], transform=transform)
        self.n_volumes = len(case_ids)
        self.batch_size = batch_size
        self.samples_per_volume = samples_per_volume
        self.generator = generator
        self.num_workers = num_workers

    @property
    def steps_per_epoch(self) -> int:
        return -(-self.n_volumes * self.samples_per_volume // self.batch_size)

    def _volumes(self, order: list[int]) -> Iterator[list[dict]]:
        if self.num_workers <= 0:
            for i in order:
                yield self.dataset[i]
            return
        from monai.data import DataLoader

        loader = DataLoader(self.dataset, batch_size=None, sampler=order, num_workers=self.num_workers,
                            collate_fn=_identity, generator=self.generator)
        yield from loader

    def epoch(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.randperm(self.n_volumes, generator=self.generator).tolist()
        buffer: list[dict] = []
        for samples in self._volumes(order):
            buffer.extend(samples if isinstance(samples, list) else [samples])
            while len(buffer) >= self.batch_size:
                batch, buffer = buffer[: self.batch_size], buffer[self.batch_size:]
                yield _stack(batch)
        if buffer:
            yield _stack(buffer)


def _stack(samples: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.stack([s["image"] for s in samples]), torch.stack([s["label"] for s in samples])
