"""nnU-Net v2 rows (alice.downstream.nnunet): the export into nnU-Net's raw layout, the settings'
checks, the plan overrides, and one tiny end-to-end run through nnU-Net's own planner,
preprocessor, trainer and predictor, scored like `alice evaluate`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from alice.data.preprocess import invert_to_original
from alice.downstream import nnunet
from alice.errors import ConfigError, InputError
from alice.labels import LABEL_NAMES


# fold 0 of the tiny dataset (4 training cases in 2 folds, 2 test cases: tests/downstream/conftest.py)
TINY = {"epochs": 1, "iterations_per_epoch": 2, "val_iterations": 1, "base_features": 4,
        "da_processes": 0, "train_mirroring": False, "test_mirroring": False, "tile_step_size": 1.0, "seed": 0}


def _folds(data: Path) -> dict:
    return json.loads((data / "folds.json").read_text())


# ---------------------------------------------------------------------------------------- export
def test_export_writes_nnunets_raw_layout(tiny_data, tmp_path, dx):
    train = _folds(tiny_data)["folds"][0]["train"]
    raw = tmp_path / "Dataset901_flare22fold0"
    info = nnunet.export_raw("flare22", tiny_data, train, raw)

    assert sorted(p.name for p in (raw / "imagesTr").iterdir()) == [f"{c}_0000.nii.gz" for c in sorted(train)]
    assert sorted(p.name for p in (raw / "labelsTr").iterdir()) == [f"{c}.nii.gz" for c in sorted(train)]
    on_disk = json.loads((raw / "dataset.json").read_text())
    assert on_disk == info
    assert info["channel_names"] == {"0": "CT"}
    assert info["file_ending"] == ".nii.gz"
    assert info["numTraining"] == len(train)
    organs = LABEL_NAMES["flare22"]
    assert info["labels"] == {"background": 0, **{organs[i]: i for i in sorted(organs)}}
    assert list(info["labels"].values()) == list(range(14))  # nnU-Net wants consecutive ids

    for case_id in train:
        meta = json.loads((tiny_data / f"{case_id}.json").read_text())
        src_image = nib.load(meta["source"]["image"])
        src_label = np.asarray(nib.load(meta["source"]["label"]).dataobj)
        image = nib.load(raw / "imagesTr" / f"{case_id}_0000.nii.gz")
        label = nib.load(raw / "labelsTr" / f"{case_id}.nii.gz")
        # the source stored P-L-S comes out in RAS, same grid for image and label, HU kept as int16
        assert nib.aff2axcodes(image.affine) == ("R", "A", "S")
        assert np.allclose(image.affine, label.affine)
        assert image.get_data_dtype() == np.int16 and label.get_data_dtype() == np.uint8
        assert np.allclose(image.header.get_zooms(), dx.ras_spacing())
        # nothing resampled: mapped back through world coordinates, both are the source voxels
        grid = {"cached": {"shape": list(image.shape), "affine": image.affine.tolist()}, "original": meta["original"]}
        back_label = invert_to_original(np.asarray(label.dataobj), grid)
        back_image = invert_to_original(np.asarray(image.dataobj), grid)
        assert np.array_equal(back_label, src_label)
        assert np.array_equal(back_image, np.asarray(src_image.dataobj))
        assert set(np.unique(back_label)) <= set(range(14)) and back_label.max() > 0


def test_export_refuses_a_changed_source_image(tiny_data, tmp_path):
    """The exported image must be the file `alice prepare` read (its recorded sha256)."""
    data = tmp_path / "cache"
    shutil.copytree(tiny_data, data)
    case_id = _folds(data)["folds"][0]["train"][0]
    meta = json.loads((data / f"{case_id}.json").read_text())
    src = Path(meta["source"]["image"])
    changed = tmp_path / "changed_0000.nii.gz"
    img = nib.load(src)
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj) + 1, img.affine, img.header), str(changed))
    meta["source"]["image"] = str(changed)
    meta["identity"]["source"]["image"]["path"] = str(changed)
    meta["identity"]["source"]["image"]["size"] = changed.stat().st_size
    meta["identity"]["source"]["image"]["mtime_ns"] = changed.stat().st_mtime_ns
    (data / f"{case_id}.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match="changed since"):
        nnunet.export_raw("flare22", data, [case_id], tmp_path / "raw")


def test_to_ras_keeps_world_positions(dx):
    _image, array = dx.make_case(0)  # stored P-L-S
    shape = array.shape
    affine = dx.stored_affine()
    ras, ras_affine = nnunet.to_ras(array, affine)
    assert nib.aff2axcodes(ras_affine) == ("R", "A", "S")
    assert ras.shape == (shape[1], shape[0], shape[2])
    assert np.allclose(np.linalg.norm(ras_affine[:3, :3], axis=0), dx.ras_spacing())
    for index in [(0, 0, 0), (3, 7, 5), (shape[0] - 1, 2, shape[2] - 1), (5, 5, 3)]:
        world = affine @ [*index, 1]
        ras_index = np.rint(np.linalg.inv(ras_affine) @ world)[:3].astype(int)
        assert array[index] == ras[tuple(ras_index)]


class ThresholdPredictor:
    """Stands in for nnUNetPredictor: labels = HU bands of the (c, z, y, x) array it is given, in
    that array's axes, as nnU-Net returns them; records the spacing it was told."""

    def predict_single_npy_array(self, data, props, seg_prev, out_file, probabilities):
        assert data.ndim == 4 and data.shape[0] == 1 and seg_prev is None and out_file is None
        self.spacing = props["spacing"]
        return np.digitize(data[0], [0.0, 100.0, 200.0]).astype(np.uint8)


def test_predictions_come_back_on_the_source_grid(tiny_data, dx):
    """Whatever nnU-Net predicts on the RAS export lands on the source voxel it was predicted for."""
    case_id = _folds(tiny_data)["test"][0]
    meta = json.loads((tiny_data / f"{case_id}.json").read_text())
    image, affine = nnunet.source_image(meta, tiny_data / f"{case_id}.json")
    predictor = ThresholdPredictor()
    pred = nnunet.predict_case(predictor, image, affine, meta)
    assert pred.shape == image.shape
    assert np.array_equal(pred, np.digitize(image, [0.0, 100.0, 200.0]))
    assert np.allclose(predictor.spacing, dx.ras_spacing()[::-1])  # nnU-Net's (z, y, x) order
    assert len(np.unique(pred)) == 4


# -------------------------------------------------------------------------------------- settings
def test_settings_defaults_are_nnunets():
    checked = nnunet.check_settings({})
    assert checked["trainer"] is None and checked["seed"] == 0
    assert all(checked[k] is None for k in nnunet.TRAINING_KEYS)
    assert checked["tile_step_size"] == 0.5 and checked["test_mirroring"] is True and checked["da_processes"] is None
    assert nnunet.training_value(checked, "epochs") == 1000
    assert nnunet.training_value(checked, "iterations_per_epoch") == 250
    assert nnunet.training_value(checked, "val_iterations") == 50
    assert nnunet.training_value(checked, "train_mirroring") is True
    assert nnunet.check_settings({"trainer": "default", "seed": 3})["seed"] == 3
    demo = nnunet.check_settings({"epochs": 2, "patch_size": [32, 32, 32], "target_spacing": [6, 6, 6.5]})
    assert demo["epochs"] == 2 and demo["patch_size"] == [32, 32, 32] and demo["target_spacing"] == [6.0, 6.0, 6.5]


@pytest.mark.parametrize("settings, key", [
    ({"epoch": 2}, "finetune.nnunet.epoch"),
    ({"epochs": 0}, "finetune.nnunet.epochs"),
    ({"epochs": True}, "finetune.nnunet.epochs"),
    ({"iterations_per_epoch": "10"}, "finetune.nnunet.iterations_per_epoch"),
    ({"val_iterations": 0}, "finetune.nnunet.val_iterations"),
    ({"batch_size": 1.5}, "finetune.nnunet.batch_size"),
    ({"patch_size": [32, 32]}, "finetune.nnunet.patch_size"),
    ({"patch_size": [32, 32, 2]}, "finetune.nnunet.patch_size"),
    ({"patch_size": [32, 32, 31.5]}, "finetune.nnunet.patch_size"),
    ({"target_spacing": [6, 6, -1]}, "finetune.nnunet.target_spacing"),
    ({"target_spacing": "6"}, "finetune.nnunet.target_spacing"),
    ({"initial_lr": 0}, "finetune.nnunet.initial_lr"),
    ({"tile_step_size": 0}, "finetune.nnunet.tile_step_size"),
    ({"tile_step_size": 1.5}, "finetune.nnunet.tile_step_size"),
    ({"mirroring": False}, "finetune.nnunet.mirroring"),
    ({"test_mirroring": "yes"}, "finetune.nnunet.test_mirroring"),
    ({"train_mirroring": 0}, "finetune.nnunet.train_mirroring"),
    ({"trainer": "default", "train_mirroring": False}, "finetune.nnunet.train_mirroring"),
    ({"da_processes": -1}, "finetune.nnunet.da_processes"),
    ({"seed": -1}, "finetune.nnunet.seed"),
    ({"trainer": "nnUNetTrainer"}, "finetune.nnunet.trainer"),
    ({"trainer": "default", "epochs": 2}, "finetune.nnunet.epochs"),
])
def test_bad_settings_name_their_key(settings, key):
    with pytest.raises(ConfigError) as info:
        nnunet.check_settings(settings)
    assert info.value.key == key


def test_bad_settings_fail_before_any_write(tiny_data, tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    with pytest.raises(ConfigError, match="epochs"):
        nnunet.run_nnunet(dataset="flare22", fold=0, data_dir=tiny_data, out_dir=out, work_dir=work,
                          settings={"epochs": 0})
    assert not out.exists() and not work.exists()


# ---------------------------------------------------------------------------------- input errors
def test_missing_inputs_are_input_errors(tiny_data, tmp_path):
    run = dict(dataset="flare22", fold=0, out_dir=tmp_path / "out", work_dir=tmp_path / "work", settings=TINY)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="manifest.json"):
        nnunet.run_nnunet(data_dir=empty, **run)
    no_folds = tmp_path / "no_folds"
    shutil.copytree(tiny_data, no_folds)
    (no_folds / "folds.json").unlink()
    with pytest.raises(InputError, match="folds.json"):
        nnunet.run_nnunet(data_dir=no_folds, **run)
    with pytest.raises(InputError, match="no fold 7"):
        nnunet.run_nnunet(data_dir=tiny_data, **{**run, "fold": 7})
    no_case = tmp_path / "no_case"
    shutil.copytree(tiny_data, no_case)
    (no_case / f"{_folds(no_case)['test'][0]}.json").unlink()
    with pytest.raises(InputError, match="not in the prepared cache"):
        nnunet.run_nnunet(data_dir=no_case, **run)
    with pytest.raises(ConfigError, match="--dataset"):
        nnunet.run_nnunet(data_dir=tiny_data, **{**run, "dataset": "mosmed"})
    assert not (tmp_path / "out").exists() and not (tmp_path / "work").exists()


def test_a_foreign_work_folder_is_never_cleared(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    (work / "precious.txt").write_text("mine")
    with pytest.raises(InputError, match="not empty"):
        nnunet.claim_work_dir(work, "flare22", 0)
    assert (work / "precious.txt").read_text() == "mine"
    (work / "precious.txt").unlink()
    nnunet.claim_work_dir(work, "flare22", 0)
    (work / "nnUNet_raw").mkdir()
    nnunet.claim_work_dir(work, "flare22", 0)  # an earlier run's: cleared
    assert sorted(p.name for p in work.iterdir()) == [nnunet.WORK_MARKER]


# ----------------------------------------------------------------------------------------- plans
def _plans(transpose_forward=(0, 1, 2)):
    return {"transpose_forward": list(transpose_forward), "configurations": {"3d_fullres": {
        "batch_size": 2, "patch_size": [80, 96, 96], "spacing": [5.0, 4.0, 4.0],
        "architecture": {"arch_kwargs": {
            "n_stages": 5, "features_per_stage": [32, 64, 128, 256, 320],
            "kernel_sizes": [[3, 3, 3]] * 5, "strides": [[1, 1, 1]] + [[2, 2, 2]] * 4,
            "n_conv_per_stage": [2] * 5, "n_conv_per_stage_decoder": [2] * 4}}}}}


def test_plan_overrides_give_nnunets_topology_for_the_new_patch():
    plans = nnunet.override_plans(_plans(), {"batch_size": 3, "patch_size": [32, 32, 16], "base_features": 16})
    config = plans["configurations"]["3d_fullres"]
    arch = config["architecture"]["arch_kwargs"]
    assert config["batch_size"] == 3
    assert config["patch_size"] == [16, 32, 32]  # [x, y, z] -> nnU-Net's (z, y, x)
    assert arch["n_stages"] == len(arch["strides"]) == len(arch["kernel_sizes"]) == len(arch["features_per_stage"])
    assert arch["features_per_stage"] == [16 * 2 ** i for i in range(arch["n_stages"])]
    assert len(arch["n_conv_per_stage"]) == arch["n_stages"]
    assert len(arch["n_conv_per_stage_decoder"]) == arch["n_stages"] - 1
    total = np.prod(np.asarray(arch["strides"]), axis=0)
    assert all(p % t == 0 for p, t in zip(config["patch_size"], total))  # every pooling divides the patch
    assert min(p // t for p, t in zip(config["patch_size"], total)) >= 4  # nnU-Net's smallest feature map
    # a transposed plan takes the patch in its own axis order
    swapped = nnunet.override_plans(_plans((2, 1, 0)), {"patch_size": [32, 24, 16]})
    assert swapped["configurations"]["3d_fullres"]["patch_size"] == [32, 24, 16]
    # no override: the plan as nnU-Net made it
    assert nnunet.override_plans(_plans(), nnunet.check_settings({})) == _plans()


def test_the_trainer_is_nnunets():
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from alice.downstream.nnunet import nnUNetTrainerDemo

    assert issubclass(nnUNetTrainerDemo, nnUNetTrainer) and nnUNetTrainerDemo.__module__ == "alice.downstream.nnunet"


# ------------------------------------------------------------------------------------ end to end
@pytest.mark.slow
def test_tiny_run_end_to_end_through_the_cli(tiny_data, tmp_path, capsys):
    """plan + preprocess + 2 training steps + prediction of fold 0's test cases, scored like
    `alice evaluate`: the metrics file has evaluate's schema and the scores are the predictions'."""
    from alice.cli import main
    from alice.metrics import mean_over_organs, score_case

    out, work = tmp_path / "finetune/flare22/nnunet/nnunet/fold0", tmp_path / "work"
    rc = main(["nnunet", "--dataset", "flare22", "--fold", "0", "--data", str(tiny_data), "--out", str(out),
               "--work", str(work), "--threads", "1", "--device", "cpu", "--settings", json.dumps(TINY),
               "--no-progress"])
    assert rc == 0, capsys.readouterr().err[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics) == ["dataset", "method", "backbone", "fold", "split", "cases", "case_mean", "mean",
                             "n_cases", "seconds", "model", "model_sha256", "labels", "predictions",
                             "settings_hash", "code_version"]
    folds = _folds(tiny_data)
    assert (metrics["dataset"], metrics["method"], metrics["backbone"], metrics["fold"], metrics["split"]) == \
        ("flare22", "nnunet", "nnunet", 0, "test")
    assert sorted(metrics["cases"]) == sorted(folds["test"]) and metrics["n_cases"] == len(folds["test"])
    assert metrics["settings_hash"] and metrics["code_version"]
    from alice.io import file_sha256

    assert metrics["model"] == str(out / "checkpoint_final.pth")
    assert metrics["model_sha256"] == file_sha256(out / "checkpoint_final.pth")
    for case_id in folds["test"]:
        meta = json.loads((tiny_data / f"{case_id}.json").read_text())
        gt_img = nib.load(meta["source"]["label"])
        pred_img = nib.load(out / "predictions" / f"{case_id}.nii.gz")
        assert pred_img.shape == gt_img.shape and np.allclose(pred_img.affine, gt_img.affine)
        scores = score_case(np.asarray(gt_img.dataobj), np.asarray(pred_img.dataobj), gt_img.header.get_zooms()[:3],
                            "flare22")
        assert metrics["cases"][case_id] == scores
        assert metrics["case_mean"][case_id] == pytest.approx(mean_over_organs(scores))
        assert list(scores) == list(LABEL_NAMES["flare22"].values())
    plans = json.loads((out / "plans.json").read_text())
    assert plans["dataset_name"] == "Dataset901_flare22fold0" and "3d_fullres" in plans["configurations"]
    assert plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]["features_per_stage"][0] == 4
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["steps"] == 2 and summary["init"] == "scratch"
    assert summary["train_cases"] == folds["folds"][0]["train"]
    assert summary["settings_hash"] == metrics["settings_hash"]
    ckpt = nnunet._load_weights(out / "checkpoint_final.pth")
    assert ckpt["trainer_name"] == "nnUNetTrainerDemo" and ckpt["optimizer_state"] is None
    assert (out / "dataset.json").is_file() and (out / "training_log.txt").is_file()
    assert not work.exists()  # removed after the run
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []  # no temporaries left
