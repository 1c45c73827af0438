"""Segmentation and classification metrics: DSC, NSD (FLARE22 rules) and AUC.

Sources of the rules (see also docs/facts.md "FLARE 2022 scoring"):
- NSD is DeepMind's surface Dice (github.com/deepmind/surface-distance, PyPI `surface-distance`
  0.1): surface elements ("surfels") on the voxel-corner grid, each weighted by its area in mm²,
  a surfel counts as matched when its distance to the other surface is `<=` the tolerance.
  We call that package; we do not reimplement it.
- `score_case` follows the FLARE 2022 organisers' DSC/NSD evaluation script: per-organ tolerances,
  spacing = the NIfTI voxel sizes with arrays in nibabel (x, y, z) order, the empty-mask
  rules, the z-range crop for aorta / IVC / esophagus, and rounding to 4 decimals.

`surface-distance` 0.1 uses `np.Inf`, removed in NumPy 2: it raises AttributeError as soon as one
mask is empty. The empty cases are therefore decided here and the package only ever sees two
non-empty masks.
"""

from __future__ import annotations

import math
import warnings
from typing import Mapping, Sequence

import numpy as np
import surface_distance
from sklearn.metrics import roc_auc_score

from alice.errors import InputError
from alice.labels import LABEL_NAMES

# Organ names per label id (docs/facts.md "Label ids"); one table for readers and metrics.
LABELS = LABEL_NAMES

NSD_TOLERANCE_MM: dict[str, float] = {
    # FLARE22 official evaluation tolerances (docs/facts.md "FLARE 2022 scoring").
    "liver": 5,
    "right_kidney": 3,
    "spleen": 3,
    "pancreas": 5,
    "aorta": 2,
    "inferior_vena_cava": 2,
    "right_adrenal_gland": 2,
    "left_adrenal_gland": 2,
    "gallbladder": 2,
    "esophagus": 3,
    "stomach": 5,
    "duodenum": 7,
    "left_kidney": 3,
    # Not a FLARE22 organ: our choice, the vessel tolerance of aorta and IVC.
    "portal_and_splenic_veins": 2,
}

# Organs scored only on the GT's own z-range (FLARE22 official evaluation, labels 5, 6, 10).
Z_CROPPED_ORGANS = frozenset({"aorta", "inferior_vena_cava", "esophagus"})

DECIMALS = 4


def dice(gt, pred) -> float:
    """Volumetric Dice of two masks of any dimension (non-zero = foreground).

    Both empty -> 1.0, exactly one empty -> 0.0 (FLARE22 official evaluation rules).
    """
    gt, pred = _as_masks(gt, pred)
    total = int(gt.sum()) + int(pred.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(gt, pred).sum()) / total


def normalized_surface_dice(gt, pred, spacing_mm: Sequence[float], tolerance_mm: float) -> float:
    """Normalized surface Dice (NSD) of two 2-D or 3-D masks, by DeepMind's `surface_distance`.

    `spacing_mm` is in the arrays' axis order (for nibabel arrays: the voxel sizes, x y z).
    Both empty -> 1.0, exactly one empty -> 0.0 (FLARE22 rules), decided here because the
    package fails on empty masks under NumPy 2.
    """
    gt, pred = _as_masks(gt, pred)
    spacing = tuple(float(s) for s in spacing_mm)
    if gt.ndim not in (2, 3) or len(spacing) != gt.ndim:
        raise ValueError(
            f"NSD needs 2-D or 3-D masks and one spacing per axis; got masks of shape {gt.shape} "
            f"and spacing {spacing}"
        )
    _check_spacing(spacing)
    _check_tolerance(tolerance_mm)
    gt_empty, pred_empty = not gt.any(), not pred.any()
    if gt_empty and pred_empty:
        return 1.0
    if gt_empty or pred_empty:
        return 0.0
    with warnings.catch_warnings():
        # The package imports from scipy.ndimage.filters/.morphology (deprecated namespaces).
        warnings.filterwarnings("ignore", category=DeprecationWarning, module="surface_distance")
        distances = surface_distance.compute_surface_distances(gt, pred, spacing)
        return float(surface_distance.compute_surface_dice_at_tolerance(distances, tolerance_mm))


def score_case(
    gt_labels,
    pred_labels,
    spacing_mm: Sequence[float],
    dataset: str,
    *,
    nsd_zero_below_dsc: float | None = None,
) -> dict[str, dict[str, float]]:
    """DSC and NSD per organ of one case, as the FLARE22 organisers' evaluation script scores it.

    Arguments: two 3-D integer label maps in nibabel (x, y, z) order, `spacing_mm` = the NIfTI
    voxel sizes (x, y, z), `dataset` in `LABELS` ("flare22" or "btcv").

    Per organ (ids and names from `LABELS[dataset]`, tolerance `NSD_TOLERANCE_MM[name]`):
    - GT and prediction both empty: DSC = NSD = 1; exactly one empty: DSC = NSD = 0
      (checked on the whole volume, as the official script does);
    - aorta, IVC, esophagus: both masks are cropped to the GT's slices `[z_min : z_max)` along
      axis 2 before scoring. The upper bound is exclusive as in the official script, so the top
      GT slice is not scored. A GT lying in one single slice leaves nothing to score: the
      official script then yields NaN (0/0) and so do we;
    - `nsd_zero_below_dsc`: None (default) is the 2022 script; a float such as 0.2 is the 2024
      revision, which sets NSD = 0 when DSC is below it;
    - both values rounded to 4 decimals.

    BTCV has no official NSD: its organs get the FLARE22 rules by name (tolerances and the z-crop
    of aorta, IVC and esophagus). The portal and splenic veins, absent from FLARE22, get 2 mm,
    the tolerance FLARE22 gives the other vessels (aorta, IVC). This is our choice.

    Returns `{organ_name: {"dsc": float, "nsd": float}}` in label-id order.
    """
    if dataset not in LABELS:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {sorted(LABELS)}")
    labels = LABELS[dataset]
    gt_labels = np.asarray(gt_labels)
    pred_labels = np.asarray(pred_labels)
    if gt_labels.shape != pred_labels.shape:
        raise ValueError(
            f"gt_labels and pred_labels differ in shape: {gt_labels.shape} vs {pred_labels.shape}"
        )
    if gt_labels.ndim != 3:
        raise ValueError(f"label maps must be 3-D (x, y, z), got shape {gt_labels.shape}")
    spacing = tuple(float(s) for s in spacing_mm)
    if len(spacing) != 3:
        raise ValueError(f"spacing_mm must have 3 values (x, y, z), got {spacing_mm}")
    _check_spacing(spacing)  # also when no organ needs an NSD: a bad spacing is a caller's bug
    for name, array in (("gt_labels", gt_labels), ("pred_labels", pred_labels)):
        _check_label_ids(name, array, labels, dataset)

    scores = {}
    for label_id, organ in labels.items():
        gt = gt_labels == label_id
        pred = pred_labels == label_id
        if not gt.any() or not pred.any():
            value = 1.0 if not gt.any() and not pred.any() else 0.0
            scores[organ] = {"dsc": value, "nsd": value}
            continue
        if organ in Z_CROPPED_ORGANS:
            z = np.flatnonzero(gt.any(axis=(0, 1)))
            z_min, z_max = int(z[0]), int(z[-1])
            if z_min == z_max:
                scores[organ] = {"dsc": math.nan, "nsd": math.nan}
                continue
            gt, pred = gt[:, :, z_min:z_max], pred[:, :, z_min:z_max]
        dsc = dice(gt, pred)
        if nsd_zero_below_dsc is not None and dsc < nsd_zero_below_dsc:
            nsd = 0.0
        else:
            nsd = normalized_surface_dice(gt, pred, spacing, NSD_TOLERANCE_MM[organ])
        scores[organ] = {"dsc": round(dsc, DECIMALS), "nsd": round(nsd, DECIMALS)}
    return scores


def mean_over_organs(scores: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """Mean DSC and NSD over the organs of one `score_case` result.

    Organs scored NaN (a z-cropped organ whose GT lies in one slice) are left out; if every organ
    is NaN the mean is NaN.
    """
    if not scores:
        raise ValueError("no organ scores to average")
    means = {}
    for key in ("dsc", "nsd"):
        values = [float(s[key]) for s in scores.values() if not math.isnan(s[key])]
        means[key] = sum(values) / len(values) if values else math.nan
    return means


def auc(y_true, y_score) -> float:
    """Area under the ROC curve of a binary task (`sklearn.metrics.roc_auc_score`)."""
    y_true = np.asarray(y_true).ravel()
    classes = np.unique(y_true)
    if classes.size < 2:
        raise ValueError(
            f"AUC needs both classes in y_true; all {y_true.size} labels are "
            f"{classes.tolist() if classes.size else 'missing'}"
        )
    return float(roc_auc_score(y_true, np.asarray(y_score).ravel()))


def _check_spacing(spacing: Sequence[float]) -> None:
    # NaN passes every comparison, so test for what is allowed, not for what is not
    if not all(math.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(f"spacing must be finite and positive (mm), got {tuple(spacing)}")


def _check_tolerance(tolerance_mm: float) -> None:
    if not (math.isfinite(tolerance_mm) and tolerance_mm >= 0):
        raise ValueError(f"tolerance must be a finite number >= 0 mm, got {tolerance_mm}")


def _as_masks(gt, pred) -> tuple[np.ndarray, np.ndarray]:
    gt = np.asarray(gt) != 0
    pred = np.asarray(pred) != 0
    if gt.shape != pred.shape:
        raise ValueError(f"masks differ in shape: gt {gt.shape} vs pred {pred.shape}")
    return gt, pred


def _check_label_ids(name: str, array: np.ndarray, labels: Mapping[int, str], dataset: str) -> None:
    present = np.unique(array)
    unknown = [v for v in present.tolist() if v != 0 and v not in labels]
    if unknown:
        shown = [int(v) if float(v).is_integer() else v for v in unknown]
        raise InputError(name, f"label ids {shown} not in {dataset} set")
