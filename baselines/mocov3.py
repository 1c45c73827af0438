"""MoCo v3 (Chen, Xie and He, "An Empirical Study of Training Self-Supervised Vision Transformers",
ICCV 2021), in 3-D on the harness's three encoders.

Objective (MoCo v3 §3, Algorithm 1): two augmented views x1, x2 of one crop; the online branch is
encoder → projector → predictor, the momentum branch encoder → projector (an EMA of the online
ones, no predictor); with q = normalised online outputs, k = normalised momentum outputs,

    ctr(q, k) = CrossEntropy(q·kᵀ / τ, labels = arange(B)) · 2τ     (Alg. 1; in-batch negatives)
    ℓ = ctr(q1, k2) + ctr(q2, k1)

the momentum m increasing from `momentum` to 1 by a half cosine (§4 / Appendix: "the momentum
coefficient m ... increasing to 1 with a cosine schedule", alice.ssl.momentum).

Heads (shared, alice.models.heads): the projector is `ProjectionHead` with BatchNorm after its
hidden layers (MoCo v3's 3-layer projector has BN in every layer; here its output is the
l2-normalised bottleneck, which the loss normalises anyway, instead of a last BatchNorm), the
predictor `Predictor` (MoCo v3's 2-layer prediction MLP, Linear–BN–ReLU–Linear).

3-D decisions: the crop's embedding is the average of its encoder tokens (the encoders carry no
[CLS] token, alice.ssl.encoder.pool); the views are random resized crops with small rotations,
flips of every axis and intensity scale/shift (alice.ssl.views `two_views`) in place of 2-D colour
jitter, grey-scale, blur and solarisation.

Logged: `l_ctr` and the collapse monitor `spread` of the online projections (before the predictor).
"""

from __future__ import annotations

import copy
from typing import Any, Mapping

import torch

from alice.models.heads import Predictor, ProjectionHead
from alice.ssl.encoder import build_encoder, pool, transferable_state
from alice.ssl.losses import info_nce, spread
from alice.ssl.momentum import MomentumMethod
from alice.ssl.registry import checked_build, register_method
from alice.ssl.views import check_view_options

METHOD = {
    "name": "mocov3",
    "paper": "Chen et al., ICCV 2021",
    "objective": "contrastive (InfoNCE) with a predictor and a momentum encoder",
    "views": "two_views",
    "encoders": ["vit", "swin", "nnformer"],
    "smoke": {"head": {"hidden_dim": 32, "bottleneck_dim": 16}, "predictor_hidden_dim": 32},
}


class MoCoV3(MomentumMethod):
    def __init__(self, encoder_config: Mapping[str, Any], crop, head: Mapping[str, Any] | None = None,
                 predictor_hidden_dim: int = 4096, temperature: float = 0.2, momentum: float = 0.99,
                 momentum_schedule: str = "cosine", views: Mapping[str, Any] | None = None,
                 method_config: Mapping[str, Any] | None = None):
        super().__init__(method_config, momentum, momentum_schedule)
        check_view_options("two_views", views, "pretrain.methods.mocov3.views")
        if float(temperature) <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature!r}")
        self.temperature = float(temperature)
        hd = {"hidden_dim": 4096, "bottleneck_dim": 256, **(head or {})}
        unknown = sorted(set(hd) - {"hidden_dim", "bottleneck_dim"})
        if unknown:
            raise ValueError(f"unknown head settings {unknown}; known: hidden_dim, bottleneck_dim")
        self.encoder = build_encoder(encoder_config, crop, masking=False)
        self.projector = ProjectionHead(self.encoder.embed_dim, int(hd["hidden_dim"]), int(hd["bottleneck_dim"]),
                                        norm="batch")
        self.predictor = Predictor(self.projector.out_dim, int(predictor_hidden_dim))
        self.momentum_encoder = copy.deepcopy(self.encoder)
        self.momentum_projector = copy.deepcopy(self.projector)
        self.freeze_targets()

    def ema_pairs(self):
        return [(self.encoder, self.momentum_encoder), (self.projector, self.momentum_projector)]

    def encoder_state_dict(self) -> dict[str, torch.Tensor]:
        return transferable_state(self.encoder)

    def _ctr(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        return info_nce(q.float(), k.float(), self.temperature) * (2.0 * self.temperature)

    def forward(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x1, x2 = batch["views"][0], batch["views"][1]
        z1 = self.projector(pool(self.encoder(x1)[0]))
        z2 = self.projector(pool(self.encoder(x2)[0]))
        q1, q2 = self.predictor(z1), self.predictor(z2)
        with torch.no_grad():
            k1 = self.momentum_projector(pool(self.momentum_encoder(x1)[0]))
            k2 = self.momentum_projector(pool(self.momentum_encoder(x2)[0]))
        loss = self._ctr(q1, k2) + self._ctr(q2, k1)
        out = {"loss": loss, "l_ctr": loss.detach()}
        if x1.shape[0] > 1:
            out["spread"] = spread(torch.cat([z1, z2]))
        return out


_KWARGS = ("head", "predictor_hidden_dim", "temperature", "momentum", "momentum_schedule", "views")


@register_method("mocov3")
def build(method_config: Mapping[str, Any], encoder_config: Mapping[str, Any], crop) -> MoCoV3:
    return checked_build("mocov3", MoCoV3, _KWARGS, method_config, encoder_config, crop)
