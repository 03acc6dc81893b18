"""A Sentinel-2 product as one image: every band on the finest band's grid, read lazily.

``read_product`` returns a raster ``Image`` whose source reads a window of the 10 m grid from each
band file with that band's own transform (grids need not share an origin) and brings coarser
bands onto it with ``resample`` (cubic convolution, the operator ``s2-sharpen`` was trained
with). A window gives exactly the pixels of the whole scene. A 10 m pixel is valid when every
band is valid there and, for a coarse band, every pixel the cubic taps read is valid (nodata never
leaks into values) and it lies within half a coarse pixel of that band's footprint.

Values stay in the product's DN; ``meta['dn_offsets']`` carries the product's additive offsets
(``BOA_ADD_OFFSET``/``RADIO_ADD_OFFSET``, −1000 from baseline 04.00), which the pipeline adds
before a model sees the pixels and removes after, so models always see ``reflectance ×
quantification`` whatever the baseline, and the output keeps the product's DN convention (with
GDAL scale/offset giving reflectance).
"""

from __future__ import annotations

import numpy as np

from .. import geometry, resample
from ..errors import HiresError
from ..image import Image
from .raster import RasterSource
from .s2_product import S2_ORDER, S2Product, open_product

DEFAULT_BANDS = tuple(b for b in S2_ORDER if b != "B10")  # B10 (cirrus, 60 m) only when asked for


class ProductSource:
    """``tiling.Source`` over the bands of a product on its finest grid (float32 DN + validity)."""

    def __init__(self, product: S2Product, bands: tuple[str, ...]):
        self.product, self.bands = product, tuple(bands)
        files = [product.bands[b] for b in self.bands]
        self.fine = min(files, key=lambda f: f.resolution)
        self.shape = (len(files), *self.fine.shape)
        self.dtype = np.dtype(self.fine.dtype)
        self._files = files
        self._sources = [RasterSource(f.path) for f in files]

    def _axes(self, f, region):
        """Positions of the window's pixel centres in band ``f``'s pixel units (rows, cols)."""
        (rows, cols), a, b = region, self.fine.transform, f.transform
        r = resample.grid_coords(rows.start, rows.stop - rows.start, (a[5], a[4]), (b[5], b[4]))
        c = resample.grid_coords(cols.start, cols.stop - cols.start, (a[2], a[0]), (b[2], b[0]))
        return r, c

    def read(self, region) -> tuple[np.ndarray, np.ndarray]:
        rows, cols = region
        h, w = rows.stop - rows.start, cols.stop - cols.start
        data = np.empty((len(self._files), h, w), np.float32)
        valid = np.ones((h, w), bool)
        for k, (f, src) in enumerate(zip(self._files, self._sources)):
            r, c = self._axes(f, region)
            if f.transform == self.fine.transform:
                d, v = self._read(k, region)
                data[k], valid = d, valid & v
                continue
            rs, cs = resample.span(r, f.shape[0]), resample.span(c, f.shape[1])
            d, v = self._read(k, (rs, cs))
            data[k] = resample.resample(d, r, c, f.shape, (rs.start, cs.start))
            valid &= self._valid_taps(v, r, c, f.shape, (rs.start, cs.start))
        return data, valid

    def _read(self, k: int, region) -> tuple[np.ndarray, np.ndarray]:
        """Band ``k``'s own pixels in ``region``; its product nodata (0 in SAFE) is invalid too."""
        d, v = self._sources[k].read(region)
        if self._files[k].nodata is not None:
            v = v & (d[0] != self._files[k].nodata)
        return d[0], v

    @staticmethod
    def _valid_taps(v: np.ndarray, r, c, shape, origin) -> np.ndarray:
        ri, _ = resample.taps(r, shape[0])
        ci, _ = resample.taps(c, shape[1])
        rows = np.logical_and.reduce([v[ri[:, k] - origin[0]] for k in range(4)])
        out = np.logical_and.reduce([rows[:, ci[:, k] - origin[1]] for k in range(4)], axis=0)
        inside_r = (r >= -1.0) & (r <= shape[0])  # within half a coarse pixel of the footprint
        inside_c = (c >= -1.0) & (c <= shape[1])
        return out & inside_r[:, None] & inside_c[None, :]

    def close(self) -> None:
        for s in self._sources:
            s.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def read_product(path, bands: tuple[str, ...] | None = None) -> Image:
    """A product (SAFE directory or zip, or a band directory) as one lazy raster ``Image``."""
    product = open_product(path)
    want = tuple(bands) if bands else tuple(b for b in DEFAULT_BANDS if b in product.bands)
    missing = [b for b in want if b not in product.bands]
    if missing:
        raise HiresError(f"{path}: bands {', '.join(missing)} not in the product (it has {', '.join(product.bands)})")
    source = ProductSource(product, want)
    fine = source.fine
    q = product.quantification
    offsets = [float(product.offsets.get(b, 0.0)) for b in want]
    res = {b: product.bands[b].resolution for b in want}
    meta = {
        "driver": "GTiff", "dtype": fine.dtype, "nodata": fine.nodata,
        "scales": [1.0 / q] * len(want), "offsets": [o / q for o in offsets],
        "descriptions": list(want), "colorinterp": ["gray"] * len(want), "units": [""] * len(want),
        "tags": {"S2_PRODUCT": product.provenance, "S2_PROCESSING_LEVEL": product.level or "unknown",
                 "S2_PROCESSING_BASELINE": product.baseline or "unknown"},
        "ns_tags": {}, "band_tags": [{"NATIVE_RESOLUTION_M": f"{res[b]:g}"} for b in want],
        "mask_flags": [], "profile": {}, "dn_offsets": offsets,
    }
    return Image(data=source, affine=geometry.affine_from_transform(_affine(fine.transform)), frame="map",
                 kind="raster", units="DN", nodata=fine.nodata, band_names=want, crs=fine.crs, meta=meta,
                 source_path=str(path))


def _affine(t):
    from rasterio import Affine

    return Affine(*t[:6])
