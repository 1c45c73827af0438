"""MosMed classification: the binary label, the split's parts, the networks' shapes, strict ViT
transfer, a few-iteration training through the CLI (files, AUC = scikit-learn's, determinism,
re-scoring) and clean failures."""

from __future__ import annotations

import copy
import csv
import json

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from alice.cli import main
from alice.downstream.classification import (
    Volumes,
    binary_label,
    evaluate_classifier,
    finetune_classifier,
    index_batches,
    read_split,
    split_fractions,
    train_transform,
)
from alice.downstream.networks import build_classification_network, build_segmentation_network
from alice.downstream.transfer import WeightTransferError, encoder_of, load_encoder_checkpoint, save_encoder_checkpoint
from alice.errors import ConfigError, InputError
from alice.io import read_json, write_json
from alice.models.vit import ViTEncoder

SIZE = [16, 16, 16]


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny networks, busy shared cores


# ----------------------------------------------------------------------------------------- labels
@pytest.mark.parametrize("category, label", [(0, 0), (1, 1), (2, 1), (3, 1), (4, 1)])
def test_binary_label_ct0_is_negative_ct1_to_4_positive(category, label):
    assert binary_label({"category": category, "class_label": label}, "x.json") == label
    assert binary_label({"category": category}, "x.json") == label


def test_binary_label_rejects_contradictions_and_non_mosmed_cases():
    with pytest.raises(InputError, match="x.json: class_label 0 contradicts category CT-2"):
        binary_label({"category": 2, "class_label": 0}, "x.json")
    with pytest.raises(InputError, match="not a MosMed case"):
        binary_label({"category": None}, "x.json")
    with pytest.raises(InputError, match="not a MosMed case"):
        binary_label({"category": 5}, "x.json")


def test_cached_cases_carry_the_papers_label(tiny_mosmed):
    manifest = read_json(tiny_mosmed / "manifest.json")
    volumes = Volumes(tiny_mosmed, [c["case_id"] for c in manifest["cases"]])
    assert volumes.shape == tuple(SIZE)
    for case in manifest["cases"]:
        assert volumes.labels[case["case_id"]] == int(case["category"] != 0)
    assert sorted(volumes.labels.values()) == [0] * 6 + [1] * 6


# ----------------------------------------------------------------------------------------- splits
def test_split_parts_are_the_nested_label_fractions(tiny_mosmed):
    assert split_fractions(tiny_mosmed, 0) == [0.5, 1.0]
    full, half = read_split(tiny_mosmed, 0, 1.0), read_split(tiny_mosmed, 0, 0.5)
    entry = read_json(tiny_mosmed / "folds.json")["repeats"][0]
    assert full["train"] == entry["train"] and full["val"] == entry["val"] and full["test"] == entry["test"]
    assert set(half["train"]) < set(full["train"]) and half["test"] == full["test"]
    with pytest.raises(InputError, match="split 0 has no label fraction 0.2"):
        read_split(tiny_mosmed, 0, 0.2)
    with pytest.raises(InputError, match=r"no split 7 \(splits: \[0, 1\]\)"):
        read_split(tiny_mosmed, 7, 1.0)


def test_segmentation_folds_are_not_mosmed_splits(tmp_path):
    write_json(tmp_path / "folds.json", {"folds": [{"fold": 0, "train": ["a"], "val": ["b"]}]})
    with pytest.raises(InputError, match="not MosMed splits"):
        read_split(tmp_path, 0, 1.0)


def test_index_batches_walk_permutations():
    batches = index_batches(5, 2, torch.Generator().manual_seed(0))
    flat = [i for _ in range(5) for i in next(batches)]
    assert sorted(flat) == sorted(list(range(5)) * 2)  # two full permutations in 5 batches of 2


def test_every_augmentation_keeps_shape_and_range():
    names = ["rotation", "scaling", "flip", "gaussian_noise", "gaussian_blur", "brightness_contrast",
             "low_resolution"]
    transform = train_transform(names)
    for t in transform.transforms:
        if hasattr(t, "prob"):
            t.prob = 1.0
    transform.set_random_state(seed=0)
    x = np.random.default_rng(0).random((1, *SIZE)).astype(np.float32)
    y = transform(x)
    assert isinstance(y, torch.Tensor) and tuple(y.shape) == (1, *SIZE) and y.dtype == torch.float32
    assert not torch.equal(y, torch.as_tensor(x))
    with pytest.raises(ConfigError, match="classification.augmentation.*'mixup'"):
        train_transform(["flip", "mixup"])


# --------------------------------------------------------------------------------------- networks
@pytest.mark.parametrize("backbone", ["vit", "resnet3d"])
def test_classifier_forward_shapes(backbone, cls_settings, cls_encoder, cls_resnet):
    torch.manual_seed(0)
    enc = cls_encoder if backbone == "vit" else cls_resnet
    net = build_classification_network(backbone, 2, cls_settings, enc, [16, 16, 32])
    out = net(torch.rand(3, 1, 16, 16, 32))
    assert out.shape == (3, 2)
    assert isinstance(net.head, torch.nn.Linear) and net.head.out_features == 2
    assert encoder_of(net, backbone) is net.encoder


def test_resnet_width_follows_widen_factor(cls_settings, cls_resnet):
    cls_resnet.update(depth=18, widen_factor=0.25)
    net = build_classification_network("resnet3d", 2, cls_settings, cls_resnet, SIZE)
    assert net.head.in_features == 128 and len(net.encoder.layer1) == 2


@pytest.mark.parametrize("backbone", ["vit", "resnet3d"])
def test_batchnorm_head_standardises_pooled_features(backbone, cls_settings, cls_encoder, cls_resnet):
    """head_norm: batchnorm = an affine-free BatchNorm1d before the FC layer: in training the
    features reaching the FC layer have zero mean and unit variance over the batch, so volumes
    whose pooled features differ by little still get logits that differ."""
    torch.manual_seed(0)
    cls_encoder = cls_encoder if backbone == "vit" else cls_resnet
    net = build_classification_network(backbone, 2, {**cls_settings, "head_norm": {backbone: "batchnorm"}},
                                       cls_encoder, SIZE)
    norm, linear = net.head
    assert isinstance(norm, torch.nn.BatchNorm1d) and not norm.affine and linear.out_features == 2
    seen = {}
    linear.register_forward_hook(lambda module, args, out: seen.setdefault("x", args[0].detach()))
    net.train()
    net(torch.rand(6, 1, *SIZE))
    assert torch.allclose(seen["x"].mean(0), torch.zeros(1), atol=1e-5)
    assert torch.allclose(seen["x"].var(0, unbiased=False), torch.ones(1), atol=1e-2)
    other = "resnet3d" if backbone == "vit" else "vit"
    for settings in (cls_settings, {**cls_settings, "head_norm": {other: "batchnorm"}}):
        plain = build_classification_network(backbone, 2, settings, cls_encoder, SIZE)
        assert isinstance(plain.head, torch.nn.Linear)  # the default: the paper's FC layer alone
    with pytest.raises(ConfigError, match=f"classification.head_norm.{backbone}"):
        build_classification_network(backbone, 2, {**cls_settings, "head_norm": {backbone: "layer"}}, cls_encoder,
                                     SIZE)


def test_batchnorm_head_needs_two_volumes_a_batch(tiny_mosmed, tmp_path, cls_settings, cls_encoder):
    settings = {**cls_settings, "head_norm": {"vit": "batchnorm"}, "optim": {**cls_settings["optim"], "batch_size": 1}}
    with pytest.raises(ConfigError, match="batch_size.*head_norm: batchnorm"):
        finetune_classifier(backbone="vit", method="rand_init", init="scratch", fold=0, label_fraction=1.0,
                            data_dir=tiny_mosmed, out_dir=tmp_path / "run", settings=settings,
                            encoder_config=cls_encoder, seed=0, progress=False)


def test_network_registry_keeps_tasks_apart(cls_settings, cls_encoder, settings, encoder_config):
    with pytest.raises(ConfigError, match="'vit' is a classification backbone"):
        build_segmentation_network("vit", 14, settings, encoder_config)
    with pytest.raises(ConfigError, match="'unetr' is a segmentation backbone"):
        build_classification_network("unetr", 2, cls_settings, cls_encoder, SIZE)
    with pytest.raises(ConfigError, match=r"datasets.mosmed.size.*not a multiple of the ViT patch"):
        build_classification_network("vit", 2, cls_settings, cls_encoder, [16, 16, 12])
    with pytest.raises(ConfigError, match=r"pretrain.encoders.resnet3d.depth"):
        build_classification_network("resnet3d", 2, cls_settings,
                                     {"name": "resnet3d", "depth": 11, "widen_factor": 1, "features": 4}, SIZE)
    with pytest.raises(ConfigError, match="resnet3d needs a 'resnet3d' encoder config"):
        build_classification_network("resnet3d", 2, cls_settings, cls_encoder, SIZE)


# --------------------------------------------------------------------------------------- transfer
def _pretrained(path, encoder_config, crop, seed=1):
    torch.manual_seed(seed)
    encoder = ViTEncoder.from_config(encoder_config, img_size=crop)
    save_encoder_checkpoint(path, encoder.state_dict(), encoder_config, "alice", preprocessing={"crop": crop})
    return encoder.state_dict()


@pytest.mark.parametrize("head_norm", ["none", "batchnorm"])
def test_pretrained_vit_loads_strictly_into_the_classifier(tmp_path, cls_settings, cls_encoder, caplog, head_norm):
    src = _pretrained(tmp_path / "ckpt.pt", cls_encoder, SIZE)
    torch.manual_seed(0)
    net = build_classification_network("vit", 2, {**cls_settings, "head_norm": {"vit": head_norm}}, cls_encoder, SIZE)
    head = copy.deepcopy(net.head.state_dict())
    with caplog.at_level("INFO", logger="alice"):
        n = load_encoder_checkpoint(net, "vit", tmp_path / "ckpt.pt", cls_encoder)
    assert n == len(src) == len(net.encoder.state_dict())  # all encoder tensors
    assert f"loaded {n}/{n} encoder tensors" in caplog.text
    assert all(torch.equal(net.encoder.state_dict()[k], v) for k, v in src.items())
    assert all(torch.equal(net.head.state_dict()[k], v) for k, v in head.items())  # the head stays random


def test_pretraining_crop_differs_position_embeddings_interpolated(tmp_path, cls_settings, cls_encoder, caplog):
    src = _pretrained(tmp_path / "ckpt.pt", cls_encoder, [32, 16, 16])  # token grid 4x2x2 -> 2x2x2
    net = build_classification_network("vit", 2, cls_settings, cls_encoder, SIZE)
    with caplog.at_level("INFO", logger="alice"):
        load_encoder_checkpoint(net, "vit", tmp_path / "ckpt.pt", cls_encoder)
    assert "interpolated patch_embedding.position_embeddings from token grid (4, 2, 2)" in caplog.text
    assert net.encoder.patch_embedding.position_embeddings.shape == (1, 8, 24)
    assert torch.equal(net.encoder.blocks[0].attn.qkv.weight, src["blocks.0.attn.qkv.weight"])


def test_other_architecture_or_resnet_refuses_the_checkpoint(tmp_path, cls_settings, cls_encoder):
    _pretrained(tmp_path / "ckpt.pt", cls_encoder, SIZE)
    wider = {**cls_encoder, "embed_dim": 32}
    net = build_classification_network("vit", 2, cls_settings, wider, SIZE)
    with pytest.raises(WeightTransferError, match="embed_dim: checkpoint 24 vs run 32"):
        load_encoder_checkpoint(net, "vit", tmp_path / "ckpt.pt", wider)
    resnet_config = {"name": "resnet3d", "depth": 10, "widen_factor": 0.125, "features": 4}
    resnet = build_classification_network("resnet3d", 2, cls_settings, resnet_config, SIZE)
    with pytest.raises(WeightTransferError, match="cannot initialise backbone 'resnet3d'"):
        load_encoder_checkpoint(resnet, "resnet3d", tmp_path / "ckpt.pt", resnet_config)


# --------------------------------------------------------------------------------- training (CLI)
def _cli(data, out, settings, encoder, *extra):
    payload = json.dumps({"classification": settings, "encoder": encoder, "seed": 5, "device": "cpu",
                          "threads": 1})
    return main(["finetune", "--dataset", "mosmed", "--backbone", "vit", "--method", "rand_init", "--init",
                 "scratch", "--fold", "1", "--out", str(out), "--data", str(data), "--settings", payload,
                 "--evaluate", "--no-progress", *extra])


@pytest.fixture(scope="module")
def cli_runs(tiny_mosmed, tmp_path_factory, dx):
    base = tmp_path_factory.mktemp("cls_runs")
    codes = [_cli(tiny_mosmed, base / name / "fold1", dx.CLS_SETTINGS, dx.CLS_ENCODER) for name in ("a", "b")]
    return base, codes


def test_cli_trains_every_label_fraction_and_writes_metrics(cli_runs, tiny_mosmed):
    base, codes = cli_runs
    assert codes == [0, 0]
    for fraction, folder in ((0.5, "labels50"), (1.0, "labels100")):
        out = base / "a" / "fold1" / folder
        assert {"model.pt", "log.csv", "train_summary.json", "metrics.json"} <= {p.name for p in out.iterdir()}
        metrics = read_json(out / "metrics.json")
        test_ids = read_split(tiny_mosmed, 1, fraction)["test"]
        assert sorted(metrics["cases"]) == test_ids and metrics["split"] == "test"
        y = [metrics["cases"][c]["label"] for c in test_ids]
        s = [metrics["cases"][c]["score"] for c in test_ids]
        assert metrics["mean"]["auc"] == roc_auc_score(y, s)
        assert metrics["label_fraction"] == fraction and metrics["fold"] == 1 and metrics["backbone"] == "vit"
        summary = read_json(out / "train_summary.json")
        assert summary["n_train"] == len(read_split(tiny_mosmed, 1, fraction)["train"])
        assert summary["iterations"] == 4 and summary["selected_iteration"] in (2, 4)
        with open(out / "log.csv", newline="") as fh:
            rows = list(csv.DictReader(fh))
        assert [r["iteration"] for r in rows] == ["1", "2", "3", "4"]
        assert [bool(r["val_auc"]) for r in rows] == [False, True, False, True]  # val_every 2
        assert float(rows[0]["lr"]) == 0.0 and float(rows[1]["lr"]) > 0  # warm-up
        model = torch.load(out / "model.pt", weights_only=True)
        assert model["iteration"] == summary["selected_iteration"] and model["input_size"] == SIZE
        assert not [p for p in out.iterdir() if ".tmp" in p.name]


def test_two_identical_cli_runs_write_the_same_files(cli_runs):
    base, _ = cli_runs
    for folder in ("labels50", "labels100"):
        a, b = base / "a" / "fold1" / folder, base / "b" / "fold1" / folder
        assert (a / "log.csv").read_text() == (b / "log.csv").read_text()
        ma, mb = read_json(a / "metrics.json"), read_json(b / "metrics.json")
        assert ma["cases"] == mb["cases"] and ma["settings_hash"] == mb["settings_hash"]


def test_evaluate_rescoring_matches_and_val_part(cli_runs, tiny_mosmed, tmp_path):
    base, _ = cli_runs
    model_dir = base / "a" / "fold1" / "labels100"
    assert main(["evaluate", "--dataset", "mosmed", "--model-dir", str(model_dir), "--data", str(tiny_mosmed),
                 "--out", str(tmp_path / "m.json"), "--device", "cpu"]) == 0
    again, first = read_json(tmp_path / "m.json"), read_json(model_dir / "metrics.json")
    assert again["cases"] == first["cases"] and again["mean"] == first["mean"]
    val = evaluate_classifier(model_dir=model_dir, data_dir=tiny_mosmed, out_path=tmp_path / "v.json", split="val")
    assert sorted(val["cases"]) == read_split(tiny_mosmed, 1, 1.0)["val"]


def test_alice_init_and_last_model_selection(tiny_mosmed, tmp_path, cls_settings, cls_encoder, caplog):
    _pretrained(tmp_path / "ckpt.pt", cls_encoder, [32, 32, 16])
    cls_settings.update(selection="last", augmentation=[])
    with caplog.at_level("INFO", logger="alice"):
        summary = finetune_classifier(backbone="vit", method="alice", init=str(tmp_path / "ckpt.pt"), fold=0,
                                      label_fraction=0.5, data_dir=tiny_mosmed, out_dir=tmp_path / "run",
                                      settings=cls_settings, encoder_config=cls_encoder, seed=0, progress=False)
    assert summary["n_loaded"] == len(ViTEncoder.from_config(cls_encoder, SIZE).state_dict())
    assert "loaded" in caplog.text and "encoder tensors" in caplog.text
    assert summary["selected_iteration"] == 4 and summary["best_val_auc"] is None


def test_resnet_trains_from_scratch_or_from_a_cnn_checkpoint(tiny_mosmed, tmp_path, cls_settings, cls_resnet):
    from alice.models.cnn import build_cnn, transferable_parts

    summary = finetune_classifier(backbone="resnet3d", method="rand_init", init="scratch", fold=0,
                                  label_fraction=1.0, data_dir=tiny_mosmed, out_dir=tmp_path / "rn",
                                  settings=cls_settings, encoder_config=cls_resnet, seed=0, progress=False)
    assert summary["iterations"] == 4 and (tmp_path / "rn" / "model.pt").is_file()
    # a CNN method's checkpoint (the whole ResNet U-Net): the classifier takes its encoder
    body = build_cnn(cls_resnet)
    save_encoder_checkpoint(tmp_path / "byol.pt", transferable_parts(body, "encoder_decoder"), cls_resnet, "byol")
    summary = finetune_classifier(backbone="resnet3d", method="byol", init=str(tmp_path / "byol.pt"), fold=0,
                                  label_fraction=1.0, data_dir=tiny_mosmed, out_dir=tmp_path / "rn2",
                                  settings=cls_settings, encoder_config=cls_resnet, seed=0, progress=False)
    assert summary["n_loaded"] == len(body.encoder.state_dict())


def test_one_class_test_part_is_a_clear_error(tiny_mosmed, tmp_path, cls_settings, cls_encoder, capsys):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(tiny_mosmed, data)
    folds = read_json(data / "folds.json")
    positives = [c for c in folds["repeats"][0]["test"] if c >= "study_0007"]
    folds["repeats"][0]["test"] = positives  # CT-1..4 studies only
    write_json(data / "folds.json", folds)
    with pytest.raises(InputError, match=r"folds.json: split 0 test part holds only class \[1\]: the AUC needs "
                                         "both classes"):
        finetune_classifier(backbone="vit", method="rand_init", init="scratch", fold=0, label_fraction=1.0,
                            data_dir=data, out_dir=tmp_path / "run", settings=cls_settings,
                            encoder_config=cls_encoder, seed=0, progress=False)
    assert not (tmp_path / "run").exists()
    payload = json.dumps({"classification": cls_settings, "encoder": cls_encoder, "seed": 0, "device": "cpu"})
    code = main(["finetune", "--dataset", "mosmed", "--backbone", "vit", "--method", "rand_init", "--init", "scratch",
                 "--fold", "0", "--out", str(tmp_path / "cli"), "--data", str(data), "--settings", payload,
                 "--no-progress"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1 and "test part holds only class [1]" in err[0]


def test_evaluate_without_model_is_an_input_error(tiny_mosmed, tmp_path):
    with pytest.raises(InputError, match="model.pt: model not found"):
        evaluate_classifier(model_dir=tmp_path, data_dir=tiny_mosmed, out_path=tmp_path / "m.json")
    assert not (tmp_path / "m.json").exists()


def test_label_fraction_flag_is_mosmed_only(tmp_path):
    code = main(["finetune", "--dataset", "flare22", "--backbone", "unetr", "--method", "rand_init", "--init",
                 "scratch", "--fold", "0", "--out", str(tmp_path), "--label-fraction", "0.2", "--settings", "{}"])
    assert code == 2


@pytest.mark.parametrize("stop_at", [3, 5])  # after a validation (val_every 2) with a best model, and between
def test_interrupted_classifier_resumes_exactly(tiny_mosmed, tmp_path, cls_settings, cls_encoder, stop_at):
    import os
    import signal

    from alice.runstate import Preempted

    cls_settings["optim"]["iterations"] = 7

    def run(out, **kwargs):
        return finetune_classifier(backbone="vit", method="rand_init", init="scratch", fold=0, label_fraction=1.0,
                                   data_dir=tiny_mosmed, out_dir=out, settings=cls_settings,
                                   encoder_config=cls_encoder, seed=0, progress=False, **kwargs)

    straight = run(tmp_path / "a")
    with pytest.raises(Preempted):
        run(tmp_path / "b", step_callback=lambda it: it == stop_at and os.kill(os.getpid(), signal.SIGTERM))
    assert (tmp_path / "b" / "resume.pt").is_file() and not (tmp_path / "b" / "model.pt").exists()
    resumed = run(tmp_path / "b")
    assert resumed["resumed_from"] == [stop_at] and not (tmp_path / "b" / "resume.pt").exists()
    assert resumed["selected_iteration"] == straight["selected_iteration"]
    wa = torch.load(tmp_path / "a" / "model.pt", weights_only=True)["state_dict"]
    wb = torch.load(tmp_path / "b" / "model.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert (tmp_path / "a" / "log.csv").read_text() == (tmp_path / "b" / "log.csv").read_text()


def test_loss_read_every_few_iterations_trains_the_same_classifier(tiny_mosmed, tmp_path, cls_settings, cls_encoder):
    """alice.fastpath `sync_every` (3, across the validations every 2nd iteration): same weights, same log."""
    cls_settings["optim"]["iterations"] = 7

    def run(out, **kwargs):
        return finetune_classifier(backbone="vit", method="rand_init", init="scratch", fold=0, label_fraction=1.0,
                                   data_dir=tiny_mosmed, out_dir=out, settings=cls_settings,
                                   encoder_config=cls_encoder, seed=0, progress=False, **kwargs)

    a, b = run(tmp_path / "a"), run(tmp_path / "b", fast_path={"sync_every": 3})
    assert a["selected_iteration"] == b["selected_iteration"]
    wa = torch.load(tmp_path / "a" / "model.pt", weights_only=True)["state_dict"]
    wb = torch.load(tmp_path / "b" / "model.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert (tmp_path / "a" / "log.csv").read_text() == (tmp_path / "b" / "log.csv").read_text()

