"""PNG previews for the page: the same centre crop of input and result (bounded reads), one
display mapping fixed from the input (true colour for rasters, a CT window for CT)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image as PILImage

from .. import io
from ..image import Image
from ..report import Display, display_for, uncertainty_rgb

SIDE = 512  # output pixels per side of a preview
CT_PREVIEW_WINDOW = "soft-tissue"


def _crop(image: Image, y0: int, x0: int, h: int, w: int) -> np.ndarray:
    """(C, h, w) float32 at (y0, x0) of the middle slice; invalid pixels NaN. Lazy rasters read
    only this window."""
    rows, cols = slice(y0, y0 + h), slice(x0, x0 + w)
    if isinstance(image.data, np.ndarray):
        arr = image.data if image.data.ndim == 3 else image.data[:, image.data.shape[1] // 2]
        data = arr[:, rows, cols].astype(np.float32)
        if image.nodata is not None:
            data[data == image.nodata] = np.nan
        return data
    data, valid = image.data.read((rows, cols))
    data[:, ~valid] = np.nan
    return data


def _display(image: Image, ref: np.ndarray) -> Display:
    if image.kind == "raster" and image.channels >= 3:
        return display_for(ref, "raster", image.band_names)
    if image.units == "HU":
        return Display("medical", CT_PREVIEW_WINDOW)
    v = ref[0][np.isfinite(ref[0])]  # MR, single-band rasters: a 2-98 % stretch
    lo, hi = np.percentile(v, [2, 98]) if v.size else (0.0, 1.0)
    return Display("raster", bands=(0, 0, 0), limits=((float(lo), float(hi)),) * 3)


def _save(rgb: np.ndarray, png: Path) -> None:
    PILImage.fromarray((np.clip(rgb, 0, 1) * 255).astype(np.uint8)).save(png)


def write_previews(src: Path, result: Path | None, scale: int, out_dir: Path,
                   uncertainty: Path | None = None) -> list[str]:
    """input.png, and with ``result`` result.png (and uncertainty.png), of one footprint at
    most SIDE output pixels wide; returns the names written."""
    a = io.read(src)
    try:
        h, w = a.spatial_shape[-2:]
        side = max(1, SIDE // scale)
        ch, cw = min(h, side), min(w, side)
        y0, x0 = (h - ch) // 2, (w - cw) // 2
        ref = _crop(a, y0, x0, ch, cw)
        display = _display(a, ref)
        _save(display.rgb(ref), out_dir / "input.png")
        names = ["input.png"]
        for path, name in ((result, "result.png"), (uncertainty, "uncertainty.png")):
            if path is None:
                continue
            b = io.read(path)
            try:
                crop = _crop(b, y0 * scale, x0 * scale, ch * scale, cw * scale)
            finally:
                if hasattr(b.data, "close"):
                    b.data.close()
            _save(display.rgb(crop) if name == "result.png" else uncertainty_rgb(crop), out_dir / name)
            names.append(name)
        return names
    finally:
        if hasattr(a.data, "close"):
            a.data.close()
