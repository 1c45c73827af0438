"""SAM as a pretraining method (baselines/sam.py): the two views are cut from the crop with exact
voxel correspondence at the points, the embedding maps are unit vectors at the fine and coarse
strides, the loss is alice.anatomy's with the method's negatives (its value on constant maps is
log(1 + the number of negatives) at each level), a few steps on fixed crops lower it, and bad
keys are ConfigErrors naming them."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from alice.anatomy.grid import cell_centre
from alice.errors import ConfigError
from alice.ssl.registry import build_method

pytestmark = pytest.mark.usefixtures("one_thread")

UNET3D = {"name": "unet3d", "widths": [4, 4, 8, 8, 16, 4]}
CROP = [32, 32, 16]
SPACING = [6.0, 6.0, 5.0]
SMALL = {"embed_dim": 8, "spacing": SPACING, "pairs": {"points": 16}, "fine_top": 32, "fine_negatives": 16}
NO_INTENSITY = {"intensity_scale": 0.0, "intensity_shift": 0.0, "noise_sd": [0.0, 0.0], "blur_prob": 0.0}


def ramp(shape) -> torch.Tensor:
    i, j, k = torch.meshgrid(*[torch.arange(n, dtype=torch.float32) for n in shape], indexing="ij")
    return 0.2 + 0.01 * i + 0.007 * j + 0.013 * k


def test_views_are_cut_from_the_crop_and_the_points_correspond_exactly():
    method = build_method("sam", {**SMALL, "pairs": {"points": 16, **NO_INTENSITY}}, UNET3D, CROP)
    crop = ramp(CROP)
    x = torch.stack([crop, crop + 0.1])[:, None]                  # B = 2 crops
    pairs = method.pairs(x, [np.asarray(SPACING)] * 2, np.random.default_rng(0))
    assert len(pairs) == 2
    fs, cs = 2, 8
    for b, pair in enumerate(pairs):
        pts = pair.points_mm / np.asarray(SPACING)                # crop voxels
        assert pair.view_a.shape == pair.view_b.shape == (1, *CROP)
        for geom, fine, coarse, view in ((pair.geom_a, pair.fine_a, pair.coarse_a, pair.view_a),
                                         (pair.geom_b, pair.fine_b, pair.coarse_b, pair.view_b)):
            zoom = float(np.asarray(geom.zoom).reshape(-1)[0])
            assert 1.0 <= zoom <= 1.5                             # default zoom_range: inside the crop
            assert (geom.origin >= -1e-6).all()
            assert (geom.to_volume(np.asarray(CROP) - 1) <= np.asarray(CROP) - 1 + 1e-6).all()
            # the point's fine and coarse cells sit on the same crop voxel
            np.testing.assert_allclose(geom.to_volume(cell_centre(fine, fs)), pts, atol=1e-6)
            np.testing.assert_allclose(geom.to_volume(cell_centre(coarse, cs)), pts, atol=1e-6)
            # and the view shows the crop there: a linear ramp resamples exactly
            v = np.indices(CROP).reshape(3, -1).T[::97]
            u = torch.as_tensor(geom.to_volume(v), dtype=torch.float32)
            expected = 0.2 + 0.1 * b + 0.01 * u[:, 0] + 0.007 * u[:, 1] + 0.013 * u[:, 2]
            torch.testing.assert_close(view[0][tuple(torch.as_tensor(v).T)], expected, atol=1e-5, rtol=0)
        assert not np.allclose(pair.geom_a.origin, pair.geom_b.origin) or pair.geom_a.zoom != pair.geom_b.zoom


def test_maps_are_unit_embeddings_at_the_fine_and_coarse_strides():
    torch.manual_seed(0)
    views = torch.rand(3, 1, *CROP)
    for fine_stride in (1, 2):
        method = build_method("sam", {**SMALL, "fine_stride": fine_stride}, UNET3D, CROP)
        fine, coarse = method.embed(views)
        assert fine.shape == (3, 8, *[c // fine_stride for c in CROP])
        assert coarse.shape == (3, 8, *[c // 8 for c in CROP])
        for m in (fine, coarse):
            torch.testing.assert_close(m.norm(dim=1), torch.ones_like(m[:, 0]))
    method = build_method("sam", {**SMALL, "coarse_stride": 4}, UNET3D, CROP)
    assert method.embed(views)[1].shape[2:] == (8, 8, 4)


@pytest.mark.parametrize("other_volumes", [True, False])
def test_constant_maps_score_log_one_plus_the_negatives(other_volumes):
    # every cell alike: each InfoNCE term is log(1 + K) for its K valid negatives
    k_fine = 16
    config = {**SMALL, "fine_ignore_mm": 0.0, "coarse_ignore_mm": 0.0, "fine_random_negatives": 0,
              "fine_negatives": k_fine, "fine_top": 64, "coarse_other_volumes": other_volumes}
    method = build_method("sam", config, UNET3D, CROP)
    b = 3
    pairs = method.pairs(torch.rand(b, 1, *CROP), [np.asarray(SPACING)] * b, np.random.default_rng(1))
    unit = torch.zeros(8)
    unit[0] = 1.0
    fine = unit.view(1, 8, 1, 1, 1).expand(2 * b, 8, 16, 16, 8).clone().requires_grad_(True)
    coarse = unit.view(1, 8, 1, 1, 1).expand(2 * b, 8, 4, 4, 2).clone().requires_grad_(True)
    loss, terms = method.loss(fine, coarse, pairs, torch.Generator().manual_seed(0))
    cells = 4 * 4 * 2
    k_coarse = cells + (2 * b - 2) * cells if other_volumes else cells
    assert terms["fine"] == pytest.approx(math.log(1 + k_fine), rel=1e-5)
    assert terms["coarse"] == pytest.approx(math.log(1 + k_coarse), rel=1e-5)
    assert loss.item() == pytest.approx(terms["fine"] + terms["coarse"], rel=1e-6)


def test_a_few_steps_on_fixed_crops_lower_the_loss_and_spread_the_cells():
    torch.manual_seed(2)
    method = build_method("sam", {**SMALL, "temperature": 0.1, "fine_random_negatives": 16}, UNET3D, CROP).train()
    opt = torch.optim.AdamW(method.parameters(), lr=3e-3)
    crops = ramp(CROP)[None, None] * (1.0 + torch.rand(2, 1, *CROP))   # structured, with texture
    losses = []
    for step in range(12):
        torch.manual_seed(100 + step % 3)                                 # three fixed pair draws
        out = method({"x": crops})
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(out["loss"].item())
        assert set(out) == {"loss", "l_fine", "l_coarse", "spread", "spread_fine"}
        assert out["loss"].item() == pytest.approx(out["l_fine"].item() + out["l_coarse"].item(), rel=1e-5)
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.2
    assert out["spread_fine"].item() > 0.2


def test_the_crop_spacing_comes_from_the_config_or_the_batch():
    method = build_method("sam", {**SMALL, "spacing": None}, UNET3D, CROP)
    with pytest.raises(ConfigError) as info:
        method({"x": torch.rand(2, 1, *CROP)})
    assert info.value.key == "pretrain.methods.sam.spacing"
    out = method({"x": torch.rand(2, 1, *CROP), "spacing": torch.tensor([SPACING, SPACING])})
    assert math.isfinite(out["loss"].item())


@pytest.mark.parametrize("config, key, message", [
    ({"embed_dimension": 8}, "pretrain.methods.sam.embed_dimension", "unknown key"),
    ({"pairs": {"zoom": [1, 2]}}, "pretrain.methods.sam", "pairs.pairs: unknown keys"),
    ({"coarse_stride": 16}, "pretrain.methods.sam", "coarse_stride"),
    ({"fine_stride": 3}, "pretrain.methods.sam", "fine_stride"),
    ({"spacing": [6.0, 6.0]}, "pretrain.methods.sam", "spacing"),
    ({"pairs": {"crop": [24, 24, 16]}}, "pretrain.methods.sam.pairs.crop", "multiple"),
])
def test_bad_keys_are_config_errors_naming_them(config, key, message):
    with pytest.raises(ConfigError, match=message) as info:
        build_method("sam", {**SMALL, **config}, UNET3D, CROP)
    assert info.value.key == key
