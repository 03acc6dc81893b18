"""Cubic convolution between axis-aligned grids (Keys, a = −0.5: GDAL's and OpenCV's "cubic").

The one resampler that puts coarse Sentinel-2 bands on a finer band's grid, in training (Wald's
reduced scale, nested grids) and in streaming (each band with its own transform, grids that need
not share an origin). Written here rather than taken from GDAL's warper or torch's interpolate
because both uses must give bit-identical values, and a window must give exactly the pixels of
the whole image (4 taps per axis, summed in a fixed order, edges replicated), which neither
library promises for windows.
"""

from __future__ import annotations

import math

import numpy as np

A = -0.5


def _kernel(t: np.ndarray) -> np.ndarray:
    t = np.abs(t)
    near = ((A + 2) * t - (A + 3)) * t * t + 1
    far = ((A * t - 5 * A) * t + 8 * A) * t - 4 * A
    return np.where(t <= 1, near, np.where(t < 2, far, 0.0))


def taps(coords: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Source indices ``(len, 4)`` (clamped to ``0..n-1``) and weights for positions ``coords``
    in source pixel units (pixel ``i``'s centre is at ``i``)."""
    coords = np.asarray(coords, dtype=np.float64)
    base = np.floor(coords).astype(np.int64)
    offsets = np.arange(-1, 3)
    idx = base[:, None] + offsets[None, :]
    w = _kernel(coords[:, None] - idx)
    return np.clip(idx, 0, n - 1), w


def span(coords: np.ndarray, n: int) -> slice:
    """The source rows (or columns) that ``taps(coords, n)`` reads."""
    lo, hi = math.floor(float(np.min(coords))) - 1, math.floor(float(np.max(coords))) + 2
    return slice(min(max(lo, 0), n - 1), max(min(hi, n - 1), 0) + 1)  # taps clamp to 0..n-1


def resample(img: np.ndarray, rows: np.ndarray, cols: np.ndarray, shape: tuple[int, int] | None = None,
             origin: tuple[int, int] = (0, 0)) -> np.ndarray:
    """Sample ``img`` (``(..., h, w)``) at row positions ``rows`` × column positions ``cols``.

    ``img`` may be a window of a larger source of ``shape`` starting at ``origin``: positions are
    in the whole source's pixel units, and the window must hold ``span`` of them.
    """
    shape = img.shape[-2:] if shape is None else shape
    ri, rw = taps(rows, shape[0])
    ci, cw = taps(cols, shape[1])
    src = np.asarray(img, dtype=np.float64)
    ri, ci = ri - origin[0], ci - origin[1]
    out = sum(src[..., ri[:, k], :] * rw[:, k, None] for k in range(4))
    out = sum(out[..., :, ci[:, k]] * cw[:, k] for k in range(4))
    return out.astype(np.float32)


def nested_coords(n_fine: int, factor: int, start: int = 0) -> np.ndarray:
    """Centres of fine pixels ``start .. start+n_fine`` in the units of a grid ``factor`` times
    coarser that shares its origin."""
    return (np.arange(start, start + n_fine) + 0.5) / factor - 0.5


def upsample(img: np.ndarray, factor: int) -> np.ndarray:
    """``(..., h, w)`` → ``(..., h·factor, w·factor)`` on the nested finer grid (footprint kept)."""
    h, w = img.shape[-2:]
    return resample(img, nested_coords(h * factor, factor), nested_coords(w * factor, factor))


def grid_coords(start: int, count: int, fine: tuple[float, float], coarse: tuple[float, float]) -> np.ndarray:
    """Centres of fine pixels ``start .. start+count`` along one axis, in coarse pixel units;
    ``fine``/``coarse`` are (origin, signed pixel size) along that axis, e.g. (c, a) or (f, e)."""
    centres = fine[0] + (np.arange(start, start + count) + 0.5) * fine[1]
    return (centres - coarse[0]) / coarse[1] - 0.5
