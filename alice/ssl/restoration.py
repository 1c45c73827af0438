"""Models Genesis's image transformations (Zhou, Sodha, Rahman Siddiquee, Feng, Tajbakhsh, Gotway
and Liang, "Models Genesis: Generic Autodidactic Models for 3D Medical Image Analysis", MICCAI 2019;
extended by Zhou, Sodha, Pang, Gotway and Liang, "Models Genesis", Medical Image Analysis 67,
2021), the corruption that the restoration-based CNN baselines
(baselines/models_genesis.py, baselines/transvw.py, baselines/dira.py) learn to undo, on batched
tensors (B, C, X, Y, Z) of intensities in [0, 1] (the cached pool's window), every random number
drawn from a `torch.Generator` (None: torch's global generator, which the trainer reseeds before
every step, so a resumed run draws the same corruption).

`genesis_transform(x)` returns (x̃, x'): the transformed crop the network sees and the crop it must
restore. Per sample, in this order (the authors' released data generator; its probabilities, the
release's config, are `GenesisConfig`'s defaults — the papers describe the transformations, not
these numbers, so they are quoted from the release; the equation numbers below are unverified):

1. flips (`flip_rate` 0.4): while a draw is below `flip_rate` (at most `max_flips` = 3 times), flip
   along a random axis; applied to BOTH x̃ and the target x' (data augmentation, not a corruption);
2. local pixel shuffling (`local_rate` 0.5), the papers' "local-shuffling": `local_blocks` (10,000)
   boxes, each side uniform in [1, side // 10] voxels and placed uniformly inside the crop, are
   taken in turn; each box's voxels are the ORIGINAL crop's voxels of that box in a random
   permutation, a later box overwriting an earlier one where they overlap (the release's loop,
   computed here in one vectorised pass: the last box covering a voxel wins);
3. non-linear intensity transformation (`nonlinear_rate` 0.9): a cubic Bézier curve (MedIA eq. 1,
   unverified) B(t) = (1−t)³P0 + 3(1−t)²t·P1 + 3(1−t)t²·P2 + t³P3 with P0 = (0, 0), P3 = (1, 1) and
   P1, P2 uniform in [0, 1]², sampled at `BEZIER_SAMPLES` points and used as an intensity look-up
   table (linear interpolation, clamped outside [0, 1]): with probability 1/2 the monotone curve
   (both coordinates sorted), else its intensity-inverting mirror v ↦ y(1 − t(v)) (the release
   sorts only the x coordinates in that branch, its "half chance to get flip");
4. with probability `paint_rate` (0.9) one of (`inpaint_rate` 0.2 of them in-painting, the rest
   out-painting):
   - inner-cutout (in-painting): up to 5 boxes (each further box with probability 0.95), sides
     uniform in [side // 6, side // 3], at least 3 voxels from the border, filled with uniform
     noise in [0, 1);
   - outer-cutout (out-painting): the whole crop becomes uniform noise except one box (sides
     side − U[3·side // 7, 4·side // 7], ≥ 3 voxels from the border) and up to 4 more such boxes
     (each with probability 0.95), which keep the (transformed) crop.

All integer ranges are inclusive (Python's `random.randint` of the release); a range that a small
crop empties is clamped to its lower end. `GenesisConfig.from_mapping` reads a method config's
`genesis: {...}` block. `RestorationHead` is the 1×1×1 convolution (+ sigmoid, the release's
output activation) from a CNN body's dense features to the restored intensities;
`bottleneck_shape`, `embedding_grid` and `grid_embedding` give the crop embedding that the methods'
classification / contrastive heads read from a body's deepest level (global average pooling, or a
2×2×2 grid for the instance-normalised bodies: see the note above `bottleneck_shape`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, fields
from typing import Any, Mapping, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["BEZIER_SAMPLES", "Genesis", "GenesisConfig", "RestorationHead", "bezier_lut", "bottleneck_shape",
           "embedding_grid", "genesis_transform", "grid_embedding", "inner_cutout", "local_pixel_shuffling",
           "nonlinear_transform", "outer_cutout", "random_flips"]

# the release samples the curve at 100,000 points; it is a smooth cubic, so 1,000 linear segments
# reproduce it to ~1e-6 (below the cached pool's float32/float16 resolution of [0, 1])
BEZIER_SAMPLES = 1000


@dataclass(frozen=True)
class GenesisConfig:
    """Probabilities (per sample) and sizes of the Models Genesis transformations (module docstring;
    the defaults are the authors' released configuration)."""

    flip_rate: float = 0.4
    max_flips: int = 3
    local_rate: float = 0.5
    local_blocks: int = 10_000
    nonlinear_rate: float = 0.9
    paint_rate: float = 0.9
    inpaint_rate: float = 0.2       # of the painted samples; the others are out-painted (release: 0.8)

    @classmethod
    def from_mapping(cls, options: Mapping[str, Any] | None) -> "GenesisConfig":
        """The config of a method's `genesis` block; ValueError naming an unknown or bad key."""
        options = dict(options or {})
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise ValueError(f"unknown genesis settings {unknown}; known: {', '.join(known)}")
        config = cls(**options)
        for name in ("flip_rate", "local_rate", "nonlinear_rate", "paint_rate", "inpaint_rate"):
            value = getattr(config, name)
            if not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"genesis.{name} must be a probability in [0, 1], got {value!r}")
        for name in ("max_flips", "local_blocks"):
            value = getattr(config, name)
            if int(value) != value or int(value) < 0:
                raise ValueError(f"genesis.{name} must be an integer >= 0, got {value!r}")
        return config


class Genesis(NamedTuple):
    """`genesis_transform`'s result: the network's input x̃, the restoration target x' (the crop,
    flipped as x̃ was), and per transformation the (B,) record of the samples it was applied to
    ("flips": how many flips, the others bool)."""

    input: torch.Tensor
    target: torch.Tensor
    applied: dict[str, torch.Tensor]


# ------------------------------------------------------------------------------------ helpers
def _rand(generator: torch.Generator | None) -> float:
    return float(torch.rand((), generator=generator))


def _randint(lo: int, hi: int, generator: torch.Generator | None) -> int:
    """Uniform integer in [lo, hi] (inclusive, as Python's random.randint); [lo, lo] if hi < lo."""
    lo, hi = int(lo), max(int(lo), int(hi))
    return int(torch.randint(lo, hi + 1, (), generator=generator))


def _box(size, sides, generator, margin: int = 3) -> tuple[slice, ...]:
    """A box of `sides` inside `size`, its start uniform in [margin, side − box − margin] per axis
    (clamped into the crop when the crop is too small for the margin)."""
    out = []
    for s, b in zip(size, sides):
        b = max(1, min(int(b), int(s)))
        start = min(max(_randint(margin, s - b - margin, generator), 0), s - b)
        out.append(slice(start, start + b))
    return tuple(out)


def _check(x: torch.Tensor) -> None:
    if x.dim() != 5:
        raise ValueError(f"expected (B, C, X, Y, Z), got shape {tuple(x.shape)}")


# ------------------------------------------------------------------------------ transformations
def random_flips(x: torch.Tensor, target: torch.Tensor, generator: torch.Generator | None = None,
                 rate: float = 0.4, max_flips: int = 3) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per sample: while a uniform draw is below `rate` (at most `max_flips` times) flip x and target
    along a random spatial axis. Returns (x, target, number of flips (B,))."""
    _check(x)
    xs, ts, counts = [], [], []
    for i in range(x.shape[0]):
        xi, ti, n = x[i], target[i], 0
        while _rand(generator) < rate and n < max_flips:
            axis = 1 + _randint(0, 2, generator)
            xi, ti, n = xi.flip(axis), ti.flip(axis), n + 1
        xs.append(xi)
        ts.append(ti)
        counts.append(n)
    return torch.stack(xs), torch.stack(ts), torch.tensor(counts)


@functools.lru_cache(maxsize=16)
def _box_offsets(max_side: tuple[int, int, int], ny: int, nz: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For every box shape (sx, sy, sz) <= max_side = (mx, my, mz), in the order
    ((sx−1)·my + sy−1)·mz + sz−1: the flat offsets of its voxels from its corner in raster order (a
    crop of Y = ny, Z = nz voxels), all shapes' lists concatenated; and where each list starts."""
    lists = []
    for sx in range(1, max_side[0] + 1):
        for sy in range(1, max_side[1] + 1):
            for sz in range(1, max_side[2] + 1):
                i, j, k = torch.meshgrid(torch.arange(sx), torch.arange(sy), torch.arange(sz), indexing="ij")
                lists.append(((i * ny + j) * nz + k).reshape(-1))
    sizes = torch.tensor([len(t) for t in lists])
    return torch.cat(lists), torch.cumsum(sizes, 0) - sizes


def _shuffle_one(img: torch.Tensor, generator: torch.Generator | None, blocks: int) -> torch.Tensor:
    """Local pixel shuffling of one sample (C, X, Y, Z) (module docstring, 2)."""
    c, *size = img.shape
    if blocks <= 0:
        return img.clone()
    _, ny, nz = size
    max_side = [max(1, s // 10) for s in size]
    sides = torch.stack([torch.randint(1, m + 1, (blocks,), generator=generator) for m in max_side], 1)   # (N, 3)
    span = torch.tensor(size) - sides + 1
    lo = (torch.rand((blocks, 3), generator=generator) * span).long().minimum(span - 1)                   # (N, 3)
    # every voxel of every box, box after box (raster order inside a box): flat offsets from the
    # box's corner, looked up in the table of every possible box shape
    table, start = _box_offsets(tuple(max_side), ny, nz)
    shape = ((sides[:, 0] - 1) * max_side[1] + sides[:, 1] - 1) * max_side[2] + sides[:, 2] - 1
    volume = sides.prod(1)
    block = torch.repeat_interleave(torch.arange(blocks), volume)
    within = torch.arange(block.numel()) - (torch.cumsum(volume, 0) - volume)[block]
    pos = ((lo[:, 0] * ny + lo[:, 1]) * nz + lo[:, 2])[block] + table[start[shape][block] + within]
    # the last box covering a voxel is the one whose content it keeps
    owner = torch.full((img[0].numel(),), -1, dtype=torch.long)
    owner.scatter_reduce_(0, pos, block, reduce="amax", include_self=True)
    # a random order of each box's voxels, boxes kept together: sorting box + U[0, 1) keys groups
    # the voxels as the raster list does, so the j-th voxel of the list receives the original value
    # of the j-th of the sorted one (a uniform permutation of its box)
    keys = block.to(torch.float64) + torch.rand(block.shape, generator=generator, dtype=torch.float64)
    src = pos[keys.argsort()]
    keep = owner[pos] == block
    dst, src = pos[keep].to(img.device), src[keep].to(img.device)
    flat = img.reshape(c, -1)
    out = flat.clone()
    out[:, dst] = flat[:, src]
    return out.reshape(img.shape)


def local_pixel_shuffling(x: torch.Tensor, generator: torch.Generator | None = None,
                          blocks: int = 10_000) -> torch.Tensor:
    """Every sample of x (B, C, X, Y, Z) locally shuffled with `blocks` boxes (module docstring, 2);
    the channels of a voxel move together."""
    _check(x)
    return torch.stack([_shuffle_one(x[i], generator, int(blocks)) for i in range(x.shape[0])])


def bezier_lut(points: torch.Tensor, inverted: torch.Tensor, samples: int = BEZIER_SAMPLES
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """The look-up tables (xs, ys), each (B, samples), of the cubic Bézier curves through the control
    points `points` (B, 4, 2) (P0 .. P3): xs sorted ascending; ys sorted too, or, where `inverted`
    (B,) is True, left in the curve's order from P3 to P0 (the mirrored, intensity-inverting map)."""
    t = torch.linspace(0.0, 1.0, samples, dtype=torch.float64)
    # the release's Bernstein basis: control point i weighted C(3, i)·t^(3−i)·(1−t)^i, i.e. the curve
    # traversed from P3 (t = 0) to P0 (t = 1)
    basis = torch.stack([torch.tensor(float(n)) * t ** (3 - i) * (1 - t) ** i
                         for i, n in enumerate((1, 3, 3, 1))])                                           # (4, T)
    curve = torch.einsum("bic,it->bct", points.to(torch.float64), basis)                                 # (B, 2, T)
    xs = curve[:, 0].sort(1).values
    ys = torch.where(inverted.view(-1, 1), curve[:, 1], curve[:, 1].sort(1).values)
    return xs, ys


def _interp(v: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    """numpy.interp of v (N,) on the table (xs ascending, ys), clamped to ys' ends outside it."""
    i = torch.searchsorted(xs, v.contiguous()).clamp(1, xs.numel() - 1)
    x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
    w = ((v - x0) / (x1 - x0).clamp_min(1e-12)).clamp(0.0, 1.0)
    return y0 + w * (y1 - y0)


def nonlinear_transform(x: torch.Tensor, generator: torch.Generator | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Every sample's intensities mapped through its own random Bézier curve (module docstring, 3).
    Returns (transformed x, inverted (B,) bool: the sample got the mirrored, inverting curve)."""
    _check(x)
    b = x.shape[0]
    out, flags = [], []
    for i in range(b):
        inner = torch.rand((2, 2), generator=generator, dtype=torch.float64)
        points = torch.cat([torch.zeros(1, 2, dtype=torch.float64), inner, torch.ones(1, 2, dtype=torch.float64)])
        inverted = torch.rand((), generator=generator) < 0.5
        xs, ys = bezier_lut(points[None], inverted.view(1))
        v = x[i].reshape(-1).to(torch.float64)
        out.append(_interp(v, xs[0].to(v.device), ys[0].to(v.device)).reshape(x[i].shape).to(x.dtype))
        flags.append(bool(inverted))
    return torch.stack(out), torch.tensor(flags)


def _inner_one(img: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    img = img.clone()
    size = img.shape[1:]
    count = 5
    while count > 0 and _rand(generator) < 0.95:
        sides = [_randint(s // 6, s // 3, generator) for s in size]
        box = _box(size, sides, generator)
        shape = (1, *(sl.stop - sl.start for sl in box))
        img[(slice(None), *box)] = torch.rand(shape, generator=generator).to(img)
        count -= 1
    return img


def _outer_one(img: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    size = img.shape[1:]
    out = torch.rand((1, *size), generator=generator).to(img).expand_as(img).clone()
    count = 5  # the first box always, then up to 4 more, each with probability 0.95
    while count > 0 and (count == 5 or _rand(generator) < 0.95):
        sides = [s - _randint(3 * s // 7, 4 * s // 7, generator) for s in size]
        box = _box(size, sides, generator)
        out[(slice(None), *box)] = img[(slice(None), *box)]
        count -= 1
    return out


def inner_cutout(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """In-painting's corruption of every sample (module docstring, 4): noise boxes inside the crop."""
    _check(x)
    return torch.stack([_inner_one(x[i], generator) for i in range(x.shape[0])])


def outer_cutout(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Out-painting's corruption of every sample (module docstring, 4): noise outside a few boxes."""
    _check(x)
    return torch.stack([_outer_one(x[i], generator) for i in range(x.shape[0])])


def genesis_transform(x: torch.Tensor, generator: torch.Generator | None = None,
                      config: GenesisConfig = GenesisConfig()) -> Genesis:
    """Models Genesis's transformation of crops x (B, C, X, Y, Z) in [0, 1]: (x̃, x', applied)
    (module docstring; the draws of one sample follow the release's order, sample after sample)."""
    _check(x)
    b = x.shape[0]
    applied = {name: torch.zeros(b, dtype=torch.bool) for name in ("local", "nonlinear", "inverted",
                                                                   "inpaint", "outpaint")}
    flips = torch.zeros(b, dtype=torch.long)
    inputs, targets = [], []
    for i in range(b):
        xi, ti, n = random_flips(x[i:i + 1], x[i:i + 1], generator, config.flip_rate, config.max_flips)
        flips[i] = n[0]
        if _rand(generator) < config.local_rate:
            xi = local_pixel_shuffling(xi, generator, config.local_blocks)
            applied["local"][i] = True
        if _rand(generator) < config.nonlinear_rate:
            xi, inverted = nonlinear_transform(xi, generator)
            applied["nonlinear"][i] = True
            applied["inverted"][i] = bool(inverted[0])
        if _rand(generator) < config.paint_rate:
            if _rand(generator) < config.inpaint_rate:
                xi = inner_cutout(xi, generator)
                applied["inpaint"][i] = True
            else:
                xi = outer_cutout(xi, generator)
                applied["outpaint"][i] = True
        inputs.append(xi)
        targets.append(ti)
    return Genesis(torch.cat(inputs), torch.cat(targets), {"flips": flips, **applied})


class RestorationHead(nn.Module):
    """The restoration output layer on a CNN body's dense features: a 1×1×1 convolution to the
    crop's channels, then `activation` ("sigmoid": the Models Genesis / TransVW / DiRA releases'
    output for intensities in [0, 1]; "none": linear)."""

    def __init__(self, in_channels: int, out_channels: int = 1, activation: str = "sigmoid") -> None:
        super().__init__()
        if activation not in ("sigmoid", "none"):
            raise ValueError(f"output activation must be 'sigmoid' or 'none', got {activation!r}")
        self.conv = nn.Conv3d(int(in_channels), int(out_channels), kernel_size=1)
        self.activation = activation

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        out = self.conv(features)
        return torch.sigmoid(out) if self.activation == "sigmoid" else out


# ------------------------------------------------------------ the crop embedding of a CNN body
# The papers of the CNN baselines embed a crop as the global average of the encoder's deepest level
# (their 3D U-Nets and ResNets normalise with BatchNorm). The harness's unet3d (MONAI's BasicUNet)
# and nsunet3d normalise with InstanceNorm, which sets every channel of every sample to the same
# mean before the last activation: the global average then hardly differs between crops (measured
# on the demo pool at initialisation, 16 crops: `spread` 0.07 for unet3d against 0.47 for resnet3d
# and 0.50 for vnet), and an embedding head on it cannot tell crops apart. There the embedding
# keeps a coarse layout instead: the deepest level average-pooled to a 2×2×2 grid and flattened.
@torch.no_grad()
def bottleneck_shape(body: nn.Module, crop) -> tuple[int, int, int, int]:
    """(C, X, Y, Z) of a CNN body's deepest encoder level (`body.encode(x)[-1]`) for crops of `crop`
    voxels (one dry pass in eval mode, so no normalisation statistics move)."""
    was_training = body.training
    body.eval()
    try:
        shape = body.encode(torch.zeros(1, 1, *(int(c) for c in crop)))[-1].shape[1:]
    finally:
        body.train(was_training)
    return tuple(int(s) for s in shape)  # type: ignore[return-value]


def embedding_grid(body: nn.Module, bottleneck: tuple[int, ...], setting: Any = "auto") -> tuple[int, int, int]:
    """The pooling grid of a body's crop embedding: `setting` [gx, gy, gz], or "auto": 1×1×1 (global
    average pooling, the papers') unless the body normalises with InstanceNorm, then 2×2×2 (see
    above); never finer than the bottleneck itself."""
    if setting == "auto":
        instance = any(isinstance(m, (nn.InstanceNorm3d, nn.InstanceNorm2d)) for m in body.modules())
        grid = (2, 2, 2) if instance else (1, 1, 1)
    else:
        grid = tuple(int(g) for g in setting)
        if len(grid) != 3 or min(grid) < 1:
            raise ValueError(f"embedding_grid must be 'auto' or 3 positive integers, got {setting!r}")
    return tuple(min(g, int(s)) for g, s in zip(grid, bottleneck[-3:]))  # type: ignore[return-value]


def grid_embedding(feature_map: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
    """(B, C, X, Y, Z) -> (B, C·gx·gy·gz): average pooling to `grid`, flattened (1×1×1: the global
    average, alice.ssl.encoder.global_embedding)."""
    return F.adaptive_avg_pool3d(feature_map, grid).flatten(1)
