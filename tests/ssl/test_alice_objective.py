import pytest
import torch

from alice.ssl.alice import AliceModel, masked_mse
from alice.ssl.augment import strong_augment

CROP = (32, 32, 16)
ENC = {"name": "vit", "embed_dim": 24, "depth": 2, "heads": 2, "mlp_ratio": 2, "patch": 8}


def make(**kw):
    torch.manual_seed(0)
    args = dict(decoder={"dim": 16, "depth": 1, "heads": 2}, head={"hidden_dim": 32, "bottleneck_dim": 16},
                casa_dim=16, mask_ratio=0.75)
    args.update(kw)
    return AliceModel(ENC, CROP, **args)


def batch(seed=0, b=2):
    g = torch.Generator().manual_seed(seed)
    return {"Q": torch.randn(b, 1, *CROP, generator=g), "K": torch.randn(b, 1, *CROP, generator=g)}


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_forward_keys_masks_and_determinism():
    m = make()
    out = m(batch(), generator=gen())
    assert {"loss", "l_r", "l_dv", "l_st"} <= set(out)
    mask_q, _ = m.last_masks
    assert mask_q.shape == (2, 32) and (mask_q.sum(1) == 32 - 8).all()
    assert all(v.ndim == 0 for v in out.values())  # every returned term is a loggable scalar
    out2 = m(batch(), generator=gen())
    for k in ("loss", "l_r", "l_dv", "l_st"):
        assert out[k].ndim == 0 and torch.isfinite(out[k]) and out[k] > 0
        torch.testing.assert_close(out[k], out2[k])
    torch.testing.assert_close(out["loss"], out["l_r"] + out["l_dv"] + out["l_st"])


def test_gradients_reach_only_online_side():
    m = make()
    m(batch(), generator=gen())["loss"].backward()
    for name, p in list(m.target_encoder.named_parameters()) + list(m.psi.named_parameters()):
        assert p.grad is None and not p.requires_grad, name
    for mod in (m.encoder, m.decoder, m.phi, m.casa):
        for name, p in mod.named_parameters():
            if "cross_attn" in name:  # MONAI TransformerBlock always builds an unused norm_cross_attn
                assert not p.requires_grad
                continue
            assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_teacher_side_is_stop_gradient():
    """ℓ_st alone: CASA's gradient equals the gradient of the student branch only."""
    m = make(objectives=("st",))
    captured = {}
    orig = m.casa.forward

    def spy(v, kv):
        out = orig(v, kv)
        captured.setdefault("calls", []).append((kv.requires_grad, out.requires_grad))
        return out

    m.casa.forward = spy
    m(batch(), generator=gen())["loss"].backward()
    # student calls (kv = H, grad) then teacher calls (kv = Y, no grad, output detached)
    assert captured["calls"] == [(True, True), (True, True), (False, False), (False, False)]
    assert all(p.grad is None for p in m.target_encoder.parameters())


def test_masked_mse_ignores_visible_patches():
    pred, target = torch.randn(2, 6, 5), torch.randn(2, 6, 5)
    mask = torch.tensor([[True, False, True, False, False, False], [False] * 5 + [True]])
    base = masked_mse(pred, target, mask)
    pred2 = pred.clone()
    pred2[~mask] += 10.0
    torch.testing.assert_close(masked_mse(pred2, target, mask), base)
    ref = sum(((pred[b, i] - target[b, i]) ** 2).mean() for b, i in mask.nonzero().tolist()) / 3
    torch.testing.assert_close(base, ref)


def test_l_r_only_counts_masked_patches_in_model():
    m = make(objectives=("mim",))
    grads = {}
    orig = m.decoder.forward

    def keep(vis, ids):
        pred, h = orig(vis, ids)
        pred.retain_grad()
        grads.setdefault("pred", []).append(pred)
        return pred, h

    m.decoder.forward = keep
    out = m(batch(), generator=gen())
    out["loss"].backward()
    for pred, mask in zip(grads["pred"], m.last_masks):
        assert (pred.grad[~mask] == 0).all() and (pred.grad[mask] != 0).any()


def test_ema_update_formula():
    m = make()
    with torch.no_grad():
        for p in m.encoder.parameters():
            p.fill_(1.0)
        for p in m.target_encoder.parameters():
            p.fill_(3.0)
        for p in m.phi.parameters():
            p.fill_(-1.0)
        for p in m.psi.parameters():
            p.fill_(1.0)
    m.update_target(0.9)
    for p in m.target_encoder.parameters():
        torch.testing.assert_close(p, torch.full_like(p, 0.9 * 3 + 0.1 * 1))
    for p in m.psi.parameters():
        torch.testing.assert_close(p, torch.full_like(p, 0.9 - 0.1))
    assert m.momentum_at(0, 100) == pytest.approx(0.996)
    assert m.momentum_at(99, 100) == pytest.approx(1.0)
    before = [p.clone() for p in m.target_encoder.parameters()]
    m.after_step(0, 100)  # trainer hook: EMA with the scheduled momentum
    for b, p, o in zip(before, m.target_encoder.parameters(), m.encoder.parameters()):
        torch.testing.assert_close(p, 0.996 * b + 0.004 * o)
    assert make(momentum_schedule="constant").momentum_at(50, 100) == 0.996


@pytest.mark.parametrize(
    "kw, nonzero",
    [
        ({}, {"l_r", "l_dv", "l_st"}),
        ({"inter_volume": False}, {"l_r", "l_st"}),
        ({"objectives": ("mim",)}, {"l_r"}),
        ({"objectives": ("mim", "dv")}, {"l_r", "l_dv"}),
        ({"objectives": ("st",)}, {"l_st"}),
        ({"casa": False}, {"l_r", "l_dv", "l_st"}),
        ({"contrastive_loss": "infonce"}, {"l_r", "l_dv", "l_st"}),
        ({"target_mask_ratio": 0.5}, {"l_r", "l_dv", "l_st"}),
        ({"loss_weights": {"r": 0.0}}, {"l_r", "l_dv", "l_st"}),
    ],
)
def test_switches(kw, nonzero):
    m = make(**kw)
    out = m(batch(), generator=gen())
    got = {k for k in ("l_r", "l_dv", "l_st") if out[k].abs() > 0}
    assert got == nonzero
    w = m.loss_weights
    torch.testing.assert_close(out["loss"], w["r"] * out["l_r"] + w["dv"] * out["l_dv"] + w["st"] * out["l_st"])


def test_casa_switch_changes_l_st():
    a = make()(batch(), generator=gen())["l_st"]
    b = make(casa=False)(batch(), generator=gen())["l_st"]
    assert not torch.allclose(a, b)


def test_strong_augment_seeded_and_shapes():
    x = torch.randn(2, 1, *CROP)
    a = strong_augment(x, gen(5))
    assert a.shape == x.shape
    torch.testing.assert_close(a, strong_augment(x, gen(5)))
    assert not torch.allclose(a, strong_augment(x, gen(6)))
    assert not torch.allclose(a, x)


def test_overfit_one_batch_decreases_l_r_and_l_st():
    m = make(mask_ratio=0.5)
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=2e-3)
    b = batch(1)
    first = last = None
    for step in range(30):
        out = m(b, generator=gen(0))  # same masks/augmentations each step: a fixed problem
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        m.update_target(m.momentum_at(step, 30))
        vals = (out["l_r"].item(), out["l_st"].item())
        first = first or vals
        last = vals
    assert last[0] < 0.9 * first[0]
    assert last[1] < 0.9 * first[1]


def test_strong_augment_identity_when_disabled():
    from alice.ssl.augment import StrongAugmentConfig

    cfg = StrongAugmentConfig(max_angle_deg=0.0, scale_range=(1.0, 1.0), flip_prob=0.0, intensity_scale=0.0,
                              intensity_shift=0.0)
    x = torch.randn(2, 1, *CROP)
    torch.testing.assert_close(strong_augment(x, gen(0), cfg), x, rtol=1e-4, atol=1e-4)
    flip = StrongAugmentConfig(max_angle_deg=0.0, scale_range=(1.0, 1.0), flip_prob=1.0, intensity_scale=0.0,
                               intensity_shift=0.0)
    torch.testing.assert_close(strong_augment(x, gen(0), flip), x.flip(2, 3, 4), rtol=1e-4, atol=1e-4)


def test_registered_method_and_checkpoint_keys():
    from monai.networks.nets import UNETR

    from alice.errors import ConfigError
    from alice.ssl.registry import build_method

    m = build_method("alice", {"decoder": {"dim": 16, "depth": 1, "heads": 2}, "casa_dim": 16,
                               "head": {"hidden_dim": 32, "bottleneck_dim": 16}},
                     {"name": "vit", "embed_dim": 24, "depth": 12, "heads": 2, "patch": 16}, (32, 32, 16))
    assert isinstance(m, AliceModel) and not m.find_unused_parameters
    unetr = UNETR(1, 2, (32, 32, 16), feature_size=4, hidden_size=24, mlp_dim=96, num_heads=2)
    unetr.vit.load_state_dict(m.encoder_state_dict(), strict=True)
    with pytest.raises(ConfigError):
        build_method("alice", {"nope": 1}, ENC, CROP)


def test_spread_is_zero_for_collapsed_and_near_one_for_spread_embeddings():
    from alice.ssl.alice import spread

    g = torch.Generator().manual_seed(0)
    one = torch.randn(1, 64, generator=g)
    assert spread(one.expand(16, 64)).item() == pytest.approx(0.0, abs=1e-6)
    assert spread(torch.randn(512, 64, generator=g)).item() == pytest.approx(1.0, abs=0.05)
    tokens = torch.randn(8, 5, 64, generator=g)  # (B, T, C): averaged over tokens first
    torch.testing.assert_close(spread(tokens), spread(tokens.mean(1)))


def test_spread_monitors_logged_for_batches_of_two_or_more():
    m = make()
    out = m(batch(b=2), generator=gen())
    assert {"dv_spread", "st_spread"} <= set(out)
    assert all(0 < out[k] < 2 for k in ("dv_spread", "st_spread"))
    assert not out["dv_spread"].requires_grad
    torch.testing.assert_close(out["loss"], out["l_r"] + out["l_dv"] + out["l_st"])  # not in the loss
    assert not {"dv_spread", "st_spread"} & set(m(batch(b=1), generator=gen()))
