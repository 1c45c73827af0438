"""The fast-path switches: each computes what the plain path computes (within rounding), and a
deferred step reads nothing on the host."""

from __future__ import annotations

import pytest
import torch

from alice.errors import ConfigError
from alice.fastpath import FastPath, HostSyncs, Prefetcher, optimizer_options, resolve_fast_path, set_attention
from alice.runstate import NonFiniteLoss
from alice.training import OptimizerStep, PendingSteps

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def test_auto_is_on_for_cuda_and_off_on_a_cpu():
    assert resolve_fast_path(None, CPU) == FastPath("math", False, 1, 0, False)
    assert resolve_fast_path("auto", CUDA) == FastPath("sdpa", True, 50, 2, False)
    every_auto = {"attention": "auto", "fused_optimizer": "auto", "sync_every": "auto", "prefetch": "auto",
                  "compile": False}
    assert resolve_fast_path(every_auto, CPU) == FastPath()
    assert resolve_fast_path({"sync_every": 8, "attention": "sdpa"}, CPU) == FastPath("sdpa", False, 8, 0, False)
    assert resolve_fast_path({"attention": "math"}, CUDA).fused_optimizer is True
    for bad, key in (({"atention": "sdpa"}, "fast_path.atention"), ({"attention": "flash"}, "fast_path.attention"),
                     ({"sync_every": 0}, "fast_path.sync_every"), ({"prefetch": True}, "fast_path.prefetch"),
                     ({"compile": "yes"}, "fast_path.compile")):
        with pytest.raises(ConfigError, match=key):
            resolve_fast_path(bad, CPU)


def test_config_passes_only_the_switches_set():
    from alice import config as cfg

    config = cfg.load_config("config/config.yaml")
    assert "fast_path" not in cfg.pretrain_settings(config, "alice", "vit")  # every switch auto: params unchanged
    config["fast_path"]["sync_every"] = 10
    assert cfg.finetune_settings(config, "unetr")["fast_path"] == {"sync_every": 10}
    assert cfg.pretrain_settings(config, "alice", "vit")["fast_path"] == {"sync_every": 10}


def _grads(module):
    return [p.grad.clone() for p in module.parameters() if p.grad is not None]


def _same_output_and_grads(module, x, forward):
    outs, grads = [], []
    for attention in ("math", "sdpa", "math"):
        n = set_attention(module, attention)
        module.zero_grad(set_to_none=True)
        out = forward(module, x)
        out.square().mean().backward()
        outs.append(out.detach())
        grads.append(_grads(module))
    assert n > 0
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-4, atol=1e-5)
    for a, b in zip(grads[1], grads[0]):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)
    assert torch.equal(outs[2], outs[0])  # and back to the plain path exactly
    return n


def test_sdpa_attention_in_the_vit_gives_the_same_tokens_and_gradients():
    from alice.models.vit import ViTEncoder

    torch.manual_seed(0)
    enc = ViTEncoder((32, 32, 16), patch=8, embed_dim=24, depth=2, heads=2)
    n = _same_output_and_grads(enc, torch.randn(2, 1, 32, 32, 16), lambda m, x: m(x)[0])
    assert n == 2


def test_sdpa_attention_in_swin_windows_gives_the_same_features_and_gradients():
    from monai.networks.nets.swin_unetr import WindowAttention

    from alice.models.swin import SwinEncoder

    torch.manual_seed(0)
    enc = SwinEncoder({"name": "swin", "embed_dim": 12, "depths": [2, 2, 2, 2], "heads": [3, 6, 12, 24],
                       "window": [4, 4, 2], "mlp_ratio": 4})
    x = torch.randn(2, 1, 64, 32, 32)
    n = _same_output_and_grads(enc, x, lambda m, v: m.stages(m.embed(v))[-1])
    assert n == sum(isinstance(m, WindowAttention) for m in enc.modules()) > 0
    assert all(type(m) is WindowAttention for m in enc.modules() if isinstance(m, WindowAttention))
    state = enc.state_dict()
    set_attention(enc, "sdpa")
    assert enc.state_dict().keys() == state.keys()  # the same parameters: checkpoints load either way


@pytest.mark.parametrize("name", ["adamw", "sgd"])
def test_fused_optimizer_takes_the_same_steps(name):
    from alice.downstream.schedules import build_optimizer

    optim = {"optimizer": name, "lr": 1e-2, "weight_decay": 0.01, "momentum": 0.9}
    nets = []
    for fused in (False, True):
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        opt = build_optimizer(net.parameters(), optim, **optimizer_options(FastPath(fused_optimizer=fused)))
        assert opt.defaults.get("fused") is (True if fused else None)
        gen = torch.Generator().manual_seed(1)
        for _ in range(4):
            loss = net(torch.randn(5, 6, generator=gen)).square().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        nets.append(net)
    for a, b in zip(nets[0].parameters(), nets[1].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def _toy_step(lr=0.1):
    torch.manual_seed(0)
    net = torch.nn.Linear(4, 1)
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    return net, OptimizerStep(opt, device=CPU, grad_clip=1.0)


def test_a_deferred_step_reads_nothing_on_the_host_and_logs_the_same_values():
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(2))
    net_a, step_a = _toy_step()
    read = []
    with HostSyncs() as syncs:
        for _ in range(3):
            out = net_a(x)
            read.append(step_a(out.square().mean(), {"aux": out.mean()}, describe=str))
    assert syncs.count >= 3  # the plain step reads its loss every time

    net_b, step_b = _toy_step()
    pending = PendingSteps()
    with HostSyncs() as syncs:
        for i in range(3):
            out = net_b(x)
            pending.add(i, *step_b.deferred(out.square().mean(), {"aux": out.mean()}), describe=str)
    assert syncs.count == 0, syncs.where
    with HostSyncs() as syncs:
        done = pending.flush()
    assert 1 <= syncs.count <= 2 and len(pending) == 0  # one read for all of them (and the finite flag)
    assert [i for i, _ in done] == [0, 1, 2]
    for (terms, norm), (_, row) in zip(read, done):
        assert row == pytest.approx({**terms, "grad_norm": norm})
    for a, b in zip(net_a.parameters(), net_b.parameters()):
        assert torch.equal(a, b)


def test_flush_names_the_first_non_finite_step():
    net, step = _toy_step()
    pending = PendingSteps()
    for i, scale in enumerate((1.0, float("nan"), 1.0)):
        pending.add(i + 1, *step.deferred(net(torch.ones(1, 4)).sum() * scale), describe=lambda t: f"bad {t}")
    with pytest.raises(NonFiniteLoss, match=r"bad \{'loss': nan"):
        pending.flush()


def test_prefetcher_keeps_order_and_hands_on_errors():
    items = iter([torch.ones(2), {"x": torch.zeros(1)}, 3])

    def produce():
        item = next(items)
        if isinstance(item, int):
            raise RuntimeError("cut failed")
        return item

    p = Prefetcher(produce, depth=2)
    try:
        assert torch.equal(p.next(), torch.ones(2))
        assert set(p.next()) == {"x"}
        with pytest.raises(RuntimeError, match="cut failed"):
            p.next()
    finally:
        p.close()
