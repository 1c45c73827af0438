"""BTCV online submission files: naming, the test image's grid, uint8 ids 0..13, the same prediction
path as `evaluate`, the mean softmax of several models, which models predict, clean failures."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from alice import config as cfg
from alice.cli import main
from alice.data.folds import make_folds, write_folds
from alice.data.phantom import write_dataset
from alice.data.preprocess import invert_to_original, load_case, prepare
from alice.downstream.inference import MODEL_FILE, predict_labels
from alice.downstream.networks import build_segmentation_network
from alice.downstream.submission import (
    mean_probabilities,
    submission_file_name,
    write_label_file,
    write_submission,
)
from alice.errors import ConfigError, InputError
from alice.tables.online import online_models

TEST_IDS = ["img0061", "img0062"]


def save_model(model_dir: Path, dx, *, seed: int, fold: int = 0, dataset: str = "btcv") -> Path:
    """An untrained tiny UNETR in `alice finetune`'s model.pt format (its predictions are
    arbitrary, which is all a format test needs)."""
    torch.manual_seed(seed)
    net = build_segmentation_network("unetr", 14, dx.SETTINGS, dx.ENCODER)
    model_dir.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": net.state_dict(), "backbone": "unetr", "num_classes": 14,
                "settings": copy.deepcopy(dx.SETTINGS), "encoder_config": copy.deepcopy(dx.ENCODER),
                "dataset": dataset, "method": "alice", "init": "scratch", "fold": fold,
                "seed": seed, "code_version": "test"}, model_dir / MODEL_FILE)
    return model_dir


@pytest.fixture(scope="module")
def btcv(tmp_path_factory, dx):
    """BTCV phantoms (4 labeled, 2 test cases, 32² in-plane) prepared at a coarser spacing than
    the originals, with 2 folds, and two tiny models."""
    base = tmp_path_factory.mktemp("btcv_online")
    write_dataset("btcv", base / "release", {"labeled": 4, "test": 2}, seed=0,
                  geometry={"inplane_voxels": 32, "fov_mm": [340, 400], "slice_mm": [8.0, 10.0]},
                  workers=1)
    manifest = prepare("btcv", base / "release", base / "data",
                       {"spacing": [14.0, 14.0, 12.0], "window": [-175, 250]}, progress=False)
    write_folds(base / "data" / "folds.json", make_folds("btcv", manifest, {"folds": 2}, 0))
    models = [save_model(base / f"fold{k}", dx, seed=k, fold=k) for k in (0, 1)]
    return base, models


def test_file_names():
    assert submission_file_name("btcv", "img0061") == "label0061.nii.gz"
    assert submission_file_name("btcv", "img0080") == "label0080.nii.gz"
    for bad in ("img61", "label0061", "FLARETs_0001"):
        with pytest.raises(ValueError, match="not a btcv test case id"):
            submission_file_name("btcv", bad)
    with pytest.raises(ConfigError, match="no online submission format for 'flare22'"):
        submission_file_name("flare22", "FLARETs_0001")


def test_submission_files_on_the_test_images_grid(btcv):
    base, models = btcv
    out = base / "out" / "alice"
    manifest = write_submission(dataset="btcv", model_dirs=[models[0]], data_dir=base / "data",
                                out_dir=out, progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["label0061.nii.gz", "label0062.nii.gz",
                                                     "manifest.json"]
    assert manifest["files"] == {"img0061": "label0061.nii.gz", "img0062": "label0062.nii.gz"}
    net = build_segmentation_network("unetr", 14, _settings(models[0]), _encoder(models[0]))
    net.load_state_dict(torch.load(models[0] / MODEL_FILE, weights_only=True)["state_dict"])
    for case_id, name in manifest["files"].items():
        image = nib.load(str(base / "release" / "RawData" / "Testing" / "img" / f"{case_id}.nii.gz"))
        pred = nib.load(str(out / name))
        assert pred.shape == image.shape
        np.testing.assert_allclose(pred.affine, image.affine, atol=1e-5)
        assert nib.aff2axcodes(pred.affine) == nib.aff2axcodes(image.affine)
        assert pred.header.get_sform(coded=True)[1] == image.header.get_sform(coded=True)[1]
        assert pred.header.get_qform(coded=True)[1] == image.header.get_qform(coded=True)[1]
        assert pred.get_data_dtype() == np.uint8
        data = np.asanyarray(pred.dataobj)
        assert data.dtype == np.uint8 and set(np.unique(data).tolist()) <= set(range(14))
        # the same prediction path as `evaluate` (argmax on the cached grid, nearest back)
        cached, _, meta = load_case(base / "data", case_id)
        expected = invert_to_original(predict_labels(net, cached, [16, 16, 16], overlap=0.25,
                                                     sw_batch_size=2), meta)
        assert np.array_equal(data, expected)
    assert manifest["ensemble"] == "single model"
    assert list(manifest["labels"]) == [str(i) for i in range(14)]
    assert manifest["labels"]["1"] == "spleen" and manifest["labels"]["13"] == "left_adrenal_gland"
    assert [m["fold"] for m in manifest["models"]] == [0]
    assert len(manifest["models"][0]["sha256"]) == 64 and manifest["config_hash"]
    assert manifest["code_version"] and "could not be retrieved" in manifest["format"]["source"]
    assert json.loads((out / "manifest.json").read_text()) == manifest


def _settings(model_dir):
    return torch.load(model_dir / MODEL_FILE, weights_only=True)["settings"]


def _encoder(model_dir):
    return torch.load(model_dir / MODEL_FILE, weights_only=True)["encoder_config"]


def test_round_trip_of_a_known_label_map(tmp_path, dx):
    """A BTCV-layout case stored P-L-S (not RAS), cached at its own voxel size: its cached label,
    written as a submission file, is the original label file voxel for voxel, on its grid."""
    affine = dx.stored_affine()
    release = tmp_path / "BTCV" / "RawData"
    for i in (1, 2):
        image, label = dx.make_case(i)
        for folder, name, data in (("img", f"img{i:04d}", image), ("label", f"label{i:04d}", label)):
            (release / "Training" / folder).mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(data, affine), str(release / "Training" / folder / f"{name}.nii.gz"))
    prepare("btcv", tmp_path / "BTCV", tmp_path / "cache",
            {"spacing": dx.ras_spacing(), "window": [-175, 250]}, progress=False)
    _image, label, meta = load_case(tmp_path / "cache", "img0001")
    assert meta["original"]["axcodes"] == ["P", "L", "S"]
    assert tuple(meta["cached"]["shape"]) != tuple(meta["original"]["shape"])  # permuted axes
    out = tmp_path / "label0001.nii.gz"
    write_label_file(out, invert_to_original(np.asarray(label), meta), meta["source"]["image"])
    original = nib.load(str(release / "Training" / "label" / "label0001.nii.gz"))
    written = nib.load(str(out))
    assert np.array_equal(np.asanyarray(written.dataobj), np.asanyarray(original.dataobj))
    np.testing.assert_allclose(written.affine, original.affine)
    with pytest.raises(InputError, match="does not hold a label map"):
        write_label_file(tmp_path / "bad.nii.gz", np.zeros((3, 3, 3), np.uint8), meta["source"]["image"])


def test_mean_softmax_of_several_models(btcv):
    base, models = btcv
    nets = []
    for model_dir in models:
        ckpt = torch.load(model_dir / MODEL_FILE, weights_only=True)
        net = build_segmentation_network("unetr", 14, ckpt["settings"], ckpt["encoder_config"])
        net.load_state_dict(ckpt["state_dict"])
        nets.append((net.eval(), ckpt["settings"]))
    image, _, _ = load_case(base / "data", "img0061")
    one, two = (mean_probabilities([n], image, torch.device("cpu")) for n in nets)
    both = mean_probabilities(nets, image, torch.device("cpu"))
    torch.testing.assert_close(both, (one + two) / 2)
    torch.testing.assert_close(both.sum(dim=0), torch.ones_like(both[0]))
    assert not torch.equal(one, two)
    manifest = write_submission(dataset="btcv", model_dirs=models, data_dir=base / "data",
                                out_dir=base / "ens", progress=False)
    assert manifest["ensemble"] == "mean softmax of 2 models"
    assert [m["fold"] for m in manifest["models"]] == [0, 1]
    data = np.asanyarray(nib.load(str(base / "ens" / "label0061.nii.gz")).dataobj)
    _, _, meta = load_case(base / "data", "img0061")
    expected = invert_to_original(both.argmax(dim=0).to(torch.uint8).numpy(), meta)
    assert np.array_equal(data, expected)


def test_which_models_predict_follows_table3_and_the_config():
    config = cfg.load_config()
    assert config["online_test"]["models"] == "fold0"
    assert config["reproduce"]["substitute"]["backbone"] is None  # Table 3's own backbone: nnFormer
    assert online_models(config, "alice") == ["results/finetune/btcv/alice/nnformer/fold0/model.pt"]
    assert online_models(config, "rand_init") == [
        "results/finetune/btcv/rand_init/nnformer/fold0/model.pt"]
    config["online_test"]["models"] = "all_folds"
    assert online_models(config, "alice") == [
        f"results/finetune/btcv/alice/nnformer/fold{k}/model.pt" for k in range(5)]
    # a baseline row runs fold 0 at the demo (fold policy), on Alice's network (harness_backbone)
    assert online_models(config, "mae") == ["results/finetune/btcv/mae/nnformer/fold0/model.pt"]
    config["reproduce"]["substitute"]["backbone"] = "unetr"  # a substituted backbone is followed
    assert online_models(config, "alice") == [
        f"results/finetune/btcv/alice/unetr/fold{k}/model.pt" for k in range(5)]
    config["reproduce"]["methods"] = [m for m in config["reproduce"]["methods"] if m != "pcrlv2"]
    with pytest.raises(ConfigError, match="offline cell of 'pcrlv2' is not reproduced"):
        online_models(config, "pcrlv2")  # a CNN baseline taken out of reproduce.methods
    with pytest.raises(ConfigError, match="'nosuch' is not a row of Table 3"):
        online_models(config, "nosuch")


def test_bad_inputs_leave_nothing_half_written(btcv, tmp_path, dx):
    base, models = btcv
    flare_model = save_model(tmp_path / "flare", dx, seed=0, dataset="flare22")
    out = tmp_path / "out"
    with pytest.raises(InputError, match="fine-tuned on 'flare22', not 'btcv'"):
        write_submission(dataset="btcv", model_dirs=[flare_model], data_dir=base / "data",
                         out_dir=out, progress=False)
    with pytest.raises(InputError, match="no 'test' case list"):
        write_submission(dataset="btcv", model_dirs=[models[0]], data_dir=base / "data",
                         out_dir=out, split="test", progress=False)
    # a test image gone after prepare: the error names it; no output folder, no temporary left
    data = tmp_path / "data"
    data.mkdir()
    for path in (base / "data").iterdir():
        (data / path.name).write_bytes(path.read_bytes())
    meta = json.loads((data / "img0062.json").read_text())
    source = meta["identity"]["source"]["image"]["path"]
    meta["source"]["image"] = meta["identity"]["source"]["image"]["path"] = str(tmp_path / "gone" / "img0062.nii.gz")
    (data / "img0062.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match="gone/img0062.nii.gz: source image of case 'img0062'"):
        write_submission(dataset="btcv", model_dirs=[models[0]], data_dir=data, out_dir=out,
                         progress=False)
    # a test image re-exported since prepare (another origin): the file would land on a grid the
    # cached prediction was not made on
    moved = tmp_path / "moved.nii.gz"
    img = nib.load(source)
    affine = img.affine.copy()
    affine[:3, 3] += 30.0
    nib.save(nib.Nifti1Image(np.asanyarray(img.dataobj), affine, header=img.header), str(moved))
    meta["source"]["image"] = meta["identity"]["source"]["image"]["path"] = str(moved)
    st = moved.stat()
    meta["identity"]["source"]["image"].update(size=st.st_size, mtime_ns=st.st_mtime_ns)
    (data / "img0062.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match="moved.nii.gz: image changed since `alice prepare` read it"):
        write_submission(dataset="btcv", model_dirs=[models[0]], data_dir=data, out_dir=out,
                         progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "flare", "moved.nii.gz"]


def test_cli_predict(btcv, tmp_path, capsys):
    base, models = btcv
    out = tmp_path / "btcv_online" / "alice"
    assert main(["predict", "--dataset", "btcv", "--model-dir", str(models[0]), "--model-dir",
                 str(models[1]), "--data", str(base / "data"), "--out", str(out),
                 "--device", "cpu", "--no-progress"]) == 0
    assert (out / "label0062.nii.gz").is_file() and (out / "manifest.json").is_file()
    assert main(["predict", "--dataset", "btcv", "--model-dir", str(tmp_path / "nope"),
                 "--data", str(base / "data"), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope/model.pt: fine-tuned model not found" in err[0]
