"""Strict transfer of a pretrained encoder into a segmentation network.

A pretraining checkpoint (DESIGN.md) is a dict loaded with `torch.load(..., weights_only=True)`:
`{"encoder": state_dict, "encoder_config": {...}, "method": str, "method_config": {...},
"preprocessing": {...}, "step": int, "code_version": str}` plus whatever resume needs. The encoder
state dict uses the key names of the backbone's encoder module (UNETR: MONAI's `ViT` as `net.vit`,
e.g. `patch_embedding.position_embeddings`, `blocks.0.attn.qkv.weight`, `norm.weight`).

`load_encoder_checkpoint` is strict: the checkpoint's encoder must be the kind the backbone takes,
its architecture fields must equal the run's, and every tensor of the network's encoder must be
matched by a tensor of the same shape and nothing else; otherwise `WeightTransferError` names what
differs and the network is left untouched.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Mapping

import torch

from alice.version import code_version as current_code_version
from alice.downstream.networks import encoder_of, get_backbone, normalized_encoder_config
from alice.errors import ConfigError, HarnessError, InputError
from alice.io import atomic_path

__all__ = [
    "WeightTransferError",
    "encoder_of",
    "load_encoder_checkpoint",
    "read_encoder_checkpoint",
    "save_encoder_checkpoint",
]

log = logging.getLogger("alice")

REQUIRED_KEYS = ("encoder", "encoder_config", "method")
SHOW_KEYS = 10
POSITION_EMBEDDING_SUFFIX = "position_embeddings"


class WeightTransferError(HarnessError):
    """A checkpoint's encoder does not fit the network's encoder (keys, shapes or architecture)."""


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
    """Write a pretraining checkpoint in the DESIGN.md format, atomically.

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
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable / unsafe file is bad input
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(path, f"not a readable weights-only torch checkpoint ({first})") from None
    if not isinstance(ckpt, dict):
        raise InputError(path, f"checkpoint must be a dict, got {type(ckpt).__name__}")
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise InputError(path, f"checkpoint lacks required keys {missing} (has {sorted(map(str, ckpt))})")
    if not isinstance(ckpt["encoder"], Mapping) or not all(
        isinstance(v, torch.Tensor) for v in ckpt["encoder"].values()
    ):
        raise InputError(path, "checkpoint 'encoder' must be a state dict of tensors")
    if not isinstance(ckpt["encoder_config"], Mapping):
        raise InputError(path, "checkpoint 'encoder_config' must be a dict")
    return ckpt


def _keys_line(keys: list[str]) -> str:
    shown = ", ".join(keys[:SHOW_KEYS])
    more = f" (+{len(keys) - SHOW_KEYS} more)" if len(keys) > SHOW_KEYS else ""
    return f"{len(keys)} key(s): {shown}{more}"


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return math.isclose(float(a), float(b), rel_tol=1e-9)
    return a == b


def check_encoder_config(
    path: str | Path, backbone: str, ckpt_config: Mapping[str, Any], run_config: Mapping[str, Any]
) -> None:
    """WeightTransferError if the checkpoint's encoder is not the kind or size the run builds."""
    spec = get_backbone(backbone)
    name = str(ckpt_config.get("name", ""))
    if name not in spec.encoder_names:
        raise WeightTransferError(
            f"{path}: checkpoint encoder '{name or '<none>'}' cannot initialise backbone '{backbone}' "
            f"(needs: {', '.join(spec.encoder_names)})"
        )
    run = normalized_encoder_config(run_config)
    try:
        ckpt = normalized_encoder_config(ckpt_config)
    except ConfigError as exc:
        raise WeightTransferError(f"{path}: checkpoint encoder_config is invalid: {exc.problem} ({exc.key})") from None
    diffs = [f"{f}: checkpoint {ckpt[f]} vs run {run[f]}" for f in spec.arch_fields if not _same(ckpt[f], run[f])]
    if diffs:
        raise WeightTransferError(
            f"{path}: checkpoint encoder architecture differs from pretrain.encoder: " + "; ".join(diffs)
        )


def load_encoder_checkpoint(
    net: torch.nn.Module, backbone: str, checkpoint_path: str | Path, encoder_config: Mapping[str, Any]
) -> int:
    """Copy a pretraining checkpoint's encoder into `net`'s encoder; return the number of tensors.

    Raises InputError (file missing, unreadable, not weights-only, wrong structure) or
    WeightTransferError (encoder kind or architecture fields differ from `encoder_config`; a key
    missing, unexpected, or of another shape) before touching the network.
    A position-embedding shape that differs only because the pretraining crop differs from the
    fine-tuning crop is reported as such (interpolation is not implemented).
    """
    path = Path(checkpoint_path)
    ckpt = read_encoder_checkpoint(path)
    check_encoder_config(path, backbone, ckpt["encoder_config"], encoder_config)
    state = {str(k): v for k, v in ckpt["encoder"].items()}
    encoder = encoder_of(net, backbone)
    target = encoder.state_dict()

    missing = sorted(set(target) - set(state))
    unexpected = sorted(set(state) - set(target))
    mismatched = sorted(k for k in set(target) & set(state) if tuple(target[k].shape) != tuple(state[k].shape))
    problems = []
    if missing:
        problems.append("missing in checkpoint " + _keys_line(missing))
    if unexpected:
        problems.append("unexpected in checkpoint " + _keys_line(unexpected))
    if mismatched:
        details = [f"{k} {tuple(state[k].shape)} vs {tuple(target[k].shape)}" for k in mismatched]
        problems.append("shape mismatch (checkpoint vs network) " + _keys_line(details))
        pos = [k for k in mismatched if k.endswith(POSITION_EMBEDDING_SUFFIX)]
        if pos and not missing and not unexpected and len(pos) == len(mismatched):
            crop = (ckpt.get("preprocessing") or {}).get("crop") if isinstance(ckpt.get("preprocessing"), Mapping) else None
            problems.append(
                "only the position embeddings differ: the pretraining crop"
                + (f" {list(crop)}" if crop is not None else "")
                + " and the fine-tuning crop differ (position-embedding interpolation is not implemented yet)"
            )
    if problems:
        raise WeightTransferError(
            f"{path}: encoder weights do not fit backbone '{backbone}' ({len(target)} tensors): " + "; ".join(problems)
        )
    encoder.load_state_dict(state, strict=True)
    n = len(target)
    log.info("loaded %d/%d encoder tensors from %s", n, n, path)
    return n
