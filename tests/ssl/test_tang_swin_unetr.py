"""Tang et al. (baselines/tang_swin_unetr.py): the contrastive term is NT-Xent over both views (its value at a
known input), the rotation task turns each view in the crop's square plane and the inpainting
target is the turned view before the cutout, and the total is λ-weighted sum of the three terms."""

from __future__ import annotations

import math

import pytest
import torch

from alice.ssl.augment import CutoutConfig, rot90_batch, square_plane
from alice.ssl.losses import nt_xent
from baselines.tang_swin_unetr import Tang

pytestmark = pytest.mark.usefixtures("one_thread")

VIT = {"name": "vit", "embed_dim": 24, "depth": 2, "heads": 2, "mlp_ratio": 2, "patch": [16, 16, 16]}
CROP = [32, 32, 16]


def test_nt_xent_at_a_known_input():
    # two samples, orthonormal embeddings, both views equal: each anchor sees its positive at
    # cosine 1 and the two other embeddings at cosine 0
    z = torch.eye(2)
    t = 0.5
    expected = -math.log(math.exp(1 / t) / (math.exp(1 / t) + 2.0))
    assert nt_xent(z, z.clone(), t).item() == pytest.approx(expected, rel=1e-6)
    # swapping the views or the samples changes nothing
    z1, z2 = torch.randn(4, 8), torch.randn(4, 8)
    assert nt_xent(z1, z2, 0.2).item() == pytest.approx(nt_xent(z2, z1, 0.2).item(), rel=1e-6)
    perm = torch.tensor([2, 0, 3, 1])
    assert nt_xent(z1[perm], z2[perm], 0.2).item() == pytest.approx(nt_xent(z1, z2, 0.2).item(), rel=1e-6)


def test_views_turn_in_the_square_plane_and_target_the_uncut_view():
    assert square_plane([48, 48, 32]) == (0, 1)        # about z, the paper's axis
    assert square_plane([64, 32, 32]) == (1, 2)        # Swin's crop: about x, its only square plane
    with pytest.raises(ValueError, match="no square plane"):
        square_plane([48, 32, 40])
    torch.manual_seed(0)
    method = Tang(VIT, CROP, cutout={"max_fraction": 0.2})
    x = torch.rand(3, 1, *CROP)
    cut, turned, k = method.views(x)
    assert cut.shape == turned.shape == (6, 1, *CROP) and k.shape == (6,)
    for i in range(6):
        assert torch.equal(turned[i], torch.rot90(x[i % 3], int(k[i]), (1, 2)))
    assert torch.equal(rot90_batch(turned[:3], (4 - k[:3]) % 4, method.plane), x)
    # noise boxes and swapped boxes each cover at most max_fraction, plus one box of overshoot
    box = CutoutConfig().max_box ** 3
    changed = (cut != turned).float().flatten(1).mean(1)
    assert (changed > 0).any() and (changed <= 2 * (0.2 + box)).all()


def test_total_is_the_weighted_sum_and_rotation_starts_at_chance():
    torch.manual_seed(1)
    method = Tang(VIT, CROP, lambda_inpaint=2.0, lambda_rot=0.5, lambda_contrast=3.0,
                  decoder={"dim": 8}, contrastive_head={"dim": 16})
    out = method({"x": torch.rand(2, 1, *CROP)})
    expected = 2.0 * out["l_inpaint"] + 0.5 * out["l_rot"] + 3.0 * out["l_contrast"]
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert out["l_rot"].item() == pytest.approx(math.log(4), abs=0.15)  # small initial logits
    out["loss"].backward()
    assert method.encoder.patch_embedding.patch_embeddings.weight.grad.abs().sum() > 0
