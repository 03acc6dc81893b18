"""Build the bundled DICOM sample: 12 axial CT slices cropped from TotalSegmentator's head atlas.

Source: the `totalsegmentator` wheel, totalsegmentator/resources/ct_brain_atlas_1mm.nii.gz
(Apache-2.0). Usage: python datasets/samples/make_ct_series.py [ATLAS] [OUT_DIR]

A 128x128 mm crop at 1 mm in-plane, every other 1 mm slice (2 mm spacing), written as classic
CT Image Storage with pydicom's anonymised CT_small.dcm header as template. Geometry is the
atlas affine converted RAS -> LPS, with both in-plane axes flipped so the slices have the
usual axial orientation (rows run to patient left, columns to posterior). Pixels are stored
like a scanner does: uint16 (12 bits) with RescaleIntercept -1024. InstanceNumbers and file
names are shuffled on purpose so readers must sort by position. Deterministic: fixed UIDs
(hashed from fixed strings), dates and shuffles.
"""

import shutil
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
from pydicom.data import get_testdata_file
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from hires_domain import geometry

ATLAS = "/tmp/dl/ts/totalsegmentator/resources/ct_brain_atlas_1mm.nii.gz"
OUT = Path(__file__).resolve().parents[2] / "hires_domain" / "samples" / "ct_head_series"
README = """\
hires-domain sample CT series (12 axial slices, 128 x 128, 1 mm pixels, 2 mm slice spacing)

Pixels: a crop of ct_brain_atlas_1mm.nii.gz from TotalSegmentator
(https://github.com/wasserth/TotalSegmentator, resources/, Apache-2.0), every other slice.
Header: pydicom's anonymised test file CT_small.dcm as template; patient 'Anonymous^Atlas'.
This is not a patient scan. Built by datasets/samples/make_ct_series.py (deterministic);
InstanceNumbers and file names are deliberately not in spatial order.
"""


def atlas_crop(atlas: str = ATLAS) -> tuple[np.ndarray, np.ndarray]:
    """The sample's HU volume (z, y, x) as int16 and its LPS affine (our pixel-centre form)."""
    img = nib.load(atlas)
    cx, cy, cz = (n // 2 for n in img.shape)
    crop = img.slicer[cx - 64:cx + 64, cy - 64:cy + 64, cz - 6:cz + 18:2]
    vol = np.asarray(crop.dataobj).transpose(2, 1, 0)
    affine = geometry.convert_frame(geometry.affine_from_nifti(crop.affine), "RAS", "LPS")
    for axis in (1, 2):  # flip y and x: index i -> n-1-i
        affine[:3, 3] += affine[:3, axis] * (vol.shape[axis] - 1)
        affine[:3, axis] *= -1
    return np.flip(vol, (1, 2)).astype(np.int16), affine


def _ds(values) -> list[str]:
    return [pydicom.valuerep.format_number_as_ds(float(v) + 0.0) for v in values]


def _template() -> pydicom.Dataset:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.remove_private_tags()
    for kw in ("OtherPatientIDsSequence", "PatientWeight", "Laterality", "PixelPaddingValue",
               "AdditionalPatientHistory", "ImageComments", "PixelData"):
        if kw in ds:
            delattr(ds, kw)
    ds.PatientName = "Anonymous^Atlas"
    ds.PatientID = "HIRES-SAMPLE"
    ds.PatientBirthDate = ""
    ds.PatientAge = ""
    ds.PatientPosition = "HFS"
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = "20240101"
    ds.InstanceCreationDate = "20240101"
    ds.StudyTime, ds.SeriesTime, ds.AcquisitionTime, ds.ContentTime = "090000", "090500", "090510", "090520"
    ds.InstanceCreationTime = "090530"
    ds.StudyDescription = "CT HEAD (hires-domain sample)"
    ds.SeriesDescription = "AX HEAD 2mm"
    ds.StudyID = "1"
    ds.SeriesNumber = 2
    ds.AcquisitionNumber = 1
    ds.StudyInstanceUID = generate_uid(entropy_srcs=["hires-domain ct_head_series study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=["hires-domain ct_head_series series"])
    ds.FrameOfReferenceUID = generate_uid(entropy_srcs=["hires-domain ct_head_series frame"])
    ds.BodyPartExamined = "HEAD"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.ConvolutionKernel = "STANDARD"
    ds.WindowCenter, ds.WindowWidth = "40", "80"
    return ds


def main(atlas: str = ATLAS, out: Path = OUT) -> None:
    out = Path(out)
    vol, affine = atlas_crop(atlas)
    template = _template()
    n = vol.shape[0]
    rng = np.random.default_rng(20240101)
    numbers, names = rng.permutation(n) + 1, rng.permutation(n) + 1
    dirs, spacing = geometry.directions(affine), geometry.spacing(affine)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for z in range(n):
        ds = template.copy()
        ds.file_meta = template.file_meta.copy()
        ds.SOPInstanceUID = generate_uid(entropy_srcs=[f"hires-domain ct_head_series {z}"])
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.InstanceNumber = int(numbers[z])
        ipp = geometry.world_of(affine, (z, 0, 0))
        ds.ImagePositionPatient = _ds(ipp)
        ds.ImageOrientationPatient = _ds(np.concatenate([dirs[:, 2], dirs[:, 1]]))
        ds.PixelSpacing = _ds(spacing[[1, 2]])
        ds.SliceThickness = "1"  # every other 1 mm atlas slice: 1 mm slices, 2 mm apart
        ds.SpacingBetweenSlices = _ds(spacing[:1])[0]
        ds.SliceLocation = _ds(ipp[2:])[0]
        ds.Rows, ds.Columns = vol.shape[1:]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "-1024", "1", "HU"
        ds.PixelData = (vol[z].astype(np.int32) + 1024).astype("<u2").tobytes()
        ds["PixelData"].VR = "OW"
        ds.save_as(out / f"CT{names[z]:05d}.dcm", enforce_file_format=True)
    (out / "README.txt").write_text(README)
    print(f"wrote {n} slices {vol.shape[1:]} to {out}")


if __name__ == "__main__":
    main(*sys.argv[1:])
