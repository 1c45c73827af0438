"""Per-step schedules for pretraining: the learning rate (a LambdaLR) and an EMA momentum.

Steps are counted from 0: optimizer step `i` (the i-th update) runs with `lr = base_lr * f(i)`.

- cosine: linear warm-up `f(i) = (i + 1) / W` for `i < W` (so the first update is not wasted at
  lr 0 and step `W - 1` reaches the base lr), then a half cosine
  `f(i) = m + (1 - m) * (1 + cos(pi * (i - W) / (T - W))) / 2` that would reach the floor `m`
  (`min_lr_ratio`, default 0) one step after the last step `T - 1`.
- constant: the same warm-up, then 1.

`ema_momentum(i, T, base)` is the cosine increase of a target-encoder momentum from `base` to 1
used by BYOL/DINO-style methods in their `after_step` hook.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from alice.errors import ConfigError

SCHEDULES = ("cosine", "constant")


def lr_factor(schedule: str, warmup_iterations: int, iterations: int,
              min_lr_ratio: float = 0.0) -> Callable[[int], float]:
    """The multiplier of the base learning rate at optimizer step `i` (0-based)."""
    if schedule not in SCHEDULES:
        raise ConfigError("optim.schedule", f"must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
    total = int(iterations)
    if total < 1:
        raise ConfigError("optim.iterations", f"must be an integer >= 1, got {iterations!r}")
    warmup = int(warmup_iterations)
    if warmup < 0:
        raise ConfigError("optim.warmup_iterations", f"must be an integer >= 0, got {warmup_iterations!r}")
    warmup = min(warmup, total)
    floor = float(min_lr_ratio)

    def factor(i: int) -> float:
        if i < warmup:
            return (i + 1) / warmup
        if schedule == "constant":
            return 1.0
        t = (i - warmup) / max(1, total - warmup)
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * min(t, 1.0)))

    return factor


def build_lr_scheduler(optimizer: torch.optim.Optimizer, schedule: str, warmup_iterations: int,
                       iterations: int, min_lr_ratio: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR stepped once after every optimizer step (its state dict is weights-only safe)."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_factor(schedule, warmup_iterations, iterations, min_lr_ratio))


def ema_momentum(step: int, total_steps: int, base: float, final: float = 1.0) -> float:
    """Cosine increase from `base` at step 0 to `final` at the last step."""
    t = min(1.0, step / max(1, total_steps - 1))
    return final - (final - base) * 0.5 * (1.0 + math.cos(math.pi * t))
