"""PCRL (baselines/pcrl.py): MoCo's queue InfoNCE at a known input, the transformation T and its code,
the targets (T of the uncorrupted views, their mixes), the corruption transforms, the momentum
encoder and the queue after a step, the loss's wiring and the config errors."""

from __future__ import annotations

import math

import pytest
import torch

from alice.errors import ConfigError
from alice.ssl.registry import build_method
from baselines.pcrl import (CorruptionConfig, apply_transforms, corrupt, fold_beta, in_painting, local_shuffle,
                            out_painting, queue_nce, transform_code)

pytestmark = pytest.mark.usefixtures("one_thread")

UNET = {"name": "unet3d", "widths": [4, 4, 8, 8, 16, 4]}
CROP = [32, 32, 16]
SMALL = {"projector": {"hidden_dim": 16, "dim": 8}, "tca_hidden_dim": 8, "queue_size": 32}


def test_queue_nce_at_a_known_input():
    # q = k = e0, the K queue entries orthogonal to it: −log e^{1/τ} / (e^{1/τ} + K)
    t, k_neg = 0.2, 5
    q = torch.zeros(2, 8)
    q[:, 0] = 3.0                                   # normalised inside
    queue = torch.eye(8)[1:1 + k_neg]
    loss, acc = queue_nce(q, q.clone(), queue, t)
    expected = -math.log(math.exp(1 / t) / (math.exp(1 / t) + k_neg))
    assert loss.item() == pytest.approx(expected, rel=1e-6) and acc.item() == 1.0
    # a key opposite to its query and a queue entry equal to it: far worse, never top-1
    loss2, acc2 = queue_nce(q, -q, torch.eye(8)[:1], t)
    assert loss2.item() == pytest.approx(-math.log(math.exp(-1 / t) / (math.exp(-1 / t) + math.exp(1 / t))), rel=1e-6)
    assert acc2.item() == 0.0


def test_the_transformation_and_its_code():
    x = torch.arange(2 * 4 * 4 * 2, dtype=torch.float32).view(2, 1, 4, 4, 2)
    flips = torch.tensor([[True, False, True], [False, False, False]])
    k = torch.tensor([1, 3])
    out = apply_transforms(x, flips, k, (0, 1))
    assert torch.equal(out[0], torch.rot90(x[0].flip([1, 3]), 1, (1, 2)))
    assert torch.equal(out[1], torch.rot90(x[1], 3, (1, 2)))
    code = transform_code(flips, k)
    assert code.tolist() == [[1, 0, 1, 0, 1, 0, 0], [0, 0, 0, 0, 0, 0, 1]]
    assert all(0.5 <= fold_beta(1.0) <= 1.0 for _ in range(20))


def test_corruption_transforms():
    torch.manual_seed(0)
    v = torch.rand(1, 40, 40, 20)
    shuffled = local_shuffle(v)
    assert not torch.equal(shuffled, v)
    assert torch.equal(shuffled.flatten().sort().values, v.flatten().sort().values)   # voxels moved, none changed
    # within a tile (sides ≤ side // 10) of each of the two tilings: a ramp along X shows how far
    ramp = torch.arange(40.0).view(1, 40, 1, 1).expand(1, 40, 40, 20).contiguous()
    assert (local_shuffle(ramp) - ramp).abs().max() <= 2 * (40 // 10 - 1)
    painted = in_painting(v)
    changed = painted != v
    assert changed.any() and (painted[changed] >= 0).all() and (painted[changed] <= 1).all()
    outside = out_painting(v)
    kept = (outside == v).float().mean()
    assert 0.01 < kept < 0.9                                   # noise around at least one kept box
    same = corrupt(v[None], CorruptionConfig(local_shuffle_prob=0.0, paint_prob=0.0))
    assert torch.equal(same[0], v)
    with pytest.raises(ValueError, match="paint_prob"):
        CorruptionConfig.from_mapping({"paint_prob": 1.5})


def test_views_restore_the_uncorrupted_crop_under_t():
    torch.manual_seed(1)
    method = build_method("pcrl", {**SMALL, "corruption": {"local_shuffle_prob": 1.0, "paint_prob": 1.0}}, UNET, CROP)
    x = torch.rand(3, 1, *CROP)
    v = method.views(x)
    for side in ("o", "m"):
        code = v[f"c_{side}"]
        flips, k = code[:, :3] > 0.5, code[:, 3:].argmax(1)
        assert torch.equal(v[f"t_{side}"], apply_transforms(v[f"g_{side}"], flips, k, method.plane))
        assert not torch.equal(v[f"x_{side}"], v[f"g_{side}"])            # the encoders see corrupted inputs
        assert v[f"g_{side}"].min() >= 0 and v[f"g_{side}"].max() <= 1   # targets in the sigmoid's range
    assert method.plane == (0, 1)                                        # 32x32x16: about z, as the release


def test_loss_wiring_gradients_momentum_and_queue():
    torch.manual_seed(2)
    method = build_method("pcrl", {**SMALL, "contrastive_weight": 0.5, "reconstruction_weight": 2.0}, UNET,
                          CROP).train()
    x = {"x": torch.rand(2, 1, *CROP)}
    before = method.queue.clone()
    out = method(x)
    torch.testing.assert_close(out["loss"].detach(), 0.5 * out["l_nce"] + 2.0 * out["l_rec"])
    torch.testing.assert_close(out["l_nce"], (out["l_nce_o"] + out["l_nce_mix"] + out["l_nce_lam"]) / 3)
    torch.testing.assert_close(out["l_rec"], (out["l_rec_o"] + out["l_rec_h"] + out["l_rec_mix"]
                                              + out["l_rec_mixh"]) / 4)
    assert int(method.queue_ptr) == 4                                   # k and k̃ of 2 samples enqueued
    assert not torch.equal(method.queue[:4], before[:4]) and torch.equal(method.queue[4:], before[4:])
    torch.testing.assert_close(method.queue[:4].norm(dim=1), torch.ones(4))
    out["loss"].backward()
    assert all(p.grad is None for p in method.momentum_body.parameters())
    for module in (method.body, method.projector, method.tca, method.head):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())
    online = [p.detach().clone() for p in method.body.parameters()]
    target = [p.detach().clone() for p in method.momentum_body.parameters()]
    with torch.no_grad():
        for p in method.body.parameters():
            p.add_(0.1)
    method.after_step(0, 10)                                            # constant momentum 0.999
    for o, t, p_t in zip(online, target, method.momentum_body.parameters()):
        torch.testing.assert_close(p_t, 0.999 * t + 0.001 * (o + 0.1))
    # without the mixup branch: one contrast and two reconstruction terms; without the contrast's
    # weight the projector learns nothing, the TCA and the output convolution still do
    method.mixup, method.weights = False, (0.0, 1.0)
    method.zero_grad(set_to_none=True)
    out = method(x)
    assert "l_nce_mix" not in out and "l_rec_mix" not in out
    torch.testing.assert_close(out["l_rec"], (out["l_rec_o"] + out["l_rec_h"]) / 2)
    torch.testing.assert_close(out["l_nce"], out["l_nce_o"])
    out["loss"].backward()
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in method.projector.parameters())
    for module in (method.tca, method.head):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())


def test_a_resnet_and_the_checkpoint_is_the_whole_body():
    torch.manual_seed(3)
    enc = {"name": "resnet3d", "depth": 10, "widen_factor": 0.0625, "features": 4}
    method = build_method("pcrl", {**SMALL, "mixup": False, "projector": {"hidden_dim": 16, "dim": 8, "norm": "batch"}},
                          enc, [32, 32, 32]).train()
    out = method({"x": torch.rand(2, 1, 32, 32, 32)})
    assert math.isfinite(out["loss"].item()) and out["spread"] > 0
    assert set(method.encoder_state_dict()) == set(method.body.state_dict())


@pytest.mark.parametrize("config, key", [({"queue": 5}, "pretrain.methods.pcrl.queue"),
                                         ({"projector": {"width": 3}}, "pretrain.methods.pcrl"),
                                         ({"projector": {"norm": "layer"}}, "pretrain.methods.pcrl"),
                                         ({"temperature": 0.0}, "pretrain.methods.pcrl"),
                                         ({"mixup": "yes"}, "pretrain.methods.pcrl"),
                                         ({"sigmoid_output": 1}, "pretrain.methods.pcrl"),
                                         ({"rotation_plane": "xz"}, "pretrain.methods.pcrl")])
def test_bad_config_is_a_config_error_naming_the_key(config, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        build_method("pcrl", {**SMALL, **config}, UNET, CROP)
