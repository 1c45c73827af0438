"""3-D ViT encoder whose parameters are key-for-key those of MONAI's `ViT` inside `UNETR`.

Built from `monai.networks.blocks.PatchEmbeddingBlock` (conv projection, learnable position
embeddings, no [cls] token) and `monai.networks.blocks.TransformerBlock`, plus a final LayerNorm,
under the attribute names `patch_embedding`, `blocks`, `norm`: `ViTEncoder.state_dict()` loads
strictly into `UNETR(...).vit` (and back) for the same hyper-parameters and image size.

`forward(x, mask_ratio)` does MAE-style random masking (He et al. 2022): every token is embedded and
position-embedded, a random subset of `int(N * (1 - mask_ratio))` tokens per sample is kept (argsort
of uniform noise) and only those go through the transformer blocks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from monai.networks.blocks import PatchEmbeddingBlock, TransformerBlock
from torch import nn

from alice.fastpath import from_host


def _triple(v: int | Sequence[int]) -> tuple[int, int, int]:
    if isinstance(v, int):
        return (v, v, v)
    t = tuple(int(x) for x in v)
    if len(t) != 3:
        raise ValueError(f"expected an int or 3 ints, got {v!r}")
    return t  # type: ignore[return-value]


def random_masking(
    batch: int, n: int, mask_ratio: float, device: torch.device | str = "cpu", generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """MAE per-sample random masking.

    Returns `ids_keep` (B, N_vis), `mask` (B, N) bool with True = masked (in original token order) and
    `ids_restore` (B, N) such that `gather(cat(visible, masked), ids_restore)` restores the order.
    """
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
    n_keep = int(n * (1.0 - mask_ratio))
    n_keep = max(n_keep, 1)
    noise = torch.rand(batch, n, generator=generator, device=generator.device if generator is not None else "cpu")
    noise = from_host(noise, device)
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :n_keep]
    mask = torch.ones(batch, n, dtype=torch.bool, device=device)
    mask[:, :n_keep] = False
    mask = torch.gather(mask, 1, ids_restore)
    return ids_keep, mask, ids_restore


class ViTEncoder(nn.Module):
    """ViT over a 3-D volume (B, C, X, Y, Z) with MONAI-UNETR-compatible parameter names.

    Also the masked-encoder interface of alice.models.masked (MAE: only visible tokens come out)."""

    keeps_all_tokens = False

    def __init__(
        self,
        img_size: int | Sequence[int],
        patch: int | Sequence[int] = 16,
        embed_dim: int = 768,
        depth: int = 12,
        heads: int = 12,
        mlp_ratio: float = 4.0,
        in_channels: int = 1,
        qkv_bias: bool = False,
        dropout_rate: float = 0.0,
    ) -> None:
        super().__init__()
        self.img_size = _triple(img_size)
        self.patch = _triple(patch)
        for s, p in zip(self.img_size, self.patch):
            if s % p:
                raise ValueError(f"img_size {self.img_size} must be a multiple of patch {self.patch}")
        self.grid = tuple(s // p for s, p in zip(self.img_size, self.patch))
        self.in_channels = in_channels
        self.embed_dim = embed_dim
        self.num_patches = self.grid[0] * self.grid[1] * self.grid[2]
        self.patch_voxels = self.patch[0] * self.patch[1] * self.patch[2] * in_channels
        self.patch_embedding = PatchEmbeddingBlock(
            in_channels=in_channels,
            img_size=self.img_size,
            patch_size=self.patch,
            hidden_size=embed_dim,
            num_heads=heads,
            proj_type="conv",
            pos_embed_type="learnable",
            dropout_rate=dropout_rate,
            spatial_dims=3,
        )
        mlp_dim = int(embed_dim * mlp_ratio)
        self.blocks = nn.ModuleList(
            [TransformerBlock(embed_dim, mlp_dim, heads, dropout_rate, qkv_bias) for _ in range(depth)]
        )
        self.norm = nn.LayerNorm(embed_dim)

    @classmethod
    def from_config(cls, config: Mapping[str, Any], img_size: int | Sequence[int]) -> "ViTEncoder":
        """Build from the `pretrain.encoders.vit` mapping (keys embed_dim, depth, heads, mlp_ratio, patch)."""
        return cls(
            img_size=img_size,
            patch=config.get("patch", 16),
            embed_dim=int(config["embed_dim"]),
            depth=int(config["depth"]),
            heads=int(config["heads"]),
            mlp_ratio=float(config.get("mlp_ratio", 4.0)),
        )

    @property
    def transferable(self) -> nn.Module:
        """The module whose state dict a checkpoint carries (UNETR's `vit`): this one."""
        return self

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, X, Y, Z) -> (B, N, p0*p1*p2*C), tokens in the same (x, y, z) raster order as the conv."""
        b, c, *_ = x.shape
        (gx, gy, gz), (px, py, pz) = self.grid, self.patch
        x = x.reshape(b, c, gx, px, gy, py, gz, pz)
        x = x.permute(0, 2, 4, 6, 3, 5, 7, 1)
        return x.reshape(b, gx * gy * gz, px * py * pz * c)

    def unpatchify(self, tokens: torch.Tensor) -> torch.Tensor:
        """Inverse of `patchify`."""
        b = tokens.shape[0]
        (gx, gy, gz), (px, py, pz), c = self.grid, self.patch, self.in_channels
        x = tokens.reshape(b, gx, gy, gz, px, py, pz, c)
        x = x.permute(0, 7, 1, 4, 2, 5, 3, 6)
        return x.reshape(b, c, gx * px, gy * py, gz * pz)

    def forward(
        self, x: torch.Tensor, mask_ratio: float = 0.0, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns (tokens_visible (B, N_vis, D) after the final LayerNorm, mask (B, N) bool True=masked,
        ids_restore (B, N)). With `mask_ratio=0` every token is kept, in the original order."""
        tokens = self.patch_embedding(x)  # (B, N, D), position embeddings added
        b, n, d = tokens.shape
        if mask_ratio > 0:
            ids_keep, mask, ids_restore = random_masking(b, n, mask_ratio, tokens.device, generator)
            tokens = torch.gather(tokens, 1, ids_keep.unsqueeze(-1).expand(-1, -1, d))
        else:
            mask = torch.zeros(b, n, dtype=torch.bool, device=tokens.device)
            ids_restore = torch.arange(n, device=tokens.device).unsqueeze(0).expand(b, -1)
        for blk in self.blocks:
            tokens = blk(tokens)
        return self.norm(tokens), mask, ids_restore
