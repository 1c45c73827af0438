"""Models Genesis (Zhou, Sodha, Rahman Siddiquee, Feng, Tajbakhsh, Gotway and Liang, "Models Genesis:
Generic Autodidactic Models for 3D Medical Image Analysis", MICCAI 2019; the journal version
"Models Genesis", Zhou, Sodha, Pang, Gotway and Liang, Medical Image Analysis 67, 2021), on the
V-Net of the Alice paper's Table 2 ("V-Net E.&D.": the whole encoder-decoder is transferred).

Objective (MedIA §2, "image restoration"; equation numbers unverified): a crop x is corrupted by
the Models Genesis transformations f(·) (alice.ssl.restoration: flips, local pixel shuffling, the
Bézier non-linear intensity map, in- or out-painting, each with the release's probability), and an
encoder-decoder g learns to undo them,

    L_rec = (1 / |x|) Σ_voxels (g(f(x)) − x')²        (MSE over every voxel of the crop)

where x' is x with the flips that f applied (flipping is augmentation, not corruption). g is the
CNN body (alice.models.cnn, `body(x)` = its dense features) + a 1×1×1 convolution to one channel and
a sigmoid (the released PyTorch model's output layer; the cached intensities are in [0, 1]:
`output_activation: none` for a linear output). The release trains the sigmoid with SGD at lr 1;
under the harness's AdamW at 5e-4 its output level (0.5 at initialisation, the demo pool's mean
intensity is 0.19) moves slowly: at the demo scale (V-Net width 4, 32³, batch 4, 100 iterations)
l_rec fell 0.31 → 0.20 with the sigmoid and 0.48 → 0.13 with a linear output (l_identity ≈ 0.30).

3-D decisions: the harness's `crop` view (a random body crop of the cached pool, `pretrain.crop`)
replaces the release's pre-extracted 64×64×32 cubes; the corruption is drawn inside `forward` from
torch's global generator, which the trainer reseeds from (seed, rank, step) before every step, so a
resumed run sees the same corruption. The release trains with SGD (lr 1, plateau decay); the harness's
shared AdamW schedule is used instead (`pretrain.optim`).

Logged: `l_rec` (= the loss), `l_identity` (the MSE of the corrupted input itself against the target:
what "restoring nothing" scores, the bar `l_rec` must get below) and `spread`, the collapse monitor
of the crops' bottleneck embeddings (global average of the deepest encoder level; Models Genesis has
no embedding loss, so this only watches that the encoder still tells crops apart).
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn.functional as F

from alice.ssl.encoder import build_cnn_body, cnn_state, global_embedding
from alice.ssl.losses import spread
from alice.ssl.registry import SSLMethod, checked_build, register_method
from alice.ssl.restoration import GenesisConfig, RestorationHead, genesis_transform

METHOD = {
    "name": "models_genesis",
    "paper": "Zhou et al., MICCAI 2019 / MedIA 2021",
    "objective": "restore the crop from its Models Genesis transformation (non-linear, local shuffling, in-/out-painting; MSE)",
    "views": "crop",
    "encoders": ["vnet"],
    "smoke": {},
}


class ModelsGenesis(SSLMethod):
    def __init__(self, encoder_config: Mapping[str, Any], crop, genesis: Mapping[str, Any] | None = None,
                 output_activation: str = "sigmoid", method_config: Mapping[str, Any] | None = None):
        super().__init__(method_config)
        self.genesis = GenesisConfig.from_mapping(genesis)
        self.body = build_cnn_body(encoder_config, crop)
        self.head = RestorationHead(self.body.features, 1, output_activation)

    def encoder_state_dict(self) -> dict[str, torch.Tensor]:
        return cnn_state(self.body)

    def restore(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(restored crops, bottleneck embeddings) of corrupted crops x."""
        enc = self.body.encode(x)
        return self.head(self.body.decode(enc)[-1]), global_embedding(enc[-1])

    def forward(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        g = genesis_transform(batch["x"], None, self.genesis)
        restored, z = self.restore(g.input)
        target = g.target.float()
        l_rec = F.mse_loss(restored.float(), target)
        out = {"loss": l_rec, "l_rec": l_rec.detach(),
               "l_identity": F.mse_loss(g.input.detach().float(), target)}
        if z.shape[0] > 1:
            out["spread"] = spread(z)
        return out


_KWARGS = ("genesis", "output_activation")


@register_method("models_genesis")
def build(method_config: Mapping[str, Any], encoder_config: Mapping[str, Any], crop) -> ModelsGenesis:
    return checked_build("models_genesis", ModelsGenesis, _KWARGS, method_config, encoder_config, crop)
