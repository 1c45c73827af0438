"""CMAE (baselines/cmae.py): the pixel-shifted target view and the wiring of L = L_r + λ_c·L_c."""

from __future__ import annotations

import pytest
import torch

from alice.ssl.augment import MaeAugmentConfig
from alice.ssl.registry import build_method

pytestmark = pytest.mark.usefixtures("one_thread")

VIT = {"name": "vit", "embed_dim": 24, "depth": 2, "heads": 2, "mlp_ratio": 2, "patch": [16, 16, 16]}
CROP = [32, 32, 16]
SMALL = {"decoder": {"dim": 16, "depth": 1, "heads": 2}, "feature_decoder": {"dim": 16, "depth": 1, "heads": 2},
         "head": {"hidden_dim": 32, "bottleneck_dim": 16}, "predictor_hidden_dim": 32, "mask_ratio": 0.5}


def test_the_target_view_is_the_source_view_moved_by_whole_voxels():
    from baselines.cmae import pixel_shift_views

    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 1, 40, 32, 24, generator=g)       # noise: any resampling mismatch shows
    config = MaeAugmentConfig(scale_range=(0.3, 0.8), flip_prob=0.5, flip_axes=(0, 1, 2))
    source, target, shift = pixel_shift_views(x, config, 0.15, generator=g)
    limit = torch.tensor([6, 4, 3])                       # ⌊0.15 · (40, 32, 24)⌋
    assert (shift.abs() <= limit).all() and (shift != 0).any()
    for b in range(x.shape[0]):
        dx, dy, dz = shift[b].tolist()
        region = tuple(slice(max(0, -d), min(n, n - d)) for d, n in zip((dx, dy, dz), x.shape[2:]))
        moved = tuple(slice(s.start + d, s.stop + d) for s, d in zip(region, (dx, dy, dz)))
        torch.testing.assert_close(target[b, 0][region], source[b, 0][moved], atol=1e-4, rtol=0)
        if (dx, dy, dz) != (0, 0, 0):
            assert not torch.allclose(target[b], source[b], atol=1e-2)
    # the source view is MAE's augmentation (a resampled sub-box), not the crop itself
    assert not torch.allclose(source, x, atol=1e-2)


def test_loss_is_reconstruction_plus_weighted_contrast_and_the_feature_decoder_learns_from_contrast_only():
    torch.manual_seed(0)
    x = {"x": torch.randn(4, 1, *CROP)}
    method = build_method("cmae", {**SMALL, "contrastive_weight": 0.5}, VIT, CROP).train()
    out = method(x)
    torch.testing.assert_close(out["loss"].detach(), out["l_r"] + 0.5 * out["l_c"])
    assert 0.0 < float(out["l_c"])
    out["loss"].backward()
    assert all(p.grad is None for p in method.target_encoder.parameters())
    assert all(p.grad is None for p in method.target_projector.parameters())
    for module in (method.feature_decoder, method.projector, method.predictor, method.encoder):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())

    method.zero_grad(set_to_none=True)
    method.contrastive_weight = 0.0                        # L = L_r: MAE alone
    method(x)["loss"].backward()
    for module in (method.feature_decoder, method.projector, method.predictor):
        assert all(p.grad is None or p.grad.abs().sum() == 0 for p in module.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in method.decoder.parameters())
