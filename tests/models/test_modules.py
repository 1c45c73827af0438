import math

import torch

from alice.models import CASA, MaskedDecoder, ProjectionHead, ViTEncoder


def test_decoder_shapes_and_unshuffle():
    enc = ViTEncoder((32, 32, 16), patch=8, embed_dim=24, depth=1, heads=2)
    dec = MaskedDecoder(24, 16, 1, 2, enc.num_patches, enc.patch_voxels)
    vis, mask, ids = enc(torch.randn(2, 1, 32, 32, 16), 0.75, generator=torch.Generator().manual_seed(0))
    pred, h = dec(vis, ids)
    assert pred.shape == (2, 32, 512) and h.shape == (2, 32, 16)
    dec2 = MaskedDecoder(24, 16, 1, 2, enc.num_patches, enc.patch_voxels, feat_dim=24)
    assert dec2(vis, ids)[1].shape == (2, 32, 24)


def test_decoder_mask_tokens_at_masked_positions():
    dec = MaskedDecoder(4, 8, 0, 2, 6, 3)
    with torch.no_grad():
        dec.pos_embed.zero_()
    vis = torch.randn(1, 2, 4)
    ids_restore = torch.tensor([[2, 0, 3, 1, 4, 5]])  # visible tokens go to positions 1 and 3
    _, h = dec(vis, ids_restore)
    expected_mask = dec.norm(dec.mask_token)[0, 0]
    for pos in (0, 2, 4, 5):
        torch.testing.assert_close(h[0, pos], expected_mask)
    torch.testing.assert_close(h[0, 1], dec.norm(dec.embed(vis[0, 0])))
    torch.testing.assert_close(h[0, 3], dec.norm(dec.embed(vis[0, 1])))


def test_projection_head():
    head = ProjectionHead(24, 32, 16)
    z = head(torch.randn(2, 5, 24))
    assert z.shape == (2, 5, 16)
    torch.testing.assert_close(z.norm(dim=-1), torch.ones(2, 5))
    linears = [m for m in head.mlp if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 3
    assert ProjectionHead(24, 32, 16, out_dim=10)(torch.randn(3, 24)).shape == (3, 10)


def test_casa_matches_eqs_3_4():
    torch.manual_seed(0)
    casa = CASA(24, 16)
    v, kv = torch.randn(2, 5, 24), torch.randn(2, 7, 24)
    out = casa(v, kv)
    assert out.shape == (2, 5, 16)

    def ln(x, m):
        return (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + m.eps) * m.weight + m.bias

    q = ln(v, casa.norm_q) @ casa.w_q.weight.t()
    k = ln(kv, casa.norm_kv) @ casa.w_k.weight.t()
    val = ln(kv, casa.norm_kv) @ casa.w_v.weight.t()
    att = torch.exp(q @ k.transpose(1, 2) / math.sqrt(16))
    att = att / att.sum(-1, keepdim=True)
    ref = (att @ val) @ casa.zeta.weight.t() + casa.zeta.bias
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(casa.attention(v, kv).sum(-1), torch.ones(2, 5))
