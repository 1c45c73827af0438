"""Header- and data-level checks of discovered cases.

`check_headers` is the cheap pass over ALL cases (readable header, 3-D, image/label shapes and
affines agree, mask shapes agree) run before anything is written; `read_case` loads one case's
voxels and runs the data-level checks (truncated data, NaN/inf intensities, non-integer or unknown
label ids, non-binary masks). Every failure is an `InputError` naming the file and the problem.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import numpy as np

from alice.data.layouts import Case
from alice.labels import LABEL_IDS
from alice.data.nifti import Header, read_header, read_image, read_label, read_mask
from alice.errors import ConfigError, InputError

DEFAULT_AFFINE_TOLERANCE_MM = 1e-3


@dataclass(frozen=True)
class CaseHeaders:
    image: Header
    label: Header | None
    mask: Header | None


@dataclass
class LoadedCase:
    case: Case
    image: np.ndarray  # float32, 3-D, nibabel (x, y, z) order
    label: np.ndarray | None  # uint8, same shape as image
    header: Header  # the image's header (affine, zooms, shape)


def affine_tolerance(options: Mapping[str, Any] | None) -> float:
    value = (options or {}).get("affine_tolerance", DEFAULT_AFFINE_TOLERANCE_MM)
    try:
        tol = float(value)
    except (TypeError, ValueError):
        raise ConfigError("affine_tolerance", f"must be a number in mm, got {value!r}") from None
    if not tol >= 0:
        raise ConfigError("affine_tolerance", f"must be >= 0, got {value!r}")
    return tol


def check_label_header(image: Header, label: Header, tol: float) -> None:
    """A label must share its image's voxel grid: same shape, same affine within `tol` mm."""
    if label.shape != image.shape:
        raise InputError(
            label.path, f"label shape {label.shape} differs from image shape {image.shape} ({image.path.name})"
        )
    diff = float(np.max(np.abs(label.affine - image.affine)))
    if not np.allclose(label.affine, image.affine, rtol=0.0, atol=tol):
        raise InputError(
            label.path,
            f"label affine differs from its image {image.path.name} "
            f"(max difference {diff:.4g} mm > tolerance {tol:g} mm)",
        )


def check_mask_header(image: Header, mask: Header) -> None:
    if mask.shape != image.shape:
        raise InputError(
            mask.path, f"mask shape {mask.shape} differs from study shape {image.shape} ({image.path.name})"
        )


def check_case_headers(case: Case, tol: float = DEFAULT_AFFINE_TOLERANCE_MM) -> CaseHeaders:
    image = read_header(case.image)
    label = read_header(case.label) if case.label is not None else None
    if label is not None:
        check_label_header(image, label, tol)
    mask = read_header(case.mask) if case.mask is not None else None
    if mask is not None:
        check_mask_header(image, mask)
    return CaseHeaders(image, label, mask)


def check_headers(
    dataset: str, cases: Iterable[Case], options: Mapping[str, Any] | None = None
) -> dict[str, CaseHeaders]:
    """The cheap pass over every case; raises on the first bad one."""
    tol = affine_tolerance(options)
    return {case.case_id: check_case_headers(case, tol) for case in cases}


def read_case(dataset: str, case: Case, options: Mapping[str, Any] | None = None) -> LoadedCase:
    """Load one case's voxels and run the data-level checks (and the header checks again)."""
    tol = affine_tolerance(options)
    image, header = read_image(case.image)
    label = None
    if case.label is not None:
        if dataset not in LABEL_IDS:
            raise ConfigError("dataset", f"'{dataset}' has no label set but case {case.case_id} has a label")
        label, label_header = read_label(case.label, LABEL_IDS[dataset])
        check_label_header(header, label_header, tol)
    if case.mask is not None:
        _, mask_header = read_mask(case.mask)
        check_mask_header(header, mask_header)
    return LoadedCase(case=case, image=image, label=label, header=header)
