"""Chaitanya et al. (baselines/chaitanya.py): the global loss (Eq. 1–2) is NT-Xent for two views and
keeps a group's other members out of the denominator; the local loss (Eq. 3–4) contrasts regions at
the same place of two intensity-only views, which move no voxel; stage 1 trains the encoder with the
global loss, stage 2 the decoder with the local loss and the encoder frozen; bad keys are
ConfigErrors naming them."""

from __future__ import annotations

import math

import pytest
import torch

from alice.errors import ConfigError
from alice.ssl.losses import nt_xent
from alice.ssl.registry import build_method
from baselines.chaitanya import (brightness_contrast, global_contrastive, local_contrastive, region_embeddings,
                                 region_grid)

pytestmark = pytest.mark.usefixtures("one_thread")

UNET = {"name": "unet", "channels": [4, 8, 16], "res_units": 1, "features": 4}
CROP = [32, 32, 16]
SMALL = {"global_head": {"hidden_dim": 16, "dim": 8}, "local_head": {"hidden_dim": 8, "dim": 8},
         "decoder_blocks": 2, "regions": 3}


def test_global_loss_is_nt_xent_for_two_views_and_leaves_a_groups_members_out_of_its_negatives():
    torch.manual_seed(0)
    z = torch.randn(10, 6)
    groups = torch.arange(5).repeat(2)                  # G^R: the two views of each crop
    assert global_contrastive(z, groups, 0.1).item() == pytest.approx(nt_xent(z[:5], z[5:], 0.1).item(), rel=1e-5)
    # orthonormal crops, identical views: the positive at cosine 1, the 2B − 2 others at 0
    t = 0.5
    e = torch.eye(3).repeat(2, 1)
    assert global_contrastive(e, torch.arange(3).repeat(2), t).item() == pytest.approx(
        -math.log(math.exp(1 / t) / (math.exp(1 / t) + 4.0)), rel=1e-5)
    # G^D-style groups of three alike rows: a pair's third member is no negative, only the other
    # group's three rows (cosine 0) are
    rows = torch.tensor([[1.0, 0.0]] * 3 + [[0.0, 1.0]] * 3)
    assert global_contrastive(rows, torch.tensor([0, 0, 0, 1, 1, 1]), t).item() == pytest.approx(
        -math.log(math.exp(1 / t) / (math.exp(1 / t) + 3.0)), rel=1e-5)
    with pytest.raises(ValueError, match="no positive"):
        global_contrastive(z[:3], torch.arange(3), t)


def test_regions_lie_on_a_grid_and_the_local_loss_contrasts_the_same_place():
    assert region_grid(32, 5, 3).tolist() == [0, 7, 14, 22, 29]   # corners, quarters, centre
    with pytest.raises(ValueError, match="cannot hold"):
        region_grid(2, 3, 3)
    torch.manual_seed(1)
    fmap = torch.randn(2, 4, 12, 10, 8)
    r = region_embeddings(fmap, [3, 2, 2], 3)
    assert r.shape == (2, 12, 4)
    # region (1, 1, 0): starts (5 or 4.5 -> 4, 7, 0); C order over (x, y, z)
    x0 = int(region_grid(12, 3, 3)[1])
    torch.testing.assert_close(r[:, 1 * 4 + 1 * 2 + 0], fmap[:, :, x0:x0 + 3, 7:10, 0:3].mean(dim=(2, 3, 4)))
    # identical views whose regions are orthonormal: Eq. 3 with 2R − 2 negatives at cosine 0
    t = 0.5
    e = torch.eye(5).unsqueeze(0).repeat(3, 1, 1)           # B = 3 images of R = 5 regions
    expected = -math.log(math.exp(1 / t) / (math.exp(1 / t) + 8.0))
    assert local_contrastive(e, e.clone(), t).item() == pytest.approx(expected, rel=1e-5)
    # the other view's regions in another order: positives no longer at the same place
    assert local_contrastive(e, e[:, [1, 2, 3, 4, 0]], t).item() > expected + 1.0


def test_local_views_change_intensity_only():
    g = torch.Generator().manual_seed(2)
    x = torch.rand(3, 1, 8, 8, 6, generator=g)
    y = brightness_contrast(x, 0.3, [0.7, 1.3], [0.0, 1.5], generator=g)
    z = brightness_contrast(x, 0.3, [0.7, 1.3], [0.0, 1.5], generator=g)
    assert not torch.allclose(y, z) and not torch.allclose(y, x)
    for view in (y, z):
        assert view.min() >= 0.0 and view.max() <= 1.5
        for b in range(3):   # a monotone map of each voxel's value: no voxel moves
            order = x[b].flatten().argsort()
            assert (view[b].flatten()[order].diff() >= -1e-6).all()


def test_stage_one_trains_the_encoder_stage_two_the_decoder_with_the_encoder_frozen():
    torch.manual_seed(3)
    method = build_method("chaitanya", SMALL, UNET, CROP).train()
    batch = {"x": torch.rand(3, 1, *CROP)}
    enc = set(method.body.encoder_state())
    decoder = [p for n, p in method.body.named_parameters() if n not in enc]
    encoder = method.encoder_parameters()
    assert encoder and decoder

    def grads(params):
        return [p.grad is not None and p.grad.abs().sum() > 0 for p in params]

    out = method(batch)
    assert out["stage"].item() == 1 and out["loss"].item() == pytest.approx(out["l_global"].item())
    assert 0.0 < out["spread"].item() and 0.0 < out["spread_local"].item()
    out["loss"].backward()
    assert all(grads(encoder)) and all(grads(method.global_head.parameters()))
    assert not any(grads(decoder)) and not any(grads(method.local_head.parameters()))

    method.zero_grad(set_to_none=True)
    method.after_step(4, 10)                          # 5 of 10 steps done: global_fraction 0.5 reached
    assert method.stage() == 2
    out = method(batch)
    assert out["stage"].item() == 2 and out["loss"].item() == pytest.approx(out["l_local"].item())
    out["loss"].backward()
    assert all(not p.requires_grad and p.grad is None for p in encoder)
    assert any(grads(decoder)) and all(grads(method.local_head.parameters()))
    assert not any(grads(method.global_head.parameters()))
    # the stage is part of the state a resumed run loads
    state = method.state_dict()
    assert int(state["steps_done"]) == 5 and int(state["total_steps"]) == 10
    fresh = build_method("chaitanya", SMALL, UNET, CROP)
    fresh.load_state_dict(state)
    assert fresh.stage() == 2

    joint = build_method("chaitanya", {**SMALL, "schedule": "joint"}, UNET, CROP)
    out = joint(batch)
    assert out["stage"].item() == 0
    assert out["loss"].item() == pytest.approx(out["l_global"].item() + out["l_local"].item(), rel=1e-5)


@pytest.mark.parametrize("config, key, message", [
    ({"temprature": 0.1}, "pretrain.methods.chaitanya.temprature", "unknown key"),
    ({"global_strategy": "gd"}, "pretrain.methods.chaitanya", "slice axis"),
    ({"decoder_blocks": 3}, "pretrain.methods.chaitanya", "decoder_blocks must be in"),
    ({"local_augment": {"gamma": 1.0}}, "pretrain.methods.chaitanya", "local_augment"),
    ({"global_augment": {"angle": 3}}, "pretrain.methods.chaitanya", "global_augment"),
    ({"schedule": "alternate"}, "pretrain.methods.chaitanya", "schedule"),
])
def test_bad_keys_are_config_errors_naming_them(config, key, message):
    with pytest.raises(ConfigError, match=message) as info:
        build_method("chaitanya", {**SMALL, **config}, UNET, CROP)
    assert info.value.key == key
