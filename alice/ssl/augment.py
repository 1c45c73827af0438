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

from alice.fastpath import from_host


@dataclass(frozen=True)
class StrongAugmentConfig:
    max_angle_deg: float = 15.0
    scale_range: tuple[float, float] = (0.8, 1.2)
    flip_prob: float = 0.5
    intensity_scale: float = 0.1
    intensity_shift: float = 0.1


def _uniform(shape, lo, hi, generator):
    return torch.rand(shape, generator=generator) * (hi - lo) + lo


def _flip_samples(out: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """Flip sample i of `out` (B, C, X, Y, Z) along axis a where flips[i, a] (B, 3) is True."""
    b = out.shape[0]
    for axis in range(3):
        sel = flips[:, axis]
        if sel.any():  # read on the host, where the flips were drawn (no wait for the device)
            out = torch.where(from_host(sel, out.device).view(b, 1, 1, 1, 1), out.flip(2 + axis), out)
    return out


def _gain_bias(out: torch.Tensor, scale: float, shift: float, generator) -> torch.Tensor:
    """A per-sample intensity gain in [1 − scale, 1 + scale] and bias in [−shift, shift]."""
    b = out.shape[0]
    gain = _uniform((b, 1, 1, 1, 1), 1 - scale, 1 + scale, generator)
    bias = _uniform((b, 1, 1, 1, 1), -shift, shift, generator)
    return out * from_host(gain, out.device, out.dtype) + from_host(bias, out.device, out.dtype)


def _resample_boxes(x: torch.Tensor, frac: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
    """Resample each sample's box (fraction and centre of the crop per axis, normalised
    coordinates) to the full crop size, trilinearly."""
    theta = torch.zeros(x.shape[0], 3, 4)
    for row, axis in enumerate((2, 1, 0)):  # affine_grid's coordinate order is (Z, Y, X)
        theta[:, row, row] = frac[:, axis]
        theta[:, row, 3] = centre[:, axis]
    grid = F.affine_grid(from_host(theta, x.device, x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


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
    theta = from_host(torch.cat([a, torch.zeros(b, 3, 1)], dim=2), x.device, x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    # --- flips
    out = _flip_samples(out, torch.rand((b, 3), generator=generator) < config.flip_prob)
    # --- intensity scale and shift
    return _gain_bias(out, config.intensity_scale, config.intensity_shift, generator)


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
    out = _resample_boxes(x, frac, centre)  # output coord t in [-1, 1] samples centre + frac * t
    flips = torch.rand((b, 3), generator=generator) < config.flip_prob
    keep = torch.zeros(3, dtype=torch.bool)
    keep[list(config.flip_axes)] = True
    return _flip_samples(out, flips & keep)


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


@dataclass(frozen=True)
class BoxViewConfig:
    """One view whose geometry is known (`box_view`): a random resized crop (`scale_range` of the
    crop's voxels, aspect ratios log-uniform in `ratio_range`, `_crop_boxes` as in `mae_augment`),
    flips of the axes `flip_axes` with probability `flip_prob` each, intensity x·a + b (a ~ U(1 ±
    `intensity_scale`), b ~ U(± `intensity_shift`)). No rotation: the box and the flips alone map a
    view's voxels to the crop's, so two views' relative positions are exact (what SIM needs)."""

    scale_range: tuple[float, float] = (0.2, 1.0)
    ratio_range: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)
    flip_prob: float = 0.5
    flip_axes: tuple[int, ...] = (0,)
    intensity_scale: float = 0.1
    intensity_shift: float = 0.1

    @classmethod
    def from_mapping(cls, options) -> "BoxViewConfig":
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in dict(options or {}).items()})


def box_view(x: torch.Tensor, generator: torch.Generator | None, config: BoxViewConfig = BoxViewConfig()
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A view of x (B, C, X, Y, Z) and its geometry: (view, frac (B, 3), centre (B, 3), flip (B, 3) bool),
    axis order X, Y, Z. In normalised coordinates ([-1, 1] over a whole axis, voxel centres at
    (2i + 1)/S − 1), the view's point t shows the crop's point centre + frac · s · t, s = −1 on a
    flipped axis, else 1 (before the intensity change, which moves no voxel)."""
    if x.dim() != 5:
        raise ValueError(f"expected (B, C, X, Y, Z), got shape {tuple(x.shape)}")
    b = x.shape[0]
    frac, centre = _crop_boxes(b, generator, MaeAugmentConfig(scale_range=tuple(config.scale_range),
                                                              ratio_range=tuple(config.ratio_range)))
    out = _resample_boxes(x, frac, centre)
    flip = torch.rand((b, 3), generator=generator) < config.flip_prob
    keep = torch.zeros(3, dtype=torch.bool)
    keep[list(config.flip_axes)] = True
    flip = flip & keep
    out = _gain_bias(_flip_samples(out, flip), config.intensity_scale, config.intensity_shift, generator)
    return out, frac, centre, flip


# --- 90° rotations and cutout (Tang et al., CVPR 2022, §3.2: rotation prediction and masked volume
# inpainting); intensity transforms (UniMiSS, Xie et al., ECCV 2022: its 3-D views)

ROTATION_PLANES = {"xy": (0, 1), "yz": (1, 2), "xz": (0, 2)}


def square_plane(crop, plane: str = "auto") -> tuple[int, int]:
    """The two spatial axes (0 = X, 1 = Y, 2 = Z) of the plane in which `rot90_batch` turns crops of
    `crop` voxels: a 90° turn keeps the crop's shape only in a plane whose two sides are equal.
    "auto": xy (a turn about Z) when X = Y, else yz, else xz; ValueError when the named plane (or,
    for "auto", every plane) is not square."""
    crop = tuple(int(c) for c in crop)
    if plane == "auto":
        for name in ("xy", "yz", "xz"):
            a, b = ROTATION_PLANES[name]
            if crop[a] == crop[b]:
                return a, b
        raise ValueError(f"crop {list(crop)} has no square plane: a 90° rotation would change its shape")
    if plane not in ROTATION_PLANES:
        raise ValueError(f"rotation plane must be auto, {', '.join(ROTATION_PLANES)}, got {plane!r}")
    a, b = ROTATION_PLANES[plane]
    if crop[a] != crop[b]:
        raise ValueError(f"plane {plane} of crop {list(crop)} is not square: a 90° rotation would change its shape")
    return a, b


def rot90_batch(x: torch.Tensor, k: torch.Tensor, plane: tuple[int, int]) -> torch.Tensor:
    """x (B, C, X, Y, Z) with sample i turned by k[i]·90° in `plane` (two spatial axes, `square_plane`),
    from the plane's first axis towards its second (torch.rot90)."""
    if x.dim() != 5:
        raise ValueError(f"expected (B, C, X, Y, Z), got shape {tuple(x.shape)}")
    dims = (1 + plane[0], 1 + plane[1])
    return torch.stack([torch.rot90(x[i], int(k[i]) % 4, dims) for i in range(x.shape[0])])


@dataclass(frozen=True)
class CutoutConfig:
    """Random inner cutout: per sample, boxes are cut until they cover a fraction f ~ U(0,
    `max_fraction`) of the crop's voxels (overlaps counted twice); each box side is uniform in
    [`min_box`, `max_box`] of its axis, the box uniform inside the crop, filled with uniform noise
    in [0, 1] (the cached intensity range). With `swap` (and B > 1) a second round of boxes of the
    same law is filled with the same positions' voxels of another sample of the batch."""

    max_fraction: float = 0.3
    max_box: float = 0.25
    min_box: float = 0.05
    swap: bool = True

    @classmethod
    def from_mapping(cls, options) -> "CutoutConfig":
        config = cls(**dict(options or {}))
        if not 0.0 <= config.max_fraction < 1.0:
            raise ValueError(f"cutout max_fraction must be in [0, 1), got {config.max_fraction!r}")
        if not 0.0 < config.min_box <= config.max_box <= 1.0:
            raise ValueError(f"cutout box sides must satisfy 0 < min_box <= max_box <= 1, got "
                             f"{config.min_box!r}, {config.max_box!r}")
        return config


def _cutout_boxes(size, fraction: float, config: CutoutConfig, generator) -> list[tuple[slice, slice, slice]]:
    target = fraction * size[0] * size[1] * size[2]
    lo = [max(1, int(round(config.min_box * s))) for s in size]
    hi = [max(l, int(round(config.max_box * s))) for l, s in zip(lo, size)]
    boxes, covered = [], 0
    while covered < target and len(boxes) < 10_000:
        box = []
        for s, a, b in zip(size, lo, hi):
            side = int(torch.randint(a, b + 1, (), generator=generator))
            start = int(torch.randint(0, s - side + 1, (), generator=generator))
            box.append(slice(start, start + side))
        boxes.append(tuple(box))
        covered += math.prod(sl.stop - sl.start for sl in box)
    return boxes


def random_cutout(x: torch.Tensor, generator: torch.Generator | None, config: CutoutConfig = CutoutConfig()
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """A cut-out copy of x (B, C, X, Y, Z) (`CutoutConfig`) and the (B, 1, X, Y, Z) bool map of the
    voxels replaced; random numbers from `generator` (CPU)."""
    if x.dim() != 5:
        raise ValueError(f"expected (B, C, X, Y, Z), got shape {tuple(x.shape)}")
    b, c = x.shape[:2]
    size = tuple(x.shape[2:])
    out = x.clone()
    cut = torch.zeros((b, 1, *size), dtype=torch.bool, device=x.device)
    for i in range(b):
        f = float(torch.rand((), generator=generator)) * config.max_fraction
        for box in _cutout_boxes(size, f, config, generator):
            shape = (c, *(sl.stop - sl.start for sl in box))
            out[(i, slice(None), *box)] = from_host(torch.rand(shape, generator=generator), out.device, out.dtype)
            cut[(i, slice(None), *box)] = True
        if config.swap and b > 1:
            j = (i + int(torch.randint(1, b, (), generator=generator))) % b
            f = float(torch.rand((), generator=generator)) * config.max_fraction
            for box in _cutout_boxes(size, f, config, generator):
                out[(i, slice(None), *box)] = x[(j, slice(None), *box)]
                cut[(i, slice(None), *box)] = True
    return out, cut


@dataclass(frozen=True)
class IntensityAugmentConfig:
    """Intensity transforms of one view, in this order, each applied to a sample with its probability
    (UniMiSS's 3-D views, which name batchgenerators' transforms; the laws are these):
    Gaussian noise of std ~ U(`noise_std`); Gaussian blur of sigma ~ U(`blur_sigma`) voxels on every
    axis; x·a, a ~ U(`brightness_range`); x + b, b ~ N(0, `shift_sigma`²); contrast
    (x − mean)·f + mean, clipped to the sample's former range; gamma: the sample rescaled to [0, 1],
    raised to γ, rescaled back, then its former mean and std restored. The contrast factor and γ are
    drawn below 1 (from the range's lower end to 1) or above 1 (from 1 to its upper end) with
    probability ½ each."""

    noise_std: tuple[float, float] = (0.0, 0.1)
    noise_prob: float = 1.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    blur_prob: float = 0.64
    brightness_range: tuple[float, float] = (0.75, 1.25)
    brightness_prob: float = 0.8
    shift_sigma: float = 0.4
    shift_prob: float = 0.64
    contrast_range: tuple[float, float] = (0.75, 1.25)
    contrast_prob: float = 1.0
    gamma_range: tuple[float, float] = (0.7, 1.5)
    gamma_prob: float = 0.8

    @classmethod
    def from_mapping(cls, options) -> "IntensityAugmentConfig":
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in dict(options or {}).items()})


def _split_uniform(lo: float, hi: float, generator) -> float:
    """U(lo, 1) or U(1, hi) with probability ½ each (U(lo, hi) when the range does not contain 1)."""
    if lo < 1.0 < hi:
        if float(torch.rand((), generator=generator)) < 0.5:
            hi = 1.0
        else:
            lo = 1.0
    return float(_uniform((), lo, hi, generator))


def _gaussian_blur(v: torch.Tensor, sigma: float) -> torch.Tensor:
    """v (C, X, Y, Z) blurred by a separable Gaussian of `sigma` voxels (border replicated)."""
    radius = max(1, int(math.ceil(3.0 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32, device=v.device)
    kernel = torch.exp(-0.5 * (t / sigma) ** 2)
    kernel = (kernel / kernel.sum()).to(v.dtype)
    out = v.unsqueeze(0)  # (1, C, X, Y, Z)
    c = out.shape[1]
    for axis in range(3):
        shape = [1, 1, 1]
        shape[axis] = kernel.numel()
        pad = [0, 0, 0, 0, 0, 0]
        pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = radius
        w = kernel.view(1, 1, *shape).expand(c, 1, *shape)
        out = F.conv3d(F.pad(out, pad, mode="replicate"), w, groups=c)
    return out[0]


def intensity_augment(x: torch.Tensor, generator: torch.Generator | None,
                      config: IntensityAugmentConfig = IntensityAugmentConfig()) -> torch.Tensor:
    """An intensity-augmented copy of x (B, C, X, Y, Z) (`IntensityAugmentConfig`), in float32; random
    numbers from `generator` (CPU)."""
    if x.dim() != 5:
        raise ValueError(f"expected (B, C, X, Y, Z), got shape {tuple(x.shape)}")

    def draw(p: float) -> bool:
        return float(torch.rand((), generator=generator)) < p

    out = []
    for v in x.float():
        if draw(config.noise_prob):
            std = float(_uniform((), *config.noise_std, generator))
            v = v + from_host(torch.randn(v.shape, generator=generator), v.device, v.dtype) * std
        if draw(config.blur_prob):
            v = _gaussian_blur(v, float(_uniform((), *config.blur_sigma, generator)))
        if draw(config.brightness_prob):
            v = v * float(_uniform((), *config.brightness_range, generator))
        if draw(config.shift_prob):
            v = v + float(torch.randn((), generator=generator)) * config.shift_sigma
        if draw(config.contrast_prob):
            f = _split_uniform(*config.contrast_range, generator)
            mean, lo, hi = v.mean(), v.min(), v.max()
            v = ((v - mean) * f + mean).clamp(lo, hi)
        if draw(config.gamma_prob):
            g = _split_uniform(*config.gamma_range, generator)
            mean, std, lo = v.mean(), v.std(), v.min()
            span = v.max() - lo
            v = ((v - lo) / (span + 1e-7)) ** g * span + lo
            v = (v - v.mean()) / (v.std() + 1e-8) * std + mean
        out.append(v)
    return torch.stack(out)
