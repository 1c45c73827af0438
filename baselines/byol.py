"""BYOL (Grill, Strub, Altché, Tallec, Richemond, Buchatskaya, Doersch, Pires, Guo, Azar, Piot,
Kavukcuoglu, Munos and Valko, "Bootstrap Your Own Latent: A New Approach to Self-Supervised
Learning", NeurIPS 2020), in 3-D on the convolutional family (the paper's Table 2 runs it on a 3-D
ResNet, alice.models.cnn.ResNetUNet).

Objective (§3.1): an online network (encoder f_θ → projector g_θ → predictor q_θ) and a target
network (f_ξ → g_ξ, no predictor, no gradient); for two augmented views v, v' of one crop, with
q̄ = q_θ(g_θ(f_θ(v)))/‖·‖ and z̄' = g_ξ(f_ξ(v'))/‖·‖,

    L_θ,ξ = ‖q̄ − z̄'‖² = 2 − 2·⟨q_θ(z_θ), z'_ξ⟩ / (‖q_θ(z_θ)‖·‖z'_ξ‖)          (Eq. 2)
    L^BYOL = L_θ,ξ + L̃_θ,ξ      (§3.1: L̃ feeds v' to the online network and v to the target;
                                 its equation number unverified)
    ξ ← τ·ξ + (1 − τ)·θ                                                        (Eq. 1)
    τ = 1 − (1 − τ_base)·(cos(πk/K) + 1)/2      (§3.2, k the step, K the steps of the run)

averaged over the batch (alice.ssl.losses.cosine_loss; the loss is the sum of the two directions,
as the paper's, so it lies in [0, 8]). Values (§3.2): τ_base = 0.996 increased to 1 by the cosine
schedule (alice.ssl.momentum), projector Linear(4096)–BN–ReLU–Linear(256), predictor of the same
architecture (Linear(4096)–BN–ReLU–Linear(256)).

BatchNorm: each view is its own forward pass, so the statistics are those of one view's batch, online
and target alike; the target network normalises with the statistics of its own batch, as BYOL's
does (the whole network is in training mode), not in eval mode as alice.ssl.momentum keeps its
targets; its running statistics are copied from the online network's at every update, never used.

3-D decisions:
- network: the whole CNN body is built (alice.ssl.encoder.build_cnn_body) and checkpointed
  (`cnn_state`), but only its encoder is trained: the representation y is the global average of the
  bottleneck map (`global_embedding(body.encode(x)[-1])`, the ResNet's pooled output as in BYOL),
  so the decoder never sees a loss and is frozen at its initialisation (baselines.mocov2.
  freeze_decoder); the resnet3d backbone transfers only the encoder (Table 2's "E.");
- views (`two_views`, alice.ssl.views): a random resized crop of 20–100 % of the crop's voxels,
  small rotations, flips of every axis and an intensity scale/shift (alice.ssl.augment.view_augment),
  the same law for both views, in place of BYOL's asymmetric colour jitter, grey-scale, blur and
  solarisation (CT has one windowed channel).

Demo scale (resnet3d 64×64×32, batch 4, 100 iterations, projector 256/64, predictor 256): the loss
falls from 3.73 (first 10 steps) to 1.48 (last 10), the mean cosine from 0.07 to 0.63, with the
`spread` of the online projections at 0.77–0.80 (no collapse); ~0.4 s of one core a step.

Logged: `l_byol` (Eq. 2 symmetrised), `cos` (the mean cosine of prediction and target projection,
1 − L/4) and the collapse monitor `spread` of the online projections z (before the predictor) over
both views.
"""

from __future__ import annotations

import copy
from typing import Any, Mapping

import torch

from alice.ssl.encoder import build_cnn_body, cnn_state, global_embedding
from alice.ssl.losses import cosine_loss, spread
from alice.ssl.momentum import MomentumMethod
from alice.ssl.registry import SSLMethod, checked_build, register_method
from alice.ssl.views import check_view_options
from baselines.mocov2 import freeze_decoder, head_settings, mlp

METHOD = {
    "name": "byol",
    "paper": "Grill et al., NeurIPS 2020",
    "objective": "normalised MSE between online predictions and EMA-target projections (symmetrised)",
    "views": "two_views",
    "encoders": ["resnet3d"],
    "smoke": {"projector": {"hidden_dim": 32, "dim": 16}, "predictor": {"hidden_dim": 32}},
}

PROJECTOR_DEFAULTS = {"hidden_dim": 4096, "dim": 256}
PREDICTOR_DEFAULTS = {"hidden_dim": 4096}


class BYOL(MomentumMethod):
    def __init__(self, encoder_config: Mapping[str, Any], crop, projector: Mapping[str, Any] | None = None,
                 predictor: Mapping[str, Any] | None = None, momentum: float = 0.996,
                 momentum_schedule: str = "cosine", views: Mapping[str, Any] | None = None,
                 method_config: Mapping[str, Any] | None = None):
        super().__init__(method_config, momentum, momentum_schedule)
        if views is not None:
            check_view_options("two_views", views, "pretrain.methods.byol.views")
        proj = head_settings(projector, PROJECTOR_DEFAULTS)
        pred = head_settings(predictor, PREDICTOR_DEFAULTS)
        self.body = build_cnn_body(encoder_config, crop)
        freeze_decoder(self.body)
        self.body.eval()
        with torch.no_grad():  # the bottleneck's channels: one probe pass at the crop size
            width = int(self.body.encode(torch.zeros(2, 1, *(int(c) for c in crop)))[-1].shape[1])
        self.body.train()
        self.projector = mlp(width, proj["hidden_dim"], proj["dim"], batch_norm=True)
        self.predictor = mlp(proj["dim"], pred["hidden_dim"], proj["dim"], batch_norm=True)
        self.target_body = copy.deepcopy(self.body)
        self.target_projector = copy.deepcopy(self.projector)
        self.freeze_targets()

    def ema_pairs(self):
        return [(self.body, self.target_body), (self.projector, self.target_projector)]

    def train(self, mode: bool = True) -> "BYOL":
        # the target network normalises with its batch's statistics (BYOL's), not in eval mode
        SSLMethod.train(self, mode)
        return self

    def encoder_state_dict(self) -> dict[str, torch.Tensor]:
        return cnn_state(self.body)

    def project(self, body, projector, x: torch.Tensor) -> torch.Tensor:
        return projector(global_embedding(body.encode(x)[-1]))

    def forward(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        v1, v2 = batch["views"][0], batch["views"][1]
        b = v1.shape[0]
        # each view its own pass (BatchNorm statistics per view's batch), online and target alike
        z = torch.cat([self.project(self.body, self.projector, v) for v in (v1, v2)])
        p = torch.cat([self.predictor(z[:b]), self.predictor(z[b:])]).float()
        with torch.no_grad():
            t = torch.cat([self.project(self.target_body, self.target_projector, v) for v in (v1, v2)]).float()
        # online view 1 predicts target view 2 and the reverse (Eq. 2 and its symmetric term)
        loss = cosine_loss(p[:b], t[b:]) + cosine_loss(p[b:], t[:b])
        out = {"loss": loss, "l_byol": loss.detach(), "cos": 1.0 - loss.detach() / 4.0}
        if b > 1:
            out["spread"] = spread(z)
        return out


_KWARGS = ("projector", "predictor", "momentum", "momentum_schedule", "views")


@register_method("byol")
def build(method_config: Mapping[str, Any], encoder_config: Mapping[str, Any], crop) -> BYOL:
    return checked_build("byol", BYOL, _KWARGS, method_config, encoder_config, crop)
