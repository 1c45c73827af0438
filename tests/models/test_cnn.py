"""The convolutional family (alice.models.cnn), its configs (alice.models.configs) and its transfer
into the segmentation backbones (E. / E.&D.) and the MosMed ResNet classifier."""

from __future__ import annotations

import pytest
import torch

from alice.downstream.networks import (build_classification_network, build_segmentation_network,
                                       encoder_of, get_backbone)
from alice.downstream.transfer import WeightTransferError, load_encoder_checkpoint, save_encoder_checkpoint
from alice.errors import ConfigError
from alice.models.cnn import build_cnn, transferable_parts
from alice.models.configs import check_crop, encoder_stride, normalized_encoder_config

pytestmark = pytest.mark.usefixtures("one_thread")

CONFIGS = {
    "resnet3d": {"name": "resnet3d", "depth": 10, "widen_factor": 0.0625, "features": 4},
    "unet3d": {"name": "unet3d", "widths": [4, 4, 8, 8, 16, 4]},
    "nsunet3d": {"name": "nsunet3d", "filters": [4, 8, 16]},
    "unet": {"name": "unet", "channels": [4, 8, 16], "res_units": 1, "features": 4},
    "vnet": {"name": "vnet", "width": 2, "features": 4},
}
# backbone -> (encoder kind, pre-trained parts as Table 2 prints them)
BACKBONES = {"resnet_unet": ("resnet3d", "encoder"), "unet3d": ("unet3d", "encoder_decoder"),
             "nsunet3d": ("nsunet3d", "encoder"), "unet": ("unet", "encoder_decoder"),
             "vnet": ("vnet", "encoder_decoder")}
CROP = [32, 32, 32]


@pytest.mark.parametrize("kind", list(CONFIGS))
def test_levels_shapes_and_dense_output(kind):
    body = build_cnn(CONFIGS[kind]).eval()
    x = torch.randn(2, 1, *CROP)
    enc = body.encode(x)
    dec = body.decode(enc)
    stride = encoder_stride(CONFIGS[kind])[0]
    assert tuple(enc[-1].shape[2:]) == tuple(c // stride for c in CROP)  # the bottleneck
    assert tuple(dec[-1].shape) == (2, body.features, *CROP)
    assert torch.allclose(body(x), dec[-1])


@pytest.mark.parametrize("kind", list(CONFIGS))
def test_encoder_state_is_a_proper_part_of_the_body(kind):
    body = build_cnn(CONFIGS[kind])
    enc, full = transferable_parts(body, "encoder"), transferable_parts(body, "encoder_decoder")
    assert enc and set(enc) < set(full)
    # the encoder's parameters change the bottleneck, the decoder-only ones do not
    x = torch.randn(1, 1, *CROP)
    body.eval()
    before = body.encode(x)[-1].detach().clone()
    with torch.no_grad():
        for name, p in body.named_parameters():
            if name not in enc:
                p.add_(1.0)
    assert torch.allclose(body.encode(x)[-1], before)


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match=r"pretrain\.encoders\.resnet3d\.depth"):
        normalized_encoder_config({"name": "resnet3d", "depth": 11, "widen_factor": 1.0, "features": 4})
    with pytest.raises(ConfigError, match=r"pretrain\.encoders\.unet3d\.widths"):
        normalized_encoder_config({"name": "unet3d", "widths": [4, 4, 8]})
    with pytest.raises(ConfigError, match=r"pretrain\.encoders\.vnet\.features"):
        normalized_encoder_config({"name": "vnet", "width": 2})
    with pytest.raises(ConfigError, match="finetune.x.crop"):
        check_crop(CONFIGS["resnet3d"], [48, 32, 32], "finetune.x.crop")  # stride 32


def _checkpoint(tmp_path, kind, seed=0):
    torch.manual_seed(seed)
    body = build_cnn(CONFIGS[kind])
    path = tmp_path / f"{kind}.pt"
    save_encoder_checkpoint(path, transferable_parts(body, "encoder_decoder"), CONFIGS[kind], "toy",
                            extra={"finished": True})
    return path, body


@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_backbone_takes_its_part_of_a_whole_network_checkpoint(tmp_path, backbone):
    kind, parts = BACKBONES[backbone]
    assert get_backbone(backbone).parts == parts and get_backbone(backbone).encoder == kind
    path, body = _checkpoint(tmp_path, kind)
    torch.manual_seed(1)
    net = build_segmentation_network(backbone, 5, {"crop": CROP}, CONFIGS[kind])
    head = net.head.weight.detach().clone()
    n = load_encoder_checkpoint(net, backbone, path, CONFIGS[kind])
    source = transferable_parts(body, parts)
    assert n == len(source)
    loaded = net.body.state_dict()
    for key, value in source.items():
        assert torch.equal(loaded[key], value), key
    untouched = [k for k in body.state_dict() if k not in source and "running" not in k
                 and "num_batches" not in k]
    if parts == "encoder":
        assert untouched  # the decoder stays as initialised
        assert any(not torch.equal(loaded[k], body.state_dict()[k]) for k in untouched)
    assert torch.equal(net.head.weight, head)  # the output convolution always trains from scratch
    assert net.eval()(torch.randn(1, 1, *CROP)).shape == (1, 5, *CROP)


def test_a_checkpoint_of_another_kind_or_size_is_refused(tmp_path):
    path, _ = _checkpoint(tmp_path, "unet3d")
    net = build_segmentation_network("vnet", 5, {"crop": CROP}, CONFIGS["vnet"])
    with pytest.raises(WeightTransferError, match="cannot initialise backbone 'vnet'"):
        load_encoder_checkpoint(net, "vnet", path, CONFIGS["vnet"])
    wider = {**CONFIGS["unet3d"], "widths": [4, 4, 8, 8, 32, 4]}
    net = build_segmentation_network("unet3d", 5, {"crop": CROP}, wider)
    with pytest.raises(WeightTransferError, match="widths"):
        load_encoder_checkpoint(net, "unet3d", path, wider)


def test_the_resnet_classifier_takes_the_resnet_unets_encoder(tmp_path):
    path, body = _checkpoint(tmp_path, "resnet3d")
    net = build_classification_network("resnet3d", 2, {"head_norm": {}}, CONFIGS["resnet3d"], [64, 64, 32])
    n = load_encoder_checkpoint(net, "resnet3d", path, CONFIGS["resnet3d"])
    assert n == len(encoder_of(net, "resnet3d").state_dict())
    for key, value in net.encoder.state_dict().items():
        assert torch.equal(value, body.state_dict()[f"encoder.{key}"]), key


def test_nnunet_is_not_built_by_the_harness():
    with pytest.raises(ConfigError, match="nnunetv2"):
        build_segmentation_network("nnunet", 5, {"crop": CROP}, {})
