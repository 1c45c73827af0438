"""Medical MAE: self pre-training with masked autoencoders (Zhou et al., "Self Pre-training with
Masked Autoencoders for Medical Image Classification and Segmentation", ISBI 2023, arXiv
2203.05573; the Alice paper's ref. [57]), in 3-D on the harness's three encoders.

Objective: MAE's (He et al. 2022, §3; `baselines.mae.MAE`, which this file subclasses and does
not repeat): a random `mask_ratio` of the crop's patches is masked, the encoder sees the visible
ones, a lightweight decoder predicts every patch's voxels, and the loss is the MSE on the masked
patches against per-patch normalised voxels:

    ℓ = Σ_{p masked} ‖x̂_p − norm(x_p)‖² / |x_p| / #masked          (alice.ssl.losses.masked_mse)

What Zhou et al. add is the recipe, not a new loss: "self pre-training" — the ViT of UNETR is
pretrained by MAE on the (unlabeled images of the) downstream data set itself instead of on
ImageNet, then fine-tuned in UNETR. Here every method pretrains on the harness's unlabeled pool,
so "self" holds for the FLARE 2022 tables by construction; the differences from `mae` are the
3-D recipe of the authors' release (cvlab-stonybrook/SelfMedMAE, `configs/mae3d_btcv_1gpu.yaml`,
`lib/models/mae3d.py`), this file's defaults:

- ViT-B/16³ encoder on 96³ crops (the encoder and crop are the harness's `pretrain.encoders.vit`
  and `pretrain.crop`, shared with every method);
- mask ratio 0.75 (the released configuration's default; its BTCV run script passes 0.125). As
  for every masking method, `pretrain.methods.medical_mae.mask_ratio` overrides the shared
  `pretrain.mask_ratio`;
- decoder: 384-d, 8 blocks, 12 heads (MAE's default is 512-d, 8 blocks, 16 heads);
- target: per-patch normalised voxels (the release normalises each target patch by a LayerNorm
  without affine parameters: MAE's `norm_pix_loss`), loss on the masked patches only;
- fixed 3-D sin-cos position embeddings in the encoder and the decoder (`pos_embed: sincos`, the
  release's `pos_embed_type: sincos`): each axis gets dim/6 frequencies, sin and cos
  (`sincos_3d`; a width not divisible by 6 is zero-padded). They are written into the UNETR-
  compatible parameter `patch_embedding.position_embeddings` and frozen during pretraining, so the
  checkpoint still loads 1:1 into UNETR, whose fine-tuning then learns them. Swin and nnFormer
  have no absolute position embedding; only their decoder gets the fixed one. `learnable` keeps
  MAE's learned ones (the release's `perceptron` option);
- augmentation: no random resized crop; only random flips of each axis with probability 0.2
  (the release's pretraining transforms: `RandFlipd(prob=0.2)` on axes 0, 1, 2 after the random
  crop), expressed as `MaeAugmentConfig` with a whole-crop box (`scale_range` = `ratio_range` =
  (1, 1)). The release's crops are label-guided (`RandCropByPosNegLabeld`); the pool is
  unlabeled, so the crops are the harness's random body crops (alice.ssl.views `crop`).

Encoders: the ViT drops the masked patches (MAE proper); Swin and nnFormer replace them by a mask
token (SimMIM, alice.models.masked), as for `mae`.

Logged: `l_r`, and the spreads `spread` (pooled encoder embeddings) and `token_spread` (visible
tokens), as `mae` logs them (baselines/mae.py says how to read them).
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from alice.ssl.registry import checked_build, register_method
from baselines.mae import MAE

METHOD = {
    "name": "medical_mae",
    "paper": "Zhou et al., ISBI 2023",
    "objective": "MAE self pre-training: masked reconstruction, 3-D sin-cos positions, flips only",
    "views": "crop",
    "encoders": ["vit", "swin", "nnformer"],
    "masking": True,
    # decoder width 12: a multiple of 6, so the smoke test builds the 3-D sin-cos table unpadded
    "smoke": {"decoder": {"dim": 12, "depth": 1, "heads": 2}},
}

# the release's decoder (configs/mae3d_btcv_1gpu.yaml: decoder_embed_dim 384, depth 8, 12 heads)
DECODER = {"dim": 384, "depth": 8, "heads": 12}
# the release's pretraining augmentation: random flips of every axis with probability 0.2, no
# resized crop (a whole-crop box: alice.ssl.augment.mae_augment then only flips)
AUGMENT = {"enabled": True, "scale_range": (1.0, 1.0), "ratio_range": (1.0, 1.0), "flip_prob": 0.2,
           "flip_axes": (0, 1, 2)}
POS_EMBEDS = ("sincos", "learnable")


def sincos_3d(grid: Sequence[int], dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """(1, gx*gy*gz, dim) fixed 3-D sin-cos position embedding in (x, y, z) raster order (the
    order of the patch tokens): per axis dim // 6 frequencies ω_k = temperature^(−k / (dim // 6)),
    laid out as [sin(xω), cos(xω), sin(yω), cos(yω), sin(zω), cos(zω)], zero-padded to `dim`."""
    per_axis = dim // 6
    gx, gy, gz = (int(g) for g in grid)
    out = torch.zeros(gx * gy * gz, dim)
    if per_axis == 0:
        return out.unsqueeze(0)
    omega = 1.0 / temperature ** (torch.arange(per_axis, dtype=torch.float64) / per_axis)
    coords = torch.meshgrid(torch.arange(gx), torch.arange(gy), torch.arange(gz), indexing="ij")
    parts = []
    for c in coords:
        angle = c.reshape(-1, 1).double() * omega
        parts += [torch.sin(angle), torch.cos(angle)]
    out[:, :6 * per_axis] = torch.cat(parts, 1).float()
    return out.unsqueeze(0)


def _fix(param: nn.Parameter, grid: Sequence[int]) -> None:
    """Overwrite a (1, N, D) position-embedding parameter by the 3-D sin-cos table and freeze it."""
    if math.prod(grid) != param.shape[1]:
        raise ValueError(f"position embedding of {param.shape[1]} tokens for a grid {list(grid)}")
    with torch.no_grad():
        param.copy_(sincos_3d(grid, param.shape[-1]))
    param.requires_grad_(False)


class MedicalMAE(MAE):
    """`baselines.mae.MAE` with the medical MAE recipe's defaults and fixed sin-cos positions."""

    def __init__(self, encoder_config: Mapping[str, Any], crop, mask_ratio: float = 0.75,
                 decoder: Mapping[str, Any] | None = None, norm_pix_loss: bool = True,
                 augment: Mapping[str, Any] | None = None, pos_embed: str = "sincos",
                 method_config: Mapping[str, Any] | None = None):
        if pos_embed not in POS_EMBEDS:
            raise ValueError(f"pos_embed must be one of {', '.join(POS_EMBEDS)}, got {pos_embed!r}")
        super().__init__(encoder_config, crop, mask_ratio=mask_ratio,
                         decoder={**DECODER, **dict(decoder or {})}, norm_pix_loss=norm_pix_loss,
                         augment={**AUGMENT, **dict(augment or {})}, method_config=method_config)
        self.pos_embed = pos_embed
        if pos_embed == "sincos":
            grid = self.encoder.grid
            _fix(self.decoder.pos_embed, grid)
            patch_embedding = getattr(self.encoder, "patch_embedding", None)  # the ViT (UNETR's names)
            if patch_embedding is not None:
                _fix(patch_embedding.position_embeddings, grid)


_KWARGS = ("mask_ratio", "decoder", "norm_pix_loss", "augment", "pos_embed")


@register_method("medical_mae")
def build(method_config: Mapping[str, Any], encoder_config: Mapping[str, Any], crop) -> MedicalMAE:
    return checked_build("medical_mae", MedicalMAE, _KWARGS, method_config, encoder_config, crop)
