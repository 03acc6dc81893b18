"""NIfTI-1/2 volumes with nibabel: qform/sform and their codes kept, data held as (C, z, y, x)."""

from __future__ import annotations

import logging
import re
import warnings
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np

from .. import geometry
from ..intensity import ct_evidence, mark_ct_padding
from ..errors import HiresError
from ..image import Image
from .common import cast_to_dtype

SUFFIXES = (".nii", ".nii.gz")


def is_nifti(path: Path) -> bool:
    return str(path).lower().endswith(SUFFIXES)


def read_nifti(path: Path) -> Image:
    """Read a 2-D/3-D volume (4-D: the 4th axis becomes channels) with scaling applied.

    Header problems nibabel repairs on the fly (it logs them) become one warning; a header that
    cannot describe the file (bad dimensions, data type or geometry, voxels past the end of the
    file) is a one-line ``HiresError``.
    """
    fixes = _Collect()
    handlers = nib.imageglobals.logger.handlers[:]
    for h in handlers:  # nibabel prints its header fixes straight to stderr
        nib.imageglobals.logger.removeHandler(h)
    nib.imageglobals.logger.addHandler(fixes)
    try:
        img = nib.load(str(path))
        _check_header(img, Path(path))
        data = np.asarray(img.get_fdata(dtype=np.float32))
    except HiresError:
        raise
    except (nib.filebasedimages.ImageFileError, nib.spatialimages.HeaderDataError, nib.spatialimages.ImageDataError,
            OSError, EOFError, ValueError, OverflowError, zlib.error) as exc:
        short = re.match(r"Expected (\d+) bytes, got (\d+) bytes", str(exc))
        why = (f"truncated or corrupt (expected {short[1]} bytes of voxels, got {short[2]})" if short
               else str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        raise HiresError(f"cannot read NIfTI {path}: {why}")
    except MemoryError:
        raise HiresError(f"cannot read NIfTI {path}: its header's volume {tuple(img.shape)} does not fit in memory")
    finally:
        nib.imageglobals.logger.removeHandler(fixes)
        for h in handlers:
            nib.imageglobals.logger.addHandler(h)
    if fixes.messages:
        warnings.warn(f"{path}: NIfTI header repaired on reading: {'; '.join(dict.fromkeys(fixes.messages))}",
                      stacklevel=2)
    while data.ndim < 3:
        data = data[..., None]
    if data.ndim == 3:
        data = data[..., None]
    hdr = img.header
    _, qcode = hdr.get_qform(coded=True)
    _, scode = hdr.get_sform(coded=True)
    slope, inter = hdr.get_slope_inter()
    data = np.ascontiguousarray(data.transpose(3, 2, 1, 0))
    ct = ct_evidence(data) if data.shape[0] == 1 else None  # no modality in NIfTI: CT by its values
    return Image(
        data=data,
        affine=geometry.affine_from_nifti(img.affine),
        frame="RAS",
        kind="nifti",
        units="HU" if ct else "",
        nodata=mark_ct_padding(data) if ct else None,  # padding (below -1024 HU) becomes nodata
        meta={"header": hdr.copy(), "qform_code": int(qcode), "sform_code": int(scode),
              "dtype": np.dtype(img.get_data_dtype()).str, "scaled": slope not in (None, 1.0) or inter not in (None, 0.0),
              "ct_evidence": ct},
        source_path=str(path),
    )


class _Collect(logging.Handler):
    """Keeps the messages nibabel logs while it reads a header."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(" ".join(record.getMessage().split()))


def _check_header(img, path: Path) -> None:
    """Dimensions, data size and geometry a corrupt header gets wrong, before any voxel is read."""
    shape = tuple(img.shape)
    if len(shape) > 4 or len(shape) < 2:
        raise HiresError(f"{path}: NIfTI with {len(shape)} dimensions is not supported")
    if min(shape) < 1:
        raise HiresError(f"cannot read NIfTI {path}: corrupt header (dimensions {shape})")
    affine = np.asarray(img.affine, dtype=float)
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise HiresError(f"cannot read NIfTI {path}: corrupt header (voxel-to-world matrix is not finite "
                         "and invertible)")
    if not str(path).lower().endswith(".gz"):
        offset = int(img.header.get_data_offset())
        needed = offset + int(np.prod(shape, dtype=np.float64)) * np.dtype(img.get_data_dtype()).itemsize
        size = path.stat().st_size
        if needed > size:
            raise HiresError(f"cannot read NIfTI {path}: truncated or corrupt (the header describes "
                             f"{needed} bytes, the file holds {size})")


def write_nifti(image: Image, path: Path, description: str = "") -> None:
    """Write any 3-D medical image as NIfTI (DICOM LPS geometry converted to RAS)."""
    if image.kind == "raster":
        raise HiresError("NIfTI output needs a medical volume; write a raster to .tif")
    affine = geometry.nifti_from_affine(geometry.convert_frame(image.affine, image.frame, "RAS"))
    data = np.asarray(image.data).transpose(3, 2, 1, 0)
    if data.shape[3] == 1:
        data = data[..., 0]
    meta = image.meta if image.kind == "nifti" else {}
    dtype = np.dtype(meta.get("dtype", "<f4"))
    if np.issubdtype(dtype, np.integer) and not meta.get("scaled", False):
        data, clipped = cast_to_dtype(data, dtype)
        if clipped:
            warnings.warn(f"{clipped} values clipped to the {dtype.name} range", stacklevel=2)
    else:
        data = data.astype(np.float32)
    header = meta["header"].copy() if "header" in meta else nib.Nifti1Header()
    header.set_data_dtype(data.dtype)
    header.set_slope_inter(np.nan, np.nan)
    if description:
        header["descrip"] = description[:79].encode()
    img = nib.Nifti1Image(data, affine, header) if not isinstance(header, nib.Nifti2Header) \
        else nib.Nifti2Image(data, affine, header)
    if len(description) > 79:  # descrip holds 79 characters: the whole provenance in a comment extension
        img.header.extensions.append(nib.nifti1.Nifti1Extension("comment", description.encode()))
    img.set_qform(affine, code=meta.get("qform_code", 1))
    img.set_sform(affine, code=meta.get("sform_code", 1))
    nib.save(img, str(path))
