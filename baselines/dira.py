"""DiRA: discriminative, restorative and adversarial learning (Haghighi, Hosseinzadeh Taher, Gotway
and Liang, "DiRA: Discriminative, Restorative, and Adversarial Learning for Self-supervised Medical
Image Analysis", CVPR 2022), on the 3D U-Net ("3D UNet E.&D." of the Alice paper's Table 2) and the
3D ResNet (Tables 4 / 9: MosMed classification, encoder only).

Objective (§3; equation numbers unverified): one encoder-decoder network (the CNN body, alice.models.cnn)
is trained by three components at once,

- discrimination (MoCo v2 as DiRA's main instantiation): two views x1, x2 of one crop; the query
  q = h(e(x̃1)) (e: the body's encoder, global average pooling of its bottleneck, h: MoCo v2's MLP
  head fc–ReLU–fc, hidden width = the embedding's unless `head.hidden_dim`, l2-normalised; `head.norm:
  batch` adds BatchNorm after its hidden layer, which MoCo v2's head has not: batch statistics for the
  queries, the running ones for the keys) against the key k = h_m(e_m(x̃2)) of a momentum encoder e_m, h_m
  (EMA with `momentum` 0.999, constant) and a queue of K earlier keys (`queue_size` 65,536):
      L_dis = −log exp(q·k/τ) / (exp(q·k/τ) + Σ_queue exp(q·n/τ)),   τ = 0.2 (`temperature`)
- restoration: the decoder d restores the query view from its corruption:
      L_res = ‖d(e(x̃1)) − x1'‖² / |x|      (MSE; x̃1 = f(x1) Models Genesis's transformation,
                                             alice.ssl.restoration; x1' = x1 with f's flips)
- adversary: a PatchGAN discriminator D (3-D here: 3³ convolutions of `discriminator.widths`
  64-128-256-512 channels with strides 2, 2, 2, 1, instance norm after all but the first, leaky
  ReLU 0.2, a last 3³ convolution to one channel: one real/fake score per patch) judges restored
  vs original crops with least-squares GAN losses, the restoration network its generator:
      L_adv = mean (D(d(e(x̃1))) − 1)²                                   (the generator's)
      L_D   = ½ [mean (D(x1') − 1)² + mean D(d(e(x̃1)))²]                 (the discriminator's)
- total (the generator's): L = λ_dis·L_dis + λ_res·L_res + λ_adv·L_adv with λ_dis = 1, λ_res = 10,
  λ_adv = 0.001 (`lambda_dis`, `lambda_res`, `lambda_adv`: the authors' released values).

The views (the release: two random resized crops with colour jitter, blur and flip, then both
corrupted; the restoration target is the query crop before its colour augmentation): here
x1, x2 = alice.ssl.augment.view_augment of the crop (random resized crop, small rotation, flips,
intensity scale/shift: `augment`, the harness's 3-D two-view augmentation), x̃1 = f(x1) and, with
`distort_key` (the release), x̃2 = f(x2). The target is x1 itself (its intensity change included).

One optimiser (the harness's trainer has one; the release steps D with its own Adam, lr 2e-4,
β = (0.5, 0.999)): the adversarial game is one loss with two stop-gradients,

    loss = L + `discriminator_weight` · L_D,
    L_adv evaluated with D's parameters detached (torch.func.functional_call): it moves only the
    generator; L_D evaluated on the detached restoration: it moves only D.

So each parameter gets exactly the gradient of its own player's loss, as in the release's alternating
step (whose D step also uses the restoration computed before the generator's update). A
gradient-reversal layer is not used: LSGAN's generator and discriminator losses are not each
other's negatives, so reversing D's gradient would not give the generator's loss. The shared
optimiser's learning rate and the global gradient clipping apply to D too.

3-D decisions: the crop embedding (alice.ssl.restoration.embedding_grid, `embedding_grid`) is the
paper's global average pooling on the 3D ResNet (BatchNorm) but a 2×2×2 average grid, flattened, on the
harness's instance-normalised unet3d, whose per-sample channel means instance norm makes equal (the
global average of its bottleneck hardly differs between crops: `spread` 0.07 at initialisation);
crops of `pretrain.crop` (`crop` view; both views and the corruption drawn inside
`forward` from torch's global generator, which the trainer reseeds every step, so resume is exact);
the momentum encoder is the EMA copy of the whole body (only its encoder runs) kept in eval mode
(alice.ssl.momentum), so its BatchNorm (the 3D ResNet's, the head's with `head.norm: batch`) uses
running statistics and a query cannot find its key through shared batch statistics, the leak
MoCo's shuffled BN prevents (not implemented otherwise). Under DDP the keys of every process are queued (MoCo's all-gather).

Logged: `l_dis`, `l_res`, `l_adv`, `l_d` (unweighted), `d_real` / `d_fake` (D's mean score of the
original / restored crops: 1 = judged real), and `spread`, the collapse monitor of the queries.

Demo scale (batch 4, 100 iterations, a 32-key queue): the restoration and the discriminator learn
(l_res 0.15 → 0.06 on unet3d, 0.23 → 0.05 on resnet3d; D ends scoring originals ≈ 0.8-0.9 and
restorations ≈ 0.07-0.3), the discrimination stays at its chance level log(1 + K) once the queue holds
real keys, as MoCo v2 alone does on the same network and views in 100 iterations (l_dis ≈ 3.5 =
log 33 with the restoration and the adversary switched off); with MoCo v2's head (no BatchNorm, a
256-key queue) the unet3d queries collapsed (`spread` 0.22 → 0.01), with `head.norm: batch` they keep
0.5-0.6.
"""

from __future__ import annotations

import copy
from typing import Any, Mapping

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from alice.ssl.augment import ViewAugmentConfig, view_augment
from alice.ssl.encoder import build_cnn_body, cnn_state
from alice.ssl.losses import spread
from alice.ssl.momentum import MomentumMethod
from alice.ssl.registry import checked_build, register_method
from alice.ssl.restoration import GenesisConfig, RestorationHead, bottleneck_shape, genesis_transform, grid_embedding
from alice.ssl.restoration import embedding_grid as _embedding_grid

METHOD = {
    "name": "dira",
    "paper": "Haghighi et al., CVPR 2022",
    "objective": "discriminative (MoCo v2 InfoNCE with a queue) + restorative (MSE of Models Genesis-corrupted view) + adversarial (LSGAN PatchGAN)",
    "views": "crop",
    "encoders": ["unet3d", "resnet3d"],
    "smoke": {"head": {"hidden_dim": 16, "dim": 8}, "queue_size": 8, "discriminator": {"widths": [4, 4, 8, 8]}},
}


def _settings(name: str, given: Mapping[str, Any] | None, defaults: Mapping[str, Any]) -> dict[str, Any]:
    out = {**defaults, **(given or {})}
    unknown = sorted(set(out) - set(defaults))
    if unknown:
        raise ValueError(f"unknown {name} settings {unknown}; known: {', '.join(defaults)}")
    return out


class PatchDiscriminator(nn.Module):
    """The 3-D PatchGAN of the module docstring: (B, C, X, Y, Z) -> (B, 1, X/8, Y/8, Z/8) scores."""

    def __init__(self, widths=(64, 128, 256, 512), in_channels: int = 1) -> None:
        super().__init__()
        widths = [int(w) for w in widths]
        if len(widths) != 4 or min(widths) < 1:
            raise ValueError(f"discriminator.widths must be 4 positive channel counts, got {widths}")
        layers: list[nn.Module] = []
        c = int(in_channels)
        for i, (w, stride) in enumerate(zip(widths, (2, 2, 2, 1))):
            layers.append(nn.Conv3d(c, w, 3, stride, 1))
            if i > 0:
                layers.append(nn.InstanceNorm3d(w))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            c = w
        layers.append(nn.Conv3d(c, 1, 3, 1, 1))
        self.model = nn.Sequential(*layers)
        for m in self.modules():              # the release's weights_init_normal
            if isinstance(m, nn.Conv3d):
                nn.init.normal_(m.weight, 0.0, 0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def _gather(x: torch.Tensor) -> torch.Tensor:
    """x of every process, concatenated (MoCo's concat_all_gather); x itself without DDP."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


class DiRA(MomentumMethod):
    def __init__(self, encoder_config: Mapping[str, Any], crop, lambda_dis: float = 1.0, lambda_res: float = 10.0,
                 lambda_adv: float = 0.001, discriminator_weight: float = 1.0, temperature: float = 0.2,
                 queue_size: int = 65536, head: Mapping[str, Any] | None = None, momentum: float = 0.999,
                 momentum_schedule: str = "constant", augment: Mapping[str, Any] | None = None,
                 genesis: Mapping[str, Any] | None = None, distort_key: bool = True,
                 discriminator: Mapping[str, Any] | None = None, output_activation: str = "sigmoid",
                 embedding_grid: Any = "auto", method_config: Mapping[str, Any] | None = None):
        super().__init__(method_config, momentum, momentum_schedule)
        for name, value in (("lambda_dis", lambda_dis), ("lambda_res", lambda_res), ("lambda_adv", lambda_adv),
                            ("discriminator_weight", discriminator_weight)):
            if float(value) < 0:
                raise ValueError(f"{name} must be >= 0, got {value!r}")
        if float(temperature) <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature!r}")
        if int(queue_size) < 1:
            raise ValueError(f"queue_size must be >= 1, got {queue_size!r}")
        self.lambdas = (float(lambda_dis), float(lambda_res), float(lambda_adv))
        self.discriminator_weight = float(discriminator_weight)
        self.temperature = float(temperature)
        self.distort_key = bool(distort_key)
        try:
            self.augment = ViewAugmentConfig.from_mapping(augment)
        except TypeError as exc:
            raise ValueError(f"augment: {exc}") from None
        self.genesis = GenesisConfig.from_mapping(genesis)
        hd = _settings("head", head, {"hidden_dim": 0, "dim": 128, "norm": "none"})
        if hd["norm"] not in ("none", "batch"):
            raise ValueError(f"head.norm must be 'none' or 'batch', got {hd['norm']!r}")
        disc = _settings("discriminator", discriminator, {"widths": [64, 128, 256, 512]})
        crop = tuple(int(c) for c in crop)
        self.body = build_cnn_body(encoder_config, crop)
        self.restoration = RestorationHead(self.body.features, 1, output_activation)
        bottleneck = bottleneck_shape(self.body, crop)
        self.grid = _embedding_grid(self.body, bottleneck, embedding_grid)
        width = bottleneck[0] * self.grid[0] * self.grid[1] * self.grid[2]
        hidden = int(hd["hidden_dim"]) or width       # MoCo v2's MLP: hidden = the embedding's width
        # the momentum head runs in eval mode: its keys are normalised with the (copied) running statistics
        norm = [nn.BatchNorm1d(hidden)] if hd["norm"] == "batch" else []
        self.head = nn.Sequential(nn.Linear(width, hidden), *norm, nn.ReLU(inplace=True),
                                  nn.Linear(hidden, int(hd["dim"])))
        self.discriminator = PatchDiscriminator(disc["widths"])
        self.momentum_body = copy.deepcopy(self.body)
        self.momentum_head = copy.deepcopy(self.head)
        self.freeze_targets()
        self.register_buffer("queue", F.normalize(torch.randn(int(queue_size), int(hd["dim"])), dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    def ema_pairs(self):
        return [(self.body, self.momentum_body), (self.head, self.momentum_head)]

    def encoder_state_dict(self) -> dict[str, torch.Tensor]:
        return cnn_state(self.body)

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """The keys (of every process) replace the oldest entries of the queue, wrapping round."""
        keys = _gather(keys.detach().to(self.queue.dtype))
        size = self.queue.shape[0]
        keys = keys[-size:]
        ptr = int(self.queue_ptr)
        idx = (ptr + torch.arange(keys.shape[0], device=self.queue.device)) % size
        self.queue[idx] = keys
        self.queue_ptr.fill_((ptr + keys.shape[0]) % size)

    def contrastive(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """L_dis of l2-normalised queries q and keys k (B, D) against the queue (MoCo Algorithm 1)."""
        pos = (q * k).sum(1, keepdim=True)
        neg = q @ self.queue.clone().detach().t()
        logits = torch.cat([pos, neg], 1) / self.temperature
        return F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device))

    def adversarial(self, restored: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """The LSGAN terms (module docstring): the generator's L_adv through a parameter-detached D,
        the discriminator's L_D on the detached restoration."""
        frozen = {n: p.detach() for n, p in self.discriminator.named_parameters()}
        frozen.update(dict(self.discriminator.named_buffers()))
        fake_g = functional_call(self.discriminator, frozen, (restored,)).float()
        real = self.discriminator(target).float()
        fake = self.discriminator(restored.detach()).float()
        l_adv = F.mse_loss(fake_g, torch.ones_like(fake_g))
        l_d = 0.5 * (F.mse_loss(real, torch.ones_like(real)) + F.mse_loss(fake, torch.zeros_like(fake)))
        return {"l_adv": l_adv, "l_d": l_d, "d_real": real.detach().mean(), "d_fake": fake.detach().mean()}

    def forward(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x = batch["x"]
        x1 = view_augment(x, None, self.augment)
        x2 = view_augment(x, None, self.augment)
        g1 = genesis_transform(x1, None, self.genesis)
        x_key = genesis_transform(x2, None, self.genesis).input if self.distort_key else x2
        enc = self.body.encode(g1.input)
        restored = self.restoration(self.body.decode(enc)[-1])
        z = self.head(grid_embedding(enc[-1], self.grid))
        q = F.normalize(z.float(), dim=1)
        with torch.no_grad():
            k = self.momentum_head(grid_embedding(self.momentum_body.encode(x_key)[-1], self.grid))
            k = F.normalize(k.float(), dim=1)
        l_dis = self.contrastive(q, k)
        target = g1.target
        l_res = F.mse_loss(restored.float(), target.float())
        adv = self.adversarial(restored, target)
        w_dis, w_res, w_adv = self.lambdas
        loss = w_dis * l_dis + w_res * l_res + w_adv * adv["l_adv"] + self.discriminator_weight * adv["l_d"]
        if self.training:
            self.enqueue(k)
        out = {"loss": loss, "l_dis": l_dis.detach(), "l_res": l_res.detach(),
               **{name: value.detach() for name, value in adv.items()}}
        if z.shape[0] > 1:
            out["spread"] = spread(z)
        return out


_KWARGS = ("lambda_dis", "lambda_res", "lambda_adv", "discriminator_weight", "temperature", "queue_size", "head",
           "momentum", "momentum_schedule", "augment", "genesis", "distort_key", "discriminator", "output_activation",
           "embedding_grid")


@register_method("dira")
def build(method_config: Mapping[str, Any], encoder_config: Mapping[str, Any], crop) -> DiRA:
    return checked_build("dira", DiRA, _KWARGS, method_config, encoder_config, crop)
