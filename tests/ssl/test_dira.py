"""DiRA (baselines/dira.py): MoCo v2's InfoNCE against the queue at a known input, the queue's
wrap-round, the momentum encoder's EMA, the one-loss adversarial game (each player's term moves only
that player), the total's weights, the PatchGAN's shape, and bad settings naming their key."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from alice.errors import ConfigError
from alice.ssl.registry import build_method
from baselines.dira import PatchDiscriminator

pytestmark = pytest.mark.usefixtures("one_thread")

UNET = {"name": "unet3d", "widths": [4, 4, 8, 8, 16, 4]}
RESNET = {"name": "resnet3d", "depth": 10, "widen_factor": 0.0625, "features": 4}
CROP = [32, 32, 16]
SMALL = {"head": {"hidden_dim": 16, "dim": 4}, "queue_size": 5, "discriminator": {"widths": [4, 4, 8, 8]}}


def small(**overrides):
    return build_method("dira", {**SMALL, **overrides}, UNET, CROP)


def test_infonce_against_the_queue_at_a_known_input():
    method = small(temperature=0.5)
    q = torch.eye(4)[:2]                                   # two queries, their keys equal to them
    method.queue.copy_(torch.eye(4)[[2, 3, 2, 3, 2]])      # negatives orthogonal to both queries
    expected = -math.log(math.exp(1 / 0.5) / (math.exp(1 / 0.5) + 5))
    assert method.contrastive(q, q.clone()).item() == pytest.approx(expected, rel=1e-6)
    method.queue.copy_(torch.eye(4)[[0, 1, 0, 1, 0]])      # now the queue holds the queries themselves
    # q0 now meets 3 negatives at cosine 1 and 2 at 0, q1 2 and 3: the mean of −log(e²/(4e² + 2)), −log(e²/(3e² + 3))
    expected = (math.log(4 + 2 * math.exp(-2)) + math.log(3 + 3 * math.exp(-2))) / 2
    assert method.contrastive(q, q.clone()).item() == pytest.approx(expected, rel=1e-6)


def test_the_queue_replaces_its_oldest_keys_and_wraps_round():
    method = small()
    keys = F.normalize(torch.randn(3, 4), dim=1)
    method.enqueue(keys)
    assert torch.equal(method.queue[:3], keys) and int(method.queue_ptr) == 3
    more = F.normalize(torch.randn(3, 4), dim=1)
    method.enqueue(more)
    assert torch.equal(method.queue[3:], more[:2]) and torch.equal(method.queue[0], more[2])
    assert int(method.queue_ptr) == 1
    method.train()
    before = method.queue.clone()
    method({"x": torch.rand(2, 1, *CROP)})                 # a training forward queues its 2 keys
    assert int(method.queue_ptr) == 3 and torch.equal(method.queue[3:], before[3:])
    assert not torch.equal(method.queue[1:3], before[1:3])


def test_the_momentum_encoder_is_an_ema_of_the_online_one_and_gets_no_gradient():
    method = small(momentum=0.9).train()
    out = method({"x": torch.rand(2, 1, *CROP)})
    out["loss"].backward()
    assert all(p.grad is None and not p.requires_grad for p in method.momentum_body.parameters())
    assert all(p.grad is None for p in method.momentum_head.parameters())
    online = [p.detach().clone() for p in method.body.parameters()]
    with torch.no_grad():
        for p in method.body.parameters():
            p.add_(1.0)
    old = [p.detach().clone() for p in method.momentum_body.parameters()]
    method.after_step(0, 10)
    for o, t, s in zip(online, old, method.momentum_body.parameters()):
        torch.testing.assert_close(s, 0.9 * t + 0.1 * (o + 1.0))
    assert not method.momentum_body.training                 # BatchNorm of the keys: running statistics


def test_each_player_of_the_adversarial_game_moves_only_with_its_own_loss():
    method = small().train()
    x = torch.rand(2, 1, *CROP)
    restored = method.restoration(method.body(x))
    adv = method.adversarial(restored, x)
    adv["l_adv"].backward(retain_graph=True)                # the generator's term
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in method.discriminator.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in method.body.parameters())
    method.zero_grad(set_to_none=True)
    adv["l_d"].backward()                                  # the discriminator's term
    assert all(p.grad is None for p in method.body.parameters())
    assert all(p.grad is None for p in method.restoration.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in method.discriminator.parameters())
    # LSGAN: a discriminator scoring 1 on real and 0 on restored crops has L_D = 0 and gives L_adv = 1
    d = method.discriminator.model[-1]
    with torch.no_grad():
        d.weight.zero_()
        d.bias.fill_(1.0)
    adv = method.adversarial(restored, x)
    assert adv["l_adv"].item() == pytest.approx(0.0) and adv["l_d"].item() == pytest.approx(0.5)


def test_the_total_is_the_weighted_sum_and_every_part_learns():
    method = small(lambda_dis=2.0, lambda_res=3.0, lambda_adv=0.5, discriminator_weight=0.25).train()
    out = method({"x": torch.rand(2, 1, *CROP)})
    expected = 2.0 * out["l_dis"] + 3.0 * out["l_res"] + 0.5 * out["l_adv"] + 0.25 * out["l_d"]
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    out["loss"].backward()
    for module in (method.body.net.down_4, method.body.net.upcat_1, method.head, method.restoration,
                   method.discriminator):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())


def test_the_resnet_embeds_by_global_average_and_the_unet_by_a_grid():
    assert small().grid == (2, 2, 1)                       # instance norm (bottleneck 2×2×1)
    resnet = build_method("dira", SMALL, RESNET, [32, 32, 32])
    assert resnet.grid == (1, 1, 1) and resnet.head[0].in_features == 32  # BatchNorm: the paper's GAP
    assert set(resnet.encoder_state_dict()) == set(resnet.body.state_dict())


def test_the_batch_norm_head_normalises_queries_by_their_batch_and_keys_by_the_running_statistics():
    method = small(head={"hidden_dim": 16, "dim": 4, "norm": "batch"}).train()
    bn, bn_key = method.head[1], method.momentum_head[1]
    assert isinstance(bn, torch.nn.BatchNorm1d) and bn.training and not bn_key.training
    out = method({"x": torch.rand(2, 1, *CROP)})
    assert torch.isfinite(out["loss"]) and out["spread"] > 0
    assert not torch.equal(bn.running_mean, torch.zeros(16))       # the query batch moved them
    method.after_step(0, 10)                                        # buffers are copied to the keys' head
    assert torch.equal(bn_key.running_mean, bn.running_mean) and torch.equal(bn_key.running_var, bn.running_var)
    h = torch.randn(6, 16) * 3 + 5
    expected = (h - bn.running_mean) / (bn.running_var + bn.eps).sqrt() * bn_key.weight + bn_key.bias
    torch.testing.assert_close(bn_key(h), expected)


def test_the_patch_discriminator_scores_patches():
    d = PatchDiscriminator([4, 4, 8, 8])
    assert d(torch.rand(3, 1, 32, 32, 16)).shape == (3, 1, 4, 4, 2)
    with pytest.raises(ValueError):
        PatchDiscriminator([4, 8])


def test_bad_settings_name_their_key():
    with pytest.raises(ConfigError, match=r"pretrain\.methods\.dira\.lambda_gan\b"):
        build_method("dira", {"lambda_gan": 1.0}, UNET, CROP)
    with pytest.raises(ConfigError, match=r"pretrain\.methods\.dira.*temperature"):
        build_method("dira", {"temperature": 0.0}, UNET, CROP)
    with pytest.raises(ConfigError, match=r"pretrain\.methods\.dira.*head settings \['width'\]"):
        build_method("dira", {"head": {"width": 3}}, UNET, CROP)
    with pytest.raises(ConfigError, match=r"pretrain\.methods\.dira.*augment"):
        build_method("dira", {"augment": {"blur": 1.0}}, UNET, CROP)
    with pytest.raises(ConfigError, match=r"pretrain\.methods\.dira.*head\.norm"):
        build_method("dira", {"head": {"norm": "layer"}}, UNET, CROP)
    with pytest.raises(ConfigError, match=r"pretrain\.methods\.dira.*momentum_schedule"):
        build_method("dira", {"momentum_schedule": "step"}, UNET, CROP)
