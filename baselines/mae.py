"""MAE: masked autoencoders (He et al., "Masked Autoencoders Are Scalable Vision Learners", CVPR
2022), in 3-D on the harness's three encoders.

Objective (MAE §3): a random `mask_ratio` of the crop's patches is masked; the encoder sees the
visible ones, a lightweight decoder predicts the voxels of every patch, and the loss is the mean
squared error on the masked patches only ("we compute the loss only on masked patches", §3
"Reconstruction target"), against per-patch normalised voxels when `norm_pix_loss` (MAE's
default of its released recipe, §3 "normalized pixels" variant, Table 1d):

    ℓ = Σ_{p masked} ‖x̂_p − norm(x_p)‖² / |x_p| / #masked          (alice.ssl.losses.masked_mse)

Views: one crop (MAE's random resized crop and flip, `augment`, alice.ssl.augment.mae_augment).
Encoders: the ViT drops the masked patches (MAE proper); Swin and nnFormer replace them by a mask
token (SimMIM, Xie et al. 2022: the hierarchical encoders need the whole grid; alice.models.masked
says why) — the same masked-encoder interface Alice uses.

Logged: `l_r` and two spreads (alice.ssl.losses.spread): `spread`, of the crops' pooled encoder
embeddings across the batch (the monitor Alice's and the contrastive methods' heads get), and
`token_spread`, of every visible token of the batch. MAE has no embedding loss that could collapse;
its pooled features share a large common direction (anisotropic, as MAE's features are before
fine-tuning), so `spread` runs low while `token_spread` shows whether the tokens stay distinct.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from alice.models.decoder import MaskedDecoder
from alice.ssl.augment import MaeAugmentConfig, mae_augment
from alice.ssl.encoder import build_encoder, pool, transferable_state
from alice.ssl.losses import masked_mse, norm_pix, spread
from alice.ssl.registry import SSLMethod, checked_build, register_method

METHOD = {
    "name": "mae",
    "paper": "He et al., CVPR 2022",
    "objective": "masked reconstruction of per-patch normalised voxels",
    "views": "crop",
    "encoders": ["vit", "swin", "nnformer"],
    "masking": True,
    "smoke": {"decoder": {"dim": 16, "depth": 1, "heads": 2}},
}


class MAE(SSLMethod):
    def __init__(self, encoder_config: Mapping[str, Any], crop, mask_ratio: float = 0.75,
                 decoder: Mapping[str, Any] | None = None, norm_pix_loss: bool = True,
                 augment: Mapping[str, Any] | None = None, method_config: Mapping[str, Any] | None = None):
        super().__init__(method_config)
        if not 0.0 < float(mask_ratio) < 1.0:
            raise ValueError(f"mask_ratio must be in (0, 1), got {mask_ratio!r}")
        self.mask_ratio = float(mask_ratio)
        self.norm_pix_loss = bool(norm_pix_loss)
        self.augment = MaeAugmentConfig(**{k: tuple(v) if isinstance(v, list) else v
                                           for k, v in dict(augment or {}).items()})
        self.encoder = build_encoder(encoder_config, crop)
        d = self.encoder.embed_dim
        dec = {"dim": 384, "depth": 4, "heads": 12, **(decoder or {})}
        unknown = sorted(set(dec) - {"dim", "depth", "heads"})
        if unknown:
            raise ValueError(f"unknown decoder settings {unknown}; known: dim, depth, heads")
        self.decoder = MaskedDecoder(d, int(dec["dim"]), int(dec["depth"]), int(dec["heads"]),
                                     self.encoder.num_patches, self.encoder.patch_voxels,
                                     insert_mask_tokens=not self.encoder.keeps_all_tokens)

    def encoder_state_dict(self) -> dict[str, torch.Tensor]:
        return transferable_state(self.encoder)

    def forward(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x = mae_augment(batch["x"], None, self.augment)
        tokens, mask, ids_restore = self.encoder(x, self.mask_ratio)
        pred, _ = self.decoder(tokens, ids_restore)
        target = self.encoder.patchify(x)
        if self.norm_pix_loss:
            target = norm_pix(target)
        loss = masked_mse(pred.float(), target.float(), mask)
        out = {"loss": loss, "l_r": loss.detach()}
        if x.shape[0] > 1:
            out["spread"] = spread(pool(tokens))
            out["token_spread"] = spread(tokens.reshape(-1, tokens.shape[-1]))
        return out


_KWARGS = ("mask_ratio", "decoder", "norm_pix_loss", "augment")


@register_method("mae")
def build(method_config: Mapping[str, Any], encoder_config: Mapping[str, Any], crop) -> MAE:
    return checked_build("mae", MAE, _KWARGS, method_config, encoder_config, crop)
