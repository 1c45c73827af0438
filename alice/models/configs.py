"""Encoder architectures as config: the fields of each encoder kind, their validation, strides.

No torch here: the DAG (Snakefile) and `alice.config` read it to name checkpoints and crops.

An encoder config is the `pretrain.encoders.<name>` section plus its name, e.g.
`{"name": "swin", "embed_dim": 12, "depths": [2, 2, 2, 2], "heads": [3, 6, 12, 24], ...}`; it is
what a pretraining checkpoint records as `encoder_config` and what `alice.downstream.transfer`
compares field by field (`FIELDS[name]`) before loading weights.

- vit: the 3-D ViT of UNETR (alice.models.vit): embed_dim, depth, heads, mlp_ratio, patch.
- swin: MONAI's Swin Transformer inside SwinUNETR (alice.models.swin): embed_dim (= SwinUNETR's
  feature_size), depths, heads (one per stage), window, mlp_ratio; patch 2, stride 32 (fixed by
  SwinUNETR's decoder).
- nnformer: the nnFormer encoder (alice.models.nnformer): embed_dim, depths, heads, window (the
  LV-MSA window), patch (the convolutional embedding's stride, 1, 2 or 4 per axis), mlp_ratio,
  global_stages (how many of the last stages use GV-MSA instead of LV-MSA).

The convolutional family (alice.models.cnn): each is a whole encoder-decoder network whose last
decoder level has `features` channels (a 1x1 convolution maps them to the classes); pretraining
trains the network, fine-tuning transfers its encoder ("E.") or encoder and decoder ("E.&D.").

- resnet3d: MONAI's 3-D ResNet (depth 10/18/34/50, widen_factor) under a U-Net decoder; stride 32.
- unet3d: MONAI's BasicUNet (Çiçek et al. 2016's 3-D U-Net): its six `widths`; stride 16.
- nsunet3d: MONAI's DynUNet (nnU-Net's U-Net): `filters` per level (the first is the dense output's
  width, no `features`), 3³ kernels; stride 2^(levels-1).
- unet: MONAI's UNet (residual units): `channels` per level, `res_units`; stride 2^(levels-1).
- vnet: the V-Net of Milletari et al. 2016 (alice.models.cnn.VNet): `width` of its first stage
  (paper 16), doubled at each of four downsamplings; stride 16.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

from alice.errors import ConfigError

TRANSFORMER_ENCODERS = ("vit", "swin", "nnformer")
CNN_ENCODERS = ("resnet3d", "unet3d", "nsunet3d", "unet", "vnet")
ENCODERS = TRANSFORMER_ENCODERS + CNN_ENCODERS
FIELDS: dict[str, tuple[str, ...]] = {
    "vit": ("embed_dim", "depth", "heads", "mlp_ratio", "patch"),
    "swin": ("embed_dim", "depths", "heads", "window", "mlp_ratio"),
    "nnformer": ("embed_dim", "depths", "heads", "window", "patch", "mlp_ratio", "global_stages"),
    "resnet3d": ("depth", "widen_factor", "features"),
    "unet3d": ("widths",),
    "nsunet3d": ("filters",),
    "unet": ("channels", "res_units", "features"),
    "vnet": ("width", "features"),
}
RESNET_DEPTHS = (10, 18, 34, 50)
SWIN_PATCH = 2      # SwinUNETR's decoder upsamples by 2 five times: patch 2, then 4 patch mergings
SWIN_STAGES = 4
NNFORMER_PATCH = (1, 2, 4)  # two stride-s convolutions, s in {1, 2}, make the embedding layer


def config_key(name: str) -> str:
    return f"pretrain.encoders.{name}"


# ------------------------------------------------------------------------------------- primitives
def _positive_int(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(key, f"must be a positive integer, got {value!r}")
    return value


def _required(mapping: Mapping[str, Any], field: str, key: str) -> Any:
    if field not in mapping or mapping[field] is None:
        raise ConfigError(f"{key}.{field}", "missing required key")
    return mapping[field]


def int3(value: Any, key: str) -> list[int]:
    """3 positive integers (an int means the same on every axis)."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value] * 3
    try:
        out = [int(v) for v in value]
    except (TypeError, ValueError):
        raise ConfigError(key, f"must be 3 positive integers, got {value!r}") from None
    if len(out) != 3 or min(out) < 1 or any(isinstance(v, bool) or float(v) != o for v, o in zip(value, out)):
        raise ConfigError(key, f"must be 3 positive integers, got {value!r}")
    return out


def _int_list(value: Any, key: str, length: int | None = None) -> list[int]:
    if not isinstance(value, (list, tuple)) or not value:
        raise ConfigError(key, f"must be a list of positive integers, got {value!r}")
    out = [_positive_int(v, key) for v in value]
    if length is not None and len(out) != length:
        raise ConfigError(key, f"must have {length} entries (one per stage), got {len(out)}")
    return out


def _ratio(mapping: Mapping[str, Any], key: str) -> float:
    ratio = mapping.get("mlp_ratio", 4)
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not ratio > 0:
        raise ConfigError(f"{key}.mlp_ratio", f"must be a positive number, got {ratio!r}")
    return float(ratio)


def _stage_heads(out: dict[str, Any], key: str) -> None:
    """One head count per stage, each dividing its stage width embed_dim * 2^i."""
    if len(out["heads"]) != len(out["depths"]):
        raise ConfigError(f"{key}.heads", f"needs one entry per stage ({len(out['depths'])}), got {out['heads']}")
    for i, h in enumerate(out["heads"]):
        width = out["embed_dim"] * 2 ** i
        if width % h:
            raise ConfigError(f"{key}.heads", f"stage {i + 1} width {width} is not divisible by {h} heads")


# ------------------------------------------------------------------------------------ normalising
def normalized_encoder_config(encoder_config: Mapping[str, Any]) -> dict[str, Any]:
    """The architecture fields of an encoder config in one canonical form (ints, float ratio, lists
    of 3 for patch and window); ConfigError naming `pretrain.encoders.<name>.<field>` otherwise."""
    if not isinstance(encoder_config, Mapping):
        raise ConfigError("pretrain.encoders", f"an encoder config must be a mapping, got {type(encoder_config).__name__}")
    name = str(encoder_config.get("name") or "")
    if not name:
        raise ConfigError("pretrain.encoders.<name>.name", "missing required key")
    if name not in FIELDS:
        raise ConfigError("pretrain.encoders", f"unknown encoder {name!r} (known: {', '.join(ENCODERS)})")
    key = config_key(name)
    if name in CNN_ENCODERS:
        return _normalized_cnn(name, encoder_config, key)
    out: dict[str, Any] = {"name": name, "embed_dim": _positive_int(_required(encoder_config, "embed_dim", key),
                                                                   f"{key}.embed_dim")}
    out["mlp_ratio"] = _ratio(encoder_config, key)
    if name == "vit":
        for field in ("depth", "heads"):
            out[field] = _positive_int(_required(encoder_config, field, key), f"{key}.{field}")
        out["patch"] = int3(_required(encoder_config, "patch", key), f"{key}.patch")
    elif name == "swin":
        out["depths"] = _int_list(_required(encoder_config, "depths", key), f"{key}.depths", SWIN_STAGES)
        out["heads"] = _int_list(_required(encoder_config, "heads", key), f"{key}.heads", SWIN_STAGES)
        out["window"] = int3(_required(encoder_config, "window", key), f"{key}.window")
        if out["embed_dim"] % 12:
            raise ConfigError(f"{key}.embed_dim", f"SwinUNETR needs a feature size divisible by 12, got {out['embed_dim']}")
        _stage_heads(out, key)
    else:  # nnformer
        out["depths"] = _int_list(_required(encoder_config, "depths", key), f"{key}.depths")
        if len(out["depths"]) < 2:
            raise ConfigError(f"{key}.depths", f"needs at least 2 stages (the decoder mirrors them), got {out['depths']}")
        out["heads"] = _int_list(_required(encoder_config, "heads", key), f"{key}.heads")
        out["window"] = int3(_required(encoder_config, "window", key), f"{key}.window")
        out["patch"] = int3(_required(encoder_config, "patch", key), f"{key}.patch")
        bad = [p for p in out["patch"] if p not in NNFORMER_PATCH]
        if bad:
            raise ConfigError(f"{key}.patch", f"each entry must be 1, 2 or 4 (two small-stride convolutions), got {out['patch']}")
        if out["embed_dim"] % 2:
            raise ConfigError(f"{key}.embed_dim", f"must be even (the embedding's first convolutions use half), got {out['embed_dim']}")
        g = encoder_config.get("global_stages", 0)
        if isinstance(g, bool) or not isinstance(g, int) or not 0 <= g <= len(out["depths"]):
            raise ConfigError(f"{key}.global_stages", f"must be an integer in [0, {len(out['depths'])}], got {g!r}")
        out["global_stages"] = g
        _stage_heads(out, key)
    return out


def _normalized_cnn(name: str, encoder_config: Mapping[str, Any], key: str) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name}
    if name == "unet3d":
        out["widths"] = _int_list(_required(encoder_config, "widths", key), f"{key}.widths", 6)
        return out
    if name != "nsunet3d":  # DynUNet's dense output is its first level's width
        out["features"] = _positive_int(_required(encoder_config, "features", key), f"{key}.features")
    if name == "resnet3d":
        depth = _required(encoder_config, "depth", key)
        if depth not in RESNET_DEPTHS or isinstance(depth, bool):
            raise ConfigError(f"{key}.depth", f"must be one of {', '.join(map(str, RESNET_DEPTHS))}, got {depth!r}")
        widen = _required(encoder_config, "widen_factor", key)
        if isinstance(widen, bool) or not isinstance(widen, (int, float)) or not widen > 0:
            raise ConfigError(f"{key}.widen_factor", f"must be a positive number, got {widen!r}")
        out.update(depth=int(depth), widen_factor=float(widen))
    elif name in ("nsunet3d", "unet"):
        field = "filters" if name == "nsunet3d" else "channels"
        out[field] = _int_list(_required(encoder_config, field, key), f"{key}.{field}")
        if len(out[field]) < 2:
            raise ConfigError(f"{key}.{field}", f"needs at least 2 levels, got {out[field]}")
        if name == "unet":
            res = encoder_config.get("res_units", 0)
            if isinstance(res, bool) or not isinstance(res, int) or res < 0:
                raise ConfigError(f"{key}.res_units", f"must be an integer >= 0, got {res!r}")
            out["res_units"] = res
    else:  # vnet
        out["width"] = _positive_int(_required(encoder_config, "width", key), f"{key}.width")
    return out


# ---------------------------------------------------------------------------------------- strides
def encoder_stride(encoder_config: Mapping[str, Any]) -> list[int]:
    """Voxels per bottleneck cell along x, y, z: the encoder's total downsampling (ViT: the patch)."""
    enc = normalized_encoder_config(encoder_config)
    if enc["name"] == "vit":
        return list(enc["patch"])
    if enc["name"] == "swin":
        return [SWIN_PATCH * 2 ** SWIN_STAGES] * 3
    if enc["name"] in CNN_ENCODERS:
        return [CNN_STRIDE[enc["name"]](enc)] * 3
    return [p * 2 ** (len(enc["depths"]) - 1) for p in enc["patch"]]


# the convolutional networks' downsampling, bottleneck cell to voxels (alice.models.cnn)
CNN_STRIDE = {
    "resnet3d": lambda enc: 32,   # stride-2 stem, max pooling, three stride-2 stages
    "unet3d": lambda enc: 16,     # BasicUNet: four poolings
    "nsunet3d": lambda enc: 2 ** (len(enc["filters"]) - 1),
    "unet": lambda enc: 2 ** (len(enc["channels"]) - 1),
    "vnet": lambda enc: 16,       # four stride-2 down-convolutions
}


def check_crop(encoder_config: Mapping[str, Any], crop: Sequence[int], key: str) -> list[int]:
    """The crop as 3 ints if the encoder can take it, else ConfigError naming `key`: a multiple of
    the stride on every axis, and for nnFormer, LV-MSA windows that tile every local stage's map."""
    crop = int3(list(crop) if isinstance(crop, (list, tuple)) else crop, key)
    enc = normalized_encoder_config(encoder_config)
    stride = encoder_stride(enc)
    if any(c % s for c, s in zip(crop, stride)):
        raise ConfigError(key, f"every size must be a multiple of the {enc['name']} encoder's stride {stride}, got {crop}")
    if enc["name"] == "nnformer":
        n_local = len(enc["depths"]) - enc["global_stages"]
        for i in range(n_local):
            grid = [c // (p * 2 ** i) for c, p in zip(crop, enc["patch"])]
            window = [min(w, g) for w, g in zip(enc["window"], grid)]
            if any(g % w for g, w in zip(grid, window)):
                raise ConfigError(key, f"nnFormer stage {i + 1} map {grid} (crop {crop}) is not tiled by the "
                                       f"LV-MSA window {enc['window']}")
    return crop


def bottleneck_grid(encoder_config: Mapping[str, Any], crop: Sequence[int]) -> list[int]:
    return [c // s for c, s in zip(crop, encoder_stride(encoder_config))]


def num_units(encoder_config: Mapping[str, Any], crop: Sequence[int]) -> int:
    return math.prod(bottleneck_grid(encoder_config, crop))
