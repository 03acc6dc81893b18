"""`hires info`: a description of any input, human-readable or JSON (no patient identifiers)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from rich.console import Console

from . import geometry, io
from .image import Image

SAMPLED_ROWS = 64


def _intensity(image: Image) -> dict:
    """Statistics over valid pixels; rasters are sampled on evenly spaced rows (bounded memory)."""
    from .tiling import ArraySource

    src = image.data if not isinstance(image.data, np.ndarray) else ArraySource(image.data, image.nodata)
    shape = image.spatial_shape
    if isinstance(image.data, np.ndarray):
        regions, how = [tuple(slice(0, n) for n in shape)], "all pixels"
    else:
        rows = np.unique(np.linspace(0, shape[0] - 1, min(SAMPLED_ROWS, shape[0])).astype(int))
        regions, how = [(slice(r, r + 1), slice(0, shape[1])) for r in rows], f"{len(rows)} sampled rows"
    per_band = [[] for _ in range(image.channels)]
    invalid = total = 0
    for region in regions:
        data, valid = src.read(region)
        invalid += int((~valid).sum())
        total += valid.size
        for c in range(image.channels):
            per_band[c].append(data[c][valid])
    stats = []
    for name, vals in zip(_band_names(image), per_band):
        v = np.concatenate(vals) if vals else np.empty(0)
        if v.size == 0:
            stats.append({"band": name, "valid": 0})
            continue
        p1, p99 = np.percentile(v, [1, 99])
        stats.append({"band": name, "min": float(v.min()), "max": float(v.max()), "mean": float(v.mean()),
                      "std": float(v.std()), "p1": float(p1), "p99": float(p99)})
    return {"over": how, "invalid_fraction": invalid / max(total, 1), "bands": stats}


def _band_names(image: Image) -> list[str]:
    return list(image.band_names) or [f"band {i + 1}" for i in range(image.channels)]


def describe(path: Path, series: str | None = None) -> dict:
    """Everything `hires info` shows, as plain JSON-able values."""
    path = Path(path)
    from .io import s2_product

    if s2_product.is_product(path):
        return _describe_product(s2_product.open_product(path))
    kind = io.detect(path)
    d: dict = {"path": str(path), "format": kind}
    if kind == "dicom":
        from .io.dicom import list_series

        d["series"] = list_series(path)
        if series is None and len(d["series"]) > 1:
            return d
    image = io.read(path, series=series)
    d.update({
        "shape": list(image.shape),
        "axes": "C,Z,Y,X" if len(image.spatial_shape) == 3 else "C,Y,X",
        "units": image.units,
        "world_frame": image.frame,
        "spacing": geometry.spacing(image.affine).tolist(),
        "origin": geometry.world_of(image.affine, [0] * len(image.spatial_shape)).tolist(),
        "directions": geometry.directions(image.affine).round(6).tolist(),
        "affine": np.asarray(image.affine).tolist(),
        "nodata": image.nodata,
        "band_names": _band_names(image),
        "dtype": str(np.dtype(image.meta.get("dtype", getattr(image.data, "dtype", "float32")))),
    })
    for key in ("scales", "offsets"):
        if image.meta.get(key) is not None:
            d[key] = list(image.meta[key])
    if image.crs:
        d["crs"] = _crs_text(image.crs)
    d["intensity"] = _intensity(image)
    return d


def _crs_text(wkt: str) -> str:
    from rasterio.crs import CRS
    from rasterio.errors import CRSError

    try:
        return CRS.from_wkt(wkt).to_string()
    except CRSError:  # a CRS PROJ cannot round-trip: show it as stored
        return " ".join(wkt.split())


def _describe_product(product) -> dict:
    """A Sentinel-2 product: its radiometry and each band file's own grid (no pixels read)."""
    return {
        "path": product.path, "format": "s2-product", "kind": product.kind, "level": product.level,
        "baseline": product.baseline, "quantification": product.quantification, "offsets": dict(product.offsets),
        "provenance": product.provenance, "crs": _crs_text(next(iter(product.bands.values())).crs),
        "bands": [{"name": b.name, "resolution": b.resolution, "shape": list(b.shape),
                   "origin": [b.transform[2], b.transform[5]], "dtype": b.dtype, "nodata": b.nodata, "path": b.path}
                  for b in product.bands.values()],
    }


def _render_product(d: dict, console: Console) -> None:
    console.print(f"  {d['kind']}   level {d['level'] or '-'}   baseline {d['baseline'] or '-'}   "
                  f"quantification {d['quantification']:g}   crs {d['crs']}", soft_wrap=True)
    offsets = sorted(set(d["offsets"].values()))
    shown = f"{offsets[0]:g} (every band)" if len(offsets) == 1 else \
        ", ".join(f"{b} {v:g}" for b, v in d["offsets"].items())
    console.print(f"  DN offsets: {shown}", soft_wrap=True)
    console.print(f"  {d['provenance']}", soft_wrap=True, markup=False)
    for b in d["bands"]:
        nodata = "-" if b["nodata"] is None else f"{b['nodata']:g}"
        console.print(f"    {b['name']:<4} {b['resolution']:>3g} m  {b['shape'][0]} x {b['shape'][1]}  "
                      f"origin {b['origin'][0]:.10g}, {b['origin'][1]:.10g}  {b['dtype']}  nodata {nodata}",
                      soft_wrap=True)


def render(d: dict, console: Console) -> None:
    """Human summary of ``describe``'s dict."""
    console.print(f"[bold]{d['path']}[/bold]  ({d['format']})")
    if d["format"] == "s2-product":
        return _render_product(d, console)
    for s in d.get("series", []):
        console.print(f"  series {s['uid']}  \"{s.get('description', '')}\"  {s.get('modality', '')}  "
                      f"{s['slices']} slice(s)  {s.get('rows')}x{s.get('columns')}")
    if "shape" not in d:
        console.print("  several series: pick one with --series UID for geometry and intensities")
        return
    fmt = lambda v: ", ".join(f"{x:.6g}" for x in v)  # noqa: E731
    console.print(f"  shape ({d['axes']}): {' x '.join(map(str, d['shape']))}   dtype {d['dtype']}"
                  f"   units {d['units'] or '-'}")
    console.print(f"  spacing: {fmt(d['spacing'])}   origin ({d['world_frame']}): {fmt(d['origin'])}")
    if "crs" in d:
        console.print(f"  crs: {d['crs']}   nodata: {d['nodata']}")
    if "scales" in d:
        console.print(f"  per-band scale: {fmt(d['scales'])}   offset: {fmt(d.get('offsets') or [])}")
    it = d["intensity"]
    console.print(f"  intensity over {it['over']} (invalid {100 * it['invalid_fraction']:.1f}%):")
    for b in it["bands"]:
        if b.get("valid") == 0:
            console.print(f"    {b['band']}: no valid pixels")
        else:
            console.print(f"    {b['band']}: min {b['min']:.6g}  max {b['max']:.6g}  mean {b['mean']:.6g}  "
                          f"std {b['std']:.6g}  p1..p99 {b['p1']:.6g}..{b['p99']:.6g}")
