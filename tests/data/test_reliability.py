"""The readers' guarantees: a score is computed against the data that was prepared; a header that
cannot be true is refused before anything is allocated; no input is silently ignored or silently
empty; a prepared cache folder is one unit that `prepare` never mixes with foreign files."""

from __future__ import annotations

import gzip
import hashlib
import json
import time

import nibabel as nib
import numpy as np
import pytest

from alice.data import preprocess
from alice.data.nifti import read_header, read_image
from alice.data.preprocess import MARKER, cached_shape, load_case, prepare
from alice.data.validate import read_source_label, source_identity
from alice.errors import ConfigError, InputError

IMG = "RawData/Training/img/img0002.nii.gz"
LAB = "RawData/Training/label/label0002.nii.gz"


def _prepare(root, out_dir, fx, **settings):
    return prepare("btcv", root, out_dir, fx.seg_settings(**settings), progress=False)


def _meta(root, out_dir, fx, **settings):
    _prepare(root, out_dir, fx, **settings)
    return load_case(out_dir, "img0002")[2]


def _lps(data, affine):
    """The same volume stored left-posterior-superior: flip x and y, adjust the affine."""
    n0, n1 = data.shape[:2]
    flip = np.array([[-1, 0, 0, n0 - 1], [0, -1, 0, n1 - 1], [0, 0, 1, 0], [0, 0, 0, 1]], float)
    return np.ascontiguousarray(data[::-1, ::-1]), affine @ flip


# ------------------------------------------------- a score is computed against the data prepared
def test_prepare_records_each_source_files_fingerprint(btcv_root, out_dir, fx):
    meta = _meta(btcv_root, out_dir, fx)
    for role, rel in (("image", IMG), ("label", LAB)):
        path = btcv_root / rel
        record = meta["identity"]["source"][role]
        assert record["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert record["shape"] == list(fx.SHAPE) and np.allclose(record["affine"], fx.ras_affine())
        assert record["path"] == str(path.resolve()) and record["size"] == path.stat().st_size
    assert source_identity(meta) == {
        "path": str((btcv_root / LAB).resolve()),
        "sha256": meta["identity"]["source"]["label"]["sha256"],
        "size": (btcv_root / LAB).stat().st_size,
        "shape": list(fx.SHAPE),
    }


def test_source_label_reads_back_as_prepared(btcv_root, out_dir, fx):
    meta = _meta(btcv_root, out_dir, fx)
    labels, affine, spacing = read_source_label(meta, out_dir / "img0002.json")
    assert labels.dtype == np.uint8 and np.array_equal(labels, fx.organ_labels())
    assert np.allclose(affine, fx.ras_affine()) and np.allclose(spacing, fx.SPACING)


def test_label_re_exported_in_lps_after_prepare_is_refused(btcv_root, out_dir, fx):
    """Same shape, same anatomy, flipped storage and adjusted affine: not the file prepared."""
    meta = _meta(btcv_root, out_dir, fx)
    fx.write_nifti(btcv_root / LAB, *_lps(fx.organ_labels(), fx.ras_affine()))
    assert nib.load(str(btcv_root / LAB)).shape == fx.SHAPE
    with pytest.raises(InputError) as err:
        read_source_label(meta, out_dir / "img0002.json")
    msg = str(err.value)
    assert msg.startswith(str(btcv_root / LAB) + ": label changed since `alice prepare`"), msg
    assert "affine LPS" in msg and "prepared RAS" in msg and "\n" not in msg


def test_evaluation_reads_the_label_through_the_same_validator(btcv_root, out_dir, fx):
    from alice.downstream.inference import _original_label

    meta = _meta(btcv_root, out_dir, fx)
    labels, affine, spacing = _original_label(meta, "img0002", out_dir)
    assert np.array_equal(labels, fx.organ_labels()) and np.allclose(spacing, fx.SPACING)
    edited = fx.organ_labels()
    edited[0, 0, 0] = 2  # same header, one voxel relabelled
    fx.write_nifti(btcv_root / LAB, edited)
    with pytest.raises(InputError, match=r"label changed since `alice prepare`.*sha256"):
        _original_label(meta, "img0002", out_dir)


def test_a_moved_project_is_scored_against_the_same_bytes(btcv_root, out_dir, fx):
    """The label is found by the path prepare was given, else the absolute one it resolved; the
    fingerprint decides either way."""
    meta = _meta(btcv_root, out_dir, fx)
    meta["identity"]["source"]["label"]["path"] = "/gone/label0002.nii.gz"
    assert np.array_equal(read_source_label(meta, out_dir / "img0002.json")[0], fx.organ_labels())
    meta["source"]["label"] = "/gone/too/label0002.nii.gz"
    with pytest.raises(InputError, match=r"^/gone/label0002.nii.gz: source label of case 'img0002' not found$"):
        read_source_label(meta, out_dir / "img0002.json")


def test_a_four_d_label_prepare_accepts_is_accepted_for_scoring(btcv_root, out_dir, fx):
    fx.write_nifti(btcv_root / LAB, fx.organ_labels()[..., None])
    meta = _meta(btcv_root, out_dir, fx)
    labels, _, _ = read_source_label(meta, out_dir / "img0002.json")
    assert labels.shape == fx.SHAPE and np.array_equal(labels, fx.organ_labels())


def test_a_label_prepare_refuses_is_refused_for_scoring_alike(btcv_root, out_dir, fx):
    """Recorded as if prepared, a label whose pixdim contradicts its affine is refused by the same
    check with the same words."""
    meta = _meta(btcv_root, out_dir, fx)
    path = btcv_root / LAB
    fx.patch_header(path, pixdim=[1.0, 2.0, 2.0, 2.0, 1.0, 1.0, 1.0, 1.0])
    with pytest.raises(InputError) as at_prepare:
        _prepare(btcv_root, out_dir, fx)
    meta["identity"]["source"]["label"]["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(InputError) as at_scoring:
        read_source_label(meta, out_dir / "img0002.json")
    assert "pixdim" in at_prepare.value.problem and at_scoring.value.problem == at_prepare.value.problem


def test_a_record_without_fingerprint_is_held_to_size_and_mtime(btcv_root, out_dir, fx):
    """A cache written before fingerprints were kept: the label must keep the size and mtime
    recorded (what reusing a cached case trusts); a record identifying no file is refused."""
    meta = _meta(btcv_root, out_dir, fx)
    for key in ("sha256", "shape", "affine"):
        del meta["identity"]["source"]["label"][key]
    assert read_source_label(meta, out_dir / "img0002.json")[0].shape == fx.SHAPE
    assert source_identity(meta)["sha256"] is None and source_identity(meta)["shape"] == list(fx.SHAPE)
    fx.write_nifti(btcv_root / LAB, *_lps(fx.organ_labels(), fx.ras_affine()))
    with pytest.raises(InputError, match=r"label changed since `alice prepare`.*mtime"):
        read_source_label(meta, out_dir / "img0002.json")
    del meta["identity"]
    with pytest.raises(InputError, match="does not identify its source label .* rerun `alice prepare`"):
        read_source_label(meta, out_dir / "img0002.json")
    with pytest.raises(InputError, match="rerun `alice prepare`"):
        source_identity(meta)


def test_an_older_cache_gains_fingerprints_without_recomputing(btcv_root, out_dir, fx):
    _prepare(btcv_root, out_dir, fx)
    meta_path = out_dir / "img0002.json"
    meta = json.loads(meta_path.read_text())
    for record in meta["identity"]["source"].values():
        for key in ("sha256", "shape", "affine"):
            (record or {}).pop(key, None)
    meta_path.write_text(json.dumps(meta))
    arrays = {p.name: p.stat().st_mtime_ns for p in out_dir.glob("*.npy")}
    _prepare(btcv_root, out_dir, fx)
    assert {p.name: p.stat().st_mtime_ns for p in out_dir.glob("*.npy")} == arrays
    labels, _, _ = read_source_label(load_case(out_dir, "img0002")[2], meta_path)
    assert np.array_equal(labels, fx.organ_labels())


# ------------------------------------------------------- a header that cannot be true is refused
def _refused_in_header_pass(root, out_dir, fx, rel, *words):
    with pytest.raises(InputError) as err:
        _prepare(root, out_dir, fx)
    msg = str(err.value)
    assert msg.startswith(str(root / rel) + ": ") and "\n" not in msg, msg
    for word in words:
        assert word in msg, msg
    assert not out_dir.exists()  # the cheap pass caught it: nothing written
    return msg


def test_a_header_in_metres_is_refused(btcv_root, out_dir, fx):
    affine = fx.ras_affine()
    affine[:3] /= 1000.0
    fx.write_nifti(btcv_root / IMG, fx.ct_volume(), affine)
    _refused_in_header_pass(btcv_root, out_dir, fx, IMG, "voxel sizes (0.0016, 0.0015, 0.0025) mm",
                            "MIN_SPACING_MM 0.1", "MAX_SPACING_MM 20")


def test_voxels_no_scanner_makes_are_refused(btcv_root, out_dir, fx):
    fx.write_nifti(btcv_root / IMG, fx.ct_volume(), fx.ras_affine(spacing=(100.0, 1.5, 2.5)))
    _refused_in_header_pass(btcv_root, out_dir, fx, IMG, "voxel sizes (100, 1.5, 2.5) mm")


def test_a_header_without_orientation_is_refused(btcv_root, out_dir, fx):
    fx.patch_header(btcv_root / IMG, qform_code=0, sform_code=0)
    _refused_in_header_pass(btcv_root, out_dir, fx, IMG, "no orientation (qform_code and sform_code are both 0)")


def _qform(affine, code=1):
    return lambda hdr: hdr.set_qform(affine, code=code)


def test_qform_and_sform_apart_are_refused(btcv_root, out_dir, fx):
    shifted = fx.ras_affine()
    shifted[0, 3] += 50.0
    fx.patch_header(btcv_root / IMG, edit=_qform(shifted))
    _refused_in_header_pass(btcv_root, out_dir, fx, IMG, "qform and sform disagree (50 mm apart",
                            "qform RAS origin (41, -7.5, 4)", "sform RAS origin (-9, -7.5, 4)")


def test_qform_and_sform_turned_apart_are_refused(btcv_root, out_dir, fx):
    turned = fx.ras_affine()[:, [1, 0, 2, 3]]  # axes swapped: a 90 deg turn (and a mirror)
    fx.patch_header(btcv_root / IMG, edit=_qform(turned))
    _refused_in_header_pass(btcv_root, out_dir, fx, IMG, "qform and sform disagree", "turned by up to 90 deg")


def test_agreeing_qform_and_sform_are_accepted(btcv_root, fx):
    fx.patch_header(btcv_root / IMG, edit=_qform(fx.ras_affine()))
    assert nib.load(str(btcv_root / IMG)).header["qform_code"] == 1
    assert read_header(btcv_root / IMG).shape == fx.SHAPE


@pytest.mark.parametrize("fields, words", [
    ({"pixdim": [1.0, 0.0, 1.5, 2.5, 1.0, 1.0, 1.0, 1.0]}, "pixdim[1..3] (0, 1.5, 2.5) must be positive"),
    ({"vox_offset": 0.0}, "vox_offset 0 lies inside the header"),
    ({"sform_code": 9}, "sform_code 9 is not a NIfTI transform code"),
    ({"magic": b"ni1"}, "magic b'ni1' is not b'n+1'"),
])
def test_headers_violating_the_format_are_refused(btcv_root, out_dir, fx, fields, words):
    fx.patch_header(btcv_root / IMG, **fields)
    _refused_in_header_pass(btcv_root, out_dir, fx, IMG, "header violates the NIfTI format", words)


def test_more_voxels_than_the_file_holds_fail_before_allocation(btcv_root, out_dir, fx):
    path = btcv_root / IMG
    fx.write_nifti(path, np.zeros(fx.SHAPE, np.int16))
    fx.patch_header(path, dim=[3, 1400, 1400, 900, 1, 1, 1, 1])
    assert path.stat().st_size < 1000
    start = time.perf_counter()
    msg = _refused_in_header_pass(btcv_root, out_dir, fx, IMG, "header declares 1400x1400x900 voxels of 2 byte(s)",
                                  "decompress to at most")
    assert time.perf_counter() - start < 1.0, msg


def test_a_gzip_trailer_that_does_not_tell_is_checked_by_streaming(tmp_path, fx):
    """Two gzip members: the trailer counts only the last; the stream decides, without a copy."""
    path = fx.write_nifti(tmp_path / "img.nii.gz", fx.ct_volume())
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[:1000]) + gzip.compress(raw[1000:]))
    assert read_header(path).shape == fx.SHAPE and read_image(path)[0].shape == fx.SHAPE
    path.write_bytes(gzip.compress(raw[:1000]) + gzip.compress(raw[1000:1500]))
    with pytest.raises(InputError, match="gzip stream holds only 1,500 bytes"):
        read_header(path)


def test_rgb_voxels_are_one_line(btcv_root, out_dir, fx):
    rgb = np.zeros(fx.SHAPE, dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    fx.write_nifti(btcv_root / IMG, rgb)
    _refused_in_header_pass(btcv_root, out_dir, fx, IMG, "voxel data type RGB is not a scalar number")


@pytest.mark.parametrize("spacing", [[0.05, 0.05, 0.05], [1.5, 1.5, 100.0]])
def test_a_configured_spacing_no_scanner_makes_is_a_config_error(btcv_root, out_dir, fx, spacing):
    with pytest.raises(ConfigError, match=r"config key 'spacing': .*\(MIN_SPACING_MM 0.1 to MAX_SPACING_MM 20 mm per axis\)"):
        _prepare(btcv_root, out_dir, fx, spacing=spacing)
    assert not out_dir.exists()


def test_a_resampled_grid_above_the_limit_is_refused_before_any_write(btcv_root, out_dir, fx, monkeypatch):
    monkeypatch.setattr(preprocess, "MAX_CACHED_VOXELS", 10_000)
    with pytest.raises(ConfigError) as err:
        _prepare(btcv_root, out_dir, fx, spacing=[0.5, 0.5, 0.5])
    msg = str(err.value)
    assert msg.startswith("config key 'spacing': [0.5, 0.5, 0.5] mm would resample case img0001 "), msg
    assert "MAX_CACHED_VOXELS = 10,000" in msg and "\n" not in msg
    assert not out_dir.exists()


def test_the_size_bound_predicts_the_resampled_grid(tmp_path, out_dir, fx):
    root = fx.make_btcv(tmp_path / "BTCV", train=(1,), test=())
    fx.write_nifti(root / "RawData/Training/img/img0001.nii.gz", *_lps(fx.ct_volume(), fx.ras_affine()))
    fx.write_nifti(root / "RawData/Training/label/label0001.nii.gz", *_lps(fx.organ_labels(), fx.ras_affine()))
    spacing = [2.0, 1.0, 3.0]
    _prepare(root, out_dir, fx, spacing=spacing)
    predicted = cached_shape(read_header(root / "RawData/Training/img/img0001.nii.gz"), spacing)
    actual = load_case(out_dir, "img0001")[2]["cached"]["shape"]
    assert all(abs(p - a) <= 1 for p, a in zip(predicted, actual)), (predicted, actual)


# --------------------------------------------------- no input is silently ignored or silently empty
def test_files_the_layout_skips_are_named(btcv_root, out_dir, fx, caplog):
    img = btcv_root / "RawData/Training/img"
    (img / "old").mkdir()
    with caplog.at_level("WARNING", logger="alice"):
        manifest = _prepare(btcv_root, out_dir, fx)
    skipped = manifest["warnings"]["release"]
    for entry, why in ((".DS_Store", "a hidden file"), ("README.txt", "not a NIfTI file"), ("old", "a folder")):
        line = f"{img / entry}: not read ({why}"
        assert any(w.startswith(line) for w in skipped), skipped
        assert line in caplog.text
    assert len(skipped) == 3


def test_the_layouts_own_subfolders_are_not_reported(flare22_root, out_dir, fx):
    manifest = prepare("flare22", flare22_root, out_dir, fx.seg_settings(offline_test=[1]), progress=False)
    skipped = manifest["warnings"]["release"]
    assert not [w for w in skipped if "Validation/labels:" in w], skipped
    assert [w for w in skipped if "FLARE22_LabeledCase50/images/README.txt: not read" in w], skipped


def test_an_all_background_label_is_refused(btcv_root, out_dir, fx):
    fx.write_nifti(btcv_root / LAB, np.zeros(fx.SHAPE, np.uint8))
    with pytest.raises(InputError) as err:
        _prepare(btcv_root, out_dir, fx)
    assert str(err.value) == f"{btcv_root / LAB}: label holds no organ (all background)"
    fx.assert_failed_cleanly(out_dir, "img0002")


def test_an_organ_lost_by_resampling_is_flagged(btcv_root, out_dir, fx, caplog):
    label = fx.organ_labels()
    label[6, 8, 3] = 5  # one voxel of esophagus: smaller than a 4 mm cached voxel
    fx.write_nifti(btcv_root / LAB, label)
    with caplog.at_level("WARNING", logger="alice"):
        manifest = _prepare(btcv_root, out_dir, fx, spacing=[4.0, 4.0, 4.0])
    (warning,) = manifest["warnings"]["img0002"]
    assert warning.startswith("organ(s) 5 (esophagus) of the source label vanish on the cached grid"), warning
    assert load_case(out_dir, "img0002")[2]["warnings"] == [warning]
    assert warning in caplog.text
    assert "img0001" not in manifest["warnings"]  # its organs all survive
    assert 5 not in np.unique(load_case(out_dir, "img0002")[1])


# ------------------------------------------------------------------- a prepared folder is one unit
def test_prepare_refuses_a_folder_it_did_not_fill(btcv_root, out_dir, fx):
    out_dir.mkdir()
    (out_dir / "notes.txt").write_text("mine")
    with pytest.raises(InputError) as err:
        _prepare(btcv_root, out_dir, fx)
    assert str(err.value).startswith(f"{out_dir}: output folder is not empty (1 file(s), e.g. notes.txt)")
    assert [p.name for p in out_dir.iterdir()] == ["notes.txt"]


def test_prepare_refuses_foreign_files_beside_its_own_cache(btcv_root, flare22_root, out_dir, fx):
    _prepare(btcv_root, out_dir, fx)
    manifest = (out_dir / "manifest.json").read_bytes()
    (out_dir / "notes.json").write_text("{}")
    with pytest.raises(InputError, match="output folder holds notes.json besides a prepared btcv cache"):
        _prepare(btcv_root, out_dir, fx)
    (out_dir / "notes.json").unlink()
    (out_dir / "sub").mkdir()
    (out_dir / "sub" / "img0001_image.npy").write_bytes(b"x")
    with pytest.raises(InputError, match="holds sub/img0001_image.npy besides"):
        _prepare(btcv_root, out_dir, fx)
    (out_dir / "sub" / "img0001_image.npy").unlink()
    with pytest.raises(InputError, match="holds a prepared btcv cache, not flare22"):
        prepare("flare22", flare22_root, out_dir, fx.seg_settings(), progress=False)
    assert (out_dir / "manifest.json").read_bytes() == manifest


def test_prepare_reruns_into_its_own_folder(btcv_root, out_dir, fx):
    """Its marker, the folds.json beside it, and a cache written before markers existed (by its
    manifest, or by a case record once Snakemake removed the manifest before a rerun)."""
    _prepare(btcv_root, out_dir, fx)
    assert json.loads((out_dir / MARKER).read_text()) == {"writer": "alice prepare", "dataset": "btcv"}
    (out_dir / "folds.json").write_text("{}")
    _prepare(btcv_root, out_dir, fx)
    (out_dir / MARKER).unlink()
    _prepare(btcv_root, out_dir, fx)
    (out_dir / MARKER).unlink()
    (out_dir / "manifest.json").unlink()
    _prepare(btcv_root, out_dir, fx)
    assert (out_dir / MARKER).is_file() and (out_dir / "folds.json").is_file()


def test_a_mistyped_root_keeps_the_manifest(btcv_root, out_dir, fx, tmp_path, capsys):
    from alice.cli import main

    _prepare(btcv_root, out_dir, fx)
    manifest = (out_dir / "manifest.json").read_bytes()
    code = main(["prepare", "--dataset", "btcv", "--root", str(tmp_path / "BTVC"), "--out", str(out_dir),
                 "--settings", json.dumps(fx.seg_settings()), "--no-progress"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and err == [f"alice prepare: error: {tmp_path / 'BTVC'}: btcv dataset root folder does not exist"]
    assert (out_dir / "manifest.json").read_bytes() == manifest


def test_prepare_into_a_foreign_folder_is_one_line(btcv_root, tmp_path, fx, capsys):
    from alice.cli import main

    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("")
    code = main(["prepare", "--dataset", "btcv", "--root", str(btcv_root), "--out", str(out),
                 "--settings", json.dumps(fx.seg_settings()), "--no-progress"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1 and err[0].startswith(f"alice prepare: error: {out}: output folder is not empty")
    assert [p.name for p in out.iterdir()] == ["thesis.tex"]


def test_cases_the_release_no_longer_holds_leave_the_cache(btcv_root, out_dir, fx):
    _prepare(btcv_root, out_dir, fx)
    (btcv_root / "RawData/Training/img/img0021.nii.gz").unlink()
    (btcv_root / "RawData/Training/label/label0021.nii.gz").unlink()
    manifest = _prepare(btcv_root, out_dir, fx)
    assert manifest["n_cases"] == 4 and not list(out_dir.glob("img0021*"))
