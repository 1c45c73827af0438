"""Classification networks of the MosMed task (paper supplementary B.3): an encoder, global
average pooling and one linear layer ("we extract the pretrained online encoder and appended a FC
layer with the output channel as the number of classes").

- `ViTClassifier`: `alice.models.vit.ViTEncoder` (key-for-key MONAI UNETR's `vit`, so a pretraining
  checkpoint loads strictly, as into UNETR) -> mean over all tokens -> `Linear(embed_dim, classes)`.
- `ResNetClassifier`: MONAI's 3-D ResNet (`monai.networks.nets.resnet.ResNet`, without its own fc)
  -> its global average pooling -> `Linear(width, classes)`.
- `classification.head_norm.<backbone>: batchnorm` puts a `BatchNorm1d` without affine parameters
  between the pooled features and the linear layer (MAE's linear-probing head, He et al. 2022);
  "none" is the paper's plain FC layer. Why the demo ViT needs it: its pooled features (a mean of
  LayerNorm-ed tokens) differ between volumes by ~0.1 of their size, so from scratch a plain linear
  head needs weights far larger than AdamW reaches in a short run; the network settles on the
  class prior instead (logits equal for every volume, train AUC 0.5). Standardising the features
  across the batch removes that scale problem; the encoder is untouched, so checkpoints load as
  before.

Both expose `encoder` (what a pretraining checkpoint fills) and `head`; the registry entries live
in `alice.downstream.networks`.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from alice.models.vit import ViTEncoder

HEAD_NORMS = ("none", "batchnorm")


def classification_head(features: int, num_classes: int, head_norm: str = "none") -> nn.Module:
    """The FC layer on the pooled features, optionally behind an affine-free BatchNorm1d."""
    if head_norm not in HEAD_NORMS:
        raise ValueError(f"head_norm must be one of {HEAD_NORMS}, got {head_norm!r}")
    linear = nn.Linear(features, num_classes)
    if head_norm == "none":
        return linear
    return nn.Sequential(nn.BatchNorm1d(features, affine=False), linear)


class ViTClassifier(nn.Module):
    def __init__(self, encoder: ViTEncoder, num_classes: int, head_norm: str = "none"):
        super().__init__()
        self.encoder = encoder
        self.head = classification_head(encoder.embed_dim, num_classes, head_norm)

    @property
    def feat_size(self) -> tuple[int, int, int]:
        """The token grid (read by the loader to interpolate pretrained position embeddings)."""
        return self.encoder.grid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens, _, _ = self.encoder(x)  # no masking: every token, after the final LayerNorm
        return self.head(tokens.mean(dim=1))


class ResNetClassifier(nn.Module):
    def __init__(self, depth: int, widen_factor: float, num_classes: int, in_channels: int = 1,
                 head_norm: str = "none"):
        super().__init__()
        from alice.models.cnn import resnet_encoder

        # the encoder of alice.models.cnn's ResNet U-Net, key for key (a CNN checkpoint loads into both)
        self.encoder = resnet_encoder(depth, widen_factor, in_channels)
        # in_planes: the last stage's width
        self.head = classification_head(self.encoder.in_planes, num_classes, head_norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))  # the encoder ends in global average pooling + flatten


def vit_classifier(encoder_config, input_size: Sequence[int], num_classes: int,
                   head_norm: str = "none") -> ViTClassifier:
    return ViTClassifier(ViTEncoder.from_config(encoder_config, img_size=tuple(input_size)), num_classes,
                         head_norm)
