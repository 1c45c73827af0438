"""A 2-epoch fine-tuning + evaluation smoke run on a tiny prepared dataset: the documented files and
keys, determinism of two identical runs, init from a checkpoint, and clean failures."""

from __future__ import annotations

import copy
import csv
import json
import math

import nibabel as nib
import numpy as np
import pytest
import torch

from alice.downstream.inference import evaluate
from alice.downstream.networks import build_segmentation_network
from alice.downstream.segmentation import finetune
from alice.downstream.transfer import WeightTransferError, encoder_of, save_encoder_checkpoint
from alice.errors import ConfigError, InputError

MODEL_KEYS = {"state_dict", "backbone", "num_classes", "settings", "encoder_config", "dataset", "method", "init",
              "fold", "seed", "code_version"}


def _run(data, out, dx, init="scratch", **overrides):
    settings = copy.deepcopy(dx.SETTINGS)
    settings.update(overrides)
    method = "rand_init" if str(init) == "scratch" else "alice"
    return finetune(dataset="flare22", backbone="unetr", method=method, init=str(init), fold=0, data_dir=data,
                    out_dir=out, settings=settings, encoder_config=dx.ENCODER, seed=3, threads=1, progress=False)


def _rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def runs(tiny_data, tmp_path_factory, dx):
    base = tmp_path_factory.mktemp("runs")
    a = _run(tiny_data, base / "a" / "fold0", dx)
    b = _run(tiny_data, base / "b" / "fold0", dx)
    return base, a, b


def test_finetune_writes_model_log_and_summary(runs, dx):
    base, summary, _ = runs
    out = base / "a" / "fold0"
    # 2 training volumes x 1 crop / batch 2 -> 1 step per epoch, 2 epochs
    assert summary["steps_per_epoch"] == 1 and summary["steps"] == 2
    rows = _rows(out / "log.csv")
    assert list(rows[0]) == ["epoch", "step", "loss", "lr", "val_dice"]
    assert [(r["epoch"], r["step"]) for r in rows] == [("1", "1"), ("2", "2")]
    assert all(math.isfinite(float(r["loss"])) and r["val_dice"] != "" for r in rows)  # val_every 1
    assert float(rows[0]["lr"]) == 0.0 and float(rows[1]["lr"]) > 0  # linear warm-up over epoch 1
    model = torch.load(out / "model.pt", map_location="cpu", weights_only=True)
    assert set(model) == MODEL_KEYS
    assert model["num_classes"] == 14 and model["fold"] == 0 and model["init"] == "scratch"
    on_disk = json.loads((out / "train_summary.json").read_text())
    for key in ("steps", "seconds", "final_loss", "best_val_dice", "best_val_epoch", "n_loaded"):
        assert key in on_disk
    assert on_disk["n_loaded"] == 0 and on_disk["best_val_epoch"] in (1, 2)
    assert not [p for p in out.iterdir() if ".tmp" in p.name]


def test_two_identical_runs_write_the_same_log_and_weights(runs):
    base, a, b = runs
    assert (base / "a" / "fold0" / "log.csv").read_text() == (base / "b" / "fold0" / "log.csv").read_text()
    assert a["final_loss"] == b["final_loss"] and a["val_dice"] == b["val_dice"]
    sa = torch.load(base / "a" / "fold0" / "model.pt", weights_only=True)["state_dict"]
    sb = torch.load(base / "b" / "fold0" / "model.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_batches_regroup_crops_across_volumes(tiny_data, tmp_path, dx):
    """2 volumes x 3 crops in batches of 4: ceil(6 / 4) = 2 steps per epoch (batches of 4 and 2)."""
    optim = dict(dx.SETTINGS["optim"], batch_size=4, epochs=1, warmup_epochs=0, schedule="poly")
    summary = _run(tiny_data, tmp_path / "r", dx, samples_per_volume=3, optim=optim, augmentation=[], val_every=5)
    assert summary["steps_per_epoch"] == 2 and summary["steps"] == 2
    rows = _rows(tmp_path / "r" / "log.csv")
    assert rows[-1]["val_dice"] != ""  # the last epoch is always validated
    never = _run(tiny_data, tmp_path / "n", dx, samples_per_volume=3, optim=optim, augmentation=[], val_every=0)
    assert never["val_dice"] == {} and never["best_val_dice"] is None
    assert all(r["val_dice"] == "" for r in _rows(tmp_path / "n" / "log.csv"))
    assert never["final_loss"] == summary["final_loss"]  # the same training


def test_evaluate_writes_metrics_on_the_original_grid(runs, tiny_data):
    base, _, _ = runs
    model_dir = base / "a" / "fold0"
    out = model_dir / "metrics.json"
    metrics = evaluate(dataset="flare22", model_dir=model_dir, data_dir=tiny_data, out_path=out, progress=False)
    on_disk = json.loads(out.read_text())
    for key in ("dataset", "method", "backbone", "fold", "split", "cases", "case_mean", "mean", "model", "code_version"):
        assert key in on_disk
    assert on_disk["split"] == "test" and on_disk["fold"] == 0 and on_disk["method"] == "rand_init"
    assert sorted(on_disk["cases"]) == ["FLARETs_0001", "FLARETs_0002"]
    assert set(on_disk["cases"]["FLARETs_0001"]) >= {"liver", "spleen", "left_kidney"}
    assert set(on_disk["cases"]["FLARETs_0001"]["liver"]) == {"dsc", "nsd"}
    assert 0.0 <= metrics["mean"]["dsc"] <= 1.0 and 0.0 <= metrics["mean"]["nsd"] <= 1.0
    for case_id in on_disk["cases"]:
        pred = nib.load(model_dir / "predictions" / f"{case_id}.nii.gz")
        truth = nib.load(json.loads((tiny_data / f"{case_id}.json").read_text())["source"]["label"])
        assert pred.shape == truth.shape
        assert (pred.affine == truth.affine).all()

    val = evaluate(dataset="flare22", model_dir=model_dir, data_dir=tiny_data, out_path=model_dir / "val.json",
                   split="val:0", progress=False, save_predictions=False)
    assert sorted(val["cases"]) == ["FLARE22_Tr_0003", "FLARE22_Tr_0004"]


def test_init_from_checkpoint_and_refused_checkpoint(tiny_data, tmp_path, dx):
    torch.manual_seed(123)
    source = build_segmentation_network("unetr", 14, dx.SETTINGS, dx.ENCODER)
    good = tmp_path / "good.pt"
    save_encoder_checkpoint(good, encoder_of(source, "unetr").state_dict(), dx.ENCODER, "alice")
    optim = dict(dx.SETTINGS["optim"], epochs=1)
    summary = _run(tiny_data, tmp_path / "ok", dx, init=good, optim=optim, val_every=5)
    assert summary["n_loaded"] == len(encoder_of(source, "unetr").state_dict())
    assert torch.load(tmp_path / "ok" / "model.pt", weights_only=True)["init"] == str(good)

    bad = tmp_path / "bad.pt"
    save_encoder_checkpoint(bad, encoder_of(source, "unetr").state_dict(), dict(dx.ENCODER, embed_dim=48), "alice")
    with pytest.raises(WeightTransferError, match="embed_dim"):
        _run(tiny_data, tmp_path / "refused", dx, init=bad, optim=optim)
    assert not (tmp_path / "refused" / "model.pt").exists()


def test_init_must_be_pretrained_by_the_runs_method(tiny_data, tmp_path, dx):
    """A variant run id (alice__casa-false) fine-tunes checkpoints its method (alice) pretrained."""
    source = build_segmentation_network("unetr", 14, dx.SETTINGS, dx.ENCODER)
    mae = tmp_path / "mae.pt"
    save_encoder_checkpoint(mae, encoder_of(source, "unetr").state_dict(), dx.ENCODER, "mae")
    with pytest.raises(ConfigError, match="pretrained by 'mae', not 'alice' \\(the method of run 'alice__casa-false'\\)"):
        finetune(dataset="flare22", backbone="unetr", method="alice__casa-false", init=str(mae), fold=0,
                 data_dir=tiny_data, out_dir=tmp_path / "out", settings=dx.SETTINGS, encoder_config=dx.ENCODER,
                 seed=3, progress=False)
    assert not (tmp_path / "out" / "model.pt").exists()


def test_evaluate_refuses_missing_or_incomplete_model(tiny_data, tmp_path):
    with pytest.raises(InputError, match="model.pt"):
        evaluate(dataset="flare22", model_dir=tmp_path, data_dir=tiny_data, out_path=tmp_path / "m.json", progress=False)
    torch.save({"state_dict": {}, "backbone": "unetr"}, tmp_path / "model.pt")
    with pytest.raises(InputError, match="lacks keys"):
        evaluate(dataset="flare22", model_dir=tmp_path, data_dir=tiny_data, out_path=tmp_path / "m.json", progress=False)
    assert not (tmp_path / "m.json").exists()


def test_class_sampling_centres_crops_on_every_class(tiny_data, dx):
    """`sampling: classes` centres crops on background and each organ alike; pos_neg on foreground or
    background. A 4³ crop centred on a voxel holds that voxel's class at its centre."""
    from alice.downstream.data import train_transform

    centres = {}
    for sampling in ("classes", "pos_neg"):
        settings = dict(dx.SETTINGS, sampling=sampling, augmentation=[], samples_per_volume=200)
        transform = train_transform(tiny_data, settings, [4, 4, 4], num_classes=5)
        transform.set_random_state(seed=0)
        crops = transform({"case_id": "FLARE22_Tr_0001"})
        centres[sampling] = np.bincount([int(c["label"][0, 2, 2, 2]) for c in crops], minlength=5)
    # 5 classes drawn uniformly: each ~40 of 200; pos_neg: half background, organs by their volume
    assert centres["classes"].min() >= 20, centres
    assert 80 <= centres["pos_neg"][0] <= 120, centres
    with pytest.raises(ConfigError, match="sampling"):
        train_transform(tiny_data, dict(dx.SETTINGS, sampling="random"), [4, 4, 4])


def test_batch_dice_changes_the_loss_and_is_checked(tiny_data, tmp_path, dx):
    """`batch_dice` sums the Dice term over the batch: same crops and weights, another first loss."""
    optim = dict(dx.SETTINGS["optim"], epochs=1, warmup_epochs=0)
    per_crop = _run(tiny_data, tmp_path / "a", dx, optim=optim, val_every=5)
    batched = _run(tiny_data, tmp_path / "b", dx, optim=optim, val_every=5, batch_dice=True)
    first = [float(_rows(tmp_path / d / "log.csv")[0]["loss"]) for d in ("a", "b")]
    assert per_crop["steps"] == batched["steps"] and first[0] != first[1]
    with pytest.raises(ConfigError, match="batch_dice"):
        _run(tiny_data, tmp_path / "c", dx, batch_dice="yes")
