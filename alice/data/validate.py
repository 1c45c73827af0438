"""Header- and data-level checks of discovered cases, and the re-reading of a prepared source label.

`check_headers` is the cheap pass over ALL cases (readable, plausible header, 3-D, image/label
shapes and affines agree, mask shapes agree) run before anything is written; `read_case` loads one
case's voxels and runs the data-level checks (truncated data, NaN/inf intensities, non-integer or
unknown label ids, an all-background label, non-binary masks). Every failure is an `InputError`
naming the file and the problem.

`prepare` records per case a fingerprint of every source file (`source_fingerprint`: sha256 of the
bytes it read, header shape and affine) beside path, size and mtime. `read_source_label` re-reads
a case's source label for scoring with exactly the checks `prepare` applied and refuses a file
that is not the one prepared (a record from before fingerprints were kept: one whose size or mtime
changed); `source_identity` is the short record of it that metrics keep.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import nibabel as nib
import numpy as np
from nibabel.affines import voxel_sizes

from alice.data.layouts import Case
from alice.labels import LABEL_IDS
from alice.data.nifti import Header, read_header, read_image, read_label, read_mask
from alice.errors import ConfigError, InputError

DEFAULT_AFFINE_TOLERANCE_MM = 1e-3
# The fingerprint keys `prepare` adds to a source file's record (besides path, size, mtime_ns).
FINGERPRINT_KEYS = ("sha256", "shape", "affine")
# What every source-file record holds (and a rerun compares to reuse a cached case).
STAT_KEYS = ("path", "size", "mtime_ns")
# How far a re-read header's affine may differ from the recorded one (JSON round trip of float64).
RECORDED_AFFINE_ATOL_MM = 1e-6


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
    header: Header  # the image's header (affine, zooms, shape, sha256 of the bytes read)
    label_header: Header | None = None
    mask_header: Header | None = None


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


def check_label_content(path: Path, label: np.ndarray) -> None:
    """A label map must show at least one organ: an empty one teaches nothing, and under the
    absent-organ rule an empty test label scores DSC = NSD = 1 for any empty prediction."""
    if not label.any():
        raise InputError(path, "label holds no organ (all background)")


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


def _label_ids(dataset: str | None, what: str) -> frozenset[int]:
    if dataset not in LABEL_IDS:
        raise ConfigError("dataset", f"'{dataset}' has no label set but {what} has a label")
    return LABEL_IDS[dataset]


def read_case(dataset: str, case: Case, options: Mapping[str, Any] | None = None) -> LoadedCase:
    """Load one case's voxels and run the data-level checks (and the header checks again)."""
    tol = affine_tolerance(options)
    image, header = read_image(case.image)
    label = label_header = mask_header = None
    if case.label is not None:
        label, label_header = read_label(case.label, _label_ids(dataset, f"case {case.case_id}"))
        check_label_header(header, label_header, tol)
        check_label_content(case.label, label)
    if case.mask is not None:
        _, mask_header = read_mask(case.mask)
        check_mask_header(header, mask_header)
    return LoadedCase(case, image, label, header, label_header, mask_header)


# ------------------------------------------------------------------------- source file identity
def source_fingerprint(header: Header) -> dict[str, Any]:
    """What a later reader needs to tell whether a source file is still the one prepared: the
    sha256 of its bytes (set by the data readers on the header they return), its header shape
    and affine."""
    if header.sha256 is None:
        raise ValueError(f"{header.path}: header of a header-only read has no sha256")
    return {
        "sha256": header.sha256,
        "shape": [int(s) for s in header.shape],
        "affine": np.asarray(header.affine, dtype=float).tolist(),
    }


def _recorded(meta: Mapping[str, Any], role: str) -> Mapping[str, Any] | None:
    """The source-file record of `role` when it identifies the file (path, size, mtime at least)."""
    record = (((meta.get("identity") or {}).get("source")) or {}).get(role)
    if not isinstance(record, Mapping) or not all(key in record for key in STAT_KEYS):
        return None
    return record


def _fingerprinted(record: Mapping[str, Any]) -> bool:
    return all(key in record for key in FINGERPRINT_KEYS)


def source_identity(meta: Mapping[str, Any], role: str = "label") -> dict[str, Any]:
    """The recorded identity of a case's source file (`role`: label, image or mask) as prepare read
    it: {"path", "sha256", "size", "shape"} (sha256 None in a record written before fingerprints
    were kept); an InputError when the record identifies no file."""
    record = _recorded(meta, role)
    if record is None:
        where = (meta.get("source") or {}).get(role) or meta.get("case_id") or "case record"
        raise InputError(where, f"the cache does not identify this {role} file (rerun `alice prepare`)")
    shape = record.get("shape") or (meta.get("original") or {}).get("shape")
    return {
        "path": record["path"],
        "sha256": record.get("sha256"),
        "size": record["size"],
        "shape": list(shape) if shape is not None else None,
    }


def _unchanged_source(meta: Mapping[str, Any], role: str, case_json_path: Path) -> tuple[Path, Mapping[str, Any]]:
    """(path, record) of a case's source file (`role`) after checking its header against what
    prepare recorded: size and mtime for a record without fingerprint, the shape always, the
    affine when fingerprinted (the sha256 is the caller's, who reads the voxels anyway)."""
    record = _recorded(meta, role)
    if record is None:
        raise InputError(
            case_json_path, f"case record does not identify its source {role} (path, size, mtime): rerun `alice prepare`"
        )
    # the path as prepare was given it (relative to the project when Snakemake ran it), else the
    # absolute one it resolved to; either is held to the record below
    given = (meta.get("source") or {}).get(role)
    candidates = ([Path(given)] if given else []) + [Path(record["path"])]
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        raise InputError(record["path"], f"source {role} of case '{meta.get('case_id', case_json_path.stem)}' not found")
    since = f"changed since `alice prepare` read it (rerun prepare, then retrain on the new {role}s)"
    if not _fingerprinted(record):
        st = path.stat()
        if (st.st_size, st.st_mtime_ns) != (record["size"], record["mtime_ns"]):
            raise InputError(
                path,
                f"{role} {since}: size {st.st_size} / mtime {st.st_mtime_ns}, prepared {record['size']} / "
                f"{record['mtime_ns']} (a record without sha256)",
            )
    header = read_header(path)
    shape = record.get("shape") or (meta.get("original") or {}).get("shape")
    if shape is not None and list(header.shape) != list(shape):
        raise InputError(path, f"{role} {since}: shape {list(header.shape)}, prepared {list(shape)}")
    if _fingerprinted(record):
        recorded_affine = np.asarray(record["affine"], dtype=float)
        if not np.allclose(header.affine, recorded_affine, rtol=0.0, atol=RECORDED_AFFINE_ATOL_MM):
            raise InputError(
                path,
                f"{role} {since}: affine {''.join(header.axcodes)} origin {header.affine[:3, 3].round(3).tolist()}, "
                f"prepared {''.join(nib.aff2axcodes(recorded_affine))} origin {recorded_affine[:3, 3].round(3).tolist()}",
            )
    return path, record


def check_source_image(meta: Mapping[str, Any], case_json_path: str | Path) -> Path:
    """The source image of a prepared case, its header checked against prepare's record (shape,
    affine; size and mtime for a record without fingerprint): a writer that puts a prediction on
    that image's grid (an online submission) refuses an image re-exported since."""
    return _unchanged_source(meta, "image", Path(case_json_path))[0]


def read_source_label(
    meta: Mapping[str, Any], case_json_path: str | Path, dataset: str | None = None
) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """The source label of a prepared case as (uint8 labels, affine, spacing = the affine's voxel
    sizes), read with the checks `prepare` applied (header, label ids of `dataset`, default the
    record's, the (x, y, z, 1) squeeze, not all background). A file that is not the one prepared
    (other sha256, shape or affine, e.g. re-exported in another orientation) is refused: the score
    would not be computed against the data the model was trained and cached on. A record written
    before fingerprints were kept is held to what it has: size and mtime (what reusing a cached
    case trusts) and the shape of the prepared grid."""
    case_json_path = Path(case_json_path)
    dataset = dataset or meta.get("dataset")
    if not (meta.get("source") or {}).get("label"):
        raise InputError(case_json_path, "case has no source label file to score against")
    ids = _label_ids(dataset, f"case record {case_json_path.name}")
    path, record = _unchanged_source(meta, "label", case_json_path)
    since = "changed since `alice prepare` read it (rerun prepare, then retrain on the new labels)"
    labels, header = read_label(path, ids)
    if _fingerprinted(record) and header.sha256 != record["sha256"]:
        raise InputError(path, f"label {since}: sha256 {header.sha256[:12]}..., prepared {record['sha256'][:12]}...")
    check_label_content(path, labels)
    spacing = tuple(float(z) for z in voxel_sizes(header.affine))
    return labels, header.affine, spacing  # type: ignore[return-value]
