"""nnFormer (Zhou et al., "nnFormer: Volumetric Medical Image Segmentation via a 3D Transformer",
IEEE TIP 2023; arXiv:2109.03201, the Alice paper's [53]), written from the paper.

Architecture (the paper's Method section and its architecture figure; section names below are
those of the method's parts: Encoder / Bottleneck / Decoder), sizes for a crop (X, Y, Z), embedding
patch p and S stages:

- Embedding layer (Encoder): stacked 3³ convolutions with small strides instead of one large-patch
  projection — conv(stride s1) → GELU → LN → conv → GELU → LN → conv(stride s2) → GELU → LN → conv,
  s1·s2 = p per axis — giving the map (C, X/p0, Y/p1, Z/p2).
- Encoder stages i = 1..S of width C·2^(i-1), separated by down-sampling layers (Encoder: a
  strided convolution, kernel 2, stride 2, doubling the width), the map halving on every axis.
  Blocks are pre-norm transformer blocks (z' = A(LN(z)) + z, z'' = MLP(LN(z')) + z'):
  * LV-MSA, local volume-based multi-head self-attention: attention inside non-overlapping 3-D
    windows (local volumes), alternating with SLV-MSA, the same on windows shifted by half a
    window (the Swin scheme in 3-D), with a learned relative position bias B in the paper's
    attention equation Attention(Q, K, V) = softmax(QKᵀ/√d_k + B) V;
  * GV-MSA, global volume-based multi-head self-attention: the same attention over every token of
    the (down-sampled, low-resolution) map at once (Bottleneck), used by the last
    `global_stages` stages. Its relative position bias uses the LV-MSA table, offsets clipped to
    the window, so no weight depends on the crop (a pretrained encoder fits any fine-tuning crop).
- Decoder mirrors stages S-1..1: a transposed convolution (kernel 2, stride 2) up-samples
  and halves the width, then blocks of the mirrored kind with skip attention: the queries come from
  the decoder tokens, the keys and values from the encoder stage's tokens at the same resolution
  (the paper's replacement of concatenation/addition skips).
- Output (Decoder, "final patch expanding"): a transposed convolution (kernel = stride = p) maps a
  decoder stage to class logits; deep supervision (its training follows nnU-Net's) puts one
  such head on each decoder stage: outputs at full, 1/2, 1/4, ... resolution. In training mode `forward`
  returns that list (full resolution first) when `deep_supervision` is on; in eval mode only the
  full-resolution logits (what sliding-window inference needs). The loss weights (halving per
  scale) are applied by alice.downstream.segmentation.

`NNFormerEncoder` (the embedding, the encoder stages and down-samplings, and a LayerNorm on the
bottleneck) is the sub-module a pretraining checkpoint fills; it implements the hierarchical
interface of alice.models.hierarchical.

Departures, because the paper leaves them open: head and MLP sizes come from the config
(`heads`, `mlp_ratio`); every decoder block uses skip attention; LayerNorm follows every
down-/up-sampling convolution; the encoder's skip map is also added to the up-sampled decoder map
before the blocks (x = up(y) + skip; queries from x, keys/values from skip). Without that
addition the decoder's fine detail passes only through the attention, which at initialisation
averages a whole window (a 16³-voxel block at stride 4), and the demo network learned nothing
but background in hundreds of steps; with it, encoder detail reaches the heads from the start.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from alice.errors import ConfigError
from alice.models.configs import check_crop, encoder_stride, normalized_encoder_config
from alice.models.hierarchical import HierarchicalEncoder


# ------------------------------------------------------------------------------------------ helpers
def _last(x: torch.Tensor) -> torch.Tensor:
    """(B, C, X, Y, Z) -> (B, X, Y, Z, C)."""
    return x.permute(0, 2, 3, 4, 1)


def _first(x: torch.Tensor) -> torch.Tensor:
    """(B, X, Y, Z, C) -> (B, C, X, Y, Z)."""
    return x.permute(0, 4, 1, 2, 3)


class ChannelNorm(nn.LayerNorm):
    """LayerNorm over the channels of a (B, C, X, Y, Z) map."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _first(super().forward(_last(x))).contiguous()


def _windows(x: torch.Tensor, window: Sequence[int]) -> torch.Tensor:
    """(B, X, Y, Z, C) -> (B, nW, w0*w1*w2, C), windows in raster order."""
    b, sx, sy, sz, c = x.shape
    wx, wy, wz = window
    x = x.reshape(b, sx // wx, wx, sy // wy, wy, sz // wz, wz, c).permute(0, 1, 3, 5, 2, 4, 6, 7)
    return x.reshape(b, -1, wx * wy * wz, c)


def _merge_windows(t: torch.Tensor, window: Sequence[int], size: Sequence[int]) -> torch.Tensor:
    """Inverse of `_windows`."""
    b, _, _, c = t.shape
    (wx, wy, wz), (sx, sy, sz) = window, size
    t = t.reshape(b, sx // wx, sy // wy, sz // wz, wx, wy, wz, c).permute(0, 1, 4, 2, 5, 3, 6, 7)
    return t.reshape(b, sx, sy, sz, c)


def _shift_mask(size: Sequence[int], window: Sequence[int], shift: Sequence[int],
                device: torch.device) -> torch.Tensor:
    """(nW, n, n) additive mask of SLV-MSA: after the cyclic shift a window may hold voxels of
    different regions of the volume; attention between them is removed (-inf)."""
    region = torch.zeros(*size, dtype=torch.long, device=device)
    for axis, (w, s) in enumerate(zip(window, shift)):
        if not s:
            continue
        ids = torch.zeros(size[axis], dtype=torch.long, device=device)
        ids[-w:-s] = 1
        ids[-s:] = 2
        shape = [1, 1, 1]
        shape[axis] = size[axis]
        region = region * 3 + ids.reshape(shape)
    wins = _windows(region[None, ..., None], window)[0, :, :, 0]  # (nW, n)
    diff = wins[:, :, None] != wins[:, None, :]
    return torch.zeros(diff.shape, device=device).masked_fill(diff, float("-inf"))


class RelativePositionBias(nn.Module):
    """Learned relative position bias B of the attention: one value per head and 3-D offset, offsets within
    ±(window − 1) per axis (larger ones, in GV-MSA, are clipped to the table's edge)."""

    def __init__(self, window: Sequence[int], heads: int) -> None:
        super().__init__()
        self.window = tuple(int(w) for w in window)
        self.heads = heads
        self.table = nn.Parameter(torch.zeros(math.prod(2 * w - 1 for w in self.window), heads))
        nn.init.trunc_normal_(self.table, std=0.02)
        self._index: dict[tuple, torch.Tensor] = {}

    def index(self, grid: Sequence[int], device: torch.device) -> torch.Tensor:
        key = (tuple(grid), str(device))
        if key not in self._index:
            coords = torch.stack(torch.meshgrid(*(torch.arange(g, device=device) for g in grid),
                                                indexing="ij")).flatten(1)  # (3, n)
            rel = coords[:, :, None] - coords[:, None, :]
            idx = torch.zeros_like(rel[0])
            for axis, w in enumerate(self.window):
                idx = idx * (2 * w - 1) + rel[axis].clamp(-(w - 1), w - 1) + (w - 1)
            self._index[key] = idx
        return self._index[key]

    def forward(self, grid: Sequence[int]) -> torch.Tensor:
        """(heads, n, n) for the tokens of a `grid`-shaped group (a window or the whole map)."""
        idx = self.index(grid, self.table.device)
        n = idx.shape[0]
        return self.table[idx.reshape(-1)].reshape(n, n, self.heads).permute(2, 0, 1)


class VolumeAttention(nn.Module):
    """Multi-head attention with relative position bias inside token groups: queries from `x`, keys/values from `kv`
    (the same tokens for LV-/GV-MSA, the encoder's skip tokens for skip attention)."""

    def __init__(self, dim: int, heads: int, window: Sequence[int]) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.bias = RelativePositionBias(window, heads)

    def forward(self, x: torch.Tensor, kv: torch.Tensor, grid: Sequence[int],
                mask: torch.Tensor | None = None) -> torch.Tensor:
        """x, kv: (B, G, n, C) groups of n tokens shaped `grid`; mask: (G, n, n) or None."""
        b, g, n, c = x.shape
        h = self.heads
        q = self.q(x).reshape(b, g, n, h, c // h).transpose(2, 3)
        k, v = self.kv(kv).reshape(b, g, n, 2, h, c // h).permute(3, 0, 1, 4, 2, 5)
        bias = self.bias(grid)[None]  # (1, h, n, n)
        if mask is not None:
            bias = bias + mask[:, None]  # (G, h, n, n)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype))
        return self.proj(out.transpose(2, 3).reshape(b, g, n, c))


class NNFormerBlock(nn.Module):
    """One pre-norm transformer block: LV-MSA (`local`, `shift` = SLV-MSA) or GV-MSA; with
    `skip`, its attention takes keys and values from the encoder's skip tokens (skip attention)."""

    def __init__(self, dim: int, heads: int, window: Sequence[int], mlp_ratio: float, *,
                 local: bool, shift: bool, skip: bool) -> None:
        super().__init__()
        self.window, self.local, self.shift = tuple(window), local, shift
        self.norm1 = nn.LayerNorm(dim)
        self.norm_skip = nn.LayerNorm(dim) if skip else None
        self.attn = VolumeAttention(dim, heads, window)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self._masks: dict[tuple, torch.Tensor] = {}

    def _attend(self, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        b, *size, c = q.shape
        if not self.local:  # GV-MSA: one group, the whole map
            out = self.attn(q.reshape(b, 1, -1, c), kv.reshape(b, 1, -1, c), size)
            return out.reshape(q.shape)
        window = [min(w, s) for w, s in zip(self.window, size)]
        shift = [w // 2 if self.shift and s > w else 0 for w, s in zip(window, size)]
        mask = None
        if any(shift):
            dims = (1, 2, 3)
            q = torch.roll(q, [-s for s in shift], dims)
            kv = torch.roll(kv, [-s for s in shift], dims)
            key = (tuple(size), tuple(window), tuple(shift), str(q.device))
            if key not in self._masks:
                self._masks[key] = _shift_mask(size, window, shift, q.device)
            mask = self._masks[key]
        out = self.attn(_windows(q, window), _windows(kv, window), window, mask)
        out = _merge_windows(out, window, size)
        return torch.roll(out, shift, (1, 2, 3)) if any(shift) else out

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        """x, skip: (B, X, Y, Z, C) channels-last maps."""
        q = self.norm1(x)
        kv = self.norm_skip(skip) if self.norm_skip is not None else q
        x = x + self._attend(q, kv)
        return x + self.mlp(self.norm2(x))


class NNFormerStage(nn.Module):
    """`depth` blocks of one kind; local stages alternate LV-MSA and SLV-MSA."""

    def __init__(self, dim: int, depth: int, heads: int, window: Sequence[int], mlp_ratio: float, *,
                 local: bool, skip: bool = False) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            NNFormerBlock(dim, heads, window, mlp_ratio, local=local, shift=local and i % 2 == 1, skip=skip)
            for i in range(depth))

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        for blk in self.blocks:
            x = blk(x, skip)
        return x


class ConvEmbedding(nn.Module):
    """The embedding layer: four 3³ convolutions with small strides (s1, 1, s2, 1), s1·s2 = patch
    per axis, GELU and LayerNorm between them."""

    def __init__(self, in_channels: int, dim: int, patch: Sequence[int]) -> None:
        super().__init__()
        s1 = [2 if p >= 2 else 1 for p in patch]
        s2 = [p // s for p, s in zip(patch, s1)]
        half = dim // 2
        self.conv1 = nn.Conv3d(in_channels, half, 3, stride=s1, padding=1)
        self.norm1 = ChannelNorm(half)
        self.conv2 = nn.Conv3d(half, half, 3, padding=1)
        self.norm2 = ChannelNorm(half)
        self.conv3 = nn.Conv3d(half, dim, 3, stride=s2, padding=1)
        self.norm3 = ChannelNorm(dim)
        self.conv4 = nn.Conv3d(dim, dim, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm1(F.gelu(self.conv1(x)))
        x = self.norm2(F.gelu(self.conv2(x)))
        x = self.norm3(F.gelu(self.conv3(x)))
        return self.conv4(x)


class _Resample(nn.Module):
    """Strided (down) or transposed (up) convolution, kernel 2, stride 2, then LayerNorm."""

    def __init__(self, c_in: int, c_out: int, up: bool) -> None:
        super().__init__()
        conv = nn.ConvTranspose3d if up else nn.Conv3d
        self.conv = conv(c_in, c_out, kernel_size=2, stride=2)
        self.norm = ChannelNorm(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x))


def _init_linear(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class _Spec:
    """The parsed encoder config: widths, kinds per stage."""

    def __init__(self, encoder_config: Mapping[str, Any]) -> None:
        enc = normalized_encoder_config(encoder_config)
        if enc["name"] != "nnformer":
            raise ConfigError("pretrain.encoders", f"not an nnformer encoder config: {enc['name']!r}")
        self.config = enc
        self.n = len(enc["depths"])
        self.dims = [enc["embed_dim"] * 2 ** i for i in range(self.n)]
        self.local = [i < self.n - enc["global_stages"] for i in range(self.n)]


# ------------------------------------------------------------------------------------------ encoder
class NNFormerEncoder(nn.Module, HierarchicalEncoder):
    """Embedding + encoder stages (+ a LayerNorm on the bottleneck): what pretraining transfers."""

    def __init__(self, encoder_config: Mapping[str, Any], in_channels: int = 1) -> None:
        super().__init__()
        spec = _Spec(encoder_config)
        enc = spec.config
        self.config = enc
        self.patch = tuple(enc["patch"])
        self.stride = tuple(encoder_stride(enc))
        self.embed_dim, self.out_dim = spec.dims[0], spec.dims[-1]
        self.embedding = ConvEmbedding(in_channels, spec.dims[0], enc["patch"])
        self.layers = nn.ModuleList(
            NNFormerStage(spec.dims[i], enc["depths"][i], enc["heads"][i], enc["window"], enc["mlp_ratio"],
                          local=spec.local[i]) for i in range(spec.n))
        self.downsamples = nn.ModuleList(_Resample(spec.dims[i], spec.dims[i + 1], up=False)
                                         for i in range(spec.n - 1))
        self.norm = ChannelNorm(spec.dims[-1])
        _init_linear(self)

    def check_input(self, size: Sequence[int]) -> None:
        try:
            check_crop(self.config, list(size), "nnFormer input size")
        except ConfigError as exc:
            raise ValueError(str(exc)) from None

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x.shape[2:])
        return self.embedding(x)

    def stages(self, e: torch.Tensor) -> list[torch.Tensor]:
        maps, x = [], e
        for i, layer in enumerate(self.layers):
            if i:
                x = self.downsamples[i - 1](x)
            x = _first(layer(_last(x))).contiguous()
            maps.append(x)
        maps[-1] = self.norm(maps[-1])
        return maps


# ------------------------------------------------------------------------------------------ network
class NNFormer(nn.Module):
    """The segmentation network: `encoder` (NNFormerEncoder), skip-attention decoder, heads."""

    def __init__(self, num_classes: int, encoder_config: Mapping[str, Any], in_channels: int = 1,
                 deep_supervision: bool = True) -> None:
        super().__init__()
        spec = _Spec(encoder_config)
        enc = spec.config
        self.encoder = NNFormerEncoder(enc, in_channels)
        self.deep_supervision = bool(deep_supervision)
        levels = list(reversed(range(spec.n - 1)))  # decoder stages, coarsest first
        self.upsamples = nn.ModuleList(_Resample(spec.dims[i + 1], spec.dims[i], up=True) for i in levels)
        self.decoder = nn.ModuleList(
            NNFormerStage(spec.dims[i], enc["depths"][i], enc["heads"][i], enc["window"], enc["mlp_ratio"],
                          local=spec.local[i], skip=True) for i in levels)
        self.heads = nn.ModuleList(
            nn.ConvTranspose3d(spec.dims[i], num_classes, kernel_size=enc["patch"], stride=enc["patch"])
            for i in levels)
        self.levels = levels
        _init_linear(self.decoder)

    @property
    def num_outputs(self) -> int:
        """How many outputs training mode returns with deep supervision (full, 1/2, 1/4, ...)."""
        return len(self.heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        maps = self.encoder.stages(self.encoder.embed(x))
        y, feats = maps[-1], []
        for up, stage, i in zip(self.upsamples, self.decoder, self.levels):
            skip = maps[i]
            y = up(y) + skip  # the skip also joins the residual stream (see the module docstring)
            y = _first(stage(_last(y), _last(skip))).contiguous()
            feats.append(y)
        if self.training and self.deep_supervision:
            return [head(f) for head, f in zip(reversed(self.heads), reversed(feats))]
        return self.heads[-1](feats[-1])
