"""MoCo v2 (baselines/mocov2.py): Eq. 1 against the queue, the queue's FIFO and its place in the
resumable state, Shuffling BN's groups, the momentum update, the frozen decoder, config errors."""

from __future__ import annotations

import math

import pytest
import torch

from alice.errors import ConfigError
from alice.ssl.registry import build_method
from alice.ssl.trainer import step_seed

pytestmark = pytest.mark.usefixtures("one_thread")

RESNET = {"name": "resnet3d", "depth": 10, "widen_factor": 0.0625, "features": 4}
CROP = [64, 32, 32]                       # bottleneck 2x1x1: BatchNorm has 2 values a sample
SMALL = {"head": {"hidden_dim": 32, "dim": 16}, "queue_size": 8, "bn_group_size": 2}


def make(**config):
    torch.manual_seed(0)
    return build_method("mocov2", {**SMALL, **config}, RESNET, CROP).train()


def test_the_loss_is_eq1_against_the_queue_on_a_hand_built_case():
    method = make(temperature=0.5)
    q = torch.eye(16)[:2]                                   # unit queries e0, e1
    k = q.clone()                                           # positives equal to the queries: q·k₊ = 1
    method.queue.copy_(torch.eye(16)[8:16])                 # K = 8 negatives orthogonal to both: q·k_i = 0
    loss, acc = method.infonce(q, k)
    expected = -math.log(math.exp(1 / 0.5) / (math.exp(1 / 0.5) + 8 * math.exp(0.0)))
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    assert float(acc) == 1.0
    # a negative equal to the query ties the positive: the loss rises by exactly that term
    method.queue[0] = q[0]
    loss2, _ = method.infonce(q[:1], k[:1])
    e = math.exp(2.0)
    assert float(loss2) == pytest.approx(-math.log(e / (e + e + 7)), rel=1e-6)


def test_identical_views_give_a_lower_loss_than_views_of_other_crops():
    method = make(bn_group_size=8)   # one BatchNorm group: the key encoder (a copy) returns the queries
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 1, *CROP, generator=g)
    other = torch.randn(4, 1, *CROP, generator=g)
    queue = method.queue.clone()
    same = method.contrast(x, x)
    method.queue.copy_(queue)                               # the same negatives for both
    different = method.contrast(x, other)
    assert float(same["l_ctr"]) < float(different["l_ctr"])
    assert float(same["acc"]) == 1.0
    # with q = k₊ the positive logit is 1/τ
    q = method.query(x)
    torch.testing.assert_close((q * method.keys(x)).sum(1), torch.ones(4), atol=1e-5, rtol=0)


def test_the_queue_is_a_fifo_of_the_keys_and_part_of_the_state():
    method = make()
    assert {"queue", "queue_ptr"} <= set(method.state_dict())
    first = torch.nn.functional.normalize(torch.randn(5, 16), dim=1)
    second = torch.nn.functional.normalize(torch.randn(5, 16), dim=1)
    old = method.queue.clone()
    method.enqueue(first)
    assert int(method.queue_ptr) == 5
    torch.testing.assert_close(method.queue[:5], first)
    torch.testing.assert_close(method.queue[5:], old[5:])
    method.enqueue(second)                                   # wraps: rows 5, 6, 7, 0, 1
    assert int(method.queue_ptr) == 2
    torch.testing.assert_close(method.queue[5:], second[:3])
    torch.testing.assert_close(method.queue[:2], second[3:])
    torch.testing.assert_close(method.queue[2:5], first[2:5])
    # forward queues the batch's keys (B = 2 here), after computing the loss with the old queue
    before = method.queue.clone()
    x = torch.randn(2, 2, 1, *CROP)
    method({"views": x})
    assert int(method.queue_ptr) == 4
    torch.testing.assert_close(method.queue[4:], before[4:])
    assert not torch.allclose(method.queue[2:4], before[2:4])


def test_shuffling_bn_normalises_each_key_with_its_permuted_group_only():
    method = make()
    g = torch.Generator().manual_seed(2)
    x = torch.randn(4, 1, *CROP, generator=g)
    perm = torch.tensor([0, 2, 1, 3])                       # key groups {0, 2} and {1, 3}
    k = method.keys(x, perm)
    y = x.clone()
    y[1] = torch.randn(1, *CROP, generator=g)               # sample 1 only shares a group with 3
    k2 = method.keys(y, perm)
    torch.testing.assert_close(k2[[0, 2]], k[[0, 2]])
    assert not torch.allclose(k2[3], k[3])
    # the queries are normalised in consecutive groups {0, 1}, {2, 3}: sample 1 moves query 0
    q, q2 = method.query(x), method.query(y)
    assert not torch.allclose(q2[0], q[0])
    torch.testing.assert_close(q2[[2, 3]], q[[2, 3]])
    # the keys come back in the batch's order whatever the permutation (one group: BN over all)
    whole = make(bn_group_size=4)
    torch.testing.assert_close(whole.keys(x, torch.tensor([3, 1, 0, 2])), whole.keys(x, torch.arange(4)))


def test_momentum_update_and_what_is_trained():
    method = make(momentum=0.9)
    assert method.momentum_schedule == "constant"           # MoCo v2 keeps m fixed
    x = torch.randn(2, 4, 1, *CROP)
    method({"views": x})["loss"].backward()
    for name, p in method.body.named_parameters():
        if name.startswith("encoder."):
            assert p.requires_grad
        else:                                               # the decoder: no loss reaches it
            assert not p.requires_grad and p.grad is None
    assert all(p.grad is None and not p.requires_grad for p in method.momentum_body.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in method.head.parameters())
    with torch.no_grad():
        for p in method.body.parameters():
            p.add_(1.0)
    online = [p.clone() for p in method.body.parameters()]
    target = [p.clone() for p in method.momentum_body.parameters()]
    method.after_step(0, 10)
    for o, t, new in zip(online, target, method.momentum_body.parameters()):
        torch.testing.assert_close(new, 0.9 * t + 0.1 * o)
    # the checkpoint is the whole network (the backbone takes its encoder)
    assert set(method.encoder_state_dict()) == set(method.body.state_dict())


def _loader(seed, start):
    for i in range(start, start + 50):
        g = torch.Generator().manual_seed(step_seed(seed, i))
        yield {"views": torch.randn(2, 2, 1, *CROP, generator=g)}


@pytest.mark.slow
def test_a_resumed_run_equals_an_uninterrupted_one(tmp_path):
    from alice.ssl.trainer import pretrain

    optim = {"lr": 1e-3, "iterations": 4, "warmup_iterations": 1}
    kw = dict(optim=optim, encoder_config=RESNET, method_name="mocov2", checkpoint_every=100, seed=5,
              device="cpu", progress=False)
    straight = make()
    pretrain(straight, _loader, tmp_path / "a", **kw)
    resumed = make()
    pretrain(resumed, _loader, tmp_path / "b", max_steps_this_run=2, **kw)
    resumed = make()                                        # a new process: the state comes from resume.pt
    pretrain(resumed, _loader, tmp_path / "b", **kw)
    assert int(straight.queue_ptr) == int(resumed.queue_ptr) == 0   # 4 steps x 2 keys = 8: full circle
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)
    loss = lambda d: [r.split(",")[2] for r in (tmp_path / d / "log.csv").read_text().splitlines()[1:]]
    assert loss("a") == loss("b")


@pytest.mark.parametrize("config, key", [
    ({"queue": 16}, "pretrain.methods.mocov2.queue"),
    ({"queue_size": 0}, "pretrain.methods.mocov2"),
    ({"temperature": 0.0}, "pretrain.methods.mocov2"),
    ({"head": {"hidden": 8}}, "pretrain.methods.mocov2"),
    ({"momentum_schedule": "linear"}, "pretrain.methods.mocov2"),
    ({"head_norm": "layer"}, "pretrain.methods.mocov2"),
    ({"symmetric": "yes"}, "pretrain.methods.mocov2"),
    ({"views": {"crop": 1}}, "pretrain.methods.mocov2.views.crop"),
])
def test_bad_config_raises_naming_the_key(config, key):
    with pytest.raises(ConfigError) as err:
        build_method("mocov2", {**SMALL, **config}, RESNET, CROP)
    assert key in str(err.value)
