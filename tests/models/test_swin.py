"""The Swin encoder is MONAI's SwinUNETR.swinViT key for key, with the hierarchical interface."""

import pytest
import torch
from monai.networks.nets import SwinUNETR

from alice.errors import ConfigError
from alice.models.configs import encoder_stride, normalized_encoder_config
from alice.models.swin import SwinEncoder, swin_kwargs

SWIN = {"name": "swin", "embed_dim": 12, "depths": [2, 1, 1, 1], "heads": [3, 6, 12, 24], "window": [4, 4, 2],
        "mlp_ratio": 2}


def test_state_dict_is_swin_unetrs_and_stages_equal_its_outputs():
    torch.manual_seed(0)
    enc = SwinEncoder(SWIN)
    net = SwinUNETR(in_channels=1, out_channels=3, **swin_kwargs(SWIN))
    a, b = enc.state_dict(), net.swinViT.state_dict()
    assert list(a) == list(b) and all(a[k].shape == b[k].shape for k in a)
    net.swinViT.load_state_dict(a, strict=True)
    x = torch.randn(1, 1, 64, 64, 32)
    maps = enc.stages(enc.embed(x))
    ref = net.swinViT(x, True)
    assert [tuple(m.shape) for m in maps] == [(1, 24, 16, 16, 8), (1, 48, 8, 8, 4), (1, 96, 4, 4, 2),
                                              (1, 192, 2, 2, 1)]
    for m, r in zip(maps, ref[1:]):
        torch.testing.assert_close(m, r)
    assert enc.embed(x).shape == (1, 12, 32, 32, 16)
    assert enc.stride == (32, 32, 32) and enc.patch == (2, 2, 2)
    assert enc.embed_dim == 12 and enc.out_dim == 192 and enc.grid((64, 64, 32)) == (2, 2, 1)


@pytest.mark.parametrize("field, value, key", [
    ("embed_dim", 16, "pretrain.encoders.swin.embed_dim"),
    ("depths", [2, 2, 2], "pretrain.encoders.swin.depths"),
    ("heads", [5, 6, 12, 24], "pretrain.encoders.swin.heads"),
    ("window", [4, 4], "pretrain.encoders.swin.window"),
])
def test_bad_swin_config_names_the_key(field, value, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        normalized_encoder_config(dict(SWIN, **{field: value}))


def test_stride_is_fixed_by_swin_unetr():
    assert encoder_stride(SWIN) == [32, 32, 32]
