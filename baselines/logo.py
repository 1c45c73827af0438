"""LoGo (Zhang, Qiu, Ke, Süsstrunk and Salzmann, "Leverage Your Local and Global Representations: A
New Self-Supervised Learning Strategy", CVPR 2022) on MoCo v2, in 3-D on the convolutional family's
3-D ResNet (the Alice paper's Table 2 row "LoGo, 3D ResNet E.").

Base method: MoCo v2, the harness's (baselines/mocov2.py: query encoder + Linear–ReLU–Linear head,
l2-normalised; key encoder = its EMA, constant momentum; a queue of negative keys; shuffled BN
groups), i.e. the paper's "MoCo-LoGo", the base of its experiments on ImageNet and of the authors'
released code (the other base, SimSiam, has no queue and no momentum encoder). Building on the
harness's MoCo v2 keeps the Table 2 rows comparable: LoGo differs from MoCo v2 by its views and
terms only. With ℓ_s(q, k) = −log exp(q·k/τ) / (exp(q·k/τ) + Σ_{n ∈ queue} exp(q·n/τ)) (InfoNCE, the
paper's eq. 1), V = 2 global views g1, g2 and L ≥ 2 local views (alice.ssl.views `multi_crop`), k the
key encoder's outputs of the global views only (sg: no gradient):

    L_gg = ℓ_s(q_g1, k_g2) + ℓ_s(q_g2, k_g1)                               (eq. 3, global-to-global)
    L_lg = Σ_l Σ_g ℓ_s(q_l, sg(k_g))                                       (eq. 4, local-to-global)
    L_ll = mean over ordered pairs l ≠ l' of one crop's local views of l_a(q_l, q_l')
           with the learned affinity l_a(z1, z2) = softplus(f(z1 ⊕ z2))      (eq. 5, local-to-local)
    Ω(f) = −E_same[softplus(−f(z1 + ε1 ⊕ z2 + ε2))] − E_diff[softplus(f(z1 ⊕ z_−))]   (eq. 6, f maximises)
    min_θ max_f  (L_gg + L_lg)/(2 + 2L) + λ·L_ll                            (the overall problem, eq. 9)

Equation numbers: (unverified) — eqs. 1 and 3-6 as a reproduction of the paper numbers them, the
overall objective as its eq. 9; the exact form of Ω is the release's (`Regressor_softplus`, a
logistic critic), the paper's text is not in front of me. The global-to-global and local-to-global
terms are averaged over their 2 + 2L InfoNCE terms, as the release does.

The critic f (the release's regressor): Linear(2d → `affinity.hidden_dim`)–BN–ReLU–Linear–BN–ReLU–
Linear(→ 1) on two local views' concatenated projections. "Same" pairs: two local views of one crop,
with Gaussian noise ε of std `affinity.noise`/√d added to each half (the release's 0.3/√d) when f is
trained; "diff" pairs: local view l of sample b and local view l' of sample b + 1 (the release pairs b
with the flipped batch; a roll never pairs a sample with itself, also for odd B). Departure: the
release calls f on each kind of pair separately; here both kinds go through f as one batch (also for
the encoder's term), because f's BatchNorm standardises each call on its own and so erases the scale
of z1 − z2 that tells the kinds apart: with separate calls the critic stayed at chance (−Ω ≈ log 4)
on the synthetic task of tests/ssl/test_logo.py, which it solves with one call, and through a demo
run (critic_acc 0.5 at step 100; 0.97 with one call).

The adversarial game, in one step: the release takes three SGD steps a batch (f on Ω with detached
embeddings; the encoder on L_ll alone through f, its gradient norm clipped to `cr` = 0.015 times the
last MoCo step's; then the MoCo step). The harness takes one optimizer step on one loss, so the two
players move simultaneously: the loss is (L_gg + L_lg)/(2 + 2L) + λ·L_ll + L_f with L_f = −Ω on
detached embeddings (only f's parameters get its gradient) and L_ll through f with f's parameters
detached (only the encoder and head get its gradient). This is not a gradient-reversal layer: the
encoder minimises softplus(f) on same-crop pairs (the release's non-saturating form), not −Ω. λ =
`local_weight` is fixed where the release clips a separate step: 1e-4 is the paper's λ for
SimSiam-LoGo (unverified for MoCo-LoGo, whose release has no λ); the demo sets λ = 0.015 because at
λ = 1 the L_ll gradient of the encoder is about as large as the MoCo terms' (ratio 0.7-1.2 measured
on the demo pool at initialisation), so 0.015 is the release's clip ratio.

3-D decisions: the crop's embedding is the global average of the ResNet's last level (MoCo v2's
`query`/`keys`); every view is resampled to the encoder's crop (alice.ssl.views: a local view is a
small region at a higher resolution, not a smaller tensor, so 2 + L views cost 2 + L full passes);
the augmentation is the harness's view augmentation (random resized crop at `global_scale` /
`local_scale`: the release's 0.4-1 and 0.05-0.4, small rotation, flips, intensity scale/shift) in
place of the release's 2-D blur and colour jitter. Each view is encoded as its own batch (the
release does the same; BN groups of `bn_group_size` within it, MoCo v2's), the key encoder with
shuffled BN groups in training mode. Only the body's encoder is trained (its decoder is frozen and
transferred untouched: Table 2's "E."); the checkpoint is the whole body. Values (MoCo v2's, which
the paper builds on): τ 0.2, m 0.999, K 65,536, head 2048 → 128; the release's ImageNet-100 script
uses τ 0.07 and K 4,096. `head_norm: batch` puts BatchNorm after the head's hidden layer (tried at
the demo; MoCo v2 has none, the default). The loader's default number of local views is DINO's 4;
LoGo's 2 are set in the config (`views.local_views`).

Logged: `l_gg`, `l_lg` (per InfoNCE term: log(1 + K) for embeddings that tell nothing apart),
`acc` (how often the positive key beats the K queued ones, global pairs), `l_ll` (the encoder's
affinity term, before λ), `l_critic` (= −Ω: log 4 ≈ 1.39 for a critic at chance), `critic_acc` (its
accuracy at telling same-crop from different-crop local pairs) and the collapse monitor `spread` of
the global views' queries.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from alice.ssl.losses import spread
from alice.ssl.registry import checked_build, register_method
from alice.ssl.views import check_view_options
from baselines.mocov2 import MoCoV2, head_settings, mlp

METHOD = {
    "name": "logo",
    "paper": "Zhang et al., CVPR 2022",
    "objective": "MoCo v2 on global-global and local-global pairs + local-local repulsion under a learned (adversarial) affinity",
    "views": "multi_crop",
    "encoders": ["resnet3d"],
    "smoke": {"head": {"hidden_dim": 32, "dim": 16}, "queue_size": 16, "bn_group_size": 2,
              "affinity": {"hidden_dim": 16}, "views": {"global_views": 2, "local_views": 2}},
}

AFFINITY_DEFAULTS = {"hidden_dim": 256, "noise": 0.3}
HEAD_NORMS = ("none", "batch")


class AffinityMLP(nn.Module):
    """LoGo's learned affinity f (the release's `Regressor_softplus`): two embeddings concatenated ->
    Linear–BN–ReLU–Linear–BN–ReLU–Linear -> one logit (high = "two local views of one crop").
    BatchNorm always normalises with the current batch (no running statistics). `frozen=True`
    computes f with its parameters detached: the encoder's term L_ll moves the embeddings, not f."""

    def __init__(self, dim: int, hidden_dim: int = 256) -> None:
        super().__init__()
        self.fc1 = nn.Linear(2 * dim, hidden_dim)
        self.bn1 = nn.BatchNorm1d(hidden_dim, track_running_stats=False)
        self.fc2 = nn.Linear(hidden_dim, hidden_dim)
        self.bn2 = nn.BatchNorm1d(hidden_dim, track_running_stats=False)
        self.fc3 = nn.Linear(hidden_dim, 1)

    def forward(self, z1: torch.Tensor, z2: torch.Tensor, frozen: bool = False) -> torch.Tensor:
        def p(t: torch.Tensor) -> torch.Tensor:
            return t.detach() if frozen else t

        h = torch.cat([z1, z2], dim=-1)
        for fc, bn in ((self.fc1, self.bn1), (self.fc2, self.bn2)):
            h = F.linear(h, p(fc.weight), p(fc.bias))
            h = F.relu(F.batch_norm(h, None, None, p(bn.weight), p(bn.bias), training=True, eps=bn.eps))
        return F.linear(h, p(self.fc3.weight), p(self.fc3.bias)).squeeze(-1)


def local_pairs(z_local: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """z_local (L, B, d) -> (same1, same2, diff1, diff2), rows of (·, d): every ordered pair (l, l'),
    l ≠ l', of one sample's local views ("same"), and local view l of sample b with local view l' of
    sample (b + 1) mod B ("diff"; no rows when B = 1)."""
    n_local = z_local.shape[0]
    pairs = [(i, j) for i in range(n_local) for j in range(n_local) if i != j]
    same1 = torch.cat([z_local[i] for i, _ in pairs])
    same2 = torch.cat([z_local[j] for _, j in pairs])
    if z_local.shape[1] < 2:
        empty = z_local.new_zeros(0, z_local.shape[-1])
        return same1, same2, empty, empty
    diff2 = torch.cat([z_local[j].roll(-1, dims=0) for _, j in pairs])
    return same1, same2, same1, diff2


class LoGo(MoCoV2):
    name = "logo"

    def __init__(self, encoder_config: Mapping[str, Any], crop, head: Mapping[str, Any] | None = None,
                 temperature: float = 0.2, momentum: float = 0.999, momentum_schedule: str = "constant",
                 queue_size: int = 65536, bn_group_size: int = 32, local_weight: float = 1e-4,
                 affinity: Mapping[str, Any] | None = None, head_norm: str = "none",
                 views: Mapping[str, Any] | None = None, method_config: Mapping[str, Any] | None = None):
        super().__init__(encoder_config, crop, head=head, temperature=temperature, momentum=momentum,
                         momentum_schedule=momentum_schedule, queue_size=queue_size,
                         bn_group_size=bn_group_size, symmetric=False, views=None, method_config=method_config)
        self.views = check_view_options("multi_crop", views, "pretrain.methods.logo.views")
        self.global_views = int(self.views["global_views"])
        if self.global_views != 2:
            raise ValueError(f"views.global_views must be 2 (LoGo's two global crops), got {self.global_views}")
        if int(self.views["local_views"]) < 2:
            raise ValueError(f"views.local_views must be >= 2 (the local-to-local term needs two local views "
                             f"of a crop), got {self.views['local_views']}")
        if isinstance(local_weight, bool) or not isinstance(local_weight, (int, float)) or local_weight < 0:
            raise ValueError(f"local_weight must be a number >= 0, got {local_weight!r}")
        af = {**AFFINITY_DEFAULTS, **dict(affinity or {})}
        noise = af.pop("noise")
        af = head_settings(af, {"hidden_dim": AFFINITY_DEFAULTS["hidden_dim"]})
        if isinstance(noise, bool) or not isinstance(noise, (int, float)) or noise < 0:
            raise ValueError(f"affinity noise must be a number >= 0, got {noise!r}")
        if head_norm not in HEAD_NORMS:
            raise ValueError(f"head_norm must be one of {', '.join(HEAD_NORMS)}, got {head_norm!r}")
        self.local_weight = float(local_weight)
        self.noise = float(noise)
        dim = int(self.queue.shape[1])
        if head_norm == "batch":  # BatchNorm after the projector's hidden layer (MoCo v3's, BYOL's)
            first = self.head[0]
            self.head = mlp(first.in_features, first.out_features, dim, batch_norm=True)
            self.momentum_head = copy.deepcopy(self.head)
            self.freeze_targets()
        self.affinity = AffinityMLP(dim, af["hidden_dim"])

    def local_terms(self, z_local: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(L_ll, L_f, critic accuracy) of the local views' projections z_local (L, B, d): L_ll through
        the frozen critic (gradient to the embeddings only), L_f = −Ω on detached embeddings, the
        "same" pairs with noise (gradient to the critic only)."""
        same1, same2, diff1, diff2 = local_pairs(z_local.float())
        diff1, diff2 = diff1.detach(), diff2.detach()
        n = same1.shape[0]
        # every critic batch holds both kinds of pairs: its BatchNorm would otherwise standardise each
        # kind on its own and erase the scale of what tells them apart (e.g. how far z1 is from z2)
        f_frozen = self.affinity(torch.cat([same1, diff1]), torch.cat([same2, diff2]), frozen=True)
        l_ll = F.softplus(f_frozen[:n]).mean()
        s1, s2 = same1.detach(), same2.detach()
        if self.noise > 0:
            std = self.noise / math.sqrt(s1.shape[-1])
            s1, s2 = s1 + std * torch.randn_like(s1), s2 + std * torch.randn_like(s2)
        f_all = self.affinity(torch.cat([s1, diff1]), torch.cat([s2, diff2]))
        f_same, f_diff = f_all[:n], f_all[n:]
        l_f = F.softplus(-f_same).mean()
        correct = [(f_same.detach() > 0).float()]
        if f_diff.shape[0]:
            l_f = l_f + F.softplus(f_diff).mean()
            correct.append((f_diff.detach() < 0).float())
        return l_ll, l_f, torch.cat(correct).mean()

    def forward(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        views = batch["views"]
        v, g = views.shape[0], self.global_views
        if v < g + 2:
            raise ValueError(f"LoGo needs {g} global and at least 2 local views, got {v} views")
        q = torch.stack([self.query(views[i]) for i in range(v)])     # (V, B, d): each view its BN batches
        k = torch.stack([self.keys(views[i]) for i in range(g)])      # (2, B, d), shuffled BN
        (l_12, acc_12), (l_21, acc_21) = self.infonce(q[0], k[1]), self.infonce(q[1], k[0])
        l_gg = l_12 + l_21
        l_lg = sum(self.infonce(q[j], k[i])[0] for j in range(g, v) for i in range(g))
        n_lg = g * (v - g)
        l_moco = (l_gg + l_lg) / (2 + n_lg)
        l_ll, l_f, acc = self.local_terms(q[g:])
        loss = l_moco + self.local_weight * l_ll + l_f
        if self.training:
            for i in range(g):
                self.enqueue(k[i])
        out = {"loss": loss, "l_gg": l_gg.detach() / 2, "l_lg": l_lg.detach() / n_lg,
               "acc": (acc_12 + acc_21) / 2, "l_ll": l_ll.detach(), "l_critic": l_f.detach(), "critic_acc": acc}
        if q.shape[1] > 1:
            out["spread"] = spread(q[:g].reshape(-1, q.shape[-1]))
        return out


_KWARGS = ("head", "temperature", "momentum", "momentum_schedule", "queue_size", "bn_group_size", "local_weight",
           "affinity", "head_norm", "views")


@register_method("logo")
def build(method_config: Mapping[str, Any], encoder_config: Mapping[str, Any], crop) -> LoGo:
    return checked_build("logo", LoGo, _KWARGS, method_config, encoder_config, crop)
