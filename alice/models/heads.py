"""Projection heads φ (online decoder side) and ψ (target encoder side).

The paper (§3.2): "φ and ψ both consist of a 3-layer MLPs with l2-normalized bottleneck following
DINO", and §4.2 "the same projection head structure as used in [11, 16]" (MoCo v3, BYOL).

Choice made here: the DINO head's MLP part — Linear-GELU-Linear-GELU-Linear to a `bottleneck_dim`
embedding, which is then l2-normalised — and that normalised bottleneck embedding IS the output.
DINO's weight-normalised prototype layer (bottleneck -> K "prototype" logits) only serves DINO's
softmax cross-entropy; the paper's loss is a cosine similarity loss (BYOL style), for which the
l2-normalised bottleneck embedding is what is compared, so no prototype layer is built. If
`out_dim` is given, a final bias-free Linear(bottleneck_dim, out_dim) is applied after the
normalisation (a DINO-style last layer, without weight normalisation) — off by default.

`norm="batch"` puts BatchNorm after each hidden Linear: the projectors of MoCo v3 and BYOL (the
"projection head structure as used in [11, 16]" of §4.2) normalise their hidden layers over the
batch, which centres the features of a batch; DINO's head does not.

Works on any leading shape (..., in_dim): pooled (B, D) vectors or per-token (B, N, D) features.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ProjectionHead(nn.Module):
    def __init__(self, in_dim: int, hidden_dim: int = 2048, bottleneck_dim: int = 256, out_dim: int | None = None,
                 norm: str = "none"):
        """norm: "none" (DINO's MLP) or "batch" (BatchNorm after each hidden Linear, as in the
        projectors of BYOL and MoCo v3, Linear-BN-ReLU; GELU kept); see the module docstring."""
        super().__init__()
        if norm not in ("none", "batch"):
            raise ValueError(f"head norm must be 'none' or 'batch', got {norm!r}")
        self.norm = norm

        def hidden(d_in: int) -> list[nn.Module]:
            layers: list[nn.Module] = [nn.Linear(d_in, hidden_dim)]
            if norm == "batch":
                layers.append(_TokenBatchNorm(hidden_dim))
            return layers + [nn.GELU()]

        self.mlp = nn.Sequential(*hidden(in_dim), *hidden(hidden_dim), nn.Linear(hidden_dim, bottleneck_dim))
        self.last = nn.Linear(bottleneck_dim, out_dim, bias=False) if out_dim else None
        self.out_dim = out_dim or bottleneck_dim
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = F.normalize(self.mlp(x), dim=-1)
        return self.last(z) if self.last is not None else z


class _TokenBatchNorm(nn.Module):
    """BatchNorm over every leading position of (..., C) (samples and tokens together), always with
    the statistics of the current batch (no running statistics): ψ, the EMA copy of φ, sees target
    encoder features whose statistics differ from the decoder features φ sees, so it normalises with
    its own batch, as BYOL's target network does."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(dim, track_running_stats=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(x.reshape(-1, x.shape[-1])).reshape(x.shape)


class Predictor(nn.Module):
    """The online-branch predictor q of BYOL (Grill et al. 2020, §3.3: the predictor has the
    projector's architecture, Linear(4096)–BN–ReLU–Linear(256)) and MoCo v3 (Chen et al. 2021, §3:
    a prediction MLP head on the online side), here Linear(dim, hidden)–BN–ReLU–Linear(hidden, dim):
    it maps the student embedding to a prediction of the (stop-gradient) teacher embedding.

    Works on any leading shape (..., dim); batch norm pools the statistics over every leading
    position (samples and tokens). In training mode with a single row (batch of one pooled vector)
    the running statistics are used instead of the batch's, which has no variance.
    """

    def __init__(self, dim: int, hidden_dim: int = 4096) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim, bias=False)
        self.bn = nn.BatchNorm1d(hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        h = self.fc1(x.reshape(-1, shape[-1]))
        if self.training and h.shape[0] == 1:
            h = F.batch_norm(h, self.bn.running_mean, self.bn.running_var, self.bn.weight, self.bn.bias,
                             training=False, eps=self.bn.eps)
        else:
            h = self.bn(h)
        return self.fc2(F.relu(h)).reshape(*shape[:-1], -1)


class Prototypes(nn.Module):
    """DINO's last layer (Caron et al. 2021, §3.1 and its Appendix: a weight-normalised linear layer
    without bias, the norm of each prototype fixed to 1) from the l2-normalised bottleneck
    embedding to `num_prototypes` logits; used only by the DINO-style loss variant."""

    def __init__(self, dim: int, num_prototypes: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_prototypes, dim))
        nn.init.trunc_normal_(self.weight, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=-1) @ F.normalize(self.weight, dim=-1).t()
