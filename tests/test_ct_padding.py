"""CT padding outside the reconstruction circle is nodata: never fed to a model, written back as it was.

Real padded slices: pydicom's J2K_pixelrep_mismatch.dcm (head CT, −2000 HU padding, no
PixelPaddingValue) and pydicom-data's 693_J2KR.dcm (PixelPaddingValue −2000 stored = −3024 HU).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from scipy import ndimage
from pydicom.data import get_testdata_file

import hires_domain as hd
from hires_domain import geometry
from hires_domain.intensity import looks_like_padded_ct, mark_ct_padding
from hires_domain.io.dicom import read_dicom
from hires_domain.io.nifti import read_nifti
from support import SAMPLES, dciodvfy_errors, hires


def padded(name: str) -> Path:
    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"{name} not installed (pydicom-data)")
    return Path(path)


def crop(image, y0, x0, n):
    """An n x n crop straddling the edge of the field of view (geometry moved with it)."""
    out = image.with_data(image.array()[:, :, y0:y0 + n, x0:x0 + n].copy())
    out.affine = geometry.cropped_affine(image.affine, (0, y0, x0))
    return out


@pytest.mark.parametrize("name,pad_hu,fraction", [("J2K_pixelrep_mismatch.dcm", -2000.0, 0.216),
                                                  ("693_J2KR.dcm", -3024.0, 0.213)])
def test_reader_marks_padding(name, pad_hu, fraction):
    img = read_dicom(padded(name))
    a = img.array()
    assert img.nodata == pad_hu and img.units == "HU"
    assert abs((a == pad_hu).mean() - fraction) < 0.002
    assert a[a != pad_hu].min() >= -1024  # nothing else below -1024 HU


@pytest.mark.parametrize("model,scale", [("ct-sr-x2", 2), ("ct-denoise", 1), ("bicubic", 2)])
def test_model_never_sees_padding_and_keeps_it(model, scale):
    img = crop(read_dicom(padded("J2K_pixelrep_mismatch.dcm")), 20, 20, 96)
    a = img.array()[0, 0]
    pad = a == -2000.0
    assert 0.2 < pad.mean() < 0.8  # the crop holds both padding and the scan
    out = hd.enhance(img, model, scale).array()[0, 0]
    expected = pad.repeat(scale, 0).repeat(scale, 1)
    np.testing.assert_array_equal(out == -2000.0, expected)  # padding exactly where it was
    valid = out[~expected]
    assert valid.min() >= -1024.0  # no value in the padding's range, no bleed to -1460 HU
    # next to the field-of-view edge the output stays consistent with its input
    back = out.reshape(96, scale, 96, scale).mean(axis=(1, 3)) if scale > 1 else out
    near = ndimage.binary_dilation(pad, iterations=3) & ~pad
    assert near.sum() > 100
    assert np.abs(back[near] - a[near]).mean() < 40.0


def test_dicom_output_keeps_pixel_padding_value(tmp_path, capsys):
    src = padded("693_J2KR.dcm")
    out = tmp_path / "sr"
    code, _, err = hires(capsys, "enhance", src, out, "--model", "bicubic", "-q")
    assert code == 0, err
    files = sorted(out.iterdir())
    ds = pydicom.dcmread(files[0])
    hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    assert ds.PixelPaddingValue * float(ds.RescaleSlope) + float(ds.RescaleIntercept) == -3024.0
    source = read_dicom(src).array()[0, 0] == -3024.0
    np.testing.assert_array_equal(hu == -3024.0, source.repeat(2, 0).repeat(2, 1))
    assert hu[hu != -3024.0].min() >= -1024
    back = read_dicom(out)
    assert back.nodata == -3024.0
    assert not [e for e in dciodvfy_errors(files[0]) if "PixelPadding" in e]


def test_nifti_output_keeps_the_padding_value(tmp_path, capsys):
    img = read_dicom(padded("J2K_pixelrep_mismatch.dcm"))
    nii = tmp_path / "in.nii.gz"
    hd.write(img, nii)
    back = read_nifti(nii)  # no modality in NIfTI: recognised as padded CT by its values
    assert back.nodata == -2000.0 and back.units == "HU"
    out = tmp_path / "up.nii.gz"
    code, _, err = hires(capsys, "enhance", nii, out, "--model", "ct-sr-x2", "-q")
    assert code == 0, err
    import nibabel as nib
    up = np.asarray(nib.load(out).dataobj)
    pad = np.asarray(nib.load(nii).dataobj) == -2000
    np.testing.assert_array_equal(up == -2000, pad.repeat(2, 0).repeat(2, 1))
    assert up[up != -2000].min() >= -1024


def test_padding_detection_rules():
    a = np.array([[-1024.0, -1000.0, 40.0], [-3024.0, -3024.0, -1100.0]], np.float32)
    b = a.copy()
    assert mark_ct_padding(b) == -3024.0
    np.testing.assert_array_equal(b, [[-1024, -1000, 40], [-3024, -3024, -3024]])
    c = a.copy()
    assert mark_ct_padding(c, (-2000.0, -2000.0)) == -2000.0 and (c < -1024).sum() == 3
    assert mark_ct_padding(np.array([-1000.0, 50.0], np.float32)) is None
    mr = read_dicom(Path(get_testdata_file("MR_small.dcm")))
    assert mr.nodata is None and not looks_like_padded_ct(mr.array())
    assert not looks_like_padded_ct(np.array([-2000.0, -1500.0, -1200.0, 10.0], np.float32))  # no air, no fill


def test_noisy_padding_of_a_real_scanner_slice_in_nifti_stays_padding(tmp_path, capsys):
    """The bundled low-dose slice (real 693_UNCI geometry and its own padding: noisy values around
    -3000 HU outside the field of view, no constant fill, no header saying so) is recognised as CT;
    the padding is never denoised and comes back below -1024 HU, the field of view above it."""
    import nibabel as nib

    src = SAMPLES / "ct_lowdose.nii.gz"
    raw = np.asarray(nib.load(src).dataobj)[:, :, 0]
    pad = raw < -1024
    assert 0.2 < pad.mean() < 0.4 and np.unique(raw[pad]).size > 100  # noisy, not one fill value
    img = read_nifti(src)
    assert img.units == "HU" and "noisy padding" in img.meta["ct_evidence"]
    assert img.nodata < -2000  # the padding's median, around -3000 HU
    code, _, _ = hires(capsys, "enhance", src, tmp_path / "out.nii.gz", "--model", "ct-denoise")
    assert code == 0
    out = np.asarray(nib.load(tmp_path / "out.nii.gz").dataobj)[:, :, 0]
    np.testing.assert_array_equal(out < -1024, pad)
    assert np.all(out[pad] == img.nodata)
