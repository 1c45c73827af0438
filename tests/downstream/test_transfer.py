"""Strict encoder transfer: a matching checkpoint fills every encoder tensor (decoder untouched);
any key, shape or architecture difference fails naming it and leaves the network unchanged; only
weights-only files are read."""

from __future__ import annotations


import pytest
import torch

from alice.downstream.networks import build_segmentation_network
from alice.downstream.transfer import (
    WeightTransferError,
    encoder_of,
    load_encoder_checkpoint,
    save_encoder_checkpoint,
)
from alice.errors import ConfigError, HarnessError, InputError


def _net(settings, encoder_config, seed):
    torch.manual_seed(seed)
    return build_segmentation_network("unetr", 14, settings, encoder_config)


def _snapshot(net):
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def _unchanged(net, before):
    after = net.state_dict()
    return all(torch.equal(after[k], before[k]) for k in before)


@pytest.fixture
def pair(settings, encoder_config):
    """(target network, source network) with different random weights."""
    return _net(settings, encoder_config, 0), _net(settings, encoder_config, 1)


def _save(path, state, encoder_config, **kw):
    save_encoder_checkpoint(path, state, encoder_config, "test_method", **kw)
    return path


def test_matching_checkpoint_loads_every_encoder_tensor(tmp_path, pair, encoder_config, caplog):
    net, source = pair
    before = _snapshot(net)
    src = encoder_of(source, "unetr").state_dict()
    path = _save(tmp_path / "ckpt.pt", src, encoder_config, step=7, preprocessing={"crop": [16, 16, 16]})
    with caplog.at_level("INFO", logger="alice"):
        n = load_encoder_checkpoint(net, "unetr", path, encoder_config)
    assert n == len(src) > 100
    assert f"loaded {n}/{n} encoder tensors from {path}" in caplog.text
    enc = encoder_of(net, "unetr").state_dict()
    assert all(torch.equal(enc[k], src[k]) for k in src)
    assert any(not torch.equal(before["vit." + k], src[k]) for k in src)  # it really changed
    decoder = [k for k in before if not k.startswith("vit.")]
    assert decoder and all(torch.equal(net.state_dict()[k], before[k]) for k in decoder)


def _broken_states(src):
    removed = dict(src)
    del removed["blocks.3.attn.qkv.weight"]
    extra = dict(src, **{"blocks.12.attn.qkv.weight": torch.zeros(3)})
    reshaped = dict(src)
    reshaped["blocks.0.mlp.linear1.weight"] = torch.zeros(7, 24)
    swin_like = {
        "layers1.0.blocks.0.attn.relative_position_bias_table": torch.zeros(343, 3),
        "layers1.0.blocks.0.norm1.weight": torch.zeros(48),
        "patch_embed.proj.weight": torch.zeros(48, 1, 2, 2, 2),
    }
    return {
        "missing": (removed, ["blocks.3.attn.qkv.weight"]),
        "unexpected": (extra, ["blocks.12.attn.qkv.weight"]),
        "shape": (reshaped, ["blocks.0.mlp.linear1.weight", "(7, 24)"]),
        "swin": (swin_like, ["patch_embed.proj.weight", "missing in checkpoint 161 key(s): blocks.0.", "(+151 more)"]),
    }


@pytest.mark.parametrize("case", ["missing", "unexpected", "shape", "swin"])
def test_key_or_shape_mismatch_fails_naming_keys_and_changes_nothing(tmp_path, pair, encoder_config, case):
    net, source = pair
    state, named = _broken_states(encoder_of(source, "unetr").state_dict())[case]
    path = _save(tmp_path / f"{case}.pt", state, encoder_config)
    before = _snapshot(net)
    with pytest.raises(WeightTransferError) as err:
        load_encoder_checkpoint(net, "unetr", path, encoder_config)
    assert isinstance(err.value, HarnessError)
    for text in named:
        assert text in str(err.value)
    assert str(path) in str(err.value)
    assert _unchanged(net, before)


@pytest.mark.parametrize(
    "field, value",
    [("embed_dim", 48), ("heads", 4), ("mlp_ratio", 4.0), ("depth", 6), ("patch", [8, 8, 8]), ("name", "swin")],
)
def test_different_encoder_config_fails_naming_field(tmp_path, pair, encoder_config, field, value):
    net, source = pair
    other = dict(encoder_config, **{field: value})
    path = _save(tmp_path / "other.pt", encoder_of(source, "unetr").state_dict(), other)
    before = _snapshot(net)
    with pytest.raises(WeightTransferError) as err:
        load_encoder_checkpoint(net, "unetr", path, encoder_config)
    msg = str(err.value)
    assert (field in msg and str(value) in msg) if field != "name" else "'swin'" in msg and "vit" in msg
    assert _unchanged(net, before)


def test_position_embeddings_from_another_crop_are_interpolated(tmp_path, settings,
                                                                encoder_config, caplog):
    """The one shape change the loader allows: pretraining crop != fine-tuning crop."""
    net = _net(settings, encoder_config, 0)
    crop = [2 * c for c in settings["crop"]]
    bigger = build_segmentation_network("unetr", 14, dict(settings, crop=crop), encoder_config)
    state = encoder_of(bigger, "unetr").state_dict()
    path = _save(tmp_path / "crop.pt", state, encoder_config, preprocessing={"crop": crop})
    with caplog.at_level("INFO", logger="alice"):
        n = load_encoder_checkpoint(net, "unetr", path, encoder_config)
    loaded = encoder_of(net, "unetr").state_dict()
    assert n == len(loaded)
    key = "patch_embedding.position_embeddings"
    old_grid = [2 * g for g in net.feat_size]
    expected = torch.nn.functional.interpolate(
        state[key].reshape(1, *old_grid, -1).permute(0, 4, 1, 2, 3), size=tuple(net.feat_size),
        mode="trilinear", align_corners=False).permute(0, 2, 3, 4, 1).reshape(1, -1, state[key].shape[-1])
    assert torch.allclose(loaded[key], expected)
    assert all(torch.equal(loaded[k], state[k]) for k in loaded if k != key)
    assert "interpolated patch_embedding.position_embeddings" in caplog.text


def test_other_crop_without_recorded_crop_fails(tmp_path, settings, encoder_config):
    net = _net(settings, encoder_config, 0)
    crop = [2 * c for c in settings["crop"]]
    bigger = build_segmentation_network("unetr", 14, dict(settings, crop=crop), encoder_config)
    path = _save(tmp_path / "crop.pt", encoder_of(bigger, "unetr").state_dict(), encoder_config)
    before = _snapshot(net)
    with pytest.raises(WeightTransferError, match="crops differ") as err:
        load_encoder_checkpoint(net, "unetr", path, encoder_config)
    assert "patch_embedding.position_embeddings" in str(err.value)
    assert _unchanged(net, before)


class Payload:
    """An arbitrary object: anything that is not tensors/containers must not be unpickled."""


def test_pickled_object_is_refused(tmp_path, pair, encoder_config):
    net, source = pair

    path = tmp_path / "evil.pt"
    torch.save({"encoder": encoder_of(source, "unetr").state_dict(), "encoder_config": encoder_config,
                "method": "x", "extra": Payload()}, path)
    before = _snapshot(net)
    with pytest.raises(InputError, match="weights-only"):
        load_encoder_checkpoint(net, "unetr", path, encoder_config)
    assert _unchanged(net, before)


def test_bad_files_are_input_errors(tmp_path, pair, encoder_config):
    net, source = pair
    with pytest.raises(InputError, match="not found"):
        load_encoder_checkpoint(net, "unetr", tmp_path / "nope.pt", encoder_config)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="garbage.pt"):
        load_encoder_checkpoint(net, "unetr", garbage, encoder_config)
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(InputError, match="must be a dict"):
        load_encoder_checkpoint(net, "unetr", tmp_path / "list.pt", encoder_config)
    torch.save({"encoder": encoder_of(source, "unetr").state_dict()}, tmp_path / "partial.pt")
    with pytest.raises(InputError, match="encoder_config"):
        load_encoder_checkpoint(net, "unetr", tmp_path / "partial.pt", encoder_config)


def test_network_config_errors(settings, encoder_config):
    with pytest.raises(ConfigError, match="pretrain.encoders.vit.depth"):
        build_segmentation_network("unetr", 14, settings, dict(encoder_config, depth=6))
    with pytest.raises(ConfigError, match="pretrain.encoders.vit.patch"):
        build_segmentation_network("unetr", 14, settings, dict(encoder_config, patch=[8, 8, 8]))
    with pytest.raises(ConfigError, match="known: unetr"):
        build_segmentation_network("swin_unetrr", 14, settings, encoder_config)
    with pytest.raises(ConfigError, match="crop"):
        build_segmentation_network("unetr", 14, dict(settings, crop=[24, 16, 16]), encoder_config)
    net = build_segmentation_network("unetr", 14, settings, encoder_config)
    assert net.vit.patch_embedding.position_embeddings.shape == (1, 1, 24)
    assert net.vit.blocks[0].mlp.linear1.out_features == 48  # embed_dim * mlp_ratio


def test_unfinished_pretraining_state_is_refused_unless_allowed(tmp_path, tiny_data, dx, capsys):
    """resume.pt ("finished": False) is a pretraining run still under way: `alice finetune --init`
    refuses it with one line naming the file; --allow-unfinished takes it anyway."""
    import json

    from alice.cli import main

    source = _net(dx.SETTINGS, dx.ENCODER, 1)
    resume = tmp_path / "resume.pt"
    save_encoder_checkpoint(resume, encoder_of(source, "unetr").state_dict(), dx.ENCODER, "alice",
                            step=3, extra={"finished": False})
    payload = json.dumps({"finetune": dict(dx.SETTINGS, optim=dict(dx.SETTINGS["optim"], epochs=1)),
                          "encoder": dx.ENCODER, "seed": 0, "device": "cpu", "threads": 1})

    def finetune(out, *extra):
        return main(["finetune", "--dataset", "flare22", "--backbone", "unetr", "--method", "alice",
                     "--init", str(resume), "--fold", "0", "--out", str(out), "--data",
                     str(tiny_data), "--settings", payload, "--no-progress", *extra])

    assert finetune(tmp_path / "refused") == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and str(resume) in err[0] and "unfinished pretraining state" in err[0]
    assert not (tmp_path / "refused" / "model.pt").exists()
    with pytest.raises(InputError, match="checkpoint.pt"):
        load_encoder_checkpoint(_net(dx.SETTINGS, dx.ENCODER, 0), "unetr", resume, dx.ENCODER)

    assert finetune(tmp_path / "allowed", "--allow-unfinished") == 0
    assert (tmp_path / "allowed" / "model.pt").is_file()
