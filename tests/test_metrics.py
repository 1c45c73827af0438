"""Tests of alice.metrics against DeepMind's surface-distance and the FLARE22 scoring rules."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import surface_distance
from sklearn.metrics import roc_auc_score

from alice import metrics
from alice.errors import InputError
from alice.metrics import auc, dice, mean_over_organs, normalized_surface_dice, score_case


def _package_nsd(gt, pred, spacing, tolerance):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        distances = surface_distance.compute_surface_distances(gt, pred, spacing)
        return surface_distance.compute_surface_dice_at_tolerance(distances, tolerance)


def _single_voxels(shape, at_gt, at_pred):
    gt, pred = np.zeros(shape, bool), np.zeros(shape, bool)
    gt[at_gt] = True
    pred[at_pred] = True
    return gt, pred


# --- dice / normalized_surface_dice -------------------------------------------------------


def test_two_cubes_match_the_package_own_test():
    # surface-distance's test_two_cubes_shifted_by_one_pixel: slabs along axis 0.
    gt, pred = np.zeros((100, 100, 100), bool), np.zeros((100, 100, 100), bool)
    gt[0:50, :, :] = True
    pred[0:51, :, :] = True
    assert normalized_surface_dice(gt, pred, (2, 1, 1), 1) == pytest.approx(0.83615, abs=1e-5)
    assert dice(gt, pred) == pytest.approx(2 * 50 / (50 + 51))  # 0.99010


def test_single_voxels_2mm_apart():
    # The package's single-voxel test: voxels 2 voxels apart along the 1 mm axis.
    gt, pred = _single_voxels((128, 128, 128), (50, 60, 70), (50, 60, 72))
    assert dice(gt, pred) == 0.0
    # Surfels sit on voxel corners: gt's corners at z = 70, 71 and pred's at z = 72, 73, so half
    # of each surface is 1 mm from the other one and half 2 mm. Hence 0.5 at 1 mm (the package's
    # own expected value), not 0, and 1 at 2 mm (inclusive <=).
    assert normalized_surface_dice(gt, pred, (3, 2, 1), 0.5) == 0.0
    assert normalized_surface_dice(gt, pred, (3, 2, 1), 1) == 0.5
    assert normalized_surface_dice(gt, pred, (3, 2, 1), 1.999) == 0.5
    assert normalized_surface_dice(gt, pred, (3, 2, 1), 2) == 1.0


def test_anisotropic_spacing_changes_nsd():
    # A voxel shifted by one along the 3 mm axis vs along the 1 mm axis: shared face corners are
    # at 0 mm, the others at 3 mm (outside 2 mm) resp. 1 mm (inside).
    spacing = (3, 2, 1)
    gt, pred_x = _single_voxels((8, 8, 8), (4, 4, 4), (5, 4, 4))
    _, pred_z = _single_voxels((8, 8, 8), (4, 4, 4), (4, 4, 5))
    assert normalized_surface_dice(gt, pred_x, spacing, 2) == 0.5
    assert normalized_surface_dice(gt, pred_z, spacing, 2) == 1.0
    assert normalized_surface_dice(gt, pred_x, spacing, 3) == 1.0


def test_empty_masks_never_reach_the_package(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("surface_distance called with an empty mask")

    monkeypatch.setattr(surface_distance, "compute_surface_distances", forbidden)
    empty = np.zeros((6, 6, 6), bool)
    one = empty.copy()
    one[2, 2, 2] = True
    assert dice(empty, empty) == 1.0 and normalized_surface_dice(empty, empty, (1, 1, 1), 2) == 1.0
    assert dice(one, empty) == 0.0 and normalized_surface_dice(one, empty, (1, 1, 1), 2) == 0.0
    assert dice(empty, one) == 0.0 and normalized_surface_dice(empty, one, (1, 1, 1), 2) == 0.0
    labels = np.zeros((6, 6, 6), np.uint8)
    scores = score_case(labels, labels, (1, 1, 1), "flare22")
    assert all(s == {"dsc": 1.0, "nsd": 1.0} for s in scores.values())
    pred = labels.copy()
    pred[1, 1, 1] = 3
    scores = score_case(labels, pred, (1, 1, 1), "flare22")
    assert scores["spleen"] == {"dsc": 0.0, "nsd": 0.0}
    assert scores["liver"] == {"dsc": 1.0, "nsd": 1.0}


@pytest.mark.parametrize("seed", range(6))
def test_random_masks_match_direct_package_call(seed):
    rng = np.random.default_rng(seed)
    shape = tuple(rng.integers(6, 14, size=3))
    gt = rng.random(shape) < rng.uniform(0.1, 0.6)
    pred = rng.random(shape) < rng.uniform(0.1, 0.6)
    spacing = tuple(rng.uniform(0.5, 3.0, size=3))
    tolerance = rng.uniform(0.0, 4.0)
    expected_nsd = _package_nsd(gt, pred, spacing, tolerance)
    assert normalized_surface_dice(gt, pred, spacing, tolerance) == pytest.approx(expected_nsd)
    expected_dice = 2 * np.sum(gt & pred) / (np.sum(gt) + np.sum(pred))
    assert dice(gt, pred) == pytest.approx(expected_dice)


def test_2d_masks_and_bad_arguments():
    gt, pred = _single_voxels((10, 10), (4, 4), (4, 6))
    assert normalized_surface_dice(gt, pred, (1, 1), 2) == _package_nsd(gt, pred, (1, 1), 2)
    with pytest.raises(ValueError, match="spacing"):
        normalized_surface_dice(gt, pred, (1, 1, 1), 2)
    with pytest.raises(ValueError, match=r"\(10, 10\).*\(10, 9\)"):
        dice(gt, pred[:, :9])


# --- score_case ------------------------------------------------------------------------------


def _tube(label, z_slices, shape=(8, 8, 10)):
    """A 2x2 column of `label` over the given z slices (axis 2)."""
    volume = np.zeros(shape, np.uint8)
    volume[3:5, 3:5, z_slices] = label
    return volume


def test_z_crop_for_aorta_but_not_liver():
    spacing = (1.0, 1.0, 1.0)
    # GT in slices 2..5; prediction also fills 6 and 7 (above the GT's top).
    for dataset, aorta, liver in (("flare22", 5, 1), ("btcv", 8, 6)):
        gt_aorta, pred_aorta = _tube(aorta, slice(2, 6)), _tube(aorta, slice(2, 8))
        gt_liver, pred_liver = _tube(liver, slice(2, 6)), _tube(liver, slice(2, 8))
        scored_aorta = score_case(gt_aorta, pred_aorta, spacing, dataset)["aorta"]
        scored_liver = score_case(gt_liver, pred_liver, spacing, dataset)["liver"]
        # Aorta: both cropped to slices [2, 5): identical, so perfect.
        assert scored_aorta == {"dsc": 1.0, "nsd": 1.0}
        # Liver: 16 GT voxels vs 24 predicted, 16 shared -> 32 / 40.
        assert scored_liver["dsc"] == 0.8
        assert scored_liver["nsd"] == round(
            _package_nsd(gt_liver == liver, pred_liver == liver, spacing, 5), 4
        )


def test_z_crop_drops_the_top_gt_slice_only():
    spacing = (1.0, 1.0, 1.0)
    gt = _tube(5, slice(2, 6))  # aorta in slices 2, 3, 4, 5
    missing_top = _tube(5, slice(2, 5))  # slices 2, 3, 4
    missing_bottom = _tube(5, slice(3, 6))  # slices 3, 4, 5
    assert score_case(gt, missing_top, spacing, "flare22")["aorta"]["dsc"] == 1.0
    # Bottom slice is scored: crop [2, 5) holds 12 GT and 8 predicted voxels -> 16 / 20.
    assert score_case(gt, missing_bottom, spacing, "flare22")["aorta"]["dsc"] == 0.8
    # Same error on the liver (no crop): 2 * 12 / (16 + 12).
    liver = score_case(gt // 5, missing_top // 5, spacing, "flare22")["liver"]
    assert liver["dsc"] == round(24 / 28, 4)


def test_z_crop_single_slice_gt_is_nan_as_in_the_official_script():
    gt = _tube(10, slice(4, 5))  # esophagus in one slice: the crop [4, 4) is empty
    scores = score_case(gt, gt, (1, 1, 1), "flare22")
    assert math.isnan(scores["esophagus"]["dsc"]) and math.isnan(scores["esophagus"]["nsd"])
    means = mean_over_organs(scores)
    assert means == {"dsc": 1.0, "nsd": 1.0}  # the other 12 organs are both-empty


def test_nsd_zero_below_dsc_switch():
    spacing = (1.0, 1.0, 1.0)
    gt = np.zeros((12, 12, 12), np.uint8)
    pred = np.zeros_like(gt)
    gt[2:6, 2:6, 2:6] = 1
    pred[3:7, 5:9, 2:6] = 1  # overlap 3x1x4 = 12 of 64 each -> DSC 0.1875
    default = score_case(gt, pred, spacing, "flare22")["liver"]
    revised = score_case(gt, pred, spacing, "flare22", nsd_zero_below_dsc=0.2)["liver"]
    lenient = score_case(gt, pred, spacing, "flare22", nsd_zero_below_dsc=0.1)["liver"]
    assert default["dsc"] == revised["dsc"] == 0.1875
    assert default["nsd"] > 0.5  # surfaces within 5 mm of each other
    assert revised["nsd"] == 0.0
    assert lenient == default


def test_score_case_all_organs_rounded_and_match_the_package():
    rng = np.random.default_rng(7)
    gt = rng.integers(0, 14, size=(10, 9, 8)).astype(np.uint8)
    pred = np.where(rng.random(gt.shape) < 0.7, gt, rng.integers(0, 14, size=gt.shape)).astype(
        np.uint8
    )
    spacing = (0.8, 0.8, 2.5)
    scores = score_case(gt, pred, spacing, "flare22")
    assert list(scores) == list(metrics.LABELS["flare22"].values())
    for label_id, organ in metrics.LABELS["flare22"].items():
        g, p = gt == label_id, pred == label_id
        if organ in ("aorta", "inferior_vena_cava", "esophagus"):
            z = np.flatnonzero(g.any(axis=(0, 1)))
            g, p = g[:, :, z[0] : z[-1]], p[:, :, z[0] : z[-1]]
        expected_dice = 2 * np.sum(g & p) / (np.sum(g) + np.sum(p))
        expected_nsd = _package_nsd(g, p, spacing, metrics.NSD_TOLERANCE_MM[organ])
        assert scores[organ]["dsc"] == round(expected_dice, 4)
        assert scores[organ]["nsd"] == round(expected_nsd, 4)
    means = mean_over_organs(scores)
    assert means["dsc"] == pytest.approx(np.mean([s["dsc"] for s in scores.values()]))


def test_tolerances_cover_both_datasets():
    assert metrics.NSD_TOLERANCE_MM["duodenum"] == 7
    assert metrics.NSD_TOLERANCE_MM["portal_and_splenic_veins"] == 2
    for labels in metrics.LABELS.values():
        assert sorted(labels) == list(range(1, 14))
        assert all(name in metrics.NSD_TOLERANCE_MM for name in labels.values())


def test_score_case_input_errors():
    gt = np.zeros((4, 4, 4), np.uint8)
    with pytest.raises(ValueError, match="'word'"):
        score_case(gt, gt, (1, 1, 1), "word")
    with pytest.raises(ValueError, match=r"\(4, 4, 4\).*\(4, 4, 3\)"):
        score_case(gt, gt[:, :, :3], (1, 1, 1), "flare22")
    bad = gt.copy()
    bad[0, 0, 0], bad[1, 1, 1] = 14, 20
    with pytest.raises(InputError) as error:
        score_case(bad, gt, (1, 1, 1), "flare22")
    assert error.value.path == "gt_labels"
    assert error.value.problem == "label ids [14, 20] not in flare22 set"
    with pytest.raises(InputError, match="pred_labels: label ids \\[14, 20\\] not in btcv set"):
        score_case(gt, bad, (1, 1, 1), "btcv")


# --- auc -------------------------------------------------------------------------------------


def test_auc_matches_sklearn_and_rejects_one_class():
    rng = np.random.default_rng(0)
    for _ in range(5):
        y = rng.integers(0, 2, size=50)
        s = rng.random(50) + 0.3 * y
        assert auc(y, s) == roc_auc_score(y, s)
    assert auc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    with pytest.raises(ValueError, match="both classes"):
        auc([1, 1, 1], [0.2, 0.5, 0.9])


def test_auc_with_ties_equals_sklearn():
    # tied scores across and within classes: each tied (negative, positive) pair counts one half
    y = [0, 0, 1, 1, 0, 1, 1, 0]
    s = [0.3, 0.5, 0.5, 0.9, 0.3, 0.3, 0.5, 0.1]
    assert auc(y, s) == roc_auc_score(y, s)
    # by hand, 4 x 4 pairs: positives 0.5, 0.5 each beat 3 negatives and tie 1 (3.5), 0.9 beats all
    # 4, 0.3 beats 1 and ties 2 (2.0): 13 / 16
    assert auc(y, s) == 13 / 16
    assert auc([0, 1], [0.4, 0.4]) == 0.5  # all tied: chance
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, size=200)
    s = rng.integers(0, 4, size=200) / 4 + 0.1 * y  # heavily tied
    assert auc(y, s) == roc_auc_score(y, s)


@pytest.mark.parametrize(
    "spacing, tolerance, word",
    [
        ((math.nan, 1.0, 1.0), 2.0, "spacing"),
        ((1.0, 1.0, math.nan), 2.0, "spacing"),
        ((1.0, math.inf, 1.0), 2.0, "spacing"),
        ((1.0, 1.0, 1.0), math.nan, "tolerance"),
        ((1.0, 1.0, 1.0), -1.0, "tolerance"),
        ((1.0, 1.0, 1.0), math.inf, "tolerance"),
    ],
    ids=["nan-first", "nan-last", "inf", "nan-tol", "negative-tol", "inf-tol"],
)
def test_nsd_rejects_non_finite_spacing_and_tolerance(spacing, tolerance, word):
    gt, pred = _single_voxels((6, 6, 6), (2, 2, 2), (3, 3, 3))
    with pytest.raises(ValueError, match=word):
        normalized_surface_dice(gt, pred, spacing, tolerance)


@pytest.mark.parametrize("spacing", [(math.nan, 1.0, 1.0), (1.0, 1.0, math.nan), (1.0, -1.0, 1.0)])
def test_score_case_rejects_bad_spacing_even_when_no_organ_needs_it(spacing):
    gt = np.zeros((6, 6, 6), np.uint8)
    gt[2:4, 2:4, 2:4] = 1
    with pytest.raises(ValueError, match="spacing"):
        score_case(gt, np.zeros_like(gt), spacing, "flare22")  # one-sided: no NSD computed
