"""The Alice objective (paper §3, eqs. 1–5) as one `nn.Module`.

Views (built inside `forward` from a batch {"Q": (B,1,X,Y,Z), "K": (B,1,X,Y,Z)}):
  u, r = MAE augmentation (random resized crop + flip), then random masking of Q, K (`mask_ratio`)
                                                      -> online encoder E_s      -> V_u^Q, V_r^K
                                                      -> online decoder          -> Q̄, K̄ (voxels), decoder features
                                                      -> φ per token             -> H_u^Q, H_r^K
  w, v = strong augmentation of Q, K (intact unless `target_mask_ratio` > 0)
                                                      -> target encoder E_t (EMA) -> ψ per token -> Y_w^Q, Y_v^K

Losses
  ℓ_r  (eq. 1) MSE between Q̄ and per-patch-normalised voxels of the augmented Q the encoder saw (MAE
       norm_pix), on MASKED patches only (sum over masked patches / number of masked patches), plus
       the same for K.
  ℓ_dv (eq. 2) ℓ_s([cls]_u^Q, [cls]_v^K) + ℓ_s([cls]_r^K, [cls]_w^Q), [cls] = global average pooling
       of H or Y over tokens (§3.2: heads, then GAP); inter-volume pairs as in the paper.
  ℓ_st (eq. 5) ℓ_s(S_u^Q, T_w^Q) + ℓ_s(S_r^K, T_v^K), S_u^Q = CASA(V_u^Q, H_u^Q),
       T_w^Q = CASA(V_u^Q, Y_w^Q) (eqs. 3–4: query V, keys and values H = φ(·) resp. Y = ψ(·), as
       §3.2 defines H and Y and Fig. 3 projects them), compared per query token and averaged.
  ℓ_s(student, teacher) (`contrastive_loss`):
    cosine   (default; §3.2 "a general cosine similarity loss [10, 16]") BYOL's 2 − 2·cos(q(student),
             teacher), q the predictor (below);
    infonce  (Table 7) InfoNCE on token-averaged, l2-normalised q(student) and teacher with the other
             samples of the batch (other body parts / volumes) as negatives, temperature `temperature`;
    dino     the authors' released code: DINO's cross-entropy (Caron et al. 2021) between prototype
             logits, the teacher's centred (EMA centre, momentum `dino.center_momentum`) and
             sharpened (`dino.teacher_temperature`), the student's at `dino.student_temperature`;
             prototypes: a weight-normalised layer per term (ℓ_dv: on φ's [cls], its teacher copy the
             EMA of the student's; ℓ_st: on CASA's output, shared by S and T like CASA); no predictor.
  loss = Σ weight_i · ℓ_i over the enabled objectives.

Encoders (alice.models.masked): the online encoder is a masked encoder — tokens (B, N_t, D), mask
(B, N), ids_restore (B, N), `patchify` for the ℓ_r targets — so everything below is the same for
  vit       MAE (the paper's §3.1): only the visible 16³ patches go through the ViT; V has N_vis
            tokens, the decoder re-inserts mask tokens;
  swin,     SimMIM (Xie et al. 2022): a masked unit is one bottleneck cell (`stride`³ voxels); its
  nnformer  patch-embedding cells are replaced by a learned mask token, the encoder sees the whole
            volume and V has all N bottleneck tokens; the decoder takes them as they are. The mask
            token belongs to the online encoder's adapter (the target's is its EMA, used only with
            `target_mask_ratio` > 0) and is not part of `encoder_state_dict()`.
  (why SimMIM for the hierarchical encoders: alice.models.masked.)

Decisions (the paper leaves them open; values marked (unverified) in config/paper.yaml):
- Predictor (`predictor`, default on): §4.2 "We keep the same projection head structure as used in
  [11, 16]" — MoCo v3 and BYOL, both of which put a predictor MLP on the online branch only (BYOL
  §3.1, Linear–BN–ReLU–Linear, `alice.models.heads.Predictor`, hidden width
  `predictor_hidden_dim`). Two predictors, as the two terms' widths differ: one on the pooled [cls]
  of ℓ_dv (width of φ's bottleneck; also ℓ_st with `casa=False`, below), one per token on CASA's S of ℓ_st
  (width `casa_dim`). The predictor has no EMA copy. Run id `alice__predictor-false` drops it (ℓ_s
  then compares the projections themselves). With `contrastive_loss="dino"` no predictor is built
  (DINO's centring and sharpening play its part), so `predictor` has no effect there.
- φ, ψ (`head`): §3.2 "3-layer MLPs with l2-normalized bottleneck following DINO"; with
  `head_norm="batch"` (default) each hidden Linear is followed by BatchNorm as in the projectors of
  MoCo v3 and BYOL (§4.2's "[11, 16]"), with the statistics of the current batch in both φ and ψ
  (ψ sees target-encoder features, whose statistics differ from φ's decoder features). At the demo
  scale, without it the embeddings collapse even with the predictor (docs/pretraining.md, "Pretraining").
  `head_norm="none"` (run id `alice__head_norm-none`) is DINO's head without BatchNorm; the
  authors' released code is `alice__contrastive_loss-dino__head_norm-none`.
- The collapse monitors are measured on φ's [cls] and on CASA's S, before the predictor (SimSiam
  measures the projector output z).
- Stop-gradient: the target encoder and ψ run under `torch.no_grad()` (their parameters are
  `requires_grad=False`, updated only by `update_target`). The teacher embedding T = CASA(V, Y) is
  computed under `torch.no_grad()` as a whole, i.e. the whole teacher side is stop-gradient (as in
  BYOL/SimSiam): CASA's weights and the query V receive gradient only through the student S. (The
  alternative, stop-gradient on Y only, would let CASA move T towards S through W_q, W_k, W_ν, ζ.)
- Widths: the decoder maps its features to the encoder width (`MaskedDecoder(feat_dim=embed_dim)`);
  φ and ψ share one architecture and ψ is the EMA of φ (like the target encoder is the EMA of the
  online encoder); one CASA(embed_dim, casa_dim, kv_dim = φ's output width) serves both the student
  (kv = H) and the teacher (kv = Y), as in Fig. 3.
- EMA: base momentum `momentum` 0.996 increased to 1 by a cosine (`momentum_schedule`), BYOL's
  schedule (unverified: the paper states neither).
- `casa=False` (ℓ_st without CASA; Table 6's "w/o CASA" instead reads the run without ℓ_st, as the
  paper prints the same number for both, alice/tables/specs/table6.yaml): ℓ_st = ℓ_s(avg H_u^Q, avg Y_w^Q) + ℓ_s(avg H_r^K, avg Y_v^K) —
  the masked view's decoder features directly against the intact view's target features
  (SIM-style); token-averaged because w, v move voxels so tokens do not correspond.
- `inter_volume=False`: ℓ_dv is dropped; the caller supplies a second crop of the same volume as K.
- Online views (`online_augment`): §4.2 "augmentations and masking following MAE" — MAE's random
  resized crop and flip, extended to 3-D (alice.ssl.augment.mae_augment; the 3-D form and its
  values are ours), drawn from the step's generator before masking; ℓ_r reconstructs that view.
  `online_augment: {enabled: false}` gives the online encoder the crops Q, K as they are.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from typing import Any

import torch
import torch.nn.functional as F

from alice.models.casa import CASA
from alice.models.decoder import MaskedDecoder
from alice.models.heads import Predictor, ProjectionHead, Prototypes
from alice.models.masked import build_masked_encoder
from alice.errors import ConfigError
from alice.models.configs import ENCODERS
from alice.ssl.augment import MaeAugmentConfig, StrongAugmentConfig, mae_augment, strong_augment
from alice.ssl.encoder import freeze_cross_attention, transferable_state
from alice.ssl.losses import cosine_loss, dino_loss, info_nce, masked_mse, norm_pix, spread, update_center
from alice.ssl.momentum import MomentumMethod
from alice.ssl.registry import register_method

METHOD = {
    "name": "alice",
    "paper": "Jiang et al., ICCV 2023 (this harness's paper)",
    "objective": "masked reconstruction + inter-volume contrast + CASA semantic alignment",
    "views": "matched_pair",
    "encoders": ["vit", "swin", "nnformer"],
    "matcher": True,
    "masking": True,
    # the ablation switches (alice.ssl.variants) and their defaults, the constructor's
    "switches": {
        "inter_volume": True,
        "casa": True,
        "contrastive_loss": "cosine",
        "predictor": True,
        "head_norm": "batch",
        "target_mask_ratio": 0.0,
        "objectives": ["mim", "dv", "st"],
    },
    "smoke": {"decoder": {"dim": 16, "depth": 1, "heads": 2}, "head": {"hidden_dim": 32, "bottleneck_dim": 16},
              "casa_dim": 16, "predictor_hidden_dim": 32},
}
OBJECTIVES = ("mim", "dv", "st")
LOSS_KEYS = {"mim": "r", "dv": "dv", "st": "st"}
CONTRASTIVE_LOSSES = ("cosine", "infonce", "dino")
# DINO (Caron et al. 2021): its ViT recipe's head and temperatures (the authors' released code states
# its own; the paper none)
DINO_DEFAULTS = {"prototypes": 65536, "student_temperature": 0.1, "teacher_temperature": 0.04,
                 "center_momentum": 0.9}


class AliceModel(MomentumMethod):
    """The Alice objective; `forward(batch)` with batch {"Q", "K"} -> {"loss", "l_r", "l_dv", "l_st"}
    plus, for batches of ≥ 2 crops, the collapse monitors "dv_spread" (the student's [cls] of ℓ_dv,
    φ's output) and "st_spread" (CASA's student embeddings S of ℓ_st) when those are computed
    (`spread`, measured before the predictor as SimSiam measures the projector output; no gradient,
    logged beside the losses).

    Registered as SSL method "alice" (`build(method_config, encoder_config, crop)`); the method config
    takes the keyword arguments below except `encoder_config` and `crop`.
    """
    def __init__(
        self,
        encoder_config: Mapping[str, Any],
        crop: Iterable[int],
        decoder: Mapping[str, Any] | None = None,
        head: Mapping[str, Any] | None = None,
        casa_dim: int = 256,
        mask_ratio: float = 0.75,
        target_mask_ratio: float = 0.0,
        momentum: float = 0.996,
        momentum_schedule: str = "cosine",
        inter_volume: bool = True,
        casa: bool = True,
        contrastive_loss: str = "cosine",
        predictor: bool = True,
        head_norm: str = "batch",
        predictor_hidden_dim: int = 4096,
        objectives: Iterable[str] = OBJECTIVES,
        loss_weights: Mapping[str, float] | None = None,
        temperature: float = 0.2,
        dino: Mapping[str, Any] | None = None,
        augment: StrongAugmentConfig | Mapping[str, Any] | None = None,
        online_augment: MaeAugmentConfig | Mapping[str, Any] | None = None,
        method_config: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(method_config, momentum, momentum_schedule)
        self.crop = tuple(int(c) for c in crop)
        self.mask_ratio = float(mask_ratio)
        self.target_mask_ratio = float(target_mask_ratio)
        self.inter_volume = bool(inter_volume)
        self.use_casa = bool(casa)
        if contrastive_loss not in CONTRASTIVE_LOSSES:
            raise ValueError(f"contrastive_loss must be one of {CONTRASTIVE_LOSSES}, got {contrastive_loss!r}")
        self.contrastive_loss = contrastive_loss
        # DINO's centring and sharpening take the predictor's place (module docstring)
        self.use_predictor = bool(predictor) and contrastive_loss != "dino"
        self.objectives = tuple(objectives)
        bad = [o for o in self.objectives if o not in OBJECTIVES]
        if bad:
            raise ValueError(f"unknown objectives {bad}; known: {OBJECTIVES}")
        weights = {"r": 1.0, "dv": 1.0, "st": 1.0}
        weights.update({k: float(v) for k, v in (loss_weights or {}).items()})
        self.loss_weights = weights
        self.temperature = float(temperature)
        unknown = sorted(set(dino or {}) - set(DINO_DEFAULTS))
        if unknown:
            raise ValueError(f"unknown dino settings {unknown}; known: {sorted(DINO_DEFAULTS)}")
        self.dino = {**DINO_DEFAULTS, **(dino or {})}
        if augment is None:
            augment = StrongAugmentConfig()
        elif isinstance(augment, Mapping):
            augment = StrongAugmentConfig(**augment)
        self.augment_config = augment
        if online_augment is None:
            online_augment = MaeAugmentConfig()
        elif isinstance(online_augment, Mapping):
            online_augment = MaeAugmentConfig(**{k: tuple(v) if isinstance(v, list) else v
                                                 for k, v in online_augment.items()})
        self.online_augment_config = online_augment

        self.encoder_config = dict(encoder_config)
        self.encoder = build_masked_encoder(self.encoder_config, self.crop)
        d = self.encoder.embed_dim
        dec = {"dim": 384, "depth": 4, "heads": 12, **(decoder or {})}
        self.decoder = MaskedDecoder(
            d, int(dec["dim"]), int(dec["depth"]), int(dec["heads"]),
            self.encoder.num_patches, self.encoder.patch_voxels, feat_dim=d,
            insert_mask_tokens=not self.encoder.keeps_all_tokens,
        )
        hd = {"hidden_dim": 2048, "bottleneck_dim": 256, **(head or {})}
        unknown = sorted(set(hd) - {"hidden_dim", "bottleneck_dim"})
        if unknown:
            raise ValueError(f"unknown head settings {unknown}; known: hidden_dim, bottleneck_dim")
        self.phi = ProjectionHead(d, int(hd["hidden_dim"]), int(hd["bottleneck_dim"]), norm=head_norm)
        # CASA's keys and values are φ(H) (student) and ψ(Y) (teacher): kv width = the heads' output
        self.casa = CASA(d, int(casa_dim), kv_dim=self.phi.out_dim)
        self.target_encoder = copy.deepcopy(self.encoder)
        self.psi = copy.deepcopy(self.phi)
        if self.use_predictor:
            self.predictor_dv = Predictor(self.phi.out_dim, int(predictor_hidden_dim))
            self.predictor_st = Predictor(int(casa_dim), int(predictor_hidden_dim))
        if contrastive_loss == "dino":
            k = int(self.dino["prototypes"])
            self.prototypes_dv = Prototypes(self.phi.out_dim, k)
            self.prototypes_dv_target = copy.deepcopy(self.prototypes_dv)
            self.prototypes_st = Prototypes(int(casa_dim), k)
            self.register_buffer("center_dv", torch.zeros(k))
            self.register_buffer("center_st", torch.zeros(k))
        self.freeze_targets()
        freeze_cross_attention(self)
        # a switched-off term leaves φ / CASA / the voxel head / a predictor without gradient
        self.find_unused_parameters = not (
            set(self.objectives) == set(OBJECTIVES) and self.inter_volume and self.use_casa
        )
        self.last_masks: tuple[torch.Tensor, torch.Tensor] | None = None

    def encoder_state_dict(self) -> dict[str, torch.Tensor]:
        """The online encoder's weights under the key names of the segmentation network's encoder
        (UNETR `vit`, Swin UNETR `swinViT`, nnFormer `encoder`); never the mask token."""
        return transferable_state(self.encoder)

    # ------------------------------------------------------------------ EMA (alice.ssl.momentum)
    def ema_pairs(self) -> list[tuple[torch.nn.Module, torch.nn.Module]]:
        """(encoder → target encoder), (φ → ψ) and, DINO-style, (ℓ_dv prototypes → their teacher
        copy); the predictors have no EMA copy."""
        pairs = [(self.encoder, self.target_encoder), (self.phi, self.psi)]
        if self.contrastive_loss == "dino":
            pairs.append((self.prototypes_dv, self.prototypes_dv_target))
        return pairs

    # ------------------------------------------------------------------ losses
    def _ls(self, student: torch.Tensor, teacher: torch.Tensor, term: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        """ℓ_s of one (student, teacher) pair of term "dv" (pooled [cls], also ℓ_st with `casa=False`) or
        "st" (CASA tokens); returns (loss, the teacher's prototype logits for DINO's centre or None)."""
        if self.contrastive_loss == "dino":
            online = self.prototypes_st if term == "st" else self.prototypes_dv
            with torch.no_grad():
                t_logits = online(teacher) if term == "st" else self.prototypes_dv_target(teacher)
            center = self.center_st if term == "st" else self.center_dv
            loss = dino_loss(online(student), t_logits, center, float(self.dino["student_temperature"]),
                             float(self.dino["teacher_temperature"]))
            return loss, t_logits
        if self.use_predictor:
            student = (self.predictor_st if term == "st" else self.predictor_dv)(student)
        if self.contrastive_loss == "infonce":
            return info_nce(student, teacher, self.temperature), None
        return cosine_loss(student, teacher), None

    def _update_center(self, center: torch.Tensor, teacher_logits: list[torch.Tensor]) -> None:
        update_center(center, teacher_logits, float(self.dino["center_momentum"]))

    def _online(self, x: torch.Tensor, generator: torch.Generator | None) -> dict[str, torch.Tensor]:
        x = mae_augment(x, generator, self.online_augment_config)  # MAE's augmentation, then masking
        v, mask, ids_restore = self.encoder(x, self.mask_ratio, generator=generator)
        pred, h = self.decoder(v, ids_restore)
        return {"x": x, "V": v, "mask": mask, "pred": pred, "H": h}

    @torch.no_grad()
    def _target(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """ψ(Y) per token of the strongly augmented view (the paper's Y, §3.2)."""
        xa = strong_augment(x, generator, self.augment_config)
        y, _, _ = self.target_encoder(xa, self.target_mask_ratio, generator=generator)
        return self.psi(y)

    def forward(
        self, batch: Mapping[str, torch.Tensor], generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        q, k = batch["Q"], batch["K"]
        zero = q.new_zeros(())
        on_q, on_k = self._online(q, generator), self._online(k, generator)  # u, r
        dv = "dv" in self.objectives and self.inter_volume
        need_target = dv or "st" in self.objectives
        out = {"l_r": zero, "l_dv": zero, "l_st": zero}
        centers: dict[str, list[torch.Tensor]] = {"dv": [], "st": []}

        def ls(student, teacher, term):
            loss, t_logits = self._ls(student, teacher, term)
            if t_logits is not None:
                centers[term].append(t_logits)
            return loss

        if "mim" in self.objectives:
            l_r = zero
            for on in (on_q, on_k):  # the target is the augmented view the encoder saw
                l_r = l_r + masked_mse(on["pred"], norm_pix(self.encoder.patchify(on["x"])), on["mask"])
            out["l_r"] = l_r

        if need_target:
            y_w, y_v = self._target(q, generator), self._target(k, generator)  # Y_w^Q, Y_v^K (ψ applied)
            h_u, h_r = self.phi(on_q["H"]), self.phi(on_k["H"])               # H_u^Q, H_r^K (φ applied)
            cls_u, cls_r, cls_w, cls_v = h_u.mean(1), h_r.mean(1), y_w.mean(1), y_v.mean(1)
            if dv:
                out["l_dv"] = ls(cls_u, cls_v, "dv") + ls(cls_r, cls_w, "dv")  # eq. 2
                if q.shape[0] > 1:
                    out["dv_spread"] = spread(torch.cat([cls_u, cls_r]))
            if "st" in self.objectives:
                if self.use_casa:
                    s_u = self.casa(on_q["V"], h_u)  # eqs. 3–4: query V, keys/values φ(H)
                    s_r = self.casa(on_k["V"], h_r)
                    with torch.no_grad():  # the whole teacher side is stop-gradient
                        t_w = self.casa(on_q["V"], y_w)  # keys/values ψ(Y)
                        t_v = self.casa(on_k["V"], y_v)
                    out["l_st"] = ls(s_u, t_w, "st") + ls(s_r, t_v, "st")  # eq. 5
                    if q.shape[0] > 1:
                        out["st_spread"] = spread(torch.cat([s_u, s_r]))
                else:
                    out["l_st"] = ls(cls_u, cls_w, "dv") + ls(cls_r, cls_v, "dv")

        if self.training:
            for term, logits in centers.items():
                if logits:
                    self._update_center(self.center_st if term == "st" else self.center_dv, logits)
        w = self.loss_weights
        out["loss"] = w["r"] * out["l_r"] + w["dv"] * out["l_dv"] + w["st"] * out["l_st"]
        self.last_masks = (on_q["mask"].detach(), on_k["mask"].detach())  # (B, N) True = masked, for tests
        return out


_KWARGS = (
    "decoder", "head", "casa_dim", "mask_ratio", "target_mask_ratio", "momentum", "momentum_schedule",
    "inter_volume", "casa", "contrastive_loss", "predictor", "predictor_hidden_dim", "head_norm", "objectives",
    "loss_weights", "temperature", "dino", "augment", "online_augment",
)


@register_method("alice")
def build(method_config: Mapping[str, Any], encoder_config: Mapping[str, Any], crop) -> AliceModel:
    cfg = dict(method_config or {})
    unknown = sorted(k for k in cfg if k not in _KWARGS)
    if unknown:
        raise ConfigError(f"pretrain.method_config.{unknown[0]}", f"unknown key for method 'alice' (known: {', '.join(_KWARGS)})")
    if encoder_config.get("name", "vit") not in ENCODERS:
        raise ConfigError("pretrain.encoders", f"unknown encoder {encoder_config.get('name')!r} "
                                               f"(known: {', '.join(ENCODERS)})")
    try:
        return AliceModel(encoder_config, crop, method_config=cfg, **cfg)
    except (TypeError, ValueError) as e:
        raise ConfigError("pretrain.method_config", str(e)) from e
