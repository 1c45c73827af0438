"""Losses and monitors shared by the SSL methods (one definition each; the methods' files cite the
equations they implement).

- `cosine_loss`: BYOL's normalised regression 2 − 2·cos(q, z') (Grill et al. 2020, eq. 2);
- `info_nce`: InfoNCE with in-batch negatives (Oord et al. 2018; MoCo v3, Chen et al. 2021, Alg. 1
  `ctr` without its 2τ factor);
- `dino_loss`, `update_center`: DINO's cross-entropy with a centred, sharpened teacher and the EMA
  centre (Caron et al. 2021, eq. 1, §3.1 and eq. 4);
- `norm_pix`, `masked_mse`: MAE's per-patch normalised pixel targets and its MSE on masked patches
  only (He et al. 2022, §3 "Reconstruction target");
- `spread`: the collapse monitor (SimSiam, Chen & He 2021, §4.1).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F


def cosine_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """2 − 2·cos(student, teacher) over the last dim, averaged over the rest (BYOL)."""
    return (2.0 - 2.0 * F.cosine_similarity(student, teacher.detach(), dim=-1)).mean()


def info_nce(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """InfoNCE with in-batch negatives; (B, ..., C) inputs are averaged over tokens first."""
    if student.dim() == 3:
        student, teacher = student.mean(1), teacher.mean(1)
    s = F.normalize(student, dim=-1)
    t = F.normalize(teacher.detach(), dim=-1)
    logits = s @ t.t() / temperature
    return F.cross_entropy(logits, torch.arange(s.shape[0], device=s.device))


def dino_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, center: torch.Tensor,
              student_temperature: float, teacher_temperature: float) -> torch.Tensor:
    """DINO's cross-entropy (Caron et al. 2021, eq. 1 with centring and sharpening, §3.1):
    −Σ_k softmax((t − c)/τ_t)_k · log softmax(s/τ_s)_k over the prototype logits, averaged over the
    other dims (samples, tokens); the teacher side is detached."""
    p_t = F.softmax((teacher_logits.detach() - center) / teacher_temperature, dim=-1)
    return -(p_t * F.log_softmax(student_logits / student_temperature, dim=-1)).sum(-1).mean()


def spread(z: torch.Tensor) -> torch.Tensor:
    """Collapse monitor (SimSiam, Chen & He 2021, §4.1): the per-dimension std over the batch of the
    l2-normalised embeddings, averaged over dimensions and scaled by √C — ≈ 1 for embeddings spread
    over the sphere, 0 when every sample maps to one point (the failure a low ℓ_s alone cannot rule
    out). (B, T, C) inputs are averaged over tokens first; NaN-free only for B ≥ 2."""
    z = z.detach().float()
    if z.dim() == 3:
        z = z.mean(1)
    c = z.shape[-1]
    return F.normalize(z, dim=-1).std(0).mean() * c ** 0.5


def norm_pix(patches: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    mean = patches.mean(-1, keepdim=True)
    var = patches.var(-1, keepdim=True, unbiased=False)
    return (patches - mean) / (var + eps).sqrt()


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Eq. 1 for one crop: mean over voxels of a patch, summed over masked patches / their number."""
    per_patch = ((pred - target) ** 2).mean(-1)
    m = mask.to(per_patch.dtype)
    return (per_patch * m).sum() / m.sum().clamp_min(1.0)


@torch.no_grad()
def update_center(center: torch.Tensor, teacher_logits: list[torch.Tensor], momentum: float) -> None:
    """DINO's centre (Caron et al. 2021, eq. 4): c ← m·c + (1 − m)·mean of the teacher logits over
    every row of every process (samples, tokens, views)."""
    rows = torch.cat([t.reshape(-1, t.shape[-1]).float() for t in teacher_logits])
    total, count = rows.sum(0), rows.new_tensor(float(rows.shape[0]))
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(total)
        dist.all_reduce(count)
    center.mul_(momentum).add_((total / count).to(center.dtype), alpha=1.0 - momentum)


def unigrad_loss(student: torch.Tensor, teacher: torch.Tensor, neg_weight: float
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """UniGrad (Tao et al., CVPR 2022), the dense loss of SIM (Tao et al., CVPR 2023), on rows of
    (..., C) features (every token a row), the teacher side detached:

        ℓ = ( mean_i ‖s_i − t_i‖² + λ · mean_i s_iᵀ F s_i ) / C,    F = mean_j t_j t_jᵀ

    a positive term pulling each student row to its teacher row and a negative term pushing the
    students off the directions the teachers' correlation matrix F spans (UniGrad's gradient
    −t + λ·F·s); F is averaged over every row of every process. Returns (ℓ, positive term,
    negative term), the terms divided by C, without λ and detached."""
    c = student.shape[-1]
    s = student.reshape(-1, c)
    t = teacher.detach().reshape(-1, c)
    pos = ((s - t) ** 2).sum(-1).mean()
    with torch.no_grad():
        corr = t.t() @ t / t.shape[0]
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(corr)
            corr = corr / dist.get_world_size()
    neg = ((s @ corr) * s).sum(-1).mean()
    return (pos + float(neg_weight) * neg) / c, pos.detach() / c, neg.detach() / c


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent (SimCLR, Chen et al. 2020, eq. 1; the contrastive coding of Tang et al. 2022, §3.2) of
    two views' (B, C) embeddings: over the 2B l2-normalised embeddings v, each anchor i's positive
    is the other view of its sample and its denominator every k ≠ i,

        ℓ_i = −log exp(v_i·v_j / τ) / Σ_{k ≠ i} exp(v_i·v_k / τ),    averaged over the 2B anchors

    (both sides carry gradients; in-batch negatives of this process only, as `info_nce`)."""
    b = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]), dim=-1)
    logits = z @ z.t() / temperature
    self_pairs = torch.eye(2 * b, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_pairs, float("-inf"))
    targets = torch.cat([torch.arange(b, 2 * b, device=z.device), torch.arange(0, b, device=z.device)])
    return F.cross_entropy(logits, targets)
