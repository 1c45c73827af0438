"""`LearnedMatcher` ("sam"): SAM-style matching on cached anatomical embeddings (Yan et al., the
paper's ref. [49]; FACTS.md "SAM"; the maps come from `alice.anatomy.train.embed_cases`).

For a query point p of volume A, SAM's similarity of a key voxel is
``(cos_fine + cos_coarse_upsampled) / 2`` with the query's fine and coarse embeddings at p; the
match is its argmax, the score its maximum. Here:

- query embeddings at p: trilinear interpolation of A's maps at p's continuous cell coordinate,
  re-normalised (border-clamped outside the grid);
- "upsampled" coarse similarity at a fine cell: trilinear interpolation of the coarse similarity
  map at that cell's centre (linear, so equal to upsampling the coarse maps first);
- coarse-to-fine search: the `top_k` best coarse cells of the whole key, then every fine cell whose
  centre lies within ``(window + 0.5) * coarse_stride`` voxels of one of them, vectorised; with
  ``top_k=None`` every coarse cell is a candidate, which is the brute-force argmax over the key;
- output: the best fine cell's centre ``i * s + (s - 1) / 2`` in the key's cached voxel grid
  (`alice.anatomy.grid`), moved by a sub-cell parabolic peak fit per axis (`refine`, at most half a
  cell; ~0.6 mm lower median error on the phantom pool), clipped into the grid; score = the best similarity clipped into [0, 1]
  (the matcher protocol's range; SAM's 0.7 acceptance threshold reads the raw value the same way).

It never runs the network: embeddings are read from ``Volume.embeddings`` (or, when a Volume has
none, ``embeddings_dir/<case_id>.npz``, so the matcher also works with volumes loaded without an
embeddings directory) and kept in a small LRU cache as float32 (X, Y, Z, C) arrays.

The cache file format lives here too (`save_embeddings` / `load_embeddings`, re-exported by
`alice.anatomy.train`) so that matching needs numpy only, never torch: an uncompressed npz with
``fine`` and ``coarse`` (C, g0, g1, g2) maps (float16 by default) and ``meta``, a JSON string with
at least the cached image ``shape`` and the ``fine_stride`` / ``coarse_stride``.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from alice.anatomy.grid import cell_centre, voxel_to_cell
from alice.errors import ConfigError, InputError
from alice.io import atomic_path

if TYPE_CHECKING:  # matcher.py imports this module for its registry: no runtime import back
    from alice.anatomy.matcher import Volume


@dataclass
class Embeddings:
    """One volume's cached maps, channels last, float32."""

    fine: np.ndarray  # (Gf0, Gf1, Gf2, C)
    coarse: np.ndarray  # (Gc0, Gc1, Gc2, C)
    fine_stride: int
    coarse_stride: int
    shape: tuple[int, int, int]
    path: Path | None = None

    @classmethod
    def from_maps(cls, fine: np.ndarray, coarse: np.ndarray, fine_stride: int, coarse_stride: int, shape,
                  path: Path | None = None) -> "Embeddings":
        """From (C, g0, g1, g2) maps as `embed_volume` returns them."""
        return cls(np.ascontiguousarray(np.moveaxis(np.asarray(fine, np.float32), 0, -1)),
                   np.ascontiguousarray(np.moveaxis(np.asarray(coarse, np.float32), 0, -1)),
                   int(fine_stride), int(coarse_stride), tuple(int(s) for s in shape), path)  # type: ignore[arg-type]


EMBEDDING_META_KEYS = ("shape", "fine_stride", "coarse_stride")


def save_embeddings(path: str | Path, fine: np.ndarray, coarse: np.ndarray, meta: Mapping[str, Any]) -> None:
    """Write one volume's embedding cache (npz: fine, coarse, meta as JSON), atomically.

    meta must hold `shape` (the cached image's voxel shape) and the `fine_stride` /
    `coarse_stride` of the maps: the matcher converts cells to voxels with them.
    """
    missing = [k for k in EMBEDDING_META_KEYS if k not in meta]
    if missing:
        raise ValueError(f"embedding meta lacks {missing}")
    if fine.ndim != 4 or coarse.ndim != 4 or fine.shape[0] != coarse.shape[0]:
        raise ValueError(f"expected (C, gx, gy, gz) maps of one width, got {fine.shape} and {coarse.shape}")
    with atomic_path(path, suffix=".npz") as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, fine=fine, coarse=coarse, meta=np.asarray(json.dumps(dict(meta))))


def load_embeddings(path: str | Path) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """(fine, coarse, meta) of an embedding cache file; InputError naming the file otherwise."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "embeddings file not found (embed the volume first: alice.anatomy.train.embed_cases)")
    try:
        with np.load(path, allow_pickle=False) as z:
            fine, coarse, meta = z["fine"], z["coarse"], json.loads(str(z["meta"]))
    except Exception as exc:  # noqa: BLE001 - any unreadable file is bad input
        raise InputError(path, f"not a readable embeddings file ({type(exc).__name__}: {exc})") from None
    missing = [k for k in EMBEDDING_META_KEYS if k not in meta]
    if missing:
        raise InputError(path, f"embedding meta lacks {missing}")
    if fine.ndim != 4 or coarse.ndim != 4 or fine.shape[0] != coarse.shape[0]:
        raise InputError(path, f"expected (C, gx, gy, gz) maps of one width, got {fine.shape} and {coarse.shape}")
    return fine, coarse, meta


def trilinear(grid: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """Trilinear samples of grid (G0, G1, G2, ...) at continuous coords (M, 3), border-clamped."""
    coords = np.asarray(coords, dtype=np.float64).reshape(-1, 3)
    size = np.asarray(grid.shape[:3])
    c = np.clip(coords, 0.0, size - 1)
    lo = np.minimum(np.floor(c).astype(np.int64), np.maximum(size - 2, 0))
    hi = np.minimum(lo + 1, size - 1)
    w = c - lo  # weight of `hi`
    extra = (None,) * (grid.ndim - 3)
    out = 0.0
    for dx in (0, 1):
        ix, wx = (hi[:, 0], w[:, 0]) if dx else (lo[:, 0], 1 - w[:, 0])
        for dy in (0, 1):
            iy, wy = (hi[:, 1], w[:, 1]) if dy else (lo[:, 1], 1 - w[:, 1])
            for dz in (0, 1):
                iz, wz = (hi[:, 2], w[:, 2]) if dz else (lo[:, 2], 1 - w[:, 2])
                out = out + grid[ix, iy, iz] * (wx * wy * wz)[(slice(None), *extra)]
    return np.asarray(out)


def query_vectors(emb: Embeddings, point) -> tuple[np.ndarray, np.ndarray]:
    """Unit (fine, coarse) embeddings of voxel `point` of the volume `emb` belongs to."""
    p = np.asarray(point, dtype=np.float64).reshape(1, 3)
    out = []
    for grid, stride in ((emb.fine, emb.fine_stride), (emb.coarse, emb.coarse_stride)):
        v = trilinear(grid, voxel_to_cell(p, stride))[0].astype(np.float32)
        out.append(v / max(float(np.linalg.norm(v)), 1e-12))
    return out[0], out[1]


def _coarse_at_fine(sim_c: np.ndarray, fine_idx: np.ndarray, fine_stride: int, coarse_stride: int) -> np.ndarray:
    """Coarse similarity map upsampled (trilinear) at fine cells (M, 3)."""
    return trilinear(sim_c, voxel_to_cell(cell_centre(fine_idx, fine_stride), coarse_stride))


def similarity_map(key: Embeddings, qf: np.ndarray, qc: np.ndarray) -> np.ndarray:
    """Brute force: (cos_fine + cos_coarse_upsampled) / 2 on every fine cell of the key."""
    sim_c = key.coarse @ qc
    g = key.fine.shape[:3]
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in g], indexing="ij"), -1).reshape(-1, 3)
    up = _coarse_at_fine(sim_c, idx, key.fine_stride, key.coarse_stride).reshape(g)
    return (key.fine @ qf + up) / 2.0


def combined_at(key: Embeddings, qf: np.ndarray, qc: np.ndarray, idx: np.ndarray,
                sim_c: np.ndarray | None = None) -> np.ndarray:
    """(cos_fine + cos_coarse_upsampled) / 2 at fine cells idx (M, 3)."""
    sim_c = key.coarse @ qc if sim_c is None else sim_c
    idx = np.asarray(idx, dtype=np.int64).reshape(-1, 3)
    return (key.fine[idx[:, 0], idx[:, 1], idx[:, 2]] @ qf
            + _coarse_at_fine(sim_c, idx, key.fine_stride, key.coarse_stride)) / 2.0


def refine_peak(key: Embeddings, qf: np.ndarray, qc: np.ndarray, idx: np.ndarray, value: float) -> np.ndarray:
    """Sub-cell peak: per axis, the vertex of the parabola through the similarity at the best cell
    and its two neighbours (offset clipped to +-0.5 cell; none at the grid border or without a
    proper maximum). Returns continuous cell coordinates (3,)."""
    g = np.asarray(key.fine.shape[:3])
    idx = np.asarray(idx, dtype=np.int64)
    steps = np.concatenate([-np.eye(3, dtype=np.int64), np.eye(3, dtype=np.int64)])
    nb = np.clip(idx + steps, 0, g - 1)
    s = combined_at(key, qf, qc, nb)
    lo, hi = s[:3], s[3:]
    den = lo - 2.0 * value + hi
    inside = (idx > 0) & (idx < g - 1) & (den < 0)
    off = np.where(inside, 0.5 * (lo - hi) / np.where(den < 0, den, -1.0), 0.0)
    return idx + np.clip(off, -0.5, 0.5)


def best_cell(key: Embeddings, qf: np.ndarray, qc: np.ndarray, top_k: int | None = 4,
              window: int = 1) -> tuple[np.ndarray, float]:
    """Coarse-to-fine argmax of the similarity over the key's fine cells: (index (3,) int, value)."""
    sim_c = key.coarse @ qc  # (Gc0, Gc1, Gc2)
    flat = sim_c.ravel()
    if top_k is None or top_k >= flat.size:
        cand = np.arange(flat.size)
    else:
        cand = np.argpartition(-flat, int(top_k) - 1)[: int(top_k)]
    cand = np.stack(np.unravel_index(cand, sim_c.shape), -1)  # (k, 3)
    gf = np.asarray(key.fine.shape[:3])
    sf, sc = key.fine_stride, key.coarse_stride
    centre = cell_centre(cand, sc)  # (k, 3) voxels
    reach = (int(window) + 0.5) * sc
    lo = np.clip(np.ceil(voxel_to_cell(centre - reach, sf) - 1e-9), 0, gf - 1).astype(np.int64)
    hi = np.clip(np.floor(voxel_to_cell(centre + reach, sf) + 1e-9), 0, gf - 1).astype(np.int64)
    boxes = []
    for a, b in zip(lo, hi):  # k small boxes -> linear indices, their union below
        ax = [np.arange(a[d], b[d] + 1) for d in range(3)]
        boxes.append(((ax[0][:, None, None] * gf[1] + ax[1][None, :, None]) * gf[2] + ax[2][None, None, :]).ravel())
    lin = np.unique(np.concatenate(boxes))
    idx = np.stack(np.unravel_index(lin, tuple(gf)), -1)
    sim = combined_at(key, qf, qc, idx, sim_c)
    j = int(np.argmax(sim))
    return idx[j], float(sim[j])


class LearnedMatcher:
    """SAM-style matcher on cached embeddings (module doc). Name "sam" in `MATCHERS`.

    embeddings_dir: where ``<case_id>.npz`` lives for volumes whose ``embeddings`` is None;
    top_k / window: the coarse-to-fine search (``top_k=None``: brute force); refine: sub-cell
    parabolic peak refinement (`refine_peak`; off = the best cell's centre); cache_size: volumes
    kept in memory.
    """

    name = "sam"

    def __init__(self, embeddings_dir: str | Path | None = None, top_k: int | None = 4, window: int = 1,
                 refine: bool = True, cache_size: int = 64):
        if top_k is not None and int(top_k) < 1:
            raise ConfigError("matcher.top_k", f"must be >= 1 or None, got {top_k!r}")
        if int(window) < 0:
            raise ConfigError("matcher.window", f"must be >= 0, got {window!r}")
        self.embeddings_dir = Path(embeddings_dir) if embeddings_dir is not None else None
        self.top_k = None if top_k is None else int(top_k)
        self.window = int(window)
        self.refine = bool(refine)
        self.cache_size = max(1, int(cache_size))
        self._cache: OrderedDict[tuple[str, int], Embeddings] = OrderedDict()

    def _path(self, vol: "Volume") -> Path:
        if vol.embeddings is not None:
            return Path(vol.embeddings)
        if self.embeddings_dir is None:
            raise ConfigError("matcher.embeddings_dir",
                              f"volume '{vol.case_id}' has no embeddings path and no embeddings_dir was given")
        return self.embeddings_dir / f"{vol.case_id}.npz"

    def embeddings(self, vol: "Volume") -> Embeddings:
        """The cached maps of `vol` (InputError naming the file when missing, unreadable or stale)."""
        path = self._path(vol)
        if not path.is_file():
            raise InputError(path, f"embeddings of '{vol.case_id}' not found (embed the volume first)")
        key = (str(path.resolve()), path.stat().st_mtime_ns)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        fine, coarse, meta = load_embeddings(path)
        if tuple(int(s) for s in meta["shape"]) != tuple(vol.shape):
            raise InputError(path, f"embeddings are of a {list(meta['shape'])} volume, "
                                   f"'{vol.case_id}' is {list(vol.shape)} (stale cache?)")
        emb = Embeddings.from_maps(fine, coarse, meta["fine_stride"], meta["coarse_stride"], meta["shape"], path)
        self._cache[key] = emb
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return emb

    def match(self, query: "Volume", point, key: "Volume") -> tuple[np.ndarray, float]:
        q, k = self.embeddings(query), self.embeddings(key)
        if q.fine.shape[3] != k.fine.shape[3] or q.coarse.shape[3] != k.coarse.shape[3]:
            raise InputError(k.path or key.case_id, f"embedding width differs from '{query.case_id}' "
                                                    f"({k.fine.shape[3]} vs {q.fine.shape[3]}): different models?")
        qf, qc = query_vectors(q, point)
        idx, value = best_cell(k, qf, qc, self.top_k, self.window)
        cell = refine_peak(k, qf, qc, idx, value) if self.refine else idx
        voxel = np.clip(cell_centre(cell, k.fine_stride), 0.0, np.asarray(k.shape, dtype=np.float64) - 1.0)
        return voxel, min(max(value, 0.0), 1.0)
