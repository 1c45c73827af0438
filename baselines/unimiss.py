"""UniMiSS (Xie, Zhang, Xia and Wu, "UniMiSS: Universal Medical Self-Supervised Learning via Breaking
Dimensionality Barrier", ECCV 2022), its 3-D branch only, on the harness's three encoders.

The harness has no 2-D data (UniMiSS pairs the CT volumes with chest X-rays): the 2-D branch (the
X-ray epochs alternating with the 3-D ones) is not run, and neither are the cross-dimensional terms
(below); a cell reproducing UniMiSS itself would need both.

Objective of the 3-D branch: self-distillation "following DINO" (UniMiSS §3: a student and an EMA
teacher of the same network, the teacher's output centred and sharpened, a cross-entropy between the
two over K prototypes) — DINO's objective exactly, so this file subclasses `baselines.dino.DINO` and
repeats nothing of it (DINO's docstring gives the equations: Caron et al. 2021, eqs. 1, 3, 4).
UniMiSS's settings of it, from the authors' release (YtongXie/UniMiSS-code, `main.py`,
`data_loader3D.py`), are DINO's ViT defaults except the teacher temperature, 0.04 with no warm-up
(DINO's class defaults here): a 3-layer MLP head (2048 hidden, 256 bottleneck, no BatchNorm), 65,536
weight-normalised prototypes, student τ 0.1, centre momentum 0.9, EMA momentum 0.996 to 1 by a
cosine.

What differs from `dino` in 3-D, term by term:
- views: two global views and no local ones (the release's 3-D loader cuts two views, and its loss
  is built for two crops): `views.local_views: 0` in the configuration (the loader reads the views
  block, so this is a setting, not code; the smoke declaration and both configs set it);
- the views' augmentation (implemented here): UniMiSS's 3-D views go through intensity transforms
  — Gaussian noise, Gaussian blur, multiplicative and additive brightness, contrast, gamma
  (alice.ssl.augment.intensity_augment) — with a different probability set for each global view
  (view 1: blur 0.64, brightness 0.8, additive shift 0.64, gamma 0.8; view 2: blur 0.4, brightness
  1.0, shift 0.4, gamma 1.0; noise and contrast always: the release's p_per_sample × p_per_channel
  for one channel), the asymmetry DINO's 2-D global views also have. Applied in forward to the
  multi-crop views (a local view, if configured, takes view (i mod 2)'s set), in float32 outside
  autocast; `intensity_augment: false` turns it off, and the method is then `dino` exactly (the
  test checks it). The release's geometry (a region 1.4–1.8× the crop in-plane, each view
  0.8–1.2× the crop of it at full depth, resized, each axis flipped with probability 0.8, no
  rotation) maps to the views block: `global_scale` ≈ [0.2, 0.75] of the crop's voxels
  ((0.8/1.8)² … (1.2/1.4)²), `augment: {max_angle_deg: 0, flip_prob: 0.8, intensity_scale: 0,
  intensity_shift: 0}` (the intensity transforms replace the harness's scale/shift). The release's
  magnitudes act on HU/1024; here they act on the cached [0, 1] window as numbers (unverified);
- not implemented — the backbone's own pieces: UniMiSS's MiT (a pyramid U-like transformer whose
  switchable patch embedding, SPE, takes 2-D or 3-D input) is replaced by the harness's encoders
  (every method here pretrains the same three). Its [CLS]-like token runs through the encoder and
  the transformer decoder (with the encoder stages' skip features) and the loss reads that token after
  the decoder; here the crop's embedding is the mean of the bottleneck tokens (the encoders have
  no [CLS] token, alice.ssl.encoder.pool) and there is no pretrained decoder (the segmentation
  networks take only the encoder). The loss is on that one global token: UniMiSS has no dense
  (per-token) distillation term;
- not implemented — the cross-dimensional terms of the 3-D step: the release also feeds each
  view's 2-D slices through the SPE's 2-D path, averages the slices' outputs per view, and adds
  three DINO terms (slices→slices, slices→volume, volume→slices) to the volume one. They need no
  X-ray, but a 2-D mode of the encoder, which the 3-D encoders here do not have;
- the optimiser is the harness's shared one (the release: AdamW, lr 8e-4 × batch/256, weight decay
  0.04 → 0.4 by a cosine, gradient clip 0.3, the last layer frozen during the first epoch).

Logged: as `dino` — `l_dino`, `teacher_entropy`, and the collapse monitor `spread`. At the demo
scale (ViT, batch 4, 100 iterations) UniMiSS's head without BatchNorm collapses as DINO's does
(`spread` 0.02, `teacher_entropy` 0.98: the teacher uniform), so the demo uses `head_norm: batch`
(DINO's `use_bn_in_head`, which UniMiSS's head also offers, off in its recipe).
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from alice.ssl.augment import IntensityAugmentConfig, intensity_augment
from alice.ssl.registry import checked_build, register_method
from alice.ssl.views import check_view_options
from baselines.dino import _KWARGS as DINO_KWARGS
from baselines.dino import DINO

METHOD = {
    "name": "unimiss",
    "paper": "Xie et al., ECCV 2022",
    "objective": "DINO self-distillation on 3-D views with UniMiSS's intensity augmentation (3-D branch only)",
    "views": "multi_crop",
    "encoders": ["vit", "swin", "nnformer"],
    "smoke": {"head": {"hidden_dim": 32, "bottleneck_dim": 16}, "prototypes": 64,
              "views": {"global_views": 2, "local_views": 0}},
}

# the release's two 3-D global-view pipelines (probabilities for one channel)
VIEW_INTENSITY = (
    IntensityAugmentConfig(blur_prob=0.64, brightness_prob=0.8, shift_prob=0.64, gamma_prob=0.8),
    IntensityAugmentConfig(blur_prob=0.4, brightness_prob=1.0, shift_prob=0.4, gamma_prob=1.0),
)


class UniMiSS(DINO):
    def __init__(self, encoder_config: Mapping[str, Any], crop, intensity_augment: bool = True,
                 views: Mapping[str, Any] | None = None, method_config: Mapping[str, Any] | None = None,
                 **dino: Any):
        check_view_options("multi_crop", views, "pretrain.methods.unimiss.views")
        super().__init__(encoder_config, crop, views=views, method_config=method_config, **dino)
        if not isinstance(intensity_augment, bool):
            raise ValueError(f"intensity_augment must be true or false, got {intensity_augment!r}")
        self.intensity_augment = intensity_augment

    def augment(self, views: torch.Tensor) -> torch.Tensor:
        """UniMiSS's intensity transforms of the (V, B, 1, X, Y, Z) views, view i with set i mod 2."""
        with torch.autocast(device_type=views.device.type, enabled=False):
            out = torch.stack([intensity_augment(v, None, VIEW_INTENSITY[i % 2])
                               for i, v in enumerate(views)])
        return out.to(views.dtype)

    def forward(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        views = batch["views"]
        if self.intensity_augment:
            views = self.augment(views)
        return super().forward({"views": views})


_KWARGS = (*DINO_KWARGS, "intensity_augment")


@register_method("unimiss")
def build(method_config: Mapping[str, Any], encoder_config: Mapping[str, Any], crop) -> UniMiSS:
    return checked_build("unimiss", UniMiSS, _KWARGS, method_config, encoder_config, crop)
