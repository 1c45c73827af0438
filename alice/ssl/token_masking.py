"""Mask-token masking on all three encoders, with masks the method draws itself: the masked image
modelling of BEiT (Bao et al. 2022), SimMIM (Xie et al. 2022) and iBOT (Zhou et al. 2022), where a
masked unit is not dropped but replaced by a learned [MASK] embedding and every position comes out
of the encoder, so a loss can be put on the outputs at the masked positions.

    enc = MaskTokenEncoder(build_encoder(encoder_config, crop))
    tokens = enc(x, mask)          (B, N, D): every unit's token in (x, y, z) raster order;
                                   mask (B, N) bool, True = masked unit, None = nothing masked
    masks = sample_unit_masks(B, N, ratio, probability)     per-sample masks (below)

alice.models.masked's interface draws one ratio for the whole batch and, on the ViT, drops the
masked patches (MAE): right for a reconstruction from the visible tokens, but a method that
distils or predicts at the masked positions needs them in the output. Here:

- vit: a learned mask token (this adapter's `mask_token`, embed_dim wide) replaces the masked 16³
  patches' embeddings before the position embeddings are added (BEiT §2.2, iBOT's ViT), and the
  whole sequence goes through the blocks;
- swin, nnformer: the SimMIM adapter's own mask token replaces the masked units' cells of the
  patch-embedding map, as SimMIMEncoder does for a ratio (alice.models.masked), with the given mask.
  Swin's patch embedding does not overlap, so a masked unit's voxels reach no output; nnFormer's
  embedding is four overlapping 3³ convolutions, so voxels near a masked unit's border still reach
  its neighbours' cells (as in SimMIMEncoder: the mask is applied after the embedding).

`transferable` is the wrapped encoder's: neither mask token is ever in a checkpoint's encoder.
"""

from __future__ import annotations

from typing import Sequence

import torch

from alice.fastpath import from_host
from torch import nn

from alice.models.hierarchical import map_to_tokens, unit_mask_to_map
from alice.models.vit import ViTEncoder


class MaskTokenEncoder(nn.Module):
    """An encoder of alice.ssl.encoder.build_encoder whose masked units are replaced by a learned
    mask token (module docstring); every unit's token comes out."""

    keeps_all_tokens = True

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.is_vit = isinstance(encoder, ViTEncoder)
        self.num_patches = int(encoder.num_patches)
        self.embed_dim = int(encoder.embed_dim)
        self.patch_voxels = int(encoder.patch_voxels)
        if self.is_vit:
            self.mask_token = nn.Parameter(torch.zeros(1, 1, self.embed_dim))
            nn.init.trunc_normal_(self.mask_token, std=0.02)
        elif not isinstance(getattr(encoder, "mask_token", None), nn.Parameter):
            raise TypeError(f"{type(encoder).__name__} is neither the ViT nor a SimMIM adapter")

    @property
    def transferable(self) -> nn.Module:
        return self.encoder.transferable

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder.patchify(x)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        b = x.shape[0]
        if mask is not None and tuple(mask.shape) != (b, self.num_patches):
            raise ValueError(f"mask must be (B, N) = ({b}, {self.num_patches}), got {tuple(mask.shape)}")
        if self.is_vit:
            return self._vit(x, mask)
        return self._hierarchical(x, mask)

    def _vit(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        vit = self.encoder
        pe = vit.patch_embedding  # MONAI's PatchEmbeddingBlock, conv projection (alice.models.vit)
        e = pe.patch_embeddings(x).flatten(2).transpose(1, 2)  # (B, N, D), before the positions
        if mask is not None:
            m = mask.unsqueeze(-1).to(e.dtype)
            e = e * (1.0 - m) + self.mask_token.to(e.dtype) * m
        tokens = pe.dropout(e + pe.position_embeddings)
        for blk in vit.blocks:
            tokens = blk(tokens)
        return vit.norm(tokens)

    def _hierarchical(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        enc = self.encoder  # SimMIMEncoder: its forward with an explicit mask instead of a ratio
        if tuple(x.shape[2:]) != enc.crop:
            raise ValueError(f"built for crops of {list(enc.crop)}, got {list(x.shape[2:])}")
        e = enc.backbone.embed(x)
        if mask is not None:
            m = unit_mask_to_map(mask, enc.grid, enc.factor).to(e.dtype)
            e = e * (1.0 - m) + enc.mask_token.to(e.dtype) * m
        return map_to_tokens(enc.backbone.stages(e)[-1])


def sample_unit_masks(batch: int, n: int, ratio: float | Sequence[float], probability: float = 1.0,
                      generator: torch.Generator | None = None, device: torch.device | str = "cpu") -> torch.Tensor:
    """(batch, n) bool masks, True = masked: each sample is masked with `probability` (else not at
    all); a masked sample draws its ratio r uniformly from `ratio` = [lo, hi] (a number: always that
    ratio) and masks round(r·n) units, at least 1 and at most n − 1, chosen uniformly at random
    (iBOT's prediction ratio, its released recipe: r = 0 with probability 0.5, else U(0.1, 0.5)).
    Random numbers from `generator` (CPU) or the global torch RNG."""
    lo, hi = (float(ratio), float(ratio)) if isinstance(ratio, (int, float)) else (float(ratio[0]), float(ratio[1]))
    if n < 2:
        raise ValueError(f"masking needs at least 2 units (one masked, one kept), got {n}")
    masked = torch.rand(batch, generator=generator) < float(probability)
    r = torch.rand(batch, generator=generator) * (hi - lo) + lo
    count = torch.clamp(torch.round(r * n), 1, n - 1).long() * masked.long()
    ranks = torch.argsort(torch.argsort(torch.rand(batch, n, generator=generator), dim=1), dim=1)
    return from_host(ranks < count.unsqueeze(1), torch.device(device))
