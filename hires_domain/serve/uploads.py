"""Inputs of a task: format sniffed from content (never the name), DICOM zips unpacked safely,
zipped Sentinel-2 SAFE products kept as they are (read through GDAL's /vsizip/, never unpacked)."""

from __future__ import annotations

import gzip
import shutil
import stat
import struct
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from ..errors import HiresError
from ..io.dicom import is_dicom_file
from .security import Limits

CHUNK = 1 << 20
UNSUPPORTED = ("unsupported or corrupt file: expected a GeoTIFF/COG, JPEG 2000, NIfTI or DICOM file, "
               "or a zip of a DICOM series or of a Sentinel-2 SAFE product")
# input kind → output formats it can give (the first is the default)
OUTPUT_FORMATS = {"raster": ("gtiff", "cog"), "nifti": ("nifti",), "dicom": ("dicom-zip", "nifti")}
RESULT_NAMES = {"gtiff": "result.tif", "cog": "result.tif", "nifti": "result.nii.gz", "dicom-zip": "result.zip"}
_TIFF = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_JP2 = (b"\x00\x00\x00\x0cjP  \r\n\x87\n", b"\xff\x4f\xff\x51")


def _is_nifti_header(head: bytes) -> bool:
    """NIfTI-1 (348-byte header, magic n+1/ni1 at 344) or NIfTI-2 (540 bytes, magic n+2/ni2 at 4)."""
    for order in "<>":
        if len(head) >= 348 and struct.unpack(order + "i", head[:4])[0] == 348 and head[344:348] in (b"n+1\0", b"ni1\0"):
            return True
        if len(head) >= 12 and struct.unpack(order + "i", head[:4])[0] == 540 and head[4:8] in (b"n+2\0", b"ni2\0"):
            return True
    return False


def sniff(path: Path) -> str:
    """'zip', 'nifti', 'nifti-gz', 'dicom', 'tiff' or 'jp2' from the file's first bytes."""
    with open(path, "rb") as f:
        head = f.read(1024)
    if head.startswith(b"PK\x03\x04") and zipfile.is_zipfile(path):
        return "zip"
    if head.startswith(b"\x1f\x8b"):
        try:
            with gzip.open(path) as g:
                if _is_nifti_header(g.read(352)):
                    return "nifti-gz"
        except (OSError, EOFError, zlib.error):
            pass
        raise HiresError(UNSUPPORTED + " (a gzip file that is not a NIfTI volume)")
    if _is_nifti_header(head):
        return "nifti"
    if head.startswith(_TIFF):
        return "tiff"
    if head.startswith(_JP2):
        return "jp2"
    if is_dicom_file(path):
        return "dicom"
    raise HiresError(UNSUPPORTED)


_NAMES = {"nifti": "input.nii", "nifti-gz": "input.nii.gz", "tiff": "input.tif", "jp2": "input.jp2",
          "dicom": "input.dcm"}
KINDS = {"nifti": "nifti", "nifti-gz": "nifti", "tiff": "raster", "jp2": "raster", "dicom": "dicom", "zip": "dicom"}


def is_safe_zip(path: Path) -> bool:
    """A zip whose members lie in a ``*.SAFE/`` tree (a Sentinel-2 product as downloaded)."""
    try:
        with zipfile.ZipFile(path) as zf:
            return any(part.upper().endswith(".SAFE") for name in zf.namelist()[:64]
                       for part in PurePosixPath(name.replace("\\", "/")).parts[:-1])
    except (zipfile.BadZipFile, OSError):
        return False


def place_upload(upload: Path, task_dir: Path, limits: Limits) -> tuple[Path, str]:
    """Move an uploaded file into ``task_dir`` under a name its reader understands (a DICOM zip
    is unpacked into ``task_dir/input``, a SAFE zip kept as ``input.zip``); returns (input path,
    kind: raster | nifti | dicom)."""
    fmt = sniff(upload)
    if fmt == "zip" and is_safe_zip(upload):
        dest = task_dir / "input.zip"
        upload.rename(dest)
        return dest, "raster"
    if fmt == "zip":
        dest = task_dir / "input"
        extract_dicom_zip(upload, dest, limits)
        upload.unlink()
        return dest, "dicom"
    dest = task_dir / _NAMES[fmt]
    upload.rename(dest)
    return dest, KINDS[fmt]


def inspect_source(path: Path, task_dir: Path, limits: Limits) -> tuple[Path, str]:
    """A ``source`` under the allowed root: read in place (a directory is a Sentinel-2 product or
    a DICOM series, a SAFE zip a product), a DICOM zip unpacked into ``task_dir/input``.
    Returns (input path, kind)."""
    from ..io.s2_product import is_product

    if path.is_dir():
        return path, "raster" if is_product(path) else "dicom"
    fmt = sniff(path)
    if fmt == "zip" and is_safe_zip(path):
        return path, "raster"
    if fmt == "zip":
        extract_dicom_zip(path, task_dir / "input", limits)
        return task_dir / "input", "dicom"
    if fmt in ("nifti", "nifti-gz") and not path.name.lower().endswith((".nii", ".nii.gz")):
        link = task_dir / _NAMES[fmt]  # nibabel needs the suffix: a link, the file is not copied
        link.symlink_to(path)
        return link, "nifti"
    return path, KINDS[fmt]


def _unsafe(info: zipfile.ZipInfo) -> bool:
    name = info.filename.replace("\\", "/")
    parts = PurePosixPath(name).parts
    is_link = stat.S_ISLNK(info.external_attr >> 16)
    return name.startswith("/") or (parts and ":" in parts[0]) or ".." in parts or is_link


def extract_dicom_zip(zpath: Path, dest: Path, limits: Limits) -> int:
    """Unpack the files of a zip into ``dest`` as 000000.dcm, 000001.dcm, ... (member names are
    never used as paths). Refuses, before writing anything, absolute or '..' names, links,
    encrypted members, more than ``limits.max_zip_files`` files or a declared total above
    ``limits.max_unzipped``; the bytes actually written are counted against it too (a header
    can lie). Returns the bytes written."""
    try:
        zf = zipfile.ZipFile(zpath)
    except (zipfile.BadZipFile, OSError):
        raise HiresError("corrupt zip file") from None
    with zf:
        members = [i for i in zf.infolist() if not i.is_dir()]
        for n, info in enumerate(members):
            if _unsafe(info):
                raise HiresError(f"zip member {n + 1} has an unsafe path (absolute, '..' or a link): refused")
            if info.flag_bits & 0x1:
                raise HiresError("encrypted zip members are not supported")
        if len(members) > limits.max_zip_files:
            raise HiresError(f"zip holds {len(members)} files, more than the limit of {limits.max_zip_files}")
        declared = sum(i.file_size for i in members)
        if declared > limits.max_unzipped:
            raise HiresError(f"zip would unpack to {declared} bytes, more than the limit of {limits.max_unzipped}")
        dest.mkdir(parents=True)
        written = 0
        try:
            for n, info in enumerate(members):
                with zf.open(info) as src, open(dest / f"{n:06d}.dcm", "wb") as out:
                    while chunk := src.read(CHUNK):
                        written += len(chunk)
                        if written > limits.max_unzipped:
                            raise HiresError(f"zip unpacks to more than the limit of {limits.max_unzipped} bytes")
                        out.write(chunk)
        except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as exc:
            shutil.rmtree(dest, ignore_errors=True)
            raise HiresError(f"corrupt zip file ({type(exc).__name__})") from None
        except HiresError:
            shutil.rmtree(dest, ignore_errors=True)
            raise
    if not any(is_dicom_file(p) for p in dest.iterdir()):
        shutil.rmtree(dest, ignore_errors=True)
        raise HiresError("the zip holds no DICOM files")
    return written


def output_format(kind: str, requested: str | None) -> str:
    """The output format for an input ``kind``: the requested one if it fits, else the default."""
    choices = OUTPUT_FORMATS[kind]
    if requested in (None, ""):
        return choices[0]
    if requested not in choices:
        known = sorted({f for fs in OUTPUT_FORMATS.values() for f in fs})
        if requested not in known:
            raise HiresError(f"unknown output_format '{requested}'; known: {', '.join(known)}")
        raise HiresError(f"output_format '{requested}' does not fit a {kind} input; use {' or '.join(choices)}")
    return requested
