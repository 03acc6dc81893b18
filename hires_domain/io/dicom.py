"""DICOM: read a series (classic slices or one multi-frame object) into an Image; write a
derived series back as classic single-frame files.

Geometry follows ``geometry``: the affine maps (slice, row, column) pixel-centre indices to
patient LPS mm. Slices are sorted by position along the slice normal. Messages never carry
patient identifiers: only file names, UIDs, descriptions and counts.
"""

from __future__ import annotations

import copy
import re
import struct
import warnings
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import get_decoder
from pydicom.uid import (
    CTImageStorage, EnhancedCTImageStorage, EnhancedMRImageStorage, ExplicitVRLittleEndian,
    LegacyConvertedEnhancedCTImageStorage, LegacyConvertedEnhancedMRImageStorage,
    MRImageStorage, SegmentationStorage, generate_uid,
)
from pydicom.valuerep import format_number_as_ds

from .. import geometry
from ..intensity import mark_ct_padding
from ..errors import HiresError, one_line
from ..image import Image
from .common import cast_to_dtype, is_temporary

_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_PIXEL_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)
_NON_IMAGE = {SegmentationStorage}
_CLASSIC = {  # multi-frame SOP class -> classic single-frame SOP class written for it
    EnhancedCTImageStorage: CTImageStorage, LegacyConvertedEnhancedCTImageStorage: CTImageStorage,
    EnhancedMRImageStorage: MRImageStorage, LegacyConvertedEnhancedMRImageStorage: MRImageStorage,
}
# functional group macro -> (attribute in the macro, classic attribute) lifted per frame
_LIFT = {
    "PixelValueTransformationSequence": (("RescaleType", "RescaleType"),),
    "FrameVOILUTSequence": (("WindowCenter", "WindowCenter"), ("WindowWidth", "WindowWidth")),
    "FrameContentSequence": (("FrameAcquisitionNumber", "AcquisitionNumber"),),
    "FrameAnatomySequence": (("FrameLaterality", "ImageLaterality"),),
    "CTXRayDetailsSequence": (("KVP", "KVP"), ("FilterType", "FilterType"), ("FocalSpots", "FocalSpots")),
    "CTExposureSequence": (("XRayTubeCurrentInmA", "XRayTubeCurrent"), ("ExposureTimeInms", "ExposureTime")),
    "CTReconstructionSequence": (("ConvolutionKernel", "ConvolutionKernel"),
                                 ("ReconstructionDiameter", "ReconstructionDiameter")),
    "MRTimingAndRelatedParametersSequence": (("RepetitionTime", "RepetitionTime"),
                                             ("FlipAngle", "FlipAngle"), ("EchoTrainLength", "EchoTrainLength")),
    "MREchoSequence": (("EffectiveEchoTime", "EchoTime"),),
}
# classic attributes of Type 1/2 that multi-frame objects do not carry at the top level
_CLASSIC_DEFAULTS = {
    "CT": {"KVP": None, "AcquisitionNumber": None},
    "MR": {"ScanningSequence": "RM", "SequenceVariant": "NONE", "ScanOptions": None,
           "MRAcquisitionType": None, "RepetitionTime": None, "EchoTime": None, "EchoTrainLength": None},
}
_MULTIFRAME_ONLY = (
    "SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence", "NumberOfFrames",
    "DimensionOrganizationSequence", "DimensionIndexSequence", "DimensionOrganizationType",
    "PixelPresentation", "VolumetricProperties", "VolumeBasedCalculationTechnique",
    "ComplexImageComponent", "AcquisitionContrast", "ContentQualification", "PresentationLUTShape",
    "SourceImageEvidenceSequence", "ReferencedImageEvidenceSequence", "ConcatenationUID",
)
# attributes that no longer hold once pixels are resampled and re-encoded
_STALE = (
    "SmallestImagePixelValue", "LargestImagePixelValue", "SmallestPixelValueInSeries",
    "LargestPixelValueInSeries", "PixelPaddingValue", "PixelPaddingRangeLimit", "ModalityLUTSequence",
    "RedPaletteColorLookupTableDescriptor", "GreenPaletteColorLookupTableDescriptor",
    "BluePaletteColorLookupTableDescriptor", "RedPaletteColorLookupTableData",
    "GreenPaletteColorLookupTableData", "BluePaletteColorLookupTableData", "IconImageSequence",
    "DerivationCodeSequence", "SourceImageSequence",
)


def is_dicom_file(path: Path) -> bool:
    """True for a DICOM file: 'DICM' at byte 128, or a preamble-less dataset pydicom can parse."""
    try:
        with open(path, "rb") as f:
            f.seek(128)
            if f.read(4) == b"DICM":
                return True
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, stop_before_pixels=True, force=True, defer_size="1 KB")
        return "SOPClassUID" in ds
    except Exception:  # any parse failure means "not DICOM" for this probe
        return False


def list_series(path: Path) -> list[dict]:
    """One dict per image series under ``path``: uid, description, modality, slices, rows, columns."""
    return _summaries(_series(Path(path)))


def read_dicom(path: Path, series: str | None = None) -> Image:
    """Read one series (a directory, a single file or a multi-frame object) as float32 (1, z, y, x).

    Rescale slope/intercept are applied (CT in HU). ``series`` picks a SeriesInstanceUID when
    the directory holds several.
    """
    path = Path(path)
    groups = _series(path)
    if series is None and len(groups) > 1:
        listing = "; ".join(
            f'{s["uid"]} "{s["description"]}" ({s["slices"]} slices)' for s in _summaries(groups))
        raise HiresError(f"directory holds {len(groups)} series, pick one with --series: {listing}")
    uid = series if series is not None else next(iter(groups))
    if uid not in groups:
        raise HiresError(f"series {uid} not found in {path}; it holds: {', '.join(groups)}")
    items = groups[uid]
    planes = _sorted_planes(items)
    decoded: dict[int, np.ndarray] = {}
    for p in planes:
        if id(p.ds) not in decoded:
            decoded[id(p.ds)] = _decode(p.ds, p.path)
    data = np.stack([p.slope * decoded[id(p.ds)][(p.frame or 1) - 1].astype(np.float64) + p.intercept
                     for p in planes])
    for _, ds in items:
        for kw in _PIXEL_KEYWORDS:
            if kw in ds:
                delattr(ds, kw)
    first = planes[0]
    modality = str(first.ds.get("Modality", ""))
    units = first.rescale_type or ("HU" if modality == "CT" else "")
    affine = _affine(planes)
    data = data.astype(np.float32)
    nodata = mark_ct_padding(data, _padding_hu(first)) if units == "HU" else None
    return Image(
        data=data[None], affine=affine, frame="LPS", kind="dicom", units=units, nodata=nodata,
        meta={"headers": [p.ds for p in planes], "frames": [p.frame for p in planes],
              "source_affine": affine, "series_uid": uid, "modality": modality},
        source_path=str(path),
    )


def _padding_hu(plane: _Plane) -> tuple[float, float] | None:
    """PixelPaddingValue (..PixelPaddingRangeLimit) in HU, or None when the header has none."""
    ds = plane.ds
    if ds.get("PixelPaddingValue") is None:
        return None
    try:
        ppv = float(ds.PixelPaddingValue)
        limit = float(ds.get("PixelPaddingRangeLimit", ppv))
    except (TypeError, ValueError):
        raise HiresError(f"cannot read {plane.path}: corrupt DICOM header (PixelPaddingValue "
                         f"{_short(ds.PixelPaddingValue)})") from None
    return plane.slope * ppv + plane.intercept, plane.slope * limit + plane.intercept


def write_dicom_series(image: Image, out_dir: Path, description: str) -> list[Path]:
    """Write ``image`` as a derived series of classic single-frame files IM00001.dcm... in ``out_dir``.

    New series/instance UIDs, DERIVED image type, ``description`` as DerivationDescription,
    SourceImageSequence to the nearest source slice(s), geometry from ``image.affine`` and
    int16 pixels with a rescale slope that fits the values.
    """
    if image.kind != "dicom" or "headers" not in image.meta:
        raise HiresError("DICOM output needs a DICOM source series; write .nii.gz instead")
    if image.channels != 1:
        raise HiresError(f"DICOM output needs one channel, the image has {image.channels}")
    headers, frames = image.meta["headers"], image.meta["frames"]
    if frames[0] is not None and headers[0].SOPClassUID not in _CLASSIC:
        raise HiresError(f"cannot write a derived series for {headers[0].SOPClassUID.name} sources; "
                         "write .nii.gz instead")
    data = image.array()[0]
    stored, slope = _encode(data, min(_plane(headers[0], frames[0], "").slope, 1.0))
    spacing, dirs = geometry.spacing(image.affine), geometry.directions(image.affine)
    zs = np.arange(data.shape[0])
    positions = geometry.world_of(image.affine, np.stack([zs, 0 * zs, 0 * zs], -1))
    source_z = geometry.index_of(image.meta["source_affine"], positions)[:, 0]
    source_step = geometry.spacing(image.meta["source_affine"])[0]
    first = headers[0]
    model = re.search(r"model=(\S+)", description)
    suffix = f" [hires {model.group(1) if model else 'sr'}]"
    now = datetime.now()
    series = {
        "SeriesInstanceUID": generate_uid(),
        "SeriesNumber": _int_or_zero(first.get("SeriesNumber")) + 1000,
        "SeriesDescription": str(first.get("SeriesDescription", ""))[:64 - len(suffix)] + suffix,
        "SeriesDate": now.strftime("%Y%m%d"), "SeriesTime": now.strftime("%H%M%S"),
        "ContentDate": now.strftime("%Y%m%d"), "ContentTime": now.strftime("%H%M%S"),
        "InstanceCreationDate": now.strftime("%Y%m%d"), "InstanceCreationTime": now.strftime("%H%M%S"),
        "DerivationDescription": description[:1024],
        "ImageOrientationPatient": _ds(np.concatenate([dirs[:, 2], dirs[:, 1]])),
        "PixelSpacing": _ds(spacing[[1, 2]]),
        "Rows": data.shape[1], "Columns": data.shape[2],
        "SamplesPerPixel": 1, "BitsAllocated": 16, "BitsStored": 16, "HighBit": 15,
        "PixelRepresentation": 1, "RescaleIntercept": "0", "RescaleSlope": _ds([slope])[0],
    }
    if image.nodata is not None and np.isfinite(image.nodata):  # CT padding stays padding
        series["PixelPaddingValue"] = int(cast_to_dtype(np.float32(image.nodata / slope), np.int16)[0])
    bases: dict[int, Dataset] = {}
    paths = []
    def clip(i: float) -> int:
        return int(np.clip(i, 0, len(headers) - 1))

    for z, t in enumerate(source_z):  # t: the slice's index in the source grid
        nearest, refs = clip(np.rint(t)), sorted({clip(np.floor(t)), clip(np.ceil(t))})
        src = headers[nearest]
        if id(src) not in bases:
            bases[id(src)] = _classic_base(src)
        ds = copy.deepcopy(bases[id(src)])
        if frames[nearest] is not None:
            _lift_frame(ds, src, frames[nearest])
        for kw in _STALE:
            if kw in ds:
                delattr(ds, kw)
        for keyword, value in series.items():
            setattr(ds, keyword, value)
        ds.SOPClassUID = _CLASSIC.get(src.SOPClassUID, src.SOPClassUID)
        ds.SOPInstanceUID = generate_uid()
        ds.InstanceNumber = z + 1
        ds.ImageType = ["DERIVED", "SECONDARY", *list(src.get("ImageType", []))[2:]]
        ds.ImagePositionPatient = _ds(positions[z])
        if len(source_z) != len(headers):
            ds.SpacingBetweenSlices = _ds(spacing[:1])[0]
            if ds.get("SliceThickness"):
                ds.SliceThickness = _ds([float(ds.SliceThickness) * spacing[0] / source_step])[0]
            if "SliceLocation" in ds:
                del ds.SliceLocation
        ds.SourceImageSequence = [_reference(headers[r], frames[r]) for r in refs]
        ds.PixelData = stored[z].astype("<i2").tobytes()
        ds["PixelData"].VR = "OW"
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = Path(out_dir) / f"IM{z + 1:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


# --- reading -----------------------------------------------------------------------------------

@dataclass
class _Plane:
    """One image plane: a classic file or one frame (1-based ``frame``) of a multi-frame object."""

    ds: Dataset
    path: str
    frame: int | None
    position: np.ndarray
    orientation: np.ndarray
    spacing: np.ndarray
    thickness: float
    slope: float
    intercept: float
    rescale_type: str


def _series(path: Path) -> dict[str, list[tuple[Path, Dataset]]]:
    """Image objects under ``path`` grouped by SeriesInstanceUID (first-seen order)."""
    if not path.exists():
        raise HiresError(f"{path} does not exist")
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    groups: dict[str, list[tuple[Path, Dataset]]] = {}
    for f in files:
        if f != path and is_temporary(f.relative_to(path)):
            continue  # an unfinished or abandoned output of ours (io.common.atomic_output), never data
        if not is_dicom_file(f):
            continue
        ds = _read_header(f)
        has_pixels = any(k in ds for k in _PIXEL_KEYWORDS)
        if "SOPClassUID" not in ds or ("Rows" in ds and not has_pixels):  # cut before its pixels
            raise HiresError(f"cannot read {f}: truncated or corrupt DICOM file")
        if has_pixels and "Rows" in ds and ds.SOPClassUID not in _NON_IMAGE:
            _check_image_header(ds, f)
            groups.setdefault(str(ds.get("SeriesInstanceUID", "")), []).append((f, ds))
    if not groups:
        raise HiresError(f"no DICOM images in {path}")
    return groups


def _read_header(f: Path) -> Dataset:
    """Parse ``f`` with every header value converted now (pixels stay on disk until decoded), so
    that a corrupt header fails here, naming the file, rather than later while enhancing or writing."""
    try:
        ds = pydicom.dcmread(f, defer_size="4 KB", force=True)
        convert_header(ds.file_meta)
        convert_header(ds)
    except (InvalidDicomError, OSError, EOFError, struct.error) as exc:
        why = "header ends mid-element" if isinstance(exc, struct.error) else type(exc).__name__
        raise HiresError(f"cannot read {f}: truncated or corrupt DICOM file ({why})") from None
    except Exception as exc:  # noqa: BLE001 - pydicom raises arbitrary types on corrupt bytes
        # (NotImplementedError for an unknown VR, ValueError/TypeError for undecodable values,
        # BytesLengthException, UnicodeDecodeError, ...): all mean a corrupt header here
        raise HiresError(f"cannot read {f}: corrupt DICOM header ({_first_line(exc)})") from None
    return ds


def convert_header(ds: Dataset) -> None:
    """Convert every raw element (recursively into sequences) except the pixel data and private
    elements (never used or written back: a vendor's odd private value must not refuse a scan)."""
    for tag in list(ds.keys()):
        if tag in _PIXEL_TAGS or tag.is_private:
            continue
        elem = ds[tag]
        if elem.VR == "SQ":
            for item in elem.value or []:
                convert_header(item)


def _first_line(exc: BaseException) -> str:
    """A library's message on one line, at most 160 characters (its type when it has none)."""
    text = one_line(exc) or type(exc).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def _check_image_header(ds: Dataset, f: Path) -> None:
    """The attributes that size the pixel data: single integers in range, or a one-line error;
    and the instance UID a derived series refers back to."""
    if not str(ds.get("SOPInstanceUID") or "").strip():
        raise HiresError(f"cannot read {f}: corrupt DICOM header (no SOPInstanceUID)")
    for keyword, lo, hi in (("Rows", 1, 65535), ("Columns", 1, 65535), ("NumberOfFrames", 1, 2**31 - 1),
                            ("BitsAllocated", 1, 64), ("SamplesPerPixel", 1, 4)):
        if keyword not in ds and keyword in ("Rows", "Columns"):
            raise HiresError(f"cannot read {f}: corrupt DICOM header (no {keyword})")
        value = ds.get(keyword)
        if value in (None, "") and keyword not in ("Rows", "Columns"):
            continue
        try:
            number = int(value)
            ok = number == float(value) and lo <= number <= hi
        except (TypeError, ValueError, OverflowError):
            ok = False
        if not ok:
            raise HiresError(f"cannot read {f}: corrupt DICOM header ({keyword} {_short(value)})")
    if "PerFrameFunctionalGroupsSequence" in ds:
        frames, items = int(ds.get("NumberOfFrames") or 1), len(ds.PerFrameFunctionalGroupsSequence or [])
        if frames != items:
            raise HiresError(f"cannot read {f}: corrupt DICOM header (NumberOfFrames {frames} but "
                             f"{items} per-frame functional group items)")


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _summaries(groups: dict[str, list[tuple[Path, Dataset]]]) -> list[dict]:
    return [
        {"uid": uid, "description": str(first.get("SeriesDescription", "")),
         "modality": str(first.get("Modality", "")),
         "slices": sum(int(ds.get("NumberOfFrames") or 1) for _, ds in items),
         "rows": int(first.Rows), "columns": int(first.Columns)}
        for uid, items in groups.items()
        for first in [items[0][1]]
    ]


def _sorted_planes(items: list[tuple[Path, Dataset]]) -> list[_Plane]:
    """All planes of a series, checked for one consistent grid and sorted along the normal."""
    planes = [
        _plane(ds, frame, str(f))
        for f, ds in items
        for frame in (range(1, int(ds.NumberOfFrames) + 1) if "PerFrameFunctionalGroupsSequence" in ds else [None])
    ]
    if len(planes) > 1 and any(p.frame is not None for p in planes) and len(items) > 1:
        raise HiresError(f"series has {len(items)} objects, some multi-frame; read one file at a time")
    ref = planes[0]
    for p in planes[1:]:
        if (p.ds.Rows, p.ds.Columns) != (ref.ds.Rows, ref.ds.Columns) or not np.allclose(
                p.orientation, ref.orientation, atol=1e-4) or not np.allclose(p.spacing, ref.spacing, rtol=1e-4):
            raise HiresError(f"inconsistent geometry in series: {p.path} differs from {ref.path} "
                             "(orientation, pixel spacing or matrix size)")
    normal = np.cross(ref.orientation[:3], ref.orientation[3:])
    planes.sort(key=lambda p: float(p.position @ normal))
    steps = np.diff([p.position @ normal for p in planes])
    if len(steps) and steps.min() < 1e-3:
        raise HiresError("series holds several images at one position (echoes, phases or time points): "
                         "not supported")
    if len(steps) and np.ptp(steps) > 0.01 * steps.mean() + 1e-3:
        raise HiresError(f"uneven slice spacing in series ({steps.min():g} to {steps.max():g} mm)")
    return planes


def _plane(ds: Dataset, frame: int | None, path: str) -> _Plane:
    """Geometry and rescale of a classic file, or of one frame from its functional groups."""
    def get(macro: str, keyword: str):
        if frame is None:
            return ds.get(keyword)
        for groups in (ds.PerFrameFunctionalGroupsSequence[frame - 1],
                       (ds.get("SharedFunctionalGroupsSequence") or [None])[0]):
            item = groups.get(macro) if groups is not None else None
            if item and keyword in item[0]:
                return item[0][keyword].value
        return ds.get(keyword)

    ipp = get("PlanePositionSequence", "ImagePositionPatient")
    iop = get("PlaneOrientationSequence", "ImageOrientationPatient")
    pixel_spacing = get("PixelMeasuresSequence", "PixelSpacing")
    if not (ipp and iop and pixel_spacing):
        raise HiresError(f"{path} has no image plane geometry (ImagePositionPatient, "
                         "ImageOrientationPatient, PixelSpacing)")
    if ds.get("SamplesPerPixel", 1) != 1:
        raise HiresError(f"{path}: colour DICOM images are not supported")
    slope = get("PixelValueTransformationSequence", "RescaleSlope")
    intercept = get("PixelValueTransformationSequence", "RescaleIntercept")
    thickness = get("PixelMeasuresSequence", "SliceThickness")
    position = _numbers(ipp, 3, "ImagePositionPatient", path)
    orientation = _numbers(iop, 6, "ImageOrientationPatient", path)
    spacing = _numbers(pixel_spacing, 2, "PixelSpacing", path)
    if min(np.linalg.norm(orientation[:3]), np.linalg.norm(orientation[3:]),
           np.linalg.norm(np.cross(orientation[:3], orientation[3:]))) < 1e-3:
        raise HiresError(f"cannot read {path}: corrupt DICOM header (degenerate ImageOrientationPatient {_short(iop)})")
    if spacing.min() <= 0:
        raise HiresError(f"cannot read {path}: corrupt DICOM header (PixelSpacing {_short(pixel_spacing)})")
    return _Plane(
        ds=ds, path=path, frame=frame, position=position, orientation=orientation, spacing=spacing,
        thickness=float(_numbers(thickness or 0.0, 1, "SliceThickness", path)[0]),
        slope=float(_numbers(1.0 if slope in (None, "") else slope, 1, "RescaleSlope", path)[0]),
        intercept=float(_numbers(0.0 if intercept in (None, "") else intercept, 1, "RescaleIntercept", path)[0]),
        rescale_type=str(get("PixelValueTransformationSequence", "RescaleType") or ""),
    )


def _numbers(value, count: int, keyword: str, path: str) -> np.ndarray:
    """``count`` finite numbers from a DS/IS value, or a one-line error naming the attribute."""
    try:
        numbers = np.asarray(value, dtype=float).ravel()
    except (TypeError, ValueError, OverflowError):
        numbers = np.empty(0)
    if numbers.size != count or not np.all(np.isfinite(numbers)):
        raise HiresError(f"cannot read {path}: corrupt DICOM header ({keyword} {_short(value)})")
    return numbers


def _affine(planes: list[_Plane]) -> np.ndarray:
    """(z, y, x) -> LPS affine: columns slice step, column direction x row spacing, row direction x
    column spacing; origin at the first sorted plane."""
    first, iop = planes[0], planes[0].orientation
    affine = np.eye(4)
    if len(planes) > 1:
        affine[:3, 0] = (planes[-1].position - first.position) / (len(planes) - 1)
    else:
        affine[:3, 0] = np.cross(iop[:3], iop[3:]) * (first.thickness or 1.0)
    affine[:3, 1] = iop[3:] * first.spacing[0]
    affine[:3, 2] = iop[:3] * first.spacing[1]
    affine[:3, 3] = first.position
    return affine


def _decode(ds: Dataset, path: str) -> np.ndarray:
    """Stored values of every frame as (frames, rows, columns); one-line errors name the file."""
    syntax = ds.file_meta.get("TransferSyntaxUID", ExplicitVRLittleEndian)
    try:
        return ds.pixel_array.reshape(-1, ds.Rows, ds.Columns)
    except Exception as exc:  # decoders raise many types (ValueError, RuntimeError, StopIteration, ...)
        try:
            available = get_decoder(syntax).is_available
        except (NotImplementedError, ValueError):  # no decoder for it, or not a transfer syntax UID
            available = False
        if not available:
            raise HiresError(f"cannot decode {path}: {syntax.name} "
                             "(install pylibjpeg-openjpeg / pylibjpeg-libjpeg)") from None
        raise HiresError(f"cannot decode {path}: {syntax.name}, truncated or corrupt pixel data "
                         f"({_first_line(exc)})") from None


# --- writing -----------------------------------------------------------------------------------

def _ds(values) -> list[str]:
    """Decimal strings (at most 16 characters) for DS attributes."""
    return [format_number_as_ds(float(v) + 0.0) for v in values]


def _int_or_zero(value) -> int:
    """An IS value as int; 0 for a missing or unreadable one (pydicom keeps invalid IS as text)."""
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def _encode(data: np.ndarray, slope: float) -> tuple[np.ndarray, float]:
    """int16 stored values and the rescale slope (intercept 0): the source's finer slope when
    the range fits, else the smallest slope that does."""
    if not np.all(np.isfinite(data)):
        raise HiresError("image holds NaN or infinite values; cannot write DICOM")
    peak = float(np.abs(data).max(initial=0.0))
    if peak / slope > 32767:
        slope = peak / 32767
        warnings.warn(f"values up to {peak:g} do not fit int16: stored with rescale slope {slope:g}")
    stored, clipped = cast_to_dtype(data / slope, np.int16)
    if clipped:
        warnings.warn(f"{clipped} pixel values clipped to the int16 range")
    return stored, slope


def _classic_base(src: Dataset) -> Dataset:
    """The source header without private, overlay and multi-frame-only attributes."""
    base = Dataset()
    for elem in src:
        if not (elem.tag.is_private or 0x6000 <= elem.tag.group <= 0x60FF or elem.keyword in _MULTIFRAME_ONLY
                or elem.keyword in _PIXEL_KEYWORDS or elem.tag.group == 0x0002):  # file meta: not dataset
            base.add(copy.deepcopy(elem))
    if "PerFrameFunctionalGroupsSequence" in src:
        for keyword, value in _CLASSIC_DEFAULTS.get(str(src.get("Modality", "")), {}).items():
            base.setdefault(keyword, value)
    return base


def _lift_frame(ds: Dataset, src: Dataset, frame: int) -> None:
    """Copy classic attributes out of the multi-frame functional groups of ``frame`` (shared first)."""
    for groups in ((src.get("SharedFunctionalGroupsSequence") or [None])[0],
                   src.PerFrameFunctionalGroupsSequence[frame - 1]):
        for macro, pairs in _LIFT.items():
            item = groups.get(macro) if groups is not None else None
            for source_kw, classic_kw in pairs:
                if item and source_kw in item[0]:
                    setattr(ds, classic_kw, item[0][source_kw].value)
    ds.SliceThickness = _plane(src, frame, "").thickness or None


def _reference(src: Dataset, frame: int | None) -> Dataset:
    """A SourceImageSequence item pointing at a source instance (and frame)."""
    item = Dataset()
    item.ReferencedSOPClassUID = src.SOPClassUID
    item.ReferencedSOPInstanceUID = src.SOPInstanceUID
    if frame is not None:
        item.ReferencedFrameNumber = frame
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator = "121322", "DCM"
    code.CodeMeaning = "Source image for image processing operation"
    item.PurposeOfReferenceCodeSequence = [code]
    return item
