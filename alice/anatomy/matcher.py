"""Anatomical point matchers: where is the query volume's point `p` in the key volume?

Alice (§3, Fig. 2) locates "the same body part" in a query and a key volume with SAM, a
self-supervised anatomical embedding, and cuts the (Q, K) crops around the matched pair. This
module holds the interface every matcher implements plus the baselines:

- `Matcher` (protocol): ``match(query, point, key) -> (point_in_key, score)``; points are (3,)
  float voxel coordinates in the *cached* (RAS, resampled) grids of `alice.data.preprocess`,
  score is in [0, 1] (higher = more confident).
- `BodyBoxMatcher` ("bbox"): maps the point through the two body bounding boxes (see its doc).
- `RandomMatcher` ("random"): a uniformly random voxel of the key's body box — the floor a real
  matcher must beat.

`MATCHERS` / `build_matcher` are the registry the config names matchers by, with the learned
SAM-style matcher ("sam", alice.anatomy.learned), which reads per-volume cached embeddings from
`Volume.embeddings` (alice.anatomy.volume). `alice.anatomy.evaluate.landmark_error_mm` scores any matcher against the
phantoms' ground-truth landmarks.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np
from scipy import ndimage

from alice.anatomy.learned import LearnedMatcher
from alice.anatomy.volume import BODY_THRESHOLD, Volume
from alice.errors import ConfigError

__all__ = ["BODY_THRESHOLD", "MATCHERS", "BodyBoxMatcher", "Matcher", "RandomMatcher", "Volume",
           "body_box", "body_mask", "build_matcher"]


@runtime_checkable
class Matcher(Protocol):
    def match(self, query: Volume, point, key: Volume) -> tuple[np.ndarray, float]:
        """(point in key's cached voxel coords, (3,) float; score in [0, 1])."""
        ...


def body_mask(image: np.ndarray, threshold: float = BODY_THRESHOLD) -> np.ndarray:
    """Largest connected component (26-connectivity) of `image > threshold`; all False if empty."""
    mask = np.asarray(image) > threshold
    labels, n = ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
    if n == 0:
        return mask
    sizes = np.bincount(labels.ravel())[1:]
    return labels == (int(np.argmax(sizes)) + 1)


def body_box(image: np.ndarray, threshold: float = BODY_THRESHOLD) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi) inclusive voxel index bounds of the body's largest connected component.

    A volume with no voxel above `threshold` gets the whole grid as its box.
    """
    mask = body_mask(image, threshold)
    shape = np.asarray(mask.shape)
    if not mask.any():
        return np.zeros(3), (shape - 1).astype(np.float64)
    lo, hi = [], []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        idx = np.flatnonzero(mask.any(axis=other))
        lo.append(idx[0])
        hi.append(idx[-1])
    return np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)


class _BoxCache:
    """Body boxes per case id (each needs one full read of the volume; cache it)."""

    def __init__(self, threshold: float):
        self.threshold = float(threshold)
        self._boxes: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def box(self, vol: Volume) -> tuple[np.ndarray, np.ndarray]:
        key = vol.case_id
        if key not in self._boxes:
            self._boxes[key] = body_box(vol.image, self.threshold)
        return self._boxes[key]


class BodyBoxMatcher:
    """Match by relative position inside the two bodies' bounding boxes.

    The body of each volume is the largest connected component of ``image > threshold``; its
    voxel bounding box [lo, hi] (inclusive) defines relative coordinates
    ``r = (p - lo) / (hi - lo)`` per axis. The match is ``lo_k + r * (hi_k - lo_k)`` in the key,
    so an exact affine (per-axis translation + scale) relation between the two bodies is
    recovered exactly, and a volume maps onto itself with zero error.

    Score: the agreement of the two boxes' physical extents e = (hi - lo + 1) * spacing (mm),
    ``prod_a min(e_q,a, e_k,a) / max(e_q,a, e_k,a)`` — 1 for identical extents, → 0 as they
    diverge. A query point outside its body box gets score 0 (its relative coordinate is
    extrapolated and the point is clipped into the key grid).

    Known weakness (why the harness trains a learned matcher): scans cover different z-ranges (chest
    to pelvis vs. abdomen only, truncated scans), so "relative z inside the body box" is not
    anatomy — a liver dome at 80 % of one scan's height can sit at 40 % of another's. In-plane
    the body outline is a fair proxy (the body fills the axial box), along z it is not. The score
    only flags a z-extent mismatch; it cannot correct it.
    """

    name = "bbox"

    def __init__(self, threshold: float = BODY_THRESHOLD):
        self.boxes = _BoxCache(threshold)

    def match(self, query: Volume, point, key: Volume) -> tuple[np.ndarray, float]:
        p = np.asarray(point, dtype=np.float64).reshape(3)
        lo_q, hi_q = self.boxes.box(query)
        lo_k, hi_k = self.boxes.box(key)
        span_q = hi_q - lo_q
        rel = np.where(span_q > 0, (p - lo_q) / np.where(span_q > 0, span_q, 1.0), 0.5)
        out = lo_k + rel * (hi_k - lo_k)
        out = np.clip(out, 0.0, np.asarray(key.shape, dtype=np.float64) - 1.0)
        inside = bool(np.all(p >= lo_q - 0.5) and np.all(p <= hi_q + 0.5))
        if not inside:
            return out, 0.0
        e_q = (span_q + 1.0) * query.spacing
        e_k = (hi_k - lo_k + 1.0) * key.spacing
        score = float(np.prod(np.minimum(e_q, e_k) / np.maximum(e_q, e_k)))
        return out, min(max(score, 0.0), 1.0)


class RandomMatcher:
    """Baseline: a uniformly random voxel of the key's body box, score 0 (it knows nothing).

    Deterministic given `seed` and the sequence of calls.
    """

    name = "random"

    def __init__(self, seed: int = 0, threshold: float = BODY_THRESHOLD):
        self.rng = np.random.default_rng(seed)
        self.boxes = _BoxCache(threshold)

    def match(self, query: Volume, point, key: Volume) -> tuple[np.ndarray, float]:
        lo, hi = self.boxes.box(key)
        return lo + self.rng.random(3) * (hi - lo), 0.0


MATCHERS: dict[str, type] = {"bbox": BodyBoxMatcher, "random": RandomMatcher, "sam": LearnedMatcher}


def build_matcher(name: str, **kw: Any) -> Matcher:
    """Instantiate a registered matcher by name; unknown names or options raise ConfigError."""
    if name not in MATCHERS:
        raise ConfigError("matcher", f"unknown matcher '{name}' (known: {', '.join(sorted(MATCHERS))})")
    try:
        return MATCHERS[name](**kw)
    except TypeError as exc:
        raise ConfigError("matcher", f"bad options for '{name}': {exc}") from None
