"""MoCo v2 (Chen, Fan, Girshick and He, "Improved Baselines with Momentum Contrastive Learning", arXiv
2003.04297, 2020) on MoCo (He, Fan, Wu, Xie and Girshick, "Momentum Contrast for Unsupervised Visual
Representation Learning", CVPR 2020), in 3-D on the convolutional family (the paper's Table 2 runs it
on a 3-D ResNet, alice.models.cnn.ResNetUNet).

Objective (MoCo Eq. 1, InfoNCE over one positive and a queue of K negatives): a query encoder f_q
with MoCo v2's 2-layer MLP head (§2 of MoCo v2: fc–ReLU–fc in place of MoCo's fc) and a key
encoder f_k (the same network, its weights an EMA of f_q's, not trained); with q = f_q(x^q) and
k₊ = f_k(x^k) the l2-normalised embeddings of two augmented views of one crop and k_1..k_K the
queue (the keys of earlier batches),

    L_q = −log exp(q·k₊/τ) / (exp(q·k₊/τ) + Σ_{i=1..K} exp(q·k_i/τ))            (MoCo Eq. 1)
    θ_k ← m·θ_k + (1 − m)·θ_q                                                (MoCo Eq. 2)

after which the batch's keys replace the oldest of the queue (MoCo §3.2, Algorithm 1). Values: K =
65,536 and m = 0.999 held constant (MoCo's ImageNet settings, kept by MoCo v2), τ = 0.2 and the MLP
head of a 2048-d hidden layer to MoCo's 128-d output (MoCo v2 §2, its Table 1 "MLP" rows).
The loss is MoCo's asymmetric one (x^q → x^k only; `symmetric: true` adds the swapped term and
averages the two, which MoCo v2 does not, so it is off by default). The queue is registered as
buffers (`queue`, `queue_ptr`), so it is part of the method's state in the trainer's resume file
and a resumed run continues with the same negatives; it starts as random unit vectors, as MoCo's.
Under DDP the keys of every process are gathered before they are queued (MoCo's
`concat_all_gather`), so the queue is the same on every rank.

Shuffling BN (MoCo §3.3): the networks' BatchNorm statistics come from groups of `bn_group_size`
samples, as MoCo's per-GPU batches: the queries in consecutive groups, the keys after a random
permutation of the batch, so the positive key is normalised with other samples than its query and
the two cannot share a batch signature that the queue's keys lack (the "cheating" §3.3 describes).
On one process the groups are separate forward passes of each part of the batch (the per-GPU
batches of MoCo's 8 GPUs, 32 samples each: `bn_group_size: 32`); a batch of at most
`bn_group_size` samples is one group, plain BN. The key encoder runs in training mode (batch
statistics), as MoCo's does; its running statistics are copied from the query encoder's at every
update and never used. At the demo's batch of 4, groups of 2 are too small: BatchNorm over two
samples leaves mostly their difference, and the queries' `spread` sank from 0.32 to 0.18 in 100
steps (one group of 4: 0.36 to 0.33), so the demo runs one group (no shuffle).

Head: MoCo v2's has no BatchNorm (`head_norm: none`); `head_norm: batch` puts one after its hidden
layer (MoCo v3's and BYOL's heads). At the demo scale it raised the `spread` (0.65 against 0.40)
but not the learning (the held-out full-queue loss below, on 80 queries: 4.18 → 4.06 with it,
4.12 → 4.02 without), so the demo keeps the paper's head.

3-D decisions:
- network: the whole CNN body is built (alice.ssl.encoder.build_cnn_body) and checkpointed
  (`cnn_state`), but only its encoder is trained: the embedding is the global average of the
  bottleneck map (`global_embedding(body.encode(x)[-1])`), so the decoder never sees a loss and
  is frozen (`requires_grad=False`: out of the optimiser and of DDP's reducer) at its
  initialisation; the resnet3d backbone transfers only the encoder (Table 2's "E.");
- views (`two_views`, alice.ssl.views): a random resized crop of 20–100 % of the crop's voxels,
  small rotations, flips of every axis and an intensity scale/shift (alice.ssl.augment.view_augment)
  in place of MoCo v2's colour jitter, grey-scale and blur (CT has one windowed channel).

Demo scale (resnet3d 64×64×32, batch 4, 100 iterations, K = 64): the logged loss first rises
(2.7 over the first 10 steps, ~4.0 once the queue is full at step 16: the random initial queue
vectors are easy negatives, the keys that replace them are not; chance is log 65 = 4.17), then
falls to ~3.7–3.8. On held-out crops (400 queries of another seed's batches) with a queue
filled with the evaluated key encoder's own keys, the loss goes from 4.13 (initial weights) to
4.03 (trained): slow but real learning in 100 steps of 4 crops; the `spread` holds at ~0.4.

Logged: `l_ctr` (Eq. 1), `acc` (how often the positive key is the query's most similar key among
the 1 + K), the collapse monitor `spread` of the batch's queries, and `queue_spread`, the same
monitor over the K queued keys (a steadier estimate than 4 samples give; it is ≈ 1 while the
queue still holds its random initial vectors, i.e. during the first K / B steps).
"""

from __future__ import annotations

import copy
from typing import Any, Mapping, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from alice.ssl.encoder import build_cnn_body, cnn_state, global_embedding
from alice.ssl.losses import spread
from alice.ssl.momentum import MomentumMethod
from alice.ssl.registry import SSLMethod, checked_build, register_method
from alice.ssl.views import check_view_options

METHOD = {
    "name": "mocov2",
    "paper": "Chen et al., arXiv 2020 (MoCo v2); He et al., CVPR 2020 (MoCo)",
    "objective": "contrastive (InfoNCE) against a queue of momentum-encoder keys",
    "views": "two_views",
    "encoders": ["resnet3d"],
    "smoke": {"head": {"hidden_dim": 32, "dim": 16}, "queue_size": 8, "bn_group_size": 2},
}

HEAD_DEFAULTS = {"hidden_dim": 2048, "dim": 128}


# ------------------------------------------------------------------------------------ shared parts
def head_settings(given: Mapping[str, Any] | None, defaults: Mapping[str, Any]) -> dict[str, int]:
    """`defaults` updated by `given`; ValueError naming an unknown or non-positive setting."""
    out = {**defaults, **dict(given or {})}
    unknown = sorted(set(out) - set(defaults))
    if unknown:
        raise ValueError(f"unknown head settings {unknown}; known: {', '.join(defaults)}")
    for key, value in out.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"head {key} must be a positive integer, got {value!r}")
    return out


def mlp(in_dim: int, hidden_dim: int, out_dim: int, batch_norm: bool) -> nn.Sequential:
    """Linear–[BN]–ReLU–Linear: MoCo v2's head (no BN) and BYOL's projector and predictor (BN)."""
    layers: list[nn.Module] = [nn.Linear(in_dim, hidden_dim, bias=not batch_norm)]
    if batch_norm:
        layers.append(nn.BatchNorm1d(hidden_dim))
    return nn.Sequential(*layers, nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim))


def freeze_decoder(body: nn.Module) -> None:
    """Every parameter of a CNN body outside its encoder (`body.encoder_state()`) gets
    requires_grad=False: a method that reads only the bottleneck never trains the decoder."""
    encoder_keys = set(body.encoder_state())
    for name, p in body.named_parameters():
        if name not in encoder_keys:
            p.requires_grad_(False)


def check_positive(**values: float) -> None:
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ValueError(f"{name} must be > 0, got {value!r}")


def _gather(x: torch.Tensor) -> torch.Tensor:
    """x of every process, concatenated in rank order (x itself without a process group)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


# ------------------------------------------------------------------------------------------ method
class MoCoV2(MomentumMethod):
    name = "mocov2"

    def __init__(self, encoder_config: Mapping[str, Any], crop, head: Mapping[str, Any] | None = None,
                 temperature: float = 0.2, momentum: float = 0.999, momentum_schedule: str = "constant",
                 queue_size: int = 65536, bn_group_size: int = 32, symmetric: bool = False,
                 head_norm: str = "none", views: Mapping[str, Any] | None = None,
                 method_config: Mapping[str, Any] | None = None):
        super().__init__(method_config, momentum, momentum_schedule)
        if views is not None:
            check_view_options("two_views", views, f"pretrain.methods.{self.name}.views")
        check_positive(temperature=temperature)
        for key, value in (("queue_size", queue_size), ("bn_group_size", bn_group_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{key} must be a positive integer, got {value!r}")
        if not isinstance(symmetric, bool):
            raise ValueError(f"symmetric must be true or false, got {symmetric!r}")
        if head_norm not in ("none", "batch"):
            raise ValueError(f"head_norm must be 'none' or 'batch', got {head_norm!r}")
        self.temperature = float(temperature)
        self.bn_group_size = int(bn_group_size)
        self.symmetric = symmetric
        hd = head_settings(head, HEAD_DEFAULTS)
        self.body = build_cnn_body(encoder_config, crop)
        freeze_decoder(self.body)
        width = self._width(crop)
        self.head = mlp(width, hd["hidden_dim"], hd["dim"], batch_norm=head_norm == "batch")
        self.momentum_body = copy.deepcopy(self.body)
        self.momentum_head = copy.deepcopy(self.head)
        self.freeze_targets()
        self.register_buffer("queue", F.normalize(torch.randn(int(queue_size), hd["dim"]), dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    def _width(self, crop: Sequence[int]) -> int:
        """Channels of the bottleneck map (one probe pass at the crop size, two samples, eval mode);
        `self.levels` is set to the number of encoder levels."""
        was = self.body.training
        self.body.eval()
        with torch.no_grad():
            levels = self.body.encode(torch.zeros(2, 1, *(int(c) for c in crop)))
        self.body.train(was)
        self.levels = len(levels)
        return int(levels[-1].shape[1])

    # -- the harness's interface
    def ema_pairs(self):
        return [(self.body, self.momentum_body), (self.head, self.momentum_head)]

    def train(self, mode: bool = True) -> "MoCoV2":
        # the key encoder normalises with batch statistics (MoCo's), not in eval mode as
        # MomentumMethod keeps its targets
        SSLMethod.train(self, mode)
        return self

    def encoder_state_dict(self) -> dict[str, torch.Tensor]:
        return cnn_state(self.body)

    # -- embeddings
    def groups(self, b: int) -> int:
        """How many BatchNorm groups a batch of b samples is split into."""
        return max(1, -(-b // self.bn_group_size))

    def _embed(self, body: nn.Module, head: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return head(global_embedding(body.encode(x)[-1]))

    def query(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised queries (B, dim), BatchNorm statistics over consecutive groups."""
        parts = torch.tensor_split(x, self.groups(x.shape[0]))
        return F.normalize(torch.cat([self._embed(self.body, self.head, p) for p in parts]).float(), dim=1)

    @torch.no_grad()
    def keys(self, x: torch.Tensor, perm: torch.Tensor | None = None) -> torch.Tensor:
        """Normalised keys (B, dim) of the momentum encoder, BatchNorm statistics over groups of the
        batch permuted by `perm` (Shuffling BN, MoCo §3.3; a random one when None), in x's order."""
        b = x.shape[0]
        if perm is None:
            perm = torch.randperm(b)
        perm = perm.to(x.device)
        parts = torch.tensor_split(x[perm], self.groups(b))
        k = torch.cat([self._embed(self.momentum_body, self.momentum_head, p) for p in parts]).float()
        return F.normalize(k, dim=1)[torch.argsort(perm)]

    # -- the loss
    def logits(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """(B, 1 + K) logits/τ: the positive first, then the queue (MoCo Algorithm 1)."""
        pos = (q * k).sum(1, keepdim=True)
        neg = q @ self.queue.clone().detach().t()
        return torch.cat([pos, neg], dim=1) / self.temperature

    def infonce(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.logits(q, k)
        target = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
        acc = (logits.detach().argmax(1) == 0).float().mean()
        return F.cross_entropy(logits, target), acc

    @torch.no_grad()
    def enqueue(self, k: torch.Tensor) -> None:
        """The keys replace the oldest entries of the queue (wrapping round)."""
        k = _gather(k.detach())
        size = self.queue.shape[0]
        if k.shape[0] > size:
            k = k[-size:]
        ptr = int(self.queue_ptr)
        idx = (ptr + torch.arange(k.shape[0], device=self.queue.device)) % size
        self.queue[idx] = k.to(self.queue.dtype)
        self.queue_ptr.fill_((ptr + k.shape[0]) % size)

    def contrast(self, x1: torch.Tensor, x2: torch.Tensor) -> dict[str, torch.Tensor]:
        """MoCo's loss of views x1 (queries) and x2 (keys), and the swapped pair when symmetric; the
        keys are queued afterwards."""
        q1, k2 = self.query(x1), self.keys(x2)
        loss, acc = self.infonce(q1, k2)
        queries, new_keys = [q1], [k2]
        if self.symmetric:
            q2, k1 = self.query(x2), self.keys(x1)
            loss2, acc2 = self.infonce(q2, k1)
            loss, acc = 0.5 * (loss + loss2), 0.5 * (acc + acc2)
            queries.append(q2)
            new_keys.append(k1)
        out = {"loss": loss, "l_ctr": loss.detach(), "acc": acc}
        if q1.shape[0] > 1:
            out["spread"] = spread(q1)
        for k in new_keys:
            self.enqueue(k)
        out["queue_spread"] = spread(self.queue)
        return out

    def forward(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        views = batch["views"]
        return self.contrast(views[0], views[1])


_KWARGS = ("head", "temperature", "momentum", "momentum_schedule", "queue_size", "bn_group_size", "symmetric",
           "head_norm", "views")


@register_method("mocov2")
def build(method_config: Mapping[str, Any], encoder_config: Mapping[str, Any], crop) -> MoCoV2:
    return checked_build("mocov2", MoCoV2, _KWARGS, method_config, encoder_config, crop)
