"""The embedding-grid convention shared by `AnatomyNet`, the SAM training pairs and the learned
matcher (numpy only, so the matcher never imports torch).

A map at stride ``s`` has ``ceil(n / s)`` cells along an axis of ``n`` voxels; cell ``i`` covers
voxels ``i*s .. i*s + s - 1`` and its centre is voxel ``i*s + (s - 1) / 2``. Training defines
positives with this convention, so the network learns to put the embedding of that centre into
cell ``i`` whatever its convolutions' exact receptive-field alignment is.
"""

from __future__ import annotations

import math

import numpy as np


def cell_centre(index, stride: int) -> np.ndarray:
    """Voxel coordinate of the centre of embedding cell `index` at `stride`."""
    return np.asarray(index, dtype=np.float64) * stride + (stride - 1) / 2.0


def voxel_to_cell(voxel, stride: int) -> np.ndarray:
    """Continuous embedding-grid coordinate of a voxel coordinate (inverse of `cell_centre`)."""
    return (np.asarray(voxel, dtype=np.float64) - (stride - 1) / 2.0) / stride


def grid_shape(shape, stride: int) -> tuple[int, int, int]:
    """Embedding grid size of a volume of `shape` voxels: ceil(n / stride) per axis."""
    return tuple(int(math.ceil(int(n) / stride)) for n in shape)  # type: ignore[return-value]
