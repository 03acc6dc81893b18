"""Rasters (GeoTIFF, Sentinel-2 JP2, anything GDAL reads): lazy windowed reads, streamed writes.

Reading never loads a scene whole: ``read_raster`` returns an ``Image`` whose ``data`` is a
``RasterSource``. Writing streams finished windows into a tiled GeoTIFF through ``RasterSink``;
the output is always GeoTIFF (a COG with ``cog=True``), whatever the input format. Pixels pass
through float32 on the way (exact for integers up to 16 bits and for float32).

What is written back: CRS, transform (rotation terms included), nodata, band descriptions,
scales/offsets, colour interpretation, units, dataset and band tags. Not written back, because
they describe the old pixel grid or the old file: RPC/GEOLOCATION metadata, XML boxes, GCPs,
overviews and the source's compression settings.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import numpy as np
import rasterio
import rasterio.shutil
from rasterio.enums import ColorInterp, MaskFlags
from rasterio.errors import RasterioError
from rasterio.windows import Window

from .. import geometry
from ..errors import HiresError, one_line
from ..image import Image
from ..tiling import ArraySource, Coverage, Region
from .common import cast_to_dtype
from . import tiff_blocks
from .gdal_messages import FATAL_WARNINGS, libgeotiff_messages, reading, reason

BLOCK = 256  # default output block size (the pipeline picks 64 x scale: see pipeline.output_block)
CACHE_MB = 256  # GDAL block cache while writing: keeps memory bounded on huge outputs
DEFLATE_LEVEL = 3  # files within 0.3 % of level 6 (the default) at 3.6x less CPU (docs/performance.md)
_DROPPED_NAMESPACES = {"IMAGE_STRUCTURE", "DERIVED_SUBDATASETS", "SUBDATASETS", "RPC", "GEOLOCATION"}


def _open(path: str):
    with reading() as messages, libgeotiff_messages(path) as geotiff:
        try:
            ds = rasterio.open(path)
        except RasterioError as e:
            raise HiresError(f"cannot read raster {path}: {reason(e)}") from e
    fatal = [m for m in messages.messages if FATAL_WARNINGS.search(m)]
    if fatal:
        ds.close()
        raise HiresError(f"cannot read raster {path}: truncated or corrupt "
                         f"({re.sub(r'^CPLE_[A-Za-z]+ in ', '', one_line(fatal[0]))})")
    dropped = [line for line in geotiff if line.startswith("Error: ")]
    if dropped:  # libgeotiff skipped a GeoKey: the CRS would be silently lost or wrong
        ds.close()
        raise HiresError(f"cannot read raster {path}: corrupt georeferencing (GeoJP2 box: {one_line(dropped[0])[7:]})")
    for line in geotiff:
        warnings.warn(f"{path}: GeoJP2 box: {one_line(line)[9:]}", stacklevel=2)
    return ds


def _window(region: Region) -> Window:
    rows, cols = region
    return Window(cols.start, rows.start, cols.stop - cols.start, rows.stop - rows.start)


class RasterSource:
    """A raster file as a ``tiling.Source``: float32 windows plus validity.

    A pixel is valid when every band is valid by GDAL's masks (nodata, per-dataset mask, alpha)
    and finite. Only the path is pickled; the file opens on the first read (again in a new
    process) and stays open until ``close()`` or the end of a ``with`` block.
    """

    def __init__(self, path):
        self.path = str(path)
        with _open(self.path) as ds, reading():
            if ds.count == 0:
                raise HiresError(f"cannot read raster {self.path}: it has no bands (open one of its subdatasets)")
            if len(set(ds.dtypes)) > 1:
                raise HiresError(f"cannot read raster {self.path}: bands of mixed data types {sorted(set(ds.dtypes))}")
            self.shape = (ds.count, ds.height, ds.width)
            self.dtype = np.dtype(ds.dtypes[0])
            self._masked = any(flags != [MaskFlags.all_valid] for flags in ds.mask_flag_enums)
        self._ds, self._pid = None, None

    def _dataset(self):
        if self._ds is None or self._pid != os.getpid():
            self._ds, self._pid = _open(self.path), os.getpid()
        return self._ds

    def read(self, region: Region) -> tuple[np.ndarray, np.ndarray]:
        """Read lazily, during enhancement: a corrupt block fails here as a one-line error."""
        window = _window(region)
        ds = self._dataset()
        try:
            with reading():
                data = ds.read(window=window, out_dtype=np.float32)
                valid = np.isfinite(data).all(axis=0)
                if self._masked:
                    valid &= (ds.read_masks(window=window) > 0).all(axis=0)
        except (RasterioError, ValueError) as e:  # ValueError: a non-UTF-8 GDAL message (corrupt file)
            raise HiresError(f"cannot read raster {self.path}: {reason(e)}") from e
        return data, valid

    def close(self) -> None:
        if self._ds is not None and self._pid == os.getpid():
            self._ds.close()
        self._ds = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __getstate__(self):
        return {**self.__dict__, "_ds": None, "_pid": None}


def _metadata(ds) -> dict:
    """Everything ``RasterSink`` needs to write the raster back."""
    return {
        "driver": ds.driver,
        "dtype": ds.dtypes[0],
        "nodata": ds.nodata,
        "scales": list(ds.scales),
        "offsets": list(ds.offsets),
        "descriptions": list(ds.descriptions),
        "colorinterp": [c.name for c in ds.colorinterp],
        "units": list(ds.units),
        "tags": ds.tags(),
        "ns_tags": {ns: ds.tags(ns=ns) for ns in ds.tag_namespaces()
                    if ns not in _DROPPED_NAMESPACES and not ns.startswith("xml:")},
        "band_tags": [ds.tags(b) for b in ds.indexes],
        "mask_flags": [[f.name for f in flags] for flags in ds.mask_flag_enums],
        "profile": {k: ds.profile[k] for k in ("tiled", "blockxsize", "blockysize", "compress", "interleave")
                    if k in ds.profile},
    }


def read_raster(path) -> Image:
    """Open a raster lazily as an ``Image`` (pixels stay on disk until read by window)."""
    source = RasterSource(path)
    with _open(source.path) as ds, reading():
        try:
            affine = geometry.affine_from_transform(ds.transform)
            band_names = tuple(d or f"band {i}" for i, d in enumerate(ds.descriptions, 1))
            crs = ds.crs.to_wkt() if ds.crs else None
            meta = _metadata(ds)
        # corrupt metadata: undecodable text (UnicodeDecodeError), a CRS PROJ rejects (CRSError),
        # both ValueErrors, or GDAL errors
        except (RasterioError, ValueError) as e:
            raise HiresError(f"cannot read raster {source.path}: corrupt metadata ({reason(e)})") from e
        if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:2, :2])) < 1e-300:
            raise HiresError(f"cannot read raster {source.path}: corrupt georeferencing (geotransform "
                             f"{tuple(ds.transform)[:6]} is not finite and invertible)")
        return Image(
            data=source,
            affine=affine,
            frame="map",
            kind="raster",
            units="DN" if source.dtype.kind in "iu" else "",
            nodata=ds.nodata,
            band_names=band_names,
            crs=crs,
            meta=meta,
            source_path=str(path),
        )


class RasterSink:
    """A ``tiling.Sink`` that writes each finished window straight into a tiled GeoTIFF.

    ``meta`` is a source image's ``meta`` (``read_raster``); its dtype and nodata decide the
    output's. Float32 values are rounded and clipped to an integer dtype (``clipped`` counts
    the clipped values); a valid value that lands on the nodata value is moved one step off it
    (``nodata_collisions`` counts them). Invalid pixels become: the nodata value if there is
    one; else NaN for float rasters; else (integer, no nodata) 0 with an internal mask band
    marking them. Alpha bands are rewritten from validity. Per-band metadata is kept only
    when the band count is unchanged. With ``cog=True`` the tiled file is converted to a
    Cloud Optimized GeoTIFF (GDAL's COG driver, averaged overviews) on a clean close; the
    intermediate sits beside ``path`` and is always removed. With ``sparse=True`` the file is
    created without tiles and rows may come from ``adopt``-ed parts (their compressed blocks).
    """

    def __init__(self, path, shape, affine, meta: dict, crs: str | None = None,
                 provenance: str = "", cog: bool = False, block: int = BLOCK, sparse: bool = False):
        self.path, self.shape, self.affine = Path(path), tuple(shape), np.asarray(affine)
        self.meta, self.crs, self.provenance, self.cog = meta, crs, provenance, cog
        self.dtype = np.dtype(meta.get("dtype", "float32"))
        self.nodata = meta.get("nodata")
        self.clipped = 0
        self.nodata_collisions = 0
        colorinterp = self._per_band("colorinterp") or []
        self._alpha = [b for b, c in enumerate(colorinterp) if c == "alpha"]
        self._mask = self.nodata is None and self.dtype.kind != "f" and not self._alpha
        self._tiled = self.path.with_name(f".{self.path.stem}.tiled.tif") if cog else self.path
        self._dst = self._env = None
        self.block = block
        self.coverage = Coverage(self.shape[1:], (block, block))
        self._pending: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
        self.sparse = sparse
        self._opened = False

    def _per_band(self, key):
        values = self.meta.get(key)
        return list(values) if values is not None and len(values) == self.shape[0] else None

    def __enter__(self):
        self._env = rasterio.Env(GDAL_CACHEMAX=CACHE_MB)
        self._env.__enter__()
        count, height, width = self.shape
        try:
            self._dst = rasterio.open(
                self._tiled, "w", driver="GTiff", width=width, height=height, count=count,
                dtype=self.dtype, crs=self.crs, transform=geometry.transform_from_affine(self.affine),
                nodata=self.nodata, tiled=True, blockxsize=self.block, blockysize=self.block, compress="deflate",
                zlevel=DEFLATE_LEVEL, predictor=3 if self.dtype.kind == "f" else 2, bigtiff="IF_SAFER",
                sparse_ok=self.sparse)
            if self.sparse and self._mask:  # creates the mask's image; its one block is replaced by a part's
                self._dst.write_mask(np.full((1, 1), 255, np.uint8), window=Window(0, 0, 1, 1))
        except RasterioError as e:
            self._env.__exit__(None, None, None)
            raise HiresError(f"cannot write raster {self.path}: {one_line(e)}") from e
        self._write_metadata()
        self._opened = True
        return self

    def adopt(self, part, row0: int) -> None:
        """Take output rows ``row0…`` from ``part``, a GeoTIFF this class wrote with the same
        blocks (``sparse`` sinks only): its compressed blocks are appended to the file as they
        are, never decoded. GDAL is done with the file from the first part on."""
        if not self.sparse:
            raise HiresError("only a sparse RasterSink adopts parts")
        if self._dst is not None:
            self._dst.close()
            self._dst = None
        tiff_blocks.adopt_part(self._tiled, part, row0,
                               lambda rows: self.coverage.add((slice(row0, row0 + rows), slice(0, self.shape[2]))))

    def _write_metadata(self) -> None:
        dst, meta = self._dst, self.meta
        dst.update_tags(**meta.get("tags", {}))
        if self.provenance:
            dst.update_tags(HIRES_PROVENANCE=self.provenance)
        for ns, tags in meta.get("ns_tags", {}).items():
            dst.update_tags(ns=ns, **tags)
        if (scales := self._per_band("scales")) is not None:
            dst.scales = scales
        if (offsets := self._per_band("offsets")) is not None:
            dst.offsets = offsets
        if (units := self._per_band("units")) is not None:
            dst.units = [u or "" for u in units]
        if (colorinterp := self._per_band("colorinterp")) is not None:
            dst.colorinterp = [ColorInterp[c] for c in colorinterp]
        for b, desc in enumerate(self._per_band("descriptions") or [], 1):
            if desc:
                dst.set_band_description(b, desc)
        for b, tags in enumerate(self._per_band("band_tags") or [], 1):
            dst.update_tags(b, **tags)

    def write(self, region: Region, data: np.ndarray, valid: np.ndarray) -> None:
        """Write a finished window so that every compressed block is written exactly once.

        GDAL compresses and appends a block again each time a write touches part of it (the
        file would bloat), so the whole blocks inside ``region`` go straight to disk in one
        window and the partly covered blocks at its rim wait in a block buffer until the
        windows that complete them arrive. ``coverage`` refuses any pixel written twice.
        """
        out = self._convert(data, valid)
        touched = self.coverage.add(region)
        whole = [part for idx, part, _ in touched if part == self.coverage.block_region(idx)]
        if whole:  # the blocks wholly inside a rectangle form a rectangle
            box = tuple(slice(min(p[d].start for p in whole), max(p[d].stop for p in whole)) for d in range(2))
            self._write(box, *self._crop(box, region, out, valid))
        for idx, part, complete in touched:
            block = self.coverage.block_region(idx)
            if part == block:
                continue
            if idx not in self._pending:
                rows, cols = (r.stop - r.start for r in block)
                self._pending[idx] = (np.empty((self.shape[0], rows, cols), self.dtype), np.empty((rows, cols), bool))
            buf, buf_valid = self._pending[idx]
            local = tuple(slice(p.start - b.start, p.stop - b.start) for p, b in zip(part, block))
            piece, piece_valid = self._crop(part, region, out, valid)
            buf[(slice(None), *local)], buf_valid[local] = piece, piece_valid
            if complete:
                self._write(block, *self._pending.pop(idx))

    @staticmethod
    def _crop(part: Region, region: Region, data: np.ndarray, valid: np.ndarray):
        local = tuple(slice(p.start - r.start, p.stop - r.start) for p, r in zip(part, region))
        return data[(slice(None), *local)], valid[local]

    def finish(self) -> None:
        """Raise ``IncompleteOutput`` unless every output pixel was written exactly once."""
        self.coverage.check()

    def _write(self, region: Region, data: np.ndarray, valid: np.ndarray) -> None:
        window = _window(region)
        try:
            self._dst.write(data, window=window)
            if self._mask:
                self._dst.write_mask(valid.astype(np.uint8) * 255, window=window)
        except RasterioError as e:
            raise HiresError(f"cannot write raster {self.path}: {one_line(e)}") from e

    def _convert(self, data: np.ndarray, valid: np.ndarray) -> np.ndarray:
        fill = self.nodata if self.nodata is not None else (np.nan if self.dtype.kind == "f" else 0)
        filled = data if valid.all() else np.where(valid, data, np.float32(fill))
        out, clipped = cast_to_dtype(filled, self.dtype, valid)
        self.clipped += clipped
        if self.dtype.kind in "iu":
            info = np.iinfo(self.dtype)
            if self.nodata is not None:
                hit = valid & (out == self.nodata)
                self.nodata_collisions += int(np.count_nonzero(hit))
                out[hit] = self.nodata + 1 if self.nodata < info.max else self.nodata - 1
            for b in self._alpha:
                out[b] = np.where(valid, info.max, 0)
        return out

    def close(self, failed: bool = False) -> None:
        """Finish the file (checked complete unless ``failed``); with ``cog=True``, convert it to a
        COG at ``path``."""
        try:
            try:
                if self._opened and not failed:
                    self.finish()
            finally:
                if self._dst is not None:
                    self._dst.close()
                    self._dst = None
            if self.cog and self._opened and not failed:
                self._to_cog()
        finally:
            self._opened = False
            if self.cog:
                self._tiled.unlink(missing_ok=True)
            if self._env is not None:
                self._env.__exit__(None, None, None)
                self._env = None

    def _to_cog(self) -> None:
        # GDAL's COG driver, not rio-cogeo's cog_translate: the latter drops band units,
        # namespaced band metadata and (GDAL 3.10) the internal mask.
        try:
            rasterio.shutil.copy(self._tiled, self.path, driver="COG", COMPRESS="DEFLATE", LEVEL=DEFLATE_LEVEL,
                                 PREDICTOR="YES",
                                 BLOCKSIZE=BLOCK, OVERVIEWS="AUTO", OVERVIEW_RESAMPLING="AVERAGE",
                                 BIGTIFF="IF_SAFER")
        except RasterioError as e:
            raise HiresError(f"cannot write COG {self.path}: {one_line(e)}") from e

    def __exit__(self, exc_type, exc, tb):
        self.close(failed=exc_type is not None)


def write_raster(image: Image, path: Path, cog: bool = False, provenance: str = "") -> RasterSink:
    """Write ``image`` (numpy ``(C, H, W)`` or a lazy source) to ``path`` as GeoTIFF, strip by strip.

    Returns the closed sink, whose ``clipped`` and ``nodata_collisions`` say what changed.
    The caller owns output safety (``check_output``/``atomic_output``).
    """
    source = image.data if not isinstance(image.data, np.ndarray) else ArraySource(image.data, image.nodata)
    _, height, width = image.shape
    meta = {"dtype": str(np.dtype(image.data.dtype)), **image.meta, "nodata": image.nodata}
    with RasterSink(path, image.shape, image.affine, meta, crs=image.crs, provenance=provenance, cog=cog) as sink:
        for row in range(0, height, BLOCK):
            region = (slice(row, min(row + BLOCK, height)), slice(0, width))
            sink.write(region, *source.read(region))
    return sink
