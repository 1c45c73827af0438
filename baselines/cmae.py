"""CMAE: contrastive masked autoencoders (Huang et al., "Contrastive Masked Autoencoders are Stronger
Vision Learners", TPAMI 2023, arXiv 2207.13532), in 3-D on the harness's three encoders.

Objective (CMAE §3 "Method", its Fig. 2; the paper's text was not at hand while writing this file,
so subsections and equations are named, not numbered; where a value is the authors' released
recipe, github.com/ZhichengHuang/CMAE configs/pre-training/cmae, it says so): two branches.

- Online branch, an MAE: the encoder f_s sees the visible patches of the
  source view x_s (a random `mask_ratio` masked); a pixel decoder g_p reconstructs the voxels and
  the reconstruction loss is MAE's, on the masked patches only, against per-patch normalised voxels
  (MAE's loss, alice.ssl.losses.masked_mse / norm_pix, exactly as baselines/mae.py):

      L_r = Σ_{p masked} ‖g_p(f_s(x_s^vis))_p − norm(x_s,p)‖² / |x_p| / #masked

  A second, feature decoder g_f (same design as g_p, shallower, its own weights) takes the same
  encoder output and mask tokens and predicts a feature for every patch, so the masked ones get one
  too ("feature decoder for complementing features of contrastive pairs", the abstract): the online
  representation then covers the whole view, as the target's does.
- Target branch: a momentum encoder f_t, the EMA of f_s, sees the whole,
  unmasked target view x_t.

  Contrastive loss (InfoNCE with in-batch negatives): the online side pools the feature
  decoder's tokens (mean over all of them), projects (P) and predicts (Q); the target side pools
  f_t's tokens and projects with the EMA projector P_t; with ρ the cosine similarity,

      q = Q(P(mean g_f(f_s(x_s^vis)))),   k = P_t(mean f_t(x_t))          (k without gradient)
      L_c = 2τ · −log exp(ρ(q_i, k_i)/τ) / Σ_j exp(ρ(q_i, k_j)/τ)       (alice.ssl.losses.info_nce)
      L   = L_r + λ_c · L_c                                             (λ_c: `contrastive_weight`)

  The 2τ factor is the authors' released head's (MoCo v3's convention, as baselines/mocov3.py);
  their released recipe has λ_c = 1, τ = 0.07, one direction (online → target), no symmetrised
  term. The EMA pairs are (f_s, f_t) and (P, P_t), alice.ssl.momentum; the released recipe keeps
  the momentum constant at 0.996 (its end momentum equals its base), so `momentum_schedule` is
  "constant" by default ("cosine" raises it to 1 as BYOL does).

Views, "pixel shifting": CMAE cuts both views out of one master image, the source at one
place, the target displaced by a few pixels (the released recipe: a 256² random resized crop, a
flip, then 224² windows offset by 0..31 px, about 14% of the side, colour jitter on the target
only); random-crop views that differ a lot make poor positives once most of the source is masked.
3-D here: the loader gives one crop (`views: crop`); inside `forward`
1. the master view is MAE's augmentation of the crop (alice.ssl.augment.mae_augment: random resized
   crop + flip, `augment`), and the source x_s is that view itself;
2. the target x_t is the same resampling moved by δ voxels of the view, δ_a an integer uniform in
   [−m_a, m_a] with m_a = ⌊`pixel_shift` · side_a⌋ per axis a (per sample): where x_s and x_t
   overlap they are voxel for voxel the same samples of the crop, and x_t's new margin is real
   anatomy of the crop (border-replicated only where the shifted box leaves the crop). The
   displacement is drawn two-sided: the released one-sided offsets (source window at the master's
   corner) are an artefact of cutting both windows from one image; what CMAE varies is the relative
   shift. How: `mae_augment` resamples the crop stacked with three channels holding each voxel's
   own (normalised) coordinates, so the view comes back with the position each of its voxels was
   sampled at; that map is affine, so it is read off at the view's centre and moved by δ;
3. the target also gets an intensity scale/shift (`target_augment`), the CT stand-in for the
   colour jitter the release applies to the target only (no grey-scale or blur analogue).

Heads (alice.models.heads): P is `ProjectionHead` with BatchNorm in its hidden layers (the released
projector is fc–BN–ReLU–fc to 256-d; this one has one more hidden layer and an l2-normalised
output, which InfoNCE normalises anyway), Q is `Predictor` (fc–BN–ReLU–fc, the released
predictor). The feature decoder ends in the encoder's width D (a `MaskedDecoder` whose per-token
head outputs D values instead of voxels), so P and its EMA P_t read both sides.

Encoders: the ViT drops the masked patches (MAE proper); Swin and nnFormer replace them by a mask
token (SimMIM, alice.models.masked): then the decoders take every token as it is (the masked ones
already carry the mask token's features), as in baselines/mae.py. The crop's embedding is the
average of its tokens (no [CLS] token, alice.ssl.encoder.pool). Masking is the harness's shared
random patch masking at `pretrain.mask_ratio` (the released recipe masks 65% in 2×2-patch blocks);
the negatives are the other crops of the process's batch (the release gathers them over GPUs).

Logged: `l_r`, `l_c` (the 2τ-scaled InfoNCE, before λ_c) and the collapse monitor `spread` of the
online projections P(·) across the batch (before the predictor).
"""

from __future__ import annotations

import copy
from typing import Any, Mapping

import torch
import torch.nn.functional as F

from alice.models.decoder import MaskedDecoder
from alice.models.heads import Predictor, ProjectionHead
from alice.ssl.augment import MaeAugmentConfig, mae_augment
from alice.ssl.encoder import build_encoder, pool, transferable_state
from alice.ssl.losses import info_nce, masked_mse, norm_pix, spread
from alice.ssl.momentum import MomentumMethod
from alice.ssl.registry import checked_build, register_method

METHOD = {
    "name": "cmae",
    "paper": "Huang et al., TPAMI 2023",
    "objective": "masked reconstruction + InfoNCE of a feature decoder against a momentum encoder on a pixel-shifted view",
    "views": "crop",
    "encoders": ["vit", "swin", "nnformer"],
    "masking": True,
    "smoke": {"decoder": {"dim": 16, "depth": 1, "heads": 2}, "feature_decoder": {"dim": 16, "depth": 1, "heads": 2},
              "head": {"hidden_dim": 32, "bottleneck_dim": 16}, "predictor_hidden_dim": 32},
}


def _decoder_settings(name: str, given: Mapping[str, Any] | None, defaults: dict[str, int]) -> dict[str, int]:
    dec = {**defaults, **(given or {})}
    unknown = sorted(set(dec) - {"dim", "depth", "heads"})
    if unknown:
        raise ValueError(f"unknown {name} settings {unknown}; known: dim, depth, heads")
    return {k: int(v) for k, v in dec.items()}


def pixel_shift_views(x: torch.Tensor, augment: MaeAugmentConfig, max_shift: float,
                      generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """CMAE's source and target views of crops x (B, C, X, Y, Z) (module docstring, "Views"):
    (x_s = mae_augment(x), x_t = the same resampling moved by δ voxels of the view, δ (B, 3) integer
    voxels per axis X, Y, Z, |δ_a| ≤ ⌊max_shift · side_a⌋). No intensity change here."""
    if x.dim() != 5:
        raise ValueError(f"expected (B, C, X, Y, Z), got shape {tuple(x.shape)}")
    b, c = x.shape[:2]
    sizes = x.shape[2:]
    if min(sizes) < 2:
        raise ValueError(f"pixel shifting needs at least 2 voxels per axis, got {list(sizes)}")
    # every voxel's own normalised position, in grid_sample's layout (B, X, Y, Z, 3), last dim (z, y, x);
    # resampled in float64 so that both views sample the crop at the same points to ~1e-12
    dtype, x = x.dtype, x.double()
    eye = torch.eye(3, 4, dtype=x.dtype, device=x.device).expand(b, 3, 4)
    own = F.affine_grid(eye, [b, c, *sizes], align_corners=False)
    stacked = mae_augment(torch.cat([x, own.permute(0, 4, 1, 2, 3)], dim=1), generator, augment)
    source, where = stacked[:, :c], stacked[:, c:].permute(0, 2, 3, 4, 1)
    # the resampling is affine (box scaling + flips): its position at the centre voxel and its step
    # along each view axis (read where trilinear interpolation of a linear map is exact)
    p0 = [(n - 1) // 2 for n in sizes]
    origin = where[:, p0[0], p0[1], p0[2]]                                            # (B, 3)
    steps = [where[:, p0[0] + 1, p0[1], p0[2]] - origin, where[:, p0[0], p0[1] + 1, p0[2]] - origin,
             where[:, p0[0], p0[1], p0[2] + 1] - origin]                               # 3 x (B, 3)
    limit = torch.tensor([int(max_shift * n) for n in sizes])
    shift = torch.stack([torch.randint(-int(m), int(m) + 1, (b,), generator=generator) for m in limit], dim=1)
    grid = origin.view(b, 1, 1, 1, 3).clone()
    for axis, n in enumerate(sizes):
        offset = torch.arange(n, device=x.device, dtype=x.dtype) - p0[axis]           # (n,)
        offset = offset.view(1, n, 1, 1) if axis == 0 else offset.view(1, 1, n, 1) if axis == 1 else offset.view(1, 1, 1, n)
        offset = offset + shift[:, axis].to(device=x.device, dtype=x.dtype).view(b, 1, 1, 1)
        grid = grid + offset.unsqueeze(-1) * steps[axis].view(b, 1, 1, 1, 3)
    target = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return source.to(dtype), target.to(dtype), shift


class CMAE(MomentumMethod):
    def __init__(self, encoder_config: Mapping[str, Any], crop, mask_ratio: float = 0.75,
                 decoder: Mapping[str, Any] | None = None, feature_decoder: Mapping[str, Any] | None = None,
                 head: Mapping[str, Any] | None = None, predictor_hidden_dim: int = 1536,
                 temperature: float = 0.07, contrastive_weight: float = 1.0, norm_pix_loss: bool = True,
                 momentum: float = 0.996, momentum_schedule: str = "constant", pixel_shift: float = 0.14,
                 augment: Mapping[str, Any] | None = None, target_augment: Mapping[str, Any] | None = None,
                 method_config: Mapping[str, Any] | None = None):
        super().__init__(method_config, momentum, momentum_schedule)
        if not 0.0 < float(mask_ratio) < 1.0:
            raise ValueError(f"mask_ratio must be in (0, 1), got {mask_ratio!r}")
        if float(temperature) <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature!r}")
        if float(contrastive_weight) < 0:
            raise ValueError(f"contrastive_weight must be >= 0, got {contrastive_weight!r}")
        if not 0.0 <= float(pixel_shift) < 0.5:
            raise ValueError(f"pixel_shift must be in [0, 0.5) of the view's side, got {pixel_shift!r}")
        self.mask_ratio = float(mask_ratio)
        self.temperature = float(temperature)
        self.contrastive_weight = float(contrastive_weight)
        self.norm_pix_loss = bool(norm_pix_loss)
        self.pixel_shift = float(pixel_shift)
        self.augment = MaeAugmentConfig(**{k: tuple(v) if isinstance(v, list) else v
                                           for k, v in dict(augment or {}).items()})
        ta = {"intensity_scale": 0.1, "intensity_shift": 0.1, **(target_augment or {})}
        unknown = sorted(set(ta) - {"intensity_scale", "intensity_shift"})
        if unknown:
            raise ValueError(f"unknown target_augment settings {unknown}; known: intensity_scale, intensity_shift")
        self.intensity_scale, self.intensity_shift = float(ta["intensity_scale"]), float(ta["intensity_shift"])
        hd = {"hidden_dim": 1536, "bottleneck_dim": 256, **(head or {})}
        unknown = sorted(set(hd) - {"hidden_dim", "bottleneck_dim"})
        if unknown:
            raise ValueError(f"unknown head settings {unknown}; known: hidden_dim, bottleneck_dim")

        self.encoder = build_encoder(encoder_config, crop)
        d = self.encoder.embed_dim
        n, keeps_all = self.encoder.num_patches, self.encoder.keeps_all_tokens
        pix = _decoder_settings("decoder", decoder, {"dim": 512, "depth": 8, "heads": 16})
        self.decoder = MaskedDecoder(d, pix["dim"], pix["depth"], pix["heads"], n, self.encoder.patch_voxels,
                                     insert_mask_tokens=not keeps_all)
        # the feature decoder: MAE's decoder design whose per-token output is a D-wide feature
        feat = _decoder_settings("feature_decoder", feature_decoder, {"dim": 512, "depth": 2, "heads": 16})
        self.feature_decoder = MaskedDecoder(d, feat["dim"], feat["depth"], feat["heads"], n, d,
                                             insert_mask_tokens=not keeps_all)
        self.projector = ProjectionHead(d, int(hd["hidden_dim"]), int(hd["bottleneck_dim"]), norm="batch")
        self.predictor = Predictor(self.projector.out_dim, int(predictor_hidden_dim))
        self.target_encoder = copy.deepcopy(self.encoder)
        self.target_projector = copy.deepcopy(self.projector)
        self.freeze_targets()

    def ema_pairs(self):
        return [(self.encoder, self.target_encoder), (self.projector, self.target_projector)]

    def encoder_state_dict(self) -> dict[str, torch.Tensor]:
        return transferable_state(self.encoder)

    def _jitter(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        shape = (b,) + (1,) * (x.dim() - 1)
        gain = 1.0 + (torch.rand(shape) * 2.0 - 1.0) * self.intensity_scale
        bias = (torch.rand(shape) * 2.0 - 1.0) * self.intensity_shift
        return x * gain.to(x) + bias.to(x)

    def forward(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x_s, x_t, _ = pixel_shift_views(batch["x"], self.augment, self.pixel_shift)
        x_t = self._jitter(x_t)
        # online branch: MAE reconstruction + feature decoder
        tokens, mask, ids_restore = self.encoder(x_s, self.mask_ratio)
        pred, _ = self.decoder(tokens, ids_restore)
        target = self.encoder.patchify(x_s)
        if self.norm_pix_loss:
            target = norm_pix(target)
        l_r = masked_mse(pred.float(), target.float(), mask)
        features, _ = self.feature_decoder(tokens, ids_restore)                       # (B, N, D)
        z = self.projector(pool(features))
        q = self.predictor(z)
        # target branch: the momentum encoder on the whole shifted view
        with torch.no_grad():
            k = self.target_projector(pool(self.target_encoder(x_t)[0]))
        l_c = info_nce(q.float(), k.float(), self.temperature) * (2.0 * self.temperature)
        loss = l_r + self.contrastive_weight * l_c
        out = {"loss": loss, "l_r": l_r.detach(), "l_c": l_c.detach()}
        if x_s.shape[0] > 1:
            out["spread"] = spread(z)
        return out


_KWARGS = ("mask_ratio", "decoder", "feature_decoder", "head", "predictor_hidden_dim", "temperature",
           "contrastive_weight", "norm_pix_loss", "momentum", "momentum_schedule", "pixel_shift", "augment",
           "target_augment")


@register_method("cmae")
def build(method_config: Mapping[str, Any], encoder_config: Mapping[str, Any], crop) -> CMAE:
    return checked_build("cmae", CMAE, _KWARGS, method_config, encoder_config, crop)
