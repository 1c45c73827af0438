"""`AnatomyNet`: the SAM-style anatomical embedding network (Yan et al., "SAM: Self-supervised
learning of pixel-wise anatomical embeddings in radiological images", the paper's ref. [49]).

SAM embeds every voxel twice with a 3-D ResNet-18 + FPN: a *fine* (local) map at stride 2 that
separates nearby structures and a *coarse* (global) map at a lower resolution that knows which
body part a voxel belongs to; both l2-normalised along channels (docs/facts.md "SAM"). This module is
the same layout with width and depth from a config, so the demo can run a tiny version on a CPU:

  stem    conv `stem_kernel` (SAM: (3, 7, 7) in (z, y, x) = (7, 7, 3) here), stride 1
  stage i BasicBlock x blocks[i] at width widths[i]; the first block of every stage has stride 2,
          so stage i sits at stride 2 ** (i + 1)
  FPN     1x1 laterals to `fpn_dim`, top-down nearest upsampling + sum, 3x3x3 smoothing at the
          fine level; the deepest level is the top of the pyramid
  heads   fine  = 1x1x1 conv(FPN level at `fine_stride`)   -> embed_dim, l2-normalised
          coarse = 1x1x1 conv(FPN level at `coarse_stride`) -> embed_dim, l2-normalised

Size rule (full volumes are embedded whole): the input is zero-padded at the high end of every
axis to a multiple of the deepest stride (zero = air in the [0, 1]-windowed cache), and each
output is cropped back to ``ceil(n / stride)`` cells. Cell ``i`` of a map at stride ``s`` covers
voxels ``i*s .. i*s + s - 1``; its centre is voxel ``i*s + (s - 1) / 2`` (`alice.anatomy.grid.cell_centre`). The
training pairs (`alice.anatomy.sampling`) and the matcher (`alice.anatomy.learned`) use this
convention (`alice.anatomy.grid`), so the network learns to put the embedding of that centre
into cell ``i``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from alice.anatomy.grid import grid_shape
from alice.errors import ConfigError

NORMS = ("batch", "none")
PADDINGS = ("zeros", "replicate")


@dataclass(frozen=True)
class AnatomyNetConfig:
    """Width/depth of `AnatomyNet`. Defaults are SAM's (ResNet-18 layout, 128-d embeddings)."""

    widths: tuple[int, ...] = (64, 128, 256, 512)
    blocks: tuple[int, ...] = (2, 2, 2, 2)
    stem_width: int = 32
    stem_kernel: tuple[int, int, int] = (7, 7, 3)
    fpn_dim: int = 128
    embed_dim: int = 128
    fine_stride: int = 2
    coarse_stride: int = 8
    norm: str = "batch"
    padding_mode: str = "zeros"

    def __post_init__(self) -> None:
        # normalise lists (from JSON/YAML/checkpoints) to tuples of ints
        for name in ("widths", "blocks", "stem_kernel"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        n = len(self.widths)
        if n < 1 or min(self.widths) < 1:
            raise ConfigError("model.widths", f"must be >= 1 positive widths, got {list(self.widths)}")
        if len(self.blocks) != n or min(self.blocks) < 1:
            raise ConfigError("model.blocks", f"must be {n} integers >= 1 (one per stage), got {list(self.blocks)}")
        if len(self.stem_kernel) != 3 or min(self.stem_kernel) < 1 or min(k % 2 for k in self.stem_kernel) == 0:
            raise ConfigError("model.stem_kernel", f"must be 3 odd sizes, got {list(self.stem_kernel)}")
        strides = self.stage_strides
        for key in ("fine_stride", "coarse_stride"):
            if getattr(self, key) not in strides:
                raise ConfigError(f"model.{key}", f"must be one of the stage strides {list(strides)}, "
                                                  f"got {getattr(self, key)}")
        if self.coarse_stride < self.fine_stride:
            raise ConfigError("model.coarse_stride", f"must be >= fine_stride ({self.fine_stride})")
        for key in ("stem_width", "fpn_dim", "embed_dim"):
            if int(getattr(self, key)) < 1:
                raise ConfigError(f"model.{key}", f"must be >= 1, got {getattr(self, key)}")
        if self.norm not in NORMS:
            raise ConfigError("model.norm", f"must be one of {', '.join(NORMS)}, got {self.norm!r}")
        if self.padding_mode not in PADDINGS:
            raise ConfigError("model.padding_mode", f"must be one of {', '.join(PADDINGS)}, got {self.padding_mode!r}")

    @property
    def stage_strides(self) -> tuple[int, ...]:
        return tuple(2 ** (i + 1) for i in range(len(self.widths)))

    @property
    def pad_multiple(self) -> int:
        return self.stage_strides[-1]

    def to_dict(self) -> dict[str, Any]:
        """Plain python values (lists, ints, str): safe in a weights-only checkpoint and JSON."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | "AnatomyNetConfig" | None) -> "AnatomyNetConfig":
        if d is None:
            return cls()
        if isinstance(d, cls):
            return d
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError("model", f"unknown keys {unknown} (known: {sorted(known)})")
        return cls(**dict(d))


def _norm(kind: str, ch: int) -> nn.Module:
    return nn.BatchNorm3d(ch) if kind == "batch" else nn.Identity()


class BasicBlock(nn.Module):
    """ResNet basic block (two 3x3x3 convs + identity / strided 1x1x1 projection shortcut)."""

    def __init__(self, cin: int, cout: int, stride: int, norm: str, padding_mode: str = "zeros"):
        super().__init__()
        bias = norm == "none"
        self.conv1 = nn.Conv3d(cin, cout, 3, stride=stride, padding=1, bias=bias, padding_mode=padding_mode)
        self.n1 = _norm(norm, cout)
        self.conv2 = nn.Conv3d(cout, cout, 3, padding=1, bias=bias, padding_mode=padding_mode)
        self.n2 = _norm(norm, cout)
        self.short = None
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv3d(cin, cout, 1, stride=stride, bias=bias), _norm(norm, cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.n1(self.conv1(x)), inplace=True)
        y = self.n2(self.conv2(y))
        return F.relu(y + (x if self.short is None else self.short(x)), inplace=True)


class AnatomyNet(nn.Module):
    """ResNet + FPN -> (fine, coarse) l2-normalised embedding maps (see module doc).

    forward(x (B, 1, X, Y, Z)) -> (fine (B, C, ceil(X/fs), ...), coarse (B, C, ceil(X/cs), ...)).
    """

    def __init__(self, config: Mapping[str, Any] | AnatomyNetConfig | None = None):
        super().__init__()
        cfg = AnatomyNetConfig.from_dict(config)
        self.config = cfg
        pad = tuple(k // 2 for k in cfg.stem_kernel)
        bias = cfg.norm == "none"
        self.stem = nn.Sequential(
            nn.Conv3d(1, cfg.stem_width, cfg.stem_kernel, padding=pad, bias=bias, padding_mode=cfg.padding_mode),
            _norm(cfg.norm, cfg.stem_width),
            nn.ReLU(inplace=True),
        )
        stages, cin = [], cfg.stem_width
        for width, depth in zip(cfg.widths, cfg.blocks):
            blocks = [BasicBlock(cin, width, 2, cfg.norm, cfg.padding_mode)]
            blocks += [BasicBlock(width, width, 1, cfg.norm, cfg.padding_mode) for _ in range(depth - 1)]
            stages.append(nn.Sequential(*blocks))
            cin = width
        self.stages = nn.ModuleList(stages)
        # FPN from the deepest stage down to the fine level only (finer stages feed nothing)
        self.first_level = cfg.stage_strides.index(cfg.fine_stride)
        self.coarse_level = cfg.stage_strides.index(cfg.coarse_stride)
        self.laterals = nn.ModuleList(
            [nn.Conv3d(w, cfg.fpn_dim, 1) for w in cfg.widths[self.first_level:]])
        self.smooth = nn.Conv3d(cfg.fpn_dim, cfg.fpn_dim, 3, padding=1, padding_mode=cfg.padding_mode)
        self.fine_head = nn.Sequential(nn.ReLU(), nn.Conv3d(cfg.fpn_dim, cfg.embed_dim, 1))
        self.coarse_head = nn.Sequential(nn.ReLU(), nn.Conv3d(cfg.fpn_dim, cfg.embed_dim, 1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if x.dim() != 5 or x.shape[1] != 1:
            raise ValueError(f"expected (B, 1, X, Y, Z), got shape {tuple(x.shape)}")
        cfg = self.config
        size = x.shape[2:]
        m = cfg.pad_multiple
        pads = [(-n) % m for n in size]
        if any(pads):  # F.pad lists the last axis first
            x = F.pad(x, (0, pads[2], 0, pads[1], 0, pads[0]))
        feats = []
        h = self.stem(x)
        for stage in self.stages:
            h = stage(h)
            feats.append(h)
        feats = feats[self.first_level:]
        top = self.laterals[-1](feats[-1])
        pyramid = [top]
        for lat, f in zip(reversed(self.laterals[:-1]), reversed(feats[:-1])):
            top = lat(f) + F.interpolate(top, size=f.shape[2:], mode="nearest")
            pyramid.append(top)
        pyramid = pyramid[::-1]  # pyramid[0] = fine level
        fine = self.fine_head(self.smooth(pyramid[0]))
        coarse = self.coarse_head(pyramid[self.coarse_level - self.first_level])
        fine = _crop(fine, grid_shape(size, cfg.fine_stride))
        coarse = _crop(coarse, grid_shape(size, cfg.coarse_stride))
        return F.normalize(fine, dim=1), F.normalize(coarse, dim=1)


def _crop(t: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    return t[:, :, : shape[0], : shape[1], : shape[2]]
