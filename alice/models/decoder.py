"""MAE-style lightweight decoder (the paper's "online decoder").

Visible encoder tokens are linearly embedded to `dec_dim`, a learned mask token is put at every masked
position (un-shuffled with `ids_restore`), the decoder's own learnable position embeddings are added,
and a few transformer blocks run over all N tokens. With `insert_mask_tokens=False` (SimMIM-style
encoders, alice.models.masked, whose output already has every position) the encoder tokens are
taken as they are, all N of them, and no mask token is built. Outputs: per-token voxel predictions
(B, N, patch_voxels) for the reconstruction loss, and the decoder token features H (B, N, dec_dim, or feat_dim when given)
that feed the projection head φ and the CASA module.
"""

from __future__ import annotations

import torch
from monai.networks.blocks import TransformerBlock
from torch import nn


class MaskedDecoder(nn.Module):
    def __init__(
        self,
        embed_dim: int,
        dec_dim: int,
        depth: int,
        heads: int,
        num_patches: int,
        patch_voxels: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        feat_dim: int | None = None,
        insert_mask_tokens: bool = True,
    ) -> None:
        """feat_dim: if given, the features H are mapped by a Linear(dec_dim, feat_dim) (used by Alice so
        that H has the target encoder's width and φ/ψ, CASA's key/value projections apply to both)."""
        super().__init__()
        self.num_patches = num_patches
        self.dec_dim = dec_dim
        self.embed = nn.Linear(embed_dim, dec_dim)
        if insert_mask_tokens:
            self.mask_token = nn.Parameter(torch.zeros(1, 1, dec_dim))
        else:
            self.register_parameter("mask_token", None)
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches, dec_dim))
        self.blocks = nn.ModuleList(
            [TransformerBlock(dec_dim, int(dec_dim * mlp_ratio), heads, 0.0, qkv_bias) for _ in range(depth)]
        )
        self.norm = nn.LayerNorm(dec_dim)
        self.pred = nn.Linear(dec_dim, patch_voxels)
        self.feat = nn.Linear(dec_dim, feat_dim) if feat_dim else nn.Identity()
        self.feat_dim = feat_dim or dec_dim
        if self.mask_token is not None:
            nn.init.trunc_normal_(self.mask_token, std=0.02)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)

    def forward(self, visible: torch.Tensor, ids_restore: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """visible (B, N_vis, embed_dim), ids_restore (B, N) -> (pred (B, N, patch_voxels), H (B, N, feat_dim))."""
        x = self.embed(visible)
        b, n_vis, d = x.shape
        n = ids_restore.shape[1]
        if n != self.num_patches:
            raise ValueError(f"decoder built for {self.num_patches} tokens, got ids_restore for {n}")
        if self.mask_token is not None:
            masks = self.mask_token.expand(b, n - n_vis, d)
            x = torch.cat([x, masks], dim=1)
            x = torch.gather(x, 1, ids_restore.unsqueeze(-1).expand(-1, -1, d))
        elif n_vis != n:
            raise ValueError(f"decoder without mask tokens needs all {n} tokens, got {n_vis}")
        x = x + self.pos_embed
        for blk in self.blocks:
            x = blk(x)
        h = self.norm(x)
        return self.pred(h), self.feat(h)
