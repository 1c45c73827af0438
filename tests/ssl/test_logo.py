"""LoGo (baselines/logo.py): the queue InfoNCE at a known value, the loss as the mean of MoCo's global
and local-to-global terms plus λ·L_ll plus the critic's −Ω, which player each term trains, the
pairs the critic sees, a critic that learns to tell two local views of one crop from two of different
crops (and the encoder term that then pushes the former apart), the key encoder's EMA, bad config."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from alice.errors import ConfigError
from alice.ssl.registry import build_method
from baselines.logo import AffinityMLP, LoGo, local_pairs

pytestmark = pytest.mark.usefixtures("one_thread")

RESNET = {"name": "resnet3d", "depth": 10, "widen_factor": 0.0625, "features": 4}
CROP = [32, 32, 32]
SMALL = {"head": {"hidden_dim": 16, "dim": 8}, "queue_size": 12, "affinity": {"hidden_dim": 16},
         "views": {"global_views": 2, "local_views": 2}}


def small(**overrides) -> LoGo:
    torch.manual_seed(0)
    return build_method("logo", {**SMALL, **overrides}, RESNET, CROP)


def test_queue_infonce_at_a_known_value():
    method = small(temperature=0.5)
    q = F.normalize(torch.tensor([[1.0] + [0.0] * 7, [0.0, 1.0] + [0.0] * 6]), dim=1)
    # the queue's 12 keys are orthogonal to both queries: logits (1/τ, 0, ..., 0)
    method.queue.copy_(F.normalize(torch.cat([torch.zeros(12, 2), torch.randn(12, 6)], dim=1), dim=1))
    loss, acc = method.infonce(q, q.clone())
    expected = -math.log(math.exp(2.0) / (math.exp(2.0) + 12.0))
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert acc.item() == 1.0


def test_loss_is_the_moco_mean_plus_the_local_terms_and_the_global_keys_are_queued():
    method = small(local_weight=0.3).train()
    before = method.queue.clone()
    views = torch.randn(4, 3, 1, *CROP)                        # 2 global + 2 local views, B = 3
    out = method({"views": views})
    moco = (2 * out["l_gg"] + 4 * out["l_lg"]) / 6              # (L_gg + L_lg) / (2 + 2L), eqs. 3-4
    expected = moco + 0.3 * out["l_ll"] + out["l_critic"]
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert out["l_critic"].item() == pytest.approx(2 * math.log(2), abs=0.3)   # a critic at chance: log 4
    # the two global views' keys (3 each) replaced the 6 oldest entries, nothing else
    changed = (method.queue != before).any(dim=1)
    assert changed[:6].all() and not changed[6:].any() and int(method.queue_ptr) == 6
    torch.testing.assert_close(method.queue.norm(dim=1), torch.ones(12))
    # too few views for the local-to-local term
    with pytest.raises(ValueError, match="at least 2 local views"):
        method({"views": views[:3]})


def test_each_player_gets_the_gradient_of_its_own_term_only():
    method = small()
    z = F.normalize(torch.randn(2, 4, 8), dim=-1).requires_grad_(True)
    l_ll, l_f, _ = method.local_terms(z)
    l_ll.backward()                                            # the encoder's term: through a frozen critic
    assert z.grad is not None and z.grad.abs().sum() > 0
    assert all(p.grad is None for p in method.affinity.parameters())
    z.grad = None
    l_f.backward()                                             # the critic's −Ω: on detached embeddings
    assert z.grad is None
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in method.affinity.parameters())


def test_the_critic_sees_same_crop_pairs_and_pairs_of_different_crops():
    n_local, b = 3, 4
    # row (l, sample) = (sample, local view)
    z = torch.tensor([[[float(s), float(l)] for s in range(b)] for l in range(n_local)])
    same1, same2, diff1, diff2 = local_pairs(z)
    assert same1.shape == (n_local * (n_local - 1) * b, 2)
    assert torch.equal(same1[:, 0], same2[:, 0]) and (same1[:, 1] != same2[:, 1]).all()
    assert (diff1[:, 0] != diff2[:, 0]).all() and (diff1[:, 1] != diff2[:, 1]).all()
    assert local_pairs(z[:, :1])[2].shape[0] == 0             # one sample: no pair of different crops


def test_a_trained_critic_tells_same_crop_pairs_and_the_encoder_term_pushes_them_apart():
    method = small(affinity={"hidden_dim": 64})
    torch.manual_seed(1)
    opt = torch.optim.Adam(method.affinity.parameters(), lr=3e-3)
    for _ in range(100):                                       # local views of one crop share a direction
        centres = torch.randn(1, 16, 8)
        z = F.normalize(centres + 0.4 * torch.randn(2, 16, 8), dim=-1)
        _, l_f, acc = method.local_terms(z)
        opt.zero_grad()
        l_f.backward()
        opt.step()
    assert l_f.item() < 0.8 and acc.item() > 0.8               # log 4 ≈ 1.39 at chance
    # the encoder's term L_ll = softplus(f(same pair)): its gradient lowers the critic's affinity
    z = z.detach().requires_grad_(True)
    l_ll, _, _ = method.local_terms(z)
    l_ll.backward()
    moved = F.normalize(z.detach() - 0.5 * z.grad / z.grad.norm(), dim=-1)
    assert method.local_terms(moved)[0].item() < l_ll.item()


def test_the_critic_is_frozen_only_where_asked():
    f = AffinityMLP(4, 8)
    z1, z2 = torch.randn(6, 4), torch.randn(6, 4)
    torch.testing.assert_close(f(z1, z2, frozen=True), f(z1, z2))


def test_the_key_encoder_is_an_ema_of_the_query_encoder():
    method = small(momentum=0.9)
    with torch.no_grad():
        for p in method.body.encoder.parameters():
            p.add_(1.0)
    online = next(method.body.encoder.parameters()).detach().clone()
    key = next(method.momentum_body.encoder.parameters())
    before = key.detach().clone()
    method.after_step(0, 10)
    torch.testing.assert_close(key, 0.9 * before + 0.1 * online)
    assert not any(p.requires_grad for p in method.momentum_body.parameters())
    assert not any(p.requires_grad for n, p in method.body.named_parameters() if not n.startswith("encoder."))


@pytest.mark.parametrize("config, key, message", [
    ({"bogus": 1}, "pretrain.methods.logo.bogus", "unknown key"),
    ({"views": {"local_views": 1}}, "pretrain.methods.logo", "local_views must be >= 2"),
    ({"views": {"global_views": 3}}, "pretrain.methods.logo", "global_views must be 2"),
    ({"views": {"scale": 1}}, "pretrain.methods.logo.views.scale", "not an option"),
    ({"affinity": {"depth": 3}}, "pretrain.methods.logo", "unknown head settings"),
    ({"affinity": {"noise": -1}}, "pretrain.methods.logo", "noise"),
    ({"local_weight": -0.1}, "pretrain.methods.logo", "local_weight"),
    ({"temperature": 0}, "pretrain.methods.logo", "temperature"),
    ({"head_norm": "layer"}, "pretrain.methods.logo", "head_norm"),
])
def test_bad_config_names_the_key(config, key, message):
    with pytest.raises(ConfigError, match=message) as info:
        build_method("logo", {**SMALL, **config}, RESNET, CROP)
    assert info.value.key == key
