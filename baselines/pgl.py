"""PGL (Xie, Zhang, Liao, Xia and Shen, "PGL: Prior-Guided Local Self-supervised Learning for 3D
Medical Image Segmentation", arXiv 2011.12640, 2020) on BYOL, in 3-D on the convolutional family's
3-D ResNet (the Alice paper's Table 2 row "PGL, 3D ResNet E.").

Objective: BYOL (baselines/byol.py: an online encoder → projector → predictor, a target encoder →
projector that is their EMA) on two augmented views x_a, x_b of one crop, plus a local consistency
loss between the two views' feature maps aligned by the known spatial transformations that made the
views (the "prior"). With q̄, z̄' the l2-normalised online predictions and target projections,
ℓ(q, z') = ‖q̄ − z̄'‖² = 2 − 2·cos(q, z') (BYOL's Eq. 2, alice.ssl.losses.cosine_loss):

    L_global = ℓ(q_a, z'_b) + ℓ(q_b, z'_a)            on the pooled encoder outputs   (unverified: eq. 1)
    A_v(F)   = F sampled at the views' common region Ω_ab, through view v's transform T_v
    L_local  = mean_{ℓ ∈ levels} mean_{u ∈ Ω_ab} [ ℓ(q^loc_a(u), z'^loc_b(u)) + ℓ(q^loc_b(u), z'^loc_a(u)) ]
                                                                                      (unverified: eqs. 2-4)
    L        = L_global + λ · L_local,   λ = `local_weight` (1)                       (unverified: eq. 5)

where q^loc(u) = local predictor(local projector(A_v(F_v))(u)), z'^loc(u) the target's local
projection of its own aligned map: every point u of the common region compares the two views'
features of the same anatomy. The paper's equation numbers and its λ are not in front of me: all
(unverified).

The prior (3-D decisions; the views are built here, so the alignment is exact): PGL declares `crop`
views and cuts both views itself with `alice.ssl.augment.box_view` (a random resized crop of
`augment.scale_range` of the crop's voxels, aspect ratios in `ratio_range`, flips of `flip_axes`
with `flip_prob`, intensity scale/shift), then, with `intensity_augment`, the intensity transforms
of the same authors' UniMiSS (Gaussian noise, blur, brightness, contrast, gamma;
alice.ssl.augment.intensity_augment), which move no voxel. No rotation: box and flips alone map a
view's voxels to the crop's. box_view records view v's box as (frac_v, centre_v, flip_v) per axis:
view point t (normalised coordinates, [-1, 1] over the view) shows crop point
p = centre_v + frac_v·s_v·t (s_v = −1 on a flipped axis). The common region is the intersection of
the two boxes, [max(c_a − f_a, c_b − f_b), min(c_a + f_a, c_b + f_b)] per axis; it is sampled on a
regular grid with as many points per axis as the aligned feature map has voxels, each point mapped
into each view by t_v = s_v·(p − c_v)/f_v and read from that view's feature map by trilinear
interpolation (`grid_sample`, align_corners=False: the convention of box_view's resampling, so a
feature voxel's centre sits where its input region's centre does). A sample whose views do not
overlap has no local term (at scale ≥ 0.4 and aspect ratios in 3/4-4/3 every side is ≥ 0.55 of
its axis, so two boxes always overlap). The local heads are pointwise
(a 1³-convolution MLP is a Linear per point), applied after the alignment: Linear–BN–ReLU–Linear as
BYOL's (`local_projector`, `local_predictor`), BN over every aligned point of the batch.

Which feature maps: `levels`, indices into `body.encode(x)` (the 3-D ResNet: 0 stem 1/2, 1-4 its
four stages at 1/4 ... 1/32). PGL aligns the encoder's feature maps and Table 2 transfers only the
encoder ("E."), so the encoder's levels are aligned, never the decoder's (which is frozen, as in
BYOL here). Default: the last level (the encoder's output, the map the global branch pools;
unverified). The demo's 64×64×32 crop leaves that map 2×2×1, so the demo aligns levels 3 and 4
(4×4×2 and 2×2×1; config/config.yaml).

BatchNorm, views and the rest as baselines/byol.py: each view its own forward pass, the target in
training mode (batch statistics), only the body's encoder trained, the whole body checkpointed.
Augmentation values: (unverified) — scale 0.4–1 (two views of one crop that always share a
region), flips of every axis (CT has no preferred orientation for a local feature), UniMiSS's
intensity transforms.

Logged: `l_global`, `l_local` (each the symmetrised BYOL loss, in [0, 8]), `overlap` (the mean
fraction of a view's volume inside the common region), the collapse monitors `spread` of the online
global projections of both views and `local_spread` of the online local projections of the last
aligned level over every point of the batch.
"""

from __future__ import annotations

import copy
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from alice.ssl.augment import BoxViewConfig, IntensityAugmentConfig, box_view, intensity_augment
from alice.ssl.encoder import global_embedding
from alice.ssl.losses import cosine_loss, spread
from alice.ssl.registry import checked_build, register_method
from baselines.byol import BYOL, PREDICTOR_DEFAULTS, PROJECTOR_DEFAULTS
from baselines.mocov2 import head_settings, mlp

METHOD = {
    "name": "pgl",
    "paper": "Xie et al., arXiv 2020",
    "objective": "BYOL + local consistency of the two views' encoder feature maps aligned by their known crop/flip transforms",
    "views": "crop",
    "encoders": ["resnet3d"],
    "smoke": {"projector": {"hidden_dim": 32, "dim": 16}, "predictor": {"hidden_dim": 32},
              "local_projector": {"hidden_dim": 32, "dim": 16}, "local_predictor": {"hidden_dim": 32},
              "levels": [3, 4]},
}

AUGMENT_DEFAULTS = {"scale_range": [0.4, 1.0], "ratio_range": [0.75, 1.3333333], "flip_prob": 0.5,
                    "flip_axes": [0, 1, 2], "intensity_scale": 0.1, "intensity_shift": 0.1}


# ------------------------------------------------------------------------------------- the prior
def common_region(box_a: Sequence[torch.Tensor], box_b: Sequence[torch.Tensor], size: Sequence[int]
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The common region of two views (boxes (frac, centre, flip), each (B, 3), of
    alice.ssl.augment.box_view), sampled on a grid of `size` points per axis (cell centres):
    (t_a, t_b) the (B, P, 3) points in each view's normalised coordinates (axis order X, Y, Z, raster
    order over the grid), `valid` (B,) whether the views overlap, and the (B,) fraction of view a's
    volume inside the region."""
    frac_a, centre_a, flip_a = (t.float() for t in box_a)
    frac_b, centre_b, flip_b = (t.float() for t in box_b)
    lo = torch.maximum(centre_a - frac_a, centre_b - frac_b)
    hi = torch.minimum(centre_a + frac_a, centre_b + frac_b)
    valid = (hi > lo).all(dim=1)
    axes = []
    for a, n in enumerate(int(s) for s in size):
        u = (2.0 * torch.arange(n, dtype=torch.float32, device=lo.device) + 1.0) / (2.0 * n)   # (n,) in (0, 1)
        axes.append(lo[:, a, None] + (hi - lo)[:, a, None] * u)                                  # (B, n)
    b = lo.shape[0]
    grid = torch.stack(torch.meshgrid(*[torch.arange(int(n)) for n in size], indexing="ij"), dim=-1).reshape(-1, 3)
    p = torch.stack([axes[a][:, grid[:, a]] for a in range(3)], dim=-1)                          # (B, P, 3) crop coords
    sign_a, sign_b = 1.0 - 2.0 * flip_a, 1.0 - 2.0 * flip_b
    t_a = sign_a[:, None] * (p - centre_a[:, None]) / frac_a[:, None]
    t_b = sign_b[:, None] * (p - centre_b[:, None]) / frac_b[:, None]
    overlap = ((hi - lo).clamp_min(0) / (2.0 * frac_a)).prod(dim=1)
    return t_a, t_b, valid, overlap.reshape(b)


def sample_at(feature_map: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The (B, C, X, Y, Z) map read at the (B, P, 3) normalised points t (X, Y, Z; [-1, 1] over the
    map, align_corners=False) by trilinear interpolation (border values outside): (B, P, C)."""
    b, p = t.shape[0], t.shape[1]
    grid = t[..., [2, 1, 0]].reshape(b, 1, 1, p, 3).to(feature_map.dtype)   # grid_sample's (W, H, D) = (Z, Y, X)
    out = F.grid_sample(feature_map, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out.reshape(b, feature_map.shape[1], p).transpose(1, 2)


def masked_cosine_loss(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """BYOL's 2 − 2·cos per point of (B, P, C) predictions and (detached) targets, averaged over the
    points of the samples where `valid` (B,); 0 (with the graph kept) when none is."""
    per_point = 2.0 - 2.0 * F.cosine_similarity(pred.float(), target.detach().float(), dim=-1)   # (B, P)
    w = valid.to(per_point.dtype)[:, None].expand_as(per_point)
    return (per_point * w).sum() / w.sum().clamp_min(1.0)


def _rows(head: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A pointwise head on (B, P, C): every point a row of one BatchNorm batch."""
    return head(x.reshape(-1, x.shape[-1])).reshape(*x.shape[:-1], -1)


# ------------------------------------------------------------------------------------------ method
class PGL(BYOL):
    def __init__(self, encoder_config: Mapping[str, Any], crop, projector: Mapping[str, Any] | None = None,
                 predictor: Mapping[str, Any] | None = None, local_projector: Mapping[str, Any] | None = None,
                 local_predictor: Mapping[str, Any] | None = None, levels: Sequence[int] | None = None,
                 local_weight: float = 1.0, momentum: float = 0.996, momentum_schedule: str = "cosine",
                 augment: Mapping[str, Any] | None = None, intensity_augment: bool | Mapping[str, Any] = True,
                 method_config: Mapping[str, Any] | None = None):
        super().__init__(encoder_config, crop, projector=projector, predictor=predictor, momentum=momentum,
                         momentum_schedule=momentum_schedule, views=None, method_config=method_config)
        if isinstance(local_weight, bool) or not isinstance(local_weight, (int, float)) or local_weight < 0:
            raise ValueError(f"local_weight must be a number >= 0, got {local_weight!r}")
        self.local_weight = float(local_weight)
        try:
            self.augment = BoxViewConfig.from_mapping({**AUGMENT_DEFAULTS, **dict(augment or {})})
        except TypeError as exc:
            raise ValueError(f"augment: {exc}") from None
        lo, hi = (float(v) for v in self.augment.scale_range)
        if not 0.0 < lo <= hi <= 1.0:
            raise ValueError(f"augment.scale_range must be [lo, hi] with 0 < lo <= hi <= 1, "
                             f"got {list(self.augment.scale_range)}")
        if any(int(a) not in (0, 1, 2) for a in self.augment.flip_axes):
            raise ValueError(f"augment.flip_axes must be among 0, 1, 2, got {list(self.augment.flip_axes)}")
        if isinstance(intensity_augment, bool):
            self.intensity = IntensityAugmentConfig() if intensity_augment else None
        elif isinstance(intensity_augment, Mapping):
            try:
                self.intensity = IntensityAugmentConfig.from_mapping(intensity_augment)
            except TypeError as exc:
                raise ValueError(f"intensity_augment: {exc}") from None
        else:
            raise ValueError(f"intensity_augment must be true, false or a mapping of its options, "
                             f"got {intensity_augment!r}")
        widths = self._level_widths(crop)
        n = len(widths)
        levels = [n - 1] if levels is None else levels
        if (not isinstance(levels, (list, tuple)) or not levels
                or any(isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < n for v in levels)
                or len(set(levels)) != len(levels)):
            raise ValueError(f"levels must be distinct encoder levels among 0..{n - 1}, got {levels!r}")
        self.levels = [int(v) for v in levels]
        proj = head_settings(local_projector, PROJECTOR_DEFAULTS)
        pred = head_settings(local_predictor, PREDICTOR_DEFAULTS)
        self.local_projectors = nn.ModuleDict({str(v): mlp(widths[v], proj["hidden_dim"], proj["dim"], batch_norm=True)
                                               for v in self.levels})
        self.local_predictors = nn.ModuleDict({str(v): mlp(proj["dim"], pred["hidden_dim"], proj["dim"], batch_norm=True)
                                               for v in self.levels})
        self.target_local_projectors = copy.deepcopy(self.local_projectors)
        self.freeze_targets()

    def _level_widths(self, crop: Sequence[int]) -> list[int]:
        """Channels of every encoder level (one probe pass at the crop size, eval mode)."""
        self.body.eval()
        with torch.no_grad():
            levels = self.body.encode(torch.zeros(2, 1, *(int(c) for c in crop)))
        self.body.train()
        return [int(v.shape[1]) for v in levels]

    def ema_pairs(self):
        pairs = super().ema_pairs()
        if "target_local_projectors" in self._modules:  # BYOL's constructor asks before they exist
            pairs.append((self.local_projectors, self.target_local_projectors))
        return pairs

    def views(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple, tuple]:
        """Two views of the crops x and their boxes (frac, centre, flip) (alice.ssl.augment.box_view),
        then the intensity transforms; random numbers from the global RNG, which the trainer reseeds
        every step."""
        xa, *box_a = box_view(x, None, self.augment)
        xb, *box_b = box_view(x, None, self.augment)
        if self.intensity is not None:
            xa = intensity_augment(xa, None, self.intensity).to(x.dtype)
            xb = intensity_augment(xb, None, self.intensity).to(x.dtype)
        return xa, xb, tuple(box_a), tuple(box_b)

    def encode(self, xa: torch.Tensor, xb: torch.Tensor) -> tuple[list, list]:
        """The encoder levels of both views, online and target: each view its own pass (BatchNorm
        statistics per view's batch), online and target alike."""
        online = [self.body.encode(v) for v in (xa, xb)]
        with torch.no_grad():
            target = [self.target_body.encode(v) for v in (xa, xb)]
        return online, target

    def global_loss(self, online: list, target: list) -> tuple[torch.Tensor, torch.Tensor]:
        """BYOL's symmetrised loss of the pooled last levels, and the online projections (2B, d)."""
        z = [self.projector(global_embedding(f[-1])) for f in online]
        p = [self.predictor(zv).float() for zv in z]
        with torch.no_grad():
            t = [self.target_projector(global_embedding(f[-1])).float() for f in target]
        return cosine_loss(p[0], t[1]) + cosine_loss(p[1], t[0]), torch.cat(z)

    def local_loss(self, online: list, target: list, box_a, box_b
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """L_local (the mean over `levels` of the symmetrised per-point BYOL loss on the aligned maps),
        the online local projections of the last level (2B, P, d) and the views' mean overlap."""
        total = online[0][-1].new_zeros((), dtype=torch.float32)
        for level in self.levels:
            t_a, t_b, valid, overlap = common_region(box_a, box_b, online[0][level].shape[2:])
            key = str(level)
            zl = [_rows(self.local_projectors[key], sample_at(online[i][level], pts)) for i, pts in ((0, t_a), (1, t_b))]
            pl = [_rows(self.local_predictors[key], zv) for zv in zl]
            with torch.no_grad():
                tl = [_rows(self.target_local_projectors[key], sample_at(target[i][level], pts))
                      for i, pts in ((0, t_a), (1, t_b))]
            total = total + masked_cosine_loss(pl[0], tl[1], valid) + masked_cosine_loss(pl[1], tl[0], valid)
        return total / len(self.levels), torch.cat(zl), overlap.mean()

    def forward(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x = batch["x"]
        xa, xb, box_a, box_b = self.views(x)
        box_a = tuple(t.to(x.device) for t in box_a)
        box_b = tuple(t.to(x.device) for t in box_b)
        online, target = self.encode(xa, xb)
        l_global, z = self.global_loss(online, target)
        l_local, zl, overlap = self.local_loss(online, target, box_a, box_b)
        loss = l_global + self.local_weight * l_local
        out = {"loss": loss, "l_global": l_global.detach(), "l_local": l_local.detach(), "overlap": overlap.detach()}
        if x.shape[0] > 1:
            out["spread"] = spread(z)
            out["local_spread"] = spread(zl.reshape(-1, zl.shape[-1]))
        return out


_KWARGS = ("projector", "predictor", "local_projector", "local_predictor", "levels", "local_weight", "momentum",
           "momentum_schedule", "augment", "intensity_augment")


@register_method("pgl")
def build(method_config: Mapping[str, Any], encoder_config: Mapping[str, Any], crop) -> PGL:
    return checked_build("pgl", PGL, _KWARGS, method_config, encoder_config, crop)
