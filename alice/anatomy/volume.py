"""One cached volume as the matchers and the crop builders see it (a memmap of the preprocessing
cache, its grid's spacing and affine), and what counts as body in it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# Cached images are windowed to [0, 1] with the window's low end (-125 HU for the pool) at 0.
# "Body" = voxels above this (≈ -121 HU for the pool window; the released code uses HU > -125).
# Slightly above 0 so resampling's tiny interpolation halos at the air boundary do not count.
BODY_THRESHOLD = 0.01


@dataclass
class Volume:
    """One cached volume as matchers see it.

    image: (x, y, z) array in the preprocessing cache (a memmap: never copied whole by this class);
    spacing: (3,) mm per voxel of the cached grid; affine: 4x4 cached voxel -> world (RAS+ mm);
    embeddings: optional path of this volume's cached embeddings (the learned matcher).
    """

    case_id: str
    image: np.ndarray
    spacing: np.ndarray
    affine: np.ndarray
    embeddings: Path | None = None
    meta: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.spacing = np.asarray(self.spacing, dtype=np.float64).reshape(3)
        self.affine = np.asarray(self.affine, dtype=np.float64).reshape(4, 4)
        if self.image.ndim != 3:
            raise ValueError(f"{self.case_id}: image must be (x, y, z), got shape {self.image.shape}")

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.image.shape)  # type: ignore[return-value]

    @classmethod
    def load(cls, data_dir: str | Path, case_id: str, embeddings_dir: str | Path | None = None) -> "Volume":
        """Memory-map a case of a preprocessing cache (`alice.data.preprocess.load_case`)."""
        from alice.data.preprocess import load_case

        image, _, meta = load_case(data_dir, case_id)
        cached = meta["cached"]
        emb = None
        if embeddings_dir is not None:
            emb = Path(embeddings_dir) / f"{case_id}.npz"
        return cls(case_id, image, np.asarray(cached["spacing"]), np.asarray(cached["affine"]), emb, meta)

    def voxel_to_world(self, voxel) -> np.ndarray:
        v = np.asarray(voxel, dtype=np.float64).reshape(3)
        return self.affine[:3, :3] @ v + self.affine[:3, 3]

    def world_to_voxel(self, world) -> np.ndarray:
        w = np.asarray(world, dtype=np.float64).reshape(3)
        return np.linalg.solve(self.affine[:3, :3], w - self.affine[:3, 3])
