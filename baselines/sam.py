"""SAM as a pretraining method (Yan, Cai, Jin, Miao, Guo, Harrison, Tang, Xiao, Lu and Lu, "SAM:
Self-supervised Learning of Pixel-wise Anatomical Embeddings in Radiological Images", IEEE TMI 41(10),
2022, which also uses SAM to initialise CNN weights),
pretraining the whole 3-D U-Net (`unet3d`, MONAI's BasicUNet: the paper's Table 2 row "3D UNet
E.&D."). The harness already trains SAM's objective for its anatomical matcher (alice.anatomy); this
file reuses its loss and pair sampling (`alice.anatomy.train.sam_loss`,
`alice.anatomy.sampling.sample_pair`) with the U-Net in place of the matcher's ResNet + FPN.

Objective (SAM §III, the global and the local InfoNCE; equation numbers (unverified)): two
overlapping, differently augmented views a, b of one volume with known voxel correspondence, N
points p seen in both; with l2-normalised embeddings and temperature τ,

    ℓ(q, k⁺, K⁻) = −log  e^{q·k⁺/τ} / ( e^{q·k⁺/τ} + Σ_{k ∈ K⁻} e^{q·k/τ} )
    L_local  = mean over points and both directions (a → b, b → a) of ℓ(f_a(p), f_b(p), hard negatives)
    L_global = the same with the coarse embeddings g and the coarse negatives
    L        = `fine_weight`·L_local + `coarse_weight`·L_global

- local (fine) embedding f: a 1×1×1 convolution of the U-Net's dense output (decoder level 4, full
  resolution) to `embed_dim`, l2-normalised per voxel, then averaged over `fine_stride`³ voxels and
  normalised again: SAM's fine level is at stride 2 (`fine_stride: 1` takes the dense map itself,
  at 8× the cells to search for hard negatives: ~1.7× the demo's step time). A point's negatives
  are `fine_negatives` drawn from the `fine_top` cells of the other view most similar to it at
  ≥ `fine_ignore_mm` (SAM: top 2,000 → 500), plus `fine_random_negatives` uniform ones (an
  addition of alice.anatomy: hard negatives alone stall a freshly initialised map; 0 here by
  default, as in SAM);
- global (coarse) embedding g: a 1×1×1 convolution of the decoder level at stride `coarse_stride`
  (8: BasicUNet's first up-sampling block, the coarse stride of alice.anatomy's SAM layout) to
  `embed_dim`, l2-normalised; negatives: the other view's coarse cells at ≥ `coarse_ignore_mm` plus
  (`coarse_other_volumes`, SAM) every coarse cell of the batch's other crops;
- embeddings at points: trilinear samples of the maps at the points' continuous cell coordinates
  (alice.anatomy.train.features_at); τ = 0.5, the ignore radii 5 mm (fine) and 25 mm (coarse) and
  100 points a pair: SAM's recipe as config/paper.yaml's `anatomy.train` gives it (docs/facts.md
  "SAM"; unverified).

Pairs from the harness's views (the departure): SAM cuts its two views from a whole volume;
a method here eats `crop` views — one crop per sample around a random body voxel — so the two views
are cut *from the crop*, with `sample_pair` run on the crop as if it were the volume: view a is
centred on a random body voxel of the crop, view b placed to overlap it by ≥ `pairs.min_overlap` of
the shorter span on every axis, each resampled (trilinear, `affine_grid`, exact correspondence) to
`pairs.crop` voxels (default: the encoder's crop) at its own zoom, then intensity-augmented
independently (SAM's scale / shift, blur, noise: alice.anatomy.sampling.augment_intensity); the
points are drawn in the overlap (body voxels first) and carried to both views' fine and coarse grids.
Because a view the size of the crop at SAM's zoom 0.8–1.2 would reach outside the crop (filled with
zeros, an artificial air border inside the body), the default `pairs.zoom_range` is [1.0, 1.5]: the
same 1.5 ratio of scales as SAM's, shifted so that every view lies inside the crop (it magnifies the
crop by 1–1.5; the views are then finer than the fine-tuning grid). Distances in mm: the crop's
voxel size is `spacing` (mm, 3 values: the pool's, 6 mm in the demo), or the batch's "spacing"
(B, 3) when the views provide it; the ignore radii are SAM-style physical distances.

Randomness: the pairs and the negatives are drawn from a numpy / torch generator seeded from the
global torch RNG, which the trainer reseeds from (seed, step) before each step: reproducible and
resumable. `sam_loss` builds its index tensors on the CPU, so on another device the maps are moved
to the CPU for the loss (the gradient flows back; slow for paper-sized maps until sam_loss builds
them on the maps' device).

Logged: `l_fine` (L_local), `l_coarse` (L_global), and the collapse monitors `spread` (coarse cells
of every view) and `spread_fine` (up to 4,096 evenly spaced fine cells of every view): 0 when every
cell embeds alike (alice.ssl.losses.spread). At the demo scale (`unet3d` widths 8–64, 32³ crops at
6 mm, batch 4, 100 iterations, embed_dim 32, τ 0.1, 200 → 100 hard + 100 random fine negatives,
128 points): with 32³ views the loss falls 9.00 → 6.55 (l_fine 4.90 → 3.84, l_coarse 4.10 → 2.70;
means of the first and last 10 steps), spread 0.84 → 0.94, spread_fine 0.53 → 0.69, at ~1.5 CPU-s
a step, 80 % of it the U-Net's forward and backward passes over the 2B views; with 32×32×16 views
(`pairs.crop`, the demo's setting) 8.69 → 6.41 (3.64 / 2.77), spreads 0.89 / 0.71, 0.65 CPU-s a step.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from alice.anatomy.sampling import PairConfig, sample_pair
from alice.anatomy.train import sam_loss
from alice.errors import ConfigError
from alice.models.configs import check_crop, encoder_stride
from alice.ssl.encoder import build_cnn_body, cnn_state
from alice.ssl.losses import spread
from alice.ssl.registry import SSLMethod, checked_build, register_method

METHOD = {
    "name": "sam",
    "paper": "Yan et al., IEEE TMI 2022",
    "objective": "pixel-wise anatomical embeddings: global + local InfoNCE with hard negatives over two overlapping views",
    "views": "crop",
    "encoders": ["unet3d"],
    "smoke": {"embed_dim": 8, "spacing": [12.0, 12.0, 10.0], "pairs": {"points": 16}, "fine_top": 32,
              "fine_negatives": 16},
}

# SAM's view law where the pair sampler's defaults are not SAM's (module docstring)
PAIR_DEFAULTS = {"zoom_range": [1.0, 1.5], "points": 100}
SPREAD_ROWS = 4096


@torch.no_grad()
def decoder_levels(body: nn.Module, encoder_config: Mapping[str, Any]) -> list[tuple[int, int]]:
    """(channels, stride) of each decoder level of `body` (deep to shallow), from one forward pass, in
    eval mode, of a zero crop twice the network's stride."""
    probe = [2 * s for s in encoder_stride(encoder_config)]
    was_training = body.training
    body.eval()
    try:
        levels = body.decode(body.encode(torch.zeros(1, 1, *probe)))
    finally:
        body.train(was_training)
    return [(int(t.shape[1]), probe[0] // int(t.shape[2])) for t in levels]


def _spread_rows(fmap: torch.Tensor, rows: int = SPREAD_ROWS) -> torch.Tensor:
    """(V, C, ...) maps -> up to `rows` evenly spaced cells (n, C) of all views."""
    cells = fmap.detach().flatten(2).transpose(1, 2).reshape(-1, fmap.shape[1])
    step = max(1, cells.shape[0] // rows)
    return cells[::step]


class SAM(SSLMethod):
    def __init__(self, encoder_config: Mapping[str, Any], crop, embed_dim: int = 128, fine_stride: int = 2,
                 coarse_stride: int = 8,
                 temperature: float = 0.5, spacing: Sequence[float] | None = None,
                 pairs: Mapping[str, Any] | None = None, fine_ignore_mm: float = 5.0, fine_top: int = 2000,
                 fine_negatives: int = 500, fine_random_negatives: int = 0, coarse_ignore_mm: float = 25.0,
                 coarse_other_volumes: bool = True, fine_weight: float = 1.0, coarse_weight: float = 1.0,
                 method_config: Mapping[str, Any] | None = None):
        super().__init__(method_config)
        if float(temperature) <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature!r}")
        if int(embed_dim) < 1:
            raise ValueError(f"embed_dim must be >= 1, got {embed_dim!r}")
        for name, value in (("fine_top", fine_top), ("fine_negatives", fine_negatives)):
            if int(value) < 1:
                raise ValueError(f"{name} must be >= 1, got {value!r}")
        for name, value in (("fine_random_negatives", fine_random_negatives), ("fine_ignore_mm", fine_ignore_mm),
                            ("coarse_ignore_mm", coarse_ignore_mm), ("fine_weight", fine_weight),
                            ("coarse_weight", coarse_weight)):
            if float(value) < 0:
                raise ValueError(f"{name} must be >= 0, got {value!r}")
        self.spacing = None
        if spacing is not None:
            values = [float(v) for v in spacing] if isinstance(spacing, (list, tuple)) else []
            if len(values) != 3 or min(values) <= 0:
                raise ValueError(f"spacing must be 3 voxel sizes > 0 (mm), got {spacing!r}")
            self.spacing = np.asarray(values)
        self.crop = tuple(int(c) for c in crop)
        try:
            self.pair_config = PairConfig.from_dict({"crop": list(self.crop), **PAIR_DEFAULTS, **dict(pairs or {})})
        except ConfigError as exc:  # the sampler names its own key: say whose it is
            raise ValueError(f"pairs.{exc.key}: {exc.problem}") from None
        check_crop(encoder_config, list(self.pair_config.crop), "pretrain.methods.sam.pairs.crop")

        self.body = build_cnn_body(encoder_config, self.crop)
        levels = decoder_levels(self.body, encoder_config)
        strides = [s for _, s in levels]
        if strides[-1] != 1:
            raise ValueError(f"the network's last decoder level has stride {strides[-1]}, not 1: no dense output")
        fs = int(fine_stride)
        if fs < 1 or fs & (fs - 1) or any(c % fs for c in self.pair_config.crop):
            raise ValueError(f"fine_stride must be a power of two dividing the views' size, got {fine_stride!r}")
        if int(coarse_stride) not in strides:
            raise ValueError(f"coarse_stride must be the stride of a decoder level ({strides}), got {coarse_stride!r}")
        self.coarse_level = strides.index(int(coarse_stride))
        self.fine_head = nn.Conv3d(levels[-1][0], int(embed_dim), 1)
        self.coarse_head = nn.Conv3d(levels[self.coarse_level][0], int(embed_dim), 1)
        # what alice.anatomy.train.sam_loss reads
        self.settings = {"model": {"fine_stride": int(fine_stride), "coarse_stride": int(coarse_stride)},
                         "temperature": float(temperature), "fine_ignore_mm": float(fine_ignore_mm),
                         "fine_top": int(fine_top), "fine_negatives": int(fine_negatives),
                         "fine_random_negatives": int(fine_random_negatives),
                         "coarse_ignore_mm": float(coarse_ignore_mm),
                         "coarse_other_volumes": bool(coarse_other_volumes),
                         "fine_weight": float(fine_weight), "coarse_weight": float(coarse_weight)}

    def encoder_state_dict(self) -> dict[str, torch.Tensor]:
        return cnn_state(self.body)

    # -------------------------------------------------------------------------------- pairs
    def _spacings(self, batch: Mapping[str, Any], b: int) -> list[np.ndarray]:
        given = batch.get("spacing") if isinstance(batch, Mapping) else None
        if given is not None:
            rows = np.asarray(torch.as_tensor(given).detach().cpu(), dtype=np.float64).reshape(-1, 3)
            return [rows[i % len(rows)] for i in range(b)]
        if self.spacing is None:
            raise ConfigError("pretrain.methods.sam.spacing", "the crops' voxel size in mm is needed (the "
                                                              "views give none): set it to the pool's spacing")
        return [self.spacing] * b

    def pairs(self, x: torch.Tensor, spacings: Sequence[np.ndarray], rng: np.random.Generator) -> list:
        """One `PairSample` per crop of x (B, 1, X, Y, Z): two overlapping views of the crop (module
        docstring), points at fine stride 1 and `coarse_stride`."""
        crops = x.detach().float().cpu().numpy()[:, 0]
        fs, cs = self.settings["model"]["fine_stride"], self.settings["model"]["coarse_stride"]
        return [sample_pair(np.ascontiguousarray(c), s, self.pair_config, fs, cs, rng, case_id=str(i))
                for i, (c, s) in enumerate(zip(crops, spacings))]

    def embed(self, views: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(fine (V, D, *view), coarse (V, D, *view / coarse_stride)) l2-normalised embedding maps."""
        levels = self.body.decode(self.body.encode(views))
        fine = self.fine_head(levels[-1]).float()
        fs = self.settings["model"]["fine_stride"]
        if fs > 1:  # cell i: the mean of voxels i·s .. i·s + s − 1 (alice.anatomy.grid)
            fine = F.avg_pool3d(F.normalize(fine, dim=1), fs)
        fine = F.normalize(fine, dim=1)
        coarse = F.normalize(self.coarse_head(levels[self.coarse_level]).float(), dim=1)
        return fine, coarse

    def loss(self, fine: torch.Tensor, coarse: torch.Tensor, pairs: Sequence[Any],
             generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """SAM's two-level loss of the maps (views a of every pair, then b, then any extra view c)."""
        if fine.device.type != "cpu":  # sam_loss builds its indices on the CPU
            fine, coarse = fine.cpu(), coarse.cpu()
        return sam_loss(fine, coarse, pairs, self.settings, generator)

    def forward(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x = batch["x"]
        b = x.shape[0]
        rng = np.random.default_rng(int(torch.randint(0, 2**62, ())))
        pairs = self.pairs(x, self._spacings(batch, b), rng)
        generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
        views = torch.stack([p.view_a for p in pairs] + [p.view_b for p in pairs]
                            + [p.view_c for p in pairs if p.view_c is not None]).to(x.device)
        fine, coarse = self.embed(views)
        loss, terms = self.loss(fine, coarse, pairs, generator)
        loss = loss.to(x.device)
        return {"loss": loss, "l_fine": torch.tensor(terms["fine"], device=x.device),
                "l_coarse": torch.tensor(terms["coarse"], device=x.device),
                "spread": spread(_spread_rows(coarse)), "spread_fine": spread(_spread_rows(fine))}


_KWARGS = ("embed_dim", "fine_stride", "coarse_stride", "temperature", "spacing", "pairs", "fine_ignore_mm", "fine_top",
           "fine_negatives", "fine_random_negatives", "coarse_ignore_mm", "coarse_other_volumes", "fine_weight",
           "coarse_weight")


@register_method("sam")
def build(method_config: Mapping[str, Any], encoder_config: Mapping[str, Any], crop) -> SAM:
    return checked_build("sam", SAM, _KWARGS, method_config, encoder_config, crop)
