"""Geometry after xk: world coordinates of output pixel centres, footprints, frame conversions."""

import numpy as np
import pytest
from affine import Affine

from hires_domain import geometry


@pytest.mark.parametrize("k", [2, 4, (1, 2, 2), (3, 2, 4)])
def test_upscaled_affine_maps_every_centre(ct_volume, k):
    a = ct_volume.affine
    k = geometry.as_factors(k, 3)
    b = geometry.upscaled_affine(a, k)
    idx = np.stack(np.meshgrid(*(np.arange(0, int(n * f), 7) for n, f in zip((32, 128, 128), k)),
                               indexing="ij"), -1).reshape(-1, 3)
    old = (idx + 0.5) / k - 0.5  # where each new centre sits on the old grid
    np.testing.assert_allclose(geometry.world_of(b, idx), geometry.world_of(a, old), atol=1e-9)


def test_footprint_kept(ct_volume):
    a = ct_volume.affine
    b = geometry.upscaled_affine(a, (1, 2, 2))
    # outer edge of the first pixel along y/x is identical on both grids
    np.testing.assert_allclose(geometry.world_of(a, [0, -0.5, -0.5]), geometry.world_of(b, [0, -0.5, -0.5]))
    np.testing.assert_allclose(geometry.world_of(a, [0, 127.5, 127.5]), geometry.world_of(b, [0, 255.5, 255.5]))


def test_raster_transform_round_trip_with_rotation():
    t = Affine(10.0, 0.3, 600000.0, -0.2, -10.0, 5200000.0)
    a = geometry.affine_from_transform(t)
    assert geometry.transform_from_affine(a).almost_equals(t, precision=1e-9)
    # pixel centre (row 3, col 5) = corner transform at (5.5, 3.5)
    np.testing.assert_allclose(geometry.world_of(a, [3, 5]), t @ (5.5, 3.5))
    t4 = geometry.transform_from_affine(geometry.upscaled_affine(a, 4))
    assert t4.almost_equals(t @ Affine.scale(0.25), precision=1e-9)


def test_nifti_axis_order_and_frames(ct_volume):
    import nibabel as nib

    nib_aff = nib.load(ct_volume.source_path).affine
    np.testing.assert_allclose(geometry.nifti_from_affine(ct_volume.affine), nib_aff)
    # voxel (i, j, k) = (3, 4, 5) in nibabel is our (z, y, x) = (5, 4, 3)
    np.testing.assert_allclose(geometry.world_of(ct_volume.affine, [5, 4, 3]), (nib_aff @ [3, 4, 5, 1.0])[:3])
    lps = geometry.convert_frame(ct_volume.affine, "RAS", "LPS")
    np.testing.assert_allclose(geometry.convert_frame(lps, "LPS", "RAS"), ct_volume.affine)
    assert geometry.world_of(lps, [0, 0, 0])[0] == -geometry.world_of(ct_volume.affine, [0, 0, 0])[0]


def test_bad_factors():
    with pytest.raises(ValueError):
        geometry.as_factors(0, 2)
