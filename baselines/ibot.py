"""iBOT: masked image modelling with an online tokenizer (Zhou et al., "iBOT: Image BERT Pre-Training
with Online Tokenizer", ICLR 2022), in 3-D on the harness's three encoders.

Objective (iBOT §3.1 "Framework"): DINO's self-distillation (baselines/dino.py) plus a masked-token
term. A student g_θ and a teacher g_θ' of one architecture (encoder → head → prototypes), the
teacher an EMA of the student (momentum from `momentum` to 1 by a cosine, alice.ssl.momentum). Two
global views u, v of a crop (and `local_views` local ones); the student sees the global views
masked, û and v̂ (a masked unit's embedding replaced by a learned [MASK] token), and the local views
intact; the teacher sees the global views intact. With P(x) = softmax over K prototype logits,

    L_MIM   = − Σ_i m_i · P_θ'^patch(u_i)ᵀ log P_θ^patch(û_i)   (per global view, over its masked
                                                                 units i; the online tokenizer is
                                                                 the teacher's patch distribution)
    L_[CLS] = − P_θ'^[CLS](v)ᵀ log P_θ^[CLS](û)                 (DINO's cross-view term; symmetrised
                                                                 and over every (teacher global,
                                                                 other student view) pair, DINO eq. 3)
    loss    = λ_cls · L_[CLS] + λ_mim · L_MIM                   (λ = 1, 1: iBOT's λ1 = λ2 = 1)

Both teachers are centred and sharpened as in DINO: P_θ' = softmax((g_θ' − c)/τ_t) with its own
centre for each output, c for [CLS] and c' for patch tokens (as iBOT keeps them apart),
c ← m_c·c + (1 − m_c)·mean (DINO eq. 4, `center_momentum`; c' over every teacher patch token); the
student at `student_temperature`. L_[CLS] is alice.ssl.losses.dino_loss; L_MIM is the same
cross-entropy per token, averaged over each image's masked units, then over the images of the
batch and the global views (an image drawn unmasked contributes 0, as in the authors' released
code, so λ_mim is the paper's).

Head (iBOT §3.2 "Implementation"): DINO's — a 3-layer MLP to an l2-normalised bottleneck
(`ProjectionHead`) and a weight-normalised prototype layer (`Prototypes`), shared pieces of
alice.models.heads; `shared_head` (default, iBOT's recipe `--shared_head true`): one head and one
prototype layer for the crop embedding and the patch tokens, in one call; `shared_head: false`:
a second head + prototype layer for the patch tokens (same widths, same K). The teacher's heads
are the EMA of the student's. `head_norm` "none" is DINO's and iBOT's ViT head, "batch" DINO's
`use_bn_in_head` (BatchNorm after the hidden layers, statistics over every row of the call: crop
embeddings and tokens together). The teacher temperatures rise linearly from their `_warmup`
values to `teacher_temperature` ([CLS]) and `teacher_patch_temperature` (patches) over the first
`teacher_warmup_fraction` of the run (iBOT: 0.04 → 0.07 over the first 30 epochs, for both).

Masking (iBOT §3.2, its prediction ratio): each global view of each sample is masked with
probability `mask_probability` (iBOT 0.5), then with a ratio r ~ U(`mask_ratio`) (iBOT [0.1, 0.5];
a number: always that ratio) — round(r·N) units, at least one — (alice.ssl.token_masking
.sample_unit_masks). iBOT masks BEiT-style blocks of 16² patches; here units are masked at random:
the 3-D grids are a few units wide (18 on the demo's ViT crop, 2 for Swin, 8 for nnFormer), where a
block would be most of the crop, and the iBOT authors' repository reports random masking with a larger
ratio slightly better than blocks. Local views are never masked (iBOT masks only global crops).

Encoders (alice.ssl.token_masking.MaskTokenEncoder, iBOT's own choice on both of its backbones):
ViT: a learned mask token replaces the embedding of each masked 16³ patch before the position
embedding and the whole sequence goes through the blocks (MAE's dropping, the harness's masked
ViT, would leave no output at the masked positions to distil); Swin, nnFormer: the SimMIM mask
token at the patch-embedding map, a masked unit being one bottleneck cell (alice.models.masked).
Neither mask token transfers.

3-D decisions: the encoders have no [CLS] token, so P^[CLS] is computed on the crop's embedding,
the average of its encoder tokens (alice.ssl.encoder.pool), for the student over the tokens of the
masked view (iBOT's student [CLS] also attends to the masked positions); every view is resampled
to the encoder's crop (alice.ssl.views `multi_crop` says why), so a local view costs a global one:
the demo uses none (two global views, the same cost as `two_views`), the paper recipe iBOT's 10.

Logged: `l_cls`, `l_mim`, the collapse monitors `spread` (the students' crop embeddings of the
global views, bottleneck) and `token_spread` (their patch-token embeddings), `teacher_entropy` and
`patch_entropy` (the mean entropy of the teachers' [CLS] and patch distributions over log K: 1 when
uniform, 0 when one prototype takes all, DINO §5.3's two collapses), and `masked` (the fraction of
the global views' units masked this step).

Switches (the ablation rows of the paper, alice.ssl.variants; both off in the Table 1 run, which
they leave unchanged: with both false the same parameters are built and the same random numbers
drawn as without them):

`inter_volume` (Table 5, "iBOT ✓ inter-volume"): the model is unchanged; the data loader
(alice.ssl.run) cuts the global views from anatomically matched crops of two different volumes
(global view 0 from volume Q's crop, the others from volume K's matched crop), so L_[CLS], DINO's
cross-view term, becomes an inter-volume term (the role of Alice's ℓ_dv, eq. 2). The flag is stored
(`self.inter_volume`) for the loader and the records; `forward` does not read it.

`casa` (Table 6, "iBOT w/. vs. w/o. CASA": "We apply the CASA on different siamese SSL
architectures which take masked view and unmasked view as inputs"): L_MIM is replaced by a
cross-view term aligned by CASA (alice.models.casa, the paper's eqs. 3–4). The paper does not say
where CASA sits in iBOT; this is the harness's reading, the counterpart of Alice's ℓ_st (eq. 5).
For each global view u and each other global view v (with iBOT's two global views: the other one),
with V_û the student encoder's tokens of the masked û, z_θ(û) the student patch head's bottleneck
tokens of û (ProjectionHead's l2-normalised output, before the prototype layer) and z_θ'(v) the
teacher patch head's bottleneck tokens of the intact v,

    S_û   = CASA(V_û, z_θ(û))            (eqs. 3–4: query V_û, keys and values z_θ(û))
    T_û,v = CASA(V_û, z_θ'(v))           (the same CASA module and query; computed under no_grad)
    L_MIM^CASA = − Σ_i m_i · P_θ'(T_û,v,i)ᵀ log P_θ(S_û,i)   (over the masked units i of û,
                                         averaged over the (u, v) pairs)
    loss  = λ_cls · L_[CLS] + λ_mim · L_MIM^CASA

with P_θ the student's patch prototype layer on S (l2-normalised, as the head's output is) at
`student_temperature` and P_θ' the teacher's patch prototype layer on T, centred by c' and
sharpened by the patch temperature (`mim_loss`, as above). Since V_û attends over v's tokens, token
i of T carries what of v matches unit i of û, although the two views' voxels do not correspond. As
in Alice's ℓ_st, the whole teacher side is stop-gradient: CASA's weights and the query V_û receive
gradient only through S. The patch centre c' is updated over the teacher's CASA logits (the ones
L_MIM^CASA centres) and `patch_entropy` is measured on them. CASA(embed_dim, proj_dim = kv_dim =
the head's bottleneck width) is a student-only module: no EMA copy, not transferred
(`encoder_state_dict` stays the encoder's). Logged besides: `casa_spread` (the collapse monitor on
S, token-averaged, like Alice's `st_spread`).
"""

from __future__ import annotations

import copy
import math
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F

from alice.models.casa import CASA
from alice.models.heads import ProjectionHead, Prototypes
from alice.ssl.encoder import build_encoder, pool, transferable_state
from alice.ssl.losses import dino_loss, spread, update_center
from alice.ssl.momentum import MomentumMethod, check_distillation_options, linear_warmup
from alice.ssl.registry import checked_build, register_method
from alice.ssl.token_masking import MaskTokenEncoder, sample_unit_masks
from alice.ssl.views import check_view_options

METHOD = {
    "name": "ibot",
    "paper": "Zhou et al., ICLR 2022",
    "objective": "self-distillation of masked patch tokens (online tokenizer) + DINO's cross-view [CLS] term",
    "views": "multi_crop",
    "encoders": ["vit", "swin", "nnformer"],
    "matcher": "inter_volume",  # mines matched crops (its global views, alice.ssl.views) when on
    "masking": True,
    # the ablation switches (alice.ssl.variants) and their defaults, the constructor's
    "switches": {"inter_volume": False, "casa": False},
    "smoke": {"head": {"hidden_dim": 32, "bottleneck_dim": 16}, "prototypes": 64,
              "views": {"global_views": 2, "local_views": 1}},
}


def mim_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, center: torch.Tensor,
             mask: torch.Tensor, student_temperature: float, teacher_temperature: float | torch.Tensor
             ) -> torch.Tensor:
    """iBOT's L_MIM on (..., B, N, K) logits and a (..., B, N) mask: the centred, sharpened teacher's
    cross-entropy with the student per token, averaged over each image's masked tokens (an image
    without any: 0), then over the rest; the teacher side is detached."""
    p_t = F.softmax((teacher_logits.detach() - center) / teacher_temperature, dim=-1)
    per_token = -(p_t * F.log_softmax(student_logits / student_temperature, dim=-1)).sum(-1)
    m = mask.to(per_token.dtype)
    return ((per_token * m).sum(-1) / m.sum(-1).clamp_min(1.0)).mean()


class IBOT(MomentumMethod):
    def __init__(self, encoder_config: Mapping[str, Any], crop, head: Mapping[str, Any] | None = None,
                 prototypes: int = 8192, shared_head: bool = True, head_norm: str = "none",
                 student_temperature: float = 0.1, teacher_temperature: float = 0.07,
                 teacher_temperature_warmup: float = 0.04, teacher_patch_temperature: float = 0.07,
                 teacher_patch_temperature_warmup: float = 0.04, teacher_warmup_fraction: float = 0.0,
                 center_momentum: float = 0.9, mask_ratio: float | Sequence[float] = (0.1, 0.5),
                 mask_probability: float = 0.5, loss_weights: Mapping[str, float] | None = None,
                 momentum: float = 0.996, momentum_schedule: str = "cosine",
                 views: Mapping[str, Any] | None = None, inter_volume: bool = False, casa: bool = False,
                 method_config: Mapping[str, Any] | None = None):
        super().__init__(method_config, momentum, momentum_schedule)
        self.inter_volume = bool(inter_volume)  # read by the loader (module docstring, "Switches")
        self.use_casa = bool(casa)
        self.views = check_view_options("multi_crop", views, "pretrain.methods.ibot.views")
        self.global_views = int(self.views["global_views"])
        check_distillation_options({"student_temperature": student_temperature,
                                    "teacher_temperature": teacher_temperature,
                                    "teacher_temperature_warmup": teacher_temperature_warmup,
                                    "teacher_patch_temperature": teacher_patch_temperature,
                                    "teacher_patch_temperature_warmup": teacher_patch_temperature_warmup},
                                   teacher_warmup_fraction, center_momentum)
        ratio = [float(mask_ratio)] * 2 if isinstance(mask_ratio, (int, float)) else [float(r) for r in mask_ratio]
        if len(ratio) != 2 or not 0.0 < ratio[0] <= ratio[1] < 1.0:
            raise ValueError(f"mask_ratio must be a ratio in (0, 1) or [lo, hi] with 0 < lo <= hi < 1, "
                             f"got {mask_ratio!r}")
        if not 0.0 < float(mask_probability) <= 1.0:
            raise ValueError(f"mask_probability must be in (0, 1], got {mask_probability!r}")
        weights = {"cls": 1.0, "mim": 1.0, **{k: float(v) for k, v in (loss_weights or {}).items()}}
        if set(weights) != {"cls", "mim"}:
            raise ValueError(f"loss_weights takes cls and mim, got {sorted(loss_weights or {})}")
        self.mask_ratio = ratio
        self.mask_probability = float(mask_probability)
        self.loss_weights = weights
        self.student_temperature = float(student_temperature)
        self.temperatures = {"cls": (float(teacher_temperature_warmup), float(teacher_temperature)),
                             "patch": (float(teacher_patch_temperature_warmup), float(teacher_patch_temperature))}
        self.teacher_warmup_fraction = float(teacher_warmup_fraction)
        self.center_momentum = float(center_momentum)
        self.shared_head = bool(shared_head)
        hd = {"hidden_dim": 2048, "bottleneck_dim": 256, **(head or {})}
        unknown = sorted(set(hd) - {"hidden_dim", "bottleneck_dim"})
        if unknown:
            raise ValueError(f"unknown head settings {unknown}; known: hidden_dim, bottleneck_dim")
        k = int(prototypes)
        self.encoder = MaskTokenEncoder(build_encoder(encoder_config, crop))
        self.num_units = self.encoder.num_patches
        if self.num_units < 2:
            raise ValueError(f"the crop has {self.num_units} masking unit(s); iBOT needs at least 2")

        def new_head() -> ProjectionHead:
            return ProjectionHead(self.encoder.embed_dim, int(hd["hidden_dim"]), int(hd["bottleneck_dim"]),
                                  norm=head_norm)

        self.head = new_head()
        self.prototypes = Prototypes(self.head.out_dim, k)
        if not self.shared_head:
            self.patch_head = new_head()
            self.patch_prototypes = Prototypes(self.patch_head.out_dim, k)
        self.teacher_encoder = copy.deepcopy(self.encoder)
        self.teacher_head = copy.deepcopy(self.head)
        self.teacher_prototypes = copy.deepcopy(self.prototypes)
        if not self.shared_head:
            self.teacher_patch_head = copy.deepcopy(self.patch_head)
            self.teacher_patch_prototypes = copy.deepcopy(self.patch_prototypes)
        self.freeze_targets()
        self.register_buffer("center", torch.zeros(k))        # c, of the [CLS] (crop) outputs
        self.register_buffer("center_patch", torch.zeros(k))  # c', of the patch-token outputs
        # this step's teacher temperatures: buffers, so a resumed run continues the warm-up exactly
        self.register_buffer("tau_t", torch.tensor(self.teacher_temperature_at("cls", 0, 1)))
        self.register_buffer("tau_tp", torch.tensor(self.teacher_temperature_at("patch", 0, 1)))
        if self.use_casa:  # built last: every other parameter draws the same initial values as without it
            width = self.head.out_dim
            self.casa = CASA(self.encoder.embed_dim, width, kv_dim=width)
        self.last_mask: torch.Tensor | None = None

    def ema_pairs(self):
        pairs = [(self.encoder, self.teacher_encoder), (self.head, self.teacher_head),
                 (self.prototypes, self.teacher_prototypes)]
        if not self.shared_head:
            pairs += [(self.patch_head, self.teacher_patch_head),
                      (self.patch_prototypes, self.teacher_patch_prototypes)]
        return pairs

    def encoder_state_dict(self) -> dict[str, torch.Tensor]:
        return transferable_state(self.encoder)

    def teacher_temperature_at(self, which: str, step: int, total_steps: int) -> float:
        start, end = self.temperatures[which]
        return linear_warmup(start, end, self.teacher_warmup_fraction, step, total_steps)

    def after_step(self, step: int, total_steps: int) -> None:
        super().after_step(step, total_steps)
        self.tau_t.fill_(self.teacher_temperature_at("cls", step + 1, total_steps))  # the next step's
        self.tau_tp.fill_(self.teacher_temperature_at("patch", step + 1, total_steps))

    def _patch_prototypes(self, teacher: bool) -> torch.nn.Module:
        pre = "teacher_" if teacher else ""
        return getattr(self, pre + ("prototypes" if self.shared_head else "patch_prototypes"))

    def _outputs(self, tokens: torch.Tensor, teacher: bool, patch_logits: bool = True
                 ) -> tuple[torch.Tensor, ...]:
        """(crop embedding z, patch embeddings, crop logits, patch logits) of (R, N, D) tokens; the
        patch logits are None with `patch_logits=False` (CASA's L_MIM takes the prototypes of
        CASA's outputs instead)."""
        pre = "teacher_" if teacher else ""
        head, protos = getattr(self, pre + "head"), getattr(self, pre + "prototypes")
        if self.shared_head:  # one call, the crop embedding in the place of iBOT's [CLS] token
            z = head(torch.cat([pool(tokens).unsqueeze(1), tokens], 1))
            if not patch_logits:
                return z[:, 0], z[:, 1:], protos(z[:, 0]).float(), None
            logits = protos(z).float()
            return z[:, 0], z[:, 1:], logits[:, 0], logits[:, 1:]
        z_cls, z_patch = head(pool(tokens)), getattr(self, pre + "patch_head")(tokens)
        return (z_cls, z_patch, protos(z_cls).float(),
                getattr(self, pre + "patch_prototypes")(z_patch).float() if patch_logits else None)

    def _casa_mim(self, tokens: torch.Tensor, z_patch: torch.Tensor, t_z_patch: torch.Tensor,
                  mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """L_MIM^CASA (module docstring, "Switches") of the global views' student encoder tokens
        (G, B, N, D), student and teacher patch bottleneck tokens (G, B, N, C) and masks (G, B, N):
        (loss, S (G, B, N, C), the teacher's CASA logits (pairs, B, N, K) for the centre)."""
        g = tokens.shape[0]
        s = self.casa(tokens.flatten(0, 1), z_patch.flatten(0, 1)).unflatten(0, (g, -1))  # S_û
        s_logits = self._patch_prototypes(False)(s).float()  # Prototypes l2-normalises S first
        pairs = [(i, j) for i in range(g) for j in range(g) if j != i]
        with torch.no_grad():  # the whole teacher side: T_û,v = CASA(V_û, z_θ'(v))
            t = torch.stack([self.casa(tokens[i], t_z_patch[j]) for i, j in pairs])
            t_logits = self._patch_prototypes(True)(t).float()
        index = [i for i, _ in pairs]
        loss = mim_loss(s_logits[index], t_logits, self.center_patch, mask[index], self.student_temperature,
                        self.tau_tp)
        return loss, s, t_logits

    def forward(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        views = batch["views"]
        v, b, g = views.shape[0], views.shape[1], self.global_views
        flat = views.reshape(v * b, *views.shape[2:])
        n = self.num_units
        mask = sample_unit_masks(g * b, n, self.mask_ratio, self.mask_probability, device=flat.device)
        full = torch.cat([mask, mask.new_zeros((v - g) * b, n)])  # local views: never masked
        casa = self.use_casa
        tokens = self.encoder(flat, full)
        z_cls, z_patch, s_cls, s_patch = self._outputs(tokens, teacher=False, patch_logits=not casa)
        with torch.no_grad():
            _, t_z_patch, t_cls, t_patch = self._outputs(self.teacher_encoder(flat[: g * b]), teacher=True,
                                                         patch_logits=not casa)
        s_cls, t_cls = s_cls.reshape(v, b, -1), t_cls.reshape(g, b, -1)
        tau_t, tau_tp = self.tau_t, self.tau_tp
        pairs = [(i, j) for i in range(g) for j in range(v) if j != i]
        l_cls = sum(dino_loss(s_cls[j], t_cls[i], self.center, self.student_temperature, tau_t)
                    for i, j in pairs) / len(pairs)
        if casa:  # L_MIM^CASA (module docstring, "Switches"); t_patch: the teacher's CASA logits
            l_mim, s_casa, t_patch = self._casa_mim(
                tokens[: g * b].unflatten(0, (g, b)), z_patch[: g * b].unflatten(0, (g, b)),
                t_z_patch.unflatten(0, (g, b)), mask.reshape(g, b, n))
        else:
            s_patch = s_patch.reshape(v, b, n, -1)[:g]
            t_patch = t_patch.reshape(g, b, n, -1)
            l_mim = mim_loss(s_patch, t_patch, self.center_patch, mask.reshape(g, b, n), self.student_temperature,
                             tau_tp)
        with torch.no_grad():
            entropy = {}
            for key, logits, center, tau in (("teacher_entropy", t_cls, self.center, tau_t),
                                             ("patch_entropy", t_patch, self.center_patch, tau_tp)):
                p = F.softmax((logits - center) / tau, dim=-1)
                entropy[key] = -(p * p.clamp_min(1e-12).log()).sum(-1).mean() / math.log(p.shape[-1])
        if self.training:
            update_center(self.center, [t_cls], self.center_momentum)
            update_center(self.center_patch, [t_patch], self.center_momentum)
        w = self.loss_weights
        out = {"loss": w["cls"] * l_cls + w["mim"] * l_mim, "l_cls": l_cls.detach(), "l_mim": l_mim.detach(),
               **entropy, "masked": mask.float().mean()}
        if b > 1:
            out["spread"] = spread(z_cls[: g * b])
            out["token_spread"] = spread(z_patch[: g * b].reshape(-1, z_patch.shape[-1]))
            if casa:
                out["casa_spread"] = spread(s_casa.flatten(0, 1))  # S token-averaged, per (view, sample)
        self.last_mask = mask.detach().reshape(g, b, n)  # (views, B, N) True = masked, for tests
        return out


_KWARGS = ("head", "prototypes", "shared_head", "head_norm", "student_temperature", "teacher_temperature",
           "teacher_temperature_warmup", "teacher_patch_temperature", "teacher_patch_temperature_warmup",
           "teacher_warmup_fraction", "center_momentum", "mask_ratio", "mask_probability", "loss_weights",
           "momentum", "momentum_schedule", "views", "inter_volume", "casa")


@register_method("ibot")
def build(method_config: Mapping[str, Any], encoder_config: Mapping[str, Any], crop) -> IBOT:
    return checked_build("ibot", IBOT, _KWARGS, method_config, encoder_config, crop)
