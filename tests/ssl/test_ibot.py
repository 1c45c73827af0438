"""iBOT (baselines/ibot.py): the masked-token encoder hides what it masks, L_MIM is taken on the
masked tokens only, and the masks follow iBOT's prediction ratio."""

from __future__ import annotations

import math

import pytest
import torch

from alice.ssl.encoder import build_encoder
from alice.ssl.token_masking import MaskTokenEncoder, sample_unit_masks
from baselines.ibot import IBOT, mim_loss

pytestmark = pytest.mark.usefixtures("one_thread")

CROP = (32, 32, 16)
VIT = {"name": "vit", "embed_dim": 24, "depth": 2, "heads": 2, "mlp_ratio": 2, "patch": 8}  # 4x4x2 = 32 units
# Swin: non-overlapping patch embedding, so a masked unit's voxels reach no other unit (nnFormer's
# overlapping 3³ embedding convolutions let a unit's border voxels into its neighbours' cells)
SWIN = ({"name": "swin", "embed_dim": 12, "depths": [2, 1, 1, 1], "heads": [3, 6, 12, 24], "window": [4, 4, 2],
         "mlp_ratio": 2}, (64, 32, 32))


@pytest.mark.parametrize("config, crop", [(VIT, CROP), SWIN], ids=["vit", "swin"])
def test_masked_units_are_invisible_and_every_token_comes_out(config, crop):
    torch.manual_seed(0)
    inner = build_encoder(config, crop).eval()
    enc = MaskTokenEncoder(inner).eval()
    x = torch.randn(1, 1, *crop)
    n = enc.num_patches
    mask = torch.zeros(1, n, dtype=torch.bool)
    mask[0, 0] = True
    with torch.no_grad():
        out = enc(x, mask)
        assert out.shape == (1, n, enc.embed_dim)
        # unmasked: the same as the harness's encoder with nothing masked
        torch.testing.assert_close(enc(x), inner(x, 0.0)[0])
        # unit 0 (the first unit of the (x, y, z) raster) changed: no output changes when it is masked
        y = x.clone()
        ux, uy, uz = (c // g for c, g in zip(crop, inner.grid))
        y[..., :ux, :uy, :uz] += 5.0
        torch.testing.assert_close(enc(y, mask), out)
        assert not torch.allclose(enc(y), enc(x))
    assert not any("mask_token" in k for k in enc.transferable.state_dict())


def test_mim_loss_counts_masked_tokens_only():
    g = torch.Generator().manual_seed(0)
    b, n, k = 3, 5, 7
    teacher = torch.randn(b, n, k, generator=g)
    student = torch.randn(b, n, k, generator=g, requires_grad=True)
    mask = torch.zeros(b, n, dtype=torch.bool)
    mask[0, :2] = True
    mask[1, 4] = True  # image 2: nothing masked, contributes 0
    loss = mim_loss(student, teacher, torch.zeros(k), mask, 0.1, 0.04)
    loss.backward()
    assert (student.grad[~mask] == 0).all() and (student.grad[mask] != 0).any()
    # uniform student: the cross-entropy is log K on every masked token, whatever the teacher
    uniform = mim_loss(torch.zeros(b, n, k), teacher, torch.zeros(k), mask, 0.1, 0.04)
    torch.testing.assert_close(uniform, torch.tensor(math.log(k) * 2 / 3))


def test_prediction_ratio_and_a_step_of_the_objective():
    torch.manual_seed(0)
    masks = sample_unit_masks(4000, 18, [0.1, 0.5], 0.5)
    counts = masks.sum(1)
    assert abs((counts == 0).float().mean().item() - 0.5) < 0.03  # half the images unmasked
    assert counts[counts > 0].min() >= 2 and counts.max() <= 9    # round(0.1·18) .. round(0.5·18)
    assert (sample_unit_masks(50, 2, 0.3, 1.0).sum(1) == 1).all()  # at least one masked, one kept

    model = IBOT(VIT, CROP, head={"hidden_dim": 32, "bottleneck_dim": 16}, prototypes=32, mask_ratio=0.5,
                 mask_probability=1.0, views={"global_views": 2, "local_views": 1})
    views = torch.randn(3, 2, 1, *CROP)
    out = model({"views": views})
    assert (model.last_mask.sum(-1) == 16).all()  # every global view masked at r = 0.5
    torch.testing.assert_close(out["loss"], out["l_cls"] + out["l_mim"])
    out["loss"].backward()
    assert model.encoder.mask_token.grad is not None and model.encoder.mask_token.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.teacher_encoder.parameters())
    assert model.center_patch.abs().sum() > 0 and model.center.abs().sum() > 0  # both centres moved
