"""SAM's training-pair geometry (Yan et al., ref. [49]; docs/facts.md "SAM"): two augmented,
overlapping random crops of ONE volume whose voxel correspondence is known exactly.

A view is an axis-aligned resampling of the cached volume: view voxel ``v`` (0-based, per axis)
sits at volume voxel ``u = origin + v / zoom`` (`View`). ``zoom`` is drawn per view from
`zoom_range` (SAM: 0.8-1.2; > 1 magnifies), one value for all axes or, with `zoom_per_axis`, one
per axis (bodies differ in width, depth and height independently). Views are cut with `affine_grid`/`grid_sample`
(trilinear, zero = air outside the volume, ``align_corners=True`` so normalised -1 / +1 are the
first / last voxel centres), which makes the mapping above exact rather than approximate.

Placement: view a is centred on a random body voxel (clipped into the volume where it fits);
view b's origin is drawn so that the two spans overlap by at least `min_overlap` of the shorter
span on every axis. Points are drawn in that overlap (body voxels first) and only where both views'
fine grids cover them, then reported as continuous coordinates of both views' fine and coarse
embedding grids (cell convention of `alice.anatomy.grid`: cell ``i`` at stride ``s`` is centred
on view voxel ``i*s + (s-1)/2``). The positive of a point is therefore the *same physical point*
in the other view (0 mm apart up to float error); the trainer interpolates the embedding maps at
these coordinates.

With `extra_view`, a third view c of the same volume is cut anywhere (independent placement):
two overlapping crops rarely contain far-apart anatomy (stomach and pelvis), so without it the
coarse level never has to tell such regions of one body apart; c's cells at >= the coarse ignore
radius from a point are certain negatives for it (an addition to SAM, off by default).

Negatives (chosen in the training step, they depend on the current embeddings): at the fine level
`hard_negatives` keeps the `top` most similar cells of the other view that lie at least
`ignore_mm` from the point (physical distance, `cells_mm`) and draws `count` of them
(`random_negatives` adds uniformly drawn ones from the same admissible set); the coarse
level uses the other view's cells outside a larger radius plus every coarse cell of the other
volumes of the batch (done in `alice.anatomy.train`).

Intensity augmentation per view (SAM: noise / blur): optionally a random piecewise-linear intensity
curve (`intensity_remap`, an addition to SAM: tissue contrasts vary between subjects), then
``x * a + b``, a Gaussian blur with probability `blur_prob`, then Gaussian noise with a per-view
standard deviation.
Everything is deterministic given the numpy Generator passed in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from alice.anatomy.volume import BODY_THRESHOLD
from alice.anatomy.grid import cell_centre, grid_shape, voxel_to_cell
from alice.errors import ConfigError


@dataclass(frozen=True)
class PairConfig:
    """Crop geometry and augmentation of the SAM training pairs (SAM-like defaults; the values
    tuned for the demo live in `alice.anatomy.train.DEFAULT_SETTINGS["pairs"]`)."""

    crop: tuple[int, int, int] = (48, 48, 32)
    zoom_range: tuple[float, float] = (0.8, 1.2)
    zoom_per_axis: bool = False
    min_overlap: float = 0.5
    points: int = 64
    intensity_scale: float = 0.1
    intensity_shift: float = 0.05
    noise_sd: tuple[float, float] = (0.0, 0.03)
    blur_prob: float = 0.3
    blur_sigma: tuple[float, float] = (0.5, 1.0)
    intensity_remap: float = 0.0
    body_threshold: float = BODY_THRESHOLD
    extra_view: bool = False

    def __post_init__(self) -> None:
        for name in ("crop", "zoom_range", "noise_sd", "blur_sigma"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        object.__setattr__(self, "crop", tuple(int(c) for c in self.crop))
        if len(self.crop) != 3 or min(self.crop) < 2:
            raise ConfigError("crop", f"must be 3 voxel sizes >= 2, got {list(self.crop)}")
        lo, hi = (float(v) for v in self.zoom_range)
        if not 0 < lo <= hi:
            raise ConfigError("zoom_range", f"must be 0 < lo <= hi, got {list(self.zoom_range)}")
        if not 0.0 < float(self.min_overlap) <= 1.0:
            raise ConfigError("min_overlap", f"must be in (0, 1], got {self.min_overlap}")
        if int(self.points) < 1:
            raise ConfigError("points", f"must be >= 1, got {self.points}")
        if not 0.0 <= float(self.blur_prob) <= 1.0:
            raise ConfigError("blur_prob", f"must be in [0, 1], got {self.blur_prob}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "PairConfig":
        d = dict(d or {})
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError("pairs", f"unknown keys {unknown} (known: {sorted(known)})")
        return cls(**d)


@dataclass(frozen=True)
class View:
    """View voxel v <-> volume voxel u = origin + v / zoom (zoom: a scalar or one per axis)."""

    origin: np.ndarray
    zoom: float | np.ndarray
    size: tuple[int, int, int]

    @property
    def span(self) -> np.ndarray:
        """Volume-voxel distance between the first and the last view voxel centre, per axis."""
        return (np.asarray(self.size, dtype=np.float64) - 1.0) / self.zoom

    def to_volume(self, v) -> np.ndarray:
        return np.asarray(self.origin) + np.asarray(v, dtype=np.float64) / self.zoom

    def from_volume(self, u) -> np.ndarray:
        return (np.asarray(u, dtype=np.float64) - np.asarray(self.origin)) * self.zoom


@dataclass
class PairSample:
    """One training pair of a volume: two views and `points` seen in both.

    fine_a / fine_b / coarse_a / coarse_b: (N, 3) continuous embedding-grid coordinates of the
    points in view a / b at the fine / coarse stride; points_mm: (N, 3) their physical position
    (volume voxel * spacing, mm; the volume's own frame).
    """

    view_a: torch.Tensor
    view_b: torch.Tensor
    geom_a: View
    geom_b: View
    spacing: np.ndarray
    points_mm: np.ndarray
    fine_a: np.ndarray
    fine_b: np.ndarray
    coarse_a: np.ndarray
    coarse_b: np.ndarray
    case_id: str = ""
    info: dict[str, Any] = field(default_factory=dict)
    view_c: torch.Tensor | None = None
    geom_c: View | None = None


def cells_mm(view: View, stride: int, spacing) -> np.ndarray:
    """(M, 3) physical position (mm) of every embedding cell of `view` at `stride`, in the
    C order of a flattened (G0, G1, G2) map."""
    g = grid_shape(view.size, stride)
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in g], indexing="ij"), -1).reshape(-1, 3)
    return view.to_volume(cell_centre(idx, stride)) * np.asarray(spacing, dtype=np.float64)


def crop_view(volume: torch.Tensor, view: View) -> torch.Tensor:
    """Resample `view` out of `volume` (1, 1, X, Y, Z) -> (1, 1, *view.size) (trilinear, zeros).

    affine_grid's output/grid axes are (W, H, D) = (z, y, x) of our (X, Y, Z) tensors, hence the
    reversed axis index ``2 - a`` below.
    """
    full = volume.shape[2:]
    theta = torch.zeros(1, 3, 4, dtype=torch.float64)
    for a in range(3):
        n, big, o = view.size[a], int(full[a]), float(view.origin[a])
        c = 2 - a
        if big < 2:
            raise ValueError(f"volume axis {a} has {big} voxel(s); need >= 2 to resample")
        # output normalised x = 2 v / (n - 1) - 1  ->  input normalised g = 2 u / (N - 1) - 1
        z = float(np.broadcast_to(view.zoom, (3,))[a])
        theta[0, c, c] = (n - 1) / (z * (big - 1))
        theta[0, c, 3] = (2.0 * o + (n - 1) / z) / (big - 1) - 1.0
    grid = F.affine_grid(theta.to(volume.dtype), [1, 1, *view.size], align_corners=True)
    return F.grid_sample(volume, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


def _clip_origin(o: np.ndarray, span: np.ndarray, shape: np.ndarray) -> np.ndarray:
    # inside the volume where the span fits; otherwise the volume lies inside the span
    room = shape - 1.0 - span
    return np.clip(o, np.minimum(0.0, room), np.maximum(0.0, room))


def _body_voxel(image: np.ndarray, rng: np.random.Generator, threshold: float, tries: int = 200) -> np.ndarray:
    shape = np.asarray(image.shape)
    for _ in range(tries):
        p = np.floor(rng.random(3) * shape).astype(np.int64)
        if float(image[tuple(p)]) > threshold:
            return p.astype(np.float64)
    return (shape - 1) / 2.0


def place_views(shape, cfg: PairConfig, rng: np.random.Generator, centre=None) -> tuple[View, View]:
    """Two views of cfg.crop voxels whose spans overlap by >= cfg.min_overlap of the shorter one."""
    shape = np.asarray(shape, dtype=np.float64)
    za, zb = rng.uniform(cfg.zoom_range[0], cfg.zoom_range[1], size=(2, 3 if cfg.zoom_per_axis else 1))
    za, zb = (z if cfg.zoom_per_axis else float(z[0]) for z in (za, zb))
    size = cfg.crop
    span_a = (np.asarray(size) - 1.0) / za
    span_b = (np.asarray(size) - 1.0) / zb
    centre = (shape - 1) / 2.0 if centre is None else np.asarray(centre, dtype=np.float64)
    oa = _clip_origin(centre - span_a / 2.0, span_a, shape)
    need = cfg.min_overlap * np.minimum(span_a, span_b)
    lo1, hi1 = oa + need - span_b, oa + span_a - need  # overlap constraint on ob
    room = shape - 1.0 - span_b
    lo2, hi2 = np.minimum(0.0, room), np.maximum(0.0, room)  # stay inside the volume
    lo, hi = np.maximum(lo1, lo2), np.minimum(hi1, hi2)
    ob = np.where(lo <= hi, lo + rng.random(3) * np.maximum(hi - lo, 0.0),
                  np.clip((lo2 + hi2) / 2.0, lo1, hi1))  # overlap wins over staying inside
    return View(oa, za, size), View(ob, zb, size)


def _fine_range(size, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """View-voxel interval covered by cell centres of the grid at `stride` (per axis)."""
    g = np.asarray(grid_shape(size, stride))
    return cell_centre(np.zeros(3), stride), cell_centre(g - 1, stride)


def sample_points(image: np.ndarray, a: View, b: View, n: int, fine_stride: int, rng: np.random.Generator,
                  threshold: float = BODY_THRESHOLD) -> np.ndarray:
    """(n, 3) volume-voxel points inside both views' fine grids, body voxels first."""
    lo_v, hi_v = _fine_range(a.size, fine_stride)
    lo = np.maximum(a.to_volume(lo_v), b.to_volume(lo_v))
    hi = np.minimum(a.to_volume(hi_v), b.to_volume(hi_v))
    hi = np.maximum(hi, lo)  # degenerate overlap: a single plane/point, still shared
    cand = lo + rng.random((8 * n, 3)) * (hi - lo)
    near = np.clip(np.rint(cand).astype(np.int64), 0, np.asarray(image.shape) - 1)
    body = np.asarray(image)[near[:, 0], near[:, 1], near[:, 2]] > threshold
    order = np.concatenate([np.flatnonzero(body), np.flatnonzero(~body)])
    return cand[order[:n]]


def _gauss_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    r = max(1, int(math.ceil(2 * sigma)))
    t = torch.arange(-r, r + 1, dtype=x.dtype)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    for axis in range(3):
        shape = [1, 1, 1, 1, 1]
        shape[2 + axis] = k.numel()
        pad = [0] * 6
        pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = r
        x = F.conv3d(F.pad(x, pad, mode="replicate"), k.view(shape))
    return x


def remap_intensity(x: torch.Tensor, strength: float, rng: np.random.Generator, knots: int = 8) -> torch.Tensor:
    """A random piecewise-linear intensity curve: knots at 0, 1/K, .., 1 move by U(-strength,
    strength) (0 stays 0: air stays air), linear beyond 1. Tissue contrasts change independently,
    like contrast phase and stomach / bowel contents do between subjects."""
    ys = np.linspace(0.0, 1.0, knots + 1) + rng.uniform(-strength, strength, knots + 1)
    ys[0] = 0.0
    ys_t = torch.as_tensor(ys, dtype=x.dtype)
    pos = x.clamp(0.0, 1.0) * knots
    i = pos.floor().clamp(max=knots - 1).long()
    t = pos - i
    curve = ys_t[i] + t * (ys_t[i + 1] - ys_t[i])
    return curve + (x - x.clamp(0.0, 1.0))  # outside [0, 1] (noise, bone): shift unchanged


def augment_intensity(x: torch.Tensor, cfg: PairConfig, rng: np.random.Generator) -> torch.Tensor:
    """Optional random intensity curve, x * a + b, optional Gaussian blur, Gaussian noise; all
    parameters from `rng`."""
    if cfg.intensity_remap > 0:
        x = remap_intensity(x, float(cfg.intensity_remap), rng)
    a = 1.0 + rng.uniform(-cfg.intensity_scale, cfg.intensity_scale)
    b = rng.uniform(-cfg.intensity_shift, cfg.intensity_shift)
    x = x * float(a) + float(b)
    if rng.random() < cfg.blur_prob:
        x = _gauss_blur(x, float(rng.uniform(*cfg.blur_sigma)))
    sd = float(rng.uniform(*cfg.noise_sd))
    if sd > 0:
        gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
        x = x + sd * torch.randn(x.shape, generator=gen, dtype=x.dtype)
    return x


def sample_pair(image: np.ndarray | torch.Tensor, spacing, cfg: PairConfig, fine_stride: int, coarse_stride: int,
                rng: np.random.Generator, case_id: str = "") -> PairSample:
    """One SAM training pair of a single volume (see the module doc)."""
    img_np = image.numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if not img_np.flags.writeable or img_np.dtype != np.float32:  # torch wants a writable float32 array
        img_np = np.array(img_np, dtype=np.float32)
    vol = torch.from_numpy(img_np)[None, None]
    centre = _body_voxel(img_np, rng, cfg.body_threshold)
    a, b = place_views(img_np.shape, cfg, rng, centre)
    pts = sample_points(img_np, a, b, int(cfg.points), fine_stride, rng, cfg.body_threshold)
    va = augment_intensity(crop_view(vol, a), cfg, rng)[0]
    vb = augment_intensity(crop_view(vol, b), cfg, rng)[0]
    c = vc = None
    if cfg.extra_view:  # anywhere in the same volume: its far cells are certain negatives
        c, _ = place_views(img_np.shape, cfg, rng, _body_voxel(img_np, rng, cfg.body_threshold))
        vc = augment_intensity(crop_view(vol, c), cfg, rng)[0]
    spacing = np.asarray(spacing, dtype=np.float64).reshape(3)
    return PairSample(
        view_a=va, view_b=vb, geom_a=a, geom_b=b, spacing=spacing, points_mm=pts * spacing,
        fine_a=voxel_to_cell(a.from_volume(pts), fine_stride), fine_b=voxel_to_cell(b.from_volume(pts), fine_stride),
        coarse_a=voxel_to_cell(a.from_volume(pts), coarse_stride),
        coarse_b=voxel_to_cell(b.from_volume(pts), coarse_stride),
        case_id=case_id, info={"zoom": (a.zoom, b.zoom)}, view_c=vc, geom_c=c,
    )


def sample_batch(volumes: Sequence[tuple[str, np.ndarray | torch.Tensor, np.ndarray]], batch_size: int, cfg: PairConfig,
                 fine_stride: int, coarse_stride: int, rng: np.random.Generator) -> list[PairSample]:
    """`batch_size` pairs from distinct volumes where possible; volumes = [(case_id, image, spacing)]."""
    n = len(volumes)
    if n == 0:
        raise ConfigError("case_ids", "no volumes to sample training pairs from")
    pick = rng.choice(n, size=batch_size, replace=batch_size > n)
    return [sample_pair(volumes[i][1], volumes[i][2], cfg, fine_stride, coarse_stride, rng, case_id=volumes[i][0])
            for i in pick]


def hard_negatives(sim: torch.Tensor, dist_mm: torch.Tensor, ignore_mm: float, top: int, count: int,
                   generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """SAM's hard negatives: per row, the `top` most similar columns at >= `ignore_mm` from the
    point, of which `count` are drawn at random (SAM: top 2000 -> 500).

    sim, dist_mm: (N, M). Returns (idx (N, k) long, valid (N, k) bool), k = min(count, top, M);
    `valid` is False where a row had fewer than k columns outside the radius.
    """
    n, m = sim.shape
    top = max(1, min(int(top), m))
    k = max(1, min(int(count), top))
    masked = sim.detach().masked_fill(dist_mm < ignore_mm, float("-inf"))
    vals, idx = masked.topk(top, dim=1)
    if k < top:  # random subset of the top ones, per row
        pick = torch.rand(n, top, generator=generator).argsort(dim=1)[:, :k]
        idx, vals = idx.gather(1, pick), vals.gather(1, pick)
    return idx, torch.isfinite(vals)


def random_negatives(dist_mm: torch.Tensor, ignore_mm: float, count: int,
                     generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """`count` uniformly random columns per row (with replacement), valid where at >= `ignore_mm`:
    easy negatives that keep the embedding spread out while the hard ones are still
    uninformative, early in training. Drawing indices (not scoring all M columns) keeps it cheap.

    Returns (idx (N, count) long, valid (N, count) bool), as `hard_negatives`.
    """
    n, m = dist_mm.shape
    idx = torch.randint(m, (n, max(1, int(count))), generator=generator)
    return idx, dist_mm.gather(1, idx) >= ignore_mm
