"""The convolutional networks of the CNN-family baselines (paper Table 2's backbones), one class per
kind of `alice.models.configs.CNN_ENCODERS`, all behind one interface so a method is written once:

    body = build_cnn({"name": "unet3d", "widths": [8, 8, 16, 32, 64, 8]})
    enc = body.encode(x)            # encoder levels, shallow to deep: enc[-1] is the bottleneck
    dec = body.decode(enc)          # decoder levels, deep to shallow: dec[-1] the dense features
                                    # (B, body.features, *x's size) at the input's resolution
    net = CNNSegmenter(body, num_classes)   # + a 1x1 convolution to the classes (fine-tuning)

- resnet3d: MONAI's 3-D ResNet (He et al. 2016; the classifier's encoder of MosMed,
  alice.downstream.classifiers, key for key) under a U-Net decoder of MONAI's `UnetUpBlock`s: the
  "3D ResNet" of MoCo v2, BYOL, ContrastiveCrop, LoGo and PGL in the paper's Table 2, which only the
  encoder of transfers ("E.").
- unet3d: MONAI's BasicUNet (the 3-D U-Net of Çiçek et al. 2016) without its output convolution.
- nsunet3d: MONAI's DynUNet, nnU-Net's U-Net (Isensee et al. 2021) as PCRLv2 fine-tunes it.
- unet: MONAI's UNet with residual units (Kerfoot et al. 2018), the U-Net of Chaitanya et al.
  (2-D in their paper, 3-D here).
- vnet: the V-Net of Milletari et al. 2016 (5³ convolutions, residual stages of 1, 2, 3, 3 and 3
  convolutions, stride-2 convolutions down, transposed ones up), written here with a `width`: MONAI's
  VNet hard-wires 16 to 256 channels (45 M parameters, 2.3 s a training step of two 32³ crops on one
  CPU thread), which no demo can afford.

`transferable_parts(body, parts)` is the state a checkpoint carries: the whole body ("E.&D."), or
its encoder ("E.", `body.encoder_prefixes`); `alice.downstream.networks` says which a backbone takes.
"""

from __future__ import annotations

import abc
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from alice.models.configs import CNN_ENCODERS, normalized_encoder_config

PARTS = ("encoder", "encoder_decoder")


class CNNBody(nn.Module, metaclass=abc.ABCMeta):
    """An encoder-decoder network without its output layer; each kind implements both passes."""

    features: int                       # channels of the dense output (decoder's last level)
    encoder_prefixes: tuple[str, ...]   # top-level state-dict prefixes of the encoder

    @abc.abstractmethod
    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The encoder levels, shallow to deep (the last is the bottleneck)."""

    @abc.abstractmethod
    def decode(self, enc: list[torch.Tensor]) -> list[torch.Tensor]:
        """The decoder levels from `encode`'s, deep to shallow (the last: the dense features)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The dense features (B, features, *x's size)."""
        return self.decode(self.encode(x))[-1]

    def encoder_state(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.state_dict().items() if k.split(".")[0] in self.encoder_prefixes}


# ----------------------------------------------------------------------------------------- resnet3d
RESNET_LAYERS = {10: ("basic", [1, 1, 1, 1]), 18: ("basic", [2, 2, 2, 2]), 34: ("basic", [3, 4, 6, 3]),
                 50: ("bottleneck", [3, 4, 6, 3])}
RESNET_WIDTHS = (64, 128, 256, 512)


def resnet_encoder(depth: int, widen_factor: float, in_channels: int = 1) -> nn.Module:
    """MONAI's 3-D ResNet ending in global average pooling (no fc): the stem's stride is 2 as in the
    standard ResNet (MONAI's default 1 runs the 7³ stem at full resolution, 4x the cost)."""
    from monai.networks.nets.resnet import ResNet

    block, layers = RESNET_LAYERS[depth]
    return ResNet(block=block, layers=layers, block_inplanes=list(RESNET_WIDTHS), spatial_dims=3,
                  n_input_channels=in_channels, conv1_t_size=7, conv1_t_stride=2,
                  widen_factor=widen_factor, feed_forward=False)


def resnet_widths(depth: int, widen_factor: float) -> list[int]:
    """Channels of the stem and of the four stages' outputs."""
    block, _ = RESNET_LAYERS[depth]
    expansion = 4 if block == "bottleneck" else 1
    planes = [int(w * widen_factor) for w in RESNET_WIDTHS]
    return [planes[0]] + [p * expansion for p in planes]


class ResNetUNet(CNNBody):
    """ResNet encoder (`encoder`, MONAI's ResNet) + U-Net decoder: levels at 1/2 (stem), 1/4, 1/8,
    1/16, 1/32 of the input; each decoder level upsamples by a transposed convolution, concatenates
    the skip and convolves (MONAI UnetUpBlock); a last one goes from 1/2 to full resolution."""

    encoder_prefixes = ("encoder",)

    def __init__(self, depth: int, widen_factor: float, features: int):
        super().__init__()
        from monai.networks.blocks.dynunet_block import UnetBasicBlock, UnetUpBlock

        self.encoder = resnet_encoder(depth, widen_factor)
        w = resnet_widths(depth, widen_factor)
        self.features = features
        # 1/32 -> 1/16 (layer3) -> 1/8 (layer2) -> 1/4 (layer1) -> 1/2 (stem) -> 1
        self.decoder = nn.ModuleList([UnetUpBlock(3, w[i], w[i - 1], 3, 1, 2, norm_name="batch")
                                      for i in range(4, 0, -1)])
        self.top = nn.Sequential(nn.ConvTranspose3d(w[0], features, 2, stride=2),
                                 UnetBasicBlock(3, features, features, 3, 1, norm_name="batch"))

    def encode(self, x):
        e = self.encoder
        s0 = e.act(e.bn1(e.conv1(x)))
        l1 = e.layer1(e.maxpool(s0) if not getattr(e, "no_max_pool", False) else s0)
        l2 = e.layer2(l1)
        l3 = e.layer3(l2)
        return [s0, l1, l2, l3, e.layer4(l3)]

    def decode(self, enc):
        h, out = enc[-1], []
        for up, skip in zip(self.decoder, reversed(enc[:-1])):
            h = up(h, skip)
            out.append(h)
        out.append(self.top(h))
        return out


# ------------------------------------------------------------------------------------------- unet3d
class UNet3D(CNNBody):
    """MONAI's BasicUNet without `final_conv`: `widths` = its six `features`."""

    encoder_prefixes = ("conv_0", "down_1", "down_2", "down_3", "down_4")

    def __init__(self, widths: Sequence[int]):
        super().__init__()
        from monai.networks.nets import BasicUNet

        self.net = BasicUNet(spatial_dims=3, in_channels=1, out_channels=1, features=tuple(widths),
                             norm=("instance", {"affine": True}))
        self.net.final_conv = nn.Identity()
        self.features = int(widths[5])
        self.encoder_prefixes = tuple(f"net.{p}" for p in UNet3D.encoder_prefixes)

    def encode(self, x):
        n = self.net
        x0 = n.conv_0(x)
        x1 = n.down_1(x0)
        x2 = n.down_2(x1)
        x3 = n.down_3(x2)
        return [x0, x1, x2, x3, n.down_4(x3)]

    def decode(self, enc):
        n = self.net
        x0, x1, x2, x3, x4 = enc
        u4 = n.upcat_4(x4, x3)
        u3 = n.upcat_3(u4, x2)
        u2 = n.upcat_2(u3, x1)
        return [u4, u3, u2, n.upcat_1(u2, x0)]

    def encoder_state(self):
        return {k: v for k, v in self.state_dict().items() if k.split(".")[1] in UNet3D.encoder_prefixes}


# ----------------------------------------------------------------------------------------- nsunet3d
class NSUNet3D(CNNBody):
    """MONAI's DynUNet (nnU-Net's U-Net: 3³ kernels, instance norm, leaky ReLU), strides 1, 2, 2,
    ...; `filters` per level, the first level's width is the dense output's."""

    encoder_prefixes = ("input_block", "downsamples", "bottleneck")

    def __init__(self, filters: Sequence[int]):
        super().__init__()
        from monai.networks.nets import DynUNet

        n = len(filters)
        self.net = DynUNet(3, 1, 1, kernel_size=[3] * n, strides=[1] + [2] * (n - 1),
                           upsample_kernel_size=[2] * (n - 1), filters=list(filters))
        self.net.output_block = nn.Identity()
        self.features = int(filters[0])

    def encode(self, x):
        n = self.net
        out = [n.input_block(x)]
        for down in n.downsamples:
            out.append(down(out[-1]))
        out.append(n.bottleneck(out[-1]))
        return out

    def decode(self, enc):
        h, out = enc[-1], []
        for up, skip in zip(self.net.upsamples, reversed(enc[:-1])):
            h = up(h, skip)
            out.append(h)
        return out

    def encoder_state(self):
        return {k: v for k, v in self.state_dict().items() if k.split(".")[1] in self.encoder_prefixes}


# --------------------------------------------------------------------------------------------- unet
class ResUNet(CNNBody):
    encoder_prefixes = ("net",)  # nested: encoder_state() selects by the levels' paths

    """MONAI's UNet (`channels`, strides 2, `res_units` residual units per block) with `features`
    output channels. MONAI nests its levels (down, skip(submodule), up), so the levels are read
    with forward hooks on the down blocks and up blocks of one pass."""

    def __init__(self, channels: Sequence[int], res_units: int, features: int):
        super().__init__()
        from monai.networks.layers.simplelayers import SkipConnection
        from monai.networks.nets import UNet

        self.net = UNet(3, 1, features, channels=tuple(channels), strides=(2,) * (len(channels) - 1),
                        num_res_units=res_units, norm="batch")
        self.features = int(features)
        downs, ups, prefixes, level, prefix = [], [], [], self.net.model, "net.model"
        while True:
            downs.append(level[0])
            prefixes.append(f"{prefix}.0")
            ups.append(level[2])
            inner = level[1].submodule
            if isinstance(level[1], SkipConnection) and isinstance(inner, nn.Sequential) and len(inner) == 3 \
                    and isinstance(inner[1], SkipConnection):
                level, prefix = inner, f"{prefix}.1.submodule"
                continue
            downs.append(inner)             # the bottom block
            prefixes.append(f"{prefix}.1.submodule")
            break
        self._downs, self._ups = downs, ups[::-1]
        self._prefixes = tuple(prefixes)

    def _run(self, x):
        enc, dec = [], []
        hooks = [m.register_forward_hook(lambda _m, _i, o: enc.append(o)) for m in self._downs]
        hooks += [m.register_forward_hook(lambda _m, _i, o: dec.append(o)) for m in self._ups]
        try:
            self.net(x)
        finally:
            for h in hooks:
                h.remove()
        return enc, dec

    def encode(self, x):
        enc, dec = self._run(x)
        self._decoded = dec  # the pass ran the decoder too: decode() returns it
        return enc

    def decode(self, enc):
        dec = getattr(self, "_decoded", None)
        self._decoded = None
        if dec is None:
            raise RuntimeError("ResUNet.decode: call encode() first (one pass computes both)")
        return dec

    def encoder_state(self):
        return {k: v for k, v in self.state_dict().items() if any(k.startswith(p + ".") for p in self._prefixes)}


# --------------------------------------------------------------------------------------------- vnet
class _LUConvs(nn.Sequential):
    def __init__(self, channels: int, n: int):
        super().__init__(*[nn.Sequential(nn.Conv3d(channels, channels, 5, padding=2),
                                         nn.BatchNorm3d(channels), nn.PReLU(channels))
                           for _ in range(n)])


class _VDown(nn.Module):
    def __init__(self, cin: int, n: int):
        super().__init__()
        self.down = nn.Sequential(nn.Conv3d(cin, 2 * cin, 2, stride=2), nn.BatchNorm3d(2 * cin), nn.PReLU(2 * cin))
        self.convs = _LUConvs(2 * cin, n)

    def forward(self, x):
        d = self.down(x)
        return d + self.convs(d)  # residual stage (V-Net §2)


class _VUp(nn.Module):
    def __init__(self, cin: int, cout: int, n: int):
        super().__init__()
        self.up = nn.Sequential(nn.ConvTranspose3d(cin, cout // 2, 2, stride=2), nn.BatchNorm3d(cout // 2),
                                nn.PReLU(cout // 2))
        self.convs = _LUConvs(cout, n)

    def forward(self, x, skip):
        u = torch.cat([self.up(x), skip], 1)
        return u + self.convs(u)


class VNet(CNNBody):
    """V-Net (Milletari et al. 2016, Fig. 1) with first-stage `width` w (paper 16): stages w, 2w,
    4w, 8w, 16w; up path to 2w at full resolution, then a 1³ convolution to `features`."""

    encoder_prefixes = ("input", "downs")

    def __init__(self, width: int, features: int):
        super().__init__()
        w = width
        self.width = w
        self.input = nn.Sequential(nn.Conv3d(1, w, 5, padding=2), nn.BatchNorm3d(w), nn.PReLU(w))
        self.downs = nn.ModuleList([_VDown(w, 2), _VDown(2 * w, 3), _VDown(4 * w, 3), _VDown(8 * w, 3)])
        self.ups = nn.ModuleList([_VUp(16 * w, 16 * w, 3), _VUp(16 * w, 8 * w, 3), _VUp(8 * w, 4 * w, 2),
                                  _VUp(4 * w, 2 * w, 1)])
        self.out = nn.Sequential(nn.Conv3d(2 * w, features, 1), nn.BatchNorm3d(features), nn.PReLU(features))
        self.features = int(features)

    def encode(self, x):
        # the input stage's residual: x broadcast over its w channels (V-Net's 16 copies of x)
        out = [self.input(x) + x]
        for down in self.downs:
            out.append(down(out[-1]))
        return out

    def decode(self, enc):
        h, out = enc[-1], []
        for up, skip in zip(self.ups, reversed(enc[:-1])):
            h = up(h, skip)
            out.append(h)
        out.append(self.out(h))
        return out


# ----------------------------------------------------------------------------------------- builders
def build_cnn(encoder_config: Mapping[str, Any]) -> CNNBody:
    """The body of kind `encoder_config["name"]` (one of CNN_ENCODERS)."""
    enc = normalized_encoder_config(encoder_config)
    name = enc["name"]
    if name not in CNN_ENCODERS:
        raise ValueError(f"'{name}' is not a convolutional network (known: {', '.join(CNN_ENCODERS)})")
    if name == "resnet3d":
        return ResNetUNet(enc["depth"], enc["widen_factor"], enc["features"])
    if name == "unet3d":
        return UNet3D(enc["widths"])
    if name == "nsunet3d":
        return NSUNet3D(enc["filters"])
    if name == "unet":
        return ResUNet(enc["channels"], enc["res_units"], enc["features"])
    return VNet(enc["width"], enc["features"])


def transferable_parts(body: CNNBody, parts: str) -> dict[str, torch.Tensor]:
    """Detached copies of the weights of `parts` ("encoder" or "encoder_decoder") of `body`."""
    if parts not in PARTS:
        raise ValueError(f"parts must be one of {PARTS}, got {parts!r}")
    state = body.encoder_state() if parts == "encoder" else body.state_dict()
    return {k: v.detach().clone() for k, v in state.items()}


class CNNSegmenter(nn.Module):
    """A CNN body + a 1³ convolution from its dense features to `num_classes` logits."""

    def __init__(self, body: CNNBody, num_classes: int):
        super().__init__()
        self.body = body
        self.head = nn.Conv3d(body.features, num_classes, 1)

    def forward(self, x):
        return self.head(self.body(x))
