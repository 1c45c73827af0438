"""Smooth random fields: bowel loops, stomach contents, lung vessels, organ texture, CT noise."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

# One box (canonical mm) large enough for both anatomies, so a field can be sampled anywhere.
FIELD_LO = np.array([-240.0, -190.0, -280.0])
FIELD_HI = np.array([240.0, 190.0, 280.0])


class NoiseField:
    """Gaussian-smoothed white noise on a coarse grid (spacing mm), unit variance, sampled
    trilinearly at canonical points. Created from its own seed so that whether and when it is
    used does not disturb any other random draw of the case."""

    def __init__(self, seed: int, spacing_mm: float, smooth_cells: float = 1.0):
        self.seed = seed
        self.spacing = float(spacing_mm)
        self.smooth = smooth_cells
        self._grid: np.ndarray | None = None

    def _build(self) -> np.ndarray:
        shape = tuple(int(np.ceil((FIELD_HI[i] - FIELD_LO[i]) / self.spacing)) + 1 for i in range(3))
        rng = np.random.default_rng(self.seed)
        g = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), self.smooth, mode="wrap")
        g /= max(float(g.std()), 1e-6)
        return g

    def sample(self, p: np.ndarray) -> np.ndarray:
        if self._grid is None:
            self._grid = self._build()
        coords = (p - FIELD_LO.reshape(3, 1).astype(np.float32)) / np.float32(self.spacing)
        return ndimage.map_coordinates(self._grid, coords, order=1, mode="nearest").astype(np.float32)


class Fields:
    """The named noise fields of one case (seeds drawn up front, grids built on first use)."""

    SPEC = {
        "bowel": (10.0, 1.0),
        "content": (22.0, 1.0),
        "stool": (5.0, 0.8),
        "food": (6.0, 1.0),
        "organ": (9.0, 1.0),
        "vessel_a": (7.0, 0.9),
        "vessel_b": (7.0, 0.9),
        "ggo": (14.0, 1.0),
    }

    def __init__(self, rng: np.random.Generator):
        seeds = rng.integers(0, 2**63 - 1, size=len(self.SPEC))
        self._fields = {
            name: NoiseField(int(s), spacing, smooth) for (name, (spacing, smooth)), s in zip(self.SPEC.items(), seeds)
        }

    def __getitem__(self, name: str) -> NoiseField:
        return self._fields[name]


def vessel_filaments(fields: Fields, p: np.ndarray, width: np.ndarray | float) -> np.ndarray:
    """Strength 0..1 of curvy vessel-like filaments (where two independent fields are both ~0)."""
    a = fields["vessel_a"].sample(p)
    b = fields["vessel_b"].sample(p)
    return np.clip(1.0 - np.sqrt(a * a + b * b) / width, 0.0, 1.0)


def smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma_vox) -> np.ndarray:
    """Unit-variance smoothed noise on the voxel grid (scanner texture)."""
    g = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma_vox, mode="nearest")
    return g / max(float(g.std()), 1e-6)
