import pytest
import torch
from monai.networks.nets import UNETR

from alice.models.vit import ViTEncoder, random_masking


def test_state_dict_matches_monai_unetr_vit():
    enc = ViTEncoder(img_size=(32, 32, 16), patch=16, embed_dim=24, depth=12, heads=2, mlp_ratio=4)
    unetr = UNETR(in_channels=1, out_channels=2, img_size=(32, 32, 16), feature_size=4, hidden_size=24,
                  mlp_dim=96, num_heads=2, proj_type="conv", norm_name="instance")
    a, b = enc.state_dict(), unetr.vit.state_dict()
    assert set(a) == set(b)
    assert all(a[k].shape == b[k].shape for k in a)
    unetr.vit.load_state_dict(a, strict=True)
    enc.load_state_dict(b, strict=True)
    # identical outputs once weights are shared
    x = torch.randn(1, 1, 32, 32, 16)
    tokens, mask, _ = enc(x, 0.0)
    ref, _ = unetr.vit(x)
    assert not mask.any()
    torch.testing.assert_close(tokens, ref)


@pytest.mark.parametrize("ratio", [0.0, 0.5, 0.75])
def test_masking_ratio_and_shapes(ratio):
    enc = ViTEncoder((32, 32, 16), patch=8, embed_dim=24, depth=2, heads=2)
    n = enc.num_patches
    assert n == 4 * 4 * 2
    x = torch.randn(3, 1, 32, 32, 16)
    tokens, mask, ids_restore = enc(x, ratio, generator=torch.Generator().manual_seed(0))
    n_vis = int(n * (1 - ratio))
    assert tokens.shape == (3, n_vis, 24)
    assert mask.shape == (3, n) and mask.dtype == torch.bool
    assert (mask.sum(1) == n - n_vis).all()
    assert ids_restore.shape == (3, n)


def test_masking_deterministic_and_consistent():
    ids_keep, mask, ids_restore = random_masking(2, 10, 0.6, generator=torch.Generator().manual_seed(1))
    ids_keep2, mask2, _ = random_masking(2, 10, 0.6, generator=torch.Generator().manual_seed(1))
    assert torch.equal(ids_keep, ids_keep2) and torch.equal(mask, mask2)
    for b in range(2):  # kept ids are exactly the unmasked positions
        assert set(ids_keep[b].tolist()) == set((~mask[b]).nonzero().flatten().tolist())
    # ids_restore inverts the shuffle: gather(cat(kept, dropped), ids_restore) == arange
    noise_order = torch.argsort(ids_restore, 1)
    assert torch.equal(torch.gather(noise_order, 1, ids_restore), torch.arange(10).expand(2, -1))


def test_visible_tokens_are_the_unmasked_ones():
    enc = ViTEncoder((16, 16, 16), patch=8, embed_dim=24, depth=0, heads=2)
    x = torch.randn(1, 1, 16, 16, 16)
    full, _, _ = enc(x, 0.0)
    vis, mask, _ = enc(x, 0.5, generator=torch.Generator().manual_seed(3))
    ids_keep, _, _ = random_masking(1, enc.num_patches, 0.5, generator=torch.Generator().manual_seed(3))
    # depth 0: tokens are the per-token LN of the embeddings, so a subset of the full output
    torch.testing.assert_close(vis, full[:, ids_keep[0]])


def test_patchify_matches_conv_order_and_roundtrip():
    enc = ViTEncoder((16, 16, 8), patch=(8, 8, 4), embed_dim=24, depth=0, heads=2)
    x = torch.randn(2, 1, 16, 16, 8)
    p = enc.patchify(x)
    assert p.shape == (2, 8, 256)
    torch.testing.assert_close(enc.unpatchify(p), x)
    # token order equals the conv patch-embedding's flatten order: token i's voxels == conv patch i
    x2 = torch.zeros(1, 1, 16, 16, 8)
    x2[0, 0, 8:16, 0:8, 4:8] = 1.0  # grid cell (1, 0, 1) -> index 1*2*2 + 0*2 + 1 = 5
    assert enc.patchify(x2)[0].sum(-1).nonzero().flatten().tolist() == [5]
