"""ContrastiveCrop (baselines/contrastive_crop.py): the heat-map box, centre-suppressed sampling inside
it, the warm-up, step-seeded views and an exact resume, config errors."""

from __future__ import annotations

import pytest
import torch

from alice.errors import ConfigError
from alice.ssl.registry import build_method
from alice.ssl.trainer import step_seed
from baselines.contrastive_crop import box_starts, heat_boxes

pytestmark = pytest.mark.usefixtures("one_thread")

RESNET = {"name": "resnet3d", "depth": 10, "widen_factor": 0.0625, "features": 4}
CROP = [64, 32, 32]
SMALL = {"head": {"hidden_dim": 32, "dim": 16}, "queue_size": 8, "bn_group_size": 2}
STILL = {"max_angle_deg": 0.0, "flip_prob": 0.0, "intensity_scale": 0.0, "intensity_shift": 0.0}


def make(**config):
    torch.manual_seed(0)
    return build_method("contrastive_crop", {**SMALL, **config}, RESNET, CROP).train()


def test_the_box_bounds_where_the_channel_summed_map_reaches_k_of_its_range():
    fmap = torch.zeros(2, 3, 4, 4, 2)
    fmap[0, 0, 1:3, 0, :] = 1.0                             # hot cells x 1..2, y 0, every z
    fmap[0, 2, 1:3, 0, :] = 2.0                             # the channels add up
    boxes = heat_boxes(fmap, (4, 4, 2), threshold=0.1)      # no resizing: the cells themselves
    torch.testing.assert_close(boxes[0], torch.tensor([[0.25, 0.75], [0.0, 0.25], [0.0, 1.0]]))
    torch.testing.assert_close(boxes[1], torch.tensor([[0.0, 1.0]] * 3))   # a constant map: all
    # k is relative to the map's range: a cold cell above k·(max − min) is inside, below it not
    fmap = torch.zeros(1, 1, 4, 1, 1)
    fmap[0, 0, :, 0, 0] = torch.tensor([0.05, 0.3, 1.0, 0.0])
    torch.testing.assert_close(heat_boxes(fmap, (4, 1, 1), 0.1)[0, 0], torch.tensor([0.25, 0.75]))
    torch.testing.assert_close(heat_boxes(fmap, (4, 1, 1), 0.04)[0, 0], torch.tensor([0.0, 0.75]))
    # the map is resized to the crop: the box is in voxels of the crop
    box = heat_boxes(torch.tensor([0.0, 0.0, 0.0, 1.0]).view(1, 1, 4, 1, 1), (16, 1, 1), 0.5)[0, 0]
    assert 0.75 <= float(box[0]) < 0.875 and float(box[1]) == 1.0


def test_centre_suppressed_starts_keep_the_crop_in_the_image_and_around_the_box():
    frac = torch.full((4, 3), 0.2)
    boxes = torch.tensor([[0.5, 0.9]]).expand(4, 3, 2)
    u = torch.tensor([0.0, 0.5, 1.0, 0.25]).view(4, 1).expand(4, 3)
    start = box_starts(frac, boxes, u)
    # a₀ = 0.5 − 0.1, a₁ = 0.9 − 0.1: the crop's centre runs over the box
    torch.testing.assert_close(start[:, 0], torch.tensor([0.4, 0.6, 0.8, 0.5]))
    # clipped to the image: a box at the edge with a big crop
    edge = box_starts(torch.full((1, 3), 0.6), torch.tensor([[0.9, 1.0]]).expand(1, 3, 2), torch.zeros(1, 3))
    assert float(edge.max()) <= 0.4 + 1e-6 and float(edge.min()) >= 0.0
    # the whole crop as box and a uniform u: plain random resized crop, start uniform in [0, 1 − f]
    whole = torch.tensor([[0.0, 1.0]]).expand(4, 3, 2)
    torch.testing.assert_close(box_starts(frac, whole, u)[:, 0], torch.tensor([0.0, 0.4, 0.8, 0.2]))


def test_views_are_cut_inside_the_box_with_a_u_shaped_law():
    # crops of side 0.1 on every axis (0.1% of the voxels, aspect 1), no rotation, flip or intensity
    method = make(augment={**STILL, "scale_range": [0.001, 0.001], "ratio_range": [1.0, 1.0]}, alpha=0.6)
    n = 256
    x = torch.linspace(0, 1, 64).view(1, 1, -1, 1, 1).expand(n, 1, 64, 4, 4).contiguous()  # a ramp along X
    boxes = torch.tensor([[0.5, 1.0], [0.0, 1.0], [0.0, 1.0]]).expand(n, 3, 2)
    views = method.views(x, boxes, torch.Generator().manual_seed(0))
    value = views.mean(dim=(2, 3, 4, 5)).flatten()            # the ramp at the view's centre
    centre = (value * 63 + 0.5) / 64                          # as a fraction of the crop
    # the crop's start runs over [0.5 − 0.05, 1 − 0.1]: its centre over [0.5, 0.95], inside the box
    assert float(centre.min()) >= 0.5 - 1e-3 and float(centre.max()) <= 0.95 + 1e-3
    u = (centre - 0.5) / 0.45
    # Beta(0.6, 0.6) is U-shaped: P(u in the outer quarters) = 0.63 (uniform: 0.5)
    assert float(((u < 0.25) | (u > 0.75)).float().mean()) > 0.57
    # without a box (the warm-up): uniform over the whole crop
    free = method.views(x, None, torch.Generator().manual_seed(0)).mean(dim=(2, 3, 4, 5)).flatten()
    free = ((free * 63 + 0.5) / 64 - 0.05) / 0.9
    assert float(free.min()) < 0.1 and float(free.max()) > 0.9
    assert float(((free < 0.25) | (free > 0.75)).float().mean()) < 0.57


def test_the_warm_up_uses_whole_crops_then_the_heat_map_and_the_progress_is_state():
    method = make(warmup_fraction=0.5)
    assert {"steps_done", "total_steps", "queue", "queue_ptr"} <= set(method.state_dict())
    x = {"x": torch.randn(2, 1, *CROP)}
    assert not method.localising()
    out = method(x)
    assert float(out["localised"]) == 0.0 and float(out["box_frac"]) == 1.0
    for step in range(4):
        method.after_step(step, 10)
        assert method.localising() == (step + 1 >= 5)
    method.after_step(4, 10)
    out = method(x)
    assert float(out["localised"]) == 1.0 and 0.0 < float(out["box_frac"]) <= 1.0
    fresh = make(warmup_fraction=0.5)
    fresh.load_state_dict(method.state_dict())
    assert fresh.localising()


def test_the_views_depend_only_on_the_global_seed_of_the_step():
    method = make(warmup_fraction=0.0)
    method.after_step(0, 10)
    x = {"x": torch.randn(2, 1, *CROP)}
    seen = []
    for seed in (1, 1, 2):
        torch.manual_seed(seed)
        g = torch.Generator().manual_seed(int(torch.randint(2**62, ())))
        seen.append(method.views(x["x"], method.boxes(x["x"]), g))
    torch.testing.assert_close(seen[0], seen[1])
    assert not torch.allclose(seen[0], seen[2])


def _loader(seed, start):
    for i in range(start, start + 50):
        g = torch.Generator().manual_seed(step_seed(seed, i))
        yield {"x": torch.randn(2, 1, *CROP, generator=g)}


@pytest.mark.slow
def test_a_resumed_run_equals_an_uninterrupted_one(tmp_path):
    from alice.ssl.trainer import pretrain

    optim = {"lr": 1e-3, "iterations": 4, "warmup_iterations": 1}
    kw = dict(optim=optim, encoder_config=RESNET, method_name="contrastive_crop", checkpoint_every=100,
              seed=5, device="cpu", progress=False)
    straight = make(warmup_fraction=0.5)                    # localises from step 2 on: across the stop
    pretrain(straight, _loader, tmp_path / "a", **kw)
    pretrain(make(warmup_fraction=0.5), _loader, tmp_path / "b", max_steps_this_run=2, **kw)
    resumed = make(warmup_fraction=0.5)
    pretrain(resumed, _loader, tmp_path / "b", **kw)
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)
    rows = lambda d: [r.split(",")[:-1] for r in (tmp_path / d / "log.csv").read_text().splitlines()]
    assert rows("a") == rows("b")                            # every column but the step's seconds
    header = rows("a")[0]
    assert [r[header.index("localised")] for r in rows("a")[1:]] == ["0.0", "0.0", "1.0", "1.0"]


@pytest.mark.parametrize("config, key", [
    ({"views": {"augment": {}}}, "pretrain.methods.contrastive_crop.views"),   # views: crop, built here
    ({"alpha": 0.0}, "pretrain.methods.contrastive_crop"),
    ({"box_threshold": 1.5}, "pretrain.methods.contrastive_crop"),
    ({"warmup_fraction": -0.1}, "pretrain.methods.contrastive_crop"),
    ({"heatmap_level": 5}, "pretrain.methods.contrastive_crop"),
    ({"augment": {"scale": [0.2, 1.0]}}, "pretrain.methods.contrastive_crop"),
])
def test_bad_config_raises_naming_the_key(config, key):
    with pytest.raises(ConfigError) as err:
        build_method("contrastive_crop", {**SMALL, **config}, RESNET, CROP)
    assert key in str(err.value)
