import math

import torch

import pytest

from alice.models import CASA, MaskedDecoder, Predictor, ProjectionHead, Prototypes, ViTEncoder


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
    with pytest.raises(ValueError):
        ProjectionHead(24, 32, 16, norm="layer")


def test_projection_head_batch_norm_uses_the_batch_statistics_over_samples_and_tokens():
    torch.manual_seed(0)
    head = ProjectionHead(24, 32, 16, norm="batch")
    bns = [m for m in head.modules() if isinstance(m, torch.nn.BatchNorm1d)]
    assert len(bns) == 2 and all(not bn.track_running_stats for bn in bns)
    x = torch.randn(3, 5, 24)
    hidden = head.mlp[1](head.mlp[0](x))  # Linear then BN over the 15 (sample, token) rows
    torch.testing.assert_close(hidden.reshape(-1, 32).mean(0), torch.zeros(32), atol=1e-5, rtol=0)
    head.eval()  # eval mode too: the batch's own statistics (ψ, the EMA copy, runs in eval mode)
    torch.testing.assert_close(head(x), head.train()(x))
    # a shift common to the whole batch is removed by the normalisation
    torch.testing.assert_close(head(x + 5.0 * torch.randn(24)), head(x), atol=1e-4, rtol=1e-4)


def test_predictor_byol_structure_and_any_leading_shape():
    torch.manual_seed(0)
    pred = Predictor(16, 40)
    assert [type(m) for m in pred.children()] == [torch.nn.Linear, torch.nn.BatchNorm1d, torch.nn.Linear]
    assert pred.fc1.in_features == 16 and pred.fc1.out_features == 40 and pred.fc2.out_features == 16
    x = torch.randn(4, 6, 16)
    y = pred(x)
    assert y.shape == (4, 6, 16)
    torch.testing.assert_close(y[1], pred(x.reshape(-1, 16)).reshape(4, 6, 16)[1])
    ref = pred.fc2(torch.relu(torch.nn.functional.batch_norm(
        pred.fc1(x.reshape(-1, 16)), None, None, pred.bn.weight, pred.bn.bias, training=True)))
    torch.testing.assert_close(y, ref.reshape(4, 6, 16))
    assert pred(torch.randn(1, 16)).shape == (1, 16)  # one row in training: running statistics


def test_prototypes_are_cosines_to_unit_prototypes():
    protos = Prototypes(8, 5)
    x = torch.randn(3, 8)
    logits = protos(x)
    assert logits.shape == (3, 5) and logits.abs().max() <= 1.0 + 1e-6
    torch.testing.assert_close(protos(3.0 * x), logits)


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
