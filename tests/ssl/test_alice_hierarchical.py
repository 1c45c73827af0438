"""Alice with the hierarchical encoders (SimMIM masking, alice.models.masked): the masked pretraining
step of Swin and nnFormer — finite loss, gradients reach the encoder and the mask token, the masked
fraction, the mask token at the patch-embedding level, ℓ_r on masked units only — and the
encoder state dict that transfers."""

import math

import pytest
import torch

from alice.errors import ConfigError
from alice.ssl.alice import AliceModel
from alice.ssl.registry import build_method

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny networks, busy shared cores

ENCODERS = {
    "swin": ({"name": "swin", "embed_dim": 12, "depths": [2, 1, 1, 1], "heads": [3, 6, 12, 24],
              "window": [4, 4, 2], "mlp_ratio": 2}, (64, 64, 32)),
    "nnformer": ({"name": "nnformer", "embed_dim": 8, "depths": [2, 2, 1], "heads": [1, 2, 4],
                  "window": [4, 4, 2], "patch": [2, 2, 2], "mlp_ratio": 2, "global_stages": 1}, (32, 32, 16)),
}
ARGS = dict(decoder={"dim": 16, "depth": 1, "heads": 2}, head={"hidden_dim": 32, "bottleneck_dim": 16},
            casa_dim=16)



def make(name, **kw):
    torch.manual_seed(0)
    enc, crop = ENCODERS[name]
    return AliceModel(enc, crop, **{**ARGS, "mask_ratio": 0.75, **kw})


def batch(name, b=None, seed=0):
    b = b or (1 if name == "swin" else 2)  # Swin's stage 1 is 16k tokens a crop: keep the test short
    crop = ENCODERS[name][1]
    g = torch.Generator().manual_seed(seed)
    return {"Q": torch.rand(b, 1, *crop, generator=g), "K": torch.rand(b, 1, *crop, generator=g)}


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("name", ["swin", "nnformer"])
def test_masked_step_loss_gradients_and_mask(name):
    m = make(name)
    n = m.encoder.num_patches
    stride = m.encoder.backbone.stride
    assert n == math.prod(c // s for c, s in zip(ENCODERS[name][1], stride)) and n >= 4
    embedded = []
    stages = m.encoder.backbone.stages
    m.encoder.backbone.stages = lambda e: embedded.append(e.detach()) or stages(e)  # spy on the embedding map
    out = m(batch(name), generator=gen())
    assert all(torch.isfinite(out[k]) and out[k] > 0 for k in ("loss", "l_r", "l_dv", "l_st"))
    torch.testing.assert_close(out["loss"], out["l_r"] + out["l_dv"] + out["l_st"])
    mask_q, mask_k = m.last_masks
    n_masked = n - int(n * (1 - 0.75))
    bsz = mask_q.shape[0]
    assert mask_q.shape == (bsz, n) and (mask_q.sum(1) == n_masked).all() and (mask_k.sum(1) == n_masked).all()
    # online Q, online K, target Q, target K; the online views carry the mask token on masked units only
    e_q = embedded[0]
    token = m.encoder.mask_token.detach()[0, :, 0, 0, 0]
    cells = [s // p for s, p in zip(stride, m.encoder.backbone.patch)]
    for b in range(bsz):
        for unit in range(n):
            gx, gy, gz = m.encoder.grid
            ix, iy, iz = unit // (gy * gz), (unit // gz) % gy, unit % gz
            region = e_q[b, :, ix * cells[0]:(ix + 1) * cells[0], iy * cells[1]:(iy + 1) * cells[1],
                         iz * cells[2]:(iz + 1) * cells[2]]
            is_token = torch.allclose(region, token[:, None, None, None].expand_as(region))
            assert is_token == bool(mask_q[b, unit]), (b, unit)
    out["loss"].backward()
    assert m.encoder.mask_token.grad is not None and m.encoder.mask_token.grad.abs().sum() > 0
    for pname, p in m.encoder.backbone.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, pname
    for mod in (m.decoder, m.phi, m.casa):
        for pname, p in mod.named_parameters():
            if p.requires_grad:
                assert p.grad is not None and p.grad.abs().sum() > 0, pname
    assert all(p.grad is None and not p.requires_grad for p in m.target_encoder.parameters())
    assert m.decoder.mask_token is None  # the encoder already has every position


@pytest.mark.parametrize("name", ["swin", "nnformer"])
def test_l_r_counts_masked_units_only(name):
    m = make(name, objectives=("mim",))
    preds = []
    orig = m.decoder.forward

    def keep(tokens, ids):
        pred, h = orig(tokens, ids)
        pred.retain_grad()
        preds.append(pred)
        return pred, h

    m.decoder.forward = keep
    out = m(batch(name), generator=gen())
    out["loss"].backward()
    for pred, mask in zip(preds, m.last_masks):
        assert pred.shape[1] == m.encoder.num_patches and pred.shape[2] == math.prod(m.encoder.unit)
        assert (pred.grad[~mask] == 0).all() and (pred.grad[mask] != 0).any()
    # deterministic for a generator
    torch.testing.assert_close(m(batch(name), generator=gen())["l_r"], out["l_r"])


@pytest.mark.parametrize("name, backbone, module", [("swin", "swin_unetr", "swinViT"),
                                                    ("nnformer", "nnformer", "encoder")])
def test_encoder_state_dict_is_the_segmentation_networks_encoder(name, backbone, module):
    from alice.downstream.networks import build_segmentation_network, encoder_of

    m = make(name)
    state = m.encoder_state_dict()
    assert not any("mask_token" in k for k in state)
    enc, crop = ENCODERS[name]
    net = build_segmentation_network(backbone, 14, {"crop": list(crop), "feature_size": enc["embed_dim"]}, enc)
    target = encoder_of(net, backbone)
    assert target is getattr(net, module)
    assert list(state) == list(target.state_dict())
    target.load_state_dict(state, strict=True)


def test_target_masking_and_registry():
    m = make("nnformer", target_mask_ratio=0.5)
    out = m(batch("nnformer"), generator=gen())
    assert torch.isfinite(out["loss"])
    enc, crop = ENCODERS["nnformer"]
    built = build_method("alice", ARGS, enc, crop)
    assert isinstance(built, AliceModel) and not built.find_unused_parameters
    with pytest.raises(ConfigError, match=r"pretrain\.crop\.nnformer"):
        build_method("alice", ARGS, enc, (36, 32, 16))
    with pytest.raises(ConfigError, match=r"pretrain\.crop\.swin"):
        build_method("alice", ARGS, ENCODERS["swin"][0], (48, 48, 32))
    with pytest.raises(ConfigError, match="pretrains the vit, swin, nnformer encoder"):
        build_method("alice", ARGS, dict(enc, name="resnet"), crop)
