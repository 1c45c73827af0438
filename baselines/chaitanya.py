"""Chaitanya et al. (Chaitanya, Erdil, Karani and Konukoglu, "Contrastive learning of global and local
features for medical image segmentation with limited annotations", NeurIPS 2020), in 3-D on the
harness's residual U-Net (`unet`, MONAI's UNet: the paper's 2-D U-Net made 3-D, alice.models.cnn).

Objective (§3, Fig. 1): two stages, each a contrastive loss at temperature τ = 0.1 (the paper's),

    l(x̃, x̂)    = −log  e^{sim(z̃, ẑ)/τ} / ( e^{sim(z̃, ẑ)/τ} + Σ_{x̄ ∈ Λ⁻} e^{sim(z̃, z̄)/τ} )     (Eq. 1)
    L_g         = 1/|A| Σ_{(x̃, x̂) ∈ A} [ l(x̃, x̂) + l(x̂, x̃) ]                                 (Eq. 2)
    l(x̃, x̂, u) = −log  e^{sim(f̃_u, f̂_u)/τ} / ( e^{sim(f̃_u, f̂_u)/τ} + Σ_{u' ∈ Ω⁻} e^{sim(f̃_u, f_u')/τ} )  (Eq. 3)
    L_l         = 1/|A| Σ_{(x̃, x̂) ∈ A} 1/|Ω| Σ_{u ∈ Ω} [ l(x̃, x̂, u) + l(x̂, x̃, u) ]            (Eq. 4)

(equation numbers (unverified)), sim the cosine similarity, z = g₁(e(x)) the global representation
of an image through the encoder e and the dense head g₁, f = g₂(d_l(e(x))) the feature map after the
first l decoder blocks d_l and the 1×1×1-convolution head g₂.

- Stage 1, the global loss L_g on the encoder (+ g₁). The paper's contrasting strategies: G^R
  (SimCLR's: the positives of an image are its two augmented views, every other image of the batch
  a negative), G^{D−} / G^D (each volume split into S = 4 partitions along the slice axis; images of
  the same partition of *different* volumes are positives, those of other partitions negatives).
  The harness's `crop` view carries no position of the crop in its volume (alice.ssl.views returns
  the crop and its case id only), so the partitions cannot be derived and this file runs **G^R**,
  the paper's own baseline strategy (`global_strategy: gr`; `gd` is refused with that reason).
  `global_contrastive` implements Eq. 1–2 for any grouping (positives = same group, negatives =
  other groups only), so G^D is a matter of passing partition labels once the views carry a
  slice position. Each anchor–positive pair is averaged over both orders, i.e. SimCLR's mean over
  the 2B anchors (`alice.ssl.losses.nt_xent` for G^R, the test checks it); Eq. 2's sum of both
  orders over |A| unordered pairs is twice that — a constant factor Adam is blind to.
- Stage 2, the local loss L_l on the decoder, **with the encoder frozen** (Fig. 1 (ii): "frozen
  weights of encoder e obtained from the previous training stage"): strategy L^R — two views of one
  crop that differ by intensity only (so voxel u of one is voxel u of the other), corresponding
  local regions positives, every other region of both feature maps a negative (Ω⁻; the authors'
  release draws 5 nearby regions of each map, for memory).

3-D decisions and departures:
- one run, both stages: the first `global_fraction` (0.5, the release's 10k + 10k iterations) of
  the harness's iterations train L_g, the rest L_l; at the switch the encoder's parameters stop
  requiring gradients (AdamW then leaves them alone; their BatchNorm statistics still follow the
  data). `schedule: joint` trains L_g + L_l together instead (not the paper's). The stage follows
  `after_step` and is a buffer, so a resumed run is in the right stage;
- g₁: the release flattens the bottleneck map (flat → 1024 → 128); a flattened map ties the head to
  one crop size, so here the bottleneck is globally average-pooled (alice.ssl.encoder
  .global_embedding), then Linear(1024)–ReLU–Linear(128) (`global_head`);
- g₂: 1×1×1 Conv–ReLU–1×1×1 Conv to `local_head.dim` (128) on the output of the first
  `decoder_blocks` decoder levels (the release's l = 3 of 5 blocks: here decoder level 3 counted
  from the bottleneck, the dense output of the demo's 4-level U-Net); the local regions are
  `region_size`³ cells (the release's 3×3) whose features are averaged (the release flattens and
  weights them), placed on a regular grid of `regions` per axis from border to border (5: at 0, ¼, ½, ¾ and 1
  of each axis, the 3-D grid that holds the release's 13 2-D positions: corners, edge midpoints,
  centre and quarter points);
- `head_norm: batch` adds BatchNorm after the heads' hidden layers (not in the paper or the
  release; off by default);
- views, built in forward from the one `crop` (drawn from the global RNG, which the trainer reseeds
  from (seed, step)): the global views are the harness's `view_augment` (random resized crop, small
  rotation, flips, intensity scale/shift; `global_augment`, ViewAugmentConfig keys) in place of the
  release's 2-D random crop-and-resize + brightness/contrast; the local views the release's
  intensity transform, brightness x + δ (δ ~ U(±`max_delta` = 0.3)), then contrast
  (x − mean)·c + mean (c ~ U(`contrast_range` = [0.7, 1.3])), clipped to `clip` = [0, 1.5]
  (`local_augment`): a monotone map of each voxel, which moves none.

Logged: `l_global`, `l_local` (both every step, the inactive one without gradient: the loss is
l_global in stage 1 and l_local in stage 2, so the `loss` column jumps at the switch), `stage` (1, 2;
0 when joint), and the collapse monitors `spread` of the 2B global projections and `spread_local`
of the local regions' embeddings of one view (alice.ssl.losses.spread). At the demo scale (`unet`
8–64 channels, 32³ crops, batch 4, 100 iterations, heads 256/64 and 64/64): stage 1 l_global 1.73 →
1.49 (means of the first and the last 10 of its 50 steps; chance is log 7 = 1.95), stage 2 l_local
4.70 → 3.53 (chance log 249 = 5.52), spread ≈ 0.5 throughout, spread_local 0.29 → 0.60; about
1.05 CPU-s a step (the local views' forward pass, without gradient in stage 1, is a third of it).
With `head_norm: batch`: 2.18 → 1.47 and 4.31 → 2.88, spread 0.82 → 0.57.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from alice.models.configs import encoder_stride
from alice.ssl.augment import ViewAugmentConfig, view_augment
from alice.ssl.encoder import build_cnn_body, cnn_state, global_embedding
from alice.ssl.losses import nt_xent, spread
from alice.ssl.registry import SSLMethod, checked_build, register_method

METHOD = {
    "name": "chaitanya",
    "paper": "Chaitanya et al., NeurIPS 2020",
    "objective": "global contrastive loss on the encoder (G^R), then local contrastive loss on the decoder (L^R)",
    "views": "crop",
    "encoders": ["unet"],
    "smoke": {"global_head": {"hidden_dim": 16, "dim": 8}, "local_head": {"hidden_dim": 8, "dim": 8},
              "decoder_blocks": 2, "regions": 3},
}

SCHEDULES = ("sequential", "joint")
STRATEGIES = ("gr", "gd")
LOCAL_AUGMENT = {"max_delta": 0.3, "contrast_range": [0.7, 1.3], "clip": [0.0, 1.5]}


# ------------------------------------------------------------------------------------------- losses
def global_contrastive(z: torch.Tensor, groups: torch.Tensor, temperature: float) -> torch.Tensor:
    """Eq. 1–2 for any grouping of the N rows of z (N, C): every ordered pair (i, j ≠ i) of one group
    is an (anchor, positive) pair whose denominator holds the positive and the rows of the *other*
    groups only (the same group's other rows are neither positive nor negative there, as in G^D);
    the mean over all such pairs. Groups = sample index of each view (G^R) is SimCLR's NT-Xent."""
    n = z.shape[0]
    z = F.normalize(z.float(), dim=-1)
    sim = z @ z.t() / temperature
    groups = groups.to(z.device)
    same = groups[:, None] == groups[None, :]
    positive = same & ~torch.eye(n, dtype=torch.bool, device=z.device)
    if not positive.any():
        raise ValueError("no positive pair: every group has a single row")
    negatives = torch.logsumexp(sim.masked_fill(same, float("-inf")), dim=1, keepdim=True)  # (N, 1)
    per_pair = torch.logaddexp(sim, negatives) - sim      # −log e^{s_ij} / (e^{s_ij} + Σ_neg e^{s_ik})
    return per_pair[positive].mean()


def region_grid(size: int, regions: int, region_size: int) -> torch.Tensor:
    """Start indices of `regions` windows of `region_size` cells spread evenly from the first to the
    last possible position along an axis of `size` cells."""
    if size < region_size:
        raise ValueError(f"a feature map axis of {size} cells cannot hold a local region of {region_size}")
    return torch.linspace(0, size - region_size, regions).round().long()


def region_embeddings(fmap: torch.Tensor, regions: Sequence[int], region_size: int) -> torch.Tensor:
    """(N, C, X, Y, Z) feature maps -> (N, R, C): the mean feature of each `region_size`³ local region
    of the regular grid of `regions` (per axis) regions, R = their product, in C order."""
    pooled = F.avg_pool3d(fmap, kernel_size=region_size, stride=1)
    starts = [region_grid(n, k, region_size).to(fmap.device) for n, k in zip(fmap.shape[2:], regions)]
    picked = pooled.index_select(2, starts[0]).index_select(3, starts[1]).index_select(4, starts[2])
    return picked.flatten(2).transpose(1, 2)


def local_contrastive(f1: torch.Tensor, f2: torch.Tensor, temperature: float) -> torch.Tensor:
    """Eq. 3–4 (L^R) for B image pairs of region embeddings (B, R, C): per image, region u of one view
    against the same region of the other, every other region of both maps a negative (NT-Xent over
    the 2R regions), averaged over the images."""
    return torch.stack([nt_xent(a.float(), b.float(), temperature) for a, b in zip(f1, f2)]).mean()


# ------------------------------------------------------------------------------------------- views
def brightness_contrast(x: torch.Tensor, max_delta: float, contrast_range: Sequence[float],
                        clip: Sequence[float], generator: torch.Generator | None = None) -> torch.Tensor:
    """The local views' intensity transform, per sample of x (B, C, X, Y, Z): x + δ, δ ~ U(±max_delta),
    then (x − mean)·c + mean, c ~ U(contrast_range), clipped to `clip` — monotone per voxel."""
    b = x.shape[0]
    shape = (b,) + (1,) * (x.dim() - 1)
    delta = (torch.rand(shape, generator=generator) * 2.0 - 1.0) * float(max_delta)
    lo, hi = (float(v) for v in contrast_range)
    c = torch.rand(shape, generator=generator) * (hi - lo) + lo
    y = x.float() + delta.to(x.device)
    mean = y.mean(dim=tuple(range(1, x.dim())), keepdim=True)
    return ((y - mean) * c.to(x.device) + mean).clamp(float(clip[0]), float(clip[1]))


# ------------------------------------------------------------------------------------------- heads
def _settings(name: str, given: Mapping[str, Any] | None, defaults: Mapping[str, Any]) -> dict[str, Any]:
    out = {**defaults, **dict(given or {})}
    unknown = sorted(set(out) - set(defaults))
    if unknown:
        raise ValueError(f"unknown {name} settings {unknown}; known: {', '.join(defaults)}")
    return out


def _norm(kind: str, dim: int, conv: bool) -> list[nn.Module]:
    if kind == "none":
        return []
    return [nn.BatchNorm3d(dim) if conv else nn.BatchNorm1d(dim)]


class GlobalHead(nn.Module):
    """g₁: Linear–(BN)–ReLU–Linear on the pooled bottleneck."""

    def __init__(self, in_dim: int, hidden_dim: int, dim: int, norm: str = "none"):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, hidden_dim), *_norm(norm, hidden_dim, False), nn.ReLU(),
                                 nn.Linear(hidden_dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class LocalHead(nn.Module):
    """g₂: 1×1×1 Conv–(BN)–ReLU–1×1×1 Conv on a decoder feature map."""

    def __init__(self, in_dim: int, hidden_dim: int, dim: int, norm: str = "none"):
        super().__init__()
        self.net = nn.Sequential(nn.Conv3d(in_dim, hidden_dim, 1), *_norm(norm, hidden_dim, True), nn.ReLU(),
                                 nn.Conv3d(hidden_dim, dim, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@torch.no_grad()
def network_shapes(body: nn.Module, encoder_config: Mapping[str, Any]) -> tuple[int, list[tuple[int, int]]]:
    """(channels of the bottleneck, [(channels, stride) of each decoder level, deep to shallow]) of
    `body`: one forward pass, in eval mode, of a zero crop twice the network's stride."""
    probe = [2 * s for s in encoder_stride(encoder_config)]
    was_training = body.training
    body.eval()
    try:
        enc = body.encode(torch.zeros(1, 1, *probe))
        bottleneck = int(enc[-1].shape[1])
        levels = body.decode(enc)
    finally:
        body.train(was_training)
    return bottleneck, [(int(t.shape[1]), probe[0] // int(t.shape[2])) for t in levels]


def _int3(value: Any, name: str) -> list[int]:
    values = [value] * 3 if isinstance(value, int) and not isinstance(value, bool) else list(value)
    if len(values) != 3 or any(isinstance(v, bool) or int(v) != v or int(v) < 1 for v in values):
        raise ValueError(f"{name} must be a positive integer or 3 of them, got {value!r}")
    return [int(v) for v in values]


# ------------------------------------------------------------------------------------------- method
class Chaitanya(SSLMethod):
    find_unused_parameters = True  # stage 1 leaves the decoder and g₂ idle, stage 2 the encoder and g₁

    def __init__(self, encoder_config: Mapping[str, Any], crop, temperature: float = 0.1,
                 global_strategy: str = "gr", schedule: str = "sequential", global_fraction: float = 0.5,
                 global_head: Mapping[str, Any] | None = None, local_head: Mapping[str, Any] | None = None,
                 head_norm: str = "none", decoder_blocks: int = 3, regions: Any = 5, region_size: int = 3,
                 global_augment: Mapping[str, Any] | None = None, local_augment: Mapping[str, Any] | None = None,
                 method_config: Mapping[str, Any] | None = None):
        super().__init__(method_config)
        if float(temperature) <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature!r}")
        if global_strategy not in STRATEGIES:
            raise ValueError(f"global_strategy must be one of {', '.join(STRATEGIES)}, got {global_strategy!r}")
        if global_strategy == "gd":
            raise ValueError("global_strategy gd (partition positives) needs each crop's position along the "
                             "slice axis of its volume, which the harness's crop views do not carry; use gr")
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
        if not 0.0 <= float(global_fraction) <= 1.0:
            raise ValueError(f"global_fraction must be in [0, 1], got {global_fraction!r}")
        if head_norm not in ("none", "batch"):
            raise ValueError(f"head_norm must be none or batch, got {head_norm!r}")
        self.temperature = float(temperature)
        self.schedule = schedule
        self.global_fraction = float(global_fraction)
        self.crop = tuple(int(c) for c in crop)
        self.regions = _int3(regions, "regions")
        self.region_size = int(region_size)
        if self.region_size < 1:
            raise ValueError(f"region_size must be >= 1, got {region_size!r}")
        try:
            self.global_augment = ViewAugmentConfig.from_mapping(global_augment)
        except TypeError as exc:
            raise ValueError(f"global_augment: {exc}") from None
        la = _settings("local_augment", local_augment, LOCAL_AUGMENT)
        if float(la["max_delta"]) < 0 or not 0 < float(la["contrast_range"][0]) <= float(la["contrast_range"][1]):
            raise ValueError(f"local_augment needs max_delta >= 0 and 0 < contrast_range[0] <= [1], got {la}")
        self.local_augment = la
        gh = _settings("global_head", global_head, {"hidden_dim": 1024, "dim": 128})
        lh = _settings("local_head", local_head, {"hidden_dim": 128, "dim": 128})

        self.body = build_cnn_body(encoder_config, self.crop)
        bottleneck, levels = network_shapes(self.body, encoder_config)
        if not 1 <= int(decoder_blocks) <= len(levels):
            raise ValueError(f"decoder_blocks must be in [1, {len(levels)}] (the network's decoder levels), "
                             f"got {decoder_blocks!r}")
        self.decoder_blocks = int(decoder_blocks)
        channels, stride = levels[self.decoder_blocks - 1]
        for n in self.crop:
            region_grid(n // stride, 1, self.region_size)  # a region fits the chosen level's map
        self.global_head = GlobalHead(bottleneck, int(gh["hidden_dim"]), int(gh["dim"]), head_norm)
        self.local_head = LocalHead(channels, int(lh["hidden_dim"]), int(lh["dim"]), head_norm)
        self._encoder_names = set(self.body.encoder_state())
        # the stage: steps taken and the run's length, from after_step (buffers: resumed with the state)
        self.register_buffer("steps_done", torch.zeros((), dtype=torch.long))
        self.register_buffer("total_steps", torch.zeros((), dtype=torch.long))

    # -------------------------------------------------------------------------------- schedule
    def stage(self) -> int:
        """1 (global loss, encoder), 2 (local loss, decoder, encoder frozen), 0 (joint)."""
        if self.schedule == "joint":
            return 0
        total = int(self.total_steps)
        if total == 0:  # before the first step: stage 1 unless the run has none
            return 1 if self.global_fraction > 0 else 2
        return 1 if int(self.steps_done) < round(self.global_fraction * total) else 2

    def encoder_parameters(self) -> list[nn.Parameter]:
        return [p for name, p in self.body.named_parameters() if name in self._encoder_names]

    def _freeze_encoder(self, frozen: bool) -> None:
        for p in self.encoder_parameters():
            p.requires_grad_(not frozen)

    def after_step(self, step: int, total_steps: int) -> None:
        self.steps_done.fill_(int(step) + 1)
        self.total_steps.fill_(int(total_steps))

    def encoder_state_dict(self) -> dict[str, torch.Tensor]:
        return cnn_state(self.body)

    # -------------------------------------------------------------------------------- views
    def global_views(self, x: torch.Tensor) -> torch.Tensor:
        """Two augmented views of x (B, 1, X, Y, Z), (2B, ...): view 1's samples first."""
        x = x.float()
        return torch.cat([view_augment(x, None, self.global_augment), view_augment(x, None, self.global_augment)])

    def local_views(self, x: torch.Tensor) -> torch.Tensor:
        """Two intensity-only views of x, (2B, ...): voxel u of one is voxel u of the other."""
        a = self.local_augment
        return torch.cat([brightness_contrast(x, a["max_delta"], a["contrast_range"], a["clip"]),
                          brightness_contrast(x, a["max_delta"], a["contrast_range"], a["clip"])])

    # -------------------------------------------------------------------------------- forward
    def forward(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x = batch["x"]
        b = x.shape[0]
        stage = self.stage()
        self._freeze_encoder(stage == 2)
        grad = torch.is_grad_enabled()
        g_views, l_views = self.global_views(x), self.local_views(x)

        with torch.set_grad_enabled(grad and stage in (0, 1)):
            z = self.global_head(global_embedding(self.body.encode(g_views)[-1]))
            l_global = global_contrastive(z, torch.arange(b, device=z.device).repeat(2), self.temperature)
        with torch.set_grad_enabled(grad and stage in (0, 2)):
            levels = self.body.decode(self.body.encode(l_views))
            f = region_embeddings(self.local_head(levels[self.decoder_blocks - 1]).float(), self.regions,
                                  self.region_size)
            l_local = local_contrastive(f[:b], f[b:], self.temperature)

        loss = {0: l_global + l_local, 1: l_global, 2: l_local}[stage]
        out = {"loss": loss, "l_global": l_global.detach(), "l_local": l_local.detach(),
               "stage": torch.tensor(float(stage), device=loss.device)}
        if b > 1:
            out["spread"] = spread(z)
        out["spread_local"] = spread(f[:b].reshape(-1, f.shape[-1]))
        return out


_KWARGS = ("temperature", "global_strategy", "schedule", "global_fraction", "global_head", "local_head", "head_norm",
           "decoder_blocks", "regions", "region_size", "global_augment", "local_augment")


@register_method("chaitanya")
def build(method_config: Mapping[str, Any], encoder_config: Mapping[str, Any], crop) -> Chaitanya:
    return checked_build("chaitanya", Chaitanya, _KWARGS, method_config, encoder_config, crop)
