"""Alice's (Q, K) crop pairs from the pretraining pool (paper §3 intro, §4.2, supp. A.1).

For each sample: pick a query volume and a different key volume at random from the train list,
draw a query point = a random voxel inside the query body (cached intensity above
`body_threshold`, i.e. HU above the window's low end, -125 HU for the pool), match it into the key
with a `Matcher`, and cut crops of `crop` voxels centred on both points (zero = background padding
where a crop leaves its volume).

Re-draw rule (docs/facts.md "The authors' released code"): the query point is re-drawn until its score reaches
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
from typing import Any, Sequence

import numpy as np
import torch

from alice.anatomy.matcher import BODY_THRESHOLD, Matcher, build_matcher
from alice.errors import ConfigError
from alice.ssl.views import PoolVolumes, crop_at

__all__ = ["CropPairDataset", "crop_at"]


class CropPairDataset(PoolVolumes):
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
        super().__init__(data_dir, case_ids, crop, batch_size, seed, body_threshold, pad_value)
        if not 0.0 <= float(min_score) <= 1.0:
            raise ConfigError("min_score", f"must be in [0, 1], got {min_score}")
        if int(max_tries) < 1:
            raise ConfigError("max_tries", f"must be >= 1, got {max_tries}")
        if not same_volume and len(self.case_ids) < 2:
            raise ConfigError("case_ids", "inter-volume pairs need at least 2 volumes")
        self.matcher = build_matcher(matcher, **(matcher_options or {})) if isinstance(matcher, str) else matcher
        self.min_score = float(min_score)
        self.max_tries = int(max_tries)
        self.same_volume = bool(same_volume)
        if jitter is None:
            jitter = [max(c // 4, 0) for c in self.crop]
        self.jitter = np.broadcast_to(np.asarray(jitter, dtype=np.int64), (3,)).copy()

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
