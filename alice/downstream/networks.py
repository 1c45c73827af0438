"""Fine-tuning networks, one builder per backbone in a single registry.

    net = build_segmentation_network("unetr", num_classes=14, settings=cfg["finetune"]["unetr"],
                                     encoder_config=cfg["pretrain"]["encoder"])
    net = build_classification_network("vit", num_classes=2, settings=cfg["classification"],
                                       encoder_config=..., input_size=[128, 128, 64])

A backbone is one `Backbone` entry in `BACKBONES`: its task (segmentation or classification), the
encoder names its checkpoints may carry, the encoder architecture fields that must match a
checkpoint, a builder, and the accessor of the encoder sub-module whose state dict a pretraining
checkpoint holds (see `alice.downstream.transfer`). Adding Swin UNETR or nnFormer is one builder
function plus one registry entry. The classification backbones (`vit`, `resnet3d`, modules in
`alice.downstream.classifiers`) share the registry so the same strict transfer serves them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch

from alice.errors import ConfigError

# Encoder architecture fields compared between a checkpoint and the run (transfer.py).
ARCH_FIELDS = ("embed_dim", "depth", "heads", "mlp_ratio", "patch")


@dataclass(frozen=True)
class Backbone:
    name: str
    encoder_names: tuple[str, ...]  # encoder_config["name"] values this backbone can take weights from
    build: Callable[[int, Mapping[str, Any], Mapping[str, Any]], torch.nn.Module]
    encoder: Callable[[torch.nn.Module], torch.nn.Module]  # the sub-module a checkpoint's "encoder" fills
    arch_fields: tuple[str, ...] = ARCH_FIELDS
    task: str = "segmentation"


# ------------------------------------------------------------------------------------ validation
def _int3(value: Any, key: str) -> list[int]:
    try:
        out = [int(v) for v in value]
    except (TypeError, ValueError):
        raise ConfigError(key, f"must be 3 positive integers, got {value!r}") from None
    if len(out) != 3 or min(out) < 1 or any(isinstance(v, bool) or float(v) != o for v, o in zip(value, out)):
        raise ConfigError(key, f"must be 3 positive integers, got {value!r}")
    return out


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
    return _int3(settings["crop"], key)


def normalized_encoder_config(encoder_config: Mapping[str, Any]) -> dict[str, Any]:
    """The architecture fields in one canonical form (ints, float ratio, patch as a list of 3)."""
    key = "pretrain.encoder"
    if not isinstance(encoder_config, Mapping):
        raise ConfigError(key, f"must be a mapping, got {type(encoder_config).__name__}")
    out: dict[str, Any] = {"name": str(encoder_config.get("name", ""))}
    if not out["name"]:
        raise ConfigError(f"{key}.name", "missing required key")
    for field in ("embed_dim", "depth", "heads"):
        out[field] = _positive_int(encoder_config, field, f"{key}.{field}")
    ratio = encoder_config.get("mlp_ratio", 4)
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not ratio > 0:
        raise ConfigError(f"{key}.mlp_ratio", f"must be a positive number, got {ratio!r}")
    out["mlp_ratio"] = float(ratio)
    patch = encoder_config.get("patch")
    if patch is None:
        raise ConfigError(f"{key}.patch", "missing required key")
    out["patch"] = _int3([patch] * 3 if isinstance(patch, int) else patch, f"{key}.patch")
    return out


# ----------------------------------------------------------------------------------------- UNETR
UNETR_DEPTH = 12  # MONAI's UNETR hard-wires 12 ViT blocks (skips from blocks 3, 6, 9) ...
UNETR_PATCH = 16  # ... and a 16³ patch (its decoder upsamples by 2 four times)


def _build_unetr(num_classes: int, settings: Mapping[str, Any], encoder_config: Mapping[str, Any]) -> torch.nn.Module:
    from monai.networks.nets import UNETR

    enc = normalized_encoder_config(encoder_config)
    if enc["name"] != "vit":
        raise ConfigError("pretrain.encoder.name", f"UNETR needs a 'vit' encoder, got {enc['name']!r}")
    if enc["depth"] != UNETR_DEPTH:
        raise ConfigError(
            "pretrain.encoder.depth", f"MONAI's UNETR has exactly {UNETR_DEPTH} transformer blocks, got {enc['depth']}"
        )
    if enc["patch"] != [UNETR_PATCH] * 3:
        raise ConfigError(
            "pretrain.encoder.patch", f"MONAI's UNETR uses a {UNETR_PATCH}³ patch, got {enc['patch']}"
        )
    if enc["embed_dim"] % enc["heads"]:
        raise ConfigError(
            "pretrain.encoder.heads", f"embed_dim {enc['embed_dim']} is not divisible by heads {enc['heads']}"
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
        norm_name="instance",
    )


# ---------------------------------------------------------------------------------- classification
# A classification builder's `settings` are the `classification` section plus "input_size" (the
# cached volume size, datasets.mosmed.size), which the ViT's position embeddings depend on.
def _input_size(settings: Mapping[str, Any]) -> list[int]:
    if "input_size" not in settings:
        raise ConfigError("datasets.mosmed.size", "missing: the classifier's input size")
    return _int3(settings["input_size"], "datasets.mosmed.size")


def _build_vit_classifier(num_classes: int, settings: Mapping[str, Any],
                          encoder_config: Mapping[str, Any]) -> torch.nn.Module:
    from alice.downstream.classifiers import vit_classifier

    enc = normalized_encoder_config(encoder_config)
    if enc["name"] != "vit":
        raise ConfigError("pretrain.encoder.name", f"the vit classifier needs a 'vit' encoder, got {enc['name']!r}")
    if enc["embed_dim"] % enc["heads"]:
        raise ConfigError(
            "pretrain.encoder.heads", f"embed_dim {enc['embed_dim']} is not divisible by heads {enc['heads']}"
        )
    size = _input_size(settings)
    if any(s % p for s, p in zip(size, enc["patch"])):
        raise ConfigError("datasets.mosmed.size",
                          f"{size} is not a multiple of the ViT patch {enc['patch']} (pretrain.encoder.patch)")
    return vit_classifier(enc, size, num_classes)


def _build_resnet_classifier(num_classes: int, settings: Mapping[str, Any],
                             encoder_config: Mapping[str, Any]) -> torch.nn.Module:
    from alice.downstream.classifiers import RESNET_LAYERS, ResNetClassifier

    section = settings.get("resnet3d")
    if not isinstance(section, Mapping):
        raise ConfigError("classification.resnet3d", "missing: depth and widen_factor of the 3-D ResNet")
    depth = section.get("depth")
    if depth not in RESNET_LAYERS:
        raise ConfigError("classification.resnet3d.depth",
                          f"must be one of {sorted(RESNET_LAYERS)}, got {depth!r}")
    widen = section.get("widen_factor")
    if isinstance(widen, bool) or not isinstance(widen, (int, float)) or not widen > 0:
        raise ConfigError("classification.resnet3d.widen_factor", f"must be a positive number, got {widen!r}")
    _input_size(settings)
    return ResNetClassifier(int(depth), float(widen), num_classes)


# -------------------------------------------------------------------------------------- registry
BACKBONES: dict[str, Backbone] = {
    "unetr": Backbone("unetr", ("vit",), _build_unetr, lambda net: net.vit),
    "vit": Backbone("vit", ("vit",), _build_vit_classifier, lambda net: net.encoder, task="classification"),
    # no CNN pretraining method exists yet: only Rand. init., so no checkpoint encoder fits
    "resnet3d": Backbone("resnet3d", (), _build_resnet_classifier, lambda net: net.encoder, arch_fields=(),
                         task="classification"),
}


def get_backbone(name: str) -> Backbone:
    if name not in BACKBONES:
        raise ConfigError("backbone", f"unknown backbone {name!r} (known: {', '.join(BACKBONES)})")
    return BACKBONES[name]


def build_segmentation_network(
    backbone: str, num_classes: int, settings: Mapping[str, Any], encoder_config: Mapping[str, Any]
) -> torch.nn.Module:
    """The segmentation network of `backbone` with `num_classes` output channels (background included).

    settings: the backbone's `finetune.<backbone>` section (crop, feature_size); encoder_config: the
    `pretrain.encoder` section (name, embed_dim, depth, heads, mlp_ratio, patch).
    """
    return _build("segmentation", backbone, num_classes, settings, encoder_config)


def build_classification_network(
    backbone: str, num_classes: int, settings: Mapping[str, Any], encoder_config: Mapping[str, Any],
    input_size: list[int] | tuple[int, ...],
) -> torch.nn.Module:
    """The classifier of `backbone` (vit, resnet3d) for inputs of `input_size` (x, y, z).

    settings: the `classification` section (resnet3d: depth, widen_factor); encoder_config: the
    ViT encoder architecture (`alice.config.vit_encoder_config`).
    """
    return _build("classification", backbone, num_classes, {**settings, "input_size": list(input_size)},
                  encoder_config)


def _build(task: str, backbone: str, num_classes: int, settings: Mapping[str, Any],
           encoder_config: Mapping[str, Any]) -> torch.nn.Module:
    spec = get_backbone(backbone)
    if spec.task != task:
        known = ", ".join(n for n, b in BACKBONES.items() if b.task == task)
        raise ConfigError("backbone", f"'{backbone}' is a {spec.task} backbone, not a {task} one (known: {known})")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ConfigError("num_classes", f"must be an integer >= 2, got {num_classes!r}")
    return spec.build(num_classes, settings, encoder_config)


def encoder_of(net: torch.nn.Module, backbone: str) -> torch.nn.Module:
    """The encoder sub-module of a network of the registry (UNETR: `.vit`; classifiers: `.encoder`)."""
    return get_backbone(backbone).encoder(net)
