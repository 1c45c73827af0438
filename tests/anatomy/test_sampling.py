import numpy as np
import pytest
import torch
from scipy import ndimage

from alice.anatomy.grid import cell_centre, grid_shape
from alice.anatomy.sampling import (
    PairConfig,
    View,
    cells_mm,
    crop_view,
    hard_negatives,
    place_views,
    random_negatives,
    remap_intensity,
    sample_batch,
    sample_pair,
)
from alice.errors import ConfigError

SPACING = np.array([4.0, 4.0, 5.0])
NO_AUG = {"intensity_scale": 0.0, "intensity_shift": 0.0, "noise_sd": (0.0, 0.0), "blur_prob": 0.0}


def _smooth_volume(shape=(60, 64, 40), seed=0):
    rng = np.random.default_rng(seed)
    img = ndimage.gaussian_filter(rng.random(shape), 3.0)
    img = (img - img.min()) / (img.max() - img.min())
    img[:4] = 0.0  # some air
    return img.astype(np.float32)


def _interp(img, pts):
    return ndimage.map_coordinates(img, np.asarray(pts).T, order=1, mode="grid-constant", cval=0.0)


def test_crop_view_is_the_stated_resampling():
    img = _smooth_volume()
    vol = torch.from_numpy(img)[None, None]
    view = View(np.array([5.3, -2.0, 7.25]), 1.17, (20, 24, 16))
    out = crop_view(vol, view)[0, 0].numpy()
    assert out.shape == (20, 24, 16)
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in view.size], indexing="ij"), -1).reshape(-1, 3)
    expected = _interp(img, view.to_volume(idx)).reshape(view.size)
    assert np.abs(out - expected).max() < 1e-4


def test_positives_are_the_same_physical_point():
    img = _smooth_volume()
    cfg = PairConfig(crop=(24, 24, 16), points=32, **NO_AUG)
    for seed in range(5):
        s = sample_pair(img, SPACING, cfg, 2, 8, np.random.default_rng(seed))
        for geom, fine, coarse in ((s.geom_a, s.fine_a, s.coarse_a), (s.geom_b, s.fine_b, s.coarse_b)):
            assert np.allclose(geom.to_volume(cell_centre(fine, 2)) * SPACING, s.points_mm, atol=1e-6)
            assert np.allclose(geom.to_volume(cell_centre(coarse, 8)) * SPACING, s.points_mm, atol=1e-6)
            # inside the fine grid of both views (no border clamping at the fine level)
            g = np.asarray(grid_shape(cfg.crop, 2))
            assert np.all(fine >= -1e-9) and np.all(fine <= g - 1 + 1e-9)
        # the two views see the same intensity at a point (up to double interpolation)
        va = _interp(s.view_a[0].numpy(), s.geom_a.from_volume(s.points_mm / SPACING))
        vb = _interp(s.view_b[0].numpy(), s.geom_b.from_volume(s.points_mm / SPACING))
        v0 = _interp(img, s.points_mm / SPACING)
        assert np.abs(va - v0).max() < 0.02 and np.abs(vb - v0).max() < 0.02
        assert cfg.zoom_range[0] <= s.geom_a.zoom <= cfg.zoom_range[1]


def test_views_overlap_and_stay_inside():
    cfg = PairConfig(crop=(24, 24, 16), min_overlap=0.5)
    shape = np.array([60, 64, 40])
    for seed in range(50):
        rng = np.random.default_rng(seed)
        a, b = place_views(shape, cfg, rng, centre=rng.random(3) * (shape - 1))
        lo, hi = np.maximum(a.origin, b.origin), np.minimum(a.origin + a.span, b.origin + b.span)
        assert np.all(hi - lo >= 0.5 * np.minimum(a.span, b.span) - 1e-9)
        for v in (a, b):
            assert np.all(v.origin >= -1e-9) and np.all(v.origin + v.span <= shape - 1 + 1e-9)


def test_points_prefer_body_and_sampling_is_deterministic():
    img = np.zeros((60, 64, 40), np.float32)
    img[20:45, 20:50, 10:30] = _smooth_volume((25, 30, 20))[:, :, :] * 0.5 + 0.3
    cfg = PairConfig(crop=(24, 24, 16), points=16)
    s1 = sample_pair(img, SPACING, cfg, 2, 8, np.random.default_rng(7))
    s2 = sample_pair(img, SPACING, cfg, 2, 8, np.random.default_rng(7))
    assert torch.equal(s1.view_a, s2.view_a) and torch.equal(s1.view_b, s2.view_b)
    assert np.array_equal(s1.points_mm, s2.points_mm)
    near = np.rint(s1.points_mm / SPACING).astype(int)
    assert (img[tuple(near.T)] > 0.01).mean() > 0.9
    batch = sample_batch([("a", img, SPACING), ("b", img, SPACING)], 3, cfg, 2, 8, np.random.default_rng(0))
    assert len(batch) == 3 and {p.case_id for p in batch} <= {"a", "b"}


def test_hard_negatives_are_outside_the_ignore_radius():
    gen = torch.Generator().manual_seed(0)
    img = _smooth_volume()
    s = sample_pair(img, SPACING, PairConfig(crop=(24, 24, 16), points=20), 2, 8, np.random.default_rng(3))
    cm = torch.as_tensor(cells_mm(s.geom_b, 2, SPACING))
    dist = torch.cdist(torch.as_tensor(s.points_mm), cm)
    sim = torch.randn(dist.shape, generator=gen)
    sim[dist < 15] += 10.0  # the most similar cells are the near ones: they must be skipped
    idx, valid = hard_negatives(sim, dist, 15.0, top=50, count=10, generator=gen)
    assert idx.shape == (20, 10) and valid.all()
    assert (dist.gather(1, idx) >= 15.0).all()
    # they come from the `top` most similar admissible cells
    masked = sim.masked_fill(dist < 15.0, float("-inf"))
    kth = masked.topk(50, dim=1).values[:, -1:]
    assert (sim.gather(1, idx) >= kth).all()
    # a radius that excludes everything leaves no valid negative
    _, valid = hard_negatives(sim, dist, 1e9, top=50, count=10, generator=gen)
    assert not valid.any()


def test_cells_mm_convention():
    v = View(np.array([2.0, 3.0, 4.0]), 0.8, (8, 8, 8))
    cm = cells_mm(v, 2, SPACING).reshape(4, 4, 4, 3)
    assert np.allclose(cm[1, 2, 3], (v.origin + cell_centre([1, 2, 3], 2) / 0.8) * SPACING)


def test_config_errors():
    with pytest.raises(ConfigError):
        PairConfig.from_dict({"crop": [24, 24]})
    with pytest.raises(ConfigError):
        PairConfig.from_dict({"zoom_range": [1.2, 0.8]})
    with pytest.raises(ConfigError):
        PairConfig.from_dict({"bogus": 1})


def test_per_axis_zoom_and_extra_view_keep_exact_correspondence():
    img = _smooth_volume()
    cfg = PairConfig(crop=(24, 24, 16), points=16, zoom_per_axis=True, extra_view=True, **NO_AUG)
    s = sample_pair(img, SPACING, cfg, 2, 8, np.random.default_rng(4))
    assert np.shape(s.geom_a.zoom) == (3,) and len(set(np.round(s.geom_a.zoom, 6))) == 3
    for geom, fine in ((s.geom_a, s.fine_a), (s.geom_b, s.fine_b)):
        assert np.allclose(geom.to_volume(cell_centre(fine, 2)) * SPACING, s.points_mm, atol=1e-6)
    idx = np.array([[3, 5, 7], [20, 2, 11]])
    out = s.view_a[0].numpy()[tuple(idx.T)]
    assert np.allclose(out, _interp(img, s.geom_a.to_volume(idx)), atol=1e-4)
    assert s.view_c is not None and s.view_c.shape == s.view_a.shape and s.geom_c is not None


def test_random_negatives_are_outside_the_ignore_radius():
    gen = torch.Generator().manual_seed(0)
    dist = torch.rand(30, 500, generator=gen) * 100
    idx, valid = random_negatives(dist, 20.0, 64, gen)
    assert idx.shape == (30, 64)
    assert torch.equal(valid, dist.gather(1, idx) >= 20.0) and valid.float().mean() > 0.6


def test_remap_intensity_keeps_air_and_is_seeded():
    x = torch.linspace(-0.1, 1.2, 50)
    a = remap_intensity(x, 0.2, np.random.default_rng(0))
    b = remap_intensity(x, 0.2, np.random.default_rng(0))
    assert torch.equal(a, b) and float(remap_intensity(torch.zeros(1), 0.2, np.random.default_rng(1))) == 0.0
    assert torch.allclose(remap_intensity(x, 0.0, np.random.default_rng(0)), x, atol=1e-6)
