"""Tang et al.: the self-supervised Swin UNETR (Tang, Yang, Li, Roth, Landman, Xu, Nath and
Hatamizadeh, "Self-Supervised Pre-Training of Swin Transformers for 3D Medical Image Analysis",
CVPR 2022), in 3-D on the harness's three encoders (the paper pretrains Swin; the Alice paper's
Table 1 runs "Tang et al." on every backbone).

Objective (§3.2, its four paragraphs): three proxy tasks on two views of one sub-volume X, each
view turned by a random multiple of 90° and then cut out (masked) at random,

    masked volume inpainting    L_inpaint  = ‖X_r − X̂‖₁                 (mean over voxels)
    rotation prediction         L_rot      = −Σ_r y_r log ŷ_r            (4 classes: 0/90/180/270°)
    contrastive coding          L_contrast = −log exp(sim(v_i, v_j)/t) / Σ_{k≠i} exp(sim(v_i, v_k)/t)
    total ("Loss Function")     L_tot      = λ1·L_inpaint + λ2·L_contrast + λ3·L_rot

where X_r is the turned view before the cutout (the inpainting target: every voxel, as in the
authors' release, whose L1 runs over the whole volume, not only the cut boxes), X̂ the
reconstruction head's output on the cut view, ŷ the rotation head's softmax, and v_i, v_j the
two views' contrastive embeddings of one sample, the other 2B − 2 embeddings of the batch the
negatives (SimCLR's NT-Xent, `alice.ssl.losses.nt_xent`; sim = cosine). The paper's grid search
set λ1 = λ2 = λ3 = 1 (`lambda_inpaint`, `lambda_contrast`, `lambda_rot`); t is not stated in the
paper: 0.5 (`temperature`) is the release's.

Heads (§3.2), all on the encoder's bottleneck tokens:
- reconstruction: the paper's "transpose convolution" head — the tokens as their (gx, gy, gz)
  grid, then log2(stride) stages of ConvTranspose3d(2, stride 2) → InstanceNorm → LeakyReLU
  halving the width (from `decoder.dim`, at least 4 channels), a last 1×1×1 convolution to one
  channel: back to the crop's voxels. A stage doubles only the axes still below the crop (an
  anisotropic stride takes fewer stages on its short axes); the stride must be a power of two.
  The release's default head upsamples by trilinear interpolation between its convolutions; both
  are "light", the transposed one is what the paper names;
- rotation: the paper's "MLP classification head" on the crop's pooled embedding (the mean of its
  tokens, alice.ssl.encoder.pool: the encoders have no [CLS] token), Linear–GELU–Linear with
  `rotation_head.hidden_dim` hidden units, or a single Linear when it is 0 (the release's);
- contrastive: a linear layer on the pooled embedding to `contrastive_head.dim` (the paper's
  512), or Linear–GELU–Linear when `contrastive_head.hidden_dim` > 0.
The release reads the rotation and the contrastive embeddings from the first and the second
bottleneck token of a 96³ crop's 3³ grid; here both read the pooled embedding, the
encoder-agnostic equivalent (ViT crops can have a single token along an axis).

Views (`crop`, built inside forward): from each crop, two views, each sample turned by its own
k ∈ {0, 1, 2, 3} (·90°), then cut out independently (alice.ssl.augment.rot90_batch,
random_cutout). 3-D decisions:
- rotation plane: the paper turns "along the z-axis"; a 90° turn keeps the crop's shape only in
  a square plane, so `rotation_plane: auto` takes xy (about z) when X = Y, else yz (about x), else
  xz (alice.ssl.augment.square_plane): ViT 48×48×32 and nnFormer 32³ turn about z, Swin's
  64×32×32 about x (its only square plane). A crop with no square plane is refused;
- cutout: per sample, boxes (each side 5–25 % of its axis) are cut until they cover a fraction
  f ~ U(0, `cutout.max_fraction` = 0.3) of the voxels (the paper's "30 %" drop rate, the
  release's law), filled with uniform noise in [0, 1] (the cached intensity range); a second
  round of boxes takes another sample's voxels at the same place (`cutout.swap`, the release's
  second pass). No other augmentation (Fig. 1: the sub-volumes are "augmented with random inner
  cutout and rotation").

Logged: `l_inpaint`, `l_rot`, `l_contrast` (unweighted), `rot_acc` (the rotation head's accuracy
on the 2B views: 0.25 is chance), and the collapse monitor `spread` of the 2B contrastive
embeddings (alice.ssl.losses.spread). At the demo scale (ViT, batch 4, 100 iterations) the
inpainting and contrastive terms fall (0.35 → 0.15, 1.88 → 1.40) while `l_rot` stays near log 4
(`rot_acc` at chance): the rotation task needs a longer run than the demo's.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from alice.ssl.augment import CutoutConfig, random_cutout, rot90_batch, square_plane
from alice.ssl.encoder import build_encoder, pool, transferable_state
from alice.ssl.losses import nt_xent, spread
from alice.ssl.registry import SSLMethod, checked_build, register_method

METHOD = {
    "name": "tang_swin_unetr",
    "paper": "Tang et al., CVPR 2022",
    "objective": "masked volume inpainting (L1) + 90° rotation prediction + contrastive coding (NT-Xent)",
    "views": "crop",
    "encoders": ["vit", "swin", "nnformer"],
    "smoke": {"decoder": {"dim": 8}, "rotation_head": {"hidden_dim": 16}, "contrastive_head": {"dim": 16}},
}


class VoxelDecoder(nn.Module):
    """Bottleneck tokens (B, N, D) on a `grid` -> voxels (B, out_channels, *grid·stride): transposed
    convolutions doubling the axes still below their size (module docstring)."""

    def __init__(self, in_dim: int, grid, stride, dim: int, out_channels: int = 1, min_dim: int = 4) -> None:
        super().__init__()
        self.grid = tuple(int(g) for g in grid)
        stride = tuple(int(s) for s in stride)
        if any(s < 1 or s & (s - 1) for s in stride):
            raise ValueError(f"the encoder's stride {list(stride)} is not a power of two on every axis")
        steps = [int(math.log2(s)) for s in stride]
        layers: list[nn.Module] = []
        c_in = in_dim
        for i in range(max(steps)):
            up = tuple(2 if i < n else 1 for n in steps)
            c_out = max(int(dim) >> i, min_dim)
            layers += [nn.ConvTranspose3d(c_in, c_out, kernel_size=up, stride=up),
                       nn.InstanceNorm3d(c_out, affine=True), nn.LeakyReLU(0.01)]
            c_in = c_out
        layers.append(nn.Conv3d(c_in, out_channels, kernel_size=1))
        self.net = nn.Sequential(*layers)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        b, n, d = tokens.shape
        if n != math.prod(self.grid):
            raise ValueError(f"decoder built for a {list(self.grid)} grid, got {n} tokens")
        return self.net(tokens.transpose(1, 2).reshape(b, d, *self.grid))


def _mlp(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Module:
    """A Linear, or Linear–GELU–Linear when hidden_dim > 0; weights ~ truncated N(0, 0.02²), zero
    biases (the harness's heads' initialisation, alice.models.heads)."""
    if hidden_dim <= 0:
        head: nn.Module = nn.Linear(in_dim, out_dim)
    else:
        head = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, out_dim))
    for m in head.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)
    return head


def _settings(name: str, given: Mapping[str, Any] | None, defaults: Mapping[str, Any]) -> dict[str, Any]:
    out = {**defaults, **(given or {})}
    unknown = sorted(set(out) - set(defaults))
    if unknown:
        raise ValueError(f"unknown {name} settings {unknown}; known: {', '.join(defaults)}")
    return out


class Tang(SSLMethod):
    def __init__(self, encoder_config: Mapping[str, Any], crop, lambda_inpaint: float = 1.0,
                 lambda_rot: float = 1.0, lambda_contrast: float = 1.0, temperature: float = 0.5,
                 decoder: Mapping[str, Any] | None = None, rotation_head: Mapping[str, Any] | None = None,
                 contrastive_head: Mapping[str, Any] | None = None, cutout: Mapping[str, Any] | None = None,
                 rotation_plane: str = "auto", method_config: Mapping[str, Any] | None = None):
        super().__init__(method_config)
        for name, value in (("lambda_inpaint", lambda_inpaint), ("lambda_rot", lambda_rot),
                            ("lambda_contrast", lambda_contrast)):
            if float(value) < 0:
                raise ValueError(f"{name} must be >= 0, got {value!r}")
        if float(temperature) <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature!r}")
        self.lambdas = (float(lambda_inpaint), float(lambda_rot), float(lambda_contrast))
        self.temperature = float(temperature)
        self.cutout = CutoutConfig.from_mapping(cutout)
        self.crop = tuple(int(c) for c in crop)
        self.plane = square_plane(self.crop, rotation_plane)
        dec = _settings("decoder", decoder, {"dim": 384})
        rot = _settings("rotation_head", rotation_head, {"hidden_dim": 0})
        ctr = _settings("contrastive_head", contrastive_head, {"dim": 512, "hidden_dim": 0})
        self.encoder = build_encoder(encoder_config, self.crop, masking=False)
        d = self.encoder.embed_dim
        grid = tuple(int(g) for g in self.encoder.grid)
        stride = tuple(c // g for c, g in zip(self.crop, grid))
        self.decoder = VoxelDecoder(d, grid, stride, int(dec["dim"]))
        self.rotation_head = _mlp(d, int(rot["hidden_dim"]), 4)
        self.contrastive_head = _mlp(d, int(ctr["hidden_dim"]), int(ctr["dim"]))

    def encoder_state_dict(self) -> dict[str, torch.Tensor]:
        return transferable_state(self.encoder)

    def views(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Two turned, cut-out views of x (B, 1, X, Y, Z): (cut views (2B, ...), turned views before
        the cutout (2B, ...), rotation classes (2B,)), view 1's samples first."""
        b = x.shape[0]
        k = torch.randint(0, 4, (2 * b,))
        turned = torch.cat([rot90_batch(x, k[:b], self.plane), rot90_batch(x, k[b:], self.plane)])
        cut = torch.cat([random_cutout(turned[:b], None, self.cutout)[0],
                         random_cutout(turned[b:], None, self.cutout)[0]])
        return cut, turned, k.to(x.device)

    def forward(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x = batch["x"]
        b = x.shape[0]
        cut, turned, k = self.views(x)
        tokens = self.encoder(cut)[0]                                   # (2B, N, D)
        rec = self.decoder(tokens)
        z = pool(tokens)
        rot_logits = self.rotation_head(z).float()
        v = self.contrastive_head(z).float()
        l_inpaint = (rec.float() - turned.float()).abs().mean()
        l_rot = F.cross_entropy(rot_logits, k)
        l_contrast = nt_xent(v[:b], v[b:], self.temperature)
        w_inpaint, w_rot, w_contrast = self.lambdas
        loss = w_inpaint * l_inpaint + w_contrast * l_contrast + w_rot * l_rot
        out = {"loss": loss, "l_inpaint": l_inpaint.detach(), "l_rot": l_rot.detach(),
               "l_contrast": l_contrast.detach(),
               "rot_acc": (rot_logits.detach().argmax(-1) == k).float().mean()}
        out["spread"] = spread(v)
        return out


_KWARGS = ("lambda_inpaint", "lambda_rot", "lambda_contrast", "temperature", "decoder", "rotation_head",
           "contrastive_head", "cutout", "rotation_plane")


@register_method("tang_swin_unetr")
def build(method_config: Mapping[str, Any], encoder_config: Mapping[str, Any], crop) -> Tang:
    return checked_build("tang_swin_unetr", Tang, _KWARGS, method_config, encoder_config, crop)
