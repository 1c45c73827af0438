"""Models Genesis's transformations (alice/ssl/restoration.py): each does what the paper and the
release say (local shuffling permutes voxels inside small boxes only, the Bézier map is the curve,
in-painting stays off the border, out-painting keeps only boxes), flips move the target too, the
probabilities switch them, one generator seed gives one corruption; and the crop embedding of the
instance-normalised bodies keeps a grid."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from alice.ssl.restoration import (GenesisConfig, RestorationHead, bezier_lut, embedding_grid, genesis_transform,
                                   grid_embedding, inner_cutout, local_pixel_shuffling, nonlinear_transform,
                                   outer_cutout, random_flips)

pytestmark = pytest.mark.usefixtures("one_thread")

OFF = {"flip_rate": 0.0, "local_rate": 0.0, "nonlinear_rate": 0.0, "paint_rate": 0.0}


def unique_volume(shape=(1, 1, 30, 40, 20)) -> torch.Tensor:
    """Distinct values (a voxel's value names its position), in [0, 1)."""
    n = torch.Size(shape).numel()
    return (torch.arange(n, dtype=torch.float32) / n).reshape(shape)


def test_config_defaults_are_the_release_and_bad_settings_are_refused():
    c = GenesisConfig()
    assert (c.flip_rate, c.local_rate, c.nonlinear_rate, c.paint_rate, c.inpaint_rate) == (0.4, 0.5, 0.9, 0.9, 0.2)
    assert (c.local_blocks, c.max_flips) == (10_000, 3)
    assert GenesisConfig.from_mapping({"paint_rate": 0.5}).paint_rate == 0.5
    with pytest.raises(ValueError, match="unknown genesis settings"):
        GenesisConfig.from_mapping({"shuffle_rate": 0.5})
    with pytest.raises(ValueError, match="nonlinear_rate"):
        GenesisConfig.from_mapping({"nonlinear_rate": 1.5})
    with pytest.raises(ValueError, match="local_blocks"):
        GenesisConfig.from_mapping({"local_blocks": -1})


def test_one_shuffled_box_is_a_permutation_of_that_box_only():
    x = unique_volume()
    y = local_pixel_shuffling(x, torch.Generator().manual_seed(3), blocks=1)
    changed = (y != x)[0, 0]
    idx = changed.nonzero()
    assert idx.shape[0] > 0  # a box of >= 2 voxels was drawn with this seed
    sides = idx.max(0).values - idx.min(0).values + 1
    assert (sides <= torch.tensor([3, 4, 2])).all()          # box sides at most side // 10
    # the changed voxels hold exactly the original values of the changed voxels
    assert torch.equal(y[0, 0][changed].sort().values, x[0, 0][changed].sort().values)


def test_many_boxes_move_every_value_only_locally_and_cover_most_of_the_crop():
    x = unique_volume()
    y = local_pixel_shuffling(x, torch.Generator().manual_seed(0))       # the release's 10,000 boxes
    n = x.numel()
    shape = torch.tensor(x.shape[2:])

    def position(flat):                                                 # flat index -> (x, y, z)
        return torch.stack([flat // (shape[1] * shape[2]), (flat // shape[2]) % shape[1], flat % shape[2]], 1)

    src = (y.flatten() * n).round().long()                              # where each output value came from
    assert ((position(src) - position(torch.arange(n))).abs() < (shape // 10).clamp_min(1)).all()
    assert (y != x).float().mean() > 0.5
    assert torch.equal(y, local_pixel_shuffling(x, torch.Generator().manual_seed(0), 10_000))


def test_bezier_lookup_table_is_the_cubic_curve_and_its_mirror():
    # P1, P2 chosen so that x(t) and y(t) both increase: the table is then the curve itself
    points = torch.tensor([[[0.0, 0.0], [0.2, 0.8], [0.6, 0.9], [1.0, 1.0]]] * 2)
    xs, ys = bezier_lut(points, torch.tensor([False, True]), samples=4001)
    assert (xs[:, 1:] >= xs[:, :-1]).all()
    assert (ys[0, 1:] >= ys[0, :-1]).all() and (ys[1, 1:] <= ys[1, :-1]).all()   # increasing / inverting

    def at(v, i):
        return float(np.interp(v, xs[i].numpy(), ys[i].numpy()))

    # B(1/4) = (0.184375, 0.4796875), B(3/4).y = 0.9140625 (hand-computed Bernstein sums)
    assert at(0.184375, 0) == pytest.approx(0.4796875, abs=1e-4)
    assert at(0.184375, 1) == pytest.approx(0.9140625, abs=1e-4)   # the mirror: y(1 − t)
    assert (at(0.0, 0), at(1.0, 0), at(0.0, 1), at(1.0, 1)) == pytest.approx((0.0, 1.0, 1.0, 0.0), abs=1e-6)


def test_nonlinear_transform_is_a_per_sample_monotone_map_of_intensities():
    g = torch.Generator().manual_seed(5)
    x = torch.rand(6, 1, 8, 8, 8, generator=g)
    y, inverted = nonlinear_transform(x, g)
    assert y.min() >= 0.0 and y.max() <= 1.0 and inverted.any() and not inverted.all()
    for i in range(6):
        order = x[i].flatten().argsort()
        out = y[i].flatten()[order]
        if inverted[i]:
            continue                                 # the mirror is monotone only where x(t) is
        assert (out[1:] >= out[:-1] - 1e-6).all()    # a look-up table: the order of intensities is kept
    assert not torch.allclose(y[0], y[1])


def test_inner_cutout_fills_boxes_with_noise_away_from_the_border():
    x = torch.full((4, 1, 36, 36, 24), 0.5)
    y = inner_cutout(x, torch.Generator().manual_seed(1))
    changed = y != x
    assert changed.any()
    for border in (changed[..., :3, :, :], changed[..., -3:, :, :], changed[..., :, :3, :], changed[..., :, :, -3:]):
        assert not border.any()
    assert changed.float().flatten(1).mean(1).max() <= 5 * (1 / 3) ** 3 + 1e-6   # at most 5 boxes of side/3
    assert y[changed].min() >= 0.0 and y[changed].max() < 1.0


def test_outer_cutout_keeps_only_boxes_of_the_crop_and_noises_the_rest():
    x = torch.full((4, 1, 35, 35, 21), 0.5)
    y = outer_cutout(x, torch.Generator().manual_seed(2))
    kept = y == x
    for i in range(4):
        k = kept[i, 0]
        assert k.any() and not k.all()
        assert not k[:3].any() and not k[-3:].any() and not k[:, :, :3].any()   # the border is noise
        # the first box alone keeps sides >= side − 4·side // 7: its core voxel at the centre is kept
        assert k.float().mean() >= (15 / 35) ** 2 * (9 / 21) - 1e-6


def test_flips_move_input_and_target_together():
    x = unique_volume((5, 1, 8, 6, 4))
    g = torch.Generator().manual_seed(0)
    xf, tf, n = random_flips(x, x.clone(), g, rate=1.0, max_flips=3)
    assert torch.equal(xf, tf) and (n == 3).all()
    for i in range(5):  # each result is the sample flipped along some set of axes
        assert any(torch.equal(xf[i], x[i].flip(dims)) for dims in
                   [(), (1,), (2,), (3,), (1, 2), (1, 3), (2, 3), (1, 2, 3)])


def test_genesis_transform_switches_and_records_each_transformation():
    x = torch.rand(4, 1, 32, 32, 16, generator=torch.Generator().manual_seed(0))
    g = genesis_transform(x, torch.Generator().manual_seed(0), GenesisConfig(**OFF))
    assert torch.equal(g.input, x) and torch.equal(g.target, x)
    assert not any(v.any() for v in g.applied.values())

    only_paint = GenesisConfig(**{**OFF, "paint_rate": 1.0, "inpaint_rate": 1.0})
    g = genesis_transform(x, torch.Generator().manual_seed(0), only_paint)
    assert g.applied["inpaint"].all() and not g.applied["outpaint"].any() and torch.equal(g.target, x)

    g1 = genesis_transform(x, torch.Generator().manual_seed(7))
    g2 = genesis_transform(x, torch.Generator().manual_seed(7))
    assert torch.equal(g1.input, g2.input) and torch.equal(g1.target, g2.target)
    assert not torch.equal(g1.input, g1.target)
    assert g1.applied["flips"].dtype == torch.long


def test_release_rates_over_many_samples():
    x = torch.rand(200, 1, 12, 12, 12, generator=torch.Generator().manual_seed(0))
    g = genesis_transform(x, torch.Generator().manual_seed(1), GenesisConfig(local_blocks=50))
    a = {k: v.float().mean().item() for k, v in g.applied.items()}
    assert a["local"] == pytest.approx(0.5, abs=0.1)
    assert a["nonlinear"] == pytest.approx(0.9, abs=0.06)
    assert a["inpaint"] + a["outpaint"] == pytest.approx(0.9, abs=0.06)
    assert a["inpaint"] == pytest.approx(0.18, abs=0.07)
    assert (g.applied["flips"] > 0).float().mean().item() == pytest.approx(0.4, abs=0.1)


def test_restoration_head_and_the_crop_embedding_grid():
    head = RestorationHead(4)
    assert head(torch.randn(2, 4, 8, 8, 8) * 10).min() > 0.0          # sigmoid output
    with pytest.raises(ValueError):
        RestorationHead(4, activation="relu")
    fmap = torch.randn(3, 5, 4, 4, 2)
    assert torch.allclose(grid_embedding(fmap, (1, 1, 1)), fmap.mean((2, 3, 4)))
    assert grid_embedding(fmap, (2, 2, 2)).shape == (3, 40)
    bn = torch.nn.Sequential(torch.nn.Conv3d(1, 2, 1), torch.nn.BatchNorm3d(2))
    inorm = torch.nn.Sequential(torch.nn.Conv3d(1, 2, 1), torch.nn.InstanceNorm3d(2))
    assert embedding_grid(bn, (2, 4, 4, 2)) == (1, 1, 1)
    assert embedding_grid(inorm, (2, 4, 4, 2)) == (2, 2, 2)
    assert embedding_grid(inorm, (2, 2, 2, 1)) == (2, 2, 1)                # never finer than the bottleneck
    assert embedding_grid(bn, (2, 4, 4, 2), [1, 2, 1]) == (1, 2, 1)
    with pytest.raises(ValueError):
        embedding_grid(bn, (2, 4, 4, 2), [1, 2])
