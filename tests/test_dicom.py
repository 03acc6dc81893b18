"""DICOM reader and derived-series writer on real files (bundled sample, pydicom test data)."""

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from hires_domain import geometry
from hires_domain.errors import HiresError
from hires_domain.io.dicom import is_dicom_file, list_series, read_dicom, write_dicom_series
from hires_domain.io.nifti import read_nifti

from support import dciodvfy_errors

SAMPLES = Path(__file__).resolve().parents[1] / "hires_domain" / "samples"
SERIES = SAMPLES / "ct_head_series"
DICOM = Path(__file__).parent / "data" / "dicom"
DESCRIPTION = "hires-domain 0.1.0 model=bicubic scale=2 tile=256 overlap=32"


def upscale_inplane(image):
    data = np.repeat(np.repeat(image.data, 2, -1), 2, -2)
    return image.with_data(data, factors=(1, 2, 2))


def test_sample_series_sorted_with_atlas_values_and_geometry():
    files = sorted(SERIES.glob("*.dcm"))
    numbers = [int(pydicom.dcmread(f, stop_before_pixels=True).InstanceNumber) for f in files]
    assert numbers != sorted(numbers)  # the sample really is shuffled
    image = read_dicom(SERIES)
    assert image.shape == (1, 12, 128, 128)
    assert (image.frame, image.kind, image.units, image.data.dtype) == ("LPS", "dicom", "HU", np.float32)
    normal = np.cross(*np.asarray(image.meta["headers"][0].ImageOrientationPatient, float).reshape(2, 3))
    along = [float(np.asarray(h.ImagePositionPatient, float) @ normal) for h in image.meta["headers"]]
    assert np.all(np.diff(along) > 0)
    # every voxel centre lands on the bundled NIfTI crop of the same atlas, with the same HU
    atlas = read_nifti(SAMPLES / "ct_head.nii.gz")
    atlas_lps = geometry.convert_frame(atlas.affine, "RAS", "LPS")
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in image.spatial_shape], indexing="ij"), -1).reshape(-1, 3)
    found = geometry.index_of(atlas_lps, geometry.world_of(image.affine, idx))
    expected = np.stack([2 + 2 * idx[:, 0], 127 - idx[:, 1], 127 - idx[:, 2]], -1)
    np.testing.assert_allclose(found, expected, atol=1e-3)
    values = atlas.data[0][tuple(expected.T)]
    np.testing.assert_array_equal(image.data[0].reshape(-1), values)
    assert values.max() > 200 and len(np.unique(values)) > 100  # real tissue, not an empty crop


@pytest.mark.parametrize("path", [get_testdata_file("CT_small.dcm"), DICOM / "bad_sequence.dcm",
                                  DICOM / "explicit_VR-UN.dcm"])
def test_single_files_decode_to_hu(path):
    ds = pydicom.dcmread(path)
    image = read_dicom(Path(path))
    assert image.shape == (1, 1, ds.Rows, ds.Columns)
    expected = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_array_equal(image.data[0, 0], expected.astype(np.float32))
    assert image.data.min() < -500  # air in HU: the intercept was applied
    np.testing.assert_allclose(image.affine[:3, 3], np.asarray(ds.ImagePositionPatient, float))
    np.testing.assert_allclose(image.spacing[1:], np.asarray(ds.PixelSpacing, float))


def test_multiframe_geometry_from_functional_groups():
    path = DICOM / "eCT_Supplemental.dcm"
    ds = pydicom.dcmread(path)
    image = read_dicom(path)
    assert image.shape == (1, 2, 512, 512)
    frames = ds.PerFrameFunctionalGroupsSequence
    # normal is -z for this orientation, so frame 2 (z = -149) comes first
    assert image.meta["frames"] == [2, 1]
    np.testing.assert_allclose(image.affine[:3, 3], frames[1].PlanePositionSequence[0].ImagePositionPatient)
    np.testing.assert_allclose(image.affine[:3, 0], [0, 0, -10])
    np.testing.assert_allclose(image.spacing[1:], [0.388672, 0.388672])
    np.testing.assert_allclose(image.affine[:3, 2], [-0.388672, 0, 0])
    np.testing.assert_array_equal(image.data[0, 0], ds.pixel_array[1] - 1024.0)


def test_several_series_need_a_choice(tmp_path):
    for f in SERIES.glob("*.dcm"):
        shutil.copy(f, tmp_path)
    shutil.copy(get_testdata_file("CT_small.dcm"), tmp_path / "other.dcm")
    (tmp_path / "notes.txt").write_text("not DICOM")
    shutil.copy(DICOM / "liver.dcm", tmp_path)  # a SEG object: skipped
    listed = {s["uid"]: s for s in list_series(tmp_path)}
    sample_uid = pydicom.dcmread(next(SERIES.glob("*.dcm"))).SeriesInstanceUID
    other_uid = pydicom.dcmread(get_testdata_file("CT_small.dcm")).SeriesInstanceUID
    assert listed[sample_uid]["slices"] == 12 and listed[other_uid]["slices"] == 1
    assert len(listed) == 2 and listed[sample_uid]["rows"] == 128
    with pytest.raises(HiresError) as err:
        read_dicom(tmp_path)
    message = str(err.value)
    assert "\n" not in message and "2 series" in message
    assert f'{sample_uid} "AX HEAD 2mm" (12 slices)' in message and other_uid in message
    assert read_dicom(tmp_path, series=sample_uid).shape == (1, 12, 128, 128)
    assert read_dicom(tmp_path, series=other_uid).shape == (1, 1, 128, 128)
    with pytest.raises(HiresError, match="1.2.3.4 not found"):
        read_dicom(tmp_path, series="1.2.3.4")


def test_not_dicom_and_truncated_files(tmp_path):
    (tmp_path / "a.txt").write_text("hello")
    (tmp_path / "b.bin").write_bytes(bytes(300))
    assert not is_dicom_file(tmp_path / "a.txt")
    with pytest.raises(HiresError, match="no DICOM images in"):
        read_dicom(tmp_path)
    for source in (next(SERIES.glob("*.dcm")), DICOM / "bad_sequence.dcm"):
        cut = tmp_path / f"cut_{source.name}"
        cut.write_bytes(source.read_bytes()[: source.stat().st_size // 2])
        with pytest.raises(HiresError) as err:
            read_dicom(cut)
        assert str(cut) in str(err.value) and "\n" not in str(err.value)


def test_dicom_without_preamble_is_recognised(tmp_path):
    ds = pydicom.dcmread(next(SERIES.glob("*.dcm")))
    ds.preamble = None
    path = tmp_path / "raw"
    ds.save_as(path, enforce_file_format=False)
    assert path.read_bytes()[128:132] != b"DICM"
    assert is_dicom_file(path)
    assert read_dicom(path).shape == (1, 1, 128, 128)


def test_inconsistent_geometry_and_no_identifiers_in_errors(tmp_path):
    for f in SERIES.glob("*.dcm"):
        shutil.copy(f, tmp_path)
    odd = sorted(tmp_path.glob("*.dcm"))[3]
    ds = pydicom.dcmread(odd)
    ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
    ds.save_as(odd)
    with pytest.raises(HiresError, match="inconsistent geometry") as err:
        read_dicom(tmp_path)
    for identifier in ("Anonymous", "Atlas", "HIRES-SAMPLE"):
        assert identifier not in str(err.value)


@pytest.fixture(scope="module")
def sample():
    return read_dicom(SERIES)


def test_write_derived_inplane(sample, tmp_path):
    image = upscale_inplane(sample)
    paths = write_dicom_series(image, tmp_path, DESCRIPTION)
    assert [p.name for p in paths] == [f"IM{i:05d}.dcm" for i in range(1, 13)]
    sources = sample.meta["headers"]
    written = [pydicom.dcmread(p) for p in paths]
    assert len({d.SeriesInstanceUID for d in written}) == 1
    for src, out in zip(sources, written):
        assert out.SeriesInstanceUID != src.SeriesInstanceUID
        assert out.SOPInstanceUID != src.SOPInstanceUID
        assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID
        assert out.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert (out.StudyInstanceUID, out.PatientID, out.PatientName) == (
            src.StudyInstanceUID, src.PatientID, src.PatientName)
        assert out.FrameOfReferenceUID == src.FrameOfReferenceUID
        assert list(out.ImageType) == ["DERIVED", "SECONDARY", "AXIAL"]
        assert out.DerivationDescription == DESCRIPTION
        assert out.SeriesNumber == src.SeriesNumber + 1000
        assert out.SeriesDescription == "AX HEAD 2mm [hires bicubic]"
        (ref,) = out.SourceImageSequence
        assert (ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID) == (src.SOPClassUID, src.SOPInstanceUID)
        assert (out.Rows, out.Columns) == (256, 256)
        np.testing.assert_allclose(out.PixelSpacing, np.asarray(src.PixelSpacing, float) / 2)
        old = np.asarray(src.ImagePositionPatient, float)
        iop = np.asarray(src.ImageOrientationPatient, float)
        expected = old - 0.25 * src.PixelSpacing[1] * iop[:3] - 0.25 * src.PixelSpacing[0] * iop[3:]
        np.testing.assert_allclose(np.asarray(out.ImagePositionPatient, float), expected, atol=1e-6)
        assert (out.BitsAllocated, out.BitsStored, out.HighBit, out.PixelRepresentation) == (16, 16, 15, 1)
    assert [d.InstanceNumber for d in written] == list(range(1, 13))
    back = read_dicom(tmp_path)
    np.testing.assert_allclose(back.affine, image.affine, atol=1e-6)
    assert np.abs(back.data - image.data).max() <= 0.5
    for p in paths:
        assert dciodvfy_errors(p) == [], p


def test_write_derived_through_plane_and_fractional_values(sample, tmp_path):
    data = np.repeat(sample.data, 2, axis=1) + 0.3  # 24 slices, non-integer HU
    image = sample.with_data(data, factors=(2, 1, 1))
    paths = write_dicom_series(image, tmp_path, DESCRIPTION)
    written = [pydicom.dcmread(p) for p in paths]
    assert [d.InstanceNumber for d in written] == list(range(1, 25))
    assert float(written[0].SpacingBetweenSlices) == pytest.approx(1.0)
    assert float(written[0].SliceThickness) == pytest.approx(0.5)
    positions = np.array([np.asarray(d.ImagePositionPatient, float) for d in written])
    np.testing.assert_allclose(np.diff(positions, axis=0), [[0, 0, 1.0]] * 23, atol=1e-6)
    np.testing.assert_allclose(positions[0], geometry.world_of(sample.affine, (-0.25, 0, 0)), atol=1e-6)
    uids = [h.SOPInstanceUID for h in sample.meta["headers"]]
    assert [r.ReferencedSOPInstanceUID for r in written[0].SourceImageSequence] == [uids[0]]
    assert [r.ReferencedSOPInstanceUID for r in written[1].SourceImageSequence] == uids[0:2]
    back = read_dicom(tmp_path)
    assert np.abs(back.data - image.data).max() <= 0.5 + 1e-4
    assert dciodvfy_errors(paths[0]) == []


def test_write_derived_from_multiframe(tmp_path):
    source = read_dicom(DICOM / "eCT_Supplemental.dcm")
    paths = write_dicom_series(upscale_inplane(source), tmp_path, DESCRIPTION)
    assert len(paths) == 2
    enhanced = pydicom.dcmread(DICOM / "eCT_Supplemental.dcm", stop_before_pixels=True)
    for out, frame in zip((pydicom.dcmread(p) for p in paths), (2, 1)):
        assert out.SOPClassUID == pydicom.uid.CTImageStorage
        assert "NumberOfFrames" not in out and "PerFrameFunctionalGroupsSequence" not in out
        (ref,) = out.SourceImageSequence
        assert ref.ReferencedSOPInstanceUID == enhanced.SOPInstanceUID and ref.ReferencedFrameNumber == frame
        fg = enhanced.PerFrameFunctionalGroupsSequence[frame - 1]
        old = np.asarray(fg.PlanePositionSequence[0].ImagePositionPatient, float)
        np.testing.assert_allclose(np.asarray(out.ImagePositionPatient, float),
                                   old - 0.25 * 0.388672 * np.array([-1, 1, 0]), atol=1e-6)
        assert float(out.SliceThickness) == 10.0 and out.Rows == 1024
    back = read_dicom(tmp_path)
    assert np.abs(back.data - upscale_inplane(source).data).max() <= 0.5
    for p in paths:
        assert dciodvfy_errors(p) == [], p


def test_write_needs_dicom_source(tmp_path):
    nifti = read_nifti(SAMPLES / "ct_head.nii.gz")
    with pytest.raises(HiresError, match="write .nii.gz instead"):
        write_dicom_series(nifti, tmp_path, DESCRIPTION)


def test_wide_range_gets_a_slope(sample, tmp_path):
    image = sample.with_data(sample.data * 200.0)  # up to ~46000: does not fit int16 at slope 1
    with pytest.warns(UserWarning, match="rescale slope"):
        paths = write_dicom_series(image, tmp_path, DESCRIPTION)
    assert float(pydicom.dcmread(paths[0]).RescaleSlope) > 1
    back = read_dicom(tmp_path)
    assert np.abs(back.data - image.data).max() <= float(pydicom.dcmread(paths[0]).RescaleSlope) / 2 + 1e-3


def test_missing_decoder_is_one_line_naming_the_file(monkeypatch):
    import hires_domain.io.dicom as dicom

    def fail(self):
        raise RuntimeError("no pixel data handler available\nsecond line")

    monkeypatch.setattr(pydicom.dataset.Dataset, "pixel_array", property(fail))
    monkeypatch.setattr(dicom, "get_decoder", lambda uid: type("D", (), {"is_available": False})())
    path = DICOM / "explicit_VR-UN.dcm"
    with pytest.raises(HiresError) as err:
        read_dicom(path)
    assert str(err.value) == (f"cannot decode {path}: JPEG 2000 Image Compression (Lossless Only) "
                              "(install pylibjpeg-openjpeg / pylibjpeg-libjpeg)")
