"""UniMiSS's 3-D branch (baselines/unimiss.py): without its intensity augmentation it is DINO exactly
(the same loss from the same weights and views), with it the two global views get their own
transform sets, and the transforms keep what they claim to keep (gamma: mean and std; contrast:
the range)."""

from __future__ import annotations

import pytest
import torch

from alice.ssl.augment import IntensityAugmentConfig, intensity_augment
from baselines.dino import DINO
from baselines.unimiss import VIEW_INTENSITY, UniMiSS

pytestmark = pytest.mark.usefixtures("one_thread")

VIT = {"name": "vit", "embed_dim": 24, "depth": 2, "heads": 2, "mlp_ratio": 2, "patch": [16, 16, 16]}
CROP = [32, 32, 16]
SMALL = {"head": {"hidden_dim": 32, "bottleneck_dim": 16}, "prototypes": 64,
         "views": {"global_views": 2, "local_views": 1}}
OFF = {name: 0.0 for name in ("noise_prob", "blur_prob", "brightness_prob", "shift_prob", "contrast_prob",
                              "gamma_prob")}


def test_without_its_augmentation_it_is_dino():
    torch.manual_seed(0)
    dino = DINO(VIT, CROP, **SMALL)
    unimiss = UniMiSS(VIT, CROP, intensity_augment=False, **SMALL)
    unimiss.load_state_dict(dino.state_dict())
    views = torch.rand(3, 2, 1, *CROP)
    a, b = dino({"views": views}), unimiss({"views": views})
    assert set(a) == set(b)
    for key in a:
        assert torch.allclose(a[key], b[key]), key
    # with it, the encoder sees other views: the loss moves
    unimiss.intensity_augment = True
    assert not torch.allclose(unimiss({"views": views})["loss"], a["loss"])


def test_each_global_view_gets_its_own_transform_set():
    torch.manual_seed(1)
    method = UniMiSS(VIT, CROP, **SMALL)
    views = torch.rand(3, 2, 1, *CROP)
    torch.manual_seed(5)
    out = method.augment(views)
    torch.manual_seed(5)
    expected = [intensity_augment(views[i], None, VIEW_INTENSITY[i % 2]) for i in range(3)]
    for i in range(3):
        assert torch.equal(out[i], expected[i])
    assert VIEW_INTENSITY[0] != VIEW_INTENSITY[1]


def test_gamma_keeps_mean_and_std_and_contrast_keeps_the_range():
    g = torch.Generator().manual_seed(2)
    x = torch.rand(4, 1, 16, 16, 8) ** 2
    gamma = intensity_augment(x, g, IntensityAugmentConfig(**{**OFF, "gamma_prob": 1.0}))
    assert not torch.allclose(gamma, x)
    assert torch.allclose(gamma.flatten(1).mean(1), x.flatten(1).mean(1), atol=1e-5)
    assert torch.allclose(gamma.flatten(1).std(1), x.flatten(1).std(1), atol=1e-5)
    contrast = intensity_augment(x, g, IntensityAugmentConfig(**{**OFF, "contrast_prob": 1.0}))
    assert not torch.allclose(contrast, x)
    assert (contrast.flatten(1).min(1).values >= x.flatten(1).min(1).values - 1e-6).all()
    assert (contrast.flatten(1).max(1).values <= x.flatten(1).max(1).values + 1e-6).all()
    assert torch.equal(intensity_augment(x, g, IntensityAugmentConfig(**OFF)), x)
