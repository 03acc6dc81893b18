"""NIfTI-1/2 volumes with nibabel: qform/sform and their codes kept, data held as (C, z, y, x)."""

from __future__ import annotations

import warnings
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np

from .. import geometry
from ..errors import HiresError
from ..image import Image
from .common import cast_to_dtype

SUFFIXES = (".nii", ".nii.gz")


def is_nifti(path: Path) -> bool:
    return str(path).lower().endswith(SUFFIXES)


def read_nifti(path: Path) -> Image:
    """Read a 2-D/3-D volume (4-D: the 4th axis becomes channels) with scaling applied."""
    try:
        img = nib.load(str(path))
        if len(img.shape) > 4 or len(img.shape) < 2:
            raise HiresError(f"{path}: NIfTI with {len(img.shape)} dimensions is not supported")
        data = np.asarray(img.get_fdata(dtype=np.float32))
    except HiresError:
        raise
    except (nib.filebasedimages.ImageFileError, OSError, EOFError, ValueError, zlib.error) as exc:
        raise HiresError(f"cannot read NIfTI {path}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
    while data.ndim < 3:
        data = data[..., None]
    if data.ndim == 3:
        data = data[..., None]
    hdr = img.header
    _, qcode = hdr.get_qform(coded=True)
    _, scode = hdr.get_sform(coded=True)
    slope, inter = hdr.get_slope_inter()
    return Image(
        data=np.ascontiguousarray(data.transpose(3, 2, 1, 0)),
        affine=geometry.affine_from_nifti(img.affine),
        frame="RAS",
        kind="nifti",
        meta={"header": hdr.copy(), "qform_code": int(qcode), "sform_code": int(scode),
              "dtype": np.dtype(img.get_data_dtype()).str, "scaled": slope not in (None, 1.0) or inter not in (None, 0.0)},
        source_path=str(path),
    )


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
    img.set_qform(affine, code=meta.get("qform_code", 1))
    img.set_sform(affine, code=meta.get("sform_code", 1))
    nib.save(img, str(path))
