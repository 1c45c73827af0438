"""Every declared SSL method, on every encoder it declares: built from its file, 2 pretraining steps
through `alice.ssl.run` on a tiny pool, a finite loss, a checkpoint whose encoder loads completely
into the segmentation network of that encoder. A new method's file is tested here as soon as it
exists (with the small widths of its declaration's `smoke`, its own defaults otherwise)."""

from __future__ import annotations

import math

import pytest
import torch

from alice.downstream.networks import build_segmentation_network, encoder_of
from alice.downstream.transfer import load_encoder_checkpoint
from alice.ssl.catalog import methods

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny networks, busy shared cores

ENCODERS = {
    "vit": ({"name": "vit", "embed_dim": 24, "depth": 12, "heads": 2, "mlp_ratio": 2, "patch": [16, 16, 16]},
            [32, 32, 16], "unetr"),
    "swin": ({"name": "swin", "embed_dim": 12, "depths": [2, 1, 1, 1], "heads": [3, 6, 12, 24],
              "window": [4, 4, 2], "mlp_ratio": 2}, [64, 32, 32], "swin_unetr"),
    "nnformer": ({"name": "nnformer", "embed_dim": 8, "depths": [2, 2, 1], "heads": [1, 2, 4],
                  "window": [4, 4, 2], "patch": [2, 2, 2], "mlp_ratio": 2, "global_stages": 1},
                 [32, 32, 16], "nnformer"),
    # the convolutional family: the network a method pretrains, and a backbone that takes it
    "resnet3d": ({"name": "resnet3d", "depth": 10, "widen_factor": 0.0625, "features": 4}, [32, 32, 32],
                 "resnet_unet"),
    "unet3d": ({"name": "unet3d", "widths": [4, 4, 8, 8, 16, 4]}, [32, 32, 16], "unet3d"),
    "nsunet3d": ({"name": "nsunet3d", "filters": [4, 8, 16]}, [32, 32, 16], "nsunet3d"),
    "unet": ({"name": "unet", "channels": [4, 8, 16], "res_units": 1, "features": 4}, [32, 32, 16], "unet"),
    "vnet": ({"name": "vnet", "width": 2, "features": 4}, [32, 32, 16], "vnet"),
}
CASES = [(name, encoder) for name, info in methods().items() for encoder in info.encoders]


@pytest.fixture(scope="module")
def pool(tmp_path_factory, tiny_pool):
    return tiny_pool(tmp_path_factory.mktemp("pool"), seed=3, spacing=[12.0, 12.0, 10.0])


def settings(name: str, encoder: str, steps: int = 2) -> dict:
    info = methods()[name]
    enc, crop, _ = ENCODERS[encoder]
    method_config = dict(info.smoke)  # the small widths its declaration gives the smoke test
    if info.masking:
        method_config["mask_ratio"] = 0.5
    out = {"method": name, "run": name, "encoder": enc, "crop": crop, "method_config": method_config,
           "optim": {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.05, "betas": [0.9, 0.95],
                     "batch_size": 2, "schedule": "cosine", "warmup_iterations": 1, "iterations": steps},
           "checkpoint_every": 10, "grad_clip": 3.0, "amp": None, "seed": 0, "device": "cpu"}
    if info.views == "matched_pair":
        out["pairs"] = {"matcher": "bbox", "min_score": 0.5, "max_tries": 5}
    return out


def test_every_method_is_declared_with_its_views_and_encoders():
    found = methods()
    assert {"alice", "mae", "mocov3", "dino"} <= set(found)
    assert {found[m].views for m in ("alice", "mae", "mocov3", "dino")} == {
        "matched_pair", "crop", "two_views", "multi_crop"}
    assert [m for m, info in found.items() if info.matcher is True] == ["alice"]  # others: by a switch


@pytest.mark.parametrize("name, encoder", CASES, ids=[f"{m}-{e}" for m, e in CASES])
def test_two_steps_and_a_checkpoint_the_backbone_loads(pool, tmp_path, name, encoder):
    from alice.ssl.run import run_pretraining

    out = tmp_path / "run"
    summary = run_pretraining(name, encoder, pool, out, settings(name, encoder), progress=False)
    assert summary["step"] == 2
    rows = (out / "log.csv").read_text().splitlines()
    header = rows[0].split(",")
    loss = [float(r.split(",")[header.index("loss")]) for r in rows[1:]]
    assert len(loss) == 2 and all(math.isfinite(v) for v in loss)
    ckpt = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert ckpt["method"] == name
    enc, crop, backbone = ENCODERS[encoder]
    net = build_segmentation_network(backbone, 14, {"crop": crop, "feature_size": 12 if encoder == "swin" else 8}, enc)
    n = load_encoder_checkpoint(net, backbone, out / "checkpoint.pt", enc)
    assert n == len(encoder_of(net, backbone).state_dict())


def test_a_method_refuses_an_encoder_it_does_not_declare(monkeypatch):
    from alice.errors import ConfigError
    from alice.ssl import catalog
    from alice.ssl.registry import build_method

    info = catalog.methods()["mae"]
    narrowed = {**catalog.methods(), "mae": type(info)(**{**vars(info), "encoders": ("vit",)})}
    monkeypatch.setattr(catalog, "methods", lambda: narrowed)
    enc, crop, _ = ENCODERS["nnformer"]
    with pytest.raises(ConfigError, match="pretrains the vit encoder"):
        build_method("mae", info.smoke, enc, crop)
