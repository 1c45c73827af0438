"""SIM: Siamese Image Modeling (Tao et al., "Siamese Image Modeling for Self-Supervised Vision
Representation Learning", CVPR 2023), in 3-D on the harness's three encoders.

Objective (SIM §3): two augmented views x_a, x_b of one crop. The online branch encodes the MASKED
view x_a (encoder f_θ, then the projector g_θ), and its decoder h_θ predicts, at every patch
position of view b, the dense representation that the momentum branch computes from the intact
view b (target encoder f_ξ and projector g_ξ, EMAs of f_θ and g_θ):

    ŷ_b = h_θ( g_θ(f_θ(mask(x_a))) + pos_a ,  [mask token + pos_{b|a}]_{j=1..N} )     (B, N, C)
    y_b = LN( g_ξ(f_ξ(x_b)) )                                                        (B, N, C)
    ℓ   = ( mean_j ‖ŷ_j − y_j‖² + λ · mean_j ŷ_jᵀ F ŷ_j ) / C,   F = mean_j y_j y_jᵀ

the UniGrad loss (Tao et al., CVPR 2022: gradient −y + λ·F·ŷ, positive term plus a negative term
over the targets' correlation matrix F, which keeps the dense features from collapsing without
negative pairs; alice.ssl.losses.unigrad_loss) over every token of the batch, λ = `neg_weight`
(0.02), LN a LayerNorm without affine parameters on the target tokens, as in the authors' released
implementation (the loss's normalisations are written as released; SIM's text names UniGrad as its
single dense loss). EMA momentum from `momentum` (0.995) to 1 by a cosine (alice.ssl.momentum).

pos_{b|a}, the cross-view position embedding (SIM's "relative positions between the two views"):
the centre of view b's patch j is mapped through both views' boxes and flips into view a's patch
grid (view a's patch i sits at its own index i), then encoded, with the size ratio of the views'
boxes, by sine-cosine features (`CrossViewPosition`: 3 coordinates and 3 log size ratios, ×10 as
released, each at dim/12 frequencies, then one Linear). The visible tokens get the same embedding
at their own positions (ratio 1), so a query standing where a visible token stands gets exactly
that token's position embedding. A query may lie outside view a (the views need not overlap): it
is predicted from context, as in SIM.

3-D decisions:
- Views: `alice.ssl.views`' `two_views` returns augmented tensors without their geometry (its
  random resized crop is followed by a rotation), so SIM declares `crop` views and cuts both views
  itself inside `forward` (as MAE does with mae_augment) with `alice.ssl.augment.box_view`: a
  random resized crop (`augment.scale_range` of the crop's voxels, aspect ratios in
  `ratio_range`), flips of `flip_axes` (SIM's horizontal flip = axis 0, left-right of the RAS
  volumes), intensity scale/shift in place of SIM's colour jitter, blur and solarisation (CT has one
  channel); no rotation, so the views' relative positions are exact. The draws come from the global
  RNG, which the trainer reseeds every step (resumable).
- Masking: the shared encoders' (alice.models.masked): the ViT drops the masked 16³ patches (SIM's
  ViT encodes only the visible tokens); Swin and nnFormer replace masked bottleneck units by a mask
  token (SimMIM) and return all N tokens, all of which the decoder takes with their positions.
  Random masking at the shared `pretrain.mask_ratio` (SIM's ViT-B recipe masks blocks, BEiT-style).
- No [CLS] token (the 3-D encoders have none; SIM's loss is on the patch tokens only anyway).
- Projector g = Linear(encoder width → `decoder.dim`) + `projector_depth` transformer blocks;
  decoder h = `decoder.depth` transformer blocks over [visible tokens, N queries] + Linear; with
  `block_norm="batch"` (default) their LayerNorms are BatchNorms over every token of the batch (the
  released recipe's default; "layer" keeps MONAI's LayerNorm). The target projector, the EMA of
  the online one, normalises with its own batch's statistics.
- Not used: the released code's frozen random patch embedding (MoCo v3's stability trick; the
  harness's MoCo v3 trains it too).

Logged: `l_sim` (= loss), its terms `l_pos` and `l_neg` (before λ), and two collapse monitors
(alice.ssl.losses.spread) of the normalised targets y: `spread`, of the crops' pooled targets across
the batch, and `token_spread`, of every target token of the batch (dense collapse: all tokens one
point).

Switches (alice.ssl.variants; `METHOD["switches"]`, each a constructor argument):
- `casa` (default False: SIM as published). Alice's Table 6, "SIM w/. vs. w/o. CASA" ("We apply the
  CASA on different siamese SSL architectures which take masked view and unmasked view as inputs"),
  run id `sim__casa-true`. The paper does not spell out where CASA sits in SIM; this is the
  harness's reading, the counterpart of Alice's ℓ_st (alice.ssl.alice): CASA (alice.models.casa,
  the paper's eqs. 3–4) takes as query V_a the online encoder's tokens of the masked view a (the
  encoder's output as returned: the ViT's visible tokens, Swin's and nnFormer's N units), and as
  keys and values either the decoder's predictions ŷ_b (student) or the momentum targets y_b
  (teacher), so both are re-expressed at view a's tokens by attention instead of being compared
  position by position:

      ATT(V, K) = softmax( LN(V) W_q (LN(K) W_k)ᵀ / √C )                   eq. 3
      S = CASA(V_a, ŷ_b) = ζ( ATT(V_a, ŷ_b) · LN(ŷ_b) W_ν )   (B, N_a, C)   eq. 4
      T = CASA(V_a, y_b) = ζ( ATT(V_a, y_b) · LN(y_b) W_ν )    (B, N_a, C)
      ℓ = UniGrad(S, LN(T))   over every query token of the batch

  One CASA module (query width = the encoder's, C = `decoder.dim` for the projections and the
  keys/values), online only: not an EMA pair, not in the checkpoint's encoder. T is computed under
  `torch.no_grad()` as a whole (as Alice's teacher T), so CASA's weights and V_a get gradient
  through S only; LN is the loss's target normalisation (LayerNorm without affine), as on y_b
  without CASA. CASA is built after every other module, so with `casa=False` the model, its random
  draws and its loss are exactly those of SIM without the switch. Logged with it: `casa_spread`
  (alice.ssl.losses.spread of S).
"""

from __future__ import annotations

import copy
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from monai.networks.blocks import TransformerBlock
from torch import nn

from alice.models.casa import CASA
from alice.ssl.augment import BoxViewConfig, box_view
from alice.ssl.encoder import build_encoder, freeze_cross_attention, pool, transferable_state
from alice.ssl.losses import spread, unigrad_loss
from alice.ssl.momentum import MomentumMethod
from alice.ssl.registry import checked_build, register_method

METHOD = {
    "name": "sim",
    "paper": "Tao et al., CVPR 2023",
    "objective": "masked view predicts the intact view's momentum-encoder tokens at cross-view positions (UniGrad loss)",
    "views": "crop",
    "encoders": ["vit", "swin", "nnformer"],
    "masking": True,
    # the ablation switches (alice.ssl.variants) and their defaults, the constructor's
    "switches": {"casa": False},
    "smoke": {"decoder": {"dim": 16, "depth": 1, "heads": 2}, "projector_depth": 1},
}
BLOCK_NORMS = ("batch", "layer")


def grid_indices(grid: Sequence[int]) -> torch.Tensor:
    """(N, 3) float (x, y, z) index of every patch of `grid`, in the tokens' (x, y, z) raster order."""
    axes = [torch.arange(int(g), dtype=torch.float32) for g in grid]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)


def cross_view_positions(box_a: Sequence[torch.Tensor], box_b: Sequence[torch.Tensor], grid: Sequence[int]
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Where view b's patches lie in view a's patch grid: box = (frac, centre, flip) of
    `alice.ssl.augment.box_view`, each (B, 3). Returns the (B, N, 3) positions of the centres of
    view b's N patches (raster order) in view a's patch-index units (patch i of view a at i) and
    the (B, 3) log size ratio log(frac_b / frac_a) (a view-b patch measured in view-a patches)."""
    frac_a, centre_a, flip_a = (t.float() for t in box_a)
    frac_b, centre_b, flip_b = (t.float() for t in box_b)
    g = torch.tensor([float(v) for v in grid], device=frac_a.device)
    t_b = (2.0 * grid_indices(grid).to(frac_a.device) + 1.0) / g - 1.0    # patch centres in view b, [-1, 1]
    sign_a, sign_b = 1.0 - 2.0 * flip_a, 1.0 - 2.0 * flip_b
    crop = centre_b[:, None] + (frac_b * sign_b)[:, None] * t_b[None]        # in the crop's coordinates
    t_a = sign_a[:, None] * (crop - centre_a[:, None]) / frac_a[:, None]     # in view a's coordinates
    return (t_a + 1.0) * g / 2.0 - 0.5, torch.log(frac_b / frac_a)


class TokenBatchNorm(nn.Module):
    """BatchNorm over every token of the batch, (..., C), always with the current batch's
    statistics (the target projector, an EMA copy kept in eval mode, normalises its own batch)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(dim, track_running_stats=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(x.reshape(-1, x.shape[-1])).reshape(x.shape)


def transformer_block(dim: int, heads: int, norm: str, mlp_ratio: float = 4.0) -> TransformerBlock:
    block = TransformerBlock(dim, int(dim * mlp_ratio), heads, 0.0, qkv_bias=True)
    if norm == "batch":
        block.norm1, block.norm2 = TokenBatchNorm(dim), TokenBatchNorm(dim)
    return block


class CrossViewPosition(nn.Module):
    """Position embedding of a token at a (continuous) patch-grid position of view a, of a view
    whose patches are exp(log_scale) view-a patches large: sine and cosine of the 3 coordinates and
    of 10·log_scale at `dim // 12` frequencies 1/10000^(k/K), then a Linear to `dim`."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.freqs = max(1, dim // 12)
        self.proj = nn.Linear(12 * self.freqs, dim)

    def forward(self, pos: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
        """pos (B, N, 3), log_scale (B, 3) -> (B, N, dim)."""
        omega = 1.0 / 10000.0 ** (torch.arange(self.freqs, device=pos.device, dtype=torch.float32) / self.freqs)
        v = torch.cat([pos.float(), (10.0 * log_scale.float())[:, None].expand_as(pos)], dim=-1)  # (B, N, 6)
        a = v[..., None] * omega                                                                 # (B, N, 6, K)
        return self.proj(torch.cat([a.sin(), a.cos()], dim=-1).flatten(-2).to(self.proj.weight.dtype))


class TokenProjector(nn.Module):
    """SIM's projector g: Linear(in_dim → dim), then `depth` transformer blocks."""

    def __init__(self, in_dim: int, dim: int, depth: int, heads: int, norm: str) -> None:
        super().__init__()
        self.embed = nn.Linear(in_dim, dim)
        self.blocks = nn.ModuleList([transformer_block(dim, heads, norm) for _ in range(depth)])

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens)
        for blk in self.blocks:
            x = blk(x)
        return x


class CrossViewDecoder(nn.Module):
    """SIM's decoder h: the projected tokens of view a at their positions and one mask-token query
    per patch of view b at its cross-view position go through `depth` transformer blocks; the
    queries' outputs, through a Linear, are the predictions ŷ_b (B, N, dim)."""

    def __init__(self, dim: int, depth: int, heads: int, norm: str) -> None:
        super().__init__()
        self.position = CrossViewPosition(dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.blocks = nn.ModuleList([transformer_block(dim, heads, norm) for _ in range(depth)])
        self.pred = nn.Linear(dim, dim)
        nn.init.trunc_normal_(self.mask_token, std=0.02)

    def forward(self, h: torch.Tensor, pos_a: torch.Tensor, pos_b: torch.Tensor, log_scale: torch.Tensor
                ) -> torch.Tensor:
        b, n_a = h.shape[0], h.shape[1]
        seen = h + self.position(pos_a, log_scale.new_zeros(b, 3)).to(h.dtype)
        queries = self.mask_token.to(h.dtype).expand(b, pos_b.shape[1], -1) + self.position(pos_b, log_scale).to(h.dtype)
        x = torch.cat([seen, queries], dim=1)
        for blk in self.blocks:
            x = blk(x)
        return self.pred(x[:, n_a:])


class SIM(MomentumMethod):
    def __init__(self, encoder_config: Mapping[str, Any], crop, mask_ratio: float = 0.75,
                 decoder: Mapping[str, Any] | None = None, projector_depth: int = 2, block_norm: str = "batch",
                 neg_weight: float = 0.02, momentum: float = 0.995, momentum_schedule: str = "cosine",
                 augment: Mapping[str, Any] | None = None, casa: bool = False,
                 method_config: Mapping[str, Any] | None = None):
        super().__init__(method_config, momentum, momentum_schedule)
        if not 0.0 < float(mask_ratio) < 1.0:
            raise ValueError(f"mask_ratio must be in (0, 1), got {mask_ratio!r}")
        if float(neg_weight) < 0:
            raise ValueError(f"neg_weight must be >= 0, got {neg_weight!r}")
        if block_norm not in BLOCK_NORMS:
            raise ValueError(f"block_norm must be one of {BLOCK_NORMS}, got {block_norm!r}")
        if int(projector_depth) < 0:
            raise ValueError(f"projector_depth must be >= 0, got {projector_depth!r}")
        if not isinstance(casa, bool):
            raise ValueError(f"casa must be true or false, got {casa!r}")
        self.mask_ratio = float(mask_ratio)
        self.neg_weight = float(neg_weight)
        self.augment = BoxViewConfig.from_mapping(augment)
        lo, hi = (float(v) for v in self.augment.scale_range)
        if not 0.0 < lo <= hi <= 1.0:
            raise ValueError(f"augment.scale_range must be [lo, hi] with 0 < lo <= hi <= 1, got {list(self.augment.scale_range)}")
        if any(int(a) not in (0, 1, 2) for a in self.augment.flip_axes):
            raise ValueError(f"augment.flip_axes must be among 0, 1, 2, got {list(self.augment.flip_axes)}")
        dec = {"dim": 512, "depth": 4, "heads": 16, **(decoder or {})}
        unknown = sorted(set(dec) - {"dim", "depth", "heads"})
        if unknown:
            raise ValueError(f"unknown decoder settings {unknown}; known: dim, depth, heads")
        dim, depth, heads = int(dec["dim"]), int(dec["depth"]), int(dec["heads"])
        if depth < 1:
            raise ValueError(f"decoder.depth must be >= 1 (the queries see view a only through it), got {depth}")
        self.encoder = build_encoder(encoder_config, crop)
        self.grid = tuple(int(g) for g in self.encoder.grid)
        self.projector = TokenProjector(self.encoder.embed_dim, dim, int(projector_depth), heads, block_norm)
        self.decoder = CrossViewDecoder(dim, depth, heads, block_norm)
        nn.init.trunc_normal_(self.projector.embed.weight, std=0.02)
        nn.init.zeros_(self.projector.embed.bias)
        self.target_encoder = copy.deepcopy(self.encoder)
        self.target_projector = copy.deepcopy(self.projector)
        self.freeze_targets()
        freeze_cross_attention(self)
        # the `casa` switch: built last, so the modules above draw the same initial weights either way
        self.casa = CASA(self.encoder.embed_dim, dim, kv_dim=dim) if casa else None

    def ema_pairs(self):
        return [(self.encoder, self.target_encoder), (self.projector, self.target_projector)]

    def encoder_state_dict(self) -> dict[str, torch.Tensor]:
        return transferable_state(self.encoder)

    def views(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple, tuple]:
        """The two views of the crops x and their boxes (alice.ssl.augment.box_view)."""
        xa, *box_a = box_view(x, None, self.augment)
        xb, *box_b = box_view(x, None, self.augment)
        return xa, xb, tuple(box_a), tuple(box_b)

    def predict(self, xa: torch.Tensor, box_a, box_b) -> tuple[torch.Tensor, torch.Tensor]:
        """ŷ_b (B, N, dim) from the masked view a, and the (B, N_t) raster index of each token the
        encoder returned (the ViT's visible patches, every unit for Swin and nnFormer)."""
        pred, ids, _ = self.encode_and_predict(xa, box_a, box_b)
        return pred, ids

    def encode_and_predict(self, xa: torch.Tensor, box_a, box_b
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`predict`'s (ŷ_b, ids) and the online encoder's tokens V_a (B, N_t, width) of view a."""
        tokens, _, ids_restore = self.encoder(xa, self.mask_ratio)
        ids = torch.argsort(ids_restore, dim=1)[:, : tokens.shape[1]]  # raster index of each returned token
        pos_a = grid_indices(self.grid).to(tokens.device)[ids]           # (B, N_t, 3)
        pos_b, log_scale = cross_view_positions(box_a, box_b, self.grid)
        pred = self.decoder(self.projector(tokens), pos_a, pos_b.to(tokens.device), log_scale.to(tokens.device))
        return pred, ids, tokens

    def aligned(self, v: torch.Tensor, pred: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The `casa` switch: S = CASA(V_a, ŷ_b) and T = LN(CASA(V_a, y_b)), (B, N_t, dim) each, T
        wholly without gradient (eqs. 3–4; the module docstring)."""
        s = self.casa(v, pred)
        with torch.no_grad():  # the whole teacher side is stop-gradient, as Alice's T
            t = self.casa(v, y).float()
            t = F.layer_norm(t, (t.shape[-1],))
        return s, t

    @torch.no_grad()
    def target(self, xb: torch.Tensor) -> torch.Tensor:
        """y_b (B, N, dim): the momentum branch on the intact view b, LayerNorm without affine."""
        y = self.target_projector(self.target_encoder(xb, 0.0)[0]).float()
        return F.layer_norm(y, (y.shape[-1],))

    def forward(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        xa, xb, box_a, box_b = self.views(batch["x"])
        pred, _, v = self.encode_and_predict(xa, box_a, box_b)
        y = self.target(xb)
        if self.casa is None:
            student, teacher = pred, y
        else:
            student, teacher = self.aligned(v, pred, y)
        loss, pos, neg = unigrad_loss(student.float(), teacher, self.neg_weight)
        out = {"loss": loss, "l_sim": loss.detach(), "l_pos": pos, "l_neg": neg}
        if y.shape[0] > 1:
            out["spread"] = spread(pool(y))
            out["token_spread"] = spread(y.reshape(-1, y.shape[-1]))
            if self.casa is not None:
                out["casa_spread"] = spread(student)
        return out


_KWARGS = ("mask_ratio", "decoder", "projector_depth", "block_norm", "neg_weight", "momentum", "momentum_schedule",
           "augment", "casa")


@register_method("sim")
def build(method_config: Mapping[str, Any], encoder_config: Mapping[str, Any], crop) -> SIM:
    return checked_build("sim", SIM, _KWARGS, method_config, encoder_config, crop)
