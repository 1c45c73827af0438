"""BYOL (baselines/byol.py): Eq. 2 symmetrised, the cosine EMA of the target, what is trained, the
target's batch statistics, config errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from alice.errors import ConfigError
from alice.ssl.momentum import ema_momentum
from alice.ssl.registry import build_method

pytestmark = pytest.mark.usefixtures("one_thread")

RESNET = {"name": "resnet3d", "depth": 10, "widen_factor": 0.0625, "features": 4}
CROP = [64, 32, 32]
SMALL = {"projector": {"hidden_dim": 32, "dim": 16}, "predictor": {"hidden_dim": 32}}


def make(**config):
    torch.manual_seed(0)
    return build_method("byol", {**SMALL, **config}, RESNET, CROP).train()


def test_defaults_are_the_papers():
    method = build_method("byol", {}, {**RESNET, "widen_factor": 0.03125}, CROP)
    assert method.momentum == 0.996 and method.momentum_schedule == "cosine"
    assert [m.out_features for m in method.projector if isinstance(m, nn.Linear)] == [4096, 256]
    assert [m.out_features for m in method.predictor if isinstance(m, nn.Linear)] == [4096, 256]
    assert any(isinstance(m, nn.BatchNorm1d) for m in method.projector)


def test_identical_views_with_an_identity_predictor_give_zero_loss_and_other_crops_do_not():
    method = make()
    method.predictor = nn.Identity()            # q(z) = z and the target a copy of the online network
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 1, *CROP, generator=g)
    other = torch.randn(4, 1, *CROP, generator=g)
    same = method({"views": torch.stack([x, x])})
    assert float(same["l_byol"]) == pytest.approx(0.0, abs=1e-5)
    assert float(same["cos"]) == pytest.approx(1.0, abs=1e-6)
    different = method({"views": torch.stack([x, other])})
    assert 0.0 < float(different["l_byol"]) <= 8.0


def test_the_loss_is_two_minus_two_cosines_summed_over_both_directions():
    method = make()
    g = torch.Generator().manual_seed(2)
    v = torch.randn(2, 4, 1, *CROP, generator=g)
    out = method({"views": v})
    with torch.no_grad():
        z = [method.project(method.body, method.projector, v[i]) for i in range(2)]
        p = [method.predictor(zi) for zi in z]
        t = [method.project(method.target_body, method.target_projector, v[i]) for i in range(2)]
    cos = nn.functional.cosine_similarity
    expected = (2 - 2 * cos(p[0], t[1])).mean() + (2 - 2 * cos(p[1], t[0])).mean()
    torch.testing.assert_close(out["loss"].detach(), expected, atol=1e-5, rtol=1e-5)
    # symmetric: swapping the views gives the same loss
    swapped = method({"views": v.flip(0)})
    torch.testing.assert_close(swapped["loss"].detach(), out["loss"].detach(), atol=1e-5, rtol=1e-5)


def test_only_the_online_encoder_and_heads_learn_and_the_target_follows_the_cosine_ema():
    method = make()
    method({"views": torch.randn(2, 2, 1, *CROP)})["loss"].backward()
    for name, p in method.body.named_parameters():
        assert p.requires_grad == name.startswith("encoder.")   # the decoder is frozen
    for module in (method.target_body, method.target_projector):
        assert all(p.grad is None and not p.requires_grad for p in module.parameters())
    for module in (method.predictor, method.projector):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())
    with torch.no_grad():
        for p in method.projector.parameters():
            p.add_(1.0)
    online = [p.clone() for p in method.projector.parameters()]
    target = [p.clone() for p in method.target_projector.parameters()]
    method.after_step(3, 10)
    m = ema_momentum(3, 10, 0.996)
    assert 0.996 < m < 1.0
    for o, t, new in zip(online, target, method.target_projector.parameters()):
        torch.testing.assert_close(new, m * t + (1 - m) * o)
    before = [p.clone() for p in method.target_projector.parameters()]
    method.after_step(9, 10)                                # the last step: τ = 1, the target stays
    for b, new in zip(before, method.target_projector.parameters()):
        torch.testing.assert_close(new, b)
    assert set(method.encoder_state_dict()) == set(method.body.state_dict())


def test_the_target_normalises_with_its_batch_statistics():
    method = make()
    assert method.target_body.training and method.target_projector.training
    x = torch.randn(4, 1, *CROP)
    y = x.clone()
    y[3] = torch.randn(1, *CROP)
    with torch.no_grad():
        a = method.project(method.target_body, method.target_projector, x)
        b = method.project(method.target_body, method.target_projector, y)
    assert not torch.allclose(a[0], b[0])                   # sample 0's target moved with sample 3
    method.eval()
    assert not method.target_body.training


@pytest.mark.parametrize("config, key", [
    ({"tau": 0.99}, "pretrain.methods.byol.tau"),
    ({"momentum": 1.5}, "pretrain.methods.byol"),
    ({"projector": {"hidden_dim": 0}}, "pretrain.methods.byol"),
    ({"predictor": {"dim": 8}}, "pretrain.methods.byol"),
    ({"views": {"augment": {"angle": 3}}}, "pretrain.methods.byol.views.augment"),
])
def test_bad_config_raises_naming_the_key(config, key):
    with pytest.raises(ConfigError) as err:
        build_method("byol", {**SMALL, **config}, RESNET, CROP)
    assert key in str(err.value)
