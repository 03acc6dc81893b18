"""The tile/block data-loss regression and the exactly-once ledger of every sink (real S2 pixels)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio

from hires_domain import tiling
from hires_domain.io.raster import RasterSink
from hires_domain.tiling import Coverage, IncompleteOutput
from support import SAMPLES, fails, hires


def odd_scene(path: Path, height: int = 263, width: int = 301) -> Path:
    """The bundled real Sentinel-2 crop reflect-padded to an odd size, no nodata (as in the report)."""
    with rasterio.open(SAMPLES / "s2_crop.tif") as src:
        data, profile = src.read(), src.profile
    data = np.pad(data, ((0, 0), (0, height - data.shape[1]), (0, width - data.shape[2])), mode="reflect")
    profile.update(height=height, width=width, nodata=None)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    return odd_scene(tmp_path_factory.mktemp("odd") / "s2.tif")


@pytest.fixture(scope="module")
def one_tile(scene, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "ref.tif"
    from hires_domain.pipeline import Settings, enhance_file
    enhance_file(scene, out, Settings("bicubic", 4, tile=512, overlap=0))
    with rasterio.open(out) as ds:
        return ds.read().astype(np.int64)


@pytest.mark.parametrize("tile,overlap", [(64, 16), (96, 16), (100, 10), (200, 40), (128, 32), (256, 32)])
def test_streamed_output_has_no_lost_blocks(scene, one_tile, tmp_path, capsys, tile, overlap):
    """Regression: tile steps off the 64-pixel block grid lost whole strips (rows 1024-1051 x cols
    0-1023 at tile 64 / overlap 16; 19-28 % of the pixels at the other settings), silently."""
    out = tmp_path / "out.tif"
    code, _, err = hires(capsys, "enhance", scene, out, "--model", "bicubic", "--scale", "4",
                         "--tile", tile, "--overlap", overlap, "-q")
    assert code == 0, err
    with rasterio.open(out) as ds:
        got = ds.read().astype(np.int64)
    assert got.shape == one_tile.shape == (4, 1052, 1204)
    assert not (got == 0).all(axis=0).any()
    assert np.abs(got - one_tile).max() <= 1


def test_rim_blocks_written_once(scene, tmp_path):
    """Partly covered blocks wait until complete: the file is no bigger than the one-tile file."""
    from hires_domain.pipeline import Settings, enhance_file
    a, b = tmp_path / "a.tif", tmp_path / "b.tif"
    enhance_file(scene, a, Settings("bicubic", 4, tile=100, overlap=10))
    enhance_file(scene, b, Settings("bicubic", 4, tile=512, overlap=0))
    assert a.stat().st_size <= 1.01 * b.stat().st_size


def test_coverage_names_missing_region_and_refuses_double_writes():
    cov = Coverage((300, 200), (64, 64))
    cov.add((slice(0, 100), slice(0, 200)))
    cov.add((slice(100, 290), slice(0, 150)))
    with pytest.raises(IncompleteOutput, match="written twice: rows 280-289, cols 100-127"):
        cov.add((slice(280, 300), slice(100, 200)))
    with pytest.raises(IncompleteOutput, match="outside the output"):
        cov.add((slice(290, 301), slice(0, 10)))
    count, box = cov.missing()
    assert count == 10 * 200 + 190 * 50 and box == (slice(100, 300), slice(0, 200))
    with pytest.raises(IncompleteOutput, match="never written .*rows 100-299, cols 0-199"):
        cov.check()
    cov.add((slice(290, 300), slice(0, 200)))
    cov.add((slice(100, 290), slice(150, 200)))
    cov.check()
    assert not cov.partial  # completed blocks drop their pixel masks


def test_array_sink_refuses_incomplete_and_double():
    sink = tiling.ArraySink((1, 10, 10))
    sink.write((slice(0, 5), slice(0, 10)), np.zeros((1, 5, 10), np.float32), np.ones((5, 10), bool))
    with pytest.raises(IncompleteOutput, match="50 of 100 output pixels were never written"):
        sink.finish()
    with pytest.raises(IncompleteOutput, match="twice"):
        sink.write((slice(4, 6), slice(0, 10)), np.zeros((1, 2, 10), np.float32), np.ones((2, 10), bool))


def test_raster_sink_incomplete_leaves_nothing(tmp_path, capsys):
    """A sink closed with pixels missing raises one line and the CLI keeps no output."""
    out = tmp_path / "x.tif"
    meta = {"dtype": "uint16", "nodata": None}
    with pytest.raises(IncompleteOutput, match="rows 64-99"):
        with RasterSink(out, (2, 100, 100), np.eye(3), meta, block=64) as sink:
            sink.write((slice(0, 64), slice(0, 100)), np.ones((2, 64, 100), np.float32), np.ones((64, 100), bool))


def test_cli_reports_a_tiler_shortfall_in_one_line(scene, tmp_path, capsys, monkeypatch):
    """If a tile's output were dropped, the run fails with one line and writes nothing."""
    original = tiling._blend_tile

    def drop_last(plan, t, *args):
        if t != plan.tiles()[-1]:
            original(plan, t, *args)

    monkeypatch.setattr(tiling, "_blend_tile", drop_last)
    out = tmp_path / "out.tif"
    line = fails(capsys, "enhance", scene, out, "--model", "bicubic", "--scale", "2", "--tile", "128",
                 "-q", match="never written")
    assert "rows" in line and "cols" in line
    assert not out.exists() and list(tmp_path.iterdir()) == []
