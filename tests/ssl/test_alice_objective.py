import pytest
import torch

from alice.ssl.alice import AliceModel, cosine_loss, masked_mse
from alice.ssl.augment import MaeAugmentConfig, mae_augment, strong_augment

CROP = (32, 32, 16)
ENC = {"name": "vit", "embed_dim": 24, "depth": 2, "heads": 2, "mlp_ratio": 2, "patch": 8}


def make(**kw):
    torch.manual_seed(0)
    args = dict(decoder={"dim": 16, "depth": 1, "heads": 2}, head={"hidden_dim": 32, "bottleneck_dim": 16},
                casa_dim=12, mask_ratio=0.75, predictor_hidden_dim=20, dino={"prototypes": 32})
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
    for mod in (m.encoder, m.decoder, m.phi, m.casa, m.predictor_dv, m.predictor_st):
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
        ({"contrastive_loss": "dino"}, {"l_r", "l_dv", "l_st"}),
        ({"predictor": False}, {"l_r", "l_dv", "l_st"}),
        ({"head_norm": "none"}, {"l_r", "l_dv", "l_st"}),
        ({"casa": False, "contrastive_loss": "dino"}, {"l_r", "l_dv", "l_st"}),
        ({"online_augment": {"enabled": False}}, {"l_r", "l_dv", "l_st"}),
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


@pytest.mark.parametrize("augment", [strong_augment, mae_augment])
def test_augment_seeded_and_shapes(augment):
    """Both view augmentations: same seed, same view; another seed, another; never the input."""
    x = torch.randn(2, 1, *CROP)
    a = augment(x, gen(5))
    assert a.shape == x.shape
    torch.testing.assert_close(a, augment(x, gen(5)))
    assert not torch.allclose(a, augment(x, gen(6)))
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


class Spy:
    """Records the inputs and outputs of a module's forward calls."""

    def __init__(self, module):
        self.calls, self.orig = [], module.forward
        module.forward = self

    def __call__(self, *args, **kw):
        out = self.orig(*args, **kw)
        self.calls.append((args, out))
        return out


def test_head_norm_switch():
    assert sum(isinstance(x, torch.nn.BatchNorm1d) for x in make().phi.modules()) == 2
    assert not any(isinstance(x, torch.nn.BatchNorm1d) for x in make(head_norm="none").psi.modules())
    with pytest.raises(ValueError):
        make(head_norm="layer")


def test_casa_keys_and_values_are_phi_and_psi_outputs():
    """§3.2–3.3: CASA's query is V (online encoder), its keys/values φ(H) for S and ψ(Y) for T."""
    m = make(objectives=("st",))
    assert m.casa.w_k.in_features == m.phi.out_dim == 16
    enc, dec, tgt, casa = Spy(m.encoder), Spy(m.decoder), Spy(m.target_encoder), Spy(m.casa)
    m(batch(), generator=gen())
    (v_u, _, _), (v_r, _, _) = enc.calls[0][1], enc.calls[1][1]
    (_, h_u), (_, h_r) = dec.calls[0][1], dec.calls[1][1]
    (y_w, _, _), (y_v, _, _) = tgt.calls[0][1], tgt.calls[1][1]
    expected = [(v_u, m.phi(h_u)), (v_r, m.phi(h_r)), (v_u, m.psi(y_w)), (v_r, m.psi(y_v))]
    assert len(casa.calls) == 4
    for (args, _), (v, kv) in zip(casa.calls, expected):
        torch.testing.assert_close(args[0], v)
        torch.testing.assert_close(args[1], kv)


def _captured_terms(m, objectives):
    enc, dec, tgt, casa = Spy(m.encoder), Spy(m.decoder), Spy(m.target_encoder), Spy(m.casa)
    out = m(batch(), generator=gen())
    h = [m.phi(c[1][1]) for c in dec.calls]
    y = [m.psi(c[1][0]).detach() for c in tgt.calls]
    return out, h, y, casa


@pytest.mark.parametrize("predictor", [True, False])
def test_l_dv_goes_through_the_predictor_on_the_online_side(predictor):
    """eq. 2 with BYOL's predictor q: ℓ_s(q([cls]_u^Q), [cls]_v^K) + ℓ_s(q([cls]_r^K), [cls]_w^Q)."""
    m = make(objectives=("dv",), predictor=predictor)
    out, (h_u, h_r), (y_w, y_v), _ = _captured_terms(m, ("dv",))
    q = m.predictor_dv if predictor else (lambda z: z)
    expected = cosine_loss(q(h_u.mean(1)), y_v.mean(1)) + cosine_loss(q(h_r.mean(1)), y_w.mean(1))
    torch.testing.assert_close(out["l_dv"], expected)
    out["loss"].backward()
    assert all(p.grad is None for p in m.casa.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.phi.parameters())
    assert all(p.grad is None for p in list(m.psi.parameters()) + list(m.target_encoder.parameters()))
    if predictor:
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.predictor_dv.parameters())
        assert all(p.grad is None for p in m.predictor_st.parameters())
    else:
        assert not hasattr(m, "predictor_dv") and not hasattr(m, "predictor_st")


@pytest.mark.parametrize("predictor", [True, False])
def test_l_st_goes_through_the_predictor_per_token(predictor):
    """eq. 5 with the predictor on each student token S: ℓ_s(q(S_u^Q), T_w^Q) + ℓ_s(q(S_r^K), T_v^K);
    gradient reaches CASA, φ (through the keys/values φ(H)) and the predictor, never ψ / E_t."""
    m = make(objectives=("st",), predictor=predictor)
    out, _, _, casa = _captured_terms(m, ("st",))
    s_u, s_r, t_w, t_v = (c[1] for c in casa.calls)
    assert s_u.requires_grad and not t_w.requires_grad and not t_v.requires_grad
    q = m.predictor_st if predictor else (lambda z: z)
    torch.testing.assert_close(out["l_st"], cosine_loss(q(s_u), t_w) + cosine_loss(q(s_r), t_v))
    out["loss"].backward()
    for mod in [m.casa, m.phi, m.encoder] + ([m.predictor_st] if predictor else []):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in mod.parameters() if p.requires_grad)
    assert all(p.grad is None for p in list(m.psi.parameters()) + list(m.target_encoder.parameters()))
    if predictor:
        assert all(p.grad is None for p in m.predictor_dv.parameters())


def test_predictor_is_not_an_ema_pair_and_spread_is_measured_before_it():
    m = make()
    assert all(online is not m.predictor_dv for online, _ in m.ema_pairs())
    a = m(batch(), generator=gen())
    with torch.no_grad():
        for p in m.predictor_dv.parameters():
            p.mul_(3.0)
    b = m(batch(), generator=gen())
    torch.testing.assert_close(a["dv_spread"], b["dv_spread"])  # φ's output: the predictor plays no part
    assert not torch.allclose(a["l_dv"], b["l_dv"])


def test_dino_variant_centre_prototypes_and_gradients():
    """The released code's loss: prototypes, centring (EMA centre) and sharpening, cross-entropy."""
    m = make(contrastive_loss="dino", dino={"prototypes": 32, "center_momentum": 0.5})
    assert not hasattr(m, "predictor_dv")  # DINO's centring and sharpening take the predictor's place
    assert m.center_dv.abs().sum() == 0
    out = m(batch(), generator=gen())
    assert m.center_dv.abs().sum() > 0 and m.center_st.abs().sum() > 0
    out["loss"].backward()
    for mod in (m.prototypes_dv, m.prototypes_st, m.casa, m.phi):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in mod.parameters())
    assert all(p.grad is None and not p.requires_grad for p in m.prototypes_dv_target.parameters())
    m.eval()
    before = m.center_st.clone()
    m(batch(), generator=gen())
    torch.testing.assert_close(m.center_st, before)  # the centre moves only in training
    m.train()
    with torch.no_grad():
        m.prototypes_dv.weight.fill_(1.0)
        m.prototypes_dv_target.weight.fill_(3.0)
    m.update_target(0.9)
    torch.testing.assert_close(m.prototypes_dv_target.weight, torch.full_like(m.prototypes_dv.weight, 2.8))


def test_dino_loss_matches_its_definition():
    from alice.ssl.alice import dino_loss

    s, t, c = torch.randn(3, 5, 7), torch.randn(3, 5, 7), torch.randn(7)
    p = torch.softmax((t - c) / 0.04, -1)
    ref = -(p * torch.log_softmax(s / 0.1, -1)).sum(-1).mean()
    torch.testing.assert_close(dino_loss(s, t, c, 0.1, 0.04), ref)


def test_online_views_are_mae_augmented_before_masking_and_l_r_reconstructs_them():
    m = make(objectives=("mim",))
    enc = Spy(m.encoder)
    seen = []
    orig = m.encoder.patchify
    m.encoder.patchify = lambda x: (seen.append(x), orig(x))[1]
    b = batch()
    m(b, generator=gen())
    for (args, _), x, view in zip(enc.calls, seen, (b["Q"], b["K"])):
        assert args[0] is x  # ℓ_r's target is the view the encoder saw
        assert not torch.allclose(x, view)
    m2 = make(objectives=("mim",), online_augment={"enabled": False})
    enc2 = Spy(m2.encoder)
    m2(b, generator=gen())
    assert enc2.calls[0][0][0] is b["Q"]


def test_mae_augment_identity_flip_and_crop():
    x = torch.randn(2, 1, *CROP)
    whole = MaeAugmentConfig(scale_range=(1.0, 1.0), ratio_range=(1.0, 1.0), flip_prob=0.0)
    torch.testing.assert_close(mae_augment(x, gen(0), whole), x, rtol=1e-4, atol=1e-4)
    flip = MaeAugmentConfig(scale_range=(1.0, 1.0), ratio_range=(1.0, 1.0), flip_prob=1.0, flip_axes=(0, 2))
    torch.testing.assert_close(mae_augment(x, gen(0), flip), x.flip(2, 4), rtol=1e-4, atol=1e-4)
    assert mae_augment(x, gen(0), MaeAugmentConfig(enabled=False)) is x
    # a ramp along X: a crop holding 1/8 of the voxels with cubic aspect spans half of X
    ramp = torch.linspace(-1, 1, CROP[0]).view(1, 1, -1, 1, 1).expand(1, 1, *CROP).contiguous()
    half = MaeAugmentConfig(scale_range=(0.125, 0.125), ratio_range=(1.0, 1.0), flip_prob=0.0)
    out = mae_augment(ramp, gen(3), half)
    assert out.amax() - out.amin() == pytest.approx(1.0, abs=0.1)
