"""PCRLv2 (Zhou, Yu, Wang, Lu and Han, "A Unified Visual Information Preservation Framework for
Self-supervised Pre-training in Medical Image Analysis", IEEE TPAMI 2023), in 3-D on the
convolutional encoders of the paper's Table 2 (nnU-Net's U-Net, "3D nsUNet E.") and Tables 4/9
(3D ResNet).

Objective (PCRLv2 §3; the paper's text was not at hand while this file was written, so no equation
number is given: every "(unverified)" below; where a value is the authors' release,
github.com/RL4M/PCRLv2 src/train_3d.py and src/models/pcrlv2_model_3d.py, it says so). One network,
no momentum encoder and no negatives: an encoder E and a decoder D WITHOUT skip connections
("nsUNet": the restoration cannot copy the input through a skip, so the encoder's deep features
must preserve it); D has S stages, stage s giving a feature map h_s (coarse to fine), and at each
stage
    z_s = BN(GAP(h_s))             the stage's embedding (a BatchNorm1d of the pooled map)
    p_s = Pred_s(z_s)              SimSiam's predictor, Linear(c, 2c)–BN–ReLU–Linear(2c, c)
    m_s = σ(Conv3³(h_s))↑          a deep-supervision restoration, upsampled to the input size
and after the last stage the restoration y = σ(Conv1³(h_S)).

- Views (built inside `forward` from one crop, `crop` views): two global views g_1, g_2 (random
  resized crops of the crop, `global_scale`, flips, `augment`: the restoration targets) whose
  inputs x_i are g_i under intensity transforms (`intensity`: noise, blur, gamma; the release's
  torchio RandomNoise, RandomBlur, RandomGamma) and a random patch swap (`swap`: the release's
  RandomSwap of 8x4x4 patches, 100 times in its 64x64x32 views; `iterations` is that count, scaled
  here by the crop's volume so that the same share of voxels moves: 25 swaps in a 32³ crop);
  `local_views` local views l_j (random resized crops of
  `local_scale`, resampled to `local_size`, intensity transforms, no swap).
- Pixel restoration:            L_rec = MSE(y(x_i), g_i)
- Multi-scale feature comparison (SimSiam, Chen & He 2021, eq. 1-2: D(p, z) = −cos(p, sg(z))), at
  a scale s drawn at random for every comparison (the release; `scale_sampling: all` averages over
  every scale instead):
      pair(a, b) = ½ D(p_s(a), z_s(b)) + ½ D(p_s(b), z_s(a))
      L_g   = pair(x_1, x_2)
      L_loc = mean over j and i ∈ {1, 2} of pair(x_i, l_j)
- Deep supervision, its weight decayed by a half cosine over the run (the release's
  β = ½(1 + cos(π·epoch / 240))): L_ds = MSE(m_s(x_i), g_i) at the scale s of L_g.
- Total (the release's weighting, each weight 1):

      L = w_rec·L_rec + w_g·L_g + w_loc·L_loc + β·w_ds·L_ds

  The release restores and deep-supervises view 1 only; here both global views, averaged.

Decoder ("non-skip U-Net"): built here on the body's encoder levels (body.encode(x), shallow to
deep): from the bottleneck, one stage per coarser-to-finer level, each a transposed convolution
(×2 on an axis that doubles) to the finer resolution and two 3³ convolution–BatchNorm–ReLU to that
level's width (the release's UpTransition without its concatenation), then stages of the shallowest
level's width until the input's resolution. nsunet3d (levels at 1, ½, ¼, ⅛): 3 stages as the
release's 3-D U-Net; resnet3d (levels at ½ ... 1/32): 5 stages, only the bottleneck read. The
body's own decoder (DynUNet's skip upsampling path; the ResNet U-Net's `decoder` and `top`) is
never run: its parameters are frozen (requires_grad False; they stay at their initialisation in
the checkpoint, which fine-tuning's encoder-only transfer ignores). Because each step compares the
features of randomly drawn scales, some stage heads get no gradient in a step: the class sets
`find_unused_parameters = True` for DistributedDataParallel.

3-D decisions: the release cuts its global views (64x64x32 from 64-112-voxel boxes) and six 16³
local views from the volume in preprocessing; here they are cut from the pool's crop: the global
views at the crop's size, the local ones at `local_size` (default half the crop per axis, at least
the encoder's stride: nsunet3d 32³ → 16³; resnet3d, stride 32, 64x64x32 → 32³), cut by
alice.ssl.augment.box_view at the crop's size and then resampled (trilinear) to `local_size`; no
small random affine (the release's torchio RandomAffine) and no z-normalisation of the inputs (the
pool is windowed to [0, 1] already; the sigmoid outputs and the targets stay in that range). The
decoder's convolutions are batch-normalised (the release's norm "bn"); its deep-supervision heads
are a 3³ convolution + sigmoid, without the release's BatchNorm of their single channel.

Options beyond the paper (defaults = the release's recipe): `sigmoid_output: false` restores (and
deep-supervises) through a linear output instead of the release's sigmoid: the sigmoid starts every
voxel at 0.5 where the windowed abdominal CT averages 0.12, and 100 steps at lr 5e-4 barely move it.
`scale_sampling: all` compares every scale at every step. Demo (nsunet3d 32³, batch 4, 100
iterations, mean of the first and last 10 steps): with the release's sigmoid (and, then, 100 swaps
in a 32³ crop) the restoration fell 0.165 → 0.145 and both comparisons stayed at 0 (−cos of
unrelated vectors: 0.00 → 0.02); with the linear output (the demo section) L 0.35 → −0.12,
L_rec 0.149 → 0.070, L_g 0.02 → −0.13, L_loc 0.01 → −0.06, L_ds 0.171 → 0.075, spread 1.06 → 1.05.
The comparisons stay far from SimSiam's −0.9: two views of different sub-boxes of one crop under
noise, blur, gamma and swaps take longer than 100 steps at batch 4; with identical views the same
loss falls towards −1 within 20 steps (tests/ssl/test_pcrlv2.py), so the wiring is not what holds
it back.

Logged: `l_rec`, `l_global`, `l_local`, `l_ds` (unweighted), `beta` and the collapse monitor
`spread` of the global views' stage embeddings z_s (the mean over the stages; SimSiam §4.1 reads
the std of its batch-normalised projector output the same way: z_s = BN(GAP(h_s)) keeps it near 1
unless BN's scales shrink towards 0, the way to one point that BN leaves open; the pooled maps
GAP(h_s) themselves are post-ReLU, all in the positive orthant, their spread 0.02-0.04 from the
start, uninformative).
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from alice.ssl.augment import BoxViewConfig, IntensityAugmentConfig, box_view, intensity_augment
from alice.ssl.encoder import build_cnn_body, cnn_state, global_embedding
from alice.ssl.losses import spread
from alice.ssl.registry import SSLMethod, checked_build, register_method

METHOD = {
    "name": "pcrlv2",
    "paper": "Zhou et al., IEEE TPAMI 2023",
    "objective": "multi-scale pixel restoration + multi-scale SimSiam comparison of global and local views "
                 "through a non-skip decoder",
    "views": "crop",
    "encoders": ["nsunet3d", "resnet3d"],
    "smoke": {"local_views": 1},
}

# the release's torchio transforms in alice.ssl.augment.intensity_augment's terms: RandomNoise
# (std in [0, 0.25]), RandomBlur (std in [0, 2] voxels; 0.1 here, a 0 blur is no blur), RandomGamma
# (log γ in [−0.3, 0.3]), each on every view; no brightness, shift or contrast change
INTENSITY_DEFAULTS = {"noise_std": [0.0, 0.25], "noise_prob": 1.0, "blur_sigma": [0.1, 2.0], "blur_prob": 1.0,
                      "brightness_prob": 0.0, "shift_prob": 0.0, "contrast_prob": 0.0,
                      "gamma_range": [math.exp(-0.3), math.exp(0.3)], "gamma_prob": 1.0}
SCALE_SAMPLING = ("random", "all")
SWAP_REFERENCE_VOXELS = 64 * 64 * 32   # the release's global view, for which its swap count is given


def _settings(name: str, given: Mapping[str, Any] | None, defaults: Mapping[str, Any]) -> dict[str, Any]:
    out = {**defaults, **(given or {})}
    unknown = sorted(set(out) - set(defaults))
    if unknown:
        raise ValueError(f"unknown {name} settings {unknown}; known: {', '.join(defaults)}")
    return out


def _range(name: str, value) -> tuple[float, float]:
    lo, hi = (float(v) for v in value)
    if not 0.0 < lo <= hi <= 1.0:
        raise ValueError(f"{name} must be [lo, hi] with 0 < lo <= hi <= 1, got {list(value)}")
    return lo, hi


def patch_swap(x: torch.Tensor, patch, iterations: int) -> torch.Tensor:
    """torchio's RandomSwap per sample of x (B, C, X, Y, Z): `iterations` times, two patches of
    `patch` voxels at uniform positions exchange their contents (global RNG). No value is made up:
    every output voxel is one of the sample's input voxels."""
    out = x.clone()
    sizes = x.shape[2:]
    patch = [min(int(p), s) for p, s in zip(patch, sizes)]
    for b in range(x.shape[0]):
        for _ in range(int(iterations)):
            a = [int(torch.randint(0, s - p + 1, ())) for s, p in zip(sizes, patch)]
            c = [int(torch.randint(0, s - p + 1, ())) for s, p in zip(sizes, patch)]
            box_a = (b, slice(None), *(slice(o, o + p) for o, p in zip(a, patch)))
            box_c = (b, slice(None), *(slice(o, o + p) for o, p in zip(c, patch)))
            patch_a, patch_c = out[box_a].clone(), out[box_c].clone()
            out[box_a] = patch_c
            out[box_c] = patch_a            # overlapping patches: the second write wins, as torchio's
    return out


def simsiam_pair(p_a: torch.Tensor, z_a: torch.Tensor, p_b: torch.Tensor, z_b: torch.Tensor) -> torch.Tensor:
    """SimSiam's symmetric loss (Chen & He 2021, eq. 2): ½ D(p_a, z_b) + ½ D(p_b, z_a) with
    D(p, z) = −cos(p, stop-gradient(z)), averaged over the batch; −1 at perfect agreement."""
    d_ab = -F.cosine_similarity(p_a.float(), z_b.detach().float(), dim=-1).mean()
    d_ba = -F.cosine_similarity(p_b.float(), z_a.detach().float(), dim=-1).mean()
    return 0.5 * (d_ab + d_ba)


def _conv_bn_relu(c_in: int, c_out: int) -> nn.Module:
    return nn.Sequential(nn.Conv3d(c_in, c_out, 3, padding=1), nn.BatchNorm3d(c_out), nn.ReLU(inplace=True))


class DecoderStage(nn.Module):
    """One non-skip decoder stage and its heads: the transposed convolution by `factor` (per axis),
    two 3³ conv–BN–ReLU to `c_out`; z = BN(GAP(h)), p = predictor(z), and the deep-supervision map
    σ(Conv3³(h))."""

    def __init__(self, c_in: int, c_out: int, factor, predictor_ratio: int):
        super().__init__()
        factor = tuple(int(f) for f in factor)
        self.up = nn.ConvTranspose3d(c_in, c_in, kernel_size=factor, stride=factor)
        self.convs = nn.Sequential(_conv_bn_relu(c_in, c_out), _conv_bn_relu(c_out, c_out))
        self.norm = nn.BatchNorm1d(c_out)
        hidden = int(predictor_ratio) * c_out
        self.predictor = nn.Sequential(nn.Linear(c_out, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                                       nn.Linear(hidden, c_out))
        self.deep_supervision = nn.Conv3d(c_out, 1, 3, padding=1)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h = self.convs(self.up(h))
        z = self.norm(global_embedding(h))
        return h, z, self.predictor(z)


class NonSkipDecoder(nn.Module):
    """The decoder without skip connections (module docstring): `widths` and `sizes` of the body's
    encoder levels (shallow to deep) for a crop of `crop` voxels."""

    def __init__(self, widths, sizes, crop, predictor_ratio: int, sigmoid_output: bool = True):
        super().__init__()
        self.sigmoid_output = sigmoid_output
        widths, sizes = list(widths), [tuple(s) for s in sizes]
        plan = [(widths[i], sizes[i]) for i in range(len(widths) - 2, -1, -1)]   # finer levels, deep first
        size = sizes[0]
        while size != tuple(crop):
            size = tuple(min(2 * s, c) for s, c in zip(size, crop))
            plan.append((widths[0], size))
        stages, c_in, prev = [], widths[-1], sizes[-1]
        for c_out, size in plan:
            factor = [n // p for n, p in zip(size, prev)]
            if any(n != p * f for n, p, f in zip(size, prev, factor)):
                raise ValueError(f"encoder levels {sizes} do not halve from level to level")
            stages.append(DecoderStage(c_in, c_out, factor, predictor_ratio))
            c_in, prev = c_out, size
        self.stages = nn.ModuleList(stages)
        self.out = nn.Conv3d(c_in, 1, kernel_size=1)

    def forward(self, bottleneck: torch.Tensor, restore: bool = True):
        """(restoration y or None, [h_s], [z_s], [p_s]) for the stages, coarse to fine."""
        h, hs, zs, ps = bottleneck, [], [], []
        for stage in self.stages:
            h, z, p = stage(h)
            hs.append(h)
            zs.append(z)
            ps.append(p)
        y = self._activate(self.out(h).float()) if restore else None
        return y, hs, zs, ps

    def _activate(self, y: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(y) if self.sigmoid_output else y

    def deep_supervision(self, s: int, h: torch.Tensor, size) -> torch.Tensor:
        """m_s: stage s's restoration, upsampled (trilinear) to `size`."""
        m = self._activate(self.stages[s].deep_supervision(h).float())
        return F.interpolate(m, size=tuple(size), mode="trilinear", align_corners=False)


class PCRLv2(SSLMethod):
    find_unused_parameters = True   # the heads of the scales not drawn in a step get no gradient

    def __init__(self, encoder_config: Mapping[str, Any], crop, local_views: int = 6,
                 global_scale=(0.3, 1.0), local_scale=(0.05, 0.3), local_size=None,
                 augment: Mapping[str, Any] | None = None, intensity: Mapping[str, Any] | None = None,
                 swap: Mapping[str, Any] | None = None, predictor_ratio: int = 2, scale_sampling: str = "random",
                 restoration_weight: float = 1.0, global_weight: float = 1.0, local_weight: float = 1.0,
                 deep_supervision_weight: float = 1.0, sigmoid_output: bool = True,
                 method_config: Mapping[str, Any] | None = None):
        super().__init__(method_config)
        if isinstance(local_views, bool) or int(local_views) < 0:
            raise ValueError(f"local_views must be an integer >= 0, got {local_views!r}")
        if scale_sampling not in SCALE_SAMPLING:
            raise ValueError(f"scale_sampling must be one of {', '.join(SCALE_SAMPLING)}, got {scale_sampling!r}")
        if not isinstance(sigmoid_output, bool):
            raise ValueError(f"sigmoid_output must be true or false, got {sigmoid_output!r}")
        if int(predictor_ratio) < 1:
            raise ValueError(f"predictor_ratio must be >= 1, got {predictor_ratio!r}")
        weights = {"restoration_weight": restoration_weight, "global_weight": global_weight,
                   "local_weight": local_weight, "deep_supervision_weight": deep_supervision_weight}
        for name, value in weights.items():
            if float(value) < 0:
                raise ValueError(f"{name} must be >= 0, got {value!r}")
        self.weights = {k.rsplit("_", 1)[0]: float(v) for k, v in weights.items()}
        self.local_views = int(local_views)
        self.scale_sampling = scale_sampling
        self.crop = tuple(int(c) for c in crop)
        aug = _settings("augment", augment, {"ratio_range": [0.75, 4.0 / 3.0], "flip_prob": 0.5, "flip_axes": [0]})
        box = dict(ratio_range=tuple(aug["ratio_range"]), flip_prob=float(aug["flip_prob"]),
                   flip_axes=tuple(int(a) for a in aug["flip_axes"]), intensity_scale=0.0, intensity_shift=0.0)
        self.global_view = BoxViewConfig(scale_range=_range("global_scale", global_scale), **box)
        self.local_view = BoxViewConfig(scale_range=_range("local_scale", local_scale), **box)
        ints = _settings("intensity", intensity, INTENSITY_DEFAULTS)
        self.intensity = IntensityAugmentConfig.from_mapping(ints)
        sw = _settings("swap", swap, {"patch": [8, 4, 4], "iterations": 100})
        self.swap_patch = tuple(int(p) for p in sw["patch"])
        if len(self.swap_patch) != 3 or min(self.swap_patch) < 1 or float(sw["iterations"]) < 0:
            raise ValueError(f"swap needs a patch of 3 positive sides and iterations >= 0, got {sw}")
        # `iterations` per the release's 64x64x32 crop: the same share of the voxels swapped at any crop
        self.swap_iterations = int(round(float(sw["iterations"]) * math.prod(self.crop) / SWAP_REFERENCE_VOXELS))

        self.body = build_cnn_body(encoder_config, self.crop)
        was = self.body.training
        self.body.eval()
        with torch.no_grad():
            levels = self.body.encode(torch.zeros(1, 1, *self.crop))
        self.body.train(was)
        widths = [int(t.shape[1]) for t in levels]
        sizes = [tuple(int(s) for s in t.shape[2:]) for t in levels]
        stride = [c // s for c, s in zip(self.crop, sizes[-1])]
        if local_size is None:
            local_size = [max(st, (c // 2) // st * st) for c, st in zip(self.crop, stride)]
        self.local_size = tuple(int(s) for s in local_size)
        if len(self.local_size) != 3 or any(s < st or s % st for s, st in zip(self.local_size, stride)):
            raise ValueError(f"local_size must be 3 multiples of the encoder's stride {stride}, got {list(local_size)}")
        self.decoder = NonSkipDecoder(widths, sizes, self.crop, int(predictor_ratio), sigmoid_output)
        # the body's own (skip) decoder never runs: frozen, so that no optimizer step touches it
        encoder_keys = set(self.body.encoder_state())
        used = {id(p) for name, p in self.body.named_parameters(remove_duplicate=False) if name in encoder_keys}
        for p in self.body.parameters():
            if id(p) not in used:
                p.requires_grad_(False)
        self.register_buffer("progress", torch.zeros(()))   # share of the run done: β's clock

    def encoder_state_dict(self) -> dict[str, torch.Tensor]:
        return cnn_state(self.body)

    def after_step(self, step: int, total_steps: int) -> None:
        self.progress.fill_(min(1.0, (step + 1) / max(1, total_steps)))

    def beta(self) -> float:
        """The deep-supervision weight ½(1 + cos(π·progress)): 1 at the start, 0 at the end."""
        return 0.5 * (1.0 + math.cos(math.pi * float(self.progress)))

    def views(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """From crops x (B, 1, X, Y, Z): the global targets g (2, B, ...), their inputs (2, B, ...)
        and the local inputs (L, B, 1, *local_size)."""
        g = torch.stack([box_view(x, None, self.global_view)[0] for _ in range(2)])
        inputs = torch.stack([patch_swap(intensity_augment(v, None, self.intensity).to(x.dtype), self.swap_patch,
                                         self.swap_iterations) for v in g])
        local = []
        for _ in range(self.local_views):
            v = box_view(x, None, self.local_view)[0]
            v = F.interpolate(v, size=self.local_size, mode="trilinear", align_corners=False)
            local.append(intensity_augment(v, None, self.intensity).to(x.dtype))
        out = {"targets": g, "inputs": inputs}
        if local:
            out["local"] = torch.stack(local)
        return out

    def _scale(self, n: int) -> int:
        return int(torch.randint(0, n, ()))

    def _compare(self, a, b) -> torch.Tensor:
        """pair(a, b) of two decodings' (z list, p list): at one random scale, or averaged over all."""
        (za, pa), (zb, pb) = a, b
        if self.scale_sampling == "all":
            return sum(simsiam_pair(pa[s], za[s], pb[s], zb[s]) for s in range(len(za))) / len(za)
        s = self._scale(len(za))
        return simsiam_pair(pa[s], za[s], pb[s], zb[s])

    def forward(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x = batch["x"]
        b = x.shape[0]
        v = self.views(x)
        n_scales = len(self.decoder.stages)
        decoded = [self.decoder(self.body.encode(v["inputs"][i])[-1]) for i in range(2)]
        targets = v["targets"].float()
        l_rec = sum(F.mse_loss(decoded[i][0], targets[i]) for i in range(2)) / 2.0
        # global comparison at scale s (all scales: s runs over them), deep supervision at the same s
        feats = [(d[2], d[3]) for d in decoded]
        scales = list(range(n_scales)) if self.scale_sampling == "all" else [self._scale(n_scales)]
        l_global = sum(simsiam_pair(feats[0][1][s], feats[0][0][s], feats[1][1][s], feats[1][0][s])
                       for s in scales) / len(scales)
        l_ds = sum(F.mse_loss(self.decoder.deep_supervision(s, decoded[i][1][s], self.crop), targets[i])
                   for s in scales for i in range(2)) / (2 * len(scales))
        l_local = torch.zeros((), device=x.device)
        if self.local_views:
            local = v["local"]
            _, _, zl, pl = self.decoder(self.body.encode(local.flatten(0, 1))[-1], restore=False)
            for j in range(self.local_views):
                part = ([z[j * b:(j + 1) * b] for z in zl], [p[j * b:(j + 1) * b] for p in pl])
                l_local = l_local + self._compare(feats[0], part) + self._compare(feats[1], part)
            l_local = l_local / (2 * self.local_views)
        beta = self.beta()
        w = self.weights
        loss = (w["restoration"] * l_rec + w["global"] * l_global + w["local"] * l_local
                + beta * w["deep_supervision"] * l_ds)
        out = {"loss": loss, "l_rec": l_rec.detach(), "l_global": l_global.detach(), "l_local": l_local.detach(),
               "l_ds": l_ds.detach(), "beta": torch.tensor(beta)}
        if b > 1:
            out["spread"] = sum(spread(torch.cat([feats[0][0][s], feats[1][0][s]])) for s in range(n_scales)) / n_scales
        return out


_KWARGS = ("local_views", "global_scale", "local_scale", "local_size", "augment", "intensity", "swap",
           "predictor_ratio", "scale_sampling", "restoration_weight", "global_weight", "local_weight",
           "deep_supervision_weight", "sigmoid_output")


@register_method("pcrlv2")
def build(method_config: Mapping[str, Any], encoder_config: Mapping[str, Any], crop) -> PCRLv2:
    return checked_build("pcrlv2", PCRLv2, _KWARGS, method_config, encoder_config, crop)
