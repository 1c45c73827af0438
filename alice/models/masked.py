"""Masked encoders for masked image modelling: one small interface over the three encoders, so the
Alice objective (alice.ssl.alice) is written once.

    enc = build_masked_encoder(encoder_config, crop)
    tokens, mask, ids_restore = enc(x, mask_ratio, generator=g)
        tokens       (B, N_t, D)  encoder output tokens (D = `embed_dim`)
        mask         (B, N) bool  True = masked unit, N = `num_patches` units in (x, y, z) raster order
        ids_restore  (B, N)       `gather(cat(tokens, mask tokens), ids_restore)` is raster order
    enc.patchify(x)               (B, N, `patch_voxels`): each unit's voxels, the targets of ℓ_r
    enc.keeps_all_tokens          True: tokens has all N positions (N_t = N) in raster order
    enc.transferable              the module whose state dict a pretraining checkpoint carries:
                                  key for key the segmentation network's encoder sub-module

- vit: `ViTEncoder` itself — MAE (He et al. 2022), as the paper's §3.1 says: only the visible
  tokens go through the encoder (N_t = N_vis); a masked unit is one 16³ patch.
- swin, nnformer: `SimMIMEncoder` around the hierarchical encoder (alice.models.hierarchical) —
  SimMIM (Xie et al. 2022): the encoder sees the whole volume; masked units are replaced by a
  learned mask token at the patch-embedding level, and every bottleneck token comes out. A masked
  unit is one bottleneck cell (`stride`³ voxels: 32³ for Swin UNETR's encoder; patch·2^(S−1) per
  axis for nnFormer), so a unit is exactly what one bottleneck token sees and reconstructs.

  Why SimMIM and not the paper's choice: the paper (§3.1) lets Swin "discard masked patches" with
  the strategy of Green hierarchical ViT (Huang et al. 2022, its [22]: group window attention on
  the visible patches only), which needs a Swin re-implementation with masked-window bookkeeping
  and would not keep MONAI's SwinTransformer (whose weights must load 1:1 into Swin UNETR).
  SimMIM reaches the same objective (reconstruct the masked units, eq. 1 on masked units only) with
  the unmodified encoder; the price is compute spent on masked positions. The mask token lives in
  the adapter, never in `transferable`, so it does not transfer.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from alice.models.configs import check_crop, normalized_encoder_config
from alice.models.hierarchical import check_module, map_to_tokens, patchify, unit_mask_to_map
from alice.models.vit import ViTEncoder, random_masking


class SimMIMEncoder(nn.Module):
    """A hierarchical encoder (`backbone`) with SimMIM masking at its patch-embedding map."""

    keeps_all_tokens = True

    def __init__(self, backbone: nn.Module, crop: Sequence[int], in_channels: int = 1) -> None:
        super().__init__()
        check_module(backbone)
        self.backbone = backbone
        self.crop = tuple(int(c) for c in crop)
        self.unit = tuple(int(s) for s in backbone.stride)
        if any(c % s for c, s in zip(self.crop, self.unit)):
            raise ValueError(f"crop {list(self.crop)} is not a multiple of the encoder's stride {list(self.unit)}")
        self.grid = tuple(c // s for c, s in zip(self.crop, self.unit))
        # a unit covers stride/patch cells of the patch-embedding map
        self.factor = tuple(s // p for s, p in zip(self.unit, backbone.patch))
        self.num_patches = math.prod(self.grid)
        self.patch_voxels = math.prod(self.unit) * in_channels
        self.embed_dim = int(backbone.out_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, backbone.embed_dim, 1, 1, 1))
        nn.init.trunc_normal_(self.mask_token, std=0.02)

    @property
    def transferable(self) -> nn.Module:
        return self.backbone

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        return patchify(x, self.unit)

    def forward(self, x: torch.Tensor, mask_ratio: float = 0.0, generator: torch.Generator | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if tuple(x.shape[2:]) != self.crop:
            raise ValueError(f"built for crops of {list(self.crop)}, got {list(x.shape[2:])}")
        e = self.backbone.embed(x)
        b = e.shape[0]
        if mask_ratio > 0:
            _, mask, _ = random_masking(b, self.num_patches, mask_ratio, e.device, generator)
            m = unit_mask_to_map(mask, self.grid, self.factor).to(e.dtype)
            e = e * (1.0 - m) + self.mask_token.to(e.dtype) * m
        else:
            mask = torch.zeros(b, self.num_patches, dtype=torch.bool, device=e.device)
        tokens = map_to_tokens(self.backbone.stages(e)[-1])
        ids_restore = torch.arange(self.num_patches, device=e.device).unsqueeze(0).expand(b, -1)
        return tokens, mask, ids_restore


def build_hierarchical_encoder(encoder_config: Mapping[str, Any], in_channels: int = 1) -> nn.Module:
    """The Swin or nnFormer encoder module of an encoder config."""
    enc = normalized_encoder_config(encoder_config)
    if enc["name"] == "swin":
        from alice.models.swin import SwinEncoder

        return SwinEncoder(enc, in_channels)
    if enc["name"] == "nnformer":
        from alice.models.nnformer import NNFormerEncoder

        return NNFormerEncoder(enc, in_channels)
    raise ValueError(f"{enc['name']!r} is not a hierarchical encoder")


def build_masked_encoder(encoder_config: Mapping[str, Any], crop: Sequence[int]) -> nn.Module:
    """The masked encoder of `encoder_config` for pretraining crops of `crop` (ConfigError naming
    `pretrain.crop.<name>` when the crop does not fit the encoder)."""
    if encoder_config.get("name", "vit") == "vit":
        return ViTEncoder.from_config(encoder_config, crop)  # the raw config: as before this adapter
    enc = normalized_encoder_config(encoder_config)
    crop = check_crop(enc, crop, f"pretrain.crop.{enc['name']}")
    return SimMIMEncoder(build_hierarchical_encoder(enc), crop)
