"""SemMAE: semantic-guided masking for masked autoencoders (Li et al., "SemMAE: Semantic-Guided
Masking for Learning Masked Autoencoders", NeurIPS 2022), in 3-D on the ViT (UNETR's encoder: the
only cells the Alice paper gives SemMAE in Table 1).

Objective: MAE's reconstruction (He et al. 2022, §3; `baselines.mae.MAE`, subclassed here) — the
MSE on the masked patches against per-patch normalised voxels,

    ℓ = Σ_{p masked} ‖x̂_p − norm(x_p)‖² / |x_p| / #masked          (alice.ssl.losses.masked_mse)

— with SemMAE's semantic-guided masking in place of MAE's uniform random masking. SemMAE has two
steps (its method section): (1) semantic part learning, which splits every image into K parts; (2) MAE
training whose masks follow those parts along a curriculum "from intra-part patterns to
inter-part relations": early in training a portion of the patches *of every part* is masked (each
part keeps visible patches, so the model learns what a part looks like from the rest of it), late
in training a portion of the *parts* is masked whole (the model must infer a part from the other
parts). With N patches, mask ratio r, M = N − ⌊N(1 − r)⌋ patches to mask (MAE's count), part k of
n_k patches masks

    c_k = round(γ · a_k + (1 − γ) · b_k)
    a_k = round(r · n_k)                                   intra-part: the same share of every part
    b_k = min(n_k, max(0, M − Σ_{j before k} n_j))         whole parts, in a random order of parts,
                                                           until M patches are masked

of its patches, chosen at random within the part; γ falls from 1 (intra-part) to 0 (whole parts)
over the run. The counts and the schedule's shape are those of the authors' released pretraining
code (ucasligang/SemMAE, `models_mae_setting3.py` and `engine_pretrain_setting3.py`, where γ is
`mask_lambda` = (1 + cos(π·epoch/epochs)) / 2: the "cosine" `schedule`; "linear" is γ = 1 − t),
with t the fraction of the run (steps here, epochs there: the harness counts iterations). The
per-part counts do not sum to M exactly (rounding); as in the release, the mask is then made
exactly M patches: planned patches beyond M are unmasked at random, a shortfall is filled with
random other patches — every crop of a batch has the same number of visible tokens (the ViT drops
the masked ones), and the configured ratio holds exactly.

Parts in 3-D (our stand-in, the open decision of this file). The paper learns parts from the
multi-head attention of an iBOT-pretrained ViT refined by a StyleGAN-based part learner, trained
on ImageNet before (and fixed during) MAE training. No such part model exists for CT, and
training one is a project of its own; the stand-in must, like it, be fixed (not the network being
trained) and group patches of similar content. Here the parts of a crop are a k-means clustering
of its patches (`patch_parts`, on the augmented crop, without gradient) into K = `parts` clusters
on per-patch features: the mean and the standard deviation of the patch's voxels, in units of
the crop's voxel standard deviation (CT intensity separates air, fat, soft tissue, contrast-
enhanced organs and bone: the tissue classes that make up the anatomy a crop shows), and the
patch's grid coordinates scaled to (−1/2, 1/2) per axis and weighted by `position_weight` (so
that a part is spatially coherent, as the paper's parts are, and a homogeneous region splits into
compact pieces rather than noise; our choice). The centres start at the quantiles of the
patches' mean intensity (deterministic) and take up to `kmeans_iterations` Lloyd steps. K = 7
by default: the number of part masks per image in the authors' released pretraining code
(`models_mae_setting3.py`); a small crop of few patches wants fewer (the demo: 4 of 18).

Encoder: the ViT only (MAE-style dropping of the masked patches; this file builds the visible
set from its own mask, `encode_visible`).

Logged: `l_r`; `gamma` (the curriculum's γ of the step); `split_parts` (per crop, the number of
parts that are partly masked: every non-empty part early, at most one at γ = 0 — the curriculum
at work); and the spreads `spread` (pooled encoder embeddings) and `token_spread` (visible
tokens), as `mae` logs them.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import torch

from alice.ssl.augment import mae_augment
from alice.ssl.encoder import pool
from alice.ssl.losses import masked_mse, norm_pix, spread
from alice.ssl.registry import checked_build, register_method
from baselines.mae import MAE

METHOD = {
    "name": "semmae",
    "paper": "Li et al., NeurIPS 2022",
    "objective": "masked reconstruction with part-guided masks, intra-part to whole-part curriculum",
    "views": "crop",
    "encoders": ["vit"],
    "masking": True,
    "smoke": {"decoder": {"dim": 16, "depth": 1, "heads": 2}, "parts": 3},
}

SCHEDULES = ("cosine", "linear")


def curriculum_gamma(t: float, schedule: str = "cosine") -> float:
    """γ at fraction t ∈ [0, 1] of the run: 1 (mask within every part) → 0 (mask whole parts)."""
    t = min(1.0, max(0.0, float(t)))
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * t))
    if schedule == "linear":
        return 1.0 - t
    raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")


def masked_count(n: int, mask_ratio: float) -> int:
    """How many of n patches a mask ratio masks: MAE's count (alice.models.vit.random_masking)."""
    return n - max(int(n * (1.0 - mask_ratio)), 1)


@torch.no_grad()
def patch_parts(patches: torch.Tensor, grid: Sequence[int], parts: int, position_weight: float = 0.5,
                iterations: int = 10) -> torch.Tensor:
    """(B, N, V) patch voxels on a `grid` (N = its product, raster order) -> (B, N) part labels in
    [0, parts): k-means of the patches' [mean, std] intensity (in units of the crop's voxel std)
    and `position_weight` × grid coordinates (scaled to (−1/2, 1/2) per axis); centres start at
    the mean-intensity quantiles. A part may end up empty (fewer distinct patches than parts)."""
    with torch.autocast(patches.device.type, enabled=False):
        return _kmeans_parts(patches.float(), grid, int(parts), float(position_weight), int(iterations))


def _kmeans_parts(p: torch.Tensor, grid: Sequence[int], k: int, position_weight: float,
                  iterations: int) -> torch.Tensor:
    b, n, _ = p.shape
    # intensity features in units of the crop's voxel standard deviation (one scale for both, so a
    # feature that hardly varies is not blown up to the other's weight)
    scale = p.reshape(b, 1, -1).std(-1, unbiased=False, keepdim=True).clamp_min(1e-6)  # (B, 1, 1)
    feats = [p.mean(-1) / scale[..., 0], p.std(-1, unbiased=False) / scale[..., 0]]
    if position_weight > 0:  # grid coordinates in (-1/2, 1/2) per axis
        axes = torch.meshgrid(*((torch.arange(int(g), device=p.device, dtype=p.dtype) + 0.5) / int(g) - 0.5
                                for g in grid), indexing="ij")
        feats += [position_weight * a.reshape(1, n).expand(b, n) for a in axes]
    f = torch.stack(feats, -1)  # (B, N, F)
    order = f[..., 0].argsort(1)  # by mean intensity
    pick = ((torch.arange(k, device=p.device, dtype=p.dtype) + 0.5) * n / k).long().clamp_max(n - 1)
    centres = torch.gather(f, 1, order[:, pick].unsqueeze(-1).expand(-1, -1, f.shape[-1]))  # (B, K, F)
    labels = torch.cdist(f, centres).argmin(-1)
    for _ in range(iterations):
        onehot = torch.nn.functional.one_hot(labels, k).to(f.dtype)  # (B, N, K)
        count = onehot.sum(1)  # (B, K)
        mean = onehot.transpose(1, 2) @ f / count.clamp_min(1.0).unsqueeze(-1)
        centres = torch.where(count.unsqueeze(-1) > 0, mean, centres)  # an empty part keeps its centre
        new = torch.cdist(f, centres).argmin(-1)
        if torch.equal(new, labels):
            break
        labels = new
    return labels


@torch.no_grad()
def semantic_mask(parts: torch.Tensor, num_parts: int, mask_ratio: float, gamma: float,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, N) part labels -> (B, N) bool mask (True = masked) with exactly `masked_count(N, r)`
    masked patches per row, c_k = round(γ·a_k + (1 − γ)·b_k) of part k planned (module docstring),
    chosen at random within the part; the plan is trimmed or filled at random to the exact count."""
    b, n = parts.shape
    dev = parts.device
    k = int(num_parts)
    m = masked_count(n, mask_ratio)

    def rand(*shape):
        return torch.rand(*shape, generator=generator).to(dev)

    sizes = torch.nn.functional.one_hot(parts, k).sum(1).to(torch.float64)  # (B, K)
    intra = torch.round(sizes * mask_ratio)
    # whole parts: a random order of the parts, each masked whole while the budget M lasts
    perm = rand(b, k).argsort(1)
    ordered = torch.gather(sizes, 1, perm)
    before = ordered.cumsum(1) - ordered
    whole_ordered = torch.minimum(ordered, (m - before).clamp_min(0.0))
    whole = torch.empty_like(whole_ordered).scatter_(1, perm, whole_ordered)
    planned = torch.round(float(gamma) * intra + (1.0 - float(gamma)) * whole)  # (B, K)
    # a random rank of every patch within its part
    u = rand(b, n).to(torch.float64)
    order = (parts.to(torch.float64) * 2.0 + u).argsort(1)  # grouped by part, random within
    sorted_parts = torch.gather(parts, 1, order)
    start = (sizes.cumsum(1) - sizes).long()  # first position of each part in `order`
    rank_sorted = torch.arange(n, device=dev).expand(b, n) - torch.gather(start, 1, sorted_parts)
    rank = torch.empty_like(rank_sorted).scatter_(1, order, rank_sorted)
    plan = rank < torch.gather(planned, 1, parts)
    # exactly M: planned patches first (random among them), then random others
    score = plan.to(torch.float64) + rand(b, n).to(torch.float64)
    top = score.topk(m, dim=1).indices
    return torch.zeros(b, n, dtype=torch.bool, device=dev).scatter_(1, top, True)


def encode_visible(encoder, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The ViT (alice.models.vit.ViTEncoder) on the visible patches of a given mask (the same
    number per row): (tokens (B, N_vis, D) after the final LayerNorm, ids_restore (B, N)), the
    visible tokens in raster order, as `encoder(x, mask_ratio)` returns them for a random mask."""
    tokens = encoder.patch_embedding(x)  # (B, N, D), position embeddings added
    b, n, d = tokens.shape
    n_vis = n - int(mask[0].sum())
    ids_shuffle = torch.argsort(mask.to(torch.int8), dim=1, stable=True)  # visible first
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    tokens = torch.gather(tokens, 1, ids_shuffle[:, :n_vis].unsqueeze(-1).expand(-1, -1, d))
    for blk in encoder.blocks:
        tokens = blk(tokens)
    return encoder.norm(tokens), ids_restore


class SemMAE(MAE):
    """`baselines.mae.MAE` with semantic-guided masks (module docstring)."""

    def __init__(self, encoder_config: Mapping[str, Any], crop, mask_ratio: float = 0.75,
                 decoder: Mapping[str, Any] | None = None, norm_pix_loss: bool = True,
                 augment: Mapping[str, Any] | None = None, parts: int = 7, position_weight: float = 0.5,
                 kmeans_iterations: int = 10, schedule: str = "cosine",
                 method_config: Mapping[str, Any] | None = None):
        super().__init__(encoder_config, crop, mask_ratio=mask_ratio, decoder=decoder,
                         norm_pix_loss=norm_pix_loss, augment=augment, method_config=method_config)
        if self.encoder.keeps_all_tokens:
            raise ValueError("SemMAE drops the masked patches: it pretrains the ViT only")
        if int(parts) < 1:
            raise ValueError(f"parts must be >= 1, got {parts!r}")
        if float(position_weight) < 0:
            raise ValueError(f"position_weight must be >= 0, got {position_weight!r}")
        if int(kmeans_iterations) < 0:
            raise ValueError(f"kmeans_iterations must be >= 0, got {kmeans_iterations!r}")
        curriculum_gamma(0.0, schedule)  # refuses an unknown schedule
        self.parts = int(parts)
        self.position_weight = float(position_weight)
        self.kmeans_iterations = int(kmeans_iterations)
        self.schedule = schedule
        # the fraction of the run the next step sits at (restored with the method's state on resume)
        self.register_buffer("progress", torch.zeros((), dtype=torch.float64))

    @property
    def gamma(self) -> float:
        return curriculum_gamma(float(self.progress), self.schedule)

    def after_step(self, step: int, total_steps: int) -> None:
        self.progress.fill_(min(1.0, (step + 1) / max(1, total_steps - 1)))

    def forward(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x = mae_augment(batch["x"], None, self.augment)
        patches = self.encoder.patchify(x)
        parts = patch_parts(patches, self.encoder.grid, self.parts, self.position_weight,
                            self.kmeans_iterations)
        gamma = self.gamma
        mask = semantic_mask(parts, self.parts, self.mask_ratio, gamma)
        tokens, ids_restore = encode_visible(self.encoder, x, mask)
        pred, _ = self.decoder(tokens, ids_restore)
        target = norm_pix(patches) if self.norm_pix_loss else patches
        loss = masked_mse(pred.float(), target.float(), mask)
        with torch.no_grad():
            onehot = torch.nn.functional.one_hot(parts, self.parts).bool()  # (B, N, K)
            hit = (onehot & mask.unsqueeze(-1)).any(1)
            miss = (onehot & ~mask.unsqueeze(-1)).any(1)
            split = (hit & miss).sum(1).float().mean()
        out = {"loss": loss, "l_r": loss.detach(), "gamma": loss.new_tensor(gamma).detach(),
               "split_parts": split}
        if x.shape[0] > 1:
            out["spread"] = spread(pool(tokens))
            out["token_spread"] = spread(tokens.reshape(-1, tokens.shape[-1]))
        return out


_KWARGS = ("mask_ratio", "decoder", "norm_pix_loss", "augment", "parts", "position_weight",
           "kmeans_iterations", "schedule")


@register_method("semmae")
def build(method_config: Mapping[str, Any], encoder_config: Mapping[str, Any], crop) -> SemMAE:
    return checked_build("semmae", SemMAE, _KWARGS, method_config, encoder_config, crop)
