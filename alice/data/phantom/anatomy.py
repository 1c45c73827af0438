"""The vocabulary of a canonical anatomy: layers (what to paint), landmarks, structure codes.

An anatomy (abdomen or chest, see `abdomen.py` / `chest.py`) is an ordered list of `Layer`s,
painted in order (later layers win where they overlap), plus named `Landmark`s and the jitter
specification of each organ group. Shapes are defined once, in canonical millimetres (RAS+); the
per-subject transform (`warp.py`) decides where they land in the scanner.

Internal structure codes are dataset-independent; `LABEL_MAPS` turns them into each release's
label ids (FLARE22 and BTCV paint the same image; only the label mapping differs).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from alice.data.phantom.shapes import Shape
from alice.data.phantom.warp import JitterSpec

# Structures that can carry a label (code = index + 1). Lungs are internal only (GGO fractions).
STRUCTURES: tuple[str, ...] = (
    "liver",
    "kidney_r",
    "spleen",
    "pancreas",
    "aorta",
    "ivc",
    "adrenal_r",
    "adrenal_l",
    "gallbladder",
    "esophagus",
    "stomach",
    "duodenum",
    "kidney_l",
    "portal_splenic_vein",
    "lung_r",
    "lung_l",
)
CODE: dict[str, int] = {name: i + 1 for i, name in enumerate(STRUCTURES)}

FLARE22_LABELS: dict[int, str] = {
    1: "liver",
    2: "kidney_r",
    3: "spleen",
    4: "pancreas",
    5: "aorta",
    6: "ivc",
    7: "adrenal_r",
    8: "adrenal_l",
    9: "gallbladder",
    10: "esophagus",
    11: "stomach",
    12: "duodenum",
    13: "kidney_l",
}
BTCV_LABELS: dict[int, str] = {
    1: "spleen",
    2: "kidney_r",
    3: "kidney_l",
    4: "gallbladder",
    5: "esophagus",
    6: "liver",
    7: "stomach",
    8: "aorta",
    9: "ivc",
    10: "portal_splenic_vein",
    11: "pancreas",
    12: "adrenal_r",
    13: "adrenal_l",
}
def label_lut(labels: dict[int, str]) -> np.ndarray:
    """Lookup table: internal structure code -> dataset label id (0 where unlabeled)."""
    lut = np.zeros(256, dtype=np.uint8)
    for label_id, name in labels.items():
        lut[CODE[name]] = label_id
    return lut


LABEL_MAPS: dict[str, dict[int, str]] = {"flare22": FLARE22_LABELS, "btcv": BTCV_LABELS}

# A tissue is either the name of an HU value of the subject, or a function
# (subject, local_points, frame_points, sdf, current_hu) -> HU values of the painted points.
Tissue = str | Callable


@dataclass
class Layer:
    name: str
    shape: Shape  # evaluated in the group's local (jittered) canonical coordinates
    tissue: Tissue
    group: str | None = None  # organ jitter group; None = the body frame
    clip: Shape | None = None  # evaluated in frame coordinates: paint only where also inside
    label: str | None = None  # structure written into the label map (None clears it)
    within: tuple[str, ...] = ()  # paint only over voxels currently labeled as one of these


@dataclass
class Landmark:
    id: int
    name: str
    point: tuple[float, float, float]  # canonical mm, in the group's local coordinates
    group: str | None = None


@dataclass
class Anatomy:
    region: str
    layers: list[Layer]
    landmarks: list[Landmark]
    jitter: dict[str, JitterSpec]
    field_box: tuple[np.ndarray, np.ndarray]  # where the smooth displacement kernels live
    z_full: tuple[float, float]  # canonical z-range of a full scan
    half_width: float  # widest half-width of the body incl. fat (mm), to size the FOV


def landmark_list(start_id: int, items: list[tuple[str, object, str | None]]) -> list[Landmark]:
    out = []
    for i, (name, point, group) in enumerate(items):
        p = tuple(float(v) for v in np.asarray(point, dtype=np.float64).ravel())
        out.append(Landmark(start_id + i, name, p, group))
    return out
