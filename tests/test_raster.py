"""Raster I/O on the bundled real Sentinel-2 crop: pixels, geometry, metadata, masks, COG."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from affine import Affine
from rio_cogeo.cogeo import cog_validate

from hires_domain.io import raster
from hires_domain import geometry, tiling
from hires_domain.errors import HiresError
from hires_domain.io.raster import RasterSink, RasterSource, read_raster, write_raster

S2 = Path(__file__).resolve().parents[1] / "hires_domain" / "samples" / "s2_crop.tif"


def copy_crop(dst: Path, transform=None, dtype=None, nodata="keep", edit=None) -> Path:
    """A copy of the crop with a changed transform, dtype, nodata or pixels."""
    with rasterio.open(S2) as src:
        profile, data = src.profile, src.read()
        descriptions, scales, offsets = src.descriptions, src.scales, src.offsets
    if dtype:
        data = data.astype(dtype)
        profile.update(dtype=dtype, predictor=3 if np.dtype(dtype).kind == "f" else 2)
    if transform is not None:
        profile.update(transform=transform)
    if nodata != "keep":
        profile.update(nodata=nodata)
    if edit:
        edit(data)
    with rasterio.open(dst, "w", **profile) as out:
        out.write(data)
        out.descriptions, out.scales, out.offsets = descriptions, scales, offsets
    return dst


def rotated_crop(tmp_path: Path) -> Path:
    with rasterio.open(S2) as src:
        t = src.transform @ Affine.rotation(30.0)
    return copy_crop(tmp_path / "rotated.tif", transform=t)


def test_round_trip_keeps_pixels_and_metadata(tmp_path):
    image = read_raster(S2)
    assert image.shape == (4, 256, 256) and image.units == "DN" and image.nodata == 0
    assert image.band_names == ("B02", "B03", "B04", "B08")
    out = tmp_path / "out.tif"
    write_raster(image.with_data(image.array()), out, provenance="x1 identity")
    with rasterio.open(S2) as a, rasterio.open(out) as b:
        assert b.dtypes == a.dtypes == ("uint16",) * 4
        np.testing.assert_array_equal(b.read(), a.read())
        assert b.crs == a.crs and b.transform == a.transform and b.nodata == a.nodata == 0
        assert b.descriptions == a.descriptions
        assert b.scales == a.scales == (0.0001,) * 4 and b.offsets == a.offsets
        assert b.colorinterp == a.colorinterp
        tags = b.tags()
        assert tags.pop("HIRES_PROVENANCE") == "x1 identity"
        assert tags == a.tags() and "Sentinel-2 L1C" in tags["SOURCE"]
        assert (b.profile["blockxsize"], b.profile["compress"]) == (raster.BLOCK, "deflate")


@pytest.mark.parametrize("k", [2, 4])
@pytest.mark.parametrize("rotated", [False, True])
def test_geometry_after_upscaling(tmp_path, k, rotated):
    path = rotated_crop(tmp_path) if rotated else S2
    image = read_raster(path)
    up = np.repeat(np.repeat(image.array(), k, axis=1), k, axis=2)
    out = tmp_path / f"x{k}.tif"
    write_raster(image.with_data(up, factors=k), out)
    with rasterio.open(path) as a, rasterio.open(out) as b:
        assert b.shape == (256 * k, 256 * k)
        np.testing.assert_array_equal(b.read()[:, ::k, ::k], a.read())
        new = geometry.affine_from_transform(b.transform)
        idx = np.array([[0, 0], [0, 256 * k - 1], [256 * k - 1, 0], [37, 501], [256 * k - 1, 256 * k - 1]])
        expected = [a.transform @ ((j + 0.5) / k, (i + 0.5) / k) for i, j in idx]
        np.testing.assert_allclose(geometry.world_of(new, idx), expected, rtol=0, atol=1e-6)
        corners = [(0, 0), (1, 0), (0, 1), (1, 1)]
        np.testing.assert_allclose([b.transform @ (c * b.width, r * b.height) for c, r in corners],
                                   [a.transform @ (c * a.width, r * a.height) for c, r in corners], rtol=0, atol=1e-6)
        if rotated:
            assert abs(b.transform.b) > 1 and np.isclose(b.transform.b, a.transform.b / k)
            assert np.isclose(b.transform.d, a.transform.d / k)
        else:
            assert b.bounds == a.bounds


def test_nodata_zero_is_invalid(tmp_path):
    def punch(data):
        data[2, 10:20, 30:35] = 0

    src = RasterSource(copy_crop(tmp_path / "holes.tif", edit=punch))
    _, valid = src.read((slice(0, 256), slice(0, 256)))
    expected = np.ones((256, 256), bool)
    expected[10:20, 30:35] = False
    np.testing.assert_array_equal(valid, expected)


def test_nan_in_float_raster_is_invalid(tmp_path):
    def nan(data):
        data[0, 5, 7] = np.nan
        data[3, 100, 200] = np.inf

    image = read_raster(copy_crop(tmp_path / "f32.tif", dtype="float32", nodata=None, edit=nan))
    assert image.units == "" and image.nodata is None
    _, valid = image.data.read((slice(0, 256), slice(0, 256)))
    assert (~valid).sum() == 2 and not valid[5, 7] and not valid[100, 200]


@pytest.mark.parametrize("cog", [False, True])
def test_integer_without_nodata_gets_a_mask(tmp_path, cog):
    image = read_raster(copy_crop(tmp_path / "nonodata.tif", nodata=None))
    data = image.array()
    data[:, 50:60, 70:90] = np.nan
    out = tmp_path / "masked.tif"
    write_raster(image.with_data(data), out, cog=cog)
    _, valid = RasterSource(out).read((slice(0, 256), slice(0, 256)))
    np.testing.assert_array_equal(valid, np.isfinite(data).all(axis=0))


def test_clipping_is_counted(tmp_path):
    image = read_raster(S2)
    data = image.array()
    data[0, 0, :10] = 70000.0
    data[1, 1, :3] = -5.0  # clipped to 0, the nodata value: moved to 1
    out = tmp_path / "clip.tif"
    sink = write_raster(image.with_data(data), out)
    assert sink.clipped == 13 and sink.nodata_collisions == 3
    with rasterio.open(out) as b:
        assert (b.read(1)[0, :10] == 65535).all() and (b.read(2)[1, :3] == 1).all()


def test_cog_output_is_valid(tmp_path):
    image = read_raster(S2)
    image.meta["units"] = ["DN"] * 4
    out = tmp_path / "cog.tif"
    up = np.repeat(np.repeat(image.array(), 4, axis=1), 4, axis=2)
    write_raster(image.with_data(up, factors=4), out, cog=True, provenance="x4 nearest")
    is_valid, errors, _ = cog_validate(out, quiet=True)
    assert is_valid and not errors
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cog.tif"]  # intermediate removed
    with rasterio.open(out) as b, rasterio.open(S2) as a:
        assert b.overviews(1) and b.descriptions == a.descriptions and b.scales == a.scales
        assert b.nodata == 0 and b.tags()["HIRES_PROVENANCE"] == "x4 nearest" and b.units == ("DN",) * 4


def test_window_read_equals_full_read_slice():
    with RasterSource(S2) as src:
        full, full_valid = src.read((slice(0, 256), slice(0, 256)))
        part, part_valid = src.read((slice(10, 100), slice(30, 211)))
        assert part.dtype == np.float32 and part.shape == (4, 90, 181)
        np.testing.assert_array_equal(part, full[:, 10:100, 30:211])
        np.testing.assert_array_equal(part_valid, full_valid[10:100, 30:211])
        again = pickle.loads(pickle.dumps(src))
        np.testing.assert_array_equal(again.read((slice(10, 100), slice(30, 211)))[0], part)


def test_jp2_reads_through_the_same_code(tmp_path):
    jp2 = tmp_path / "crop.jp2"
    with rasterio.open(S2) as a:
        data = a.read()
        with rasterio.open(jp2, "w", driver="JP2OpenJPEG", width=256, height=256, count=4, dtype="uint16",
                           crs=a.crs, transform=a.transform, QUALITY=100, REVERSIBLE="YES") as j:
            j.write(data)
    image = read_raster(jp2)
    assert image.meta["driver"] == "JP2OpenJPEG" and image.crs
    np.testing.assert_array_equal(image.array(), data)
    np.testing.assert_array_equal(image.affine, read_raster(S2).affine)


def test_streaming_through_the_tiler(tmp_path):
    image = read_raster(S2)
    spec = tiling.TileSpec(tile=(96, 96), overlap=(16, 16), halo=(4, 4), scale=(2, 2))

    def predict(x):
        return torch.nn.functional.interpolate(x, scale_factor=2, mode="bicubic", align_corners=False)

    out = tmp_path / "tiled.tif"
    with RasterSink(out, (4, 512, 512), geometry.upscaled_affine(image.affine, 2), image.meta,
                    crs=image.crs) as sink:
        list(tiling.iter_tiled(image.data, sink, predict, spec))
    whole = predict(torch.from_numpy(image.array())[None])[0].numpy()
    with rasterio.open(out) as b:
        got = b.read().astype(np.float32)
        assert b.bounds == rasterio.open(S2).bounds
    inner = (slice(None), slice(16, -16), slice(16, -16))  # borders see less context when tiled
    assert np.abs(got[inner] - np.clip(np.rint(whole[inner]), 1, 65535)).max() <= 1


def test_corrupt_file_is_one_line_error(tmp_path):
    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"II*\x00" + bytes(range(256)) * 8)
    with pytest.raises(HiresError) as err:
        read_raster(bad)
    assert "\n" not in str(err.value) and "bad.tif" in str(err.value)
    with pytest.raises(HiresError):
        read_raster(tmp_path / "missing.tif")


def test_deflate_level_keeps_files_as_small_as_gdal_default(tmp_path):
    """The cheaper DEFLATE level (``DEFLATE_LEVEL``) costs at most 1 % of file size against
    GDAL's default level 6, on a real ×4 output (docs/performance.md: 3.6× less CPU)."""
    from hires_domain.pipeline import Settings, enhance_file

    enhance_file(S2, tmp_path / "out.tif", Settings("bicubic", 4))
    with rasterio.open(tmp_path / "out.tif") as ds:
        profile, data = ds.profile, ds.read()
    with rasterio.open(tmp_path / "level6.tif", "w", **{**profile, "zlevel": 6}) as ds:
        ds.write(data)
    ours, default = ((tmp_path / f).stat().st_size for f in ("out.tif", "level6.tif"))
    assert profile["compress"] == "deflate" and ours <= 1.01 * default
