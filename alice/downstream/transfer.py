"""Strict transfer of a pretrained encoder into a fine-tuning network (segmentation or classification).

A pretraining checkpoint (alice.checkpoint: its format, written by the pretraining trainer) holds
the encoder's state dict under "encoder". The encoder state dict uses the key names of the backbone's encoder module (UNETR: MONAI's `ViT` as `net.vit`,
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

from alice.checkpoint import (REQUIRED_KEYS, check_finished, check_method, read_encoder_checkpoint,
                              save_encoder_checkpoint)
from alice.downstream.networks import encoder_of, get_backbone, normalized_encoder_config
from alice.errors import ConfigError, HarnessError, InputError

__all__ = [
    "WeightTransferError",
    "check_finished",
    "encoder_of",
    "load_encoder_checkpoint",
    "read_encoder_checkpoint",
    "save_encoder_checkpoint",
]

log = logging.getLogger("alice")

SHOW_KEYS = 10
POSITION_EMBEDDING_SUFFIX = "position_embeddings"


class WeightTransferError(HarnessError):
    """A checkpoint's encoder does not fit the network's encoder (keys, shapes or architecture)."""


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
    spec = get_backbone(backbone)
    if spec.take is not None:  # the part of a whole CNN this backbone transfers (its encoder)
        state = spec.take(state)
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
