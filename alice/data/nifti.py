"""Low-level NIfTI reading with every failure turned into a one-line `InputError`.

Two levels, so that most bad input fails before anything is written or allocated:
- `read_header(path)`: opens the file and reads the header only (cheap, even for .nii.gz) and
  refuses a header that cannot be true: one that violates the NIfTI format, declares more voxel
  bytes than the file can hold, has no orientation (qform_code and sform_code both 0), whose
  qform and sform disagree, whose voxel sizes no CT scanner produces, whose voxels are not
  scalar numbers (RGB, complex), or whose pixdim disagrees with its affine's voxel sizes;
- `read_image(path)` / `read_label(path)` / `read_mask(path)`: read the voxel data and check it.
  The returned header carries the sha256 of the file bytes that were parsed, so a later reader can
  tell whether the file is still the one that was read.

4-D volumes whose last axis has length 1 (a common export artefact: x, y, z, 1) are squeezed to
3-D; any other non-3-D shape is an error.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import re
import struct
import zlib
from dataclasses import dataclass, field, replace
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
# Voxel sizes (mm, per axis) a CT scanner produces: anything outside is a unit mix-up (a header in
# metres or cm) or a broken header, and would resample into absurd grids.
MIN_SPACING_MM, MAX_SPACING_MM = 0.1, 20.0
# qform and sform of one file may differ by their storage rounding (float32, quaternion), never by
# a displacement or a turn: readers pick different ones (ITK the qform, nibabel the sform).
QSFORM_OFFSET_TOL_MM = 1.0
QSFORM_ANGLE_TOL_DEG = 1.0
# Deflate cannot expand one compressed byte into more than 1032 bytes: a .nii.gz smaller than its
# declared content / 1032 cannot hold it, whatever its trailer says.
DEFLATE_MAX_RATIO = 1032
_GZIP_ISIZE_MOD = 2**32  # the gzip trailer stores the uncompressed size modulo 2^32
_STREAM_CHUNK = 1 << 20

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
    """What the header says about one volume (after squeezing a trailing singleton axis).

    `sha256` is set by the data readers: the hash of the file bytes they parsed."""

    path: Path
    shape: tuple[int, int, int]
    affine: np.ndarray = field(compare=False, repr=False)
    zooms: tuple[float, float, float]
    dtype: str
    squeezed: bool = False
    sha256: str | None = field(default=None, compare=False)

    @property
    def axcodes(self) -> tuple[str, str, str]:
        return tuple(nib.aff2axcodes(self.affine))  # type: ignore[return-value]


def _is_gz(path: Path) -> bool:
    return path.name.endswith(".gz")


def _load(path: Path) -> nib.Nifti1Image:
    try:
        img = nib.load(str(path))
    except _READ_ERRORS as exc:
        raise InputError(path, f"unreadable NIfTI header ({_brief(exc)})") from None
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise InputError(path, f"not a NIfTI image (nibabel read it as {type(img).__name__})")
    stored = _check_format(path, img)
    _check_size(path, img, int(stored["vox_offset"]))
    return img


def _mm(values) -> str:
    return "(" + ", ".join(f"{float(v):.4g}" for v in values) + ")"


# ------------------------------------------------------------------------------- format and size
def _raw_header(path: Path, img: nib.Nifti1Image):
    """The header as stored (nibabel's loaded copy has silently 'fixed' some fields)."""
    klass = type(img.header)
    opener = gzip.open if _is_gz(path) else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read(klass.sizeof_hdr)
        return klass(raw, endianness=img.header.endianness, check=False)
    except _READ_ERRORS as exc:
        raise InputError(path, f"unreadable NIfTI header ({_brief(exc)})") from None


def _check_format(path: Path, img: nib.Nifti1Image):
    """Fields the NIfTI standard fixes (nibabel repairs some of these on load without a word);
    returns the header as stored."""
    hdr = _raw_header(path, img)
    problems = []
    if int(hdr["sizeof_hdr"]) != hdr.sizeof_hdr:
        problems.append(f"sizeof_hdr is {int(hdr['sizeof_hdr'])}, not {hdr.sizeof_hdr}")
    if hdr["magic"].item() != hdr.single_magic:
        problems.append(f"magic {hdr['magic'].item()!r} is not {hdr.single_magic!r} (a single-file NIfTI)")
    dims = [int(d) for d in hdr["dim"]]
    if not 1 <= dims[0] <= 7:
        problems.append(f"dim[0] (the number of dimensions) is {dims[0]}, not 1..7")
    elif min(dims[1 : dims[0] + 1]) < 0:
        problems.append(f"dim {dims[1 : dims[0] + 1]} has a negative size")
    spatial = min(3, max(dims[0], 1))
    pixdim = [float(p) for p in hdr["pixdim"][1 : spatial + 1]]
    if not all(p > 0 for p in pixdim):  # also catches NaN
        problems.append(f"pixdim[1..{spatial}] {_mm(pixdim)} must be positive voxel sizes")
    offset = float(hdr["vox_offset"])
    if not offset >= hdr.single_vox_offset:
        problems.append(f"vox_offset {offset:g} lies inside the header (at least {hdr.single_vox_offset})")
    valid_codes = set(nib.nifti1.xform_codes.value_set())
    for key in ("qform_code", "sform_code"):
        if int(hdr[key]) not in valid_codes:
            problems.append(f"{key} {int(hdr[key])} is not a NIfTI transform code {sorted(valid_codes)}")
    if problems:
        raise InputError(path, f"header violates the NIfTI format: {'; '.join(problems)}")
    return hdr


def _gz_content_size(path: Path, size: int, need: int) -> int:
    """How many bytes the gzip stream of `path` decompresses to, counted up to `need` at most.

    The trailer (ISIZE) answers at once when it equals `need` (modulo 2^32), as it does for a file
    written whole; otherwise (a truncated stream ends in arbitrary bytes, a writer may pad) the
    stream is decompressed in chunks (nothing is kept) until `need` bytes or its end."""
    with open(path, "rb") as fh:
        fh.seek(max(0, size - 4))
        trailer = fh.read(4)
    if len(trailer) == 4 and struct.unpack("<I", trailer)[0] == need % _GZIP_ISIZE_MOD:
        return need
    total = 0
    with gzip.open(path, "rb") as fh:
        while total < need:
            chunk = fh.read(min(_STREAM_CHUNK, need - total))
            if not chunk:
                break
            total += len(chunk)
    return total


def _check_size(path: Path, img: nib.Nifti1Image, offset: int) -> None:
    """The file must hold every voxel its header declares from `offset` (the stored vox_offset:
    nibabel's loaded copy forgets it), checked before anything is allocated."""
    shape = tuple(int(s) for s in img.header.get_data_shape())
    dtype = img.get_data_dtype()
    n_bytes = math.prod(shape) * dtype.itemsize
    need = offset + n_bytes
    declares = f"header declares {'x'.join(map(str, shape))} voxels of {dtype.itemsize} byte(s) ({n_bytes:,} bytes from offset {offset})"
    try:
        size = path.stat().st_size
        if not _is_gz(path):
            if size < need:
                raise InputError(path, f"{declares} but the file holds only {size:,} bytes (truncated?)")
            return
        if size * DEFLATE_MAX_RATIO < need:
            raise InputError(
                path,
                f"{declares} but its {size:,} compressed bytes decompress to at most "
                f"{size * DEFLATE_MAX_RATIO:,} (DEFLATE_MAX_RATIO {DEFLATE_MAX_RATIO})",
            )
        held = _gz_content_size(path, size, need)
    except _READ_ERRORS as exc:
        raise InputError(path, f"truncated or corrupt voxel data ({_brief(exc)})") from None
    if held < need:
        raise InputError(path, f"{declares} but its gzip stream holds only {held:,} bytes (truncated?)")


# ---------------------------------------------------------------------------------- header checks
def _check_zooms(path: Path, zooms: tuple[float, ...], affine: np.ndarray) -> None:
    """The header's pixdim must agree with the voxel sizes of the affine (its column norms):
    resampling follows the affine and the metrics take their spacing from it, so a file whose
    pixdim says otherwise is ambiguous."""
    sizes = voxel_sizes(affine)
    if not np.allclose(np.abs(zooms), sizes, rtol=ZOOM_RTOL, atol=ZOOM_ATOL):
        raise InputError(
            path, f"header pixdim {_mm(zooms)} mm disagrees with the voxel sizes of its affine {_mm(sizes)} mm"
        )


def _check_voxel_type(path: Path, img: nib.Nifti1Image) -> None:
    dtype = img.get_data_dtype()
    if dtype.fields is not None or dtype.kind not in "biuf":
        try:
            name = img.header.get_value_label("datatype")
        except _READ_ERRORS:
            name = str(dtype)
        raise InputError(path, f"voxel data type {name} is not a scalar number (a CT volume or label map is)")


def _describe(affine: np.ndarray) -> str:
    try:
        axes = "".join(str(c) for c in nib.aff2axcodes(affine)) + " "
    except (ValueError, np.linalg.LinAlgError):
        axes = ""
    return f"{axes}origin {_mm(affine[:3, 3])} mm, voxels {_mm(voxel_sizes(affine))} mm"


def _check_orientation(path: Path, img: nib.Nifti1Image) -> None:
    """The header must place its voxels in the patient, in one way only."""
    hdr = img.header
    qcode, scode = int(hdr["qform_code"]), int(hdr["sform_code"])
    if qcode == 0 and scode == 0:
        raise InputError(
            path, "header carries no orientation (qform_code and sform_code are both 0): voxel axes and origin are unknown"
        )
    if qcode == 0 or scode == 0:
        return
    try:
        qform, sform = np.asarray(hdr.get_qform(), float), np.asarray(hdr.get_sform(), float)
    except _READ_ERRORS as exc:
        raise InputError(path, f"header violates the NIfTI format: unreadable qform ({_brief(exc)})") from None
    offset = float(np.linalg.norm(qform[:3, 3] - sform[:3, 3]))
    q_cols, s_cols = qform[:3, :3], sform[:3, :3]
    with np.errstate(divide="ignore", invalid="ignore"):  # a zero column: refused as a size mismatch
        cosines = np.sum(q_cols * s_cols, axis=0) / (np.linalg.norm(q_cols, axis=0) * np.linalg.norm(s_cols, axis=0))
    angle = float(np.degrees(np.max(np.arccos(np.clip(np.nan_to_num(cosines, nan=-1.0), -1.0, 1.0)))))
    same_sizes = np.allclose(voxel_sizes(qform), voxel_sizes(sform), rtol=ZOOM_RTOL, atol=ZOOM_ATOL)
    if offset > QSFORM_OFFSET_TOL_MM or angle > QSFORM_ANGLE_TOL_DEG or not same_sizes:
        raise InputError(
            path,
            f"qform and sform disagree ({offset:.3g} mm apart, axes turned by up to {angle:.3g} deg; tolerance "
            f"{QSFORM_OFFSET_TOL_MM:g} mm, {QSFORM_ANGLE_TOL_DEG:g} deg): qform {_describe(qform)}, "
            f"sform {_describe(sform)}",
        )


def _check_spacing(path: Path, affine: np.ndarray) -> None:
    sizes = voxel_sizes(affine)
    if not all(MIN_SPACING_MM <= s <= MAX_SPACING_MM for s in sizes):
        raise InputError(
            path,
            f"voxel sizes {_mm(sizes)} mm are outside what a CT scanner produces (MIN_SPACING_MM "
            f"{MIN_SPACING_MM:g} to MAX_SPACING_MM {MAX_SPACING_MM:g} mm per axis): a header in metres or cm?",
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
    _check_voxel_type(path, img)
    affine = np.asarray(img.affine, dtype=np.float64)
    if not np.all(np.isfinite(affine)):
        raise InputError(path, "header affine contains NaN or infinite values")
    _check_orientation(path, img)
    _check_spacing(path, affine)
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


# ------------------------------------------------------------------------------------- voxel data
def _read_data(path: Path, img: nib.Nifti1Image, header: Header) -> tuple[np.ndarray, Header]:
    """The voxels of `path` parsed from one read of its bytes, and `header` with their sha256."""
    try:
        raw = path.read_bytes()
        digest = hashlib.sha256(raw).hexdigest()
        if _is_gz(path):
            # nibabel stops reading before the gzip trailer, so a damaged stream can go unnoticed:
            # decompress the whole member ourselves (gzip checks CRC and length at EOF).
            raw = gzip.decompress(raw)
        img = type(img).from_bytes(raw)
        del raw
        data = np.asanyarray(img.dataobj)
    except _READ_ERRORS as exc:
        raise InputError(path, f"truncated or corrupt voxel data ({_brief(exc)})") from None
    if data.size != math.prod(header.shape):
        raise InputError(path, f"file changed while it was read (now {data.shape}, header said {header.shape})")
    if data.shape != header.shape:
        data = data.reshape(header.shape)
    return data, replace(header, sha256=digest)


def _read(path: Path) -> tuple[np.ndarray, Header]:
    img = _load(path)
    return _read_data(path, img, _header_of(path, img))


def read_image(path: str | Path) -> tuple[np.ndarray, Header]:
    """Read an intensity volume as float32 and check it is finite everywhere."""
    path = Path(path)
    data, header = _read(path)
    data = data.astype(np.float32, copy=False)
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
    raw, header = _read(path)
    data = _integer_values(path, raw, "label map")
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
    raw, header = _read(path)
    data = _integer_values(path, raw, "mask")
    unknown = sorted(set(_present_values(data)) - {0, 1})
    if unknown:
        raise InputError(path, f"mask is not binary: has values {unknown[:10]} besides 0 and 1")
    return data.astype(np.uint8, copy=False), header
