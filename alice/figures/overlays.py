"""Qualitative segmentation overlays, like the paper's Fig. 4 (FLARE 2022 offline test set) and
Fig. 7 (BTCV offline test set, supplementary): one axial slice per test case, the image, its
ground truth and each method's prediction, in one colour per organ.

    draw_overlays([("Rand. init.", ".../rand_init/unetr/fold0"), ("Alice", ".../alice/unetr/fold0")],
                  data_dir="results/data/flare22", out_png="results/figures/overlays_flare22_unetr.png")

Each run is a fine-tuned fold folder scored by `alice evaluate`: its `metrics.json` names the test
cases (and their DSC, shown on each panel), and `predictions/<case>.nii.gz` holds each case's label
map on the case's original label grid (the source label file's shape and affine), so prediction
and ground truth are compared voxel for voxel, without the preprocessing cache's resampling. The
image and the ground truth are the source files that the cache's `<case>.json` records.

Slice: the axial slice (in RAS+) with the most ground-truth foreground voxels, the lowest such
slice on ties — a choice that depends on the ground truth alone, so every method is shown on the
same slice and the figure is the same on every run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import nibabel as nib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from alice.errors import InputError
from alice.figures.organs import palette
from alice.figures.slices import draw_panel, ras_array, read_nifti
from alice.io import atomic_path, read_json_object

WINDOW = (-160.0, 240.0)  # abdominal soft-tissue window, W400 / L40 (HU)
PREDICTIONS = "predictions"


def best_slice(label: np.ndarray) -> int:
    """The axial (last-axis) index with the most foreground voxels; the lowest on ties; the middle
    slice when the label is empty."""
    counts = (np.asarray(label) > 0).reshape(-1, label.shape[-1]).sum(axis=0)
    if not counts.any():
        return label.shape[-1] // 2
    return int(np.argmax(counts))


def _read_metrics(model_dir: Path) -> dict:
    path = model_dir / "metrics.json"
    metrics = read_json_object(path, "missing (run `alice evaluate` on this fold first)")
    if not isinstance(metrics.get("cases"), dict) or not metrics["cases"]:
        raise InputError(path, "not an evaluation of segmentation cases (no 'cases')")
    if "dataset" not in metrics:
        raise InputError(path, "lacks 'dataset'")
    return metrics


def _case_sources(data_dir: Path, case_id: str) -> tuple[Path, Path]:
    """The source image and label files of a cached case (paths as `alice prepare` recorded them)."""
    meta_path = data_dir / f"{case_id}.json"
    if not meta_path.is_file():
        raise InputError(meta_path, f"case '{case_id}' is not in the preprocessing cache")
    source = json.loads(meta_path.read_text()).get("source") or {}
    if not source.get("image") or not source.get("label"):
        raise InputError(meta_path, f"case '{case_id}' records no source image and label")
    return Path(source["image"]), Path(source["label"])


def _check_grid(img, ref, path: Path, ref_path: Path, exact: bool = True) -> None:
    """`img` must lie on `ref`'s voxel grid: the same shape and affine (a prediction is written
    with its label's affine), or, with `exact=False` (an image beside its label, which `alice
    prepare` accepted within its affine tolerance), the same shape and axis orientation."""
    if tuple(img.shape) != tuple(ref.shape):
        raise InputError(path, f"shape {tuple(img.shape)} differs from {ref_path}'s {tuple(ref.shape)}")
    if exact and not np.allclose(img.affine, ref.affine, atol=1e-3):
        raise InputError(path, f"affine differs from {ref_path}'s (not on the original label grid)")
    if nib.aff2axcodes(img.affine) != nib.aff2axcodes(ref.affine):
        raise InputError(path, f"orientation {''.join(nib.aff2axcodes(img.affine))} differs from "
                         f"{ref_path}'s {''.join(nib.aff2axcodes(ref.affine))}")


def _dsc_text(metrics: dict, case_id: str) -> str:
    dsc = ((metrics.get("case_mean") or {}).get(case_id) or {}).get("dsc")
    return "DSC n/a" if dsc is None else f"DSC {100 * float(dsc):.1f}"


@dataclass
class OverlayCase:
    """One row of the figure: a test case's arrays in RAS+ and the slice to show."""

    case_id: str
    image: np.ndarray
    truth: np.ndarray
    predictions: list[np.ndarray]  # one per run, in the runs' order
    zooms: tuple[float, float, float]
    slice: int


@dataclass
class OverlayData:
    dataset: str
    runs: list[tuple[str, Path, dict]]  # (label, fold folder, its metrics.json)
    cases: list[str]  # every test case the runs scored
    rows: list[OverlayCase]  # the ones drawn


def load_overlays(runs: Sequence[tuple[str, str | Path]], data_dir: str | Path,
                  max_cases: int = 4) -> OverlayData:
    """Read every run's metrics.json and, for the first `max_cases` test cases by id, the source
    image, the ground truth and each run's prediction; a missing or inconsistent file is an
    InputError naming it (nothing is drawn before everything has been read)."""
    if not runs:
        raise InputError("--run", "no runs given to draw")
    if max_cases < 1:
        raise InputError("--max-cases", f"must be ≥ 1, got {max_cases}")
    data_dir = Path(data_dir)
    loaded = [(label, Path(d), _read_metrics(Path(d))) for label, d in runs]
    first_label, first_dir, first = loaded[0]
    dataset, cases = first["dataset"], sorted(first["cases"])
    for label, d, metrics in loaded[1:]:
        if metrics["dataset"] != dataset:
            raise InputError(d / "metrics.json", f"dataset '{metrics['dataset']}' differs from "
                             f"{first_dir / 'metrics.json'}'s '{dataset}'")
        if sorted(metrics["cases"]) != cases:
            raise InputError(d / "metrics.json", f"scores cases {sorted(metrics['cases'])}, "
                             f"{first_dir / 'metrics.json'} scores {cases}: not the same test set")
    try:
        organs = palette(dataset)
    except KeyError as exc:
        raise InputError(first_dir / "metrics.json", str(exc).strip("'\"")) from None
    rows = []
    for case_id in cases[:max_cases]:
        image_path, label_path = _case_sources(data_dir, case_id)
        label_img = read_nifti(label_path, "ground-truth label")
        image_img = read_nifti(image_path, "image")
        _check_grid(image_img, label_img, image_path, label_path, exact=False)
        pred_paths, preds = [], []
        for label, d, _ in loaded:
            path = d / PREDICTIONS / f"{case_id}.nii.gz"
            if not path.is_file():
                raise InputError(path, f"prediction of case '{case_id}' by {label} is missing "
                                 "(`alice evaluate` writes it)")
            pred_img = read_nifti(path, "prediction")
            _check_grid(pred_img, label_img, path, label_path)
            pred_paths.append(path)
            preds.append(np.rint(ras_array(pred_img, path)[0]).astype(np.int16))
        gt, zooms = ras_array(label_img, label_path)
        gt = np.rint(gt).astype(np.int16)
        image = ras_array(image_img, image_path)[0].astype(np.float32)
        for arr, path in [(gt, label_path), *zip(preds, pred_paths)]:
            bad = sorted(set(np.unique(arr).tolist()) - {0, *organs})
            if bad:
                raise InputError(path, f"label ids {bad} are not {dataset} organs")
        rows.append(OverlayCase(case_id, image, gt, preds, zooms, best_slice(gt)))
    return OverlayData(dataset, loaded, cases, rows)


def draw_overlays(runs: Sequence[tuple[str, str | Path]], data_dir: str | Path, out_png: str | Path,
                  *, max_cases: int = 4, title: str | None = None) -> Path:
    """Draw one row per test case (the first `max_cases` case ids, sorted) and one column each for
    the image, the ground truth and every run (label, fine-tuned fold folder); write `out_png`
    atomically. Every run must have scored the same cases of the same dataset."""
    out_png = Path(out_png)
    data = load_overlays(runs, data_dir, max_cases)
    organs = palette(data.dataset)
    colors = [organs[i][1] for i in range(1, max(organs) + 1)]
    loaded, rows, cases, dataset = data.runs, data.rows, data.cases, data.dataset

    ncols = 2 + len(loaded)
    # panel size follows the slice's physical aspect ratio
    z0, shape0 = rows[0].zooms, rows[0].image.shape
    aspect = (shape0[1] * z0[1]) / (shape0[0] * z0[0])
    width = 2.3
    fig = Figure(figsize=(width * ncols, width * aspect * len(rows) + 1.3), dpi=110)
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(rows), ncols, squeeze=False)
    for r, row in enumerate(rows):
        case_id, image, zooms, k = row.case_id, row.image, row.zooms, row.slice
        heads = ["image", "ground truth"] + [label for label, _, _ in loaded]
        overlays = [None, row.truth] + row.predictions
        for c, (head, overlay) in enumerate(zip(heads, overlays)):
            ax = axes[r][c]
            draw_panel(ax, image, overlay, zooms, "axial", k, WINDOW, colors,
                       head if r == 0 else "", alpha=0.55, letters=(c == 0))
            if c >= 2:
                ax.text(0.03, 0.03, _dsc_text(loaded[c - 2][2], case_id), transform=ax.transAxes,
                        color="white", fontsize=7, va="bottom",
                        bbox={"facecolor": "black", "alpha": 0.5, "pad": 1.5, "lw": 0})
        axes[r][0].set_ylabel(f"{case_id}\nRAS slice {k}", fontsize=8)
    handles = [Patch(color=color, label=name) for name, color in organs.values()]
    fig.legend(handles=handles, loc="lower center", ncol=min(7, len(handles)), fontsize=7,
               frameon=False)
    more = f" (first {len(rows)} of {len(cases)} test cases)" if len(rows) < len(cases) else ""
    fig.suptitle((title or f"{dataset} test cases") + more +
                 "; axial slice with the most ground-truth foreground; DSC of the whole case (%)",
                 fontsize=9)
    fig.subplots_adjust(left=0.06, right=0.99, top=1 - 0.55 / fig.get_figheight(),
                        bottom=0.75 / fig.get_figheight(), wspace=0.03, hspace=0.06)
    with atomic_path(out_png, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    return out_png
