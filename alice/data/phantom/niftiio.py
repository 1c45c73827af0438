"""Byte-reproducible NIfTI-1 writing.

nibabel's own `.nii.gz` writer stores the file name and the current time in the gzip header, so
two runs never give identical bytes. We serialise the image in memory and gzip it ourselves with
mtime 0 and no name; the volume is written atomically (`alice.io.atomic_path`).
"""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np

from alice.io import atomic_path

_SCL_OFFSET = 112  # scl_slope, scl_inter: two float32 at bytes 112..119 of the NIfTI-1 header


def nifti_bytes(data: np.ndarray, affine: np.ndarray, dtype) -> bytes:
    img = nib.Nifti1Image(np.asarray(data, dtype=dtype), affine)
    img.set_data_dtype(dtype)
    img.set_qform(affine, code=1)  # scanner anatomical
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    raw = bytearray(img.to_bytes())
    # nibabel leaves scl_slope/scl_inter as NaN ("no scaling") for unscaled data; scanners and
    # converters write 1/0, which means the same thing. Write 1/0 explicitly.
    endian = "<" if img.header.endianness == "<" else ">"
    raw[_SCL_OFFSET : _SCL_OFFSET + 8] = np.array([1.0, 0.0], dtype=f"{endian}f4").tobytes()
    return bytes(raw)


def save_nifti_gz(path: str | Path, data: np.ndarray, affine: np.ndarray, dtype) -> None:
    payload = gzip.compress(nifti_bytes(data, affine, dtype), compresslevel=1, mtime=0)
    with atomic_path(path, suffix=".nii.gz") as tmp:
        tmp.write_bytes(payload)
