"""PGL (baselines/pgl.py): the prior maps the common region of two views to the same anatomy in both
(exactly, through crops and flips), the local loss is BYOL's per aligned point over the samples whose
views overlap, the total is L_global + λ·L_local, the views are the trainer's seed's, the target
encoder and local projectors are EMAs, bad config names its key."""

from __future__ import annotations

import pytest
import torch

from alice.errors import ConfigError
from alice.ssl.augment import BoxViewConfig, box_view
from alice.ssl.registry import build_method
from baselines.pgl import common_region, masked_cosine_loss, sample_at

pytestmark = pytest.mark.usefixtures("one_thread")

RESNET = {"name": "resnet3d", "depth": 10, "widen_factor": 0.0625, "features": 4}
CROP = [32, 32, 32]
SMALL = {"projector": {"hidden_dim": 16, "dim": 8}, "predictor": {"hidden_dim": 16},
         "local_projector": {"hidden_dim": 16, "dim": 8}, "local_predictor": {"hidden_dim": 16}}


def small(**overrides):
    torch.manual_seed(0)
    return build_method("pgl", {**SMALL, **overrides}, RESNET, CROP)


def linear_volume(b: int, size) -> torch.Tensor:
    """x = 0.3·X + 0.5·Y − 0.7·Z in normalised coordinates (voxel centres): trilinear resampling of a
    linear function is exact, so any mismatch of the alignment shows."""
    axes = [(2.0 * torch.arange(n) + 1.0) / n - 1.0 for n in size]
    gx, gy, gz = torch.meshgrid(*axes, indexing="ij")
    return (0.3 * gx + 0.5 * gy - 0.7 * gz).expand(b, 1, *size).clone()


def test_the_prior_aligns_the_two_views_on_the_same_anatomy():
    size = (24, 20, 16)
    x = linear_volume(6, size)
    config = BoxViewConfig(scale_range=(0.3, 1.0), flip_prob=0.5, flip_axes=(0, 1, 2), intensity_scale=0.0,
                           intensity_shift=0.0)
    g = torch.Generator().manual_seed(3)
    xa, *box_a = box_view(x, g, config)
    xb, *box_b = box_view(x, g, config)
    assert box_a[2].any() and box_b[2].any()                       # some axes are flipped
    t_a, t_b, valid, overlap = common_region(box_a, box_b, size)
    assert valid.all() and ((overlap > 0) & (overlap <= 1)).all()
    # the same crop point through either view's transform
    p_a = box_a[1][:, None] + box_a[0][:, None] * (1 - 2 * box_a[2].float())[:, None] * t_a
    p_b = box_b[1][:, None] + box_b[0][:, None] * (1 - 2 * box_b[2].float())[:, None] * t_b
    torch.testing.assert_close(p_a, p_b, atol=1e-5, rtol=0)
    # and the same value read from either view: the linear volume at that point (away from the
    # crop's border and within the views' outer voxel centres, where resampling clamps)
    va, vb = sample_at(xa, t_a)[..., 0], sample_at(xb, t_b)[..., 0]
    truth = 0.3 * p_a[..., 0] + 0.5 * p_a[..., 1] - 0.7 * p_a[..., 2]
    voxel = 1.0 / torch.tensor(size, dtype=torch.float32)
    inside = ((p_a.abs() <= 1.0 - 3.0 * voxel) & (t_a.abs() <= 1.0 - voxel) & (t_b.abs() <= 1.0 - voxel)).all(-1)
    assert inside.float().mean() > 0.5
    torch.testing.assert_close(va[inside], truth[inside], atol=1e-4, rtol=0)
    torch.testing.assert_close(vb[inside], truth[inside], atol=1e-4, rtol=0)
    # without the flips of view b its values no longer match (the flips are part of the prior)
    unflipped = (box_b[0], box_b[1], torch.zeros_like(box_b[2]))
    _, t_wrong, _, _ = common_region(box_a, unflipped, size)
    assert (sample_at(xb, t_wrong)[..., 0] - truth).abs()[inside].max() > 0.05


def test_views_that_do_not_overlap_have_no_local_term():
    frac = torch.full((2, 3), 0.3)
    centre_a = torch.tensor([[-0.6, 0.0, 0.0], [0.0, 0.0, 0.0]])
    centre_b = torch.tensor([[0.6, 0.0, 0.0], [0.2, 0.0, 0.0]])        # sample 0: disjoint along X
    flip = torch.zeros(2, 3, dtype=torch.bool)
    t_a, t_b, valid, overlap = common_region((frac, centre_a, flip), (frac, centre_b, flip), (4, 4, 4))
    assert valid.tolist() == [False, True]
    assert overlap[0] == 0 and overlap[1] == pytest.approx(0.4 / 0.6)
    # sample 1: the common X range [-0.1, 0.3] is view a's [-1/3, 1] and view b's [-1, 1/3]
    assert t_a[1, :, 0].min() > -1 / 3 and t_a[1, :, 0].max() < 1 and t_b[1, :, 0].max() < 1 / 3
    pred, target = torch.randn(2, 64, 8), torch.randn(2, 64, 8)
    target[1] = 3.0 * pred[1]                                          # valid sample: aligned exactly
    assert masked_cosine_loss(pred, target, valid).item() == pytest.approx(0.0, abs=1e-5)
    assert masked_cosine_loss(pred, -target, valid).item() == pytest.approx(4.0, abs=1e-5)
    none = masked_cosine_loss(pred.requires_grad_(True), target, torch.zeros(2, dtype=torch.bool))
    assert none.item() == 0.0 and none.requires_grad


def test_the_loss_is_global_plus_weighted_local_and_both_train_the_encoder():
    method = small(levels=[2, 3], local_weight=0.5).train()
    x = {"x": torch.rand(3, 1, *CROP)}
    torch.manual_seed(5)
    out = method(x)
    expected = out["l_global"] + 0.5 * out["l_local"]
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert 0 < out["l_local"].item() < 8 and 0 < out["overlap"].item() <= 1
    method.zero_grad()
    xa, xb, box_a, box_b = method.views(x["x"])
    online, target = method.encode(xa, xb)
    l_local, zl, _ = method.local_loss(online, target, box_a, box_b)   # the local term alone
    assert zl.shape == (6, 2 * 2 * 2, 8)                                 # level 3 of a 32³ crop: 2³ points
    l_local.backward()
    stem = method.body.encoder.conv1.weight
    assert stem.grad is not None and stem.grad.abs().sum() > 0
    for key in ("2", "3"):
        assert all(p.grad is not None for p in method.local_projectors[key].parameters())
        assert all(p.grad is None for p in method.target_local_projectors[key].parameters())
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in method.projector.parameters())
    assert all(p.grad is None for n, p in method.body.named_parameters() if not n.startswith("encoder."))


def test_the_views_follow_the_global_seed():
    method = small()
    x = torch.rand(2, 1, *CROP)
    torch.manual_seed(7)
    first = method.views(x)
    torch.manual_seed(7)
    second = method.views(x)
    for a, b in zip(first[:2], second[:2]):
        assert torch.equal(a, b)
    for a, b in zip(first[2] + first[3], second[2] + second[3]):
        assert torch.equal(a, b)
    assert not torch.equal(first[0], first[1])


def test_target_encoder_and_local_projectors_are_emas():
    method = small(momentum=0.9, momentum_schedule="constant", levels=[3])
    with torch.no_grad():
        for p in list(method.body.encoder.parameters()) + list(method.local_projectors.parameters()):
            p.add_(1.0)
    pairs = [(next(method.body.encoder.parameters()), next(method.target_body.encoder.parameters())),
             (next(method.local_projectors.parameters()), next(method.target_local_projectors.parameters()))]
    before = [(o.detach().clone(), t.detach().clone()) for o, t in pairs]
    method.after_step(0, 10)
    for (o, t), (o0, t0) in zip(pairs, before):
        torch.testing.assert_close(t, 0.9 * t0 + 0.1 * o0)
    assert not any(p.requires_grad for p in method.target_local_projectors.parameters())


@pytest.mark.parametrize("config, key, message", [
    ({"bogus": 1}, "pretrain.methods.pgl.bogus", "unknown key"),
    ({"levels": [5]}, "pretrain.methods.pgl", "levels"),
    ({"levels": []}, "pretrain.methods.pgl", "levels"),
    ({"local_weight": -1}, "pretrain.methods.pgl", "local_weight"),
    ({"augment": {"rotation": 10}}, "pretrain.methods.pgl", "augment"),
    ({"augment": {"scale_range": [0.0, 1.0]}}, "pretrain.methods.pgl", "scale_range"),
    ({"intensity_augment": "yes"}, "pretrain.methods.pgl", "intensity_augment"),
    ({"local_projector": {"depth": 2}}, "pretrain.methods.pgl", "unknown head settings"),
])
def test_bad_config_names_the_key(config, key, message):
    with pytest.raises(ConfigError, match=message) as info:
        build_method("pgl", {**SMALL, **config}, RESNET, CROP)
    assert info.value.key == key
