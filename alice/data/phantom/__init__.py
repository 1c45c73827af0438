"""Synthetic CT phantoms in the on-disk layouts of FLARE22, BTCV and MosMedData.

One canonical anatomy per body region (abdomen, chest) is defined in millimetres (`abdomen.py`,
`chest.py`, built from the implicit shapes of `shapes.py` and the body frame of `body.py`). Each
case draws a subject: size, pose, a smooth displacement field and per-organ jitter (`warp.py`),
contrast phase, intensities, fat, contents and pathology (`render.py`, `pathology.py`); places a
scanner grid with a realistic spacing, slice range and storage orientation (`scanner.py`); paints
HU and labels voxel by voxel; and writes the release layout plus a ground-truth JSON with exact
landmark positions (`layouts.py`).

    from alice.data.phantom import write_dataset, DEFAULT_GEOMETRY
    summary = write_dataset("flare22", "data/FLARE22", {"labeled": 10, "unlabeled": 16, "validation": 4})
"""

from alice.data.phantom.layouts import DEFAULT_GEOMETRY, TRUTH_DIR, write_dataset

__all__ = ["DEFAULT_GEOMETRY", "TRUTH_DIR", "write_dataset"]
