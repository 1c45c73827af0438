"""PCRLv2 (baselines/pcrlv2.py): SimSiam's stop-gradient loss at known inputs, the non-skip decoder
(the restoration reads the bottleneck alone), the frozen skip decoder of the body, the views, the
deep-supervision schedule, the loss's wiring and the config errors."""

from __future__ import annotations

import math

import pytest
import torch

from alice.errors import ConfigError
from alice.ssl.registry import build_method
from baselines.pcrlv2 import patch_swap, simsiam_pair

pytestmark = pytest.mark.usefixtures("one_thread")

NSUNET = {"name": "nsunet3d", "filters": [4, 8, 16]}
CROP = [32, 32, 16]
RESNET = {"name": "resnet3d", "depth": 10, "widen_factor": 0.0625, "features": 4}
SMALL = {"local_views": 2}


def test_simsiam_pair_values_and_stop_gradient():
    z = torch.randn(4, 8)
    assert simsiam_pair(z, z, z, z).item() == pytest.approx(-1.0, abs=1e-6)
    e = torch.eye(8)
    assert simsiam_pair(e[:4], e[:4], e[4:], e[4:]).item() == pytest.approx(0.0, abs=1e-7)   # orthogonal
    assert simsiam_pair(z, z, -z, -z).item() == pytest.approx(1.0, abs=1e-6)
    p_a, z_a = torch.randn(3, 8, requires_grad=True), torch.randn(3, 8, requires_grad=True)
    p_b, z_b = torch.randn(3, 8, requires_grad=True), torch.randn(3, 8, requires_grad=True)
    simsiam_pair(p_a, z_a, p_b, z_b).backward()
    assert z_a.grad is None and z_b.grad is None          # the targets are stop-gradient
    assert p_a.grad.abs().sum() > 0 and p_b.grad.abs().sum() > 0


def test_patch_swap_moves_voxels_only():
    torch.manual_seed(0)
    x = torch.rand(2, 1, 16, 16, 8)
    out = patch_swap(x, (8, 4, 4), 10)
    assert not torch.equal(out, x)
    for b in range(2):
        assert torch.isin(out[b], x[b]).all()                # values moved, none made up
        assert (out[b] != x[b]).float().mean() < 0.9
    # one swap of two disjoint patches: a permutation, each patch where the other was
    y = torch.rand(1, 1, 16, 4, 4)
    torch.manual_seed(5)
    for _ in range(2000):                                    # until the draws put the patches at 0 and 8
        out = patch_swap(y, (8, 4, 4), 1)
        if (out != y).any(dim=(0, 1, 3, 4)).all():
            break
    else:
        pytest.fail("no swap of the two disjoint patches in 2000 draws")
    torch.testing.assert_close(out[..., :8, :, :], y[..., 8:, :, :])
    torch.testing.assert_close(out[..., 8:, :, :], y[..., :8, :, :])
    assert torch.equal(patch_swap(x, (8, 4, 4), 0), x)


def test_the_decoder_has_no_skips_and_the_body_decoder_is_frozen():
    torch.manual_seed(1)
    method = build_method("pcrlv2", SMALL, NSUNET, CROP).train()
    assert len(method.decoder.stages) == 2                  # levels at 1, ½, ¼: two stages up from ¼
    levels = method.body.encode(torch.rand(2, 1, *CROP))
    y, hs, zs, ps = method.decoder(levels[-1])
    assert y.shape == (2, 1, *CROP) and [h.shape[2:] for h in hs] == [(16, 16, 8), (32, 32, 16)]
    assert ((y > 0) & (y < 1)).all()                        # the release's sigmoid output
    assert [z.shape[1] for z in zs] == [8, 4] and [p.shape for p in ps] == [z.shape for z in zs]
    # the body's skip decoder (DynUNet's upsamples) is frozen, its encoder trains
    encoder_keys = set(method.body.encoder_state())
    for name, p in method.body.named_parameters():
        assert p.requires_grad == (name in encoder_keys), name
    assert any("upsamples" in k for k in method.encoder_state_dict())   # the checkpoint: the whole body
    # no skip: the method reads the bottleneck alone (NaN shallow levels change nothing)
    encode = method.body.encode
    method.body.encode = lambda x: [torch.full_like(t, float("nan")) for t in encode(x)[:-1]] + [encode(x)[-1]]
    torch.manual_seed(4)
    masked = method({"x": torch.rand(2, 1, *CROP)})
    del method.body.encode
    torch.manual_seed(4)
    out = method({"x": torch.rand(2, 1, *CROP)})
    assert torch.isfinite(masked["loss"]) and masked["l_rec"].item() == pytest.approx(out["l_rec"].item(), rel=1e-4)
    out["loss"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in method.body.parameters() if p.requires_grad)
    assert all(p.grad is None for p in method.body.parameters() if not p.requires_grad)


def test_views_local_size_and_the_deep_supervision_schedule():
    torch.manual_seed(2)
    method = build_method("pcrlv2", SMALL, NSUNET, CROP)
    assert method.local_size == (16, 16, 8)                # half the crop (stride 4)
    assert method.swap_iterations == 12                    # the release's 100 swaps per 64x64x32, scaled
    x = torch.rand(3, 1, *CROP)
    v = method.views(x)
    assert v["targets"].shape == v["inputs"].shape == (2, 3, 1, *CROP)
    assert v["local"].shape == (2, 3, 1, 16, 16, 8)
    assert v["targets"].min() >= 0 and v["targets"].max() <= 1
    assert not torch.allclose(v["inputs"], v["targets"])     # noise, blur, gamma and swaps on the inputs
    assert method.beta() == 1.0
    method.after_step(49, 100)
    assert method.beta() == pytest.approx(0.5)
    method.after_step(99, 100)
    assert method.beta() == pytest.approx(0.0, abs=1e-12)
    # a resnet3d (stride 32) cuts its local views at 32 voxels on every axis
    resnet = build_method("pcrlv2", {"local_views": 1}, RESNET, [64, 64, 32])
    assert resnet.local_size == (32, 32, 32) and len(resnet.decoder.stages) == 5   # 1/32 → 1


@pytest.mark.parametrize("sampling", ["random", "all"])
def test_loss_wiring(sampling):
    torch.manual_seed(3)
    weights = {"restoration_weight": 2.0, "global_weight": 0.5, "local_weight": 3.0, "deep_supervision_weight": 4.0}
    method = build_method("pcrlv2", {**SMALL, **weights, "scale_sampling": sampling}, NSUNET, CROP).train()
    method.after_step(24, 100)                              # β = ½(1 + cos(π/4))
    beta = 0.5 * (1 + math.cos(math.pi / 4))
    out = method({"x": torch.rand(2, 1, *CROP)})
    expected = 2.0 * out["l_rec"] + 0.5 * out["l_global"] + 3.0 * out["l_local"] + 4.0 * beta * out["l_ds"]
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert out["beta"].item() == pytest.approx(beta)
    assert -1.0 <= out["l_global"].item() <= 1.0 and -1.0 <= out["l_local"].item() <= 1.0
    assert out["spread"] > 0


@pytest.mark.parametrize("config, key", [({"local_view": 2}, "pretrain.methods.pcrlv2.local_view"),
                                         ({"local_size": [10, 12, 8]}, "pretrain.methods.pcrlv2"),
                                         ({"scale_sampling": "one"}, "pretrain.methods.pcrlv2"),
                                         ({"sigmoid_output": "no"}, "pretrain.methods.pcrlv2"),
                                         ({"intensity": {"noise": 1}}, "pretrain.methods.pcrlv2"),
                                         ({"global_scale": [0.0, 1.0]}, "pretrain.methods.pcrlv2")])
def test_bad_config_is_a_config_error_naming_the_key(config, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        build_method("pcrlv2", {**SMALL, **config}, NSUNET, CROP)


@pytest.mark.slow
def test_the_feature_comparison_learns_when_the_views_agree():
    # identical global views (no crop, flip, intensity or swap), the comparison alone: the
    # predictors learn to predict the other view's stop-gradient embedding, the loss heads to −1
    torch.manual_seed(4)
    config = {"local_views": 0, "global_scale": [1.0, 1.0], "augment": {"flip_prob": 0.0},
              "intensity": {"noise_prob": 0.0, "blur_prob": 0.0, "gamma_prob": 0.0}, "swap": {"iterations": 0},
              "restoration_weight": 0.0, "deep_supervision_weight": 0.0, "scale_sampling": "all"}
    method = build_method("pcrlv2", config, NSUNET, CROP).train()
    optimizer = torch.optim.AdamW([p for p in method.parameters() if p.requires_grad], lr=5e-3)
    g = torch.Generator().manual_seed(1)
    batches = [torch.rand(4, 1, *CROP, generator=g) for _ in range(4)]
    history = []
    for i in range(20):
        out = method({"x": batches[i % 4]})
        out["loss"].backward()
        optimizer.step()
        optimizer.zero_grad()
        history.append(out["l_global"].item())
    assert sum(history[-5:]) / 5 < sum(history[:5]) / 5 - 0.2
    assert sum(history[-5:]) / 5 < -0.4
