"""The SSL method registry: factories by name, built on demand from the method files.

A method is one file (see alice.ssl.catalog for its torch-free `METHOD` declaration) that defines an
`SSLMethod` subclass and registers a factory under its name:

    @register_method("mymethod")
    def build(method_config, encoder_config, crop) -> SSLMethod: ...

`build_method(name, ...)` imports the file that declares `name` (alice.ssl.catalog) the first time,
checks that the encoder is one the method declares, and calls the factory; a factory registered
in code (a test's toy method) needs no file.

The trainer (`alice.ssl.trainer.pretrain`) knows nothing about a method beyond this interface:
- `forward(batch) -> {"loss": scalar tensor, <term>: scalar tensor, ...}`; every term is logged;
  the batch is what the method's declared views are (alice.ssl.views);
- `encoder_state_dict()`: the online encoder's state dict, stored as the checkpoint's "encoder"
  (key names of the encoder module the fine-tuning backbone takes, see alice.checkpoint);
- `after_step(step, total_steps)`: called after every optimizer step with the 0-based step just
  taken (e.g. the EMA update of a target encoder, see alice.ssl.momentum);
- `method_config`: the dict the method was built from (recorded in the checkpoint);
- `find_unused_parameters` (class attribute, default False): passed to DistributedDataParallel.
Parameters that must not be optimized (a target encoder) have `requires_grad=False`.
"""

from __future__ import annotations

import abc

import importlib
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from alice.errors import ConfigError

__all__ = ["METHODS", "SSLMethod", "build_method", "checked_build", "get_method", "known_methods", "register_method"]

Factory = Callable[[Mapping[str, Any], Mapping[str, Any], Sequence[int]], "SSLMethod"]

METHODS: dict[str, Factory] = {}


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


def checked_build(name: str, cls: type, known: Sequence[str], method_config: Mapping[str, Any] | None,
                  encoder_config: Mapping[str, Any], crop) -> "SSLMethod":
    """`cls(encoder_config, crop, method_config=cfg, **cfg)` for a method whose config keys are its
    constructor's keyword arguments `known`: an unknown key, or a value the constructor refuses, is a
    ConfigError naming `pretrain.methods.<name>[.<key>]` (what a method file's factory returns)."""
    cfg = dict(method_config or {})
    unknown = sorted(k for k in cfg if k not in known)
    if unknown:
        raise ConfigError(f"pretrain.methods.{name}.{unknown[0]}", f"unknown key (known: {', '.join(known)})")
    try:
        return cls(encoder_config, crop, method_config=cfg, **cfg)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"pretrain.methods.{name}", str(exc)) from exc


def register_method(name: str) -> Callable[[Factory], Factory]:
    """Decorator registering `factory(method_config, encoder_config, crop) -> SSLMethod`."""

    def decorate(factory: Factory) -> Factory:
        if name in METHODS and METHODS[name] is not factory:
            raise ValueError(f"SSL method '{name}' registered twice")
        METHODS[name] = factory
        return factory

    return decorate


def _import_declared(name: str) -> None:
    """Import the file that declares method `name` (its import registers the factory)."""
    from alice.ssl.catalog import method_info

    info = method_info(name)
    if info is not None:
        importlib.import_module(info.module)
        if name not in METHODS:
            raise ConfigError("pretrain.method", f"{info.path} declares method '{name}' but registers "
                                                 f"no factory under that name (@register_method)")


def known_methods() -> list[str]:
    """Every method: the declared files' and any registered in code."""
    from alice.ssl.catalog import methods

    return sorted(set(methods()) | set(METHODS))


def get_method(name: str) -> Factory:
    if name not in METHODS:
        _import_declared(name)
    if name not in METHODS:
        raise ConfigError("pretrain.method", f"unknown SSL method '{name}' (known: {', '.join(known_methods()) or '<none>'})")
    return METHODS[name]


def build_method(name: str, method_config: Mapping[str, Any] | None, encoder_config: Mapping[str, Any],
                 crop: Sequence[int]) -> SSLMethod:
    from alice.ssl.catalog import method_info

    factory = get_method(name)
    info = method_info(name)
    encoder = encoder_config.get("name", "vit")
    if info is not None and encoder not in info.encoders:
        raise ConfigError("--encoder", f"method '{name}' pretrains the {', '.join(info.encoders)} "
                                       f"encoder(s) ({info.path}), not '{encoder}'")
    method = factory(dict(method_config or {}), dict(encoder_config), tuple(int(c) for c in crop))
    if not isinstance(method, SSLMethod):
        raise TypeError(f"factory of SSL method '{name}' returned {type(method).__name__}, not an SSLMethod")
    return method
