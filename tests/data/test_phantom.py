"""The synthetic CT phantom generator: layouts, headers, labels, landmarks, anatomy, GGO bands,
determinism (byte-identical files) and argument errors. Tiny volumes (40 voxels in-plane)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from alice.data.phantom import DEFAULT_GEOMETRY, TRUTH_DIR, write_dataset
from alice.data.phantom.layouts import plan_jobs
from alice.data.phantom.outdir import MARKER
from alice.data.phantom.pathology import GGO_BANDS
from alice.data.phantom.scanner import ORIENTATIONS, make_grid
from alice.data.phantom.warp import SubjectWarp
from alice.errors import HarnessError

GEO = {"inplane_voxels": 40, "fov_mm": [380.0, 440.0], "slice_mm": [6.0, 8.0], "truncate_prob": 0.0}
FLARE_COUNTS = {"labeled": 2, "unlabeled": 3, "validation": 1}
BTCV_COUNTS = {"labeled": 2, "test": 1}
MOSMED_COUNTS = {"per_category": [1, 2, 1, 1, 1], "masks": 1}
FLARE_IDS = set(range(14))


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    base = tmp_path_factory.mktemp("phantom")
    summaries = {
        "flare22": write_dataset("flare22", base / "FLARE22", FLARE_COUNTS, seed=3, geometry=GEO, workers=1),
        "btcv": write_dataset("btcv", base / "BTCV", BTCV_COUNTS, seed=3, geometry=GEO, workers=1),
        "mosmed": write_dataset("mosmed", base / "COVID19_1110", MOSMED_COUNTS, seed=3, geometry=GEO, workers=2),
    }
    return {"base": base, "summaries": summaries, "flare22": base / "FLARE22", "btcv": base / "BTCV", "mosmed": base / "COVID19_1110"}


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def _truths(root: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((root / TRUTH_DIR).glob("*.json"))]


def _load(path: Path):
    img = nib.load(str(path))
    return img, np.asarray(img.dataobj)


# ---- layouts ---------------------------------------------------------------------------------
def test_flare22_layout(roots):
    lab = "Training/FLARE22_LabeledCase50"
    cases = ["FLARE22_Tr_0001", "FLARE22_Tr_0002", "Case_00001", "Case_00002", "Case_01001", "FLARETs_0001"]
    assert _files(roots["flare22"]) == sorted(
        [
            f"{lab}/images/FLARE22_Tr_0001_0000.nii.gz",
            f"{lab}/images/FLARE22_Tr_0002_0000.nii.gz",
            f"{lab}/labels/FLARE22_Tr_0001.nii.gz",
            f"{lab}/labels/FLARE22_Tr_0002.nii.gz",
            "Training/FLARE22_UnlabeledCase1-1000/Case_00001_0000.nii.gz",
            "Training/FLARE22_UnlabeledCase1-1000/Case_00002_0000.nii.gz",
            "Training/FLARE22_UnlabeledCase1001-2000/Case_01001_0000.nii.gz",
            "Validation/FLARETs_0001_0000.nii.gz",
            "Validation/labels/FLARETs_0001.nii.gz",
        ]
        + [f"{TRUTH_DIR}/{c}.json" for c in cases]
        + [MARKER]
    )
    summary = roots["summaries"]["flare22"]
    assert summary["case_ids"] == cases and summary["counts"] == FLARE_COUNTS and summary["seconds"] >= 0


def test_btcv_layout(roots):
    assert _files(roots["btcv"]) == sorted(
        [
            "RawData/Training/img/img0001.nii.gz",
            "RawData/Training/img/img0002.nii.gz",
            "RawData/Training/label/label0001.nii.gz",
            "RawData/Training/label/label0002.nii.gz",
            "RawData/Testing/img/img0061.nii.gz",
        ]
        + [f"{TRUTH_DIR}/{c}.json" for c in ("img0001", "img0002", "img0061")]
        + [MARKER]
    )


def test_mosmed_layout(roots):
    studies = [f"studies/CT-{c}/study_{n:04d}.nii.gz" for c, n in ((0, 1), (1, 2), (1, 3), (2, 4), (3, 5), (4, 6))]
    truths = [f"{TRUTH_DIR}/study_{n:04d}.json" for n in range(1, 7)]
    assert _files(roots["mosmed"]) == sorted(studies + ["masks/study_0002_mask.nii.gz"] + truths + [MARKER])


def test_btcv_ids_follow_the_official_lists():
    jobs = plan_jobs("btcv", {"labeled": 12, "test": 3}, 0)
    assert [j.case_id for j in jobs] == [f"img{i:04d}" for i in [*range(1, 11), 21, 22, 61, 62, 63]]
    assert jobs[11].label == "RawData/Training/label/label0022.nii.gz"


def test_flare_pool_splits_between_both_folders():
    jobs = plan_jobs("flare22", {"labeled": 0, "unlabeled": 4, "validation": 0}, 0)
    assert [j.image.split("/")[1:] for j in jobs] == [
        ["FLARE22_UnlabeledCase1-1000", "Case_00001_0000.nii.gz"],
        ["FLARE22_UnlabeledCase1-1000", "Case_00002_0000.nii.gz"],
        ["FLARE22_UnlabeledCase1001-2000", "Case_01001_0000.nii.gz"],
        ["FLARE22_UnlabeledCase1001-2000", "Case_01002_0000.nii.gz"],
    ]


# ---- headers and intensities -------------------------------------------------------------------
def test_headers_dtype_and_hu_range(roots):
    for name in ("flare22", "btcv", "mosmed"):
        for truth in _truths(roots[name]):
            img, data = _load(roots[name] / truth["files"]["image"])
            h = img.header
            assert img.get_data_dtype() == np.int16 and data.dtype == np.int16
            with gzip.open(roots[name] / truth["files"]["image"]) as fh:  # the stored header, not
                raw = nib.Nifti1Header.from_fileobj(fh)  # nibabel's scaling-free copy
            assert float(raw["scl_slope"]) == 1.0 and float(raw["scl_inter"]) == 0.0
            assert int(h["qform_code"]) == 1 and int(h["sform_code"]) == 1
            np.testing.assert_allclose(img.get_qform(), img.get_sform(), atol=1e-4)
            np.testing.assert_allclose(img.affine, np.array(truth["affine"]), atol=1e-6)
            zooms = h.get_zooms()
            assert list(data.shape) == truth["shape"]
            assert data.min() >= -1024 and data.max() > 300  # bone
            assert np.percentile(data, 2) < -950  # air around the body
            k = next(i for i, c in enumerate(truth["orientation"]) if c in "SI")  # slice axis
            inplane = [z for i, z in enumerate(zooms) if i != k]
            assert abs(inplane[0] - inplane[1]) < 1e-4 and abs(zooms[k] - inplane[0]) > 0.1  # anisotropic
            assert GEO["slice_mm"][0] - 0.05 <= zooms[k] <= GEO["slice_mm"][1] + 0.05
            body = data[data > -300]
            assert -150 < np.median(body) < 150


def test_orientations_vary_and_match_the_truth(roots):
    codes = set()
    for name in ("flare22", "btcv", "mosmed"):
        for truth in _truths(roots[name]):
            img = nib.load(str(roots[name] / truth["files"]["image"]))
            code = "".join(nib.aff2axcodes(img.affine))
            assert code == truth["orientation"]
            codes.add(code)
    assert codes - {"RAS"}, "every case is RAS"
    assert any(c[0] in "AP" for c, _ in ORIENTATIONS)  # one option permutes the axes


def test_grid_affine_and_voxel_centres_agree():
    for code, _ in ORIENTATIONS:
        g = make_grid(code, (2.0, 2.0, 5.0), (6, 6, 4), (-3.0, 10.0, -400.0))
        idx = np.array(np.meshgrid(*[np.arange(n) for n in g.shape], indexing="ij")).reshape(3, -1)
        world = g.affine[:3, :3] @ idx + g.affine[:3, 3:4]
        grid_xyz = np.array(np.meshgrid(g.xs, g.ys, g.zs, indexing="ij"))  # RAS-ordered world coords
        stored = np.stack([g.to_array_order(grid_xyz[a]) for a in range(3)]).reshape(3, -1)
        np.testing.assert_allclose(world, stored, atol=1e-4)


# ---- labels ------------------------------------------------------------------------------------
def test_labels_are_dataset_ids_and_full_scans_have_all_13(roots):
    for name in ("flare22", "btcv"):
        labeled = [t for t in _truths(roots[name]) if t["files"]["label"]]
        assert labeled
        for truth in labeled:
            img, lab = _load(roots[name] / truth["files"]["label"])
            assert lab.dtype == np.uint8 and set(np.unique(lab).tolist()) <= FLARE_IDS
            assert truth["truncation"] == "none"  # GEO asks for no truncation
            assert sorted(np.unique(lab[lab > 0]).tolist()) == list(range(1, 14)), truth["case_id"]
            np.testing.assert_allclose(img.affine, nib.load(str(roots[name] / truth["files"]["image"])).affine)


def test_truncated_scans_are_shorter(tmp_path):
    geo = {**GEO, "inplane_voxels": 32, "truncate_prob": 1.0}
    write_dataset("flare22", tmp_path, {"labeled": 0, "unlabeled": 2, "validation": 0}, seed=1, geometry=geo, workers=1)
    for truth in _truths(tmp_path):
        lo, hi = truth["z_range_canonical_mm"]
        assert truth["truncation"] in ("top", "bottom") and hi - lo < 250
        assert not all(lm["in_fov"] for lm in truth["landmarks"])


# ---- ground truth: landmarks, anatomy ----------------------------------------------------------
def test_landmarks_world_is_affine_times_voxel(roots):
    canonical: dict[int, list] = {}
    for name in ("flare22", "btcv", "mosmed"):
        for truth in _truths(roots[name]):
            img = nib.load(str(roots[name] / truth["files"]["image"]))
            lms = truth["landmarks"]
            assert 30 <= len(lms) <= 60 and len({lm["id"] for lm in lms}) == len(lms)
            assert truth["landmark_residual_mm"] < 0.1
            vox = np.array([lm["voxel"] for lm in lms]).T
            world = np.array([lm["world"] for lm in lms]).T
            np.testing.assert_allclose(img.affine[:3, :3] @ vox + img.affine[:3, 3:4], world, atol=1e-3)
            shape = np.array(img.shape).reshape(3, 1)
            np.testing.assert_array_equal([lm["in_fov"] for lm in lms], np.all((vox >= -0.5) & (vox <= shape - 0.5), axis=0))
            assert sum(lm["in_fov"] for lm in lms) >= 25
            for lm in lms:  # the same landmark id is the same canonical point in every case
                assert canonical.setdefault(lm["id"], lm["canonical_mm"]) == lm["canonical_mm"]


def test_warp_forward_inverts_backward():
    rng = np.random.default_rng(0)
    from alice.data.phantom.warp import JitterSpec, draw_warp

    warp = draw_warp(rng, np.array([1.1, 0.95, 1.05]), np.array([2.0, -1.0, 4.0]), np.array([5.0, -20.0, -400.0]),
                     (np.array([-100.0, -80, -150]), np.array([100.0, 80, 150])), {"organ": JitterSpec((10, 0, 0))})
    assert isinstance(warp, SubjectWarp)
    frame = rng.uniform(-120, 120, (3, 50))
    world, residual = warp.frame_to_world(frame)
    assert residual < 1e-3
    q = warp.linear_inv @ (world - warp.translation.reshape(3, 1))
    np.testing.assert_allclose(q + warp.displacement(q), frame, atol=1e-3)
    local = warp.jitters["organ"].to_local(warp.jitters["organ"].to_frame(frame).astype(np.float32))
    np.testing.assert_allclose(local, frame, atol=1e-3)


def _centroid_ras(img: nib.Nifti1Image, mask: np.ndarray) -> np.ndarray:
    idx = np.array(np.nonzero(mask), dtype=np.float64)
    return (img.affine[:3, :3] @ idx + img.affine[:3, 3:4]).mean(axis=1)


def test_anatomy_is_right_after_reorienting_to_ras(roots):
    checked = 0
    for name, ids in (("flare22", {"liver": 1, "spleen": 3, "rk": 2, "lk": 13, "stomach": 11, "aorta": 5, "ivc": 6}),
                      ("btcv", {"liver": 6, "spleen": 1, "rk": 2, "lk": 3, "stomach": 7, "aorta": 8, "ivc": 9})):
        for truth in _truths(roots[name]):
            if not truth["files"]["label"]:
                continue
            img = nib.as_closest_canonical(nib.load(str(roots[name] / truth["files"]["image"])))
            lab = nib.as_closest_canonical(nib.load(str(roots[name] / truth["files"]["label"])))
            assert nib.aff2axcodes(img.affine) == ("R", "A", "S")
            data, labels = np.asarray(img.dataobj), np.asarray(lab.dataobj)
            body_c = _centroid_ras(img, data > -300)
            c = {k: _centroid_ras(img, labels == v) for k, v in ids.items()}
            assert c["liver"][0] > body_c[0] + 20 and c["spleen"][0] < body_c[0] - 40  # liver on the patient's right
            assert c["rk"][0] > c["lk"][0] and c["ivc"][0] > c["aorta"][0]
            assert c["stomach"][0] < body_c[0]
            mid = np.zeros_like(data, dtype=bool)
            xs = img.affine[0, 0] * np.arange(data.shape[0]) + img.affine[0, 3]
            mid[np.abs(xs - body_c[0]) < 30] = True
            spine = _centroid_ras(img, (data > 300) & mid)
            assert spine[1] < c["aorta"][1] < c["liver"][1] + 30  # spine posterior to the aorta
            assert spine[1] < body_c[1]
            checked += 1
    assert checked == 5


def test_same_anatomy_for_flare_and_btcv_label_sets(roots):
    # BTCV labels the portal/splenic veins (10); FLARE22 labels the duodenum (12) instead
    _, btcv = _load(roots["btcv"] / "RawData/Training/label/label0001.nii.gz")
    assert (btcv == 10).sum() > 0
    _, flare = _load(roots["flare22"] / "Training/FLARE22_LabeledCase50/labels/FLARE22_Tr_0001.nii.gz")
    assert (flare == 12).sum() > 0


def test_organs_overlap_in_hu_but_not_in_space(roots):
    for truth in _truths(roots["flare22"]):
        if not truth["files"]["label"]:
            continue
        _, data = _load(roots["flare22"] / truth["files"]["image"])
        _, lab = _load(roots["flare22"] / truth["files"]["label"])
        liver, spleen = np.median(data[lab == 1]), np.median(data[lab == 3])
        assert abs(liver - spleen) < 60  # close HU: thresholding alone cannot separate them
        assert np.percentile(data[lab == 1], 90) > np.percentile(data[lab == 3], 10)


def test_lesions_are_recorded(roots):
    lesions = [les for t in _truths(roots["flare22"]) + _truths(roots["btcv"]) for les in t["lesions"]]
    assert lesions
    for les in lesions:
        assert les["organ"] in {"liver", "kidney_r", "kidney_l", "spleen", "pancreas"}
        assert les["kind"] in {"cyst", "hypodense", "hyperdense"} and len(les["center_world_mm"]) == 3


# ---- MosMed GGO --------------------------------------------------------------------------------
def test_ggo_fraction_lies_in_the_category_band(roots):
    seen = set()
    for truth in _truths(roots["mosmed"]):
        cat, f = truth["category"], truth["ggo_fraction"]
        lo, hi = GGO_BANDS[cat]
        if cat == 0:
            assert f == 0.0
        elif cat == 1:
            assert 0.0 < f < 0.25
        elif cat == 4:
            assert 0.75 <= f <= 1.0
        else:
            assert lo <= f < hi
        assert truth["lung_volume_ml"] > 1000
        seen.add(cat)
    assert seen == {0, 1, 2, 3, 4}


def test_mosmed_mask_is_binary_and_matches_truth(roots):
    truth = json.loads((roots["mosmed"] / TRUTH_DIR / "study_0002.json").read_text())
    img, mask = _load(roots["mosmed"] / "masks" / "study_0002_mask.nii.gz")
    assert truth["files"]["mask"] == "masks/study_0002_mask.nii.gz"
    assert mask.dtype == np.uint8 and set(np.unique(mask).tolist()) <= {0, 1} and mask.sum() > 0
    voxel_ml = float(np.prod(img.header.get_zooms())) / 1000
    assert mask.sum() * voxel_ml == pytest.approx(truth["ggo_volume_ml"], abs=0.2)
    _, data = _load(roots["mosmed"] / "studies" / "CT-1" / "study_0002.nii.gz")
    assert -800 < np.median(data[mask > 0]) < -250  # ground glass, not lung and not tissue


# ---- determinism ------------------------------------------------------------------------------
def test_same_seed_gives_identical_bytes(roots, tmp_path):
    # also with another worker count (the fixture wrote MosMed with 2 processes)
    write_dataset("mosmed", tmp_path / "m", MOSMED_COUNTS, seed=3, geometry=GEO, workers=1)
    for rel in _files(roots["mosmed"]):
        assert (tmp_path / "m" / rel).read_bytes() == (roots["mosmed"] / rel).read_bytes(), rel


def test_a_case_does_not_depend_on_the_counts(roots, tmp_path):
    write_dataset("flare22", tmp_path, {"labeled": 1, "unlabeled": 0, "validation": 1}, seed=3, geometry=GEO, workers=1)
    for rel in ("Training/FLARE22_LabeledCase50/images/FLARE22_Tr_0001_0000.nii.gz", "Validation/labels/FLARETs_0001.nii.gz"):
        assert (tmp_path / rel).read_bytes() == (roots["flare22"] / rel).read_bytes()


def test_different_seed_gives_different_cases(roots, tmp_path):
    write_dataset("btcv", tmp_path, {"labeled": 1, "test": 0}, seed=4, geometry=GEO, workers=1)
    _, a = _load(tmp_path / "RawData/Training/img/img0001.nii.gz")
    _, b = _load(roots["btcv"] / "RawData/Training/img/img0001.nii.gz")
    assert a.shape != b.shape or not np.array_equal(a, b)
    ta = json.loads((tmp_path / TRUTH_DIR / "img0001.json").read_text())
    tb = json.loads((roots["btcv"] / TRUTH_DIR / "img0001.json").read_text())
    assert ta["landmarks"][0]["world"] != tb["landmarks"][0]["world"]


# ---- errors ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "dataset, counts, geometry, words",
    [
        ("flare22", FLARE_COUNTS, {"voxels": 32}, ["geometry.voxels", "unknown"]),
        ("flare22", FLARE_COUNTS, {"fov_mm": [400, 300]}, ["geometry.fov_mm"]),
        ("flare22", {"labeled": 1, "unlabeled": 0}, None, ["counts.validation", "missing"]),
        ("btcv", {"labeled": 31, "test": 0}, None, ["counts.labeled", "30"]),
        ("mosmed", {"per_category": [1, 1, 0, 0, 0], "masks": 2}, None, ["counts.masks"]),
        ("mosmed", {"per_category": [1, 1], "masks": 0}, None, ["counts.per_category"]),
        ("kits", {"labeled": 1}, None, ["kits"]),
    ],
)
def test_bad_arguments_fail_clearly_and_write_nothing(tmp_path, dataset, counts, geometry, words):
    with pytest.raises(HarnessError) as err:
        write_dataset(dataset, tmp_path / "out", counts, geometry=geometry)
    for w in words:
        assert w in str(err.value)
    assert not (tmp_path / "out").exists()


def test_default_geometry_is_the_demo():
    assert DEFAULT_GEOMETRY["inplane_voxels"] == 96
    assert set(DEFAULT_GEOMETRY) == {"inplane_voxels", "fov_mm", "slice_mm", "truncate_prob"}


# ---- the output folder ---------------------------------------------------------------------------
SMALL = {**GEO, "inplane_voxels": 24}


def test_refuses_a_folder_holding_other_files(tmp_path):
    """A real release in the output folder is neither overwritten nor added to."""
    root = tmp_path / "FLARE22"
    real = root / "Training/FLARE22_LabeledCase50/images/FLARE22_Tr_0001_0000.nii.gz"
    real.parent.mkdir(parents=True)
    real.write_bytes(b"a real scan")
    (root / "README.txt").write_text("release notes")
    before = _files(root)
    with pytest.raises(HarnessError) as err:
        write_dataset("flare22", root, {"labeled": 1, "unlabeled": 1, "validation": 0}, seed=0, geometry=SMALL, workers=1)
    message = str(err.value)
    assert str(root) in message and "\n" not in message
    assert "empty" in message and "another folder" in message
    assert _files(root) == before and real.read_bytes() == b"a real scan"


def test_rewrites_its_own_earlier_output_only(tmp_path):
    """A phantom folder may be rewritten (cases of the earlier run do not linger); once it holds
    anything else it is refused."""
    root = tmp_path / "pool"
    write_dataset("flare22", root, {"labeled": 0, "unlabeled": 3, "validation": 0}, seed=1, geometry=SMALL, workers=1)
    assert MARKER in _files(root)
    killed = root / "Training/FLARE22_UnlabeledCase1-1000/.Case_00002_0000.nii.gz.ab12cd34.tmp.nii.gz"
    killed.write_bytes(b"partial")  # a temporary of an interrupted write is the phantom's own too
    (root / ".snakemake_timestamp").touch()  # as is the stamp of the `phantom` rule's output
    write_dataset("flare22", root, {"labeled": 0, "unlabeled": 1, "validation": 0}, seed=2, geometry=SMALL, workers=1)
    assert _files(root) == sorted(
        [MARKER, ".snakemake_timestamp", "Training/FLARE22_UnlabeledCase1-1000/Case_00001_0000.nii.gz",
         f"{TRUTH_DIR}/Case_00001.json"]
    )
    marker = json.loads((root / MARKER).read_text())
    assert marker["dataset"] == "flare22" and marker["seed"] == 2 and marker["geometry"]["inplane_voxels"] == 24
    (root / "Training" / "notes.txt").write_text("mine")
    with pytest.raises(HarnessError, match="notes.txt"):
        write_dataset("flare22", root, {"labeled": 0, "unlabeled": 1, "validation": 0}, seed=2, geometry=SMALL, workers=1)
    assert (root / "Training" / "notes.txt").read_text() == "mine"
