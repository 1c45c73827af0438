"""SIM (baselines/sim.py): the cross-view positions agree with the voxels the views show, the
UniGrad loss at a known input, and only the online branch learns."""

from __future__ import annotations

import pytest
import torch

from alice.ssl.augment import BoxViewConfig, box_view
from alice.ssl.losses import unigrad_loss

pytestmark = pytest.mark.usefixtures("one_thread")

VIT = {"name": "vit", "embed_dim": 24, "depth": 2, "heads": 2, "mlp_ratio": 2, "patch": [16, 16, 16]}


def _coordinate_image(b: int, size) -> torch.Tensor:
    """(b, 3, X, Y, Z): channel d holds each voxel's normalised coordinate along axis d."""
    axes = [(2.0 * torch.arange(s) + 1.0) / s - 1.0 for s in size]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"))
    return grid[None].expand(b, -1, -1, -1, -1).clone()


def test_cross_view_positions_point_at_the_voxels_view_b_shows():
    from baselines.sim import cross_view_positions, grid_indices

    size = (12, 10, 8)
    x = _coordinate_image(6, size)
    config = BoxViewConfig(scale_range=(0.3, 0.9), flip_prob=0.5, flip_axes=(0, 1, 2),
                           intensity_scale=0.0, intensity_shift=0.0)
    g = torch.Generator().manual_seed(0)
    xa, *box_a = box_view(x, g, config)
    xb, *box_b = box_view(x, g, config)
    assert box_a[2].any() and not box_a[2].all()                          # some axes flipped, some not
    half = torch.tensor([1.0 - 1.0 / s for s in size])                    # hull of the voxel centres
    s = torch.tensor(size, dtype=torch.float32)
    # every view shows the crop's point centre + frac * sign * t at its point t (box_view's contract)
    t = (2.0 * grid_indices(size) + 1.0) / s - 1.0
    for view, (frac, centre, flip) in ((xa, box_a), (xb, box_b)):
        expected = centre[:, None] + (frac * (1.0 - 2.0 * flip.float()))[:, None] * t[None]
        shown = view.flatten(2).transpose(1, 2)                           # (B, N, 3) crop coordinates
        inside = (expected.abs() < half).all(-1)                          # off the border's clamp
        assert inside.float().mean() > 0.5
        torch.testing.assert_close(shown[inside], expected[inside], atol=1e-4, rtol=0)
    # the voxel grid as patch grid: view b's voxel k sits at `pos` in view a, i.e. at crop point u
    pos, log_scale = cross_view_positions(box_a, box_b, size)
    t_a = 2.0 * (pos + 0.5) / s - 1.0
    u = box_a[1][:, None] + (box_a[0] * (1.0 - 2.0 * box_a[2].float()))[:, None] * t_a
    shown_b = xb.flatten(2).transpose(1, 2)
    inside = (u.abs() < half - 1e-3).all(-1)
    torch.testing.assert_close(u[inside], shown_b[inside], atol=1e-4, rtol=0)
    torch.testing.assert_close(log_scale, torch.log(box_b[0] / box_a[0]))
    # a view against itself: every patch at its own index, same size
    pos, log_scale = cross_view_positions(box_a, box_a, (3, 2, 2))
    torch.testing.assert_close(pos, grid_indices((3, 2, 2)).expand(6, -1, -1))
    assert log_scale.abs().max() == 0


def test_unigrad_loss_at_a_known_input_and_its_gradient():
    teacher = torch.tensor([[1.0, 0.0], [0.0, 1.0]])                     # F = I / 2
    student = torch.tensor([[1.0, 0.0], [0.0, 0.0]], requires_grad=True)
    loss, pos, neg = unigrad_loss(student, teacher, 0.02)
    # pos = mean(0, 1) = 0.5, neg = mean(1/2, 0) = 0.25, / C = 2
    assert pos.item() == pytest.approx(0.25) and neg.item() == pytest.approx(0.125)
    assert loss.item() == pytest.approx((0.5 + 0.02 * 0.25) / 2)
    loss.backward()
    f = teacher.t() @ teacher / 2
    expected = 2.0 * (student.detach() - teacher + 0.02 * student.detach() @ f) / (2 * 2)  # −t + λ·F·s
    torch.testing.assert_close(student.grad, expected)


def test_only_the_online_branch_learns_and_predicts_every_target_token():
    from baselines.sim import SIM

    torch.manual_seed(0)
    model = SIM(VIT, [48, 32, 32], mask_ratio=0.5, decoder={"dim": 24, "depth": 1, "heads": 2}, projector_depth=1)
    model.train()
    x = torch.randn(3, 1, 48, 32, 32)
    xa, xb, box_a, box_b = model.views(x)
    pred, ids = model.predict(xa, box_a, box_b)
    y = model.target(xb)
    n = 3 * 2 * 2
    assert pred.shape == y.shape == (3, n, 24)
    assert ids.shape == (3, n // 2) and not y.requires_grad             # the ViT saw half its patches
    torch.testing.assert_close(y.mean(-1), torch.zeros(3, n), atol=1e-5, rtol=0)   # LayerNorm'd targets
    out = model({"x": x})
    out["loss"].backward()
    assert all(p.grad is None for p in (*model.target_encoder.parameters(), *model.target_projector.parameters()))
    assert model.decoder.mask_token.grad is not None and model.projector.embed.weight.grad is not None
    before = [p.detach().clone() for p in model.target_projector.parameters()]
    with torch.no_grad():
        for p in model.projector.parameters():
            p.add_(1.0)
    model.update_target(0.9)                                              # EMA: 10% of the way
    after = list(model.target_projector.parameters())
    torch.testing.assert_close(after[0], before[0] + 0.1)
