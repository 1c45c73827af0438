"""`alice pretrain` end to end on tiny phantoms, and fine-tuning from its checkpoint (100 % of the
encoder tensors loaded)."""

import json
import logging

import pytest
import torch
import yaml

from alice.cli import main
from alice.config import REPO_ROOT
from alice.downstream.networks import build_segmentation_network, encoder_of
from alice.downstream.transfer import load_encoder_checkpoint

ENCODER = {"name": "vit", "embed_dim": 24, "depth": 12, "heads": 2, "mlp_ratio": 2,
           "patch": [16, 16, 16]}
CROP = [32, 32, 16]


@pytest.fixture(scope="module")
def pool(tmp_path_factory, tiny_pool):
    return tiny_pool(tmp_path_factory.mktemp("pool"), seed=3, spacing=[12.0, 12.0, 10.0])


def settings(steps=3):
    config = yaml.safe_load((REPO_ROOT / "config" / "config.yaml").read_text())
    alice = dict(config["pretrain"]["methods"]["alice"], decoder={"dim": 24, "depth": 1, "heads": 2},
                 head={"hidden_dim": 32, "bottleneck_dim": 16}, casa_dim=16)
    return {"encoder": ENCODER, "crop": CROP, "method_config": {**alice, "mask_ratio": 0.5},
            "optim": {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.05,
                      "betas": [0.9, 0.95], "batch_size": 2, "schedule": "cosine",
                      "warmup_iterations": 1, "iterations": steps},
            "pairs": {"matcher": "bbox", "min_score": 0.5, "max_tries": 5},
            "checkpoint_every": 2, "grad_clip": 3.0, "amp": None, "seed": 0, "device": "cpu"}


def test_pretrain_writes_a_checkpoint_that_unetr_loads_completely(pool, tmp_path, caplog):
    out = tmp_path / "pretrain"
    code = main(["pretrain", "--method", "alice", "--encoder", "vit", "--out", str(out),
                 "--data", str(pool), "--settings", json.dumps(settings()), "--no-progress"])
    assert code == 0
    header = (out / "log.csv").read_text().splitlines()[0].split(",")
    assert {"loss", "l_r", "l_dv", "l_st"} <= set(header)
    ckpt = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert ckpt["method"] == "alice" and ckpt["step"] == 3
    assert ckpt["preprocessing"]["crop"] == CROP
    ft = {"crop": CROP, "feature_size": 4}
    net = build_segmentation_network("unetr", 14, ft, ENCODER)
    with caplog.at_level(logging.INFO, logger="alice"):
        n = load_encoder_checkpoint(net, "unetr", out / "checkpoint.pt", ENCODER)
    total = len(encoder_of(net, "unetr").state_dict())
    assert n == total and f"loaded {total}/{total} encoder tensors" in caplog.text
    for key, value in encoder_of(net, "unetr").state_dict().items():
        assert torch.equal(value, ckpt["encoder"][key])


def test_pretrain_is_deterministic_for_a_seed(pool, tmp_path):
    # the global RNG is in a different state before each run: the initial weights must not care
    ckpts = []
    for name in ("a", "b"):
        torch.manual_seed(len(name) * 1000 + ord(name))
        code = main(["pretrain", "--method", "alice", "--encoder", "vit", "--out", str(tmp_path / name),
                     "--data", str(pool), "--settings", json.dumps(settings(steps=2)), "--no-progress"])
        assert code == 0
        ckpts.append(torch.load(tmp_path / name / "checkpoint.pt", weights_only=True))
    for key, value in ckpts[0]["encoder"].items():
        assert torch.equal(value, ckpts[1]["encoder"][key]), key
    assert (tmp_path / "a" / "log.csv").read_text().split("\n")[1].split(",")[:6] == \
        (tmp_path / "b" / "log.csv").read_text().split("\n")[1].split(",")[:6]


def test_pretrain_rejects_an_encoder_other_than_the_configs(pool, tmp_path, capsys):
    code = main(["pretrain", "--method", "alice", "--encoder", "swin", "--out", str(tmp_path),
                 "--data", str(pool), "--settings", json.dumps(settings())])
    assert code == 2 and "--encoder" in capsys.readouterr().err


def test_unknown_method_is_a_config_error(pool, tmp_path, capsys):
    code = main(["pretrain", "--method", "nope", "--encoder", "vit", "--out", str(tmp_path),
                 "--data", str(pool), "--settings", json.dumps(settings())])
    assert code == 2 and "unknown SSL method 'nope'" in capsys.readouterr().err


def _preempted_run(pool, out, monkeypatch, settings_json, stop_at=2):
    """`alice pretrain` that gets SIGTERM after step `stop_at` (as under a preemption)."""
    import os
    import signal

    import alice.ssl.trainer as trainer

    original = trainer.pretrain

    def stopped_at(*args, **kwargs):
        def hook(step, row):
            if step == stop_at:
                os.kill(os.getpid(), signal.SIGTERM)
        return original(*args, **kwargs, step_callback=hook)

    monkeypatch.setattr(trainer, "pretrain", stopped_at)
    code = main(["pretrain", "--method", "alice", "--encoder", "vit", "--out", str(out),
                 "--data", str(pool), "--settings", settings_json, "--no-progress"])
    monkeypatch.setattr(trainer, "pretrain", original)
    return code


def _changed(key):
    s = settings(steps=4)
    if key == "momentum":
        s["method_config"]["momentum"] = 0.5
    elif key == "mask_ratio":
        s["method_config"]["mask_ratio"] = 0.25
    elif key == "grad_clip":
        s["grad_clip"] = 1.0
    elif key == "min_score":
        s["pairs"]["min_score"] = 0.6
    elif key == "depth":
        s["encoder"] = {**ENCODER, "depth": 6}
    elif key == "crop":
        s["crop"] = [48, 48, 16]
    return s


@pytest.mark.parametrize("key, named", [("momentum", "method_config.momentum"),
                                        ("mask_ratio", "method_config.mask_ratio"),
                                        ("grad_clip", "grad_clip"), ("min_score", "pairs.min_score"),
                                        ("depth", "encoder_config.depth"), ("crop", "preprocessing.crop")])
def test_resume_refuses_a_changed_run_naming_the_keys(pool, tmp_path, monkeypatch, capsys, key, named):
    out = tmp_path / "run"
    assert _preempted_run(pool, out, monkeypatch, json.dumps(settings(steps=4))) == 75
    assert torch.load(out / "resume.pt", weights_only=True)["step"] == 2
    capsys.readouterr()
    code = main(["pretrain", "--method", "alice", "--encoder", "vit", "--out", str(out),
                 "--data", str(pool), "--settings", json.dumps(_changed(key)), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code != 0 and len(err.splitlines()) == 1, err
    assert "cannot resume" in err and named in err and "delete resume.pt" in err
    assert not (out / "checkpoint.pt").exists()  # nothing was trained with mixed settings
    # the unchanged run resumes and finishes
    assert main(["pretrain", "--method", "alice", "--encoder", "vit", "--out", str(out),
                 "--data", str(pool), "--settings", json.dumps(settings(steps=4)), "--no-progress"]) == 0
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == 4


def test_every_encoder_is_a_choice_of_the_command_line():
    from alice.cli import build_parser
    from alice.models.configs import ENCODERS

    for encoder in ENCODERS:  # the CNN family's networks as well as the transformers
        args = build_parser().parse_args(["pretrain", "--method", "mae", "--encoder", encoder, "--out", "x"])
        assert args.encoder == encoder
