"""DINO: self-distillation with no labels (Caron et al., "Emerging Properties in Self-Supervised
Vision Transformers", ICCV 2021), in 3-D on the harness's three encoders.

Objective (DINO §3.1): a student g_θs and a teacher g_θt of the same architecture (encoder → head),
the teacher an EMA of the student (momentum from `momentum` to 1 by a cosine, §3.1 "Teacher
network", alice.ssl.momentum). Multi-crop views: V = 2 global views x1^g, x2^g and `local_views`
local ones (alice.ssl.views `multi_crop`); the teacher sees the global views only. With
P(x) = softmax(g(x) / τ) over K prototype logits,

    P_t(x) = softmax((g_θt(x) − c) / τ_t)                           (centring and sharpening)
    ℓ = Σ_{x ∈ {x1^g, x2^g}} Σ_{x' ∈ V, x' ≠ x} H(P_t(x), P_s(x')) / #pairs,   H(a, b) = −a·log b
                                                                    (§3.1 eqs. 1 and 3)
    c ← m_c·c + (1 − m_c)·mean_batch g_θt(x)                        (eq. 4, `center_momentum`)

(alice.ssl.losses.dino_loss and update_center.) The head is DINO's: a 3-layer MLP to an
l2-normalised bottleneck (`ProjectionHead`) and a weight-normalised prototype layer (`Prototypes`),
both shared pieces of alice.models.heads; the teacher's head is the EMA of the student's.
`head_norm`: "none" is DINO's ViT head, "batch" its `use_bn_in_head` option (BatchNorm after the
hidden layers, DINO's ResNet head). At the demo scale (batch 4, 100 iterations) the ViT head
collapses within ten steps (the teacher uniform, every embedding one point: `spread` 0.02, the
loss at log K), so the demo uses "batch", as Alice's heads do for the same reason. The teacher temperature rises linearly from
`teacher_temperature_warmup` to `teacher_temperature` over the first `teacher_warmup_fraction` of the
run (DINO's implementation details: τ_t warmed up linearly from 0.04 to 0.07 during the first 30
epochs; here a fraction of the iterations, as the harness counts iterations, not epochs).

3-D decisions: the crop's embedding is the average of its encoder tokens (no [CLS] token in the 3-D
encoders, alice.ssl.encoder.pool); every view is resampled to the encoder's crop (alice.ssl.views
says why).

Logged: `l_dino`, the collapse monitor `spread` of the students' bottleneck embeddings of the
global views, and `teacher_entropy` (the mean entropy of P_t over log K: 1 when the teacher is
uniform, 0 when it puts all mass on one prototype — the two collapses DINO §5.3 discusses).
"""

from __future__ import annotations

import copy
import math
from typing import Any, Mapping

import torch
import torch.nn.functional as F

from alice.models.heads import ProjectionHead, Prototypes
from alice.ssl.encoder import build_encoder, pool, transferable_state
from alice.ssl.losses import dino_loss, spread, update_center
from alice.ssl.momentum import MomentumMethod, check_distillation_options, linear_warmup
from alice.ssl.registry import checked_build, register_method
from alice.ssl.views import check_view_options

METHOD = {
    "name": "dino",
    "paper": "Caron et al., ICCV 2021",
    "objective": "self-distillation with a centred, sharpened momentum teacher and multi-crop",
    "views": "multi_crop",
    "encoders": ["vit", "swin", "nnformer"],
    "smoke": {"head": {"hidden_dim": 32, "bottleneck_dim": 16}, "prototypes": 64,
              "views": {"global_views": 2, "local_views": 1}},
}


class DINO(MomentumMethod):
    def __init__(self, encoder_config: Mapping[str, Any], crop, head: Mapping[str, Any] | None = None,
                 prototypes: int = 65536, student_temperature: float = 0.1, teacher_temperature: float = 0.04,
                 teacher_temperature_warmup: float = 0.04, teacher_warmup_fraction: float = 0.0,
                 center_momentum: float = 0.9, momentum: float = 0.996, momentum_schedule: str = "cosine",
                 head_norm: str = "none", views: Mapping[str, Any] | None = None,
                 method_config: Mapping[str, Any] | None = None):
        super().__init__(method_config, momentum, momentum_schedule)
        self.views = check_view_options("multi_crop", views, "pretrain.methods.dino.views")
        self.global_views = int(self.views["global_views"])
        check_distillation_options({"student_temperature": student_temperature,
                                    "teacher_temperature": teacher_temperature,
                                    "teacher_temperature_warmup": teacher_temperature_warmup},
                                   teacher_warmup_fraction, center_momentum)
        self.student_temperature = float(student_temperature)
        self.teacher_temperature = float(teacher_temperature)
        self.teacher_temperature_warmup = float(teacher_temperature_warmup)
        self.teacher_warmup_fraction = float(teacher_warmup_fraction)
        self.center_momentum = float(center_momentum)
        hd = {"hidden_dim": 2048, "bottleneck_dim": 256, **(head or {})}
        unknown = sorted(set(hd) - {"hidden_dim", "bottleneck_dim"})
        if unknown:
            raise ValueError(f"unknown head settings {unknown}; known: hidden_dim, bottleneck_dim")
        self.encoder = build_encoder(encoder_config, crop, masking=False)
        self.head = ProjectionHead(self.encoder.embed_dim, int(hd["hidden_dim"]), int(hd["bottleneck_dim"]),
                                   norm=head_norm)
        self.prototypes = Prototypes(self.head.out_dim, int(prototypes))
        self.teacher_encoder = copy.deepcopy(self.encoder)
        self.teacher_head = copy.deepcopy(self.head)
        self.teacher_prototypes = copy.deepcopy(self.prototypes)
        self.freeze_targets()
        self.register_buffer("center", torch.zeros(int(prototypes)))
        # this step's teacher temperature: a buffer, so a resumed run continues the warm-up exactly
        self.register_buffer("tau_t", torch.tensor(self.teacher_temperature_at(0, 1)))

    def ema_pairs(self):
        return [(self.encoder, self.teacher_encoder), (self.head, self.teacher_head),
                (self.prototypes, self.teacher_prototypes)]

    def encoder_state_dict(self) -> dict[str, torch.Tensor]:
        return transferable_state(self.encoder)

    def teacher_temperature_at(self, step: int, total_steps: int) -> float:
        return linear_warmup(self.teacher_temperature_warmup, self.teacher_temperature,
                             self.teacher_warmup_fraction, step, total_steps)

    def after_step(self, step: int, total_steps: int) -> None:
        super().after_step(step, total_steps)
        self.tau_t.fill_(self.teacher_temperature_at(step + 1, total_steps))  # the next step's

    def forward(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        views = batch["views"]
        v, b = views.shape[0], views.shape[1]
        flat = views.reshape(v * b, *views.shape[2:])
        z = self.head(pool(self.encoder(flat)[0]))                    # (V·B, bottleneck)
        s_logits = self.prototypes(z).float().reshape(v, b, -1)
        with torch.no_grad():
            g = flat[: self.global_views * b]
            t_logits = self.teacher_prototypes(self.teacher_head(pool(self.teacher_encoder(g)[0]))).float()
        t_logits = t_logits.reshape(self.global_views, b, -1)
        tau_t = self.tau_t
        pairs = [(i, j) for i in range(self.global_views) for j in range(v) if j != i]
        loss = sum(dino_loss(s_logits[j], t_logits[i], self.center, self.student_temperature, tau_t)
                   for i, j in pairs) / len(pairs)
        with torch.no_grad():
            p_t = F.softmax((t_logits - self.center) / tau_t, dim=-1)
            entropy = -(p_t * p_t.clamp_min(1e-12).log()).sum(-1).mean()
        if self.training:
            update_center(self.center, [t_logits], self.center_momentum)
        out = {"loss": loss, "l_dino": loss.detach(), "teacher_entropy": entropy / math.log(p_t.shape[-1])}
        if b > 1:
            out["spread"] = spread(z[: self.global_views * b])
        return out


_KWARGS = ("head", "prototypes", "student_temperature", "teacher_temperature", "teacher_temperature_warmup",
           "teacher_warmup_fraction", "center_momentum", "momentum", "momentum_schedule", "head_norm", "views")


@register_method("dino")
def build(method_config: Mapping[str, Any], encoder_config: Mapping[str, Any], crop) -> DINO:
    return checked_build("dino", DINO, _KWARGS, method_config, encoder_config, crop)
