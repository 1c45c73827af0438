"""A toy SSL method (tiny linear encoder + MSE) and a step-seeded loader for the trainer tests."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from alice.ssl.registry import METHODS, SSLMethod, register_method
from alice.ssl.trainer import step_seed

ENCODER = {"name": "toy_linear", "in_dim": 8, "dim": 4}
OPTIM = {"lr": 1e-2, "weight_decay": 0.05, "betas": [0.9, 0.95], "warmup_iterations": 2, "iterations": 6,
         "schedule": "cosine"}


class ToyMethod(SSLMethod):
    """Denoising MSE through a linear encoder, with an EMA target encoder updated in after_step."""

    def __init__(self, method_config, encoder_config, crop):
        super().__init__(method_config)
        self.encoder = nn.Linear(encoder_config["in_dim"], encoder_config["dim"])
        self.head = nn.Linear(encoder_config["dim"], encoder_config["in_dim"])
        self.target = copy.deepcopy(self.encoder).requires_grad_(False)
        self.after_calls: list[tuple[int, int]] = []
        self.nan_at_call = method_config.get("nan_at_call")
        self.calls = 0

    def forward(self, batch):
        self.calls += 1
        noisy = batch + 0.1 * torch.randn_like(batch)  # global RNG: exercises per-step reseeding
        rec = nn.functional.mse_loss(self.head(self.encoder(noisy)), batch)
        gap = nn.functional.mse_loss(self.encoder(batch), self.target(batch))
        if self.nan_at_call is not None and self.calls == self.nan_at_call:
            rec = rec * float("nan")
        return {"loss": rec + 0.1 * gap, "rec": rec, "ema_gap": gap}

    def encoder_state_dict(self):
        return self.encoder.state_dict()

    @torch.no_grad()
    def after_step(self, step, total_steps):
        self.after_calls.append((step, total_steps))
        m = self.method_config.get("momentum", 0.9)
        for t, o in zip(self.target.parameters(), self.encoder.parameters()):
            t.mul_(m).add_(o, alpha=1 - m)


if "toy" not in METHODS:
    register_method("toy")(ToyMethod)


def toy_loader(seed: int, start_step: int):
    """Batch i depends only on (seed, i); yields 4 batches, so the trainer must re-open it."""
    for i in range(start_step, start_step + 4):
        g = torch.Generator().manual_seed(step_seed(seed, i))
        yield torch.randn(4, ENCODER["in_dim"], generator=g)


@pytest.fixture
def toy_optim():
    return dict(OPTIM)


@pytest.fixture
def make_method():
    def make(init_seed: int = 0, **config):
        torch.manual_seed(init_seed)
        return ToyMethod({"momentum": 0.9, **config}, ENCODER, (8, 8, 8))

    return make


@pytest.fixture
def run(make_method):
    """pretrain() with the toy defaults; keyword arguments override."""
    from alice.ssl.trainer import pretrain

    def go(out_dir, method=None, optim=None, **kw):
        method = method if method is not None else make_method()
        args = dict(optim={**OPTIM, **(optim or {})}, encoder_config=ENCODER, method_name="toy",
                    method_config=method.method_config, preprocessing={"crop": [8, 8, 8]},
                    checkpoint_every=2, seed=3, device="cpu", progress=False)
        args.update(kw)
        return method, pretrain(method, toy_loader, out_dir, **args)

    return go
