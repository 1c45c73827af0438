"""The online encoder every method trains, built once here: one of the three pretraining encoders
(ViT, Swin, nnFormer) behind the masked-encoder interface of alice.models.masked, so a method is
written once for all three.

- `build_encoder(encoder_config, crop)`: the encoder for crops of `crop` voxels;
- `pool(tokens)`: the global embedding of a crop, the average of its tokens (the 3-D encoders
  carry no [CLS] token; DINO and MoCo v3 pool it, so the average takes its place);
- `transferable_state(encoder)`: the weights a checkpoint carries, under the key names of the
  segmentation network's encoder (UNETR `vit`, Swin UNETR `swinViT`, nnFormer `encoder`).

The convolutional family (alice.models.cnn) is a whole encoder-decoder network instead:
`build_cnn_body(encoder_config, crop)` (`body.encode(x)` -> levels, `body.decode(levels)` -> decoder
levels, the last the dense features), `cnn_state(body)` its checkpoint, `global_embedding(map)`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Sequence

import torch
from torch import nn

from alice.models.masked import build_masked_encoder

if TYPE_CHECKING:
    from alice.models.cnn import CNNBody


def freeze_cross_attention(module: nn.Module) -> None:
    """MONAI's TransformerBlock always builds `norm_cross_attn`, unused without cross-attention: keep
    it (it is part of UNETR's state dict) but never optimise it, so DDP sees no unused parameter."""
    for name, p in module.named_parameters():
        if "cross_attn" in name:
            p.requires_grad_(False)


def build_encoder(encoder_config: Mapping[str, Any], crop: Sequence[int], masking: bool = True) -> nn.Module:
    """`masking=False`: a method that never masks; the hierarchical encoders' mask token is then
    frozen (it would get no gradient, which DistributedDataParallel refuses)."""
    encoder = build_masked_encoder(dict(encoder_config), tuple(int(c) for c in crop))
    freeze_cross_attention(encoder)
    if not masking and isinstance(getattr(encoder, "mask_token", None), nn.Parameter):
        encoder.mask_token.requires_grad_(False)
    return encoder


def pool(tokens: torch.Tensor) -> torch.Tensor:
    """(B, N, D) tokens -> (B, D), their average."""
    return tokens.mean(1)


def transferable_state(encoder: nn.Module) -> dict[str, torch.Tensor]:
    """The encoder's transferable weights (never a mask token), detached copies."""
    return {k: v.detach().clone() for k, v in encoder.transferable.state_dict().items()}


# ------------------------------------------------------------------------------- convolutional
def build_cnn_body(encoder_config: Mapping[str, Any], crop: Sequence[int]) -> "CNNBody":
    """The convolutional network a CNN-family method pretrains (alice.models.cnn: resnet3d, unet3d,
    nsunet3d, unet, vnet), for crops of `crop` voxels (a multiple of its stride)."""
    from alice.models.cnn import build_cnn
    from alice.models.configs import check_crop

    check_crop(encoder_config, list(crop), f"pretrain.crop.{encoder_config.get('name')}")
    return build_cnn(encoder_config)


def cnn_state(body: nn.Module) -> dict[str, torch.Tensor]:
    """A CNN method's checkpoint: the whole network, encoder and decoder (each fine-tuning backbone
    takes its part, alice.downstream.networks)."""
    from alice.models.cnn import transferable_parts

    return transferable_parts(body, "encoder_decoder")


def global_embedding(feature_map: torch.Tensor) -> torch.Tensor:
    """(B, C, X, Y, Z) -> (B, C), global average pooling (a CNN's crop embedding)."""
    return feature_map.mean(dim=(2, 3, 4))
