"""ContrastiveCrop (Peng, Wang, Wang and You, "Crafting Better Contrastive Views for Siamese
Representation Learning", CVPR 2022) on MoCo v2 (baselines/mocov2.py), in 3-D on the convolutional
family (the paper's Table 2 runs it on a 3-D ResNet, alice.models.cnn.ResNetUNet).

Objective: MoCo v2's, unchanged (MoCo Eq. 1 against a queue of momentum keys, baselines.mocov2
`MoCoV2`, which this class extends; every MoCo v2 option and default is the same). ContrastiveCrop
changes only the views, its random resized crop (§3 of the paper; its equation numbers are not at
hand here, so the steps are named):

- semantic-aware localisation (§3.2, unverified): the heat map of an image is the last convolutional feature
  map of the encoder summed over channels, M = Σ_c F_c, min–max normalised to [0, 1] and resized to
  the image; the crop box B is the bounding box of {M ≥ k}, k = 0.1 (`box_threshold`);
- centre-suppressed sampling (§3.3, unverified): the crop's size is a random-resized-crop size (a fraction s ~
  U(`scale_range`) of the image, aspect ratios log-uniform in `ratio_range`), its position along
  each axis is drawn inside B with a Beta(α, α) law, α = 0.6 < 1 (`alpha`): a U-shaped law that
  pushes the two views' centres apart, so they overlap less (fewer trivially easy positives), while
  B keeps both on the object (fewer false positives). Along an axis of the image of side S, a crop of
  side h starts at a = a₀ + (a₁ − a₀)·β, β ~ Beta(α, α), a₀ = max(lo·S − h/2, 0), a₁ = min(hi·S − h/2,
  S − h), with [lo, hi] the box's extent (the start clipped to the image);
- schedule: the paper localises with the model every few epochs over the dataset, after warm-up
  epochs of plain random resized crops with the whole image as box (unverified: the interval and
  the warm-up's length are per-dataset values not at hand here).

3-D departures:
- boxes on the fly: the harness cuts a fresh crop of a random body point per sample and step (no
  dataset index to keep boxes for), so the box of every sample is computed at every step from the
  momentum (key) encoder's heat map of that very crop, without gradient (the key encoder is an EMA
  of the query encoder, the "model" the paper localises with, and is run anyway); `views: crop`
  (the raw crop {"x"}) and the two views are built here. During the first `warmup_fraction` of the
  run (a fraction of the iterations; its default 0.1 is a guess, unverified) the box is the whole
  crop and the position uniform: plain random resized crops, as the paper's warm-up. The fraction
  of the run is known from `after_step` (buffers `steps_done` and `total_steps`, part of the
  method's state, so a resumed run localises from the same step);
- the map: `heatmap_level` picks the encoder level (−1, the bottleneck, the paper's last layer;
  the resnet3d bottleneck is 1/32 of the crop: 2×2×1 cells of a 64×64×32 crop, a coarse map whose
  box is mostly the whole crop; −2 is the 1/16 map), resized trilinearly to the crop;
- each view: the box crop is resampled (trilinear) to the crop's size, then small rotations, flips
  of every axis and an intensity scale/shift (alice.ssl.augment.strong_augment with the options of
  `augment`, alice.ssl.augment.ViewAugmentConfig's keys and defaults) in place of MoCo v2's colour
  jitter, grey-scale and blur;
- randomness: a torch generator seeded at every step from the global RNG, which the trainer
  reseeds from (seed, rank, step) before the step: a resumed run draws the same views; the Beta
  draws come from a numpy generator seeded from it.

Demo scale (resnet3d 64×64×32, batch 4, 100 iterations, MoCo v2's demo settings, K = 64): the
crops are centred on body voxels, so the heat map is high nearly everywhere and the boxes hold
~95 % of the crop (`box_frac` 0.95–0.96; with `heatmap_level: -2`, the 1/16 map, ~100 %): what acts
is mostly the centre-suppressed placement, which makes the positives harder. The logged loss
behaves as MoCo v2's (2.66 over the first 10 steps with the random initial queue, ~4.0 once it is
full, 3.85 over the last 10; `spread` ~0.4 throughout); on held-out crops with a full queue of the
evaluated key encoder's keys it goes from 4.13 to 4.09 on plain random resized crops and from 4.16
to 4.10 on ContrastiveCrop's views (MoCo v2 alone: 4.13 to 4.03): slower learning in 100 steps, as
harder views make. Cost ~0.3 s of one core a step (the two views' resampling moves from the loader
into `forward`, plus one no-grad pass of the key encoder for the heat map).

Logged: MoCo v2's (`l_ctr`, `acc`, `spread`, `queue_spread`), `box_frac` (the mean fraction of the
crop's voxels inside the boxes: 1 during the warm-up) and `localised` (1 once the boxes come from the
heat maps).
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F

from alice.ssl.augment import (MaeAugmentConfig, StrongAugmentConfig, ViewAugmentConfig, _crop_boxes,
                               _resample_boxes, strong_augment)
from alice.ssl.registry import checked_build, register_method
from baselines.mocov2 import MoCoV2, check_positive

METHOD = {
    "name": "contrastive_crop",
    "paper": "Peng et al., CVPR 2022 (on MoCo v2, Chen et al., arXiv 2020)",
    "objective": "MoCo v2's InfoNCE with semantic-aware, centre-suppressed crops from the encoder's heat map",
    "views": "crop",
    "encoders": ["resnet3d"],
    "smoke": {"head": {"hidden_dim": 32, "dim": 16}, "queue_size": 8, "bn_group_size": 2, "warmup_fraction": 0.5},
}


# ------------------------------------------------------------------------------------ the crops
def heat_boxes(feature_map: torch.Tensor, size, threshold: float) -> torch.Tensor:
    """(B, C, x, y, z) feature maps -> (B, 3, 2) boxes [lo, hi) per axis (X, Y, Z) as fractions of the
    crop: the bounding box of the voxels where the channel-summed map, resized (trilinear) to `size`
    and min–max normalised per sample, is >= `threshold`. A constant map gives the whole crop."""
    m = feature_map.detach().float().sum(1, keepdim=True)
    m = F.interpolate(m, size=tuple(int(s) for s in size), mode="trilinear", align_corners=False)[:, 0]
    flat = m.flatten(1)
    lo, hi = flat.min(1).values, flat.max(1).values
    span = (hi - lo).view(-1, 1, 1, 1)
    norm = torch.where(span > 0, (m - lo.view(-1, 1, 1, 1)) / span.clamp_min(1e-12), torch.ones_like(m))
    keep = norm >= threshold
    boxes = torch.zeros(m.shape[0], 3, 2)
    for axis in range(3):
        others = tuple(a for a in (1, 2, 3) if a != axis + 1)
        hit = keep.any(dim=others).cpu()                         # (B, S_axis)
        n = hit.shape[1]
        idx = torch.arange(n)
        first = torch.where(hit, idx, n).min(1).values
        last = torch.where(hit, idx, -1).max(1).values
        boxes[:, axis, 0] = first.float() / n
        boxes[:, axis, 1] = (last + 1).float() / n
    return boxes


def box_starts(frac: torch.Tensor, boxes: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Where crops of side fractions `frac` (B, 3) start, as fractions of the crop: a₀ + (a₁ − a₀)·u
    per axis with a₀ = max(lo − f/2, 0), a₁ = min(hi − f/2, 1 − f) for the box [lo, hi) (`boxes`
    (B, 3, 2)) and u (B, 3) in [0, 1] (Beta(α, α): centre-suppressed; uniform: random resized
    crop), clipped to [0, 1 − f] (the crop stays inside)."""
    a0 = (boxes[..., 0] - frac / 2).clamp_min(0.0)
    a1 = torch.minimum(boxes[..., 1] - frac / 2, 1.0 - frac)
    return torch.minimum(torch.maximum(a0 + (a1 - a0) * u, torch.zeros_like(frac)), 1.0 - frac)


# ------------------------------------------------------------------------------------------ method
class ContrastiveCrop(MoCoV2):
    name = "contrastive_crop"

    def __init__(self, encoder_config: Mapping[str, Any], crop, head: Mapping[str, Any] | None = None,
                 temperature: float = 0.2, momentum: float = 0.999, momentum_schedule: str = "constant",
                 queue_size: int = 65536, bn_group_size: int = 32, symmetric: bool = False,
                 head_norm: str = "none", alpha: float = 0.6, box_threshold: float = 0.1, warmup_fraction: float = 0.1,
                 heatmap_level: int = -1, augment: Mapping[str, Any] | None = None,
                 method_config: Mapping[str, Any] | None = None):
        super().__init__(encoder_config, crop, head=head, temperature=temperature, momentum=momentum,
                         momentum_schedule=momentum_schedule, queue_size=queue_size,
                         bn_group_size=bn_group_size, symmetric=symmetric, head_norm=head_norm, views=None,
                         method_config=method_config)
        check_positive(alpha=alpha)
        if isinstance(box_threshold, bool) or not isinstance(box_threshold, (int, float)) \
                or not 0.0 <= box_threshold <= 1.0:
            raise ValueError(f"box_threshold must be in [0, 1], got {box_threshold!r}")
        if isinstance(warmup_fraction, bool) or not isinstance(warmup_fraction, (int, float)) \
                or not 0.0 <= warmup_fraction <= 1.0:
            raise ValueError(f"warmup_fraction must be in [0, 1], got {warmup_fraction!r}")
        self.crop = tuple(int(c) for c in crop)
        levels = self.levels
        if isinstance(heatmap_level, bool) or not isinstance(heatmap_level, int) \
                or not -levels <= heatmap_level < levels:
            raise ValueError(f"heatmap_level must be an encoder level in [{-levels}, {levels - 1}], "
                             f"got {heatmap_level!r}")
        try:
            self.augment = ViewAugmentConfig.from_mapping(augment)
        except TypeError as exc:
            raise ValueError(f"augment: {exc}") from None
        self.alpha = float(alpha)
        self.box_threshold = float(box_threshold)
        self.warmup_fraction = float(warmup_fraction)
        self.heatmap_level = int(heatmap_level)
        self.register_buffer("steps_done", torch.zeros((), dtype=torch.long))
        self.register_buffer("total_steps", torch.zeros((), dtype=torch.long))

    def after_step(self, step: int, total_steps: int) -> None:
        super().after_step(step, total_steps)
        self.steps_done.fill_(step + 1)
        self.total_steps.fill_(total_steps)

    def localising(self) -> bool:
        """Whether this step's boxes come from the heat maps (after the warm-up)."""
        total = int(self.total_steps)
        return total > 0 and int(self.steps_done) >= math.ceil(self.warmup_fraction * total)

    @torch.no_grad()
    def boxes(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, 2) crop boxes of the crops x from the momentum encoder's heat maps."""
        levels = self.momentum_body.encode(x)
        return heat_boxes(levels[self.heatmap_level], x.shape[2:], self.box_threshold)

    def views(self, x: torch.Tensor, boxes: torch.Tensor | None, generator: torch.Generator
              ) -> torch.Tensor:
        """Two views (2, B, 1, X, Y, Z) of the crops x: random-resized-crop sizes, placed inside
        `boxes` by Beta(α, α) (uniformly in the whole crop when None), resampled to the crop's size,
        then rotation, flips and intensity (`augment`)."""
        b = x.shape[0]
        crop = MaeAugmentConfig(scale_range=tuple(self.augment.scale_range),
                                ratio_range=tuple(self.augment.ratio_range))
        rest = StrongAugmentConfig(max_angle_deg=self.augment.max_angle_deg, scale_range=(1.0, 1.0),
                                   flip_prob=self.augment.flip_prob,
                                   intensity_scale=self.augment.intensity_scale,
                                   intensity_shift=self.augment.intensity_shift)
        out = []
        for _ in range(2):
            frac, _ = _crop_boxes(b, generator, crop)
            if boxes is None:
                start = box_starts(frac, torch.tensor([0.0, 1.0]).expand(b, 3, 2),
                                   torch.rand((b, 3), generator=generator))
            else:
                rng = np.random.default_rng(int(torch.randint(2**62, (), generator=generator)))
                u = torch.from_numpy(rng.beta(self.alpha, self.alpha, size=(b, 3))).float()
                start = box_starts(frac, boxes, u)
            centre = 2.0 * (start + frac / 2) - 1.0                     # normalised coordinates
            view = _resample_boxes(x, frac, centre)
            out.append(strong_augment(view, generator, rest))
        return torch.stack(out)

    def forward(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x = batch["x"]
        generator = torch.Generator().manual_seed(int(torch.randint(2**62, ())))  # step-seeded global RNG
        localised = self.localising()
        boxes = self.boxes(x) if localised else None
        v = self.views(x, boxes, generator)
        out = self.contrast(v[0], v[1])
        out["box_frac"] = (boxes[..., 1] - boxes[..., 0]).prod(1).mean() if boxes is not None \
            else torch.tensor(1.0)
        out["localised"] = torch.tensor(float(localised))
        return out


_KWARGS = ("head", "temperature", "momentum", "momentum_schedule", "queue_size", "bn_group_size", "symmetric",
           "head_norm", "alpha", "box_threshold", "warmup_fraction", "heatmap_level", "augment")


@register_method("contrastive_crop")
def build(method_config: Mapping[str, Any], encoder_config: Mapping[str, Any], crop) -> ContrastiveCrop:
    return checked_build("contrastive_crop", ContrastiveCrop, _KWARGS, method_config, encoder_config, crop)
