"""PCRL: preservational contrastive representation learning (Zhou, Lu, Yang, Han and Yu,
"Preservational Learning Improves Self-supervised Medical Image Models by Reconstructing Diverse
Contexts", ICCV 2021), in 3-D on the convolutional encoder-decoders of the paper's Table 2 (3D U-Net,
"E.&D.") and Tables 4/9 (3D ResNet).

Objective (PCRL §3; the paper's text was not at hand while this file was written, so its equation
numbers are not given: every "(unverified)" below; where a value is the authors' release,
github.com/Luchixiang/PCRL pytorch/pcrl_3d.py, it says so). Three encoders share one architecture:
the ordinary encoder f_o (trained), the momentum encoder f_m (an EMA of f_o, MoCo) and the hybrid
encoder f_h, which has no weights of its own: its features at every level are the mixup
α·f_o + (1 − α)·f_m of the other two ("cross-model mixup").

- Views (built inside `forward` from one crop, `crop` views): two random resized crops g_o, g_m of
  the crop (`augment`, alice.ssl.augment.box_view: the release's two overlapping crops of a LUNA
  volume resized to 64x64x32), each corrupted by Models Genesis' transforms into the encoders'
  inputs x_o, x_m (`corruption`: local voxel shuffling, in-painting or out-painting, the release's
  rates), and a random spatial transformation T per view: flips of each axis (p ½) then k·90°,
  k ∈ {0, 1, 2, 3}, in the crop's square plane, coded as a 7-vector c_T (3 flips, one-hot k).
- Contrastive (MoCo, InfoNCE with a queue of K negatives, temperature τ): q = P(GAP(f_o(x_o))),
  k = P_m(GAP(f_m(x_m))) (P a Linear–ReLU–Linear projector on the global average pool of the
  bottleneck, P_m its EMA), both l2-normalised,

      L_nce(q, k) = −log exp(q·k/τ) / (exp(q·k/τ) + Σ_{n ∈ queue} exp(q·n/τ))

- Preservational reconstruction (the decoder D and a 1x1 convolution + sigmoid, `sigmoid_output`,
  restore the image from the features that carry the contrastive embedding): the transformation-conditioned
  attention (TCA) A(c_T) = σ(W2·ReLU(W1·c_T)) re-weights the bottleneck's channels, so the decoder
  is told which T to apply; its targets are "diverse contexts" of the ORIGINAL crops (g, before the
  corruption):
      ordinary      D(A(c_To)·f_o(x_o))                       → T_o(g_o)
      hybrid        D(α·A(c_To)·f_o(x_o) + (1 − α)·A(c_Tm)·f_m(x_m))   (every level mixed)
                                                              → α·T_o(g_o) + (1 − α)·T_m(g_m)
  and on the mixup of the batch with itself (λ ~ Beta(1, 1) folded to max(λ, 1 − λ), a random
  pairing π of its samples; x̃ = λ·x + (1 − λ)·x[π], no T, no TCA):
      mixed         D(f_o(x̃_o))                               → g̃_o = λ·g_o + (1 − λ)·g_o[π]
      mixed hybrid  D(α'·f_o(x̃_o) + (1 − α')·f_m(x̃_m))        → α'·g̃_o + (1 − α')·g̃_m
  with α, α' ~ Beta(1, 1) folded likewise, and the mixed embeddings contrasted too:
  L_nce(q̃, k̃) (the mixed inputs' own keys) and L_nce(q̃, λ·k + (1 − λ)·k[π]) (the mixed keys).
- Total (the release's weighting; the paper's equation (unverified)):

      L = w_c · (L_nce(q, k) + L_nce(q̃, k̃) + L_nce(q̃, k_λ)) / 3
        + w_r · (MSE_ordinary + MSE_hybrid + MSE_mixed + MSE_mixed-hybrid) / 4

  `contrastive_weight` w_c = `reconstruction_weight` w_r = 1. τ = 0.2, K = 16384, the EMA momentum
  0.999 constant, the projector 128 → 128 and the TCA's hidden 256 are the release's.

3-D decisions:
- one crop of the pool per sample; both views are random resized crops of it (scale `augment.
  scale_range`, no flips or intensity change there: T is the task's own flip/rotation and the
  corruption the only input-side change, so the targets stay in the cached [0, 1] range the sigmoid
  output covers). The release's reconstruction target of the ordinary decoder is T of its
  corrupted input; here T of the uncorrupted view, the "original" context (the release's mixed
  targets are the uncorrupted crops too);
- the local voxel shuffling is vectorised: two tilings of the view with random tile sides (each
  in [1, side/10], the release's block sides) at random offsets, the voxels of every tile permuted
  (the release permutes 10,000 random blocks one by one, ~1.9 visits a voxel at 64x64x32; two
  tilings visit each voxel about twice);
- the momentum encoder runs in eval mode (alice.ssl.momentum), its BatchNorm on the running
  statistics copied from f_o: what ShuffleBN (the release) guards against, keys that share batch
  statistics with their queries, cannot happen; the queue is this process's own (MoCo gathers the
  keys of all GPUs) and holds the momentum encoder's keys k and k̃ of every step (the release
  also enqueues the synthetic k_λ);
- the four decoder passes run as one batch of 4B (their BatchNorm, resnet3d's decoder, pools them);
- the 90° turn needs a square plane (alice.ssl.augment.square_plane, `rotation_plane`): 64x64x32
  and 32³ crops turn about z as the release (its axes (1, 2) of a 64x64x32 cube);
- the body is the whole encoder-decoder (alice.ssl.encoder.build_cnn_body); the checkpoint carries
  it all (cnn_state): TCA, projector and the output convolution are pretraining heads.

Options beyond the paper (defaults = the paper's/release's recipe): `projector.norm: batch` puts a
BatchNorm1d (batch statistics, also in the momentum copy) after the projector's first Linear;
`sigmoid_output: false` restores through a linear output instead of the release's sigmoid;
`mixup: false` drops the batch-mixup branch (its two contrasts and two reconstructions: half the
decoder's cost). The demo section (config.yaml) sets the first two: the unet3d body (MONAI's
BasicUNet) normalises every map per instance, so the global average pool of its 2³ bottleneck
carries little that tells two crops apart: without the BatchNorm the embeddings start collapsed and
stay so (spread 0.05 → 0.01 over the first 27 steps, the InfoNCE climbing towards log(K + 1) as the
queue filled); and the sigmoid starts every voxel at 0.5 where the windowed abdominal CT averages
0.12, which 100 steps at lr 5e-4 do not undo (the mean MSE of the first and last 10 steps: sigmoid
0.22 → 0.17, linear 0.20 → 0.05).

Logged: `l_nce` (the three terms' mean), `l_rec` (the four MSEs' mean), each term (`l_nce_o`,
`l_nce_mix`, `l_nce_lam`, `l_rec_o`, `l_rec_h`, `l_rec_mix`, `l_rec_mixh`), `acc` (the share of
queries whose positive key beats every queue entry) and the collapse monitor `spread` of the
ordinary embeddings q. At the demo scale (unet3d, 32³, batch 4, 100 iterations, a queue of 32) the
reconstruction falls (mean of the first and last 10 steps 0.20 → 0.05); the InfoNCE starts low
while the queue still holds its random initial negatives (3.08 over steps 1-10), rises to 3.58 once
it holds real keys (steps 6-15) and falls to 3.30 (log 33 = 3.50: the positive barely stands out
yet); spread 0.82 → 0.63.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from alice.ssl.augment import BoxViewConfig, box_view, rot90_batch, square_plane
from alice.ssl.encoder import build_cnn_body, cnn_state, global_embedding
from alice.ssl.losses import spread
from alice.ssl.momentum import MomentumMethod
from alice.ssl.registry import checked_build, register_method

METHOD = {
    "name": "pcrl",
    "paper": "Zhou et al., ICCV 2021",
    "objective": "MoCo InfoNCE (momentum encoder + queue) + preservational reconstruction of "
                 "transformed, cross-model-mixed and mixup contexts",
    "views": "crop",
    "encoders": ["unet3d", "resnet3d"],
    "smoke": {"projector": {"hidden_dim": 16, "dim": 16}, "tca_hidden_dim": 16, "queue_size": 32},
}

CODE_DIM = 7  # 3 flips + one-hot of 4 rotations (the release's aug_tensor)


# ------------------------------------------------------------------------------ input corruption
@dataclass(frozen=True)
class CorruptionConfig:
    """Models Genesis' input transforms as the PCRL release applies them (its config: local_rate
    0.5, paint_rate 0.9, outpaint_rate 0.8): local voxel shuffling with probability
    `local_shuffle_prob`, then with probability `paint_prob` in-painting (probability
    `inpaint_prob`) or out-painting."""

    local_shuffle_prob: float = 0.5
    paint_prob: float = 0.9
    inpaint_prob: float = 0.2

    @classmethod
    def from_mapping(cls, options) -> "CorruptionConfig":
        options = dict(options or {})
        unknown = sorted(set(options) - {"local_shuffle_prob", "paint_prob", "inpaint_prob"})
        if unknown:
            raise ValueError(f"unknown corruption settings {unknown}; known: local_shuffle_prob, paint_prob, "
                             f"inpaint_prob")
        config = cls(**{k: float(v) for k, v in options.items()})
        for name in ("local_shuffle_prob", "paint_prob", "inpaint_prob"):
            if not 0.0 <= getattr(config, name) <= 1.0:
                raise ValueError(f"corruption {name} must be in [0, 1], got {getattr(config, name)!r}")
        return config


def _randint(lo: int, hi: int) -> int:
    """Uniform integer in [lo, hi] (global RNG; hi < lo gives lo)."""
    return lo if hi <= lo else int(torch.randint(lo, hi + 1, ()))


def local_shuffle(v: torch.Tensor, rounds: int = 2) -> torch.Tensor:
    """v (C, X, Y, Z) with its voxels permuted inside small tiles: `rounds` tilings, each with random
    tile sides in [1, side // 10] and a random offset; every tile's voxels permuted (the same
    permutation for every channel). Voxels beyond the last whole tile stay."""
    out = v.clone()
    c, sizes = v.shape[0], v.shape[1:]
    for _ in range(rounds):
        tile = [_randint(1, max(1, s // 10)) for s in sizes]
        start = [_randint(0, t - 1) for t in tile]
        n = [(s - o) // t for s, o, t in zip(sizes, start, tile)]
        if min(n) < 1 or tile == [1, 1, 1]:
            continue
        region = tuple(slice(o, o + k * t) for o, k, t in zip(start, n, tile))
        block = out[(slice(None), *region)].reshape(c, n[0], tile[0], n[1], tile[1], n[2], tile[2])
        block = block.permute(0, 1, 3, 5, 2, 4, 6).reshape(c, n[0], n[1], n[2], -1)
        order = torch.rand(n[0], n[1], n[2], block.shape[-1]).argsort(-1).to(v.device)
        block = block.gather(-1, order.unsqueeze(0).expand_as(block))
        block = block.reshape(c, n[0], n[1], n[2], tile[0], tile[1], tile[2]).permute(0, 1, 4, 2, 5, 3, 6)
        out[(slice(None), *region)] = block.reshape(c, *(k * t for k, t in zip(n, tile)))
    return out


def _place(side: int, size: int, margin: int = 3) -> slice:
    """A window of `size` voxels on an axis of `side`, its start uniform in [margin, side − size −
    margin] (the release's 3-voxel margin, shrunk where the axis is too short)."""
    lo = min(margin, side - size)
    hi = max(lo, side - size - margin)
    start = _randint(lo, hi)
    return slice(start, start + size)


def in_painting(v: torch.Tensor, boxes: int = 5, keep_going: float = 0.95) -> torch.Tensor:
    """Models Genesis' in-painting of v (C, X, Y, Z): up to `boxes` boxes (each further box with
    probability `keep_going`), sides uniform in [side/6, side/3], filled with uniform noise in [0, 1]."""
    out = v.clone()
    sizes = v.shape[1:]
    for _ in range(boxes):
        if float(torch.rand(())) >= keep_going:
            break
        box = tuple(_place(s, _randint(max(1, s // 6), max(1, s // 3))) for s in sizes)
        shape = (v.shape[0], *(b.stop - b.start for b in box))
        out[(slice(None), *box)] = torch.rand(shape).to(out)
    return out


def out_painting(v: torch.Tensor, boxes: int = 4, keep_going: float = 0.95) -> torch.Tensor:
    """Models Genesis' out-painting of v (C, X, Y, Z): uniform noise in [0, 1] everywhere except one
    box (sides side − U[3·side/7, 4·side/7]) and up to `boxes` more (each with probability
    `keep_going`), which keep v's voxels."""
    out = torch.rand(v.shape).to(v)
    sizes = v.shape[1:]
    for i in range(boxes + 1):
        if i > 0 and float(torch.rand(())) >= keep_going:
            break
        box = tuple(_place(s, max(1, s - _randint(3 * s // 7, 4 * s // 7))) for s in sizes)
        out[(slice(None), *box)] = v[(slice(None), *box)]
    return out


def corrupt(x: torch.Tensor, config: CorruptionConfig) -> torch.Tensor:
    """The encoders' input: each sample of x (B, C, X, Y, Z) shuffled locally and painted as
    `config` draws it (global RNG, reseeded by the trainer every step)."""
    out = []
    for v in x:
        if float(torch.rand(())) < config.local_shuffle_prob:
            v = local_shuffle(v)
        if float(torch.rand(())) < config.paint_prob:
            v = in_painting(v) if float(torch.rand(())) < config.inpaint_prob else out_painting(v)
        out.append(v)
    return torch.stack(out)


# ----------------------------------------------------------------------- spatial transformation T
def draw_transforms(b: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample: flips (B, 3) bool of the X, Y, Z axes (p ½ each) and k (B,) quarter turns."""
    return torch.rand(b, 3) < 0.5, torch.randint(0, 4, (b,))


def apply_transforms(x: torch.Tensor, flips: torch.Tensor, k: torch.Tensor, plane: tuple[int, int]) -> torch.Tensor:
    """T(x): sample i flipped along the axes flips[i], then turned k[i]·90° in `plane` (the
    release's order: flips, then the turn)."""
    out = []
    for i in range(x.shape[0]):
        v = x[i]
        axes = [1 + a for a in range(3) if bool(flips[i, a])]
        if axes:
            v = v.flip(axes)
        out.append(v)
    return rot90_batch(torch.stack(out), k, plane)


def transform_code(flips: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """c_T (B, 7): the three flips and the one-hot quarter turns."""
    return torch.cat([flips.float(), F.one_hot(k.long(), 4).float()], dim=1)


def fold_beta(alpha: float) -> float:
    """λ ~ Beta(α, α) folded to max(λ, 1 − λ) (the release's mixup coefficients)."""
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    return max(lam, 1.0 - lam)


# ---------------------------------------------------------------------------------- the contrast
def queue_nce(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """MoCo's InfoNCE (He et al. 2020, eq. 1) of queries q (B, D) against their keys k (B, D) and the
    queue's negatives (K, D), all l2-normalised here, k detached: (loss, share of queries whose
    positive logit is the largest)."""
    q = F.normalize(q.float(), dim=-1)
    k = F.normalize(k.detach().float(), dim=-1)
    pos = (q * k).sum(-1, keepdim=True)
    neg = q @ queue.detach().float().t()
    logits = torch.cat([pos, neg], dim=1) / temperature
    labels = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
    acc = (logits.detach().argmax(1) == 0).float().mean()
    return F.cross_entropy(logits, labels), acc


def make_projector(in_dim: int, hidden_dim: int, dim: int, norm: str = "none") -> nn.Module:
    """P: Linear–ReLU–Linear (the release's fc1–ReLU–fc2); norm "batch" puts a BatchNorm1d on the
    batch's own statistics (also in the eval-mode momentum copy) after the first Linear (MoCo v3's
    projector has BN in its hidden layers)."""
    layers: list[nn.Module] = [nn.Linear(in_dim, hidden_dim)]
    if norm == "batch":
        layers.append(nn.BatchNorm1d(hidden_dim, track_running_stats=False))
    return nn.Sequential(*layers, nn.ReLU(inplace=True), nn.Linear(hidden_dim, dim))


def _settings(name: str, given: Mapping[str, Any] | None, defaults: Mapping[str, Any]) -> dict[str, Any]:
    out = {**defaults, **(given or {})}
    unknown = sorted(set(out) - set(defaults))
    if unknown:
        raise ValueError(f"unknown {name} settings {unknown}; known: {', '.join(defaults)}")
    return out


class PCRL(MomentumMethod):
    def __init__(self, encoder_config: Mapping[str, Any], crop, projector: Mapping[str, Any] | None = None,
                 tca_hidden_dim: int = 256, queue_size: int = 16384, temperature: float = 0.2,
                 momentum: float = 0.999, momentum_schedule: str = "constant", contrastive_weight: float = 1.0,
                 reconstruction_weight: float = 1.0, mixup: bool = True, mixup_alpha: float = 1.0,
                 sigmoid_output: bool = True,
                 augment: Mapping[str, Any] | None = None, corruption: Mapping[str, Any] | None = None,
                 rotation_plane: str = "auto", method_config: Mapping[str, Any] | None = None):
        super().__init__(method_config, momentum, momentum_schedule)
        if float(temperature) <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature!r}")
        if int(queue_size) < 1:
            raise ValueError(f"queue_size must be >= 1, got {queue_size!r}")
        for name, value in (("contrastive_weight", contrastive_weight),
                            ("reconstruction_weight", reconstruction_weight)):
            if float(value) < 0:
                raise ValueError(f"{name} must be >= 0, got {value!r}")
        if float(mixup_alpha) <= 0:
            raise ValueError(f"mixup_alpha must be > 0, got {mixup_alpha!r}")
        self.temperature = float(temperature)
        self.weights = (float(contrastive_weight), float(reconstruction_weight))
        if not isinstance(mixup, bool):
            raise ValueError(f"mixup must be true or false, got {mixup!r}")
        self.mixup = mixup
        if not isinstance(sigmoid_output, bool):
            raise ValueError(f"sigmoid_output must be true or false, got {sigmoid_output!r}")
        self.sigmoid_output = sigmoid_output
        self.mixup_alpha = float(mixup_alpha)
        aug = _settings("augment", augment, {"scale_range": [0.3, 1.0], "ratio_range": [0.75, 4.0 / 3.0]})
        self.augment = BoxViewConfig(scale_range=tuple(aug["scale_range"]), ratio_range=tuple(aug["ratio_range"]),
                                     flip_prob=0.0, intensity_scale=0.0, intensity_shift=0.0)
        self.corruption = CorruptionConfig.from_mapping(corruption)
        self.crop = tuple(int(c) for c in crop)
        self.plane = square_plane(self.crop, rotation_plane)
        proj = _settings("projector", projector, {"hidden_dim": 128, "dim": 128, "norm": "none"})
        if proj["norm"] not in ("none", "batch"):
            raise ValueError(f"projector norm must be 'none' or 'batch', got {proj['norm']!r}")

        self.body = build_cnn_body(encoder_config, self.crop)
        width = self._bottleneck_width()
        self.projector = make_projector(width, int(proj["hidden_dim"]), int(proj["dim"]), proj["norm"])
        self.tca = nn.Sequential(nn.Linear(CODE_DIM, int(tca_hidden_dim)), nn.ReLU(inplace=True),
                                 nn.Linear(int(tca_hidden_dim), width), nn.Sigmoid())
        self.head = nn.Conv3d(self.body.features, 1, kernel_size=1)   # + the release's sigmoid (sigmoid_output)
        self.momentum_body = copy.deepcopy(self.body)
        self.momentum_projector = copy.deepcopy(self.projector)
        self.freeze_targets()
        self.register_buffer("queue", F.normalize(torch.randn(int(queue_size), int(proj["dim"])), dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    def _bottleneck_width(self) -> int:
        was = self.body.training
        self.body.eval()
        with torch.no_grad():
            width = int(self.body.encode(torch.zeros(1, 1, *self.crop))[-1].shape[1])
        self.body.train(was)
        return width

    def ema_pairs(self):
        return [(self.body, self.momentum_body), (self.projector, self.momentum_projector)]

    def encoder_state_dict(self) -> dict[str, torch.Tensor]:
        return cnn_state(self.body)

    @torch.no_grad()
    def _enqueue(self, keys: torch.Tensor) -> None:
        keys = F.normalize(keys.detach().float(), dim=-1)[-self.queue.shape[0]:]
        idx = (int(self.queue_ptr) + torch.arange(keys.shape[0], device=keys.device)) % self.queue.shape[0]
        self.queue[idx] = keys.to(self.queue.dtype)
        self.queue_ptr.fill_((int(self.queue_ptr) + keys.shape[0]) % self.queue.shape[0])

    def views(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The two views of crops x (B, 1, X, Y, Z): originals g_o, g_m, corrupted inputs x_o, x_m,
        transformations (flips, k) and their codes."""
        g_o = box_view(x, None, self.augment)[0]
        g_m = box_view(x, None, self.augment)[0]
        out = {"g_o": g_o, "g_m": g_m, "x_o": corrupt(g_o, self.corruption), "x_m": corrupt(g_m, self.corruption)}
        for side in ("o", "m"):
            flips, k = draw_transforms(x.shape[0])
            out[f"t_{side}"] = apply_transforms(out[f"g_{side}"], flips, k, self.plane)
            out[f"c_{side}"] = transform_code(flips, k).to(x.device)
        return out

    def _embed(self, projector: nn.Module, levels: list[torch.Tensor]) -> torch.Tensor:
        return projector(global_embedding(levels[-1]))

    def forward(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x = batch["x"]
        b = x.shape[0]
        v = self.views(x)
        queue = self.queue.clone()
        # ordinary and momentum encoders on the two corrupted views
        lv_o = self.body.encode(v["x_o"])
        q_raw = self._embed(self.projector, lv_o)
        with torch.no_grad():
            lv_m = self.momentum_body.encode(v["x_m"])
            k_raw = self._embed(self.momentum_projector, lv_m)
        l_nce_o, acc = queue_nce(q_raw, k_raw, queue, self.temperature)
        # the transformed contexts: TCA on the bottlenecks, the hybrid mixes every level
        att_o = self.tca(v["c_o"]).to(lv_o[-1].dtype)[:, :, None, None, None]
        att_m = self.tca(v["c_m"]).to(lv_m[-1].dtype)[:, :, None, None, None]
        lv_ot = lv_o[:-1] + [lv_o[-1] * att_o]
        lv_mt = lv_m[:-1] + [lv_m[-1] * att_m]
        a1 = fold_beta(self.mixup_alpha)
        contexts = [lv_ot, [a1 * o + (1.0 - a1) * m for o, m in zip(lv_ot, lv_mt)]]
        targets = [v["t_o"], a1 * v["t_o"] + (1.0 - a1) * v["t_m"]]
        nce_terms = {"l_nce_o": l_nce_o}
        keys = [k_raw]
        if self.mixup:
            # mixup of the batch with itself (one λ and one pairing for both encoders' inputs)
            lam, perm = fold_beta(self.mixup_alpha), torch.randperm(b).to(x.device)

            def mix(t: torch.Tensor) -> torch.Tensor:
                return lam * t + (1.0 - lam) * t[perm]

            lv_om = self.body.encode(mix(v["x_o"]))
            q_mix = self._embed(self.projector, lv_om)
            with torch.no_grad():
                lv_mm = self.momentum_body.encode(mix(v["x_m"]))
                k_mix = self._embed(self.momentum_projector, lv_mm)
            nce_terms["l_nce_mix"] = queue_nce(q_mix, k_mix, queue, self.temperature)[0]
            nce_terms["l_nce_lam"] = queue_nce(q_mix, mix(k_raw), queue, self.temperature)[0]
            keys.append(k_mix)
            a2 = fold_beta(self.mixup_alpha)
            contexts += [lv_om, [a2 * o + (1.0 - a2) * m for o, m in zip(lv_om, lv_mm)]]
            g_om, g_mm = mix(v["g_o"]), mix(v["g_m"])
            targets += [g_om, a2 * g_om + (1.0 - a2) * g_mm]
        l_nce = sum(nce_terms.values()) / len(nce_terms)
        # every context decoded in one batch, each restored through the sigmoid output
        levels = [torch.cat(t) for t in zip(*contexts)]
        rec = self.head(self.body.decode(levels)[-1]).float()
        rec = (torch.sigmoid(rec) if self.sigmoid_output else rec).split(b)
        rec_names = ("l_rec_o", "l_rec_h", "l_rec_mix", "l_rec_mixh")
        rec_terms = {n: F.mse_loss(r, t.float()) for n, r, t in zip(rec_names, rec, targets)}
        l_rec = sum(rec_terms.values()) / len(rec_terms)
        w_c, w_r = self.weights
        loss = w_c * l_nce + w_r * l_rec
        self._enqueue(torch.cat(keys))
        out = {"loss": loss, "l_nce": l_nce.detach(), "l_rec": l_rec.detach(), "acc": acc}
        out.update({n: t.detach() for n, t in {**nce_terms, **rec_terms}.items()})
        if b > 1:
            out["spread"] = spread(q_raw)
        return out


_KWARGS = ("projector", "tca_hidden_dim", "queue_size", "temperature", "momentum", "momentum_schedule",
           "contrastive_weight", "reconstruction_weight", "mixup", "mixup_alpha", "sigmoid_output", "augment",
           "corruption", "rotation_plane")


@register_method("pcrl")
def build(method_config: Mapping[str, Any], encoder_config: Mapping[str, Any], crop) -> PCRL:
    return checked_build("pcrl", PCRL, _KWARGS, method_config, encoder_config, crop)
