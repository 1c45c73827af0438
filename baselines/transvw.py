"""TransVW: transferable visual words (Haghighi, Hosseinzadeh Taher, Zhou, Gotway and Liang,
"Transferable Visual Words: Exploiting the Semantics of Anatomical Patterns for Self-supervised
Learning", IEEE Transactions on Medical Imaging 40(10), 2021), on the 3D U-Net of the Alice paper's
Table 2 ("3D UNet E.&D.": encoder and decoder are transferred).

Objective (TMI §II; equation numbers unverified), three parts:

- self-discovery of visual words (offline in the paper): an auto-encoder trained on the data embeds
  every patient; a random reference patient and its most similar patients (nearest in that embedding)
  are cut at the same coordinates: the crops at one coordinate are the instances of one visual word
  (a recurring anatomical pattern), its index the word's pseudo-label y. One new reference per word;
- self-classification: a head C on the encoder's bottleneck (global average pooling, fc–ReLU–fc)
  says which word an instance is: L_cls = −(1/B) Σ_b log softmax(C(e(x̃_b)))_{y_b}    (cross-entropy)
- self-restoration: the instance x is transformed by Models Genesis's f (alice.ssl.restoration) and
  the decoder restores it: L_rec = (1/B) Σ_b ‖d(e(f(x_b))) − x'_b‖² / |x|           (MSE)
- total: L = λ_rec·L_rec + λ_cls·L_cls, λ_rec = 1, λ_cls = 0.01 (the authors' release;
  `lambda_rec`, `lambda_cls`). Both heads read the same forward pass of the TRANSFORMED instance.

The release's further defaults: 44 visual words (`visual_words.classes`), the 200 most similar
patients per word (`visual_words.neighbours`), and "multi-resolution" instances: besides the crop at
the word's coordinate, two more per instance whose in-plane side is resized from U[50, 80] voxels
to the 64 of the input and whose in-plane centre moves by up to ±10 voxels (here: with probability
`multi_res_prob` = 2/3 an instance has an in-plane scale ~ U(`scale_range` = [0.78, 1.25]) of the
crop and an in-plane shift ~ U(±`max_shift` = 0.16) of the crop's side). The classification head's
hidden width 1024 (`head.hidden_dim`) is unverified; `head.norm: batch` puts BatchNorm after its
hidden layer (not the release's).

The crop embedding the head reads (alice.ssl.restoration.embedding_grid, `embedding_grid`): the
papers' global average pooling of the bottleneck for a BatchNorm body, a 2×2×2 average grid,
flattened, for the harness's instance-normalised unet3d (instance norm makes every sample's channel
means equal, so their global average hardly differs between crops: `spread` 0.07 at initialisation).

Self-discovery in the harness (the departure; the `crop` view gives random body crops without
their coordinates, so the method finds its words itself). Two sources, the first used whenever a
pool is known:

1. pool (faithful): the method reads the cached pool itself (alice.anatomy.volume.Volume memmaps of
   `<pool>/folds.json`'s training cases). Per volume: its body box (voxels above BODY_THRESHOLD),
   and a fixed descriptor in place of the paper's auto-encoder features — the body box resampled to
   8×8×8 (average pooling of the intensities). Word k (numpy generator `visual_words.seed`): a
   reference volume (a new one per word while any is left, as the release), its `neighbours` nearest
   volumes by the descriptor's Euclidean distance (itself first), and a random body voxel of the
   reference, stored in normalised body-box coordinates u ∈ [0, 1]³; an instance of word k is the
   crop centred at lo_v + u·(hi_v − lo_v) of one of those volumes v (the "same coordinates" of the
   paper, measured in each volume's own body box because the pool's fields of view differ, where the
   paper's chest CTs were cut at the same voxel). Every step draws B (word, volume) pairs uniformly
   (torch's global generator, reseeded by the trainer each step: resume is exact) and cuts them from
   the memmaps; the loader's crops are not used. The pool is the one `alice.ssl.run` hands the
   method (`attach_pool(data_dir, case_ids)`: the pretraining pool and its training cases), or
   `visual_words.pool` (a path in the method config) for code that builds the method directly.
2. stream (no pool known, e.g. the smoke test): the words are discovered in the stream of the
   loader's random body crops: each crop's descriptor (average pooling to 4×4×4) is assigned to the
   nearest of K prototypes, which are filled with the first K crops seen and then follow their
   members' running mean (mini-batch k-means, Sculley 2010; buffers `prototypes`, `counts`, so they
   are checkpointed and resumed). A word is then an appearance cluster of crops, not a coordinate:
   a weaker stand-in for "the same anatomy across patients".

Logged: `l_rec`, `l_cls` (unweighted), `cls_acc` (the classification head's accuracy on the batch;
1/K is chance), `from_pool` (1: pool source, 0: stream source) and `spread`, the collapse monitor of
the bottleneck embeddings the classifier reads.

Demo scale (unet3d, 32³ crops, batch 4, 100 iterations, 10 words of 6 volumes each): the
restoration falls fast, the classification of TRANSFORMED instances barely leaves chance (the same
network classifies clean instances of these words at 62 % after 60 iterations, so the words are
learnable; out-painting noise and the inverting intensity curve make it slow), and with λ_cls =
0.01 the restoration drives the bottleneck towards a shared pattern (`spread` falls); the
classification branch needs a longer run than the demo's.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from alice.anatomy.volume import BODY_THRESHOLD, Volume
from alice.ssl.encoder import build_cnn_body, cnn_state
from alice.ssl.losses import spread
from alice.ssl.registry import SSLMethod, checked_build, register_method
from alice.ssl.restoration import GenesisConfig, RestorationHead, bottleneck_shape, genesis_transform, grid_embedding
from alice.ssl.restoration import embedding_grid as _embedding_grid
from alice.ssl.views import crop_at

log = logging.getLogger("alice")

METHOD = {
    "name": "transvw",
    "paper": "Haghighi et al., IEEE TMI 2021",
    "objective": "self-discovered visual words: self-classification (CE) + self-restoration of their Models Genesis transformation (MSE)",
    "views": "crop",
    "encoders": ["unet3d"],
    "smoke": {"head": {"hidden_dim": 16}, "visual_words": {"classes": 4}},
}

VISUAL_WORDS = {"classes": 44, "neighbours": 200, "pool": None, "seed": 0, "multi_res_prob": 2.0 / 3.0,
                "scale_range": [0.78, 1.25], "max_shift": 0.16}
POOL_DESCRIPTOR = 8     # the pool source's volume descriptor: body box average-pooled to 8³
STREAM_DESCRIPTOR = 4   # the stream source's crop descriptor: crop average-pooled to 4³


def _settings(name: str, given: Mapping[str, Any] | None, defaults: Mapping[str, Any]) -> dict[str, Any]:
    out = {**defaults, **(given or {})}
    unknown = sorted(set(out) - set(defaults))
    if unknown:
        raise ValueError(f"unknown {name} settings {unknown}; known: {', '.join(defaults)}")
    return out


def body_box(image: np.ndarray, step: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi) voxel corners of the body (intensity > BODY_THRESHOLD) in `image`, read every `step`
    voxels; the whole volume when it holds no body."""
    shape = np.asarray(image.shape)
    body = np.argwhere(np.asarray(image[::step, ::step, ::step]) > BODY_THRESHOLD)
    if body.size == 0:
        return np.zeros(3), shape.astype(np.float64)
    lo = body.min(0) * step
    hi = np.minimum(body.max(0) * step + step, shape)
    return lo.astype(np.float64), hi.astype(np.float64)


class VisualWords:
    """Self-discovered visual words of a pool (module docstring, "pool"): `reference[k]`, `members[k]`
    (volume indices, the reference first) and `position[k]` (normalised body-box coordinates) of
    word k; `sample(b)` draws b instances and their words."""

    def __init__(self, data_dir: str | Path, case_ids: Sequence[str], crop: Sequence[int], classes: int,
                 neighbours: int, seed: int = 0, multi_res_prob: float = 2.0 / 3.0,
                 scale_range: Sequence[float] = (0.78, 1.25), max_shift: float = 0.16) -> None:
        if not case_ids:
            raise ValueError(f"visual words: no volumes in {data_dir}")
        self.crop = tuple(int(c) for c in crop)
        self.multi_res_prob = float(multi_res_prob)
        self.scale_range = tuple(float(s) for s in scale_range)
        self.max_shift = float(max_shift)
        self.volumes = [Volume.load(data_dir, c) for c in case_ids]
        boxes = [body_box(v.image) for v in self.volumes]
        self.lo = np.stack([b[0] for b in boxes])
        self.extent = np.maximum(np.stack([b[1] for b in boxes]) - self.lo, 1.0)
        self.descriptors = np.stack([self._descriptor(v.image, lo, lo + ext)
                                     for v, lo, ext in zip(self.volumes, self.lo, self.extent)])
        n = len(self.volumes)
        rng = np.random.default_rng(int(seed))
        order: list[int] = []
        while len(order) < classes:       # a new reference per word while any is left
            order.extend(int(i) for i in rng.permutation(n))
        self.reference = order[:classes]
        dist = np.linalg.norm(self.descriptors[:, None] - self.descriptors[None], axis=-1)
        m = min(int(neighbours), n)
        self.members = []
        for r in self.reference:
            near = [int(i) for i in np.argsort(dist[r], kind="stable") if i != r]
            self.members.append([r] + near[:m - 1])
        self.position = np.stack([(self._body_point(self.volumes[r], rng) - self.lo[r]) / self.extent[r]
                                  for r in self.reference])

    @staticmethod
    def _descriptor(image: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        box = tuple(slice(int(a), max(int(b), int(a) + 1)) for a, b in zip(lo, hi))
        region = torch.from_numpy(np.array(image[box], dtype=np.float32))[None, None]
        return F.adaptive_avg_pool3d(region, POOL_DESCRIPTOR).flatten().numpy().astype(np.float64)

    @staticmethod
    def _body_point(vol: Volume, rng: np.random.Generator, tries: int = 200) -> np.ndarray:
        shape = np.asarray(vol.shape)
        for _ in range(tries):
            p = np.floor(rng.random(3) * shape)
            if float(vol.image[tuple(p.astype(np.int64))]) > BODY_THRESHOLD:
                return p
        return (shape - 1) / 2.0

    def centre(self, word: int, volume: int) -> np.ndarray:
        """The voxel centre of word `word` in volume `volume` (its normalised body-box position)."""
        return self.lo[volume] + self.position[word] * self.extent[volume]

    def instance(self, word: int, volume: int, scale: float = 1.0, shift: Sequence[float] = (0.0, 0.0)
                 ) -> torch.Tensor:
        """(1, X, Y, Z): the crop of word `word` in volume `volume`, its in-plane side `scale` times
        the crop's (resampled to the crop) and its centre moved by `shift` (in-plane, crop sides)."""
        c = self.centre(word, volume).copy()
        c[:2] += np.asarray(shift, dtype=np.float64) * np.asarray(self.crop[:2])
        if scale == 1.0:
            return torch.from_numpy(crop_at(self.volumes[volume].image, c, self.crop))[None]
        size = (max(2, round(scale * self.crop[0])), max(2, round(scale * self.crop[1])), self.crop[2])
        patch = torch.from_numpy(crop_at(self.volumes[volume].image, c, size))[None, None]
        return F.interpolate(patch, size=self.crop, mode="trilinear", align_corners=False)[0]

    def sample(self, b: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """b instances (b, 1, *crop) of uniformly drawn words, each from a uniformly drawn member volume,
        multi-resolution with probability `multi_res_prob`; and their words (b,)."""
        out, words = [], []
        lo, hi = self.scale_range
        for _ in range(int(b)):
            k = int(torch.randint(len(self.reference), (), generator=generator))
            members = self.members[k]
            v = members[int(torch.randint(len(members), (), generator=generator))]
            if float(torch.rand((), generator=generator)) < self.multi_res_prob:
                u = torch.rand(3, generator=generator)
                scale = lo + float(u[0]) * (hi - lo)
                shift = ((2.0 * u[1:] - 1.0) * self.max_shift).tolist()
                out.append(self.instance(k, v, scale, shift))
            else:
                out.append(self.instance(k, v))
            words.append(k)
        return torch.stack(out), torch.tensor(words)


def pool_cases(data_dir: str | Path) -> list[str]:
    """The training cases of a prepared pool (its folds.json), as alice.ssl.run pretrains on."""
    from alice.io import read_json

    path = Path(data_dir) / "folds.json"
    if not path.is_file():
        raise ValueError(f"visual_words.pool: {path} is missing (run `alice prepare` and `alice folds` first)")
    return list(read_json(path)["train"])


class TransVW(SSLMethod):
    def __init__(self, encoder_config: Mapping[str, Any], crop, lambda_rec: float = 1.0, lambda_cls: float = 0.01,
                 visual_words: Mapping[str, Any] | None = None, head: Mapping[str, Any] | None = None,
                 genesis: Mapping[str, Any] | None = None, output_activation: str = "sigmoid",
                 embedding_grid: Any = "auto", method_config: Mapping[str, Any] | None = None):
        super().__init__(method_config)
        for name, value in (("lambda_rec", lambda_rec), ("lambda_cls", lambda_cls)):
            if float(value) < 0:
                raise ValueError(f"{name} must be >= 0, got {value!r}")
        self.lambda_rec, self.lambda_cls = float(lambda_rec), float(lambda_cls)
        vw = _settings("visual_words", visual_words, VISUAL_WORDS)
        if int(vw["classes"]) < 2 or int(vw["neighbours"]) < 1:
            raise ValueError(f"visual_words needs classes >= 2 and neighbours >= 1, got {vw['classes']}, "
                             f"{vw['neighbours']}")
        lo, hi = (float(s) for s in vw["scale_range"])
        if not (0.0 < lo <= hi and 0.0 <= float(vw["max_shift"]) < 0.5 and 0.0 <= float(vw["multi_res_prob"]) <= 1.0):
            raise ValueError("visual_words needs 0 < scale_range[0] <= scale_range[1], 0 <= max_shift < 0.5 and "
                             f"multi_res_prob in [0, 1], got {vw['scale_range']}, {vw['max_shift']}, "
                             f"{vw['multi_res_prob']}")
        self.vw = vw
        self.classes = int(vw["classes"])
        hd = _settings("head", head, {"hidden_dim": 1024, "norm": "none"})
        if hd["norm"] not in ("none", "batch"):
            raise ValueError(f"head.norm must be 'none' or 'batch', got {hd['norm']!r}")
        self.genesis = GenesisConfig.from_mapping(genesis)
        self.crop = tuple(int(c) for c in crop)
        self.body = build_cnn_body(encoder_config, self.crop)
        self.restoration = RestorationHead(self.body.features, 1, output_activation)
        bottleneck = bottleneck_shape(self.body, self.crop)
        self.grid = _embedding_grid(self.body, bottleneck, embedding_grid)
        width = bottleneck[0] * self.grid[0] * self.grid[1] * self.grid[2]
        norm = [nn.BatchNorm1d(int(hd["hidden_dim"]))] if hd["norm"] == "batch" else []
        self.classifier = nn.Sequential(nn.Linear(width, int(hd["hidden_dim"])), *norm, nn.ReLU(inplace=True),
                                        nn.Linear(int(hd["hidden_dim"]), self.classes))
        # the stream source's prototypes (module docstring); unused once a pool is attached
        self.register_buffer("prototypes", torch.zeros(self.classes, STREAM_DESCRIPTOR ** 3))
        self.register_buffer("counts", torch.zeros(self.classes, dtype=torch.long))
        self.words: VisualWords | None = None
        if vw["pool"] is not None:
            self.attach_pool(vw["pool"])

    def attach_pool(self, data_dir: str | Path, case_ids: Sequence[str] | None = None) -> None:
        """Discover the visual words in the pool at `data_dir` (its training cases unless `case_ids`)."""
        ids = list(case_ids) if case_ids is not None else pool_cases(data_dir)
        v = self.vw
        self.words = VisualWords(data_dir, ids, self.crop, self.classes, int(v["neighbours"]), int(v["seed"]),
                                 float(v["multi_res_prob"]), v["scale_range"], float(v["max_shift"]))
        log.info("transvw: %d visual words from %d volumes of %s", self.classes, len(ids), data_dir)

    def encoder_state_dict(self) -> dict[str, torch.Tensor]:
        return cnn_state(self.body)

    @torch.no_grad()
    def stream_words(self, x: torch.Tensor) -> torch.Tensor:
        """The stream source's words of crops x (B, 1, X, Y, Z): nearest prototype, mini-batch k-means
        update in training mode (module docstring, "stream")."""
        d = F.adaptive_avg_pool3d(x.float().mean(1, keepdim=True), STREAM_DESCRIPTOR).flatten(1)
        d = d.to(self.prototypes)
        words = []
        for i in range(d.shape[0]):
            filled = int((self.counts > 0).sum())
            if filled < self.classes and self.training:
                k = filled
                self.prototypes[k] = d[i]
                self.counts[k] = 1
            elif filled == 0:
                k = 0
            else:
                k = int(((self.prototypes[:filled] - d[i]) ** 2).sum(1).argmin())
                if self.training:
                    self.counts[k] += 1
                    self.prototypes[k] += (d[i] - self.prototypes[k]) / self.counts[k].to(d.dtype)
            words.append(k)
        return torch.tensor(words, device=x.device)

    def forward(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x = batch["x"]
        if self.words is not None:
            instances, words = self.words.sample(x.shape[0])
            instances, words = instances.to(x), words.to(x.device)
        else:
            instances, words = x, self.stream_words(x)
        g = genesis_transform(instances, None, self.genesis)
        enc = self.body.encode(g.input)
        restored = self.restoration(self.body.decode(enc)[-1])
        z = grid_embedding(enc[-1], self.grid)
        logits = self.classifier(z).float()
        l_rec = F.mse_loss(restored.float(), g.target.float())
        l_cls = F.cross_entropy(logits, words)
        loss = self.lambda_rec * l_rec + self.lambda_cls * l_cls
        out = {"loss": loss, "l_rec": l_rec.detach(), "l_cls": l_cls.detach(),
               "cls_acc": (logits.detach().argmax(-1) == words).float().mean(),
               "from_pool": torch.tensor(float(self.words is not None), device=loss.device)}
        if z.shape[0] > 1:
            out["spread"] = spread(z)
        return out


_KWARGS = ("lambda_rec", "lambda_cls", "visual_words", "head", "genesis", "output_activation", "embedding_grid")


@register_method("transvw")
def build(method_config: Mapping[str, Any], encoder_config: Mapping[str, Any], crop) -> TransVW:
    return checked_build("transvw", TransVW, _KWARGS, method_config, encoder_config, crop)
