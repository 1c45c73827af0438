"""nnFormer: shapes on the demo config's crop (deep supervision included), locality of LV-MSA /
SLV-MSA, global GV-MSA, the clipped relative position bias, and crop errors."""

import pytest
import torch

from alice.config import encoder_config, load_config
from alice.downstream.networks import build_segmentation_network
from alice.errors import ConfigError
from alice.models.configs import check_crop, encoder_stride
from alice.models.nnformer import NNFormer, NNFormerBlock, RelativePositionBias

TINY = {"name": "nnformer", "embed_dim": 8, "depths": [2, 2, 1], "heads": [1, 2, 4], "window": [4, 4, 2],
        "patch": [2, 2, 1], "mlp_ratio": 2, "global_stages": 1}


@pytest.fixture(scope="module")
def demo():
    config = load_config()
    return config["finetune"]["nnformer"], encoder_config(config, "nnformer")


def test_demo_config_shapes_with_deep_supervision(demo):
    settings, enc = demo
    torch.manual_seed(0)
    net = build_segmentation_network("nnformer", 14, settings, enc)
    crop = settings["crop"]
    x = torch.randn(1, 1, *crop)
    net.train()
    outs = net(x)
    assert isinstance(outs, list) and len(outs) == net.num_outputs == len(enc["depths"]) - 1
    assert [tuple(o.shape) for o in outs] == [(1, 14, *[c // 2 ** k for c in crop]) for k in range(len(outs))]
    net.eval()
    with torch.no_grad():
        full = net(x)
    assert torch.is_tensor(full) and full.shape == (1, 14, *crop)
    maps = net.encoder.stages(net.encoder.embed(x))
    stride = encoder_stride(enc)
    assert maps[-1].shape == (1, net.encoder.out_dim, *[c // s for c, s in zip(crop, stride)])
    assert len(maps) == len(enc["depths"])


def test_invalid_crops_are_config_errors(demo):
    settings, enc = demo
    with pytest.raises(ConfigError, match=r"finetune\.nnformer\.crop.*multiple.*stride"):
        build_segmentation_network("nnformer", 14, dict(settings, crop=[40, 48, 32]), enc)
    with pytest.raises(ConfigError, match=r"finetune\.nnformer\.crop"):
        build_segmentation_network("nnformer", 14, dict(settings, crop=[64, 64]), enc)
    with pytest.raises(ConfigError, match=r"finetune\.nnformer\.crop.*not tiled by the LV-MSA window"):
        check_crop(dict(enc, window=[3, 3, 3]), [64, 64, 32], "finetune.nnformer.crop")
    with pytest.raises(ConfigError, match=r"finetune\.nnformer\.feature_size"):
        build_segmentation_network("nnformer", 14, dict(settings, feature_size=enc["embed_dim"] + 2), enc)
    with pytest.raises(ConfigError, match=r"pretrain\.encoders\.nnformer\.patch"):
        check_crop(dict(enc, patch=[3, 4, 4]), [64, 64, 32], "x")
    net = NNFormer(3, TINY)
    with pytest.raises(ValueError, match="stride"):
        net(torch.randn(1, 1, 20, 16, 8))


def _changed(block, x, at):
    y = block(x)
    x2 = x.clone()
    x2[(0, *at)] += torch.linspace(-3.0, 3.0, x.shape[-1])  # not a constant: LayerNorm would erase it
    return (block(x2) - y).abs().sum(-1)[0] > 1e-6


def test_lv_msa_is_local_and_slv_msa_masks_wrapped_regions():
    torch.manual_seed(0)
    x = torch.randn(1, 8, 8, 8, 16)
    lv = NNFormerBlock(16, 2, [4, 4, 4], 2, local=True, shift=False, skip=False)
    changed = _changed(lv, x, (1, 1, 1))
    expect = torch.zeros(8, 8, 8, dtype=torch.bool)
    expect[:4, :4, :4] = True
    assert torch.equal(changed, expect)  # only the token's own window
    slv = NNFormerBlock(16, 2, [4, 4, 4], 2, local=True, shift=True, skip=False)
    slv.load_state_dict(lv.state_dict())
    changed = _changed(slv, x, (0, 0, 0))
    expect = torch.zeros(8, 8, 8, dtype=torch.bool)
    expect[:2, :2, :2] = True  # shifted window at the corner: the wrapped-around parts are masked out
    assert torch.equal(changed, expect)
    changed = _changed(slv, x, (3, 3, 3))
    expect = torch.zeros(8, 8, 8, dtype=torch.bool)
    expect[2:6, 2:6, 2:6] = True  # a shifted window straddling the unshifted ones
    assert torch.equal(changed, expect)
    gv = NNFormerBlock(16, 2, [4, 4, 4], 2, local=False, shift=False, skip=False)
    assert _changed(gv, x, (0, 0, 0)).all()


def test_skip_attention_takes_keys_and_values_from_the_skip():
    torch.manual_seed(0)
    blk = NNFormerBlock(16, 2, [4, 4, 4], 2, local=True, shift=False, skip=True)
    x, skip = torch.randn(1, 4, 4, 4, 16), torch.randn(1, 4, 4, 4, 16)
    skip2 = skip.clone()
    skip2[0, 0, 0, 0] += torch.linspace(-3.0, 3.0, 16)
    assert not torch.allclose(blk(x, skip), blk(x, skip2))


def test_relative_position_bias_clips_offsets_to_the_window():
    rpb = RelativePositionBias([2, 2, 2], heads=1)
    with torch.no_grad():
        rpb.table.copy_(torch.arange(27, dtype=torch.float32)[:, None])
    bias = rpb((4, 1, 1))[0]  # tokens at x = 0..3
    # offsets -3..3 along x clip to -1..1: token 0 sees tokens 1, 2, 3 with the same (clipped) bias
    assert bias[0, 1] == bias[0, 2] == bias[0, 3] and bias[0, 0] != bias[0, 1]
    assert bias[3, 0] == bias[3, 1] == bias[3, 2] and bias[3, 3] != bias[3, 2]
    assert rpb.table.shape == (27, 1)  # crop-independent


def test_encoder_weights_do_not_depend_on_the_crop():
    torch.manual_seed(0)
    net = NNFormer(3, TINY)
    shapes = {k: v.shape for k, v in net.encoder.state_dict().items()}
    net.eval()
    with torch.no_grad():
        for crop in ([16, 16, 8], [32, 16, 16]):
            assert net(torch.randn(1, 1, *crop)).shape == (1, 3, *crop)
    assert {k: v.shape for k, v in net.encoder.state_dict().items()} == shapes
    assert not any("mask" in k for k in net.encoder.state_dict())


def test_nnformer_learns_a_toy_segmentation():
    """Two boxes of different brightness in noise: 60 AdamW steps with deep supervision reach a
    high Dice on both (a broken skip path or head would not)."""
    from monai.losses import DiceCELoss

    from alice.downstream.segmentation import deep_supervision_loss

    torch.manual_seed(0)
    net = NNFormer(3, TINY)
    g = torch.Generator().manual_seed(0)
    y = torch.zeros(2, 1, 32, 32, 16, dtype=torch.long)
    y[0, 0, 4:14, 6:18, 2:10] = 1
    y[1, 0, 12:28, 10:20, 4:12] = 1
    y[0, 0, 20:28, 20:30, 8:14] = 2
    y[1, 0, 2:10, 22:30, 1:6] = 2
    x = torch.rand(2, 1, 32, 32, 16, generator=g) * 0.2 + (y == 1) * 0.8 + (y == 2) * 0.4
    opt = torch.optim.AdamW(net.parameters(), lr=5e-3)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    for _ in range(60):
        net.train()
        loss = deep_supervision_loss(loss_fn, net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        pred = net(x).argmax(1, keepdim=True)
    for k in (1, 2):
        dice = 2 * ((pred == k) & (y == k)).sum() / ((pred == k).sum() + (y == k).sum())
        assert dice > 0.7, (k, float(dice))
