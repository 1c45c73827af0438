"""Optimizers and per-step learning-rate schedules from a `finetune.<backbone>.optim` section.

- adamw: `torch.optim.AdamW(lr, weight_decay, betas)` (betas default (0.9, 0.999));
  sgd: `torch.optim.SGD(lr, weight_decay, momentum, nesterov=True)`.
- cosine: MONAI's `WarmupCosineSchedule` (linear warm-up from 0 over the warm-up steps, then a
  half cosine to 0 at the last step); poly: the same linear warm-up, then `(1 - t/T) ** 0.9` with t
  and T counted after the warm-up (nnU-Net / nnFormer).
The scheduler is stepped once per optimizer step; warm-up and total lengths are in steps
(epochs × steps per epoch).
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from alice.errors import ConfigError

POLY_EXPONENT = 0.9


def _number(optim: Mapping[str, Any], key: str, default: Any = None, minimum: float = 0.0) -> float:
    value = optim.get(key, default)
    if value is None:
        raise ConfigError(f"optim.{key}", "missing required key")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < minimum:
        raise ConfigError(f"optim.{key}", f"must be a number >= {minimum}, got {value!r}")
    return float(value)


def positive_int(optim: Mapping[str, Any], key: str, default: Any = None, minimum: int = 1) -> int:
    value = optim.get(key, default)
    if value is None:
        raise ConfigError(f"optim.{key}", "missing required key")
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"optim.{key}", f"must be an integer >= {minimum}, got {value!r}")
    return value


def build_optimizer(params, optim: Mapping[str, Any], **options: Any) -> torch.optim.Optimizer:
    """The `optim` section's optimizer; `options` go to its constructor (alice.fastpath's `fused`)."""
    name = optim.get("optimizer")
    lr = _number(optim, "lr")
    if lr <= 0:
        raise ConfigError("optim.lr", f"must be > 0, got {lr}")
    wd = _number(optim, "weight_decay", 0.0)
    if name == "adamw":
        betas = optim.get("betas") or [0.9, 0.999]
        if len(betas) != 2:
            raise ConfigError("optim.betas", f"must be 2 numbers, got {betas!r}")
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd, betas=(float(betas[0]), float(betas[1])), **options)
    if name == "sgd":
        momentum = _number(optim, "momentum", 0.99)
        return torch.optim.SGD(params, lr=lr, weight_decay=wd, momentum=momentum, nesterov=momentum > 0, **options)
    raise ConfigError("optim.optimizer", f"must be adamw or sgd, got {name!r}")


def build_scheduler(optimizer: torch.optim.Optimizer, schedule: str, warmup_steps: int, total_steps: int):
    warmup_steps = max(0, min(int(warmup_steps), int(total_steps) - 1))
    if schedule == "cosine":
        from monai.optimizers import WarmupCosineSchedule

        return WarmupCosineSchedule(optimizer, warmup_steps=warmup_steps, t_total=total_steps)
    if schedule == "poly":
        decay = max(1, total_steps - warmup_steps)

        def factor(step: int) -> float:
            if step < warmup_steps:
                return step / warmup_steps
            return max(0.0, 1.0 - (step - warmup_steps) / decay) ** POLY_EXPONENT

        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    raise ConfigError("optim.schedule", f"must be cosine or poly, got {schedule!r}")
