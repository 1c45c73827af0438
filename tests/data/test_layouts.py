"""Discovery of each release layout, and the layout-level errors (naming, pairing, duplicates)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from alice.data.layouts import Case, discover
from alice.labels import LABEL_IDS, LABEL_NAMES
from alice.errors import ConfigError, InputError


def test_label_names_cover_13_organs():
    for dataset in ("flare22", "btcv"):
        assert sorted(LABEL_NAMES[dataset]) == list(range(1, 14))
        assert LABEL_IDS[dataset] == frozenset(range(14))
    assert LABEL_NAMES["flare22"][1] == "liver" and LABEL_NAMES["flare22"][13] == "left_kidney"
    assert LABEL_NAMES["btcv"][1] == "spleen" and LABEL_NAMES["btcv"][10] == "portal_and_splenic_veins"


def test_flare22_train_and_offline_test(flare22_root):
    cases = discover("flare22", flare22_root, {"offline_test": ["FLARETs_0002"]})
    by_id = {c.case_id: c for c in cases}
    assert sorted(by_id) == ["FLARE22_Tr_0001", "FLARE22_Tr_0002", "FLARE22_Tr_0003", "FLARETs_0002"]
    tr = by_id["FLARE22_Tr_0001"]
    assert tr.split == "train"
    assert tr.image.name == "FLARE22_Tr_0001_0000.nii.gz" and tr.image.parent.name == "images"
    assert tr.label.name == "FLARE22_Tr_0001.nii.gz" and tr.label.parent.name == "labels"
    ts = by_id["FLARETs_0002"]
    assert ts.split == "test" and ts.label.parent.name == "labels"
    assert isinstance(tr, Case) and tr.category is None and tr.class_label is None


def test_flare22_without_offline_test_has_only_train(flare22_root):
    cases = discover("flare22", flare22_root)
    assert {c.split for c in cases} == {"train"} and len(cases) == 3


def test_flare22_offline_test_ints_and_custom_label_folder(tmp_path, fx):
    root = fx.make_flare22(tmp_path / "F", val=(1, 2), val_labels="ValidationLabels")
    cases = discover("flare22", root, {"offline_test": [1, 2], "validation_labels": "ValidationLabels"})
    assert [c.case_id for c in cases if c.split == "test"] == ["FLARETs_0001", "FLARETs_0002"]


def test_flare22_labels_beside_validation_images(tmp_path, fx):
    root = fx.make_flare22(tmp_path / "F", val=(1,), val_labels="Validation")
    cases = discover("flare22", root, {"offline_test": ["FLARETs_0001"], "validation_labels": "Validation"})
    test = [c for c in cases if c.split == "test"][0]
    assert test.image.name == "FLARETs_0001_0000.nii.gz" and test.label.name == "FLARETs_0001.nii.gz"


def test_flare22_offline_test_id_not_on_disk(flare22_root):
    with pytest.raises(InputError) as err:
        discover("flare22", flare22_root, {"offline_test": ["FLARETs_0001", "FLARETs_0009"]})
    assert "FLARETs_0009_0000.nii.gz" in str(err.value) and "not on disk" in str(err.value)


def test_flare22_offline_test_case_without_label(flare22_root):
    (flare22_root / "Validation" / "labels" / "FLARETs_0002.nii.gz").unlink()
    with pytest.raises(InputError) as err:
        discover("flare22", flare22_root, {"offline_test": ["FLARETs_0002"]})
    assert "FLARETs_0002_0000.nii.gz" in str(err.value) and "has no label" in str(err.value)


@pytest.mark.parametrize("bad", [["FLARE22_Tr_0001"], "FLARETs_0001", [1, 1]])
def test_flare22_offline_test_config_errors(flare22_root, bad):
    with pytest.raises(ConfigError, match="offline_test"):
        discover("flare22", flare22_root, {"offline_test": bad})


def test_flare22_pool_two_folders(pool_root):
    cases = discover("flare22_pool", pool_root)
    assert [c.case_id for c in cases] == ["Case_00001", "Case_00002", "Case_01001"]
    assert all(c.split == "pool" and c.label is None for c in cases)
    assert cases[2].image.parent.name == "FLARE22_UnlabeledCase1001-2000"


def test_flare22_pool_same_id_in_both_folders(pool_root, fx):
    src = pool_root / "Training" / "FLARE22_UnlabeledCase1-1000" / "Case_00002_0000.nii.gz"
    dst = pool_root / "Training" / "FLARE22_UnlabeledCase1001-2000" / "Case_00002_0000.nii.gz"
    shutil.copy(src, dst)
    with pytest.raises(InputError) as err:
        discover("flare22_pool", pool_root)
    msg = str(err.value)
    assert "duplicate case id 'Case_00002'" in msg and "FLARE22_UnlabeledCase1" in msg


def test_btcv_train_and_online_test(btcv_root):
    cases = discover("btcv", btcv_root)
    assert [(c.case_id, c.split) for c in cases] == [
        ("img0001", "train"),
        ("img0002", "train"),
        ("img0021", "train"),
        ("img0061", "online_test"),
        ("img0062", "online_test"),
    ]
    assert cases[0].label.name == "label0001.nii.gz"
    assert cases[-1].label is None


def test_btcv_accepts_uncompressed_nii(btcv_root):
    img = btcv_root / "RawData" / "Training" / "img"
    lab = btcv_root / "RawData" / "Training" / "label"
    import nibabel as nib

    for folder, name in ((img, "img0002"), (lab, "label0002")):
        nib.save(nib.load(str(folder / f"{name}.nii.gz")), str(folder / f"{name}.nii"))
        (folder / f"{name}.nii.gz").unlink()
    case = [c for c in discover("btcv", btcv_root) if c.case_id == "img0002"][0]
    assert case.image.name == "img0002.nii" and case.label.name == "label0002.nii"


def test_btcv_duplicate_nii_and_nii_gz(btcv_root):
    img = btcv_root / "RawData" / "Training" / "img"
    shutil.copy(img / "img0001.nii.gz", img / "img0001.nii")
    with pytest.raises(InputError) as err:
        discover("btcv", btcv_root)
    msg = str(err.value)
    assert "img0001.nii" in msg and "duplicate case id 'img0001'" in msg


def test_btcv_same_id_in_training_and_testing(btcv_root):
    raw = btcv_root / "RawData"
    shutil.copy(raw / "Training" / "img" / "img0001.nii.gz", raw / "Testing" / "img" / "img0001.nii.gz")
    with pytest.raises(InputError, match="duplicate case id 'img0001'"):
        discover("btcv", btcv_root)


def test_labeled_case_without_label(btcv_root):
    (btcv_root / "RawData" / "Training" / "label" / "label0002.nii.gz").unlink()
    with pytest.raises(InputError) as err:
        discover("btcv", btcv_root)
    msg = str(err.value)
    assert msg.startswith(str(btcv_root / "RawData" / "Training" / "img" / "img0002.nii.gz"))
    assert "has no label" in msg and "label0002.nii.gz" in msg


def test_label_without_image(flare22_root):
    (flare22_root / "Training" / "FLARE22_LabeledCase50" / "images" / "FLARE22_Tr_0003_0000.nii.gz").unlink()
    with pytest.raises(InputError) as err:
        discover("flare22", flare22_root)
    msg = str(err.value)
    assert "labels/FLARE22_Tr_0003.nii.gz" in msg and "no matching image" in msg


def test_misnamed_nifti_is_an_error(flare22_root):
    bad = flare22_root / "Training" / "FLARE22_LabeledCase50" / "images" / "FLARE22_Tr_0004.nii.gz"
    shutil.copy(bad.with_name("FLARE22_Tr_0001_0000.nii.gz"), bad)
    with pytest.raises(InputError) as err:
        discover("flare22", flare22_root)
    msg = str(err.value)
    assert msg.startswith(str(bad)) and "does not match the naming pattern" in msg
    assert "FLARE22_Tr_0001_0000.nii.gz" in msg  # the expected example


def test_missing_root(tmp_path):
    with pytest.raises(InputError) as err:
        discover("btcv", tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(err.value) and "does not exist" in str(err.value)


@pytest.mark.parametrize("dataset", ["flare22", "flare22_pool", "btcv", "mosmed"])
def test_empty_root(tmp_path, dataset):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / ".DS_Store").write_text("x")
    with pytest.raises(InputError) as err:
        discover(dataset, tmp_path / "empty")
    assert str(tmp_path / "empty") in str(err.value) and f"no {dataset} cases found" in str(err.value)


def test_wrong_layout_for_dataset(btcv_root):
    with pytest.raises(InputError, match="no flare22 cases found"):
        discover("flare22", btcv_root)


def test_zip_only_mirror_names_the_archive(tmp_path):
    labeled = tmp_path / "F" / "Training" / "FLARE22_LabeledCase50"
    labeled.mkdir(parents=True)
    (labeled / "images.zip").write_bytes(b"PK")
    with pytest.raises(InputError) as err:
        discover("flare22", tmp_path / "F")
    assert "images.zip" in str(err.value) and "unpack" in str(err.value)


def test_unknown_dataset(tmp_path):
    with pytest.raises(ConfigError, match="unknown dataset"):
        discover("kits", tmp_path)


def test_mosmed_categories_and_masks(mosmed_root):
    cases = discover("mosmed", mosmed_root)
    by_id = {c.case_id: c for c in cases}
    assert sorted(by_id) == [f"study_{i:04d}" for i in range(1, 8)]
    assert [(by_id[f"study_{i:04d}"].category, by_id[f"study_{i:04d}"].class_label) for i in (1, 3, 5, 7)] == [
        (0, 0),
        (1, 1),
        (2, 1),
        (4, 1),
    ]
    assert all(c.split == "all" and c.label is None for c in cases)
    assert by_id["study_0003"].mask.name == "study_0003_mask.nii.gz"
    assert by_id["study_0001"].mask is None


def test_mosmed_root_one_level_too_high(mosmed_root):
    with pytest.raises(InputError, match="COVID19_1110 folder itself"):
        discover("mosmed", mosmed_root.parent)


def test_mosmed_mask_without_study(mosmed_root, fx):
    fx.write_nifti(mosmed_root / "masks" / "study_0099_mask.nii.gz", np.zeros(fx.SHAPE, np.uint8))
    with pytest.raises(InputError) as err:
        discover("mosmed", mosmed_root)
    assert "study_0099_mask.nii.gz" in str(err.value) and "no matching study" in str(err.value)


def test_mosmed_same_study_in_two_categories(mosmed_root):
    studies = mosmed_root / "studies"
    shutil.copy(studies / "CT-0" / "study_0001.nii.gz", studies / "CT-2" / "study_0001.nii.gz")
    with pytest.raises(InputError, match="duplicate case id 'study_0001'"):
        discover("mosmed", mosmed_root)


def test_mosmed_unknown_category_folder(mosmed_root, fx):
    fx.write_nifti(mosmed_root / "studies" / "CT-7" / "study_0100.nii.gz", fx.ct_volume())
    with pytest.raises(InputError) as err:
        discover("mosmed", mosmed_root)
    assert "CT-7" in str(err.value) and "unknown MosMed category" in str(err.value)


def test_mosmed_study_outside_category_folder(mosmed_root, fx):
    fx.write_nifti(mosmed_root / "studies" / "study_0100.nii.gz", fx.ct_volume())
    with pytest.raises(InputError) as err:
        discover("mosmed", mosmed_root)
    assert "study_0100.nii.gz" in str(err.value) and "outside the CT-0" in str(err.value)


def test_non_ascii_digits_are_not_case_ids(flare22_root):
    """A fullwidth-digit twin of FLARE22_Tr_0001 is a misnamed file, not a fourth case."""
    folder = flare22_root / "Training" / "FLARE22_LabeledCase50"
    twin = folder / "images" / "FLARE22_Tr_\uff10\uff10\uff101_0000.nii.gz"
    shutil.copy(folder / "images" / "FLARE22_Tr_0001_0000.nii.gz", twin)
    shutil.copy(folder / "labels" / "FLARE22_Tr_0001.nii.gz", folder / "labels" / "FLARE22_Tr_\uff10\uff10\uff101.nii.gz")
    with pytest.raises(InputError) as err:
        discover("flare22", flare22_root)
    assert str(err.value).startswith(f"{twin}: file name does not match the naming pattern")


def test_non_ascii_digits_in_a_mosmed_category_folder_are_ignored(mosmed_root):
    """`CT-\uff11` is not the CT-1 folder (folders outside the layout are ignored)."""
    shutil.copytree(mosmed_root / "studies" / "CT-1", mosmed_root / "studies" / "CT-\uff11")
    cases = discover("mosmed", mosmed_root)
    assert sorted(c.case_id for c in cases) == [f"study_{n:04d}" for n in range(1, 8)]
