"""Conditional Anatomical Semantic Alignment (CASA), eqs. 3–4 of the paper (§3.3).

    q  = LN_q(V)  W_q          (B, Nq, C)      V: online-encoder tokens of the masked view (query)
    k  = LN_kv(H) W_k          (B, Nk, C)      H = φ(online-decoder output) (student) or
    ν  = LN_kv(H) W_ν          (B, Nk, C)         Y = ψ(target-encoder output) (teacher), §3.2
    ATT = softmax(q kᵀ / √C)   (B, Nq, Nk)     eq. 3
    out = ζ(ATT ν)             (B, Nq, C)      eq. 4, ζ a linear projection

C = `proj_dim`; `kv_dim` = the width of H and Y (in Alice the heads' output width). One CASA module
is used for both the student (kv = H) and teacher (kv = Y) embeddings, as the paper's Fig. 3
describes one query projection shared by both and "key and value projection for both H and Y". Single-head attention, as written in eq. 3 (the authors' released code uses an 8-head
post-LN transformer layer; the harness implements the paper).
"""

from __future__ import annotations

import math

import torch
from torch import nn


class CASA(nn.Module):
    def __init__(self, dim: int, proj_dim: int, kv_dim: int | None = None) -> None:
        """dim: width of the query tokens V; kv_dim: width of the key/value tokens (default: dim)."""
        super().__init__()
        kv_dim = dim if kv_dim is None else kv_dim
        self.proj_dim = proj_dim
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(kv_dim)
        self.w_q = nn.Linear(dim, proj_dim, bias=False)
        self.w_k = nn.Linear(kv_dim, proj_dim, bias=False)
        self.w_v = nn.Linear(kv_dim, proj_dim, bias=False)
        self.zeta = nn.Linear(proj_dim, proj_dim)

    def attention(self, v: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        """ATT of eq. 3, (B, Nq, Nk)."""
        q = self.w_q(self.norm_q(v))
        k = self.w_k(self.norm_kv(kv))
        return torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(self.proj_dim), dim=-1)

    def forward(self, v: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        """v (B, Nq, dim), kv (B, Nk, kv_dim) -> (B, Nq, proj_dim)."""
        att = self.attention(v, kv)
        value = self.w_v(self.norm_kv(kv))
        return self.zeta(att @ value)
