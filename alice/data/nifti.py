"""Low-level NIfTI reading with every failure turned into a one-line `InputError`.

Two levels, so that most bad input fails before anything is written:
- `read_header(path)`: opens the file and reads the header only (cheap, even for .nii.gz); a
  header whose pixdim disagrees with its affine's voxel sizes is rejected;
- `read_image(path)` / `read_label(path)` / `read_mask(path)`: read the voxel data and check it.

4-D volumes whose last axis has length 1 (a common export artefact: x, y, z, 1) are squeezed to
3-D; any other non-3-D shape is an error.
"""

from __future__ import annotations

import gzip
import re
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.affines import voxel_sizes
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError

from alice.errors import InputError

NIFTI_SUFFIXES = (".nii.gz", ".nii")
# How far the header's pixdim may differ from the affine's voxel sizes (float32 storage rounding).
ZOOM_RTOL, ZOOM_ATOL = 1e-3, 1e-5

# Everything nibabel, gzip and zlib raise for unreadable, damaged or truncated files.
_READ_ERRORS = (
    OSError,  # includes gzip.BadGzipFile, "Expected N bytes, got M" from uncompressed files
    EOFError,  # truncated .nii.gz
    zlib.error,
    gzip.BadGzipFile,
    ValueError,
    struct.error,
    ImageFileError,
    HeaderDataError,
)


def nifti_stem(name: str) -> str | None:
    """`name` without its NIfTI suffix, or None when it is not a NIfTI file name."""
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return None


def _brief(exc: BaseException) -> str:
    """One line describing an exception (nibabel messages can span lines)."""
    text = re.sub(r"\s+", " ", str(exc)).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@dataclass(frozen=True)
class Header:
    """What the header says about one volume (after squeezing a trailing singleton axis)."""

    path: Path
    shape: tuple[int, int, int]
    affine: np.ndarray = field(compare=False, repr=False)
    zooms: tuple[float, float, float]
    dtype: str
    squeezed: bool = False

    @property
    def axcodes(self) -> tuple[str, str, str]:
        return tuple(nib.aff2axcodes(self.affine))  # type: ignore[return-value]


def _load(path: Path) -> nib.Nifti1Image:
    try:
        img = nib.load(str(path))
    except _READ_ERRORS as exc:
        raise InputError(path, f"unreadable NIfTI header ({_brief(exc)})") from None
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise InputError(path, f"not a NIfTI image (nibabel read it as {type(img).__name__})")
    return img


def _mm(values) -> str:
    return "(" + ", ".join(f"{float(v):.4g}" for v in values) + ")"


def _check_zooms(path: Path, zooms: tuple[float, ...], affine: np.ndarray) -> None:
    """The header's pixdim must agree with the voxel sizes of the affine (its column norms):
    resampling follows the affine and the metrics take their spacing from it, so a file whose
    pixdim says otherwise is ambiguous."""
    sizes = voxel_sizes(affine)
    if not np.allclose(np.abs(zooms), sizes, rtol=ZOOM_RTOL, atol=ZOOM_ATOL):
        raise InputError(
            path, f"header pixdim {_mm(zooms)} mm disagrees with the voxel sizes of its affine {_mm(sizes)} mm"
        )


def _header_of(path: Path, img: nib.Nifti1Image) -> Header:
    shape = tuple(int(s) for s in img.shape)
    squeezed = False
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
        squeezed = True
    if len(shape) != 3:
        raise InputError(path, f"expected a 3-D volume, got a {len(shape)}-D one of shape {tuple(img.shape)}")
    if min(shape) < 1:
        raise InputError(path, f"volume has an empty dimension (shape {shape})")
    affine = np.asarray(img.affine, dtype=np.float64)
    if not np.all(np.isfinite(affine)):
        raise InputError(path, "header affine contains NaN or infinite values")
    if abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise InputError(path, f"header affine is singular (zero voxel size?): {affine[:3, :3].tolist()}")
    try:
        zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    except _READ_ERRORS as exc:
        raise InputError(path, f"unreadable voxel spacing in header ({_brief(exc)})") from None
    _check_zooms(path, zooms, affine)
    return Header(
        path=path,
        shape=shape,  # type: ignore[arg-type]
        affine=affine,
        zooms=zooms,  # type: ignore[arg-type]
        dtype=str(img.get_data_dtype()),
        squeezed=squeezed,
    )


def read_header(path: str | Path) -> Header:
    """Read and check the header of one NIfTI file (no voxel data is read)."""
    path = Path(path)
    return _header_of(path, _load(path))


def _read_data(path: Path, img: nib.Nifti1Image, header: Header) -> np.ndarray:
    try:
        if path.name.endswith(".gz"):
            # nibabel stops reading before the gzip trailer, so a damaged stream can go unnoticed:
            # decompress the whole member ourselves (gzip checks CRC and length at EOF).
            with gzip.open(path, "rb") as fh:
                raw = fh.read()
            img = type(img).from_bytes(raw)
        data = np.asanyarray(img.dataobj)
    except _READ_ERRORS as exc:
        raise InputError(path, f"truncated or corrupt voxel data ({_brief(exc)})") from None
    if data.shape != header.shape:
        data = data.reshape(header.shape)
    return data


def read_image(path: str | Path) -> tuple[np.ndarray, Header]:
    """Read an intensity volume as float32 and check it is finite everywhere."""
    path = Path(path)
    img = _load(path)
    header = _header_of(path, img)
    data = _read_data(path, img, header).astype(np.float32, copy=False)
    finite = np.isfinite(data)
    if not finite.all():
        n_nan = int(np.isnan(data).sum())
        n_inf = int(data.size - finite.sum()) - n_nan
        parts = []
        if n_nan:
            parts.append(f"{n_nan} NaN")
        if n_inf:
            parts.append(f"{n_inf} infinite")
        raise InputError(path, f"image contains {' and '.join(parts)} voxel(s)")
    return data, header


def _integer_values(path: Path, data: np.ndarray, what: str) -> np.ndarray:
    """Check a label-like array holds integers only; return it as int64-compatible array."""
    if data.dtype.kind == "f":
        finite = np.isfinite(data)
        if not finite.all():
            raise InputError(path, f"{what} contains {int(data.size - finite.sum())} NaN or infinite voxel(s)")
        fractional = data != np.round(data)
        if fractional.any():
            examples = np.unique(data[fractional])[:5].tolist()
            raise InputError(
                path,
                f"{what} has non-integer values ({int(fractional.sum())} voxel(s), e.g. {examples})",
            )
    elif data.dtype.kind not in "iub":
        raise InputError(path, f"{what} has unsupported data type {data.dtype}")
    return data


def _present_values(data: np.ndarray) -> list[int]:
    lo, hi = data.min(), data.max()
    if lo >= 0 and hi <= 255:
        counts = np.bincount(data.astype(np.uint8, copy=False).ravel(), minlength=int(hi) + 1)
        return [int(v) for v in np.flatnonzero(counts)]
    return [int(v) for v in np.unique(data)]


def read_label(path: str | Path, allowed_ids: set[int] | frozenset[int]) -> tuple[np.ndarray, Header]:
    """Read a label map, check its values are integers within `allowed_ids`; return uint8."""
    path = Path(path)
    img = _load(path)
    header = _header_of(path, img)
    data = _integer_values(path, _read_data(path, img, header), "label map")
    present = _present_values(data)
    unknown = sorted(set(present) - set(allowed_ids))
    if unknown:
        raise InputError(
            path,
            f"label ids {unknown} are outside the dataset's label set "
            f"{min(allowed_ids)}..{max(allowed_ids)}",
        )
    return data.astype(np.uint8, copy=False), header


def read_mask(path: str | Path) -> tuple[np.ndarray, Header]:
    """Read a binary mask; values must be 0 or 1."""
    path = Path(path)
    img = _load(path)
    header = _header_of(path, img)
    data = _integer_values(path, _read_data(path, img, header), "mask")
    unknown = sorted(set(_present_values(data)) - {0, 1})
    if unknown:
        raise InputError(path, f"mask is not binary: has values {unknown[:10]} besides 0 and 1")
    return data.astype(np.uint8, copy=False), header
