"""Segmentation networks for fine-tuning, one builder per backbone in a single registry.

    net = build_segmentation_network("unetr", num_classes=14, settings=cfg["finetune"]["unetr"],
                                     encoder_config={"name": "vit", **cfg["pretrain"]["encoders"]["vit"]})

A backbone is one `Backbone` entry in `BACKBONES`: the encoder it takes weights from (`encoder`:
its `pretrain.encoders` entry, its checkpoints `results/pretrain/<method>/<encoder>/`), the encoder
architecture fields that must match a checkpoint (alice.models.configs.FIELDS), a builder, and
the accessor of the encoder sub-module whose state dict a pretraining checkpoint holds (see
`alice.downstream.transfer`):

    unetr       MONAI UNETR            encoder vit       sub-module net.vit
    swin_unetr  MONAI SwinUNETR        encoder swin      sub-module net.swinViT
    nnformer    alice.models.nnformer  encoder nnformer  sub-module net.encoder

The convolutional backbones (alice.models.cnn, paper Table 2) are the network their pretraining
trained plus a 1³ output convolution; a checkpoint holds the whole network (encoder and decoder),
and a backbone takes the part Table 2 says ("Pre-trained Parts"):

    resnet_unet  3D ResNet + U-Net decoder  encoder resnet3d  E.     net.body.encoder
    unet3d       3D U-Net (BasicUNet)       encoder unet3d    E.&D.  net.body
    nsunet3d     nnU-Net's U-Net (DynUNet)  encoder nsunet3d  E.     net.body's encoder levels
    unet         U-Net (MONAI UNet)         encoder unet      E.&D.  net.body
    vnet         V-Net                      encoder vnet      E.&D.  net.body

Deep supervision: a network with `deep_supervision` set returns a list of logits (full resolution
first, then 1/2, 1/4, ...) in training mode and only the full-resolution logits in eval mode;
alice.downstream.segmentation weights the scales.

The classification backbones (`vit`, `resnet3d`: alice.downstream.classifiers, MosMed) share the
registry (`task: classification`) so the same strict transfer serves them:

    net = build_classification_network("vit", num_classes=2, settings=cfg["classification"],
                                       encoder_config=..., input_size=[128, 128, 64])

No torch at import: the DAG reads the backbone -> encoder mapping (`encoder_name_of`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping

from alice.errors import ConfigError
from alice.models.configs import FIELDS, check_crop, int3, normalized_encoder_config as _normalized

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Backbone:
    name: str
    # the encoder name (pretrain.encoders.<encoder>) this backbone takes weights from; None: no
    # pretraining encoder fits it (resnet3d until a CNN pretraining method exists: Rand. init. only)
    encoder: str | None
    build: Callable[[int, Mapping[str, Any], Mapping[str, Any]], "torch.nn.Module"]
    encoder_module: Callable[["torch.nn.Module"], "torch.nn.Module"]  # the sub-module a checkpoint's "encoder" fills
    task: str = "segmentation"
    # the part of a checkpoint's "encoder" state this backbone takes, under the sub-module's key
    # names (a CNN checkpoint holds encoder and decoder; an "E." backbone takes the encoder)
    take: Callable[[dict], dict] | None = None
    parts: str = "encoder"  # "encoder" (Table 2's "E.") or "encoder_decoder" ("E.&D.")
    # False: another program trains it (nnunet: nnunetv2's own planner and trainer, `alice nnunet`)
    build_by_harness: bool = True

    @property
    def encoder_names(self) -> tuple[str, ...]:
        """encoder_config["name"] values this backbone can take weights from."""
        return (self.encoder,) if self.encoder else ()

    @property
    def arch_fields(self) -> tuple[str, ...]:
        """The architecture fields compared between a checkpoint and the run (transfer.py)."""
        return FIELDS[self.encoder] if self.encoder else ()


# ------------------------------------------------------------------------------------ validation
def _positive_int(mapping: Mapping[str, Any], field: str, key: str) -> int:
    if field not in mapping:
        raise ConfigError(key, "missing required key")
    value = mapping[field]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(key, f"must be a positive integer, got {value!r}")
    return value


def crop_of(settings: Mapping[str, Any], key: str = "finetune.<backbone>.crop") -> list[int]:
    if "crop" not in settings:
        raise ConfigError(key, "missing required key")
    return int3(settings["crop"], key)


def normalized_encoder_config(encoder_config: Mapping[str, Any]) -> dict[str, Any]:
    """The architecture fields in one canonical form (alice.models.configs)."""
    return _normalized(encoder_config)


def _encoder_for(backbone: str, encoder_config: Mapping[str, Any]) -> dict[str, Any]:
    """The normalised encoder config, ConfigError unless it is the kind `backbone` takes."""
    spec = get_backbone(backbone)
    name = encoder_config.get("name") if isinstance(encoder_config, Mapping) else None
    if name != spec.encoder:
        raise ConfigError(f"pretrain.encoders.{spec.encoder}",
                          f"{backbone} needs a '{spec.encoder}' encoder config, got {name!r}")
    return _normalized(encoder_config)


DECODER_NORMS = ("instance", "batch")


def memory_format(settings: Mapping[str, Any]) -> "torch.memory_format":
    """`finetune.<backbone>.channels_last`: the network's and its input's layout. Channels-last
    (NDHWC) lets oneDNN's 3-D convolutions run without reordering on CPU: a UNETR step at 32³ ~1.3x
    faster; Swin UNETR's no faster, nnFormer's (mostly attention) ~1.2x slower."""
    import torch

    return torch.channels_last_3d if settings.get("channels_last", False) else torch.contiguous_format


def decoder_norm(settings: Mapping[str, Any], backbone: str) -> str:
    """`finetune.<backbone>.norm` of a MONAI conv decoder (instance when absent, as in MONAI).

    Instance norm standardises each channel over one sample's map; on the decoder's lowest levels
    at the demo's crop sizes (UNETR: a 3×3×2 token grid) that erases what the tokens carry
    per channel, and UNETR learned only the liver and the stomach in 1,200 steps
    (docs/finetuning.md "Fine-tuning and evaluation")."""
    value = settings.get("norm", "instance")
    if value not in DECODER_NORMS:
        raise ConfigError(f"finetune.{backbone}.norm", f"must be one of {', '.join(DECODER_NORMS)}, got {value!r}")
    return value


def _same_width(settings: Mapping[str, Any], enc: Mapping[str, Any], backbone: str) -> None:
    """Swin UNETR's and nnFormer's decoder widths derive from the encoder's: feature_size must be it."""
    feature_size = _positive_int(settings, "feature_size", f"finetune.{backbone}.feature_size")
    if feature_size != enc["embed_dim"]:
        raise ConfigError(f"finetune.{backbone}.feature_size",
                          f"must equal pretrain.encoders.{enc['name']}.embed_dim ({enc['embed_dim']}): "
                          f"{backbone}'s decoder widths follow its encoder's, got {feature_size}")


# ----------------------------------------------------------------------------------------- UNETR
UNETR_DEPTH = 12  # MONAI's UNETR hard-wires 12 ViT blocks (skips from blocks 3, 6, 9) ...
UNETR_PATCH = 16  # ... and a 16³ patch (its decoder upsamples by 2 four times)


def _build_unetr(num_classes: int, settings: Mapping[str, Any], encoder_config: Mapping[str, Any]) -> "torch.nn.Module":
    from monai.networks.nets import UNETR

    enc = _encoder_for("unetr", encoder_config)
    if enc["depth"] != UNETR_DEPTH:
        raise ConfigError(
            "pretrain.encoders.vit.depth", f"MONAI's UNETR has exactly {UNETR_DEPTH} transformer blocks, got {enc['depth']}"
        )
    if enc["patch"] != [UNETR_PATCH] * 3:
        raise ConfigError(
            "pretrain.encoders.vit.patch", f"MONAI's UNETR uses a {UNETR_PATCH}³ patch, got {enc['patch']}"
        )
    if enc["embed_dim"] % enc["heads"]:
        raise ConfigError(
            "pretrain.encoders.vit.heads", f"embed_dim {enc['embed_dim']} is not divisible by heads {enc['heads']}"
        )
    crop = crop_of(settings, "finetune.unetr.crop")
    bad = [c for c in crop if c % UNETR_PATCH]
    if bad:
        raise ConfigError("finetune.unetr.crop", f"every size must be a multiple of the patch {UNETR_PATCH}, got {crop}")
    feature_size = _positive_int(settings, "feature_size", "finetune.unetr.feature_size")
    return UNETR(
        in_channels=1,
        out_channels=num_classes,
        img_size=tuple(crop),
        feature_size=feature_size,
        hidden_size=enc["embed_dim"],
        mlp_dim=int(enc["embed_dim"] * enc["mlp_ratio"]),
        num_heads=enc["heads"],
        proj_type="conv",
        norm_name=decoder_norm(settings, "unetr"),
    )


# ------------------------------------------------------------------------------------ Swin UNETR
def _build_swin_unetr(num_classes: int, settings: Mapping[str, Any],
                      encoder_config: Mapping[str, Any]) -> "torch.nn.Module":
    """MONAI's SwinUNETR (Hatamizadeh et al. 2022), its `swinViT` built as alice.models.swin builds
    the pretraining encoder. Crops must be multiples of 32 (patch 2, four patch mergings) and give
    a bottleneck of more than one cell (its instance norms need it)."""
    from monai.networks.nets import SwinUNETR

    from alice.models.swin import swin_kwargs

    enc = _encoder_for("swin_unetr", encoder_config)
    _same_width(settings, enc, "swin_unetr")
    crop = check_crop(enc, crop_of(settings, "finetune.swin_unetr.crop"), "finetune.swin_unetr.crop")
    if math.prod(c // 32 for c in crop) == 1:
        raise ConfigError("finetune.swin_unetr.crop", f"gives a 1x1x1 bottleneck, which SwinUNETR's instance "
                                                      f"norm cannot train on; got {crop}")
    return SwinUNETR(in_channels=1, out_channels=num_classes, norm_name=decoder_norm(settings, "swin_unetr"),
                     **swin_kwargs(enc))


# -------------------------------------------------------------------------------------- nnFormer
def _build_nnformer(num_classes: int, settings: Mapping[str, Any],
                    encoder_config: Mapping[str, Any]) -> "torch.nn.Module":
    """nnFormer (alice.models.nnformer) with deep supervision; the crop must be a multiple of the
    encoder's stride and tiled by the LV-MSA windows at every local stage."""
    from alice.models.nnformer import NNFormer

    enc = _encoder_for("nnformer", encoder_config)
    _same_width(settings, enc, "nnformer")
    check_crop(enc, crop_of(settings, "finetune.nnformer.crop"), "finetune.nnformer.crop")
    return NNFormer(num_classes, enc, deep_supervision=True)


# ---------------------------------------------------------------------------------- classification
# A classification builder's `settings` are the `classification` section plus "input_size" (the
# cached volume size, datasets.mosmed.size), which the ViT's position embeddings depend on.
def _input_size(settings: Mapping[str, Any]) -> list[int]:
    if "input_size" not in settings:
        raise ConfigError("datasets.mosmed.size", "missing: the classifier's input size")
    return int3(settings["input_size"], "datasets.mosmed.size")


def _head_norm(settings: Mapping[str, Any], backbone: str) -> str:
    """`classification.head_norm.<backbone>` ("none" when absent: the paper's plain FC layer)."""
    from alice.downstream.classifiers import HEAD_NORMS

    section = settings.get("head_norm") or {}
    if not isinstance(section, Mapping):
        raise ConfigError("classification.head_norm", f"must map backbones to a norm, got {section!r}")
    value = section.get(backbone, "none")
    if value not in HEAD_NORMS:
        raise ConfigError(f"classification.head_norm.{backbone}",
                          f"must be one of {', '.join(HEAD_NORMS)}, got {value!r}")
    return value


def _build_vit_classifier(num_classes: int, settings: Mapping[str, Any],
                          encoder_config: Mapping[str, Any]) -> "torch.nn.Module":
    from alice.downstream.classifiers import vit_classifier

    enc = _encoder_for("vit", encoder_config)
    if enc["embed_dim"] % enc["heads"]:
        raise ConfigError(
            "pretrain.encoders.vit.heads", f"embed_dim {enc['embed_dim']} is not divisible by heads {enc['heads']}"
        )
    size = _input_size(settings)
    if any(s % p for s, p in zip(size, enc["patch"])):
        raise ConfigError("datasets.mosmed.size",
                          f"{size} is not a multiple of the ViT patch {enc['patch']} (pretrain.encoders.vit.patch)")
    return vit_classifier(enc, size, num_classes, _head_norm(settings, "vit"))


def _build_resnet_classifier(num_classes: int, settings: Mapping[str, Any],
                             encoder_config: Mapping[str, Any]) -> "torch.nn.Module":
    """The 3-D ResNet of `pretrain.encoders.resnet3d` (depth, widen_factor: the encoder the CNN
    methods pretrain) + pooling + the FC layer."""
    from alice.downstream.classifiers import ResNetClassifier

    enc = _encoder_for("resnet3d", encoder_config)
    _input_size(settings)
    return ResNetClassifier(enc["depth"], enc["widen_factor"], num_classes, head_norm=_head_norm(settings, "resnet3d"))


# ------------------------------------------------------------------------------- convolutional
def _build_cnn_segmenter(backbone: str):
    def build(num_classes: int, settings: Mapping[str, Any], encoder_config: Mapping[str, Any]) -> "torch.nn.Module":
        from alice.models.cnn import CNNSegmenter, build_cnn

        enc = _encoder_for(backbone, encoder_config)
        check_crop(enc, crop_of(settings, f"finetune.{backbone}.crop"), f"finetune.{backbone}.crop")
        return CNNSegmenter(build_cnn(enc), num_classes)

    return build


def _prefixed(prefix: str, names: tuple[str, ...] | None = None) -> Callable[[dict], dict]:
    """The keys under `prefix` (and, if given, one of `names` right after it), `prefix` stripped."""
    def take(state: dict) -> dict:
        return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)
                and (names is None or k[len(prefix):].split(".")[0] in names)}

    return take


_DYNUNET_ENCODER = ("input_block", "downsamples", "bottleneck")


def _dynunet_encoder(net: "torch.nn.Module") -> "torch.nn.Module":
    """nnU-Net's U-Net's encoder levels as one module (the same parameters, DynUNet's key names)."""
    from torch import nn

    return nn.ModuleDict({name: getattr(net.body.net, name) for name in _DYNUNET_ENCODER})


def _build_nnunet(num_classes: int, settings: Mapping[str, Any], encoder_config: Mapping[str, Any]):
    raise ConfigError("backbone", "nnunet is planned and trained by nnunetv2 itself (`alice nnunet`), "
                                  "not built by the harness")


# -------------------------------------------------------------------------------------- registry
BACKBONES: dict[str, Backbone] = {
    "unetr": Backbone("unetr", "vit", _build_unetr, lambda net: net.vit),
    "swin_unetr": Backbone("swin_unetr", "swin", _build_swin_unetr, lambda net: net.swinViT),
    "nnformer": Backbone("nnformer", "nnformer", _build_nnformer, lambda net: net.encoder),
    "vit": Backbone("vit", "vit", _build_vit_classifier, lambda net: net.encoder, task="classification"),
    "resnet3d": Backbone("resnet3d", "resnet3d", _build_resnet_classifier, lambda net: net.encoder,
                         task="classification", take=_prefixed("encoder.")),
    "resnet_unet": Backbone("resnet_unet", "resnet3d", _build_cnn_segmenter("resnet_unet"),
                            lambda net: net.body.encoder, take=_prefixed("encoder.")),
    "unet3d": Backbone("unet3d", "unet3d", _build_cnn_segmenter("unet3d"), lambda net: net.body,
                       parts="encoder_decoder"),
    "nsunet3d": Backbone("nsunet3d", "nsunet3d", _build_cnn_segmenter("nsunet3d"), _dynunet_encoder,
                         take=_prefixed("net.", _DYNUNET_ENCODER)),
    "unet": Backbone("unet", "unet", _build_cnn_segmenter("unet"), lambda net: net.body, parts="encoder_decoder"),
    "vnet": Backbone("vnet", "vnet", _build_cnn_segmenter("vnet"), lambda net: net.body, parts="encoder_decoder"),
    # nnU-Net (Isensee et al. 2021) through the nnunetv2 package: supervised, nothing pre-trained
    "nnunet": Backbone("nnunet", None, _build_nnunet, lambda net: net, build_by_harness=False),
}


def get_backbone(name: str) -> Backbone:
    if name not in BACKBONES:
        raise ConfigError("backbone", f"unknown backbone {name!r} (known: {', '.join(BACKBONES)})")
    return BACKBONES[name]


def encoder_name_of(backbone: str) -> str:
    """The encoder a backbone takes weights from (unetr: vit, swin_unetr: swin, nnformer: nnformer)."""
    return get_backbone(backbone).encoder


def build_segmentation_network(
    backbone: str, num_classes: int, settings: Mapping[str, Any], encoder_config: Mapping[str, Any]
) -> "torch.nn.Module":
    """The segmentation network of `backbone` with `num_classes` output channels (background included).

    settings: the backbone's `finetune.<backbone>` section (crop, feature_size, ...); encoder_config:
    the backbone's encoder config (`pretrain.encoders.<encoder>` with its name).
    """
    return _build("segmentation", backbone, num_classes, settings, encoder_config)


def build_classification_network(
    backbone: str, num_classes: int, settings: Mapping[str, Any], encoder_config: Mapping[str, Any],
    input_size: list[int] | tuple[int, ...],
) -> "torch.nn.Module":
    """The classifier of `backbone` (vit, resnet3d) for inputs of `input_size` (x, y, z).

    settings: the `classification` section; encoder_config: the backbone's pretraining encoder
    (`pretrain.encoders.vit` or `.resnet3d`, with its name: `alice.config.classification_settings`).
    """
    return _build("classification", backbone, num_classes, {**settings, "input_size": list(input_size)},
                  encoder_config)


def _build(task: str, backbone: str, num_classes: int, settings: Mapping[str, Any],
           encoder_config: Mapping[str, Any]) -> "torch.nn.Module":
    spec = get_backbone(backbone)
    if spec.task != task:
        known = ", ".join(n for n, b in BACKBONES.items() if b.task == task)
        raise ConfigError("backbone", f"'{backbone}' is a {spec.task} backbone, not a {task} one (known: {known})")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ConfigError("num_classes", f"must be an integer >= 2, got {num_classes!r}")
    return spec.build(num_classes, settings, encoder_config)


def encoder_of(net: "torch.nn.Module", backbone: str) -> "torch.nn.Module":
    """The encoder sub-module of a network built by `build_segmentation_network`."""
    return get_backbone(backbone).encoder_module(net)
