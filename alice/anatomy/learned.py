"""`LearnedMatcher` ("sam"): SAM-style matching on cached anatomical embeddings (Yan et al., the
paper's ref. [49]; docs/facts.md "SAM"; the maps come from `alice.anatomy.train.embed_cases`).

For a query point p of volume A, SAM's similarity of a key voxel is
``(cos_fine + cos_coarse_upsampled) / 2`` with the query's fine and coarse embeddings at p; the
match is its argmax, the score its maximum. Here:

- query embeddings at p (mapped onto the query's embedded grid, below): trilinear interpolation
  of A's maps at p's continuous cell coordinate, re-normalised (border-clamped outside the grid);
- "upsampled" coarse similarity at a fine cell: trilinear interpolation of the coarse similarity
  map at that cell's centre (linear, so equal to upsampling the coarse maps first);
- coarse-to-fine search: the `top_k` best coarse cells of the whole key, then every fine cell whose
  centre lies within ``(window + 0.5) * coarse_stride`` voxels of one of them, vectorised; with
  ``top_k=None`` every coarse cell is a candidate, which is the brute-force argmax over the key;
- output: the best fine cell's centre ``i * s + (s - 1) / 2`` in the key's embedded voxel grid
  (`alice.anatomy.grid`), moved by a sub-cell parabolic peak fit per axis (`refine`, at most half a
  cell; ~0.6 mm lower median error on the phantom pool), clipped into the grid, then mapped onto
  the key volume's grid (below) and clipped into it; score = the best similarity clipped into [0, 1]
  (the matcher protocol's range; SAM's 0.7 acceptance threshold reads the raw value the same way).

Two grids: the embeddings are computed on the anatomy stage's own cache (`anatomy.data`: SAM's
~2 mm resampling of the same source volumes), while the points the matcher receives and returns are
voxels of the volume it is handed (the pool cache, where Alice cuts its crops). Both caches are RAS
resamplings of one source scan into one world frame, so a point moves between them through the
cached affines: ``inv(A_embedding) @ A_volume``. Embeddings without an ``affine`` in their meta are
on the volume's own grid (identity mapping; their ``shape`` must equal the volume's).

It never runs the network: embeddings are read from ``Volume.embeddings`` (or, when a Volume has
none, ``embeddings_dir/<case_id>.npz``, so the matcher also works with volumes loaded without an
embeddings directory). Storage plan (docs/pretraining.md "Anatomical matching"): the coarse map is read whole
into a small LRU cache (float32, channels last: ~6 MB a volume at paper scale); the fine map stays
on disk, memory-mapped (float16, channels last), and only the fine cells around the coarse
candidates are ever read (a few MB a match), so a process's memory does not grow with the fine
maps and the operating system's page cache shares them between processes.

The cache file format lives here too (`save_embeddings` / `load_embeddings` / `open_embeddings`,
the first two re-exported by `alice.anatomy.train`) so that matching needs numpy only, never torch:
an uncompressed npz with ``fine`` and ``coarse`` maps stored channels last (g0, g1, g2, C), float16
by default, and ``meta``, a JSON string with at least the embedded image ``shape``, the
``fine_stride`` / ``coarse_stride`` and ``layout`` = "channels_last". `embedding_bytes` is the
size of one volume's file.
"""

from __future__ import annotations

import json
import struct
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from alice.anatomy.grid import cell_centre, grid_shape, voxel_to_cell
from alice.errors import ConfigError, InputError
from alice.io import atomic_path

if TYPE_CHECKING:
    from alice.anatomy.volume import Volume


@dataclass
class Embeddings:
    """One volume's maps, channels last: coarse float32 in memory, fine float32 in memory or a
    read-only float16 memory map of the cache file (`open_embeddings`).

    shape: the embedded image's voxel grid; affine: that grid's voxel -> world (RAS+ mm) matrix,
    None when the maps are on the grid of the volume they are matched for; source: the source image
    the embedded cache was made from (`alice.data.preprocess` identity), None when unknown.
    """

    fine: np.ndarray  # (Gf0, Gf1, Gf2, C)
    coarse: np.ndarray  # (Gc0, Gc1, Gc2, C)
    fine_stride: int
    coarse_stride: int
    shape: tuple[int, int, int]
    path: Path | None = None
    affine: np.ndarray | None = None
    source: dict[str, Any] | None = None

    def from_volume(self, vol: "Volume", point) -> np.ndarray:
        """A voxel of `vol`'s grid as a voxel of the embedded grid (through the world frame)."""
        p = np.asarray(point, dtype=np.float64).reshape(3)
        if self.affine is None:
            return p
        return np.linalg.solve(self.affine[:3, :3], vol.voxel_to_world(p) - self.affine[:3, 3])

    def to_volume(self, vol: "Volume", voxel) -> np.ndarray:
        """A voxel of the embedded grid as a voxel of `vol`'s grid (inverse of `from_volume`)."""
        v = np.asarray(voxel, dtype=np.float64).reshape(3)
        if self.affine is None:
            return v
        return vol.world_to_voxel(self.affine[:3, :3] @ v + self.affine[:3, 3])

    @classmethod
    def from_maps(cls, fine: np.ndarray, coarse: np.ndarray, fine_stride: int, coarse_stride: int, shape,
                  path: Path | None = None) -> "Embeddings":
        """From (C, g0, g1, g2) maps as `embed_volume` returns them."""
        return cls(np.ascontiguousarray(np.moveaxis(np.asarray(fine, np.float32), 0, -1)),
                   np.ascontiguousarray(np.moveaxis(np.asarray(coarse, np.float32), 0, -1)),
                   int(fine_stride), int(coarse_stride), tuple(int(s) for s in shape), path)  # type: ignore[arg-type]


EMBEDDING_META_KEYS = ("shape", "fine_stride", "coarse_stride")
LAYOUT = "channels_last"


def embedding_bytes(shape, fine_stride: int, coarse_stride: int, embed_dim: int,
                    dtype: Any = np.float16) -> dict[str, int]:
    """Bytes of one volume's embedding maps (the npz adds < 1 kB of headers and meta): fine, coarse,
    and their total, for an embedded image of `shape` voxels (grid convention `alice.anatomy.grid`)."""
    item = np.dtype(dtype).itemsize * int(embed_dim)
    fine = int(np.prod(grid_shape(shape, fine_stride))) * item
    coarse = int(np.prod(grid_shape(shape, coarse_stride))) * item
    return {"fine": fine, "coarse": coarse, "total": fine + coarse}


def save_embeddings(path: str | Path, fine: np.ndarray, coarse: np.ndarray, meta: Mapping[str, Any]) -> None:
    """Write one volume's embedding cache (npz: fine, coarse, meta as JSON), atomically.

    fine / coarse: (C, gx, gy, gz) maps as `embed_volume` returns them; they are stored channels
    last (one cell's C values contiguous, what a memory-mapped read of a few cells wants).
    meta must hold `shape` (the embedded image's voxel shape) and the `fine_stride` /
    `coarse_stride` of the maps: the matcher converts cells to voxels with them; optional
    `affine` (4x4, the embedded grid's voxel -> world) and `source` (the source image's identity)
    let the matcher use the maps for a volume cached on another grid.
    """
    missing = [k for k in EMBEDDING_META_KEYS if k not in meta]
    if missing:
        raise ValueError(f"embedding meta lacks {missing}")
    if fine.ndim != 4 or coarse.ndim != 4 or fine.shape[0] != coarse.shape[0]:
        raise ValueError(f"expected (C, gx, gy, gz) maps of one width, got {fine.shape} and {coarse.shape}")
    meta = {**dict(meta), "layout": LAYOUT}
    with atomic_path(path, suffix=".npz") as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, fine=np.ascontiguousarray(np.moveaxis(fine, 0, -1)),
                     coarse=np.ascontiguousarray(np.moveaxis(coarse, 0, -1)),
                     meta=np.asarray(json.dumps(meta)))


def _check_maps(path: Path, fine: np.ndarray, coarse: np.ndarray, meta: Mapping[str, Any]) -> None:
    missing = [k for k in EMBEDDING_META_KEYS if k not in meta]
    if missing:
        raise InputError(path, f"embedding meta lacks {missing}")
    if meta.get("layout") != LAYOUT:
        raise InputError(path, f"embedding layout {meta.get('layout')!r} is not {LAYOUT!r} "
                               "(written by an older version: embed the volume again)")
    if fine.ndim != 4 or coarse.ndim != 4 or fine.shape[3] != coarse.shape[3]:
        raise InputError(path, f"expected (gx, gy, gz, C) maps of one width, got {fine.shape} and {coarse.shape}")
    if "affine" in meta and np.asarray(meta["affine"]).shape != (4, 4):
        raise InputError(path, f"embedding meta 'affine' must be 4x4, got {meta['affine']!r}")


def _read(path: Path, mmap_fine: bool) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    if not path.is_file():
        raise InputError(path, "embeddings file not found (embed the volume first: alice.anatomy.train.embed_cases)")
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            coarse = z["coarse"]
            fine = _stored_member(path, "fine") if mmap_fine else None
            if fine is None:
                fine = z["fine"]
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - any unreadable file is bad input
        raise InputError(path, f"not a readable embeddings file ({type(exc).__name__}: {exc})") from None
    _check_maps(path, fine, coarse, meta)
    return fine, coarse, meta


def _stored_member(path: Path, name: str) -> np.ndarray | None:
    """A read-only memory map of the uncompressed array `name` of an npz (None when compressed)."""
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(f"{name}.npy")
        if info.compress_type != zipfile.ZIP_STORED:
            return None
        offset = info.header_offset
    with open(path, "rb") as fh:
        fh.seek(offset)
        local = fh.read(30)
        if local[:4] != b"PK\x03\x04":
            raise InputError(path, f"member {name}.npy has no local zip header")
        name_len, extra_len = struct.unpack("<HH", local[26:30])
        fh.seek(offset + 30 + name_len + extra_len)
        version = np.lib.format.read_magic(fh)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(fh)
        start = fh.tell()
    return np.memmap(path, dtype=dtype, mode="r", offset=start, shape=shape, order="F" if fortran else "C")


def load_embeddings(path: str | Path) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """(fine, coarse, meta) of an embedding cache file, maps as (C, gx, gy, gz) views of the
    stored arrays; InputError naming the file otherwise."""
    fine, coarse, meta = _read(Path(path), mmap_fine=False)
    return np.moveaxis(fine, -1, 0), np.moveaxis(coarse, -1, 0), meta


def open_embeddings(path: str | Path) -> Embeddings:
    """The matcher's view of a cache file: coarse read into memory as float32, fine memory-mapped
    as stored (module doc, storage plan); InputError naming the file when unreadable."""
    path = Path(path)
    fine, coarse, meta = _read(path, mmap_fine=True)
    affine = np.asarray(meta["affine"], dtype=np.float64) if "affine" in meta else None
    return Embeddings(fine, np.ascontiguousarray(coarse, dtype=np.float32), int(meta["fine_stride"]),
                      int(meta["coarse_stride"]), tuple(int(s) for s in meta["shape"]),  # type: ignore[arg-type]
                      path, affine, meta.get("source"))


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
    whose coarse maps (and fine-map memory maps) are kept open.
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
            emb = self._cache[key]
        else:
            emb = open_embeddings(path)
            self._cache[key] = emb
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        self._check(emb, vol, path)
        return emb

    @staticmethod
    def _check(emb: Embeddings, vol: "Volume", path: Path) -> None:
        """Stale-cache guard: maps on the volume's own grid must have its shape; maps of another
        grid must come from the same source image as the volume (when both record it)."""
        if emb.affine is None:
            if emb.shape != tuple(vol.shape):
                raise InputError(path, f"embeddings are of a {list(emb.shape)} volume, "
                                       f"'{vol.case_id}' is {list(vol.shape)} (stale cache?)")
            return
        source = ((vol.meta or {}).get("identity") or {}).get("source", {}).get("image")
        if emb.source is not None and source is not None and emb.source != source:
            raise InputError(path, f"embeddings were computed from {emb.source.get('path')!r} "
                                   f"({emb.source.get('size')} bytes), '{vol.case_id}' is cached from "
                                   f"{source.get('path')!r} ({source.get('size')} bytes) (stale cache?)")

    def match(self, query: "Volume", point, key: "Volume") -> tuple[np.ndarray, float]:
        q, k = self.embeddings(query), self.embeddings(key)
        if q.fine.shape[3] != k.fine.shape[3] or q.coarse.shape[3] != k.coarse.shape[3]:
            raise InputError(k.path or key.case_id, f"embedding width differs from '{query.case_id}' "
                                                    f"({k.fine.shape[3]} vs {q.fine.shape[3]}): different models?")
        qf, qc = query_vectors(q, q.from_volume(query, point))
        idx, value = best_cell(k, qf, qc, self.top_k, self.window)
        cell = refine_peak(k, qf, qc, idx, value) if self.refine else idx
        voxel = np.clip(cell_centre(cell, k.fine_stride), 0.0, np.asarray(k.shape, dtype=np.float64) - 1.0)
        voxel = np.clip(k.to_volume(key, voxel), 0.0, np.asarray(key.shape, dtype=np.float64) - 1.0)
        return voxel, min(max(value, 0.0), 1.0)
