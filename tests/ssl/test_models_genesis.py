"""Models Genesis (baselines/models_genesis.py): the loss is the MSE between the network's restoration
of the transformed crop and the (flipped) crop, with nothing to restore a perfect network scores 0,
the checkpoint is the whole V-Net, and bad settings name their key."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from alice.errors import ConfigError
from alice.ssl.registry import build_method
from alice.ssl.restoration import GenesisConfig, genesis_transform

pytestmark = pytest.mark.usefixtures("one_thread")

VNET = {"name": "vnet", "width": 2, "features": 4}
CROP = [32, 32, 16]


def test_loss_is_the_mse_of_the_restored_transformed_crop_against_the_flipped_crop():
    method = build_method("models_genesis", {}, VNET, CROP).train()
    x = torch.rand(2, 1, *CROP)
    torch.manual_seed(11)
    out = method({"x": x})
    torch.manual_seed(11)                         # the same draws: the corruption comes first in forward
    g = genesis_transform(x, None, method.genesis)
    restored, _ = method.restore(g.input)
    assert out["loss"].item() == pytest.approx(F.mse_loss(restored, g.target).item(), rel=1e-5)
    assert out["l_identity"].item() == pytest.approx(F.mse_loss(g.input, g.target).item(), rel=1e-6)
    assert 0.0 < restored.min() and restored.max() < 1.0            # the release's sigmoid output
    out["loss"].backward()
    for module in (method.body.input, method.body.downs[-1], method.body.ups[-1], method.head):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())


def test_without_corruption_a_network_that_copies_its_input_scores_zero():
    # all transformations off: input == target, so the identity map is a perfect restoration
    method = build_method("models_genesis", {"genesis": {"flip_rate": 0.0, "local_rate": 0.0, "nonlinear_rate": 0.0,
                                                         "paint_rate": 0.0}, "output_activation": "none"},
                          VNET, CROP)
    method.restore = lambda x: (x, x.mean((2, 3, 4)))                # type: ignore[method-assign]
    out = method({"x": torch.rand(3, 1, *CROP)})
    assert out["loss"].item() == 0.0 and out["l_identity"].item() == 0.0


def test_the_checkpoint_is_the_whole_encoder_decoder():
    method = build_method("models_genesis", {}, VNET, CROP)
    state = method.encoder_state_dict()
    assert set(state) == set(method.body.state_dict())
    assert any(k.startswith("ups.") for k in state) and not any(k.startswith("head.") for k in state)


def test_bad_settings_name_their_key():
    with pytest.raises(ConfigError, match=r"pretrain\.methods\.models_genesis\.noise_rate"):
        build_method("models_genesis", {"noise_rate": 0.5}, VNET, CROP)
    with pytest.raises(ConfigError, match=r"pretrain\.methods\.models_genesis.*paint_rate"):
        build_method("models_genesis", {"genesis": {"paint_rate": 2.0}}, VNET, CROP)
    with pytest.raises(ConfigError, match=r"pretrain\.methods\.models_genesis.*activation"):
        build_method("models_genesis", {"output_activation": "tanh"}, VNET, CROP)
    assert build_method("models_genesis", {"genesis": {"inpaint_rate": 1.0}}, VNET, CROP).genesis == \
        GenesisConfig(inpaint_rate=1.0)


@pytest.mark.slow
def test_a_few_steps_on_one_batch_restore_better_than_the_corrupted_input():
    torch.manual_seed(0)
    method = build_method("models_genesis", {"output_activation": "none"}, VNET, CROP).train()
    x = torch.zeros(4, 1, *CROP)
    x[:, :, 8:24, 8:24, 4:12] = 0.6                                   # a bright box on air
    opt = torch.optim.Adam(method.parameters(), lr=3e-3)
    first = None
    for step in range(30):
        torch.manual_seed(step)
        out = method({"x": x})
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        first = first if first is not None else out["loss"].item()
    assert out["loss"].item() < 0.5 * first and out["loss"].item() < out["l_identity"].item()
