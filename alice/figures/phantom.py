"""Figure of the phantom datasets: one abdomen (a FLARE22 labeled case) and one chest (a MosMed
CT-2/CT-3 study), each as axial, coronal and sagittal slices in physical proportions.

Volumes are reoriented to RAS+ (`nibabel.as_closest_canonical`) and shown the way radiologists
look at CT: axial and coronal with the patient's right on the left of the image, axial with
anterior up, sagittal with anterior on the left. Abdomen: soft-tissue window with the organ
labels overlaid; chest: lung window with the GGO mask overlaid when the study has one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from alice.errors import InputError
from alice.figures.organs import palette
from alice.figures.slices import draw_panel, load_ras
from alice.io import atomic_path

FLARE22_ORGANS = palette("flare22")  # id -> (name, colour), shared with the other figures
GGO_COLOR = "#ffb000"
ABDOMEN_WINDOW = (-160.0, 240.0)  # W400 / L40
LUNG_WINDOW = (-1350.0, 150.0)  # W1500 / L-600


def _first(paths: list[Path]) -> Path | None:
    return sorted(paths)[0] if paths else None


def _find_abdomen(flare_root: Path) -> tuple[Path, Path]:
    images = flare_root / "Training" / "FLARE22_LabeledCase50" / "images"
    image = _first([p for p in images.glob("FLARE22_Tr_*_0000.nii.gz")]) if images.is_dir() else None
    if image is None:
        raise InputError(images, "no labeled FLARE22 case (FLARE22_Tr_XXXX_0000.nii.gz) found")
    label = images.parent / "labels" / (image.name.replace("_0000.nii.gz", ".nii.gz"))
    if not label.is_file():
        raise InputError(label, "label of the first labeled FLARE22 case is missing")
    return image, label


def _find_chest(mosmed_root: Path) -> tuple[Path, Path | None]:
    studies = mosmed_root / "studies"
    for category in ("CT-2", "CT-3", "CT-4", "CT-1", "CT-0"):  # CT-2/CT-3 preferred
        study = _first(list((studies / category).glob("study_*.nii.gz"))) if (studies / category).is_dir() else None
        if study is not None:
            mask = mosmed_root / "masks" / study.name.replace(".nii.gz", "_mask.nii.gz")
            return study, (mask if mask.is_file() else None)
    raise InputError(studies, "no MosMed study (studies/CT-*/study_XXXX.nii.gz) found")


def _best_slices(mask: np.ndarray) -> tuple[int, int, int]:
    """Per axis, the slice showing the most distinct structures (then the most voxels)."""
    out = []
    for axis in range(3):
        moved = np.moveaxis(mask, axis, 0).reshape(mask.shape[axis], -1)
        if not moved.any():
            out.append(mask.shape[axis] // 2)
            continue
        distinct = np.array([len(np.unique(row[row > 0])) for row in moved])
        area = (moved > 0).sum(axis=1)
        out.append(int(np.lexsort((area, distinct))[-1]))
    return tuple(out)


def _lung_slices(image: np.ndarray) -> tuple[int, int, int]:
    """Slices through the centre of the lungs (air inside the body: not touching the border)."""
    from scipy import ndimage

    air = image < -400
    labels, n = ndimage.label(air)
    if n == 0:
        return tuple(s // 2 for s in image.shape)
    border = np.unique(np.concatenate([labels[0].ravel(), labels[-1].ravel(), labels[:, 0].ravel(), labels[:, -1].ravel()]))
    sizes = ndimage.sum_labels(np.ones_like(labels), labels, index=np.arange(1, n + 1))
    sizes[np.isin(np.arange(1, n + 1), border)] = 0
    if sizes.max() <= 0:
        return tuple(s // 2 for s in image.shape)
    keep = np.argsort(sizes)[::-1][:2] + 1
    lungs = np.isin(labels, keep[sizes[keep - 1] > 0.1 * sizes.max()])
    c = [int(round(v)) for v in ndimage.center_of_mass(lungs)]
    # sagittal through the right lung's centre
    right = lungs & (np.arange(image.shape[0])[:, None, None] >= c[0])
    cs = ndimage.center_of_mass(right) if right.any() else c
    return int(round(cs[0])), c[1], c[2]


def draw_phantom_figure(flare_root, mosmed_root, out_png) -> Path:
    """Draw the 2x3 phantom figure (abdomen row, chest row) to `out_png`, atomically."""
    flare_root, mosmed_root, out_png = Path(flare_root), Path(mosmed_root), Path(out_png)
    ab_image_path, ab_label_path = _find_abdomen(flare_root)
    ch_image_path, ch_mask_path = _find_chest(mosmed_root)
    ab_image, ab_zooms = load_ras(ab_image_path)
    ab_label, _ = load_ras(ab_label_path)
    if ab_label.shape != ab_image.shape:
        raise InputError(ab_label_path, f"label shape {ab_label.shape} differs from image shape {ab_image.shape}")
    ch_image, ch_zooms = load_ras(ch_image_path)
    ch_mask = None
    if ch_mask_path is not None:
        ch_mask, _ = load_ras(ch_mask_path)
        if ch_mask.shape != ch_image.shape:
            raise InputError(ch_mask_path, f"mask shape {ch_mask.shape} differs from image shape {ch_image.shape}")
        ch_mask = (ch_mask > 0).astype(np.uint8)

    organ_colors = [FLARE22_ORGANS[i][1] for i in range(1, 14)]
    ab_label = np.where((ab_label >= 1) & (ab_label <= 13), ab_label, 0).astype(np.uint8)
    ab_sl = _best_slices(ab_label)
    ch_sl = _lung_slices(ch_image)

    fig = Figure(figsize=(14, 9.8), dpi=110)
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 3, gridspec_kw={"height_ratios": [1, 1]})
    ab_id = ab_image_path.name.replace("_0000.nii.gz", "")
    ch_id = ch_image_path.name.replace(".nii.gz", "")
    ch_cat = ch_image_path.parent.name
    for col, view in enumerate(("axial", "coronal", "sagittal")):
        idx = {"axial": ab_sl[2], "coronal": ab_sl[1], "sagittal": ab_sl[0]}[view]
        draw_panel(axes[0, col], ab_image, ab_label, ab_zooms, view, idx, ABDOMEN_WINDOW, organ_colors,
               f"FLARE22 {ab_id} - {view} (slice {idx})")
        idx = {"axial": ch_sl[2], "coronal": ch_sl[1], "sagittal": ch_sl[0]}[view]
        draw_panel(axes[1, col], ch_image, ch_mask, ch_zooms, view, idx, LUNG_WINDOW, [GGO_COLOR],
               f"MosMed {ch_cat} {ch_id} - {view} (slice {idx})")
    handles = [Patch(color=c, label=f"{i} {n}") for i, (n, c) in FLARE22_ORGANS.items()]
    fig.legend(handles=handles, loc="upper center", ncol=7, fontsize=8, frameon=False, bbox_to_anchor=(0.5, 0.995))
    chest_note = "GGO mask overlaid" if ch_mask is not None else "no GGO mask for this study (GGO visible as hazy lung)"
    fig.text(0.5, 0.01, f"Abdomen: W400/L40 with FLARE22 labels.  Chest: W1500/L-600, {chest_note}.  "
             "Radiological orientation (patient's right on image left); physical aspect ratios.", ha="center", fontsize=8)
    fig.subplots_adjust(left=0.02, right=0.98, top=0.91, bottom=0.04, wspace=0.05, hspace=0.15)
    with atomic_path(out_png, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    return out_png
