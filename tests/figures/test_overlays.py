"""Qualitative overlays (paper Fig. 4/7 style) from tiny synthetic predictions and labels."""

from __future__ import annotations

import json

import matplotlib.image as mpimg
import nibabel as nib
import numpy as np
import pytest

from alice.cli import main
from alice.errors import InputError
from alice.figures.overlays import best_slice, draw_overlays, load_overlays

SHAPE = (12, 10, 7)
# voxel z runs inferior -> superior reversed (negative z step): RAS+ reverses the slice order
AFFINE = np.array([[-3.0, 0, 0, 20], [0, -3.0, 0, 15], [0, 0, -4.0, 30], [0, 0, 0, 1]])


def _save(path, data, affine=AFFINE, dtype=np.uint8):
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(np.asarray(data, dtype=dtype), affine)
    nib.save(img, str(path))
    return path


def _truth(case_index: int) -> np.ndarray:
    """Organs on voxel slices 1..5; voxel slice 4 holds the most foreground (a liver block plus
    a spleen), voxel slices 2 and 3 tie below it."""
    label = np.zeros(SHAPE, dtype=np.uint8)
    label[2:6, 2:5, 1:6] = 1  # 12 voxels on each of slices 1..5
    label[7:10, 5:8, 2:5] = 3  # +9 on slices 2..4
    label[8:11, 1:3, 4] = 13  # +6 on slice 4 only: slice 4 wins
    label[0, 0, 0] = case_index  # case 0: nothing; case 1: one liver voxel on slice 0
    return label


@pytest.fixture
def evaluated(tmp_path):
    """A preprocessing cache with two test cases and two evaluated runs (metrics + predictions)."""
    data = tmp_path / "data"
    data.mkdir()
    cases = ["FLARETs_0002", "FLARETs_0001"]  # unsorted on purpose
    rng = np.random.default_rng(0)
    for i, case in enumerate(cases):
        image = _save(tmp_path / "release" / f"{case}_0000.nii.gz",
                      rng.integers(-200, 300, SHAPE), dtype=np.int16)
        label = _save(tmp_path / "release" / "labels" / f"{case}.nii.gz", _truth(i))
        (data / f"{case}.json").write_text(json.dumps(
            {"case_id": case, "source": {"image": str(image), "label": str(label), "mask": None}}))
    runs = []
    for method, shift in (("rand_init", 1), ("alice", 0)):
        fold = tmp_path / "finetune" / "flare22" / method / "unetr" / "fold0"
        for i, case in enumerate(cases):
            _save(fold / "predictions" / f"{case}.nii.gz", np.roll(_truth(i), shift, axis=0))
        (fold / "metrics.json").write_text(json.dumps({
            "dataset": "flare22", "cases": {c: {} for c in cases},
            "case_mean": {c: {"dsc": 0.5 + 0.1 * shift, "nsd": 0.4} for c in cases}}))
        runs.append(("Rand. init." if method == "rand_init" else "Alice", fold))
    return data, runs


def test_best_slice_most_foreground_lowest_on_ties():
    label = np.zeros((4, 4, 6), dtype=np.uint8)
    label[:2, :2, 1] = 1
    label[:2, :2, 3] = 2
    label[2:, 2:, 3] = 5  # slice 3: 8 voxels, slice 1: 4
    assert best_slice(label) == 3
    label[2:, 2:, 1] = 4  # slice 1 now ties with slice 3: the lower one
    assert best_slice(label) == 1
    assert best_slice(np.zeros((4, 4, 6))) == 3  # empty: the middle slice


def test_slice_is_chosen_in_ras_from_the_ground_truth(evaluated):
    data, runs = evaluated
    loaded = load_overlays(runs, data)
    assert loaded.dataset == "flare22"
    assert [row.case_id for row in loaded.rows] == ["FLARETs_0001", "FLARETs_0002"]  # sorted ids
    for row in loaded.rows:
        # voxel slice 4 of 0..6 is RAS slice 2 (the z axis is flipped to increase superiorly)
        assert row.slice == 2
        assert (row.truth[:, :, 2] > 0).sum() == 27
        assert row.truth.shape == (12, 10, 7) and row.zooms == (3.0, 3.0, 4.0)
        assert len(row.predictions) == 2
        # the truth and the prediction went through the same reorientation
        assert np.array_equal(row.predictions[1], row.truth)  # "alice" predicted it exactly
    assert load_overlays(runs, data, max_cases=1).rows[0].case_id == "FLARETs_0001"


def test_figure_file_appears(evaluated, tmp_path):
    data, runs = evaluated
    out = draw_overlays(runs, data, tmp_path / "figs" / "overlays_flare22_unetr.png", title="t")
    image = mpimg.imread(str(out))
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # 2 cases x (image, truth, 2 methods); the figure is wider than tall
    assert image.shape[1] > image.shape[0] > 200
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # no temp file left


def test_missing_prediction_names_the_file(evaluated, tmp_path):
    data, runs = evaluated
    missing = runs[1][1] / "predictions" / "FLARETs_0002.nii.gz"
    missing.unlink()
    out = tmp_path / "o.png"
    with pytest.raises(InputError, match="FLARETs_0002") as err:
        draw_overlays(runs, data, out)
    assert err.value.path == str(missing) and "Alice" in err.value.problem
    assert not out.exists()


def test_prediction_on_another_grid_is_refused(evaluated, tmp_path):
    data, runs = evaluated
    path = runs[0][1] / "predictions" / "FLARETs_0001.nii.gz"
    _save(path, np.zeros((6, 5, 7)), affine=np.diag([6.0, 6.0, 4.0, 1.0]))
    with pytest.raises(InputError, match="shape") as err:
        load_overlays(runs, data)
    assert err.value.path == str(path)


def test_runs_must_share_the_test_cases(evaluated):
    data, runs = evaluated
    metrics = runs[1][1] / "metrics.json"
    content = json.loads(metrics.read_text())
    del content["cases"]["FLARETs_0002"]
    metrics.write_text(json.dumps(content))
    with pytest.raises(InputError, match="not the same test set") as err:
        load_overlays(runs, data)
    assert err.value.path == str(metrics)


def test_missing_metrics_and_foreign_labels(evaluated, tmp_path):
    data, runs = evaluated
    with pytest.raises(InputError, match="run `alice evaluate`"):
        load_overlays([("x", tmp_path / "nowhere")], data)
    path = runs[0][1] / "predictions" / "FLARETs_0001.nii.gz"
    _save(path, np.full(SHAPE, 20))
    with pytest.raises(InputError, match=r"label ids \[20\] are not flare22 organs"):
        load_overlays(runs, data)


def test_cli(evaluated, tmp_path, capsys):
    data, runs = evaluated
    out = tmp_path / "cli.png"
    args = ["figure", "overlays", "--data", str(data), "--out", str(out), "--max-cases", "1"]
    for label, fold in runs:
        args += ["--run", f"{label}={fold}"]
    assert main(args) == 0 and out.is_file()
    (runs[0][1] / "predictions" / "FLARETs_0001.nii.gz").unlink()
    out.unlink()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "predictions/FLARETs_0001.nii.gz" in err and "missing" in err and not out.exists()
    assert main(["figure", "overlays", "--data", str(data), "--out", str(out),
                 "--run", "no-label"]) == 2
    assert "LABEL=PATH" in capsys.readouterr().err
