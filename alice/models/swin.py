"""The Swin encoder of Swin UNETR (Hatamizadeh et al. 2022; Tang et al. 2022, the paper's [40]).

`SwinEncoder` IS MONAI's `monai.networks.nets.swin_unetr.SwinTransformer` (the module SwinUNETR
holds as `.swinViT`), built with the arguments SwinUNETR passes it, plus the hierarchical interface
(alice.models.hierarchical): its state dict is key for key that of `SwinUNETR(...).swinViT` for
the same encoder config (`swin_kwargs`), so a pretrained encoder loads strictly into Swin UNETR.

    embed(x)   = patch embedding (2³ conv, stride 2), (B, C, X/2, Y/2, Z/2)
    stages(e)  = the 4 Swin stages (W-MSA / SW-MSA blocks, each ending with a patch merging), each
                 output layer-normalised over channels as SwinUNETR's `normalize=True` does:
                 (B, 2C, /4), (B, 4C, /8), (B, 8C, /16), (B, 16C, /32) — the last is the bottleneck.

So `stages(embed(x))` equals `swinViT(x, normalize=True)[1:]`.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from monai.networks.nets.swin_unetr import SwinTransformer

from alice.models.configs import SWIN_PATCH, SWIN_STAGES, encoder_stride, normalized_encoder_config
from alice.models.hierarchical import HierarchicalEncoder


def swin_kwargs(encoder_config: Mapping[str, Any]) -> dict[str, Any]:
    """SwinUNETR's keyword arguments for an encoder config (the network builder uses the same)."""
    enc = normalized_encoder_config(encoder_config)
    if enc["name"] != "swin":
        raise ValueError(f"not a swin encoder config: {enc['name']!r}")
    return {
        "feature_size": enc["embed_dim"],
        "depths": tuple(enc["depths"]),
        "num_heads": tuple(enc["heads"]),
        "window_size": tuple(enc["window"]),
        "mlp_ratio": enc["mlp_ratio"],
        "patch_size": SWIN_PATCH,
    }


class SwinEncoder(SwinTransformer, HierarchicalEncoder):
    def __init__(self, encoder_config: Mapping[str, Any], in_channels: int = 1) -> None:
        kw = swin_kwargs(encoder_config)
        # exactly SwinUNETR's call (its defaults: qkv_bias, no dropout, LayerNorm, no patch norm)
        super().__init__(
            in_chans=in_channels,
            embed_dim=kw["feature_size"],
            window_size=kw["window_size"],
            patch_size=(SWIN_PATCH,) * 3,
            depths=kw["depths"],
            num_heads=kw["num_heads"],
            mlp_ratio=kw["mlp_ratio"],
            qkv_bias=True,
            spatial_dims=3,
            downsample="merging",
        )
        self.patch = (SWIN_PATCH,) * 3
        self.stride = tuple(encoder_stride(encoder_config))
        self.embed_dim = kw["feature_size"]
        self.out_dim = kw["feature_size"] * 2 ** SWIN_STAGES

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.pos_drop(self.patch_embed(x))

    def stages(self, e: torch.Tensor) -> list[torch.Tensor]:
        out, x = [], e
        for layers in (self.layers1, self.layers2, self.layers3, self.layers4):
            x = layers[0](x.contiguous())
            out.append(self.proj_out(x, True))
        return out
