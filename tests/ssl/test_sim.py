"""SIM (baselines/sim.py): the cross-view positions agree with the voxels the views show, the
UniGrad loss at a known input, and only the online branch learns; the `casa` switch (Alice's
Table 6): off, SIM is unchanged; on, S = CASA(V_a, ŷ_b) against T = CASA(V_a, y_b) trains CASA and
the online branch only, stays out of the checkpoint and lowers its loss."""

from __future__ import annotations

import pytest
import torch

from alice.ssl.augment import BoxViewConfig, box_view
from alice.ssl.losses import unigrad_loss

pytestmark = pytest.mark.usefixtures("one_thread")

VIT = {"name": "vit", "embed_dim": 24, "depth": 2, "heads": 2, "mlp_ratio": 2, "patch": [16, 16, 16]}
SWIN = {"name": "swin", "embed_dim": 12, "depths": [2, 1, 1, 1], "heads": [3, 6, 12, 24], "window": [4, 4, 2],
        "mlp_ratio": 2}
NNFORMER = {"name": "nnformer", "embed_dim": 8, "depths": [2, 2, 1], "heads": [1, 2, 4], "window": [4, 4, 2],
            "patch": [2, 2, 2], "mlp_ratio": 2, "global_stages": 1}
TINY = {"vit": (VIT, [48, 32, 32]), "swin": (SWIN, [64, 32, 32]), "nnformer": (NNFORMER, [32, 32, 16])}


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


def _smoke(encoder: str, seed: int = 0, **method_config):
    """SIM at its declaration's smoke widths on a tiny encoder, built through its factory."""
    from baselines.sim import METHOD, build

    enc, crop = TINY[encoder]
    torch.manual_seed(seed)
    model = build({**METHOD["smoke"], "mask_ratio": 0.5, **method_config}, enc, crop)
    return model.train(), crop


def _loss(model, x: torch.Tensor, seed: int = 1) -> dict:
    torch.manual_seed(seed)  # the views and the masks: the global RNG, as the trainer reseeds it
    return model({"x": x})


def test_casa_is_a_declared_switch_off_by_default():
    import inspect

    from alice.ssl.variants import parse_run_id, run_id
    from baselines.sim import _KWARGS, METHOD, SIM

    assert METHOD["switches"] == {"casa": False}
    params = inspect.signature(SIM.__init__).parameters
    assert all(params[k].default == v for k, v in METHOD["switches"].items()) and "casa" in _KWARGS
    assert run_id("sim", {"casa": True}) == "sim__casa-true" and run_id("sim", {"casa": False}) == "sim"
    assert parse_run_id("sim__casa-true") == ("sim", {"casa": True})


@pytest.mark.parametrize("encoder", ["vit", "swin"])
def test_casa_false_is_sim_without_the_switch(encoder):
    plain, crop = _smoke(encoder)
    off, _ = _smoke(encoder, casa=False)
    assert off.casa is None and off.method_config["casa"] is False
    a, b = dict(plain.state_dict()), dict(off.state_dict())
    assert list(a) == list(b) and not any("casa" in k for k in a)
    assert [n for n, _ in plain.named_parameters()] == [n for n, _ in off.named_parameters()]
    assert all(torch.equal(a[k], b[k]) for k in a)
    x = torch.randn(2, 1, *crop)
    out_plain, after_plain = _loss(plain, x), torch.rand(4)
    out_off, after_off = _loss(off, x), torch.rand(4)
    assert set(out_plain) == set(out_off) and "casa_spread" not in out_off
    assert all(torch.equal(out_plain[k], out_off[k]) for k in out_plain)
    assert torch.equal(after_plain, after_off)                            # the same random draws


@pytest.mark.parametrize("encoder", ["vit", "nnformer"])
def test_casa_true_trains_casa_and_the_online_branch_only(encoder):
    from alice.models.casa import CASA

    model, crop = _smoke(encoder, casa=True)
    plain, _ = _smoke(encoder)
    assert isinstance(model.casa, CASA) and model.casa.proj_dim == model.decoder.pred.out_features
    # every other module starts as SIM's own (CASA is built last)
    ref = plain.state_dict()
    assert {k: v for k, v in model.state_dict().items() if not k.startswith("casa.")}.keys() == ref.keys()
    assert all(torch.equal(v, ref[k]) for k, v in model.state_dict().items() if not k.startswith("casa."))
    x = torch.randn(2, 1, *crop)
    torch.manual_seed(1)
    xa, xb, box_a, box_b = model.views(x)
    pred, ids, v = model.encode_and_predict(xa, box_a, box_b)
    y = model.target(xb)
    s, t = model.aligned(v, pred, y)
    assert v.shape[:2] == ids.shape and s.shape == t.shape == (*ids.shape, pred.shape[-1])
    assert s.requires_grad and not t.requires_grad
    torch.testing.assert_close(t.mean(-1), torch.zeros(ids.shape), atol=1e-5, rtol=0)  # LN'd targets
    grad_v, grad_pred = torch.autograd.grad(unigrad_loss(s, t, 0.02)[0], (v, pred))  # query and keys/values
    assert grad_v.abs().sum() > 0 and grad_pred.abs().sum() > 0
    out = _loss(model, x)
    assert torch.isfinite(out["loss"]) and out["casa_spread"] >= 0 and {"l_pos", "l_neg", "spread"} <= set(out)
    out["loss"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.casa.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder.transferable.parameters())
    assert model.decoder.mask_token.grad is not None and model.projector.embed.weight.grad is not None
    assert all(not p.requires_grad and p.grad is None
               for p in (*model.target_encoder.parameters(), *model.target_projector.parameters()))
    assert all(model.casa not in pair and all(m is not model.casa for m in pair) for pair in model.ema_pairs())
    state = model.encoder_state_dict()
    assert state.keys() == plain.encoder_state_dict().keys() and not any("casa" in k for k in state)


def test_casa_true_loss_falls_on_a_fixed_batch():
    model, crop = _smoke("vit", casa=True)
    torch.manual_seed(2)
    x = torch.randn(2, 1, *crop)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.05)
    losses = []
    for _ in range(6):
        loss = _loss(model, x)["loss"]                                    # the same views and masks
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]
