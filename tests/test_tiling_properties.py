"""Property-based tests of the tiler and every sink (hypothesis) on crops of the real samples.

Random spatial shapes (1-pixel and prime sizes included), tile, overlap, scale 1-4, halo, block
alignment, band count, dtype and nodata patterns. Properties: every output pixel written exactly
once (the sinks' ledgers check it on every run), tiled == one-tile within rounding for bicubic
and for a random convolutional net with a declared halo, nodata kept exactly where the input had
it, geometry and footprint kept. Bounded example counts here; ``make test-slow`` runs the same
properties with many more examples.
"""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import hires_domain as hd
from hires_domain import geometry, tiling
from hires_domain.io.dicom import read_dicom
from hires_domain.io.nifti import read_nifti
from hires_domain.io.raster import RasterSink
from hires_domain.models import get_model
from support import SAMPLES

FAST, SLOW = 40, 400
COMMON = dict(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
# the default run draws the same examples every time (a red CI is reproducible); -m slow explores
FIXED = dict(COMMON, derandomize=True, database=None)

with rasterio.open(SAMPLES / "s2_crop.tif") as _ds:
    S2 = _ds.read().astype(np.float32)  # (4, 256, 256) real Sentinel-2 DN
VOLUMES = {"nifti": read_nifti(SAMPLES / "ct_head.nii.gz"), "dicom": read_dicom(SAMPLES / "ct_head_series")}

sizes = st.one_of(st.sampled_from([1, 2, 3, 7, 13, 31, 61, 64, 97]), st.integers(1, 110))


class RandomNet(torch.nn.Module):
    """Two 3x3 convolutions and a pixel shuffle: receptive radius 2 input pixels."""

    halo = 2

    def __init__(self, bands: int, scale: int, seed: int):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.a = torch.nn.Conv2d(bands, 6, 3, padding=1)
        self.b = torch.nn.Conv2d(6, bands * scale * scale, 3, padding=1)
        for p in self.parameters():
            p.data = torch.randn(p.shape, generator=g) * 0.3
        self.shuffle = torch.nn.PixelShuffle(scale)

    def forward(self, x):
        return self.shuffle(self.b(torch.relu(self.a(x))))


def crop(bands: int, h: int, w: int, seed: int) -> np.ndarray:
    r = np.random.default_rng(seed)
    y, x = r.integers(0, 256 - h + 1), r.integers(0, 256 - w + 1)
    return S2[r.permutation(4)[:bands] if bands <= 4 else r.integers(0, 4, bands), y:y + h, x:x + w].copy()


def run(array, predict, scale, tile, overlap, halo, align=1, sink=None, nodata=None, batch=3):
    sink = sink or tiling.ArraySink((array.shape[0], *(n * scale for n in array.shape[1:])))
    spec = tiling.TileSpec((tile, tile), (overlap, overlap), (halo, halo), (scale, scale), (align, align))
    list(tiling.iter_tiled(tiling.ArraySource(array, nodata), sink, predict, spec, batch))
    return sink


plans = st.fixed_dictionaries(dict(
    h=sizes, w=sizes, bands=st.integers(1, 5), scale=st.integers(1, 4), tile=st.integers(1, 80),
    overlap_frac=st.floats(0, 0.95), align=st.sampled_from([1, 1, 4, 16, 64]), seed=st.integers(0, 2**16)))


def _overlap(p) -> int:
    """The case's overlap; cases needing more than 300 tiles are skipped (time, not coverage)."""
    o = min(int(p["overlap_frac"] * p["tile"]), p["tile"] - 1)
    steps = [-(-max(n - p["tile"], 0) // max(p["tile"] - o, 1)) + 1 for n in (p["h"], p["w"])]
    assume(steps[0] * steps[1] * p.get("z", 1) <= 300)
    return o


def _tiled_equals_one_tile(p, model):
    a = crop(p["bands"], p["h"], p["w"], p["seed"])
    k, overlap = p["scale"], _overlap(p)
    if model == "net":
        net = RandomNet(p["bands"], k, p["seed"])
        predict, halo = net, net.halo
        scale_ref = 1.0
    else:
        m = get_model("bicubic")
        predict, halo = (lambda x: m.predict(x, k)), m.info.halo
        scale_ref = float(np.abs(a).max()) or 1.0
    whole = run(a, predict, k, max(p["h"], p["w"]), 0, halo).array  # one tile
    tiled = run(a, predict, k, p["tile"], overlap, halo, p["align"]).array
    assert tiled.shape == (p["bands"], p["h"] * k, p["w"] * k)
    tol = 1e-5 * max(scale_ref, float(np.abs(whole).max()))
    assert np.abs(tiled - whole).max() <= tol


@pytest.mark.parametrize("model", ["bicubic", "net"])
@settings(max_examples=FAST, **FIXED)
@given(p=plans)
def test_tiled_equals_one_tile(model, p):
    _tiled_equals_one_tile(p, model)


@pytest.mark.slow
@pytest.mark.parametrize("model", ["bicubic", "net"])
@settings(max_examples=SLOW, **COMMON)
@given(p=plans)
def test_tiled_equals_one_tile_many(model, p):
    _tiled_equals_one_tile(p, model)


def _nodata_kept(p, pattern):
    a = crop(p["bands"], p["h"], p["w"], p["seed"])
    r = np.random.default_rng(p["seed"])
    bad = {"none": np.zeros(a.shape[1:], bool), "speckle": r.random(a.shape[1:]) < 0.2,
           "all": np.ones(a.shape[1:], bool),
           "block": np.pad(np.ones((a.shape[1] // 2, a.shape[2] // 2), bool),
                           ((0, a.shape[1] - a.shape[1] // 2), (0, a.shape[2] - a.shape[2] // 2)))}[pattern]
    a[:, bad] = -9999.0
    a[0, bad & (r.random(a.shape[1:]) < 0.5)] = np.nan  # NaN and the nodata value alike
    m, k = get_model("bicubic"), p["scale"]
    sink = run(a, lambda x: m.predict(x, k), k, p["tile"], _overlap(p), m.info.halo, p["align"], nodata=-9999.0)
    expected = (~bad).repeat(k, 0).repeat(k, 1)
    np.testing.assert_array_equal(sink.valid, expected)
    assert np.isnan(sink.array[:, ~expected]).all()
    good = sink.array[:, expected]
    if good.size:  # bicubic overshoot is bounded; a leaked -9999 or NaN is not
        lo, hi = np.nanmin(a[a > -9999]), np.nanmax(a)
        slack = 0.5 * (hi - lo) + 1e-5 * max(abs(lo), abs(hi), 1.0)  # float32 rounding on flat input
        assert np.isfinite(good).all() and good.min() >= lo - slack and good.max() <= hi + slack


@pytest.mark.parametrize("pattern", ["none", "speckle", "block", "all"])
@settings(max_examples=FAST // 2, **FIXED)
@given(p=plans)
def test_nodata_kept_exactly(pattern, p):
    _nodata_kept(p, pattern)


@pytest.mark.slow
@pytest.mark.parametrize("pattern", ["none", "speckle", "block", "all"])
@settings(max_examples=SLOW // 2, **COMMON)
@given(p=plans)
def test_nodata_kept_exactly_many(pattern, p):
    _nodata_kept(p, pattern)


raster_cases = st.fixed_dictionaries(dict(
    h=sizes, w=sizes, bands=st.integers(1, 4), scale=st.integers(1, 4), tile=st.integers(4, 80),
    overlap_frac=st.floats(0, 0.9), align=st.sampled_from([1, 16, 64]), block_mult=st.integers(1, 8),
    dtype=st.sampled_from(["uint8", "uint16", "int16", "float32"]), nodata=st.sampled_from([None, 0]),
    cog=st.booleans(), seed=st.integers(0, 2**16)))


def _raster_sink_matches_memory(p, tmp_path):
    a = crop(p["bands"], p["h"], p["w"], p["seed"])
    if p["dtype"] == "uint8":
        a = a / 40.0
    elif p["dtype"] == "int16":
        a = a - 1500.0
    k, m = p["scale"], get_model("bicubic")
    predict = lambda x: m.predict(x, k)  # noqa: E731
    out_shape = (p["bands"], p["h"] * k, p["w"] * k)
    mem = run(a, predict, k, p["tile"], _overlap(p), m.info.halo, p["align"], nodata=p["nodata"])
    path = tmp_path / f"o{p['seed']}.tif"
    path.unlink(missing_ok=True)
    meta = {"dtype": p["dtype"], "nodata": p["nodata"]}
    with RasterSink(path, out_shape, np.eye(3), meta, cog=p["cog"], block=16 * p["block_mult"]) as sink:
        run(a, predict, k, p["tile"], _overlap(p), m.info.halo, p["align"], sink=sink, nodata=p["nodata"])
    with rasterio.open(path) as ds:
        got = ds.read()
    assert got.shape == out_shape and got.dtype == np.dtype(p["dtype"])
    want, _ = hd.io.common.cast_to_dtype(np.where(mem.valid, mem.array, np.float32(p["nodata"] or 0)), p["dtype"])
    if p["nodata"] is not None and p["dtype"] != "float32":
        hit = mem.valid[None] & (want == p["nodata"])
        want[hit] = p["nodata"] + 1  # a valid value on the nodata value is moved off it
    if p["dtype"] == "float32":
        assert np.allclose(got[:, mem.valid], mem.array[:, mem.valid], rtol=1e-6, atol=1e-3)
    else:
        assert np.abs(got[:, mem.valid].astype(np.int64) - want[:, mem.valid].astype(np.int64)).max(initial=0) <= 1
    assert not np.isnan(got[:, mem.valid]).any() if p["dtype"] == "float32" else True


@settings(max_examples=FAST, **FIXED)
@given(p=raster_cases)
def test_raster_sink_equals_memory(tmp_path, p):
    _raster_sink_matches_memory(p, tmp_path)


@pytest.mark.slow
@settings(max_examples=SLOW, **COMMON)
@given(p=raster_cases)
def test_raster_sink_equals_memory_many(tmp_path, p):
    _raster_sink_matches_memory(p, tmp_path)


volume_cases = st.fixed_dictionaries(dict(
    z=st.integers(1, 4), h=st.integers(1, 60), w=st.integers(1, 60), scale=st.integers(1, 4),
    tile=st.integers(2, 48), overlap_frac=st.floats(0, 0.9), seed=st.integers(0, 2**16)))


def _volume_geometry_kept(p, tmp_path, fmt):
    r = np.random.default_rng(p["seed"])
    src = VOLUMES[fmt]
    z0, y0, x0 = (r.integers(0, n - m + 1) for n, m in zip(src.spatial_shape, (p["z"], p["h"], p["w"])))
    image = src.with_data(src.array()[:, z0:z0 + p["z"], y0:y0 + p["h"], x0:x0 + p["w"]].copy())
    image.affine = geometry.cropped_affine(src.affine, (z0, y0, x0))
    if fmt == "dicom":
        image.meta = {**src.meta, "headers": src.meta["headers"][z0:z0 + p["z"]],
                      "frames": src.meta["frames"][z0:z0 + p["z"]], "source_affine": image.affine}
    k = p["scale"]
    up = hd.enhance(image, "bicubic", k, tile=p["tile"], overlap=_overlap(p))
    assert up.spatial_shape == (p["z"], p["h"] * k, p["w"] * k)
    # footprint: the outer corners of the voxel grid are the same points in patient space
    for im in (image, up):
        assert np.isfinite(im.array()).all()
    corners_in = geometry.world_of(image.affine, np.array([[-0.5, -0.5, -0.5], [p["z"] - 0.5, p["h"] - 0.5, p["w"] - 0.5]]))
    corners_out = geometry.world_of(up.affine, np.array([[-0.5, -0.5, -0.5],
                                                        [p["z"] - 0.5, p["h"] * k - 0.5, p["w"] * k - 0.5]]))
    np.testing.assert_allclose(corners_out, corners_in, atol=1e-4)
    out = tmp_path / (f"v{p['seed']}.nii.gz" if fmt == "nifti" else f"d{p['seed']}")
    hd.write(up, out, overwrite=True)
    back = read_nifti(out) if fmt == "nifti" else read_dicom(out)
    assert back.spatial_shape == up.spatial_shape
    # a single slice carries no slice spacing of its own: compare the in-plane axes and origin
    cols = [0, 1, 2, 3] if p["z"] > 1 else [1, 2, 3]
    np.testing.assert_allclose(back.affine[:, cols], up.affine[:, cols], atol=1e-3)
    # integers are stored as such: the DICOM rescale slope, the NIfTI sample's own int16
    tol = 1.0 if fmt == "dicom" else 0.5 + 1e-3
    np.testing.assert_allclose(back.array(), up.array(), atol=tol)


@pytest.mark.parametrize("fmt", ["nifti", "dicom"])
@settings(max_examples=FAST // 3, **FIXED)
@given(p=volume_cases)
def test_volume_sinks_keep_geometry(tmp_path, fmt, p):
    _volume_geometry_kept(p, tmp_path, fmt)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["nifti", "dicom"])
@settings(max_examples=SLOW // 4, **COMMON)
@given(p=volume_cases)
def test_volume_sinks_keep_geometry_many(tmp_path, fmt, p):
    _volume_geometry_kept(p, tmp_path, fmt)
