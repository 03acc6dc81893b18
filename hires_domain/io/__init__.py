"""Format dispatch: which reader a path needs and which writer an output path asks for."""

from __future__ import annotations

from pathlib import Path

from ..errors import HiresError
from ..image import Image
from .common import atomic_output, check_output

RASTER_SUFFIXES = (".tif", ".tiff", ".jp2", ".vrt", ".img")


def detect(path: Path) -> str:
    """'dicom', 'nifti', 'raster' or 's2-product' (a Sentinel-2 SAFE directory or zip, or a
    directory of band files) for an existing input path (one-line error otherwise)."""
    from . import dicom, nifti, s2_product

    path = Path(path)
    if not path.exists():
        raise HiresError(f"no such file or directory: {path}")
    if s2_product.is_product(path):
        return "s2-product"
    if path.is_dir():
        return "dicom"
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise HiresError(f"cannot read {path}: {exc.strerror or type(exc).__name__}") from None
    if size == 0:
        raise HiresError(f"cannot read {path}: the file is empty")
    if nifti.is_nifti(path):
        return "nifti"
    if dicom.is_dicom_file(path):
        return "dicom"
    if path.suffix.lower() in (".dcm", ".dicom"):
        raise HiresError(f"cannot read {path}: not a readable DICOM file (truncated or corrupt)")
    return "raster"


def read(path, series: str | None = None, bands: tuple[str, ...] | None = None) -> Image:
    """Read a DICOM series/file, a NIfTI volume, a raster or a Sentinel-2 product (``bands``: which,
    by name; default all but B10) into the one Image model."""
    kind = detect(Path(path))
    if bands is not None and kind != "s2-product":
        raise HiresError("--bands applies to Sentinel-2 products (a .SAFE directory or .zip, or a directory of band files)")
    if kind == "dicom":
        from .dicom import read_dicom
        return read_dicom(Path(path), series=series)
    if series is not None:
        raise HiresError("--series only applies to DICOM input")
    if kind == "s2-product":
        from .s2_bands import read_product
        return read_product(Path(path), bands)
    if kind == "nifti":
        from .nifti import read_nifti
        return read_nifti(Path(path))
    from .raster import read_raster
    return read_raster(Path(path))


def output_kind(image: Image, path: Path) -> str:
    """Writer for ``path``: .nii/.nii.gz → NIfTI, .tif/.tiff → GeoTIFF, other → DICOM series."""
    name = str(path).lower()
    if name.endswith((".nii", ".nii.gz")):
        kind = "nifti"
    elif name.endswith((".tif", ".tiff")):
        kind = "raster"
    elif Path(path).suffix and Path(path).suffix.lower() not in (".dcm",):
        raise HiresError(f"cannot write '{Path(path).suffix}': use .tif/.tiff, .nii/.nii.gz or a directory for DICOM")
    else:
        kind = "dicom"
    if (kind == "raster") != (image.kind == "raster"):
        want = "a .tif/.tiff path" if image.kind == "raster" else "a .nii.gz path or a DICOM directory"
        raise HiresError(f"cannot write a {image.kind} image to {path}: use {want}")
    if kind == "dicom" and image.kind != "dicom":
        raise HiresError("DICOM output needs a DICOM source series; write .nii.gz instead")
    return kind


def write_to(image: Image, path: Path, kind: str, cog: bool = False, description: str = "") -> None:
    """Write ``image`` to exactly ``path`` (a temporary name chosen by the caller)."""
    if kind == "nifti":
        from .nifti import write_nifti
        write_nifti(image, path, description)
    elif kind == "raster":
        from .raster import write_raster
        write_raster(image, path, cog=cog, provenance=description)
    else:
        from .dicom import write_dicom_series
        write_dicom_series(image, path, description)


def write(image: Image, path, overwrite: bool = False, cog: bool = False, description: str = "") -> Path:
    """Write ``image`` safely: checks first, temporary name, atomic rename when complete."""
    path = Path(path)
    kind = output_kind(image, path)
    check_output(path, overwrite, src=Path(image.source_path) if image.source_path else None)
    with atomic_output(path, is_dir=kind == "dicom") as tmp:
        write_to(image, tmp, kind, cog=cog, description=description)
    return path
