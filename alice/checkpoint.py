"""The pretraining checkpoint format, shared by the pretraining trainer (which writes it) and the
fine-tuning stages (which read it): a dict loaded with `torch.load(..., weights_only=True)`,

    {"encoder": state_dict, "encoder_config": {...}, "method": str, "method_config": {...},
     "preprocessing": {...}, "step": int, "code_version": str}

plus whatever resume needs (alice.ssl.trainer: "optim", "seed", "finished", "identity", "resume").
The encoder state dict uses the key names of the backbone's encoder module
(alice.downstream.transfer loads it strictly); `encoder_config["name"]` says which encoder it is.
A state still under way ("finished": False) is refused unless asked for; given a fine-tuning run (a
method or a variant run id `<method>__<switch>-<value>`), the checkpoint must record its method.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch

from alice.errors import ConfigError, InputError
from alice.io import atomic_path, load_torch_dict
from alice.version import code_version as current_code_version

REQUIRED_KEYS = ("encoder", "encoder_config", "method")


def save_encoder_checkpoint(
    path: str | Path,
    encoder_state: Mapping[str, torch.Tensor],
    encoder_config: Mapping[str, Any],
    method: str,
    *,
    method_config: Mapping[str, Any] | None = None,
    preprocessing: Mapping[str, Any] | None = None,
    step: int = 0,
    code_version: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> None:
    """Write a pretraining checkpoint in the format of this module's docstring, atomically.

    `extra` (resume state: optimizer, scheduler, ...) is merged in at the top level; it must hold
    only tensors and plain containers so the file loads with `weights_only=True`.
    """
    ckpt: dict[str, Any] = dict(extra or {})
    ckpt.update(
        encoder={k: v.detach().cpu().clone() for k, v in encoder_state.items()},
        encoder_config=dict(encoder_config),
        method=str(method),
        method_config=dict(method_config or {}),
        preprocessing=dict(preprocessing or {}),
        step=int(step),
        code_version=code_version or current_code_version(),
    )
    with atomic_path(path, suffix=".pt") as tmp:
        torch.save(ckpt, tmp)


def read_encoder_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint with `weights_only=True` and check its top-level structure (InputError)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "pretraining checkpoint not found")
    ckpt = load_torch_dict(path, REQUIRED_KEYS, "checkpoint")
    if not isinstance(ckpt["encoder"], Mapping) or not all(
        isinstance(v, torch.Tensor) for v in ckpt["encoder"].values()
    ):
        raise InputError(path, "checkpoint 'encoder' must be a state dict of tensors")
    if not isinstance(ckpt["encoder_config"], Mapping):
        raise InputError(path, "checkpoint 'encoder_config' must be a dict")
    return ckpt


def check_finished(path: str | Path, ckpt: Mapping[str, Any], allow_unfinished: bool = False) -> None:
    """InputError if `ckpt` is a pretraining state still under way ("finished": False), unless
    allowed. No "finished" key counts as done."""
    if ckpt.get("finished", True) is not False or allow_unfinished:
        return
    raise InputError(path, f"an unfinished pretraining state (step {ckpt.get('step', '?')}): the run "
                           "is still under way or was stopped; wait for checkpoint.pt (or pass "
                           "--allow-unfinished to fine-tune from it anyway)")


def check_method(path: str | Path, ckpt: Mapping[str, Any], run: str) -> None:
    """ConfigError unless the checkpoint was pretrained by the method of fine-tuning run `run`."""
    method = run.split("__")[0]  # the registered method of a variant run id
    if ckpt.get("method") != method:
        of_run = f" (the method of run '{run}')" if method != run else ""
        raise ConfigError("--method", f"{path} was pretrained by '{ckpt.get('method')}', not '{method}'{of_run}")
