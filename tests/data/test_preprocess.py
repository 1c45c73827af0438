"""The preprocessing cache: metadata, RAS + spacing, windowing, orientation invariance, re-runs,
MosMed rotation/resize, and mapping cached labels back onto the original grid."""

from __future__ import annotations

import numpy as np
import pytest

from alice.data.preprocess import (
    MARKER,
    invert_to_original,
    load_case,
    prepare,
    preprocessing_params,
    settings_hash,
)
from alice.errors import ConfigError, InputError
from alice.io import read_json


def _window(x, lo, hi):
    return (np.clip(x, lo, hi) - lo) / (hi - lo)


def _dice(a, b):
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def _lps(data, affine):
    """The same volume stored left-posterior-superior: flip x and y, adjust the affine."""
    n0, n1 = data.shape[:2]
    flip = np.array([[-1, 0, 0, n0 - 1], [0, -1, 0, n1 - 1], [0, 0, 1, 0], [0, 0, 0, 1]], float)
    return np.ascontiguousarray(data[::-1, ::-1]), affine @ flip


def _permuted(data, affine):
    """The same volume with the first two voxel axes swapped."""
    return np.ascontiguousarray(data.transpose(1, 0, 2)), affine[:, [1, 0, 2, 3]]


def _btcv_variants(root, fx, shape=None, spacing=None):
    """img0001 RAS, img0002 the same content as LPS, img0021 with permuted axes."""
    shape = shape or fx.SHAPE
    affine = fx.ras_affine(spacing or fx.SPACING)
    image, label = fx.ct_volume(shape), fx.organ_labels(shape)
    variants = {
        "img0001": (image, label, affine),
        "img0002": (*_lps(image, affine)[:1], *_lps(label, affine)),
        "img0021": (*_permuted(image, affine)[:1], *_permuted(label, affine)),
    }
    raw = root / "RawData" / "Training"
    for cid, (img, lab, aff) in variants.items():
        fx.write_nifti(raw / "img" / f"{cid}.nii.gz", img, aff)
        fx.write_nifti(raw / "label" / f"label{cid[3:]}.nii.gz", lab, aff)
    return image, label, affine


def test_round_trip_metadata_and_values(btcv_root, out_dir, fx):
    settings = fx.seg_settings()
    manifest = prepare("btcv", btcv_root, out_dir, settings, progress=False)
    assert manifest == read_json(out_dir / "manifest.json")
    assert manifest["n_cases"] == 5 and manifest["splits"] == {"online_test": 2, "train": 3}
    assert manifest["settings_hash"] == settings_hash(preprocessing_params("btcv", settings))
    entry = manifest["cases"][0]
    assert entry == {
        "case_id": "img0001",
        "split": "train",
        "category": None,
        "class_label": None,
        "meta": "img0001.json",
        "image": "img0001_image.npy",
        "label": "img0001_label.npy",
    }
    assert manifest["cases"][-1]["label"] is None and not (out_dir / "img0062_label.npy").exists()

    image, label, meta = load_case(out_dir, "img0001")
    assert isinstance(image, np.memmap) and isinstance(label, np.memmap)
    assert image.dtype == np.float32 and label.dtype == np.uint8
    assert np.allclose(meta["original"]["affine"], fx.ras_affine())
    assert np.allclose(meta["original"]["spacing"], fx.SPACING)
    assert meta["original"]["shape"] == list(fx.SHAPE) and meta["original"]["axcodes"] == ["R", "A", "S"]
    assert meta["cached"]["axcodes"] == ["R", "A", "S"]
    assert np.allclose(meta["cached"]["spacing"], fx.SPACING) and meta["cached"]["shape"] == list(image.shape)
    assert meta["intensity_window"] == [-175.0, 250.0] and meta["split"] == "train"
    assert meta["source"]["image"].endswith("img0001.nii.gz") and meta["source"]["label"].endswith("label0001.nii.gz")
    assert meta["files"] == {"meta": "img0001.json", "image": "img0001_image.npy", "label": "img0001_label.npy"}
    assert 0.0 <= image.min() and image.max() <= 1.0 and image.min() == 0.0 and image.max() == 1.0
    # spacing unchanged: the cache is exactly the windowed original
    original = np.rint(fx.ct_volume(seed=1)).astype(np.int16).astype(np.float32)
    assert np.allclose(image, _window(original, -175, 250), atol=1e-6)
    assert np.array_equal(label, fx.organ_labels())


def test_resampled_to_configured_spacing(btcv_root, out_dir, fx):
    prepare("btcv", btcv_root, out_dir, fx.seg_settings(spacing=[2.0, 1.0, 3.0]), progress=False)
    image, label, meta = load_case(out_dir, "img0002")
    assert np.allclose(meta["cached"]["spacing"], [2.0, 1.0, 3.0])
    assert meta["cached"]["axcodes"] == ["R", "A", "S"]
    assert image.shape == label.shape == tuple(meta["cached"]["shape"])
    assert image.shape != fx.SHAPE
    assert np.allclose(meta["original"]["spacing"], fx.SPACING)  # metadata keeps the source grid
    assert 0.0 <= image.min() and image.max() <= 1.0
    assert set(np.unique(label)) <= {0, 1, 2, 3}


@pytest.mark.parametrize("spacing", [None, [2.0, 1.8, 2.2]])
def test_non_ras_inputs_give_identical_caches(tmp_path, out_dir, fx, spacing):
    root = tmp_path / "BTCV"
    _btcv_variants(root, fx)
    settings = fx.seg_settings(spacing=spacing or list(fx.SPACING))
    prepare("btcv", root, out_dir, settings, progress=False)
    ref_img, ref_lab, ref_meta = load_case(out_dir, "img0001")
    for cid, axcodes in (("img0002", ["L", "P", "S"]), ("img0021", ["A", "R", "S"])):
        img, lab, meta = load_case(out_dir, cid)
        assert meta["original"]["axcodes"] == axcodes and meta["cached"]["axcodes"] == ["R", "A", "S"]
        assert img.shape == ref_img.shape
        assert np.allclose(img, ref_img, atol=1e-5)
        assert np.array_equal(lab, ref_lab)
        assert np.allclose(meta["cached"]["affine"], ref_meta["cached"]["affine"], atol=1e-6)


def test_invert_is_exact_when_spacing_is_unchanged(tmp_path, out_dir, fx):
    root = tmp_path / "BTCV"
    _btcv_variants(root, fx)
    prepare("btcv", root, out_dir, fx.seg_settings(), progress=False)
    import nibabel as nib

    for cid in ("img0001", "img0002", "img0021"):
        _, lab, meta = load_case(out_dir, cid)
        back = invert_to_original(lab, meta)
        original = np.asarray(nib.load(meta["source"]["label"]).dataobj)
        assert back.shape == original.shape and np.array_equal(back, original), cid


def test_invert_after_resampling_has_high_dice(tmp_path, out_dir, fx):
    root = tmp_path / "BTCV"
    shape = (40, 36, 16)
    _, label, _ = _btcv_variants(root, fx, shape=shape, spacing=(0.8, 0.9, 2.5))
    prepare("btcv", root, out_dir, fx.seg_settings(spacing=[1.5, 1.5, 2.0]), progress=False)
    import nibabel as nib

    for cid in ("img0001", "img0002", "img0021"):
        _, lab, meta = load_case(out_dir, cid)
        assert tuple(meta["cached"]["shape"]) != tuple(meta["original"]["shape"])
        back = invert_to_original(lab, meta)
        original = np.asarray(nib.load(meta["source"]["label"]).dataobj)
        assert back.shape == original.shape
        for organ in (1, 2, 3):
            assert _dice(back == organ, original == organ) > 0.85, (cid, organ)


def test_invert_rejects_a_wrong_shape(btcv_root, out_dir, fx):
    prepare("btcv", btcv_root, out_dir, fx.seg_settings(), progress=False)
    _, lab, meta = load_case(out_dir, "img0001")
    with pytest.raises(ValueError, match="cached grid"):
        invert_to_original(np.zeros((3, 3, 3), np.uint8), meta)


def _mtimes(out_dir):
    return {p.name: p.stat().st_mtime_ns for p in out_dir.iterdir() if p.name not in ("manifest.json", MARKER)}


def test_rerun_skips_and_changed_settings_recompute(btcv_root, out_dir, fx):
    first = prepare("btcv", btcv_root, out_dir, fx.seg_settings(), progress=False)
    before = _mtimes(out_dir)
    again = prepare("btcv", btcv_root, out_dir, fx.seg_settings(), progress=False)
    assert _mtimes(out_dir) == before and again == first

    image_before = np.load(out_dir / "img0001_image.npy")
    changed = prepare("btcv", btcv_root, out_dir, fx.seg_settings(window=[-100.0, 200.0]), progress=False)
    assert changed["settings_hash"] != first["settings_hash"]
    after = _mtimes(out_dir)
    assert all(after[name] != before[name] for name in before)
    assert not np.array_equal(np.load(out_dir / "img0001_image.npy"), image_before)
    assert load_case(out_dir, "img0001")[2]["intensity_window"] == [-100.0, 200.0]

    half = prepare("btcv", btcv_root, out_dir, fx.seg_settings(window=[-100.0, 200.0], cache_dtype="float16"), progress=False)
    assert half["preprocessing"]["cache_dtype"] == "float16"
    assert load_case(out_dir, "img0001")[0].dtype == np.float16


def test_changed_source_file_is_recomputed(btcv_root, out_dir, fx):
    prepare("btcv", btcv_root, out_dir, fx.seg_settings(), progress=False)
    before = _mtimes(out_dir)
    fx.write_nifti(btcv_root / "RawData/Training/img/img0002.nii.gz", fx.ct_volume(seed=42))
    prepare("btcv", btcv_root, out_dir, fx.seg_settings(), progress=False)
    after = _mtimes(out_dir)
    changed = {name for name in before if after[name] != before[name]}
    assert changed == {"img0002.json", "img0002_image.npy", "img0002_label.npy"}


def test_flare22_and_pool(flare22_root, pool_root, tmp_path, fx):
    m = prepare("flare22", flare22_root, tmp_path / "f", fx.seg_settings(offline_test=["FLARETs_0001"]), progress=False)
    assert m["splits"] == {"test": 1, "train": 3}
    assert m["settings"]["offline_test"] == ["FLARETs_0001"]
    assert (tmp_path / "f" / "FLARETs_0001_label.npy").is_file()
    p = prepare("flare22_pool", pool_root, tmp_path / "p", fx.seg_settings(window=[-125.0, 255.0]), progress=False)
    assert [c["case_id"] for c in p["cases"]] == ["Case_00001", "Case_00002", "Case_01001"]
    assert all(c["split"] == "pool" and c["label"] is None for c in p["cases"])
    assert not list((tmp_path / "p").glob("*_label.npy"))


def test_mosmed_resize_and_classes(mosmed_root, out_dir, fx):
    manifest = prepare("mosmed", mosmed_root, out_dir, fx.mosmed_settings(), progress=False)
    by_id = {c["case_id"]: c for c in manifest["cases"]}
    assert by_id["study_0001"]["class_label"] == 0 and by_id["study_0006"]["class_label"] == 1
    assert by_id["study_0006"]["category"] == 3 and by_id["study_0006"]["label"] is None
    image, label, meta = load_case(out_dir, "study_0003")
    assert image.shape == (8, 8, 4) and label is None
    assert 0.0 <= image.min() and image.max() <= 1.0
    assert meta["original"]["shape"] == list(fx.SHAPE) and meta["cached"]["shape"] == [8, 8, 4]
    assert meta["source"]["mask"].endswith("study_0003_mask.nii.gz")
    assert meta["preprocessing"]["rotate90"] == 1 and "spacing" not in meta["preprocessing"]


@pytest.mark.parametrize("k", [0, 1, 3])
def test_mosmed_rotation_in_the_axial_plane(mosmed_root, out_dir, fx, k):
    rotated_shape = fx.SHAPE if k % 2 == 0 else (fx.SHAPE[1], fx.SHAPE[0], fx.SHAPE[2])
    prepare("mosmed", mosmed_root, out_dir, fx.mosmed_settings(rotate90=k, size=list(rotated_shape)), progress=False)
    image, _, meta = load_case(out_dir, "study_0002")
    source = np.rint(fx.ct_volume(seed=2)).astype(np.int16).astype(np.float32)
    expected = np.rot90(_window(source, -1000.0, 400.0), k, axes=(0, 1))
    assert image.shape == expected.shape
    assert np.allclose(image, expected, atol=1e-6)


def test_mosmed_reorients_before_rotating(tmp_path, out_dir, fx):
    root = tmp_path / "COVID19_1110"
    volume = fx.ct_volume()
    fx.write_nifti(root / "studies/CT-0/study_0001.nii.gz", volume)
    fx.write_nifti(root / "studies/CT-1/study_0002.nii.gz", *_lps(volume, fx.ras_affine()))
    prepare("mosmed", root, out_dir, fx.mosmed_settings(size=[10, 12, 6]), progress=False)
    a, _, _ = load_case(out_dir, "study_0001")
    b, _, _ = load_case(out_dir, "study_0002")
    assert np.allclose(a, b, atol=1e-6)


def test_progress_bar_can_show_and_hide(btcv_root, out_dir, fx, capsys):
    prepare("btcv", btcv_root, out_dir, fx.seg_settings(), progress=True)
    assert "prepare btcv" in capsys.readouterr().err
    prepare("btcv", btcv_root, out_dir, fx.seg_settings(), progress=False)
    assert "prepare btcv" not in capsys.readouterr().err


@pytest.mark.parametrize(
    "dataset, settings, key",
    [
        ("btcv", {"window": [-175, 250]}, "spacing"),
        ("btcv", {"spacing": [1.5, 1.5, 2.0]}, "window"),
        ("btcv", {"spacing": [1.5, 1.5], "window": [-175, 250]}, "spacing"),
        ("btcv", {"spacing": [1.5, 1.5, 2.0], "window": [250, -175]}, "window"),
        ("btcv", {"spacing": [1.5, 1.5, 2.0], "window": [-175, 250], "cache_dtype": "int8"}, "cache_dtype"),
        ("mosmed", {"window": [-1000, 400], "rotate90": 1}, "size"),
        ("mosmed", {"window": [-1000, 400], "size": [128, 128, 64]}, "rotate90"),
        ("mosmed", {"window": [-1000, 400], "rotate90": 1, "size": [128, 128.5, 64]}, "size"),
    ],
)
def test_settings_errors_name_the_key(btcv_root, out_dir, dataset, settings, key):
    with pytest.raises(ConfigError, match=f"'{key}'"):
        prepare(dataset, btcv_root, out_dir, settings, progress=False)
    assert not out_dir.exists()


def test_load_case_of_an_unknown_case(btcv_root, out_dir, fx):
    prepare("btcv", btcv_root, out_dir, fx.seg_settings(), progress=False)
    with pytest.raises(InputError, match="img0099.json: case 'img0099' is not in this preprocessing cache"):
        load_case(out_dir, "img0099")


def test_constant_volume_is_warned_about_and_recorded(btcv_root, out_dir, fx, caplog):
    fx.write_nifti(btcv_root / "RawData/Training/img/img0002.nii.gz", np.full(fx.SHAPE, -1024, np.int16))
    with caplog.at_level("WARNING", logger="alice"):
        manifest = prepare("btcv", btcv_root, out_dir, fx.seg_settings(), progress=False)
    warned = [r for r in caplog.records if r.name == "alice" and r.levelname == "WARNING" and "img0002" in r.getMessage()]
    assert len(warned) == 1 and "-1024" in warned[0].getMessage()
    assert set(manifest["warnings"]) == {"img0002", "release"}  # release: the README etc. beside the images
    assert load_case(out_dir, "img0002")[2]["warnings"] == manifest["warnings"]["img0002"]
    caplog.clear()
    with caplog.at_level("WARNING", logger="alice"):  # a re-run that reuses the cache says it again
        again = prepare("btcv", btcv_root, out_dir, fx.seg_settings(), progress=False)
    assert again["warnings"] == manifest["warnings"] and "img0002" in caplog.text
