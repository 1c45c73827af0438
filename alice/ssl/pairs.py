"""Alice's (Q, K) crop pairs from the pretraining pool (paper §3 intro, §4.2, supp. A.1).

For each sample: pick a query volume and a different key volume at random from the train list,
draw a query point = a random voxel inside the query body (cached intensity above
`body_threshold`, i.e. HU above the window's low end, -125 HU for the pool), match it into the key
with a `Matcher`, and cut crops of `crop` voxels centred on both points (zero = background padding
where a crop leaves its volume).

Re-draw rule (FACTS, released code): the query point is re-drawn until the match score reaches
`min_score` (default 0.7) or `max_tries` draws were made; then the best-scoring draw is used.

Differences from the released code, on purpose: the key is a random *different* train volume
(paper: "a query volume and a key volume are randomly picked"), not the previous batch's volume.

Determinism: sample b of step i depends only on (seed, i, b) and the data, so a resumed run
(`batches(start=i)`) sees exactly the batches an uninterrupted run would have seen.

Volumes are opened as memmaps (np.load mmap_mode="r") lazily; crops read only their own slab.

`same_volume=True` is the inter-volume-off ablation (Table 5): K is a second crop of the SAME
volume around the query point moved by a uniform random integer jitter of up to `jitter` voxels
per axis (default: a quarter of the crop size), score 1.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from alice.anatomy.matcher import BODY_THRESHOLD, Matcher, Volume, build_matcher
from alice.errors import ConfigError


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


class CropPairDataset:
    """Deterministic (Q, K) crop-pair batches; `batch(i)` is step i's batch.

    data_dir: preprocessing cache of the pool; case_ids: the train list (folds.json "train");
    crop: (x, y, z) voxels; matcher: a registry name or a Matcher instance.
    """

    def __init__(
        self,
        data_dir: str | Path,
        case_ids: Sequence[str],
        *,
        crop: Sequence[int] = (64, 64, 64),
        batch_size: int = 8,
        seed: int = 0,
        matcher: str | Matcher = "bbox",
        matcher_options: dict[str, Any] | None = None,
        min_score: float = 0.7,
        max_tries: int = 100,
        same_volume: bool = False,
        jitter: Sequence[int] | int | None = None,
        body_threshold: float = BODY_THRESHOLD,
        pad_value: float = 0.0,
    ):
        self.data_dir = Path(data_dir)
        self.case_ids = list(case_ids)
        self.crop = tuple(int(c) for c in crop)
        if len(self.crop) != 3 or min(self.crop) < 1:
            raise ConfigError("crop", f"must be 3 positive voxel sizes, got {list(crop)}")
        if int(batch_size) < 1:
            raise ConfigError("batch_size", f"must be >= 1, got {batch_size}")
        if not 0.0 <= float(min_score) <= 1.0:
            raise ConfigError("min_score", f"must be in [0, 1], got {min_score}")
        if int(max_tries) < 1:
            raise ConfigError("max_tries", f"must be >= 1, got {max_tries}")
        if not same_volume and len(self.case_ids) < 2:
            raise ConfigError("case_ids", "inter-volume pairs need at least 2 volumes")
        if not self.case_ids:
            raise ConfigError("case_ids", "no volumes")
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.matcher = build_matcher(matcher, **(matcher_options or {})) if isinstance(matcher, str) else matcher
        self.min_score = float(min_score)
        self.max_tries = int(max_tries)
        self.same_volume = bool(same_volume)
        if jitter is None:
            jitter = [max(c // 4, 0) for c in self.crop]
        self.jitter = np.broadcast_to(np.asarray(jitter, dtype=np.int64), (3,)).copy()
        self.body_threshold = float(body_threshold)
        self.pad_value = float(pad_value)
        self._vols: dict[str, Volume] = {}

    # ------------------------------------------------------------------------------ helpers
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

    def sample(self, rng: np.random.Generator) -> dict[str, Any]:
        n = len(self.case_ids)
        qi = int(rng.integers(n))
        q = self.volume(self.case_ids[qi])
        if self.same_volume:
            pq = self._body_point(q, rng)
            offset = rng.integers(-self.jitter, self.jitter + 1)
            pk = np.clip(pq + offset, 0, np.asarray(q.shape) - 1).astype(np.float64)
            return {"q": q, "k": q, "pq": pq, "pk": pk, "score": 1.0, "tries": 1}
        ki = int(rng.integers(n - 1))
        ki += ki >= qi  # uniform over the other volumes
        k = self.volume(self.case_ids[ki])
        best = None
        tries = 0
        for tries in range(1, self.max_tries + 1):
            pq = self._body_point(q, rng)
            pk, score = self.matcher.match(q, pq, k)
            if best is None or score > best[2]:
                best = (pq, np.asarray(pk, dtype=np.float64), float(score))
            if score >= self.min_score:
                break
        pq, pk, score = best
        return {"q": q, "k": k, "pq": pq, "pk": pk, "score": score, "tries": tries}

    # ------------------------------------------------------------------------------ batches
    def batch(self, step: int) -> dict[str, Any]:
        """Step `step`'s batch: Q, K (B, 1, X, Y, Z) float32 tensors plus the pairs' provenance."""
        qs, ks, rows = [], [], []
        for b in range(self.batch_size):
            rng = np.random.default_rng([self.seed, int(step), b])
            s = self.sample(rng)
            qs.append(crop_at(s["q"].image, s["pq"], self.crop, self.pad_value))
            ks.append(crop_at(s["k"].image, s["pk"], self.crop, self.pad_value))
            rows.append(s)
        return {
            "Q": torch.from_numpy(np.stack(qs)[:, None]),
            "K": torch.from_numpy(np.stack(ks)[:, None]),
            "q_case": [s["q"].case_id for s in rows],
            "k_case": [s["k"].case_id for s in rows],
            "q_point": torch.as_tensor(np.stack([s["pq"] for s in rows]), dtype=torch.float32),
            "k_point": torch.as_tensor(np.stack([s["pk"] for s in rows]), dtype=torch.float32),
            "score": torch.as_tensor([s["score"] for s in rows], dtype=torch.float32),
            "tries": [s["tries"] for s in rows],
            "step": int(step),
        }

    __getitem__ = batch

    def batches(self, start: int = 0, stop: int | None = None) -> Iterator[dict[str, Any]]:
        """Batches of steps start, start + 1, ... (forever when stop is None)."""
        step = int(start)
        while stop is None or step < stop:
            yield self.batch(step)
            step += 1

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self.batches(0)
