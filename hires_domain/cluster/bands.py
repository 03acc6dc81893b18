"""One raster split across Dask workers: row bands of the tile plan, assembled into one GeoTIFF.

The whole-image tile plan (``pipeline._plan``: model halo, output block alignment) is cut at
tile-row starts into bands of output rows. Each worker runs the batches of tiles that touch its
band (``tiling.iter_tiled(select=...)``: same batches as a single run, so bit-identical
predictions; with a blending overlap, the tile row overlapping the band above is run by both)
and writes the cells inside its band to a block-aligned GeoTIFF part; cells outside are
dropped, and cells blended with tiles it did not run are never finished. The client moves each
part's compressed blocks, as they are, into the final ``RasterSink`` (``adopt``: no decoding or
recompressing; GeoTIFF, or a COG converted at the end as in a single run, with the same metadata);
bands that do not start on the output block grid (tile − overlap under 64 input pixels) are
decoded and written again instead. So the pixels equal the single-process output, and each
worker holds one band's unfinished strip, like a single run.

The parts sit inside the output's temporary directory: workers and client need a shared
filesystem (always true for a LocalCluster).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import resource
import time
from pathlib import Path
from typing import Callable

from .. import geometry, io, pipeline, tiling
from ..errors import HiresError
from ..models import keep_models


class BandSink:
    """Passes the cells inside output rows ``[r0, r1)`` to ``part`` (a sink of those rows) and
    drops the rest. Band limits are cell boundaries, so a cell is wholly inside or outside."""

    def __init__(self, part, r0: int, r1: int, block: int):
        self.part, self.r0, self.r1, self.block = part, r0, r1, block

    def write(self, region, data, valid) -> None:
        rows = region[0]
        if rows.start >= self.r1 or rows.stop <= self.r0:
            return
        self.part.write((slice(rows.start - self.r0, rows.stop - self.r0), *region[1:]), data, valid)

    def finish(self) -> None:
        self.part.finish()


def _tile_plan(image, run: pipeline.Run) -> tiling.TilePlan:
    spec, _ = pipeline._plan(image, run, block=pipeline.output_block(run.settings.scale))
    return tiling.TilePlan(tuple(image.spatial_shape), spec)


def band_limits(plan: tiling.TilePlan, n_bands: int) -> list[tuple[int, int]]:
    """Output row ranges of up to ``n_bands`` bands, cut at tile-row starts (block-aligned)."""
    rows = plan.axes[0]
    k = rows.scale
    n = len(rows.starts)
    cuts = sorted({round(b * n / n_bands) for b in range(1, n_bands)} - {0, n})
    edges = [0, *(rows.starts[j] * k for j in cuts), rows.n * k]
    return list(zip(edges[:-1], edges[1:]))


def _touches(plan: tiling.TilePlan, r0: int, r1: int) -> Callable[[tuple[int, ...]], bool]:
    rows = plan.axes[0]
    k = rows.scale
    return lambda t: rows.starts[t[0]] * k < r1 and (rows.starts[t[0]] + rows.extent(t[0])) * k > r0


def run_band(src: str, settings: pipeline.Settings, r0: int, r1: int, parts: str) -> dict:
    """On a worker: enhance output rows ``[r0, r1)`` of ``src`` into a GeoTIFF part in ``parts``;
    returns its path, clipped count, seconds and this process's peak RSS."""
    keep_models()
    start = time.perf_counter()
    image = io.read(src)
    try:
        block = pipeline.output_block(settings.scale)
        run = pipeline.resolve_run(image, settings)
        plan = _tile_plan(image, run)
        width = image.spatial_shape[-1] * settings.scale
        path = Path(parts) / f"rows{r0:09d}.{os.getpid()}.tif"  # a retried band never meets a dead try's file
        meta = {**image.meta, "nodata": image.nodata}
        from ..io.raster import RasterSink

        with RasterSink(path, (image.channels, r1 - r0, width), image.affine, meta, crs=image.crs,
                        block=block) as part:
            pipeline._drain(pipeline.iter_enhance(image, BandSink(part, r0, r1, block), run,
                                                  select=_touches(plan, r0, r1)), None)
    finally:
        image.data.close()
    return {"path": str(path), "rows": [r0, r1], "clipped": part.clipped, "seconds": time.perf_counter() - start,
            "pid": os.getpid(),
            "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def _copy(band: dict, sink) -> None:
    """Decode a part block row by block row and write it into ``sink`` at its rows."""
    from ..io.raster import RasterSource

    r0, r1 = band["rows"]
    with RasterSource(band["path"]) as part:
        for row in range(0, r1 - r0, sink.block):
            window = (slice(row, min(row + sink.block, r1 - r0)), slice(0, sink.shape[2]))
            data, valid = part.read(window)
            sink.write((slice(r0 + row, r0 + window[0].stop), window[1]), data, valid)


def enhance_bands(src, dst, settings: pipeline.Settings, client, overwrite: bool = False, cog: bool = False,
                  progress: pipeline.Progress | None = None, series: str | None = None, uncertainty=None,
                  n_bands: int | None = None) -> pipeline.Summary:
    """``pipeline.enhance_file`` for a raster, its row bands run on the Dask ``client``'s workers
    (``n_bands``: default two per worker thread, so that copying finished bands into the output
    overlaps the running ones). ``progress(done, total)`` counts bands."""
    from ..io.raster import RasterSink

    src, dst = Path(src), Path(dst)
    if uncertainty is not None or settings.uncertainty:
        raise HiresError("--uncertainty is not available with --jobs/--scheduler: run it in one process")
    if series is not None:
        raise HiresError("--jobs/--scheduler split one raster; for DICOM series use `hires batch`")
    image = io.read(src)
    with contextlib.closing(image.data) if hasattr(image.data, "close") else contextlib.nullcontext():
        if image.kind != "raster":
            raise HiresError(f"--jobs/--scheduler split one raster into bands; {src} is {image.kind}: run it "
                             "without them, or many inputs with `hires batch`")
        io.output_kind(image, dst)
        io.check_output(dst, overwrite, src=src)
        run = pipeline.resolve_run(image, settings)
        # the resolved tiling and precision travel to the workers: every machine runs the same plan
        settings = dataclasses.replace(settings, tile=run.tile, overlap=run.overlap, batch_size=run.batch_size,
                                       precision=run.precision)
        note = pipeline.check_domain(image, run.model, settings.strict)
        out = pipeline.check_size(image, settings.scale, streamed_to=dst)
        plan = _tile_plan(image, run)
        workers = sum(client.nthreads().values()) or 1
        limits = band_limits(plan, n_bands or 2 * workers)
        start = time.perf_counter()
        shape, block = (image.channels, *out), pipeline.output_block(settings.scale)
        affine = geometry.upscaled_affine(image.affine, run.factors)
        with io.atomic_output(dst) as tmp:
            parts = tmp.parent / "parts"
            parts.mkdir()
            from . import in_order

            done = []
            # block-aligned bands (every default plan) move their compressed blocks in as they are;
            # others (tile - overlap under 64 input pixels) are decoded and written again
            raw = all(r0 % block == 0 for r0, _ in limits)
            with RasterSink(tmp, shape, affine, {**image.meta, "nodata": image.nodata}, crs=image.crs,
                            provenance=run.describe(), cog=cog, block=block, sparse=raw) as sink:
                # each band goes in as soon as it and those above it are done, while later ones run
                for band in in_order(client, lambda rows: run_band(str(src), settings, *rows, str(parts)), limits,
                                     progress):
                    done.append(band)
                    if raw:
                        sink.adopt(band["path"], band["rows"][0])
                    else:
                        _copy(band, sink)
                    Path(band["path"]).unlink()
    summary = pipeline.Summary(str(src), str(dst), settings.model, settings.scale, image.shape, shape,
                               time.perf_counter() - start, f"{len(limits)} band(s) on {workers} Dask worker(s)",
                               sum(b["clipped"] for b in done), notes=[note] if note else [], precision=run.precision)
    summary.bands = done
    return summary
