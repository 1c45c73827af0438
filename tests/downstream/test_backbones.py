"""Swin UNETR and nnFormer backbones: strict transfer of every encoder's pretraining weights (all
three), refusal of a wrong-architecture checkpoint naming fields or keys, the deep-supervision
loss, and an nnFormer fine-tuning + evaluation run (deep supervision in training, full resolution
in sliding-window inference)."""

from __future__ import annotations

import json
import logging
import math

import pytest
import torch

from alice.downstream.inference import evaluate
from alice.downstream.networks import BACKBONES, build_segmentation_network, encoder_of
from alice.downstream.segmentation import deep_supervision_loss, deep_supervision_weights, finetune
from alice.downstream.transfer import WeightTransferError, load_encoder_checkpoint, save_encoder_checkpoint
from alice.errors import ConfigError
from alice.ssl.alice import AliceModel

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny networks, busy shared cores

# backbone: (encoder config, pretraining crop, fine-tuning crop, feature size); Swin's and nnFormer's
# weights do not depend on the crop, so they are fine-tuned on another crop than pretrained on
CASES = {
    "unetr": ({"name": "vit", "embed_dim": 24, "depth": 12, "heads": 2, "mlp_ratio": 2, "patch": [16, 16, 16]},
              (32, 32, 16), [32, 32, 16], 4),
    "swin_unetr": ({"name": "swin", "embed_dim": 12, "depths": [1, 1, 1, 1], "heads": [3, 6, 12, 24],
                    "window": [4, 4, 2], "mlp_ratio": 2}, (64, 64, 32), [64, 32, 32], 12),
    "nnformer": ({"name": "nnformer", "embed_dim": 8, "depths": [2, 2, 1], "heads": [1, 2, 4],
                  "window": [4, 4, 2], "patch": [2, 2, 2], "mlp_ratio": 2, "global_stages": 1},
                 (32, 32, 16), [16, 16, 24], 8),
}
ALICE = dict(decoder={"dim": 16, "depth": 1, "heads": 2}, head={"hidden_dim": 32, "bottleneck_dim": 16},
             casa_dim=16)



def _settings(backbone):
    enc, _, crop, width = CASES[backbone]
    return {"crop": list(crop), "feature_size": width}


def _pretrained(tmp_path, backbone, **config_changes):
    """An Alice model's encoder saved as a pretraining checkpoint (the trainer's format)."""
    enc, pre_crop, _, _ = CASES[backbone]
    torch.manual_seed(1)
    model = AliceModel(enc, pre_crop, **ALICE)
    path = tmp_path / f"{backbone}.pt"
    save_encoder_checkpoint(path, model.encoder_state_dict(), {**enc, **config_changes}, "alice",
                            preprocessing={"crop": list(pre_crop)})
    return path, model.encoder_state_dict()


@pytest.mark.parametrize("backbone", list(CASES))
def test_pretraining_checkpoint_fills_every_encoder_tensor(tmp_path, backbone, caplog):
    enc = CASES[backbone][0]
    assert BACKBONES[backbone].encoder == enc["name"]
    path, state = _pretrained(tmp_path, backbone)
    torch.manual_seed(2)
    net = build_segmentation_network(backbone, 14, _settings(backbone), enc)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with caplog.at_level(logging.INFO, logger="alice"):
        n = load_encoder_checkpoint(net, backbone, path, enc)
    target = encoder_of(net, backbone).state_dict()
    assert n == len(target) == len(state) and f"loaded {n}/{n} encoder tensors from {path}" in caplog.text
    for key, value in state.items():
        assert torch.equal(target[key], value), key
    prefix = {"unetr": "vit.", "swin_unetr": "swinViT.", "nnformer": "encoder."}[backbone]
    untouched = [k for k in before if not k.startswith(prefix)]
    assert untouched and all(torch.equal(before[k], net.state_dict()[k]) for k in untouched)


@pytest.mark.parametrize("backbone, change, named", [
    ("nnformer", {"embed_dim": 16}, "embed_dim: checkpoint 16 vs run 8"),
    ("nnformer", {"depths": [2, 2, 2]}, "depths"),
    ("swin_unetr", {"window": [7, 7, 7]}, "window"),
])
def test_wrong_architecture_checkpoint_fails_naming_the_field(tmp_path, backbone, change, named):
    path, _ = _pretrained(tmp_path, backbone, **change)
    net = build_segmentation_network(backbone, 14, _settings(backbone), CASES[backbone][0])
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(WeightTransferError, match="pretrain.encoders") as err:
        load_encoder_checkpoint(net, backbone, path, CASES[backbone][0])
    assert named in str(err.value) and str(path) in str(err.value)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_checkpoint_of_another_encoder_or_lying_config_fails_naming_keys(tmp_path):
    swin_path, _ = _pretrained(tmp_path, "swin_unetr")
    enc = CASES["nnformer"][0]
    net = build_segmentation_network("nnformer", 14, _settings("nnformer"), enc)
    with pytest.raises(WeightTransferError, match="checkpoint encoder 'swin' cannot initialise backbone "
                                                  "'nnformer' \\(needs: nnformer\\)"):
        load_encoder_checkpoint(net, "nnformer", swin_path, enc)
    # a deeper nnFormer's weights under the run's encoder_config: the keys are named
    deeper = dict(enc, depths=[2, 2, 2])
    torch.manual_seed(0)
    state = AliceModel(deeper, CASES["nnformer"][1], **ALICE).encoder_state_dict()
    path = tmp_path / "lying.pt"
    save_encoder_checkpoint(path, state, enc, "alice")
    with pytest.raises(WeightTransferError, match=r"unexpected in checkpoint 15 key\(s\): layers\.2\.blocks\.1\.attn"):
        load_encoder_checkpoint(net, "nnformer", path, enc)


def test_swin_unetr_config_errors():
    enc = CASES["swin_unetr"][0]
    with pytest.raises(ConfigError, match=r"finetune\.swin_unetr\.crop.*stride \[32, 32, 32\]"):
        build_segmentation_network("swin_unetr", 14, dict(_settings("swin_unetr"), crop=[48, 48, 32]), enc)
    with pytest.raises(ConfigError, match=r"finetune\.swin_unetr\.crop.*1x1x1"):
        build_segmentation_network("swin_unetr", 14, dict(_settings("swin_unetr"), crop=[32, 32, 32]), enc)
    with pytest.raises(ConfigError, match=r"finetune\.swin_unetr\.feature_size.*pretrain\.encoders\.swin"):
        build_segmentation_network("swin_unetr", 14, dict(_settings("swin_unetr"), feature_size=24), enc)
    with pytest.raises(ConfigError, match=r"swin_unetr needs a 'swin' encoder"):
        build_segmentation_network("swin_unetr", 14, _settings("swin_unetr"), CASES["nnformer"][0])


@pytest.mark.parametrize("backbone", ["unetr", "swin_unetr"])
def test_decoder_norm_setting_chooses_the_conv_decoders_norm(backbone):
    enc = CASES[backbone][0]

    def norms(settings):
        net = build_segmentation_network(backbone, 14, settings, enc)
        return {type(m).__name__ for m in net.modules() if "Norm" in type(m).__name__ and "Layer" not in type(m).__name__}

    assert norms(_settings(backbone)) == {"InstanceNorm3d"}  # MONAI's default, the papers'
    assert norms(dict(_settings(backbone), norm="batch")) == {"BatchNorm3d"}
    with pytest.raises(ConfigError, match=rf"finetune\.{backbone}\.norm.*instance, batch.*'group'"):
        build_segmentation_network(backbone, 14, dict(_settings(backbone), norm="group"), enc)


def test_deep_supervision_loss_weights_scales():
    assert deep_supervision_weights(3) == pytest.approx([4 / 7, 2 / 7, 1 / 7])
    calls = []

    def loss_fn(logits, target):
        calls.append((tuple(logits.shape), tuple(target.shape), target.dtype))
        return logits.float().mean() * 0 + float(len(calls))

    label = torch.randint(0, 3, (2, 1, 8, 8, 4))
    outs = [torch.zeros(2, 3, 8, 8, 4), torch.zeros(2, 3, 4, 4, 2), torch.zeros(2, 3, 2, 2, 1)]
    total = deep_supervision_loss(loss_fn, outs, label)
    assert [c[1] for c in calls] == [(2, 1, 8, 8, 4), (2, 1, 4, 4, 2), (2, 1, 2, 2, 1)]
    assert all(c[2] == label.dtype for c in calls)
    assert total.item() == pytest.approx(4 / 7 * 1 + 2 / 7 * 2 + 1 / 7 * 3)
    # nearest downsampling keeps labels
    calls.clear()
    seen = []
    deep_supervision_loss(lambda lg, t: seen.append(t) or lg.sum() * 0, outs, label)
    assert torch.equal(seen[1], label[:, :, ::2, ::2, ::2])
    assert deep_supervision_loss(loss_fn, outs[0], label).item() == 1.0  # a tensor: one plain loss


def test_nnformer_finetune_and_evaluate(tiny_data, tmp_path):
    enc = CASES["nnformer"][0]
    settings = {"optim": {"optimizer": "sgd", "lr": 0.01, "weight_decay": 3e-5, "momentum": 0.99,
                          "batch_size": 2, "schedule": "poly", "warmup_epochs": 0, "epochs": 2},
                "augmentation": ["scaling", "gaussian_blur", "mirroring"], "crop": [16, 16, 16],
                "feature_size": 8, "samples_per_volume": 1, "val_every": 1, "sw_overlap": 0.25,
                "sw_batch_size": 2}
    out = tmp_path / "fold0"
    summary = finetune(dataset="flare22", backbone="nnformer", method="rand_init", init="scratch", fold=0,
                       data_dir=tiny_data, out_dir=out, settings=settings, encoder_config=enc, seed=0,
                       threads=1, progress=False)
    assert summary["steps"] == 2 and math.isfinite(summary["final_loss"])
    assert summary["best_val_dice"] is not None
    metrics = evaluate(dataset="flare22", model_dir=out, data_dir=tiny_data, out_path=out / "metrics.json",
                       progress=False, save_predictions=False)
    assert metrics["backbone"] == "nnformer" and 0.0 <= metrics["mean"]["dsc"] <= 1.0
    assert json.loads((out / "metrics.json").read_text())["n_cases"] == 2
