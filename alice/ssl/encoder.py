"""The online encoder every method trains, built once here: one of the three pretraining encoders
(ViT, Swin, nnFormer) behind the masked-encoder interface of alice.models.masked, so a method is
written once for all three.

- `build_encoder(encoder_config, crop)`: the encoder for crops of `crop` voxels;
- `pool(tokens)`: the global embedding of a crop, the average of its tokens (the 3-D encoders
  carry no [CLS] token; DINO and MoCo v3 pool it, so the average takes its place);
- `transferable_state(encoder)`: the weights a checkpoint carries, under the key names of the
  segmentation network's encoder (UNETR `vit`, Swin UNETR `swinViT`, nnFormer `encoder`).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import nn

from alice.models.masked import build_masked_encoder


def freeze_cross_attention(module: nn.Module) -> None:
    """MONAI's TransformerBlock always builds `norm_cross_attn`, unused without cross-attention: keep
    it (it is part of UNETR's state dict) but never optimise it, so DDP sees no unused parameter."""
    for name, p in module.named_parameters():
        if "cross_attn" in name:
            p.requires_grad_(False)


def build_encoder(encoder_config: Mapping[str, Any], crop: Sequence[int], masking: bool = True) -> nn.Module:
    """`masking=False`: a method that never masks; the hierarchical encoders' mask token is then
    frozen (it would get no gradient, which DistributedDataParallel refuses)."""
    encoder = build_masked_encoder(dict(encoder_config), tuple(int(c) for c in crop))
    freeze_cross_attention(encoder)
    if not masking and isinstance(getattr(encoder, "mask_token", None), nn.Parameter):
        encoder.mask_token.requires_grad_(False)
    return encoder


def pool(tokens: torch.Tensor) -> torch.Tensor:
    """(B, N, D) tokens -> (B, D), their average."""
    return tokens.mean(1)


def transferable_state(encoder: nn.Module) -> dict[str, torch.Tensor]:
    """The encoder's transferable weights (never a mask token), detached copies."""
    return {k: v.detach().clone() for k, v in encoder.transferable.state_dict().items()}
