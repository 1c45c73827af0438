"""The momentum (EMA) target shared by the methods with a teacher (MoCo v3, DINO, iBOT, SIM, CMAE,
UniMiSS, Alice), and the teacher-temperature warm-up of the self-distillation methods.

`MomentumMethod` is an `SSLMethod` whose subclass names its (online, target) module pairs in
`ema_pairs()`. After every optimizer step the trainer calls `after_step`, which moves each target
towards its online module, θ_t ← m·θ_t + (1 − m)·θ_s (BYOL, Grill et al. 2020, eq. 1; MoCo v3,
Chen et al. 2021, Alg. 1), with m increased from the base `momentum` to 1 by a half cosine over
the run (`momentum_schedule="cosine"`, BYOL §3.2 / DINO §3.1; `"constant"` keeps the base).
Buffers are copied. Targets stay in eval mode and out of the optimizer (`requires_grad=False`).
"""

from __future__ import annotations

from typing import Any, Mapping

import abc
import math

import torch
from torch import nn

from alice.ssl.registry import SSLMethod

MOMENTUM_SCHEDULES = ("constant", "cosine")


def ema_momentum(step: int, total_steps: int, base: float, final: float = 1.0) -> float:
    """Cosine increase of the momentum from `base` at step 0 to `final` at the last step (BYOL
    §3.2, DINO §3.1)."""
    t = min(1.0, step / max(1, total_steps - 1))
    return final - (final - base) * 0.5 * (1.0 + math.cos(math.pi * t))


def check_distillation_options(temperatures: Mapping[str, float], warmup_fraction: float,
                               center_momentum: float) -> None:
    """ValueError naming the option unless every temperature is > 0, the warm-up fraction in [0, 1]
    and the centre momentum in [0, 1) (the self-distillation methods' options, DINO §3.1)."""
    for name, value in temperatures.items():
        if float(value) <= 0:
            raise ValueError(f"{name} must be > 0, got {value!r}")
    if not 0.0 <= float(warmup_fraction) <= 1.0:
        raise ValueError(f"teacher_warmup_fraction must be in [0, 1], got {warmup_fraction!r}")
    if not 0.0 <= float(center_momentum) < 1.0:
        raise ValueError(f"center_momentum must be in [0, 1), got {center_momentum!r}")


def linear_warmup(start: float, end: float, fraction: float, step: int, total_steps: int) -> float:
    """Linear warm-up from `start` to `end` over the first `fraction` of `total_steps`, then `end`:
    the teacher temperature of the self-distillation methods (DINO's implementation details: τ_t
    0.04 → 0.07 over the first 30 epochs; iBOT likewise; here a fraction of the iterations)."""
    warm = int(round(fraction * total_steps))
    if fraction > 0:
        warm = max(warm, 1)
    if step >= warm:
        return end
    return start + (end - start) * step / warm


class MomentumMethod(SSLMethod):
    """An SSL method with EMA targets; subclasses implement `ema_pairs()` and call `freeze_targets()`
    once their modules exist."""

    def __init__(self, method_config: Mapping[str, Any] | None = None, momentum: float = 0.996,
                 momentum_schedule: str = "cosine") -> None:
        super().__init__(method_config)
        if momentum_schedule not in MOMENTUM_SCHEDULES:
            raise ValueError(f"momentum_schedule must be 'constant' or 'cosine', got {momentum_schedule!r}")
        if not 0.0 <= float(momentum) <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {momentum!r}")
        self.momentum = float(momentum)
        self.momentum_schedule = momentum_schedule

    @abc.abstractmethod
    def ema_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        """The (online, target) pairs, the target an EMA of the online module."""

    def freeze_targets(self) -> None:
        for _, target in self.ema_pairs():
            target.requires_grad_(False)

    def momentum_at(self, step: int, total_steps: int) -> float:
        if self.momentum_schedule == "constant":
            return self.momentum
        return ema_momentum(step, total_steps, self.momentum)

    def after_step(self, step: int, total_steps: int) -> None:
        self.update_target(self.momentum_at(step, total_steps))

    @torch.no_grad()
    def update_target(self, momentum: float | None = None) -> None:
        m = self.momentum if momentum is None else float(momentum)
        for online, target in self.ema_pairs():
            for p_o, p_t in zip(online.parameters(), target.parameters()):
                p_t.mul_(m).add_(p_o.detach(), alpha=1.0 - m)
            for b_o, b_t in zip(online.buffers(), target.buffers()):
                b_t.copy_(b_o)

    def train(self, mode: bool = True) -> "MomentumMethod":
        super().train(mode)
        for _, target in self.ema_pairs():
            target.eval()
        return self
