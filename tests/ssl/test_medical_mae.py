"""Medical MAE (baselines/medical_mae.py): MAE with the release's recipe — fixed 3-D sin-cos
position embeddings (in raster order, frozen, carried to UNETR by the checkpoint), the 384-d
8-block decoder, and an augmentation that only flips."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from alice.ssl.augment import mae_augment
from baselines.medical_mae import sincos_3d

pytestmark = pytest.mark.usefixtures("one_thread")

ENC = {"name": "vit", "embed_dim": 24, "depth": 2, "heads": 2, "mlp_ratio": 2, "patch": [8, 8, 8]}
CROP = [32, 24, 16]  # grid 4 x 3 x 2


def _build(config):
    from alice.ssl.registry import build_method

    torch.manual_seed(0)
    return build_method("medical_mae", config, ENC, CROP)


def test_sincos_table_is_raster_ordered_frozen_and_transferred():
    table = sincos_3d((4, 3, 2), 24)[0]  # 4 frequencies per axis, ω_0 = 1
    for i, (x, y, z) in enumerate(itertools.product(range(4), range(3), range(2))):  # z fastest
        assert table[i, 0].item() == pytest.approx(math.sin(x))
        assert table[i, 4].item() == pytest.approx(math.cos(x))
        assert table[i, 8].item() == pytest.approx(math.sin(y))
        assert table[i, 20].item() == pytest.approx(math.cos(z))
    assert sincos_3d((2, 2, 2), 16)[0, :, 12:].abs().sum() == 0  # 16 = 6·2 + 4 padded with zeros

    method = _build({"decoder": {"dim": 12, "depth": 1, "heads": 2}})
    pos = method.encoder.patch_embedding.position_embeddings
    assert torch.equal(pos.detach(), table.unsqueeze(0)) and not pos.requires_grad
    dec = method.decoder.pos_embed
    assert torch.equal(dec.detach(), sincos_3d((4, 3, 2), 12)) and not dec.requires_grad
    assert torch.equal(method.encoder_state_dict()["patch_embedding.position_embeddings"], table.unsqueeze(0))
    # a training step moves the rest, never the fixed table
    opt = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.1)
    method({"x": torch.randn(2, 1, *CROP)})["loss"].backward()
    opt.step()
    assert torch.equal(pos.detach(), table.unsqueeze(0))
    learnable = _build({"decoder": {"dim": 12, "depth": 1, "heads": 2}, "pos_embed": "learnable"})
    assert learnable.encoder.patch_embedding.position_embeddings.requires_grad


def test_recipe_defaults_decoder_and_flip_only_augmentation():
    method = _build({})
    assert (method.decoder.dec_dim, len(method.decoder.blocks)) == (384, 8)
    assert method.norm_pix_loss and method.mask_ratio == 0.75
    assert method.augment.flip_axes == (0, 1, 2) and method.augment.flip_prob == 0.2
    x = torch.randn(6, 1, 8, 6, 4)
    out = mae_augment(x, torch.Generator().manual_seed(0), method.augment)
    flips = [x.flip(tuple(2 + a for a in axes)) if axes else x
             for r in range(4) for axes in itertools.combinations(range(3), r)]
    for i in range(x.shape[0]):  # every sample is the crop itself or flips of it: no resampling
        assert any(torch.allclose(out[i], f[i], atol=1e-5) for f in flips)
