"""iBOT (baselines/ibot.py): the masked-token encoder hides what it masks, L_MIM is taken on the
masked tokens only, and the masks follow iBOT's prediction ratio; its ablation switches
(`inter_volume`, `casa`) are constructor arguments, `casa=False` is the plain model, and the
CASA-aligned L_MIM trains CASA and the encoder, never the teacher."""

from __future__ import annotations

import inspect
import math

import pytest
import torch
import torch.nn.functional as F

from alice.ssl.encoder import build_encoder
from alice.ssl.registry import build_method
from alice.ssl.token_masking import MaskTokenEncoder, sample_unit_masks
from alice.ssl.variants import run_id
from baselines.ibot import _KWARGS, IBOT, METHOD, mim_loss

pytestmark = pytest.mark.usefixtures("one_thread")

CROP = (32, 32, 16)
VIT = {"name": "vit", "embed_dim": 24, "depth": 2, "heads": 2, "mlp_ratio": 2, "patch": 8}  # 4x4x2 = 32 units
# Swin: non-overlapping patch embedding, so a masked unit's voxels reach no other unit (nnFormer's
# overlapping 3³ embedding convolutions let a unit's border voxels into its neighbours' cells)
SWIN = ({"name": "swin", "embed_dim": 12, "depths": [2, 1, 1, 1], "heads": [3, 6, 12, 24], "window": [4, 4, 2],
         "mlp_ratio": 2}, (64, 32, 32))


@pytest.mark.parametrize("config, crop", [(VIT, CROP), SWIN], ids=["vit", "swin"])
def test_masked_units_are_invisible_and_every_token_comes_out(config, crop):
    torch.manual_seed(0)
    inner = build_encoder(config, crop).eval()
    enc = MaskTokenEncoder(inner).eval()
    x = torch.randn(1, 1, *crop)
    n = enc.num_patches
    mask = torch.zeros(1, n, dtype=torch.bool)
    mask[0, 0] = True
    with torch.no_grad():
        out = enc(x, mask)
        assert out.shape == (1, n, enc.embed_dim)
        # unmasked: the same as the harness's encoder with nothing masked
        torch.testing.assert_close(enc(x), inner(x, 0.0)[0])
        # unit 0 (the first unit of the (x, y, z) raster) changed: no output changes when it is masked
        y = x.clone()
        ux, uy, uz = (c // g for c, g in zip(crop, inner.grid))
        y[..., :ux, :uy, :uz] += 5.0
        torch.testing.assert_close(enc(y, mask), out)
        assert not torch.allclose(enc(y), enc(x))
    assert not any("mask_token" in k for k in enc.transferable.state_dict())


def test_mim_loss_counts_masked_tokens_only():
    g = torch.Generator().manual_seed(0)
    b, n, k = 3, 5, 7
    teacher = torch.randn(b, n, k, generator=g)
    student = torch.randn(b, n, k, generator=g, requires_grad=True)
    mask = torch.zeros(b, n, dtype=torch.bool)
    mask[0, :2] = True
    mask[1, 4] = True  # image 2: nothing masked, contributes 0
    loss = mim_loss(student, teacher, torch.zeros(k), mask, 0.1, 0.04)
    loss.backward()
    assert (student.grad[~mask] == 0).all() and (student.grad[mask] != 0).any()
    # uniform student: the cross-entropy is log K on every masked token, whatever the teacher
    uniform = mim_loss(torch.zeros(b, n, k), teacher, torch.zeros(k), mask, 0.1, 0.04)
    torch.testing.assert_close(uniform, torch.tensor(math.log(k) * 2 / 3))


def test_prediction_ratio_and_a_step_of_the_objective():
    torch.manual_seed(0)
    masks = sample_unit_masks(4000, 18, [0.1, 0.5], 0.5)
    counts = masks.sum(1)
    assert abs((counts == 0).float().mean().item() - 0.5) < 0.03  # half the images unmasked
    assert counts[counts > 0].min() >= 2 and counts.max() <= 9    # round(0.1·18) .. round(0.5·18)
    assert (sample_unit_masks(50, 2, 0.3, 1.0).sum(1) == 1).all()  # at least one masked, one kept

    model = IBOT(VIT, CROP, head={"hidden_dim": 32, "bottleneck_dim": 16}, prototypes=32, mask_ratio=0.5,
                 mask_probability=1.0, views={"global_views": 2, "local_views": 1})
    views = torch.randn(3, 2, 1, *CROP)
    out = model({"views": views})
    assert (model.last_mask.sum(-1) == 16).all()  # every global view masked at r = 0.5
    torch.testing.assert_close(out["loss"], out["l_cls"] + out["l_mim"])
    out["loss"].backward()
    assert model.encoder.mask_token.grad is not None and model.encoder.mask_token.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.teacher_encoder.parameters())
    assert model.center_patch.abs().sum() > 0 and model.center.abs().sum() > 0  # both centres moved


# ---------------------------------------------------------------- ablation switches (Tables 5 and 6)

SMOKE = METHOD["smoke"]
NNFORMER = ({"name": "nnformer", "embed_dim": 8, "depths": [2, 2, 1], "heads": [1, 2, 4], "window": [4, 4, 2],
             "patch": [2, 2, 2], "mlp_ratio": 2, "global_stages": 1}, (32, 32, 16))
ENCODERS = [(VIT, CROP), SWIN, NNFORMER]


def test_switches_are_constructor_arguments_and_run_ids():
    params = inspect.signature(IBOT.__init__).parameters
    assert METHOD["switches"] == {"inter_volume": False, "casa": False}
    for key, default in METHOD["switches"].items():
        assert params[key].default == default and key in _KWARGS, key
    assert run_id("ibot", {"casa": True}) == "ibot__casa-true"
    assert run_id("ibot", {"inter_volume": True}) == "ibot__inter_volume-true"
    assert run_id("ibot", {"casa": False, "inter_volume": False}) == "ibot"
    model = build_method("ibot", {**SMOKE, "inter_volume": True}, VIT, CROP)
    assert model.inter_volume is True and not model.use_casa
    assert build_method("ibot", {**SMOKE, "casa": True}, VIT, CROP).use_casa


def _step(model, views, seed=1):
    torch.manual_seed(seed)  # the masks come from the global generator
    return model({"views": views})


def test_casa_false_is_the_model_without_the_switch():
    views = torch.randn(3, 2, 1, *CROP)
    torch.manual_seed(0)
    plain = IBOT(VIT, CROP, **SMOKE)
    torch.manual_seed(0)
    off = IBOT(VIT, CROP, casa=False, inter_volume=True, **SMOKE)
    torch.manual_seed(0)
    on = IBOT(VIT, CROP, casa=True, **SMOKE)
    names = [n for n, _ in plain.named_parameters()]
    assert [n for n, _ in off.named_parameters()] == names and not any("casa" in n for n in names)
    assert [n for n, _ in plain.named_buffers()] == [n for n, _ in off.named_buffers()]
    a, b = _step(plain, views), _step(off, views)
    assert a.keys() == b.keys() and "casa_spread" not in a
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # CASA is built last: every other parameter starts where it does without it
    on_params = dict(on.named_parameters())
    assert sorted(set(on_params) - set(names)) == sorted(f"casa.{n}" for n, _ in on.casa.named_parameters())
    for name, p in plain.named_parameters():
        assert torch.equal(p, on_params[name]), name


@pytest.mark.parametrize("config, crop", ENCODERS, ids=["vit", "swin", "nnformer"])
def test_casa_step_trains_casa_and_the_encoder_not_the_teacher(config, crop):
    torch.manual_seed(0)
    model = IBOT(config, crop, casa=True, mask_probability=1.0, **SMOKE)
    out = _step(model, torch.randn(3, 2, 1, *crop))
    assert all(torch.isfinite(v) for v in out.values())
    torch.testing.assert_close(out["loss"], out["l_cls"] + out["l_mim"])
    assert out["casa_spread"] > 0
    out["loss"].backward()
    for part in (model.casa, model.head, model.prototypes):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters())
    # the encoder: every parameter the plain model trains (the ViT's unused cross-attention norms aside)
    torch.manual_seed(0)
    plain = IBOT(config, crop, mask_probability=1.0, **SMOKE)
    _step(plain, torch.randn(3, 2, 1, *crop))["loss"].backward()
    trained = {n for n, p in plain.encoder.named_parameters() if p.grad is not None}
    assert any("mask_token" in n for n in trained)
    assert all(p.grad is not None and p.grad.abs().sum() > 0
               for n, p in model.encoder.named_parameters() if n in trained)
    teachers = [t for _, t in model.ema_pairs()]
    assert all(p.grad is None and not p.requires_grad for t in teachers for p in t.parameters())
    assert not any(model.casa is s or model.casa is t for s, t in model.ema_pairs())
    state = model.encoder_state_dict()
    assert not any("casa" in k for k in state)
    torch.manual_seed(0)
    assert state.keys() == IBOT(config, crop, **SMOKE).encoder_state_dict().keys()


def test_casa_term_is_cross_view_masked_only_and_stop_gradient_on_the_teacher():
    torch.manual_seed(0)
    model = IBOT(VIT, CROP, casa=True, **SMOKE)
    g, b, n, d, c = 2, 2, model.num_units, model.encoder.embed_dim, model.head.out_dim
    tokens = torch.randn(g, b, n, d, requires_grad=True)
    z_s = F.normalize(torch.randn(g, b, n, c), dim=-1).requires_grad_()
    z_t = F.normalize(torch.randn(g, b, n, c), dim=-1)
    mask = torch.zeros(g, b, n, dtype=torch.bool)
    mask[0, :, :5] = True  # only view 0 masked: only the pair (û = 0, v = 1) counts
    loss, s, t_logits = model._casa_mim(tokens, z_s, z_t, mask)
    assert t_logits.grad_fn is None and s.shape == (g, b, n, c)
    s.retain_grad()
    loss.backward()
    assert (s.grad[~mask] == 0).all() and (s.grad[mask] != 0).any()
    with torch.no_grad():
        other = z_t.clone()
        other[0] = F.normalize(torch.randn(b, n, c), dim=-1)  # view 0's own teacher tokens: not read
        torch.testing.assert_close(model._casa_mim(tokens, z_s, other, mask)[0], loss)
        other = z_t.clone()
        other[1] = F.normalize(torch.randn(b, n, c), dim=-1)  # the other view's: T of û = 0
        assert not torch.allclose(model._casa_mim(tokens, z_s, other, mask)[0], loss)


def test_casa_loss_falls_under_sgd_on_a_fixed_batch():
    torch.manual_seed(0)
    model = IBOT(VIT, CROP, casa=True, mask_probability=1.0, **SMOKE).eval()  # eval: the centres stay
    views = torch.randn(3, 2, 1, *CROP)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    losses = []
    for _ in range(6):
        out = _step(model, views)  # the same masks every step; the teacher stays (no EMA step)
        losses.append(float(out["l_mim"]))
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    # from the second step on: the first moves the smoke head's bottleneck biases a long way (its
    # un-normalised output is ~1e-3 long at these widths, so their gradient is ~1e3; iBOT's plain
    # L_MIM does the same), then L_MIM^CASA descends
    assert all(a > b for a, b in zip(losses[1:], losses[2:])), losses
    assert losses[-1] < losses[1] - 0.05, losses
