"""Scanner geometry: field of view, voxel spacing, slice range, orientation code and affine.

Volumes are rendered on a grid ordered like RAS+ (x, y, z increasing) and then stored in the
case's orientation: the orientation code names, for each array axis, the world direction that
axis points to (nibabel's `aff2axcodes` convention): "LPS" = i towards the patient's left,
j towards posterior, k towards superior (what DICOM converters commonly write), "PLS" swaps the
in-plane axes (a transposed acquisition matrix), "LPI" stores the slices head to feet.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# (code, probability): realistic storage orientations, including one with permuted axes.
ORIENTATIONS: tuple[tuple[str, float], ...] = (("LPS", 0.3), ("LAS", 0.25), ("RAS", 0.2), ("LPI", 0.1), ("PLS", 0.15))

_AXIS = {"R": (0, 1), "L": (0, -1), "A": (1, 1), "P": (1, -1), "S": (2, 1), "I": (2, -1)}


@dataclass
class ScanGrid:
    orientation: str
    shape_ras: tuple[int, int, int]
    spacing_ras: tuple[float, float, float]
    affine: np.ndarray  # of the stored (array-order) volume, float32-exact
    xs: np.ndarray  # world coordinates of the RAS-ordered voxel centres, per axis
    ys: np.ndarray
    zs: np.ndarray

    @property
    def world_axes(self) -> list[tuple[int, int]]:
        return [_AXIS[c] for c in self.orientation]

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.shape_ras[w] for w, _ in self.world_axes)

    @property
    def spacing(self) -> tuple[float, float, float]:
        return tuple(self.spacing_ras[w] for w, _ in self.world_axes)

    def to_array_order(self, vol: np.ndarray) -> np.ndarray:
        """A RAS-ordered volume -> the stored array order of this orientation."""
        axes = [w for w, _ in self.world_axes]
        out = np.transpose(vol, axes)
        for a, (_, sign) in enumerate(self.world_axes):
            if sign < 0:
                out = np.flip(out, axis=a)
        return np.ascontiguousarray(out)

    def world_to_voxel(self, world: np.ndarray) -> np.ndarray:
        """World points (3, N) -> voxel indices (3, N) in the stored array order."""
        inv = np.linalg.inv(self.affine)
        return inv[:3, :3] @ world + inv[:3, 3:4]


def make_grid(
    orientation: str,
    spacing_ras: tuple[float, float, float],
    shape_ras: tuple[int, int, int],
    lo_ras: tuple[float, float, float],
) -> ScanGrid:
    """A grid whose RAS-ordered voxel corners start at `lo_ras` (world mm)."""
    if sorted(_AXIS[c][0] for c in orientation) != [0, 1, 2]:
        raise ValueError(f"bad orientation code {orientation!r}")
    affine = np.zeros((4, 4))
    affine[3, 3] = 1.0
    for a, c in enumerate(orientation):
        w, sign = _AXIS[c]
        affine[w, a] = sign * spacing_ras[w]
        n = shape_ras[w]
        affine[w, 3] = lo_ras[w] + (0.5 if sign > 0 else n - 0.5) * spacing_ras[w]
    affine = affine.astype(np.float32).astype(np.float64)  # what the header can store exactly
    coords = []
    for w in range(3):
        a = next(i for i, c in enumerate(orientation) if _AXIS[c][0] == w)
        step, origin, n = affine[w, a], affine[w, 3], shape_ras[w]
        idx = np.arange(n, dtype=np.float64)
        # RAS index r sits at array index r (step > 0) or n - 1 - r (step < 0)
        coords.append(origin + step * (idx if step > 0 else (n - 1 - idx)))
    spacing = tuple(float(abs(affine[w, next(i for i, c in enumerate(orientation) if _AXIS[c][0] == w)])) for w in range(3))
    return ScanGrid(orientation, tuple(int(v) for v in shape_ras), spacing, affine, *coords)
