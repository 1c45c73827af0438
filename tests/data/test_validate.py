"""Every bad-input case: one clear InputError naming the file, and no partial output.

Each corruption is applied to a tiny BTCV (or MosMed) release, then `prepare` is run: the error
must name the offending file and the problem, and the output folder must hold no manifest, no
temporary files and nothing for the bad case.
"""

from __future__ import annotations

import shutil

import nibabel as nib
import numpy as np
import pytest

from alice.data.layouts import discover
from alice.data.nifti import read_header, read_image
from alice.data.preprocess import prepare
from alice.data.validate import check_headers, read_case
from alice.errors import InputError

IMG = "RawData/Training/img/img0002.nii.gz"
LAB = "RawData/Training/label/label0002.nii.gz"


def _truncate(path, keep):
    data = path.read_bytes()
    path.write_bytes(data[: keep(len(data))])


def _flip_bytes(path, at):
    data = bytearray(path.read_bytes())
    pos = at(len(data))
    data[pos : pos + 4] = bytes(255 - b for b in data[pos : pos + 4])
    path.write_bytes(bytes(data))


def _rewrite(fx, rel, data, affine=None):
    def mutate(root):
        fx.write_nifti(root / rel, data, affine)

    return mutate


def corruptions(fx):
    """name -> (mutation of a btcv root, offending file, problem text, header-level?)."""
    shifted = fx.ras_affine()
    shifted[0, 3] += 0.5
    nan_img = fx.ct_volume()
    nan_img[3, 4, 2] = np.nan
    inf_img = fx.ct_volume()
    inf_img[1, 1, 1] = np.inf
    out_of_set = fx.organ_labels().astype(np.int16)
    out_of_set[0, 0, 0] = 14
    out_of_set[0, 0, 1] = 20
    negative = fx.organ_labels().astype(np.int16)
    negative[0, 0, 0] = -1
    fractional = fx.organ_labels().astype(np.float32)
    fractional[2, 2, 2] = 1.5

    def truncated_nii(root):
        gz = root / IMG
        img = nib.load(str(gz))
        plain = gz.with_name("img0002.nii")
        nib.save(nib.Nifti1Image(np.asarray(img.dataobj), img.affine), str(plain))
        gz.unlink()
        _truncate(plain, lambda n: n - 100)

    return {
        "garbage file": (lambda r: (r / IMG).write_bytes(b"this is not a NIfTI file" * 10), IMG, "unreadable NIfTI header", True),
        "truncated header": (lambda r: _truncate(r / IMG, lambda n: 60), IMG, "unreadable NIfTI header", True),
        "truncated gz data": (lambda r: _truncate(r / IMG, lambda n: n - 40), IMG, "truncated or corrupt voxel data", True),
        "corrupt gz data": (lambda r: _flip_bytes(r / IMG, lambda n: n - 30), IMG, "truncated or corrupt voxel data", False),
        "truncated nii data": (truncated_nii, "RawData/Training/img/img0002.nii", "but the file holds only 1,692 bytes (truncated?)", True),
        "2-D image": (_rewrite(fx, IMG, np.zeros((12, 10), np.int16)), IMG, "expected a 3-D volume, got a 2-D", True),
        "4-D image": (_rewrite(fx, IMG, np.zeros((12, 10, 6, 2), np.int16)), IMG, "expected a 3-D volume, got a 4-D", True),
        "NaN voxels": (_rewrite(fx, IMG, nan_img), IMG, "image contains 1 NaN voxel(s)", False),
        "inf voxels": (_rewrite(fx, IMG, inf_img), IMG, "image contains 1 infinite voxel(s)", False),
        "shape mismatch": (_rewrite(fx, LAB, np.zeros((12, 10, 5), np.uint8)), LAB, "label shape (12, 10, 5) differs from image shape (12, 10, 6)", True),
        "affine mismatch": (_rewrite(fx, LAB, fx.organ_labels(), shifted), LAB, "label affine differs from its image img0002.nii.gz", True),
        "label ids outside set": (_rewrite(fx, LAB, out_of_set), LAB, "label ids [14, 20] are outside the dataset's label set 0..13", False),
        "negative label id": (_rewrite(fx, LAB, negative), LAB, "label ids [-1] are outside", False),
        "non-integer labels": (_rewrite(fx, LAB, fractional), LAB, "label map has non-integer values", False),
        "label missing": (lambda r: (r / LAB).unlink(), "RawData/Training/img/img0002.nii.gz", "labeled case 'img0002' has no label", True),
        "image missing": (lambda r: (r / IMG).unlink(), LAB, "label has no matching image", True),
        "duplicate id": (
            lambda r: shutil.copy(r / IMG, r / "RawData/Training/img/img0002.nii"),
            IMG,  # the second one seen (sorted names); the message names the first as well
            "duplicate case id 'img0002': also present as ",
            True,
        ),
        "misnamed file": (
            lambda r: shutil.copy(r / IMG, r / "RawData/Training/img/img_0003.nii.gz"),
            "RawData/Training/img/img_0003.nii.gz",
            "does not match the naming pattern",
            True,
        ),
    }


CASES = [
    "garbage file",
    "truncated header",
    "truncated gz data",
    "corrupt gz data",
    "truncated nii data",
    "2-D image",
    "4-D image",
    "NaN voxels",
    "inf voxels",
    "shape mismatch",
    "affine mismatch",
    "label ids outside set",
    "negative label id",
    "non-integer labels",
    "label missing",
    "image missing",
    "duplicate id",
    "misnamed file",
]


@pytest.mark.parametrize("name", CASES)
def test_bad_input_fails_cleanly(name, btcv_root, out_dir, fx):
    mutate, rel, problem, header_level = corruptions(fx)[name]
    mutate(btcv_root)
    with pytest.raises(InputError) as err:
        prepare("btcv", btcv_root, out_dir, fx.seg_settings(), progress=False)
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith(str(btcv_root / rel) + ": "), msg
    assert problem in msg, msg
    if name == "duplicate id":
        assert msg.endswith("RawData/Training/img/img0002.nii")
    fx.assert_failed_cleanly(out_dir, "img0002")
    if header_level:  # caught by the cheap pass before anything is written
        assert not out_dir.exists() or not any(out_dir.iterdir())
    else:  # caught when the case is loaded: the case before it is complete, the bad one absent
        assert (out_dir / "img0001.json").is_file()


def test_header_pass_catches_header_level_problems_without_reading_data(btcv_root, fx):
    shifted = fx.ras_affine()
    shifted[1, 1] = 1.6
    fx.write_nifti(btcv_root / LAB, fx.organ_labels(), shifted)
    with pytest.raises(InputError, match="label affine differs"):
        check_headers("btcv", discover("btcv", btcv_root))


def test_affine_within_tolerance_is_accepted(btcv_root, out_dir, fx):
    nudged = fx.ras_affine()
    nudged[0, 3] += 2e-4
    fx.write_nifti(btcv_root / LAB, fx.organ_labels(), nudged)
    prepare("btcv", btcv_root, out_dir, fx.seg_settings(), progress=False)
    with pytest.raises(InputError, match="tolerance 1e-05 mm"):
        prepare("btcv", btcv_root, out_dir, fx.seg_settings(affine_tolerance=1e-5), progress=False)


def test_four_d_with_singleton_last_axis_is_squeezed(btcv_root, out_dir, fx):
    data = fx.ct_volume()[..., None]
    fx.write_nifti(btcv_root / IMG, data)
    header = read_header(btcv_root / IMG)
    assert header.shape == fx.SHAPE and header.squeezed
    image, _ = read_image(btcv_root / IMG)
    assert image.shape == fx.SHAPE
    manifest = prepare("btcv", btcv_root, out_dir, fx.seg_settings(), progress=False)
    assert manifest["n_cases"] == 5


def test_failed_rerun_removes_the_stale_manifest(btcv_root, out_dir, fx):
    prepare("btcv", btcv_root, out_dir, fx.seg_settings(), progress=False)
    assert (out_dir / "manifest.json").is_file()
    bad = fx.organ_labels()
    bad[0, 0, 0] = 99
    fx.write_nifti(btcv_root / LAB, bad)
    with pytest.raises(InputError, match=r"label ids \[99\]"):
        prepare("btcv", btcv_root, out_dir, fx.seg_settings(), progress=False)
    fx.assert_failed_cleanly(out_dir, "img0002")
    assert (out_dir / "img0001.json").is_file()  # untouched good case stays cached
    # a header-level failure happens before anything is written: the earlier cache and its
    # manifest stay as they were (a consistent unit)
    fx.write_nifti(btcv_root / LAB, fx.organ_labels())
    prepare("btcv", btcv_root, out_dir, fx.seg_settings(), progress=False)
    manifest = (out_dir / "manifest.json").read_bytes()
    (btcv_root / LAB).write_bytes(b"garbage")
    with pytest.raises(InputError, match="unreadable NIfTI header"):
        prepare("btcv", btcv_root, out_dir, fx.seg_settings(), progress=False)
    assert (out_dir / "manifest.json").read_bytes() == manifest


def test_leftover_temp_files_of_a_killed_run_are_removed(btcv_root, out_dir, fx):
    from alice.data.preprocess import MARKER

    prepare("btcv", btcv_root, out_dir, fx.seg_settings(), progress=False)
    (out_dir / ".img0001_image.npy.abc123.tmp.npy").write_bytes(b"partial")
    prepare("btcv", btcv_root, out_dir, fx.seg_settings(), progress=False)
    assert [p.name for p in out_dir.glob(".*")] == [MARKER]


def test_flare22_offline_test_errors_leave_nothing(flare22_root, out_dir, fx):
    with pytest.raises(InputError) as err:
        prepare("flare22", flare22_root, out_dir, fx.seg_settings(offline_test=["FLARETs_0003"]), progress=False)
    assert "FLARETs_0003_0000.nii.gz" in str(err.value) and "not on disk" in str(err.value)
    assert not out_dir.exists()


def test_missing_and_empty_root_leave_nothing(tmp_path, out_dir, fx):
    with pytest.raises(InputError, match="does not exist"):
        prepare("btcv", tmp_path / "nowhere", out_dir, fx.seg_settings(), progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no btcv cases found"):
        prepare("btcv", tmp_path / "empty", out_dir, fx.seg_settings(), progress=False)
    assert not out_dir.exists()


def test_pool_duplicate_across_folders_leaves_nothing(pool_root, out_dir, fx):
    t = pool_root / "Training"
    shutil.copy(t / "FLARE22_UnlabeledCase1-1000/Case_00001_0000.nii.gz", t / "FLARE22_UnlabeledCase1001-2000/Case_00001_0000.nii.gz")
    with pytest.raises(InputError) as err:
        prepare("flare22_pool", pool_root, out_dir, fx.seg_settings(), progress=False)
    assert "FLARE22_UnlabeledCase1001-2000/Case_00001_0000.nii.gz" in str(err.value)
    assert "duplicate case id 'Case_00001'" in str(err.value)
    assert not out_dir.exists()


def test_mosmed_mask_not_binary(mosmed_root, out_dir, fx):
    mask = mosmed_root / "masks" / "study_0003_mask.nii.gz"
    fx.write_nifti(mask, fx.organ_labels())  # ids 0..3
    with pytest.raises(InputError) as err:
        prepare("mosmed", mosmed_root, out_dir, fx.mosmed_settings(), progress=False)
    assert str(err.value).startswith(str(mask)) and "mask is not binary: has values [2, 3]" in str(err.value)
    fx.assert_failed_cleanly(out_dir, "study_0003")


def test_mosmed_mask_shape_mismatch(mosmed_root, out_dir, fx):
    mask = mosmed_root / "masks" / "study_0003_mask.nii.gz"
    fx.write_nifti(mask, np.zeros((12, 10, 7), np.uint8))
    with pytest.raises(InputError) as err:
        prepare("mosmed", mosmed_root, out_dir, fx.mosmed_settings(), progress=False)
    assert str(err.value).startswith(str(mask)) and "mask shape (12, 10, 7) differs from study shape" in str(err.value)
    assert not out_dir.exists()


def test_read_case_returns_checked_arrays(btcv_root):
    case = discover("btcv", btcv_root)[0]
    loaded = read_case("btcv", case)
    assert loaded.image.dtype == np.float32 and loaded.label.dtype == np.uint8
    assert loaded.image.shape == loaded.label.shape == (12, 10, 6)


def _pixdim_disagrees(path, data, affine, zooms):
    """A NIfTI whose pixdim says `zooms` while its sform (the affine readers use) says otherwise."""
    img = nib.Nifti1Image(np.asarray(data), affine)
    img.header.set_zooms(zooms)
    nib.save(img, str(path))
    loaded = nib.load(str(path))
    assert np.allclose(loaded.header.get_zooms(), zooms)  # nibabel kept both as written
    assert not np.allclose(nib.affines.voxel_sizes(loaded.affine), zooms)


def test_header_zooms_disagreeing_with_the_affine_are_rejected(btcv_root, out_dir, fx):
    _pixdim_disagrees(btcv_root / IMG, fx.ct_volume(), fx.ras_affine(), (2.0, 2.0, 2.0))
    with pytest.raises(InputError) as err:
        prepare("btcv", btcv_root, out_dir, fx.seg_settings(), progress=False)
    msg = str(err.value)
    assert msg.startswith(str(btcv_root / IMG) + ": ") and "\n" not in msg
    assert "pixdim" in msg and "(2, 2, 2)" in msg and "(1.6, 1.5, 2.5)" in msg, msg
    assert not out_dir.exists() or not any(out_dir.iterdir())  # caught by the header pass
