"""SemMAE (baselines/semmae.py): its masks keep the configured ratio exactly and follow the parts at
both ends of the curriculum (every part masked in proportion at γ = 1, whole parts at γ = 0); the
3-D part stand-in groups patches by intensity; the curriculum runs from γ = 1 to γ = 0."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from baselines.semmae import masked_count, patch_parts, semantic_mask

pytestmark = pytest.mark.usefixtures("one_thread")


def _parts_with_sizes(sizes, batch, generator):
    """(B, N) labels: part k holds sizes[k] patches, at random positions."""
    labels = torch.cat([torch.full((s,), k) for k, s in enumerate(sizes)])
    return torch.stack([labels[torch.randperm(len(labels), generator=generator)] for _ in range(batch)])


def _per_part(parts, mask, k):
    onehot = F.one_hot(parts, k).bool()
    return (onehot & mask.unsqueeze(-1)).sum(1), onehot.sum(1)  # masked, size per part (B, K)


def test_masks_keep_the_ratio_and_follow_the_parts_at_both_ends():
    g = torch.Generator().manual_seed(0)
    sizes, ratio = [8, 12, 4, 16, 8], 0.75  # r·n_k whole: the intra-part plan is exactly M
    parts = _parts_with_sizes(sizes, 6, g)
    n, k = parts.shape[1], len(sizes)
    for gamma in (1.0, 0.7, 0.3, 0.0):
        mask = semantic_mask(parts, k, ratio, gamma, generator=g)
        assert mask.sum(1).tolist() == [masked_count(n, ratio)] * parts.shape[0]
    # γ = 1: every part loses the same share of its patches
    masked, size = _per_part(parts, semantic_mask(parts, k, ratio, 1.0, generator=g), k)
    assert torch.equal(masked, (size * ratio).long())
    # γ = 0: parts are masked whole; at most one part per crop is cut by the budget
    masked, size = _per_part(parts, semantic_mask(parts, k, ratio, 0.0, generator=g), k)
    split = ((masked > 0) & (masked < size)).sum(1)
    assert split.max() <= 1 and (masked == size).sum(1).min() >= 1
    # a ratio that rounds: still exactly MAE's count of masked patches
    odd = _parts_with_sizes([5, 7, 3, 11], 4, g)
    for gamma in (1.0, 0.0):
        assert semantic_mask(odd, 4, 0.6, gamma, generator=g).sum(1).tolist() == [masked_count(26, 0.6)] * 4


def test_parts_group_patches_by_intensity():
    g = torch.Generator().manual_seed(1)
    x = 0.05 * torch.randn(3, 8, 64, generator=g)
    x[:, 4:] += 3.0  # the upper half of a 2x2x2 grid is a brighter tissue
    labels = patch_parts(x, (2, 2, 2), parts=2, position_weight=0.5)
    for row in labels:
        assert len(set(row[:4].tolist())) == 1 and len(set(row[4:].tolist())) == 1 and row[0] != row[4]


def test_the_curriculum_runs_from_intra_part_to_whole_parts(tiny_vit_semmae):
    method = tiny_vit_semmae
    total = 5
    gammas = [method.gamma]
    for step in range(total - 1):
        method.after_step(step, total)
        gammas.append(method.gamma)
    assert gammas[0] == 1.0 and gammas[-1] == pytest.approx(0.0, abs=1e-12)
    assert all(a > b for a, b in zip(gammas, gammas[1:]))
    out = method({"x": torch.randn(2, 1, 32, 32, 16)})
    assert torch.isfinite(out["loss"]) and float(out["gamma"]) == pytest.approx(0.0, abs=1e-12)
    assert float(out["split_parts"]) <= 1.0


@pytest.fixture
def tiny_vit_semmae():
    from alice.ssl.registry import build_method

    torch.manual_seed(0)
    enc = {"name": "vit", "embed_dim": 24, "depth": 2, "heads": 2, "mlp_ratio": 2, "patch": [8, 8, 8]}
    small = {"decoder": {"dim": 16, "depth": 1, "heads": 2}, "parts": 3}
    return build_method("semmae", small, enc, [32, 32, 16])
