"""Matched points on slices, like the paper's Fig. 5/6: a query landmark, and where each matcher
puts it in a key volume next to the true position."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from alice.anatomy.evaluate import _landmarks  # noqa: E402
from alice.anatomy.matcher import Volume, build_matcher  # noqa: E402
from alice.errors import InputError  # noqa: E402
from alice.io import atomic_path  # noqa: E402

STYLE = {"sam": ("red", "learned (SAM-style)"), "bbox": ("deepskyblue", "body box"),
         "random": ("0.6", "random")}


def _slice(vol: Volume, z: float) -> np.ndarray:
    k = int(np.clip(round(z), 0, vol.shape[2] - 1))
    return np.asarray(vol.image[:, :, k], dtype=np.float32).T  # rows = y, columns = x


def draw_matching_figure(points_csv: Path, data_dir: Path, truth_dir: Path, embeddings_dir: Path,
                         out_png: Path, examples: int = 4,
                         matchers: Sequence[str] = ("sam", "bbox", "random")) -> Path:
    """`examples` rows: the query's axial slice with its landmark, the key's slice through the true
    position with the true point (green) and every matcher's match (projected onto that slice)."""
    points_csv = Path(points_csv)
    if not points_csv.is_file():
        raise InputError(points_csv, "missing (run `alice anatomy evaluate` first)")
    points = pd.read_csv(points_csv)
    sam = points[points["matcher"] == "sam"]
    if sam.empty:
        raise InputError(points_csv, "holds no learned-matcher ('sam') rows")
    # spread the examples over the error distribution: best, median-ish, worst ...
    order = sam.sort_values("error_mm").reset_index(drop=True)
    picks = order.iloc[np.unique(np.linspace(0, len(order) - 1, examples).round().astype(int))]
    live = {name: (build_matcher(name, seed=0) if name == "random" else
                   build_matcher(name, embeddings_dir=embeddings_dir) if name == "sam" else
                   build_matcher(name)) for name in matchers}
    fig, axes = plt.subplots(len(picks), 2, figsize=(7.0, 3.3 * len(picks)), squeeze=False)
    for row, (_, pick) in zip(axes, picks.iterrows()):
        q = Volume.load(data_dir, pick["query"])
        k = Volume.load(data_dir, pick["key"])
        pq = q.world_to_voxel(_landmarks(truth_dir, pick["query"])[pick["landmark"]])
        pk = k.world_to_voxel(_landmarks(truth_dir, pick["key"])[pick["landmark"]])
        row[0].imshow(_slice(q, pq[2]), cmap="gray", origin="lower")
        row[0].scatter([pq[0]], [pq[1]], s=60, facecolors="none", edgecolors="yellow", lw=2)
        row[0].set_title(f"query {pick['query']}: {pick['landmark']}", fontsize=8)
        row[1].imshow(_slice(k, pk[2]), cmap="gray", origin="lower")
        row[1].scatter([pk[0]], [pk[1]], s=70, marker="+", color="lime", lw=2, label="truth")
        for name, matcher in live.items():
            m, _ = matcher.match(q, pq, k)
            err = float(np.linalg.norm(k.voxel_to_world(m) - k.voxel_to_world(pk)))
            color, label = STYLE.get(name, ("white", name))
            # the match is projected onto the true point's slice: say how far off-slice it is
            dz = abs(float(m[2]) - float(pk[2])) * float(k.spacing[2])
            where = f", {dz:.0f} mm off-slice" if dz >= float(k.spacing[2]) else ""
            row[1].scatter([m[0]], [m[1]], s=40, color=color, lw=1.5, marker="x",
                           label=f"{label}: {err:.0f} mm{where}")
        row[1].set_title(f"key {pick['key']} (slice of the true point)", fontsize=8)
        row[1].legend(fontsize=6, loc="lower right", framealpha=0.6)
        for ax in row:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle("Anatomical point matching on phantom landmarks (errors are 3-D, in mm)", fontsize=9)
    fig.tight_layout()
    with atomic_path(Path(out_png), suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return Path(out_png)
