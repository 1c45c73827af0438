"""The SSL method registry: one file per method, one entry in `METHODS`.

A method file defines an `SSLMethod` subclass and registers a factory under its name:

    @register_method("mymethod")
    def build(method_config, encoder_config, crop) -> SSLMethod: ...

`build_method(name, ...)` first imports the modules that register the built-in methods
(`BUILTIN_MODULES`: the Alice objective and the `baselines` package, each only if present), so a
name is known as soon as its file exists.

The trainer (`alice.ssl.trainer.pretrain`) knows nothing about a method beyond this interface:
- `forward(batch) -> {"loss": scalar tensor, <term>: scalar tensor, ...}`; every term is logged;
- `encoder_state_dict()`: the online encoder's state dict, stored as the checkpoint's "encoder"
  (key names of the encoder module the fine-tuning backbone takes, see alice.downstream.transfer);
- `after_step(step, total_steps)`: called after every optimizer step with the 0-based step just
  taken (e.g. the EMA update of a target encoder, see `schedules.ema_momentum`);
- `method_config`: the dict the method was built from (recorded in the checkpoint);
- `find_unused_parameters` (class attribute, default False): passed to DistributedDataParallel.
Parameters that must not be optimized (a target encoder) have `requires_grad=False`.
"""

from __future__ import annotations

import abc

import importlib
import importlib.util
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from alice.errors import ConfigError

__all__ = ["METHODS", "SSLMethod", "build_method", "get_method", "known_methods", "register_method"]

Factory = Callable[[Mapping[str, Any], Mapping[str, Any], Sequence[int]], "SSLMethod"]

METHODS: dict[str, Factory] = {}

BUILTIN_MODULES = ("alice.ssl.alice", "baselines")


class SSLMethod(nn.Module, metaclass=abc.ABCMeta):
    """Base class of a self-supervised objective (online encoder + whatever else it trains)."""

    find_unused_parameters: bool = False

    def __init__(self, method_config: Mapping[str, Any] | None = None):
        super().__init__()
        self.method_config = dict(method_config or {})

    @abc.abstractmethod
    def forward(self, batch: Any) -> dict[str, torch.Tensor]:
        """The method's losses on one batch: {"loss": total, <term>: value, ...}."""

    @abc.abstractmethod
    def encoder_state_dict(self) -> dict[str, torch.Tensor]:
        """The online encoder's weights: what the checkpoint's "encoder" holds."""

    def after_step(self, step: int, total_steps: int) -> None:
        """Hook run after optimizer step `step` (0-based) of `total_steps`; default: nothing."""


def register_method(name: str) -> Callable[[Factory], Factory]:
    """Decorator registering `factory(method_config, encoder_config, crop) -> SSLMethod`."""

    def decorate(factory: Factory) -> Factory:
        if name in METHODS and METHODS[name] is not factory:
            raise ValueError(f"SSL method '{name}' registered twice")
        METHODS[name] = factory
        return factory

    return decorate


def _import_builtins() -> None:
    for module in BUILTIN_MODULES:
        try:
            if importlib.util.find_spec(module) is None:
                continue
        except ModuleNotFoundError:
            continue
        importlib.import_module(module)


def known_methods() -> list[str]:
    _import_builtins()
    return sorted(METHODS)


def get_method(name: str) -> Factory:
    if name not in METHODS:
        _import_builtins()
    if name not in METHODS:
        known = ", ".join(sorted(METHODS)) or "<none>"
        raise ConfigError("pretrain.method", f"unknown SSL method '{name}' (known: {known})")
    return METHODS[name]


def build_method(name: str, method_config: Mapping[str, Any] | None, encoder_config: Mapping[str, Any],
                 crop: Sequence[int]) -> SSLMethod:
    method = get_method(name)(dict(method_config or {}), dict(encoder_config), tuple(int(c) for c in crop))
    if not isinstance(method, SSLMethod):
        raise TypeError(f"factory of SSL method '{name}' returned {type(method).__name__}, not an SSLMethod")
    return method
