"""The view augmentations of paper §4.2, on batched tensors (B, C, X, Y, Z), per-sample random
parameters drawn from a `torch.Generator` (reproducible).

`strong_augment`: the target-encoder views ("random resized rotation, flipping, intensity scaling and
shifting"):

- random resized rotation: a small rotation about each axis (uniform in ±`max_angle_deg`) combined
  with an isotropic rescale (uniform in `scale_range`), built in voxel units (so a non-cubic crop is
  not sheared) and applied with `affine_grid`/`grid_sample` (trilinear, border padding);
- flips: each spatial axis independently with probability `flip_prob`;
- intensity: x * a + b with a ~ U(1 - intensity_scale, 1 + intensity_scale),
  b ~ U(-intensity_shift, intensity_shift).

`mae_augment`: the online-encoder views, before masking ("augmentations and masking following MAE");
MAE's pretraining augmentation (He et al. 2022, §4 and its Appendix A.1) is a random resized crop,
scale (0.2, 1.0), aspect ratio (3/4, 4/3), and a random horizontal flip. In 3-D (our extension,
the values are `MaeAugmentConfig`'s):
- random resized crop: a box holding a fraction s ~ U(`scale_range`) of the crop's voxels, its two
  aspect ratios X/Y and Z/Y (relative to the crop's own shape) log-uniform in `ratio_range`, placed
  uniformly inside the crop and resampled (trilinear) to the crop's size; like torchvision's
  RandomResizedCrop, 10 draws, then the whole crop if no box fits;
- flips: each axis of `flip_axes` independently with probability `flip_prob` (axis 0 is left–right
  of the RAS-oriented volumes: MAE's horizontal flip).
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


@dataclass(frozen=True)
class MaeAugmentConfig:
    enabled: bool = True
    scale_range: tuple[float, float] = (0.2, 1.0)
    ratio_range: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)
    flip_prob: float = 0.5
    flip_axes: tuple[int, ...] = (0,)


def _crop_boxes(b: int, generator, config: MaeAugmentConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 3) side fractions and (B, 3) centres in [-1, 1] (axis order X, Y, Z) of the crop boxes."""
    lo, hi = config.scale_range
    log_r = (math.log(config.ratio_range[0]), math.log(config.ratio_range[1]))
    frac = torch.ones(b, 3)
    for i in range(b):
        for _ in range(10):
            s = float(_uniform((), lo, hi, generator))
            r_xy, r_zy = torch.exp(_uniform((2,), log_r[0], log_r[1], generator)).tolist()
            f_y = (s / (r_xy * r_zy)) ** (1.0 / 3.0)
            f = torch.tensor([r_xy * f_y, f_y, r_zy * f_y])
            if (f <= 1.0).all():
                frac[i] = f
                break
    centre = _uniform((b, 3), -1.0, 1.0, generator) * (1.0 - frac)
    return frac, centre


def mae_augment(
    x: torch.Tensor, generator: torch.Generator | None = None, config: MaeAugmentConfig = MaeAugmentConfig()
) -> torch.Tensor:
    """MAE's augmentation in 3-D (module docstring) of x (B, C, X, Y, Z); x itself when disabled."""
    if x.dim() != 5:
        raise ValueError(f"expected (B, C, X, Y, Z), got shape {tuple(x.shape)}")
    if not config.enabled:
        return x
    b = x.shape[0]
    frac, centre = _crop_boxes(b, generator, config)
    # affine_grid's coordinate order is (Z, Y, X): output coord t in [-1, 1] samples centre + frac * t
    theta = torch.zeros(b, 3, 4)
    for row, axis in enumerate((2, 1, 0)):
        theta[:, row, row] = frac[:, axis]
        theta[:, row, 3] = centre[:, axis]
    grid = F.affine_grid(theta.to(device=x.device, dtype=x.dtype), list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    flips = torch.rand((b, 3), generator=generator) < config.flip_prob
    for axis in config.flip_axes:
        sel = flips[:, axis].to(x.device)
        if sel.any():
            out = torch.where(sel.view(b, 1, 1, 1, 1), out.flip(2 + axis), out)
    return out


@dataclass(frozen=True)
class ViewAugmentConfig:
    """The augmentation of one view of the contrastive and distillation methods (MoCo v3, DINO, ...),
    in 3-D: a random resized crop of `scale_range` of the crop's voxels (aspect ratios log-uniform in
    `ratio_range`, resampled to the crop's size; the random-resized-crop of MoCo v3 Alg. 1 and DINO
    §3.1), then `strong_augment`'s small rotation, flips of every axis and intensity scale/shift in
    place of the 2-D colour jitter (CT has one channel). Values: `view_augment` callers' configs."""

    scale_range: tuple[float, float] = (0.2, 1.0)
    ratio_range: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)
    max_angle_deg: float = 15.0
    flip_prob: float = 0.5
    intensity_scale: float = 0.1
    intensity_shift: float = 0.1

    @classmethod
    def from_mapping(cls, options) -> "ViewAugmentConfig":
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in dict(options or {}).items()})


def view_augment(x: torch.Tensor, generator: torch.Generator | None, config: ViewAugmentConfig) -> torch.Tensor:
    """One augmented view of x (B, C, X, Y, Z) (ViewAugmentConfig), random numbers from `generator`."""
    crop = MaeAugmentConfig(scale_range=tuple(config.scale_range), ratio_range=tuple(config.ratio_range),
                            flip_prob=0.0)
    rest = StrongAugmentConfig(max_angle_deg=config.max_angle_deg, scale_range=(1.0, 1.0),
                               flip_prob=config.flip_prob, intensity_scale=config.intensity_scale,
                               intensity_shift=config.intensity_shift)
    return strong_augment(mae_augment(x, generator, crop), generator, rest)
