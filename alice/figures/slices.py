"""Reading NIfTI volumes in RAS+ and drawing one slice with a label overlay, in radiological
display orientation (patient's right on the image's left; axial: anterior up), in physical
proportions. Shared by the phantom and the overlay figures."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import nibabel as nib
import numpy as np
from matplotlib.colors import ListedColormap

from alice.errors import InputError


def read_nifti(path: Path, what: str = "volume") -> nib.Nifti1Image:
    """The NIfTI at `path` (a 3-D one); a missing or unreadable file is an InputError naming it."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, f"{what} not found")
    try:
        img = nib.load(str(path))
        shape = img.shape
    except Exception as exc:  # noqa: BLE001 - any read failure is a bad input file
        raise InputError(path, f"cannot read NIfTI ({type(exc).__name__}: {exc})") from None
    if len(shape) != 3:
        raise InputError(path, f"expected a 3-D {what}, got shape {shape}")
    return img


def ras_array(img: nib.Nifti1Image, path: Path) -> tuple[np.ndarray, tuple[float, float, float]]:
    """(data, voxel sizes) of `img` reoriented to RAS+ (`nibabel.as_closest_canonical`)."""
    try:
        canonical = nib.as_closest_canonical(img)
        data = np.asarray(canonical.dataobj)
    except Exception as exc:  # noqa: BLE001 - truncated data etc.
        raise InputError(path, f"cannot read NIfTI ({type(exc).__name__}: {exc})") from None
    return data, tuple(float(z) for z in canonical.header.get_zooms()[:3])


def load_ras(path: Path, what: str = "volume") -> tuple[np.ndarray, tuple[float, float, float]]:
    """A NIfTI file's data in RAS+ and its voxel sizes."""
    return ras_array(read_nifti(path, what), Path(path))


def draw_panel(ax, image, overlay, zooms, view, index, window, colors: Sequence[str], title,
               alpha: float = 0.45, letters: bool = True):
    """Draw one slice of RAS-ordered arrays in radiological display orientation; `overlay` holds
    label ids 0..len(colors) (0 transparent, id i in colors[i - 1])."""
    sx, sy, sz = zooms
    nx, ny, nz = image.shape
    if view == "axial":
        img, lab = image[:, :, index], None if overlay is None else overlay[:, :, index]
        extent = (0, nx * sx, 0, ny * sy)
    elif view == "coronal":
        img, lab = image[:, index, :], None if overlay is None else overlay[:, index, :]
        extent = (0, nx * sx, 0, nz * sz)
    else:
        img, lab = image[index, :, :], None if overlay is None else overlay[index, :, :]
        extent = (0, ny * sy, 0, nz * sz)  # anterior (high y) on the left
    ax.imshow(img.T, cmap="gray", vmin=window[0], vmax=window[1], origin="lower", extent=extent,
              interpolation="nearest")
    if lab is not None and lab.any():
        cmap = ListedColormap(["#00000000"] + list(colors))
        ax.imshow(np.ma.masked_equal(lab.T, 0), cmap=cmap, vmin=-0.5, vmax=len(colors) + 0.5,
                  origin="lower", extent=extent, alpha=alpha, interpolation="nearest")
    # every view has its first axis reversed on screen (R or A on the left)
    ax.set_xlim(extent[1], extent[0])
    ax.set_ylim(extent[2], extent[3])
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    if letters:
        marks = {"axial": ("R", "L", "A"), "coronal": ("R", "L", "S"), "sagittal": ("A", "P", "S")}[view]
        ax.text(0.02, 0.5, marks[0], transform=ax.transAxes, color="yellow", fontsize=8, va="center")
        ax.text(0.96, 0.5, marks[1], transform=ax.transAxes, color="yellow", fontsize=8, va="center")
        ax.text(0.5, 0.95, marks[2], transform=ax.transAxes, color="yellow", fontsize=8, ha="center",
                va="top")
