"""The common interface of hierarchical encoders (Swin, nnFormer) and voxel-unit helpers.

A hierarchical encoder maps a volume (B, C_in, X, Y, Z) through

    e = encoder.embed(x)        patch-embedding map (B, embed_dim, X/p0, Y/p1, Z/p2), p = `patch`
    maps = encoder.stages(e)    per-stage maps, coarser and wider; maps[-1] is the bottleneck
                                (B, out_dim, X/s0, Y/s1, Z/s2), s = `stride`

so that masked pretraining (alice.models.masked) can replace masked units of `e` by a mask token
between the two calls (SimMIM, Xie et al. 2022), and a segmentation decoder can take `maps` as its
skips. Everything the encoder's state dict holds is what a pretraining checkpoint transfers;
nothing of the pretraining (mask token, decoder) is in it.
"""

from __future__ import annotations

import abc
from typing import Sequence

import torch
from torch import nn


class HierarchicalEncoder(abc.ABC):
    """Mixin declaring the interface; concrete encoders are `nn.Module`s that also set
    `patch` (3 ints), `stride` (3 ints), `embed_dim` and `out_dim`."""

    patch: tuple[int, int, int]
    stride: tuple[int, int, int]
    embed_dim: int
    out_dim: int

    @abc.abstractmethod
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, X, Y, Z) -> patch-embedding map (B, embed_dim, X/p0, Y/p1, Z/p2)."""

    @abc.abstractmethod
    def stages(self, e: torch.Tensor) -> list[torch.Tensor]:
        """Patch-embedding map -> per-stage maps (B, C_i, ...), the last = the bottleneck."""

    def grid(self, crop: Sequence[int]) -> tuple[int, int, int]:
        """The bottleneck grid of a crop."""
        return tuple(int(c) // s for c, s in zip(crop, self.stride))  # type: ignore[return-value]


def patchify(x: torch.Tensor, unit: Sequence[int]) -> torch.Tensor:
    """(B, C, X, Y, Z) -> (B, N, u0*u1*u2*C): non-overlapping units of `unit` voxels in (x, y, z)
    raster order (the order of a flattened (B, D, gx, gy, gz) map), voxels within a unit in the
    same order as `ViTEncoder.patchify`."""
    b, c, *size = x.shape
    ux, uy, uz = (int(u) for u in unit)
    gx, gy, gz = size[0] // ux, size[1] // uy, size[2] // uz
    if (gx * ux, gy * uy, gz * uz) != tuple(size):
        raise ValueError(f"volume {tuple(size)} is not a whole number of {tuple(unit)} units")
    x = x.reshape(b, c, gx, ux, gy, uy, gz, uz).permute(0, 2, 4, 6, 3, 5, 7, 1)
    return x.reshape(b, gx * gy * gz, ux * uy * uz * c)


def map_to_tokens(m: torch.Tensor) -> torch.Tensor:
    """(B, D, gx, gy, gz) -> (B, gx*gy*gz, D) in (x, y, z) raster order."""
    return m.flatten(2).transpose(1, 2)


def unit_mask_to_map(mask: torch.Tensor, grid: Sequence[int], factor: Sequence[int]) -> torch.Tensor:
    """(B, N) unit mask on `grid` -> (B, 1, g0*f0, g1*f1, g2*f2) float mask: each unit covers
    `factor` cells of a finer map."""
    m = mask.reshape(mask.shape[0], 1, *grid).to(torch.float32)
    for axis, f in enumerate(factor):
        m = m.repeat_interleave(int(f), dim=2 + axis)
    return m


def check_module(module: nn.Module) -> None:
    """TypeError unless `module` implements the interface (for the adapters' early error)."""
    if not isinstance(module, HierarchicalEncoder) or not isinstance(module, nn.Module):
        raise TypeError(f"{type(module).__name__} is not a hierarchical encoder module")
