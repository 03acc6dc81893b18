"""NIfTI round trips and geometry after enhancement, on the real CT atlas crop."""

import nibabel as nib
import numpy as np
import pytest

import hires_domain as hd
from hires_domain import geometry
from hires_domain.errors import HiresError


def test_round_trip_keeps_pixels_header_and_codes(samples, tmp_path):
    src = nib.load(samples / "ct_head.nii.gz")
    img = hd.read(samples / "ct_head.nii.gz")
    assert img.shape == (1, 32, 128, 128) and img.frame == "RAS"
    np.testing.assert_array_equal(img.data[0].transpose(2, 1, 0), src.get_fdata())
    out = hd.write(img, tmp_path / "rt.nii.gz")
    back = nib.load(out)
    np.testing.assert_array_equal(back.get_fdata(), src.get_fdata())
    assert back.get_data_dtype() == src.get_data_dtype()
    np.testing.assert_allclose(back.affine, src.affine)
    assert int(back.header["qform_code"]) == int(src.header["qform_code"])
    assert int(back.header["sform_code"]) == int(src.header["sform_code"])


@pytest.mark.parametrize("scale", [2, 4])
def test_enhanced_volume_geometry(samples, tmp_path, scale):
    src = nib.load(samples / "ct_head.nii.gz")
    out = tmp_path / f"x{scale}.nii.gz"
    hd.enhance_file(samples / "ct_head.nii.gz", out, hd.Settings("bicubic", scale, 48, 8, device="cpu"))
    res = nib.load(out)
    assert res.shape == (128 * scale, 128 * scale, 32)
    # world of output voxel (i', j', k) == world of input at ((i'+.5)/k-.5, (j'+.5)/k-.5, k)
    for ijk in [(0, 0, 0), (5, 77, 3), (128 * scale - 1, 128 * scale - 1, 31)]:
        old = [(ijk[0] + 0.5) / scale - 0.5, (ijk[1] + 0.5) / scale - 0.5, ijk[2], 1.0]
        np.testing.assert_allclose((res.affine @ [*ijk, 1.0])[:3], (src.affine @ old)[:3], atol=1e-5)
    np.testing.assert_allclose(res.header.get_zooms(), (1 / scale, 1 / scale, 1), rtol=1e-6)
    # bicubic x k of a real volume keeps the intensity scale (no HU drift)
    assert abs(res.get_fdata().mean() - src.get_fdata().mean()) < 1.0


def test_truncated_nifti_is_one_line_error(samples, tmp_path):
    bad = tmp_path / "trunc.nii.gz"
    bad.write_bytes((samples / "ct_head.nii.gz").read_bytes()[:5000])
    with pytest.raises(HiresError, match="cannot read NIfTI") as e:
        hd.read(bad)
    assert "\n" not in str(e.value)


def test_dicom_geometry_to_nifti_is_converted_to_ras(ct_volume, tmp_path):
    from dataclasses import replace

    lps = replace(ct_volume, affine=geometry.convert_frame(ct_volume.affine, "RAS", "LPS"), frame="LPS",
                  kind="dicom", meta={})
    out = hd.write(lps, tmp_path / "from_lps.nii.gz")
    np.testing.assert_allclose(nib.load(out).affine, geometry.nifti_from_affine(ct_volume.affine), atol=1e-6)
