"""Strong augmentations for the target-encoder views (paper §4.2: "random resized rotation, flipping,
intensity scaling and shifting"), on batched tensors (B, C, X, Y, Z), per-sample random parameters
drawn from a `torch.Generator` (reproducible).

- random resized rotation: a small rotation about each axis (uniform in ±`max_angle_deg`) combined
  with an isotropic rescale (uniform in `scale_range`), built in voxel units (so a non-cubic crop is
  not sheared) and applied with `affine_grid`/`grid_sample` (trilinear, border padding);
- flips: each spatial axis independently with probability `flip_prob`;
- intensity: x * a + b with a ~ U(1 - intensity_scale, 1 + intensity_scale),
  b ~ U(-intensity_shift, intensity_shift).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class StrongAugmentConfig:
    max_angle_deg: float = 15.0
    scale_range: tuple[float, float] = (0.8, 1.2)
    flip_prob: float = 0.5
    intensity_scale: float = 0.1
    intensity_shift: float = 0.1


def _uniform(shape, lo, hi, generator):
    return torch.rand(shape, generator=generator) * (hi - lo) + lo


def _rotation_matrices(angles: torch.Tensor) -> torch.Tensor:
    """(B, 3) angles in radians -> (B, 3, 3) = Rz @ Ry @ Rx."""
    b = angles.shape[0]
    c, s = torch.cos(angles), torch.sin(angles)
    one, zero = torch.ones(b), torch.zeros(b)
    rx = torch.stack([one, zero, zero, zero, c[:, 0], -s[:, 0], zero, s[:, 0], c[:, 0]], 1).view(b, 3, 3)
    ry = torch.stack([c[:, 1], zero, s[:, 1], zero, one, zero, -s[:, 1], zero, c[:, 1]], 1).view(b, 3, 3)
    rz = torch.stack([c[:, 2], -s[:, 2], zero, s[:, 2], c[:, 2], zero, zero, zero, one], 1).view(b, 3, 3)
    return rz @ ry @ rx


def strong_augment(
    x: torch.Tensor, generator: torch.Generator | None = None, config: StrongAugmentConfig = StrongAugmentConfig()
) -> torch.Tensor:
    """Returns an augmented copy of x (B, C, X, Y, Z); random numbers come from `generator` (CPU)."""
    if x.dim() != 5:
        raise ValueError(f"expected (B, C, X, Y, Z), got shape {tuple(x.shape)}")
    b = x.shape[0]
    sizes = x.shape[2:]
    # --- random resized rotation, in voxel units; affine_grid's coordinate order is (Z, Y, X)
    angles = _uniform((b, 3), -1.0, 1.0, generator) * math.radians(config.max_angle_deg)
    scale = _uniform((b, 1, 1), config.scale_range[0], config.scale_range[1], generator)
    half = torch.tensor([sizes[2], sizes[1], sizes[0]], dtype=torch.float32) / 2.0
    d, d_inv = torch.diag(half), torch.diag(1.0 / half)
    # output normalised coord -> voxel -> rotate/scale (sampling matrix = inverse transform) -> normalised
    a = d_inv @ (_rotation_matrices(angles) / scale) @ d
    theta = torch.cat([a, torch.zeros(b, 3, 1)], dim=2).to(device=x.device, dtype=x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    # --- flips
    flips = torch.rand((b, 3), generator=generator) < config.flip_prob
    for axis in range(3):
        sel = flips[:, axis].to(x.device)
        if sel.any():
            out = torch.where(sel.view(b, 1, 1, 1, 1), out.flip(2 + axis), out)
    # --- intensity scale and shift
    gain = _uniform((b, 1, 1, 1, 1), 1 - config.intensity_scale, 1 + config.intensity_scale, generator)
    bias = _uniform((b, 1, 1, 1, 1), -config.intensity_shift, config.intensity_shift, generator)
    return out * gain.to(x) + bias.to(x)
