"""What a method eats, cut from the unlabeled pool: the view builders of alice.ssl.catalog's `VIEWS`.

    crop          {"x": (B, 1, X, Y, Z)}: one crop per sample around a random body voxel
    two_views     {"views": (2, B, 1, X, Y, Z)}: two augmented views of one such crop
    multi_crop    {"views": (G + L, B, 1, X, Y, Z)}: G global then L local views of one crop
    matched_pair  {"Q", "K"}: anatomically matched crops of two volumes (alice.ssl.pairs)

A body voxel is one whose cached intensity is above `BODY_THRESHOLD` (the window's low end, -125 HU
for the pool), drawn by rejection sampling; a crop is centred on it, background (0) where it leaves
its volume. The views' augmentation is `alice.ssl.augment.view_augment` (random resized crop,
rotation, flips, intensity) with the options of the method config's `views` block:

    two_views:  augment: {scale_range, ratio_range, max_angle_deg, flip_prob, intensity_scale,
                          intensity_shift}                    (both views, ViewAugmentConfig)
    multi_crop: global_views (2), local_views, global_scale, local_scale, augment: {...}

Multi-crop in 3-D (DINO, Caron et al. 2021, §3.1 "multi-crop"): global views cover a fraction
`global_scale` of the crop, local views `local_scale`; every view is resampled to the encoder's crop
because the encoders are built for one input size (MONAI's ViT has a fixed grid of position
embeddings), so here a local view is a small region seen at a higher resolution rather than a
smaller tensor: the local-to-global correspondence DINO learns is kept, its saving in compute is not.

Matched views (Table 5's "iBOT, inter-volume"): a method whose declaration names a switch as its
`matcher` (alice.ssl.catalog) cuts, when the switch is on, its views from an anatomically matched
crop pair of two volumes (alice.ssl.pairs.CropPairDataset, mined with `pretrain.pairs` as Alice's
are): global view 0 and the local views from Q's crop, global view 1 (and any further global view)
from K's, each augmented exactly as above. The views of one sample are then two volumes' views of
one body region instead of two views of one crop.

Determinism: sample b of step i depends only on (seed, i, b) and the data (numpy generator
[seed, i, b] for the crop, a torch generator seeded with (seed, i) for the views), so a resumed run
sees exactly the batches of an uninterrupted one.
"""

from __future__ import annotations

import abc
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch

from alice.anatomy.volume import BODY_THRESHOLD, Volume
from alice.errors import ConfigError
from alice.ssl.augment import ViewAugmentConfig, view_augment

VIEW_OPTIONS = {
    "crop": (),
    "two_views": ("augment",),
    "multi_crop": ("global_views", "local_views", "global_scale", "local_scale", "augment"),
    "matched_pair": (),
}
MULTI_CROP_DEFAULTS = {"global_views": 2, "local_views": 4, "global_scale": [0.4, 1.0],
                       "local_scale": [0.05, 0.4]}


def crop_at(image: np.ndarray, centre, size: Sequence[int], pad: float = 0.0) -> np.ndarray:
    """A `size` crop of `image` centred on `centre` (voxel coords, rounded); outside = `pad`.

    The crop spans [round(c) - s // 2, round(c) - s // 2 + s) per axis.
    """
    size = tuple(int(s) for s in size)
    c = np.rint(np.asarray(centre, dtype=np.float64)).astype(np.int64)
    start = c - np.asarray(size) // 2
    out = np.full(size, pad, dtype=np.float32)
    src, dst = [], []
    for a in range(3):
        lo = max(int(start[a]), 0)
        hi = min(int(start[a]) + size[a], image.shape[a])
        if hi <= lo:
            return out
        src.append(slice(lo, hi))
        dst.append(slice(lo - int(start[a]), hi - int(start[a])))
    out[tuple(dst)] = np.asarray(image[tuple(src)], dtype=np.float32)
    return out


def check_view_options(kind: str, options: Mapping[str, Any] | None, key: str = "views") -> dict[str, Any]:
    """The view options of `kind` with their defaults; ConfigError naming an unknown or bad key."""
    options = dict(options or {})
    known = VIEW_OPTIONS[kind]
    for name in options:
        if name not in known:
            raise ConfigError(f"{key}.{name}", f"not an option of '{kind}' views (known: {', '.join(known) or 'none'})")
    if kind == "multi_crop":
        options = {**MULTI_CROP_DEFAULTS, **options}
        if int(options["global_views"]) < 2:
            raise ConfigError(f"{key}.global_views", "DINO's loss needs at least 2 global views")
        if int(options["local_views"]) < 0:
            raise ConfigError(f"{key}.local_views", "must be >= 0")
        for name in ("global_scale", "local_scale"):
            lo, hi = (float(v) for v in options[name])
            if not 0.0 < lo <= hi <= 1.0:
                raise ConfigError(f"{key}.{name}", f"must be [lo, hi] with 0 < lo <= hi <= 1, got {options[name]}")
    if "augment" in options:
        try:
            ViewAugmentConfig.from_mapping(options["augment"])
        except TypeError as exc:
            raise ConfigError(f"{key}.augment", str(exc)) from None
    return options


class PoolVolumes(abc.ABC):
    """The pool's cached volumes (memmaps, opened lazily) and random body voxels in them."""

    def __init__(self, data_dir: str | Path, case_ids: Sequence[str], crop: Sequence[int],
                 batch_size: int, seed: int, body_threshold: float = BODY_THRESHOLD, pad_value: float = 0.0):
        self.data_dir = Path(data_dir)
        self.case_ids = list(case_ids)
        self.crop = tuple(int(c) for c in crop)
        if len(self.crop) != 3 or min(self.crop) < 1:
            raise ConfigError("crop", f"must be 3 positive voxel sizes, got {list(crop)}")
        if int(batch_size) < 1:
            raise ConfigError("batch_size", f"must be >= 1, got {batch_size}")
        if not self.case_ids:
            raise ConfigError("case_ids", "no volumes")
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.body_threshold = float(body_threshold)
        self.pad_value = float(pad_value)
        self._vols: dict[str, Volume] = {}

    def volume(self, case_id: str) -> Volume:
        if case_id not in self._vols:  # memmap only: opening is cheap, nothing is read yet
            self._vols[case_id] = Volume.load(self.data_dir, case_id)
        return self._vols[case_id]

    def _body_point(self, vol: Volume, rng: np.random.Generator, tries: int = 200) -> np.ndarray:
        """A random voxel with intensity > body_threshold (rejection sampling over the grid)."""
        shape = np.asarray(vol.shape)
        for _ in range(tries):
            p = np.floor(rng.random(3) * shape).astype(np.int64)
            if float(vol.image[tuple(p)]) > self.body_threshold:
                return p.astype(np.float64)
        return (shape - 1) / 2.0  # (nearly) empty volume: its centre

    @abc.abstractmethod
    def batch(self, step: int) -> dict[str, Any]:
        """Step `step`'s batch (depends only on the seed, the step and the data)."""

    def __getitem__(self, step: int) -> dict[str, Any]:
        return self.batch(step)

    def batches(self, start: int = 0, stop: int | None = None) -> Iterator[dict[str, Any]]:
        """Batches of steps start, start + 1, ... (forever when stop is None)."""
        step = int(start)
        while stop is None or step < stop:
            yield self.batch(step)
            step += 1

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self.batches(0)


class CropViews(PoolVolumes):
    """Batches of the `crop`, `two_views` and `multi_crop` kinds (module docstring).

    `pairs` (an alice.ssl.pairs.CropPairDataset over the same pool, seed and batch size): the views
    of a run that mines matched crops (alice.ssl.catalog `matcher` switch, e.g. iBOT's
    `inter_volume`) are cut from step i's matched pair instead of one crop: global view 0 and the
    local views from Q's crop, global view 1 and any further global view from K's crop (another
    volume, matched to Q by `pretrain.pairs`' matcher), each view augmented as without pairs.
    """

    def __init__(self, kind: str, data_dir: str | Path, case_ids: Sequence[str], *, crop: Sequence[int],
                 batch_size: int, seed: int, options: Mapping[str, Any] | None = None, pairs: Any = None,
                 **kw) -> None:
        if kind not in ("crop", "two_views", "multi_crop"):
            raise ValueError(f"CropViews cuts crop, two_views or multi_crop views, not {kind!r}")
        super().__init__(data_dir, case_ids, crop, batch_size, seed, **kw)
        self.kind = kind
        self.options = check_view_options(kind, options)
        self.augment = ViewAugmentConfig.from_mapping(self.options.get("augment"))
        if pairs is not None:
            if kind == "crop":
                raise ValueError("matched pairs make views: two_views or multi_crop, not crop")
            if (tuple(pairs.crop), pairs.batch_size, pairs.seed) != (self.crop, self.batch_size, self.seed):
                raise ValueError("the matched pairs must have the views' crop, batch size and seed")
        self.pairs = pairs

    def crops(self, step: int) -> tuple[torch.Tensor, list[str]]:
        """Step `step`'s crops (B, 1, X, Y, Z) and their case ids."""
        out, cases = [], []
        for b in range(self.batch_size):
            rng = np.random.default_rng([self.seed, int(step), b])
            vol = self.volume(self.case_ids[int(rng.integers(len(self.case_ids)))])
            out.append(crop_at(vol.image, self._body_point(vol, rng), self.crop, self.pad_value))
            cases.append(vol.case_id)
        return torch.from_numpy(np.stack(out)[:, None]), cases

    def view_configs(self) -> list[tuple[bool, ViewAugmentConfig]]:
        """(global?, augmentation) of every view in batch order: two_views two global views of
        `augment`; multi_crop the global views at `global_scale`, then the local ones at
        `local_scale`."""
        if self.kind == "two_views":
            return [(True, self.augment)] * 2
        o = self.options
        scales = ([(True, o["global_scale"])] * int(o["global_views"])
                  + [(False, o["local_scale"])] * int(o["local_views"]))
        return [(is_global, ViewAugmentConfig.from_mapping({**vars(self.augment), "scale_range": list(scale)}))
                for is_global, scale in scales]

    def _views(self, x: torch.Tensor, generator: torch.Generator,
               matched: torch.Tensor | None = None) -> torch.Tensor:
        """The augmented views (V, B, 1, X, Y, Z) of crops `x`; with `matched` (crops of the same
        shape matched to `x`'s), global views 1, 2, ... are cut from `matched` instead. The
        generator draws in view order either way."""
        views, n_global = [], 0
        for is_global, config in self.view_configs():
            source = matched if matched is not None and is_global and n_global >= 1 else x
            n_global += is_global
            views.append(view_augment(source, generator, config))
        return torch.stack(views)

    def batch(self, step: int) -> dict[str, Any]:
        matched = None
        if self.pairs is not None:
            pair = self.pairs.batch(step)
            x, cases, matched = pair["Q"], pair["q_case"], pair["K"]
            out: dict[str, Any] = {"case": cases, "matched_case": pair["k_case"], "score": pair["score"],
                                   "step": int(step)}
        else:
            x, cases = self.crops(step)
            out = {"case": cases, "step": int(step)}
        if self.kind == "crop":
            out["x"] = x
            return out
        generator = torch.Generator().manual_seed(int(np.random.default_rng([self.seed, int(step)]).integers(2**62)))
        out["views"] = self._views(x, generator, matched)
        return out
