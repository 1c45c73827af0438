"""Strict transfer of a pretrained encoder into a fine-tuning network (segmentation or classification).

A pretraining checkpoint (DESIGN.md) is a dict loaded with `torch.load(..., weights_only=True)`:
`{"encoder": state_dict, "encoder_config": {...}, "method": str, "method_config": {...},
"preprocessing": {...}, "step": int, "code_version": str}` plus whatever resume needs. The encoder
state dict uses the key names of the backbone's encoder module (UNETR: MONAI's `ViT` as `net.vit`,
e.g. `patch_embedding.position_embeddings`, `blocks.0.attn.qkv.weight`, `norm.weight`; Swin UNETR:
MONAI's `SwinTransformer` as `net.swinViT`, e.g. `layers1.0.blocks.0.attn.qkv.weight`; nnFormer:
`net.encoder`, e.g. `embedding.conv1.weight`, `layers.0.blocks.0.attn.bias.table`).
`encoder_config["name"]` says which encoder it is (vit, swin, nnformer); the backbone's encoder must
be that one (networks.Backbone.encoder).

`load_encoder_checkpoint` is strict: the checkpoint's encoder must be the kind the backbone takes,
its architecture fields must equal the run's, and every tensor of the network's encoder must be
matched by a tensor of the same shape and nothing else; otherwise `WeightTransferError` names what
differs and the network is left untouched.

A pretraining state still under way (`resume.pt`, whose "finished" is False; alice.ssl.trainer) is
refused with an InputError unless `allow_unfinished` (`alice finetune --allow-unfinished`); a
checkpoint without the key (older or external) loads. Given the fine-tuning `run` (a method or a
variant run id such as alice__casa-false), the checkpoint must record that run's method.
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
from alice.io import atomic_path, load_torch_dict

__all__ = [
    "WeightTransferError",
    "check_finished",
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
            f"(needs: {', '.join(spec.encoder_names) or 'none, it trains from scratch only'})"
        )
    run = normalized_encoder_config(run_config)
    try:
        ckpt = normalized_encoder_config(ckpt_config)
    except ConfigError as exc:
        raise WeightTransferError(f"{path}: checkpoint encoder_config is invalid: {exc.problem} ({exc.key})") from None
    diffs = [f"{f}: checkpoint {ckpt[f]} vs run {run[f]}" for f in spec.arch_fields if not _same(ckpt[f], run[f])]
    if diffs:
        raise WeightTransferError(
            f"{path}: checkpoint encoder architecture differs from pretrain.encoders.{name}: " + "; ".join(diffs)
        )


def load_encoder_checkpoint(
    net: torch.nn.Module, backbone: str, checkpoint_path: str | Path, encoder_config: Mapping[str, Any],
    *, allow_unfinished: bool = False, run: str | None = None,
) -> int:
    """Copy a pretraining checkpoint's encoder into `net`'s encoder; return the number of tensors.

    Raises InputError (file missing, unreadable, not weights-only, wrong structure, an unfinished
    pretraining state unless `allow_unfinished`: see `check_finished`), ConfigError (pretrained
    by another method than run `run`'s, if given) or
    WeightTransferError (encoder kind or architecture fields differ from `encoder_config`; a key
    missing, unexpected, or of another shape) before touching the network.
    The one shape change allowed: when only the (ViT's) position embeddings differ because the
    pretraining crop differs from the fine-tuning crop, they are interpolated (trilinear) from the
    checkpoint's token grid (its `preprocessing.crop` / patch) to the network's, and the log says so.
    Swin's and nnFormer's weights do not depend on the crop (relative position bias tables sized by
    the window), so any crop the encoder takes loads as it is.
    """
    path = Path(checkpoint_path)
    ckpt = read_encoder_checkpoint(path)
    check_finished(path, ckpt, allow_unfinished)
    if run is not None:
        check_method(path, ckpt, run)
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
            # the one shape change the contract allows: a different crop -> another token grid
            state = dict(state)
            for key in pos:
                state[key] = _interpolate_position_embeddings(path, ckpt, key, state[key], net,
                                                              target[key])
            problems = []
    if problems:
        raise WeightTransferError(
            f"{path}: encoder weights do not fit backbone '{backbone}' ({len(target)} tensors): " + "; ".join(problems)
        )
    encoder.load_state_dict(state, strict=True)
    n = len(target)
    log.info("loaded %d/%d encoder tensors from %s", n, n, path)
    return n


def _interpolate_position_embeddings(path: Path, ckpt: Mapping[str, Any], key: str,
                                     weight: torch.Tensor, net: torch.nn.Module,
                                     like: torch.Tensor) -> torch.Tensor:
    """Resample learnable position embeddings (1, N, D) from the pretraining token grid to the
    fine-tuning one. Tokens are ordered as MONAI's conv patch embedding flattens them (x, y, z)."""
    preprocessing = ckpt.get("preprocessing") or {}
    crop = preprocessing.get("crop") if isinstance(preprocessing, Mapping) else None
    patch = normalized_encoder_config(ckpt["encoder_config"]).get("patch")
    new_grid = tuple(int(g) for g in getattr(net, "feat_size", ()) or ())
    if crop is None or patch is None or len(new_grid) != 3:
        raise WeightTransferError(
            f"{path}: {key} {tuple(weight.shape)} vs {tuple(like.shape)}: the crops differ but the "
            "checkpoint does not record its pretraining crop (preprocessing.crop), so the position "
            "embeddings cannot be interpolated")
    patch = [int(patch)] * 3 if isinstance(patch, (int, float)) else [int(p) for p in patch]
    old_grid = tuple(int(c) // p for c, p in zip(crop, patch))
    n_old, dim = int(weight.shape[1]), int(weight.shape[2])
    if math.prod(old_grid) != n_old or math.prod(new_grid) != int(like.shape[1]):
        raise WeightTransferError(
            f"{path}: {key}: token grids {old_grid} -> {new_grid} do not match the shapes "
            f"{tuple(weight.shape)} -> {tuple(like.shape)}")
    grid = weight.detach().float().reshape(1, *old_grid, dim).permute(0, 4, 1, 2, 3)
    grid = torch.nn.functional.interpolate(grid, size=new_grid, mode="trilinear",
                                           align_corners=False)
    out = grid.permute(0, 2, 3, 4, 1).reshape(1, -1, dim).to(like.dtype)
    log.info("interpolated %s from token grid %s (pretraining crop %s) to %s", key, old_grid,
             list(crop), new_grid)
    return out
