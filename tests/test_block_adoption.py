"""Row bands adopted as compressed blocks (``RasterSink.adopt``, ``io/tiff_blocks.py``) give the file
a single write gives: pixels, mask, metadata; on the real Sentinel-2 crop at many sizes, dtypes,
block sizes and cut points, and refused with one line when a part does not fit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from hypothesis import HealthCheck, given, settings, strategies as st

from hires_domain.errors import HiresError
from hires_domain.io.raster import RasterSink, read_raster

S2 = Path(__file__).resolve().parents[1] / "hires_domain" / "samples" / "s2_crop.tif"


def _crop(height: int, width: int, dtype: str) -> np.ndarray:
    with rasterio.open(S2) as ds:
        data = ds.read()
    data = np.pad(data, ((0, 0), (0, max(0, height - 256)), (0, max(0, width - 256))), mode="reflect")
    data = data[:, :height, :width].astype(np.float32)
    return data * np.float32(1e-4) if dtype == "float32" else data


def _write(path, data, valid, meta, block, rows=None):
    image = read_raster(S2)
    with RasterSink(path, data.shape, image.affine, meta, crs=image.crs, block=block) as sink:
        for r0 in range(0, data.shape[1], block):
            r1 = min(r0 + block, data.shape[1])
            sink.write((slice(r0, r1), slice(0, data.shape[2])), data[:, r0:r1], valid[r0:r1])
    return sink


def _assemble(path, tmp: Path, data, valid, meta, block, cuts, cog=False):
    image = read_raster(S2)
    edges = [0, *cuts, data.shape[1]]
    with RasterSink(path, data.shape, image.affine, meta, crs=image.crs, block=block, sparse=True, cog=cog) as sink:
        for i, (r0, r1) in enumerate(zip(edges[:-1], edges[1:])):
            part = tmp / f"part{i}.tif"
            _write(part, data[:, r0:r1], valid[r0:r1], meta, block)
            sink.adopt(part, r0)


def _read(path):
    with rasterio.open(path) as ds:
        return ds.read(), ds.read_masks(1), ds.profile, ds.tags(), ds.descriptions


META = {"uint16": {"dtype": "uint16", "nodata": 0}, "uint16-mask": {"dtype": "uint16", "nodata": None},
        "float32": {"dtype": "float32", "nodata": None}}


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from(sorted(META)), block=st.sampled_from([64, 128, 256]),
       height=st.integers(70, 700), width=st.integers(40, 600), data=st.data())
def test_adopted_bands_equal_one_write(tmp_path_factory, kind, block, height, width, data):
    tmp = tmp_path_factory.mktemp("adopt")
    pixels = _crop(height, width, "float32" if kind == "float32" else "uint16")
    valid = np.ones((height, width), bool)
    valid[height // 3: height // 3 + 9, : width // 2] = False  # a nodata patch (a mask where there is no nodata)
    rows = list(range(block, height, block))
    cuts = sorted(data.draw(st.sets(st.sampled_from(rows), max_size=3))) if rows else []
    meta = {**read_raster(S2).meta, **META[kind]}
    _write(tmp / "one.tif", pixels, valid, meta, block)
    _assemble(tmp / "bands.tif", tmp, pixels, valid, meta, block, cuts)
    a, b = _read(tmp / "one.tif"), _read(tmp / "bands.tif")
    np.testing.assert_array_equal(b[0], a[0])
    np.testing.assert_array_equal(b[1], a[1])
    assert b[2] == a[2] and b[3] == a[3] and b[4] == a[4]
    assert (tmp / "bands.tif").stat().st_size <= 1.02 * (tmp / "one.tif").stat().st_size + 4096


def test_adopted_bands_convert_to_the_same_cog(tmp_path):
    pixels = _crop(600, 300, "uint16")
    valid = np.ones((600, 300), bool)
    meta = {**read_raster(S2).meta, "dtype": "uint16", "nodata": 0}
    _write(tmp_path / "one.tif", pixels, valid, meta, 256)
    _assemble(tmp_path / "cog.tif", tmp_path, pixels, valid, meta, 256, [256, 512], cog=True)
    with rasterio.open(tmp_path / "cog.tif") as ds:
        assert ds.overviews(1) and np.array_equal(ds.read(), _read(tmp_path / "one.tif")[0])


def test_a_part_of_another_layout_is_refused_and_rows_must_be_whole_blocks(tmp_path):
    pixels = _crop(300, 200, "uint16")
    valid = np.ones((300, 200), bool)
    meta = {**read_raster(S2).meta, "dtype": "uint16", "nodata": 0}
    image = read_raster(S2)
    _write(tmp_path / "narrow.tif", pixels[:, :, :100], valid[:, :100], meta, 64)
    _write(tmp_path / "blocks128.tif", pixels, valid, meta, 128)
    _write(tmp_path / "ok.tif", pixels[:, :64], valid[:64], meta, 64)
    with pytest.raises(HiresError, match="never written"), \
            RasterSink(tmp_path / "out.tif", pixels.shape, image.affine, meta, crs=image.crs, block=64,
                       sparse=True) as sink:
        with pytest.raises(HiresError, match="layout: imagewidth"):
            sink.adopt(tmp_path / "narrow.tif", 0)
        with pytest.raises(HiresError, match="layout: tilewidth, tilelength"):
            sink.adopt(tmp_path / "blocks128.tif", 0)
        with pytest.raises(HiresError, match="not whole output block rows"):
            sink.adopt(tmp_path / "ok.tif", 32)
        sink.adopt(tmp_path / "ok.tif", 64)


@pytest.mark.parametrize("part_flavour,final_flavour", [("YES", "YES"), ("NO", "YES"), ("YES", "NO")])
def test_bigtiff_parts_and_outputs_mix(tmp_path, monkeypatch, part_flavour, final_flavour):
    """Tile bytes do not depend on the TIFF flavour: classic parts go into a BigTIFF output
    (64-bit tile tables) and the other way round."""
    from hires_domain.io import raster

    pixels = _crop(300, 200, "uint16")
    valid = np.ones((300, 200), bool)
    meta = {**read_raster(S2).meta, "dtype": "uint16", "nodata": 0}
    _write(tmp_path / "one.tif", pixels, valid, meta, 64)
    real_open = rasterio.open
    flavour = {"now": part_flavour}

    def open_with(path, mode="r", **kw):
        if mode == "w":
            kw["bigtiff"] = flavour["now"]
        return real_open(path, mode, **kw)

    monkeypatch.setattr(raster.rasterio, "open", open_with)
    for i, r0 in enumerate((0, 128)):
        _write(tmp_path / f"part{i}.tif", pixels[:, r0:r0 + 128 if r0 == 0 else 300], valid[r0:], meta, 64)
    flavour["now"] = final_flavour
    image = read_raster(S2)
    with RasterSink(tmp_path / "out.tif", pixels.shape, image.affine, meta, crs=image.crs, block=64,
                    sparse=True) as sink:
        sink.adopt(tmp_path / "part0.tif", 0)
        sink.adopt(tmp_path / "part1.tif", 128)
    with open(tmp_path / "out.tif", "rb") as f:
        assert (f.read(4)[2] == 43) == (final_flavour == "YES")  # BigTIFF magic 43
    np.testing.assert_array_equal(_read(tmp_path / "out.tif")[0], _read(tmp_path / "one.tif")[0])
