"""The cubic resampler that puts coarse Sentinel-2 bands on the 10 m grid (training and reading)."""

import numpy as np
from hypothesis import given, settings, strategies as st

from hires_domain import resample


def test_cubic_reproduces_ramps_and_constants():
    y, x = np.mgrid[0:20, 0:24].astype(np.float64)
    ramp = 3.0 * x - 2.0 * y + 7.0
    up = resample.upsample(ramp, 2)
    fy, fx = np.mgrid[0:40, 0:48]
    want = 3.0 * ((fx + 0.5) / 2 - 0.5) - 2.0 * ((fy + 0.5) / 2 - 0.5) + 7.0
    inner = (slice(4, -4), slice(4, -4))  # edges are replicated, so only the interior is linear
    np.testing.assert_allclose(up[inner], want[inner], atol=1e-4)
    np.testing.assert_array_equal(resample.upsample(np.full((5, 6), 1234.0), 6), np.float32(1234.0))


def test_integer_positions_copy_pixels():
    img = np.random.default_rng(0).normal(size=(9, 11))
    out = resample.resample(img, np.arange(2, 7), np.arange(1, 10))
    np.testing.assert_array_equal(out, img[2:7, 1:10].astype(np.float32))


@settings(max_examples=40, deadline=None)
@given(n_r=st.integers(3, 30), n_c=st.integers(3, 30), factor=st.sampled_from([2, 3, 6]),
       shift=st.floats(-3, 3), r0=st.integers(0, 60), c0=st.integers(0, 60), h=st.integers(1, 40), w=st.integers(1, 40))
def test_window_equals_whole(n_r, n_c, factor, shift, r0, c0, h, w):
    """A window of the fine grid, read from only the coarse pixels ``span`` names, equals the
    same pixels of the whole image bit for bit, at any grid offset (edges included)."""
    img = np.random.default_rng(n_r * 31 + n_c).uniform(0, 5000, size=(2, n_r, n_c))
    rows_all = resample.grid_coords(0, n_r * factor + 4, (shift * 10, 10.0), (0.0, 10.0 * factor))
    cols_all = resample.grid_coords(0, n_c * factor + 4, (-shift * 10, 10.0), (0.0, 10.0 * factor))
    whole = resample.resample(img, rows_all, cols_all)
    r0, c0 = min(r0, len(rows_all) - 1), min(c0, len(cols_all) - 1)
    rows, cols = rows_all[r0:r0 + h], cols_all[c0:c0 + w]
    rs, cs = resample.span(rows, n_r), resample.span(cols, n_c)
    part = resample.resample(img[:, rs, cs], rows, cols, (n_r, n_c), (rs.start, cs.start))
    np.testing.assert_array_equal(part, whole[:, r0:r0 + h, c0:c0 + w])
