"""`alice pretrain --encoder nnformer` end to end on tiny phantoms (SimMIM-masked nnFormer encoder),
its checkpoint loading completely into nnFormer; the per-encoder settings of the config."""

import json
import logging

import pytest
import torch

from alice import config as cfg
from alice.cli import main
from alice.downstream.networks import build_segmentation_network, encoder_of
from alice.downstream.transfer import load_encoder_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny networks, busy shared cores

ENCODER = {"name": "nnformer", "embed_dim": 8, "depths": [2, 2, 1], "heads": [1, 2, 4], "window": [4, 4, 2],
           "patch": [2, 2, 2], "mlp_ratio": 2, "global_stages": 1}
CROP = [32, 32, 16]



@pytest.fixture(scope="module")
def pool(tmp_path_factory, tiny_pool):
    return tiny_pool(tmp_path_factory.mktemp("pool"), seed=4, spacing=[12.0, 12.0, 10.0])


def settings(steps=2, crop=CROP):
    return {"encoder": ENCODER, "crop": crop,
            "method_config": {"decoder": {"dim": 16, "depth": 1, "heads": 2},
                              "head": {"hidden_dim": 32, "bottleneck_dim": 16}, "casa_dim": 16,
                              "mask_ratio": 0.75},
            "optim": {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.05, "betas": [0.9, 0.95],
                      "batch_size": 2, "schedule": "cosine", "warmup_iterations": 1, "iterations": steps},
            "pairs": {"matcher": "bbox", "min_score": 0.5, "max_tries": 5},
            "checkpoint_every": 2, "grad_clip": 3.0, "amp": None, "seed": 0, "device": "cpu"}


def test_pretrain_nnformer_checkpoint_loads_into_nnformer(pool, tmp_path, caplog):
    out = tmp_path / "nnformer"
    code = main(["pretrain", "--method", "alice", "--encoder", "nnformer", "--out", str(out), "--data", str(pool),
                 "--settings", json.dumps(settings()), "--no-progress"])
    assert code == 0
    ckpt = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert ckpt["encoder_config"] == ENCODER and ckpt["preprocessing"]["crop"] == CROP
    assert not any("mask_token" in k for k in ckpt["encoder"])
    header = (out / "log.csv").read_text().splitlines()[0].split(",")
    assert {"loss", "l_r", "l_dv", "l_st"} <= set(header)
    net = build_segmentation_network("nnformer", 14, {"crop": [32, 32, 32], "feature_size": 8}, ENCODER)
    with caplog.at_level(logging.INFO, logger="alice"):
        n = load_encoder_checkpoint(net, "nnformer", out / "checkpoint.pt", ENCODER)
    total = len(encoder_of(net, "nnformer").state_dict())
    assert n == total and f"loaded {total}/{total} encoder tensors" in caplog.text


def test_crop_that_does_not_fit_the_encoder_is_a_config_error(pool, tmp_path, capsys):
    code = main(["pretrain", "--method", "alice", "--encoder", "nnformer", "--out", str(tmp_path), "--data",
                 str(pool), "--settings", json.dumps(settings(crop=[36, 32, 16])), "--no-progress"])
    assert code == 2 and "pretrain.crop.nnformer" in capsys.readouterr().err
    assert not (tmp_path / "checkpoint.pt").exists()


def test_per_encoder_settings_of_the_shipped_configs():
    demo = cfg.load_config()
    for encoder in ("vit", "swin", "nnformer"):
        s = cfg.pretrain_settings(demo, "alice", encoder)
        assert s["encoder"] == {"name": encoder, **demo["pretrain"]["encoders"][encoder]}
        assert s["crop"] == demo["pretrain"]["crop"][encoder]
    for backbone, encoder in (("unetr", "vit"), ("swin_unetr", "swin"), ("nnformer", "nnformer")):
        assert cfg.backbone_encoder(backbone) == encoder
        assert cfg.finetune_settings(demo, backbone)["encoder"]["name"] == encoder
    with pytest.raises(cfg.ConfigError, match=r"pretrain\.encoders\.resnet"):
        cfg.pretrain_settings(demo, "alice", "resnet")
