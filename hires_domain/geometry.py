"""Geometry maths, in one place: every reader builds and every writer consumes these affines.

Convention: an image's ``affine`` is a homogeneous matrix of shape (W+1, S+1) that maps the
array index of a pixel *centre* along the S spatial axes (in array order: ``(z, y, x)`` for
volumes, ``(row, col)`` for rasters) to W world coordinates (DICOM patient LPS in mm, NIfTI
RAS in mm, or map x/y in the raster's CRS units).
"""

from __future__ import annotations

import numpy as np
from affine import Affine

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def as_factors(factors, ndim: int) -> np.ndarray:
    """Scale factors per spatial axis as a float array of length ``ndim``."""
    f = np.broadcast_to(np.asarray(factors, dtype=float), (ndim,)).copy()
    if np.any(f <= 0):
        raise ValueError(f"scale factors must be positive, got {tuple(f)}")
    return f


def upscaled_shape(shape, factors) -> tuple[int, ...]:
    """Output spatial shape after resampling by ``factors`` (same footprint)."""
    f = as_factors(factors, len(shape))
    return tuple(int(round(n * k)) for n, k in zip(shape, f))


def upscaled_affine(affine: np.ndarray, factors) -> np.ndarray:
    """Affine of the grid refined by ``factors`` that keeps the footprint.

    New pixel centre i' sits at old index (i' + 0.5)/k - 0.5, so
    A' = A·diag(1/k) and the origin moves by A·(1/k − 1)/2.
    """
    affine = np.asarray(affine, dtype=float)
    s = affine.shape[1] - 1
    f = as_factors(factors, s)
    out = affine.copy()
    out[:-1, :s] = affine[:-1, :s] / f
    out[:-1, s] = affine[:-1, s] + affine[:-1, :s] @ ((1.0 / f - 1.0) / 2.0)
    return out


def cropped_affine(affine: np.ndarray, starts) -> np.ndarray:
    """Affine of the sub-array that starts at index ``starts`` (one per spatial axis): same
    axes and spacing, origin moved to the world position of old pixel ``starts``."""
    affine = np.asarray(affine, dtype=float)
    s = affine.shape[1] - 1
    st = np.asarray(starts, dtype=float)
    if st.shape != (s,):
        raise ValueError(f"need {s} crop starts, got {tuple(st.shape)}")
    out = affine.copy()
    out[:-1, s] = affine[:-1, s] + affine[:-1, :s] @ st
    return out


def world_of(affine: np.ndarray, index) -> np.ndarray:
    """World coordinates of pixel centres at ``index`` (..., S) array indices."""
    affine = np.asarray(affine, dtype=float)
    idx = np.asarray(index, dtype=float)
    s = affine.shape[1] - 1
    return idx @ affine[:-1, :s].T + affine[:-1, s]


def index_of(affine: np.ndarray, world) -> np.ndarray:
    """Array indices (..., S) of world points: the inverse of ``world_of`` (square affines)."""
    return world_of(np.linalg.inv(np.asarray(affine, dtype=float)), world)


def spacing(affine: np.ndarray) -> np.ndarray:
    """Pixel spacing along each spatial array axis (length of the affine's columns)."""
    affine = np.asarray(affine, dtype=float)
    return np.linalg.norm(affine[:-1, :-1], axis=0)


def directions(affine: np.ndarray) -> np.ndarray:
    """Unit direction vectors (columns) of each spatial array axis."""
    affine = np.asarray(affine, dtype=float)
    return affine[:-1, :-1] / spacing(affine)


# --- rasters: rasterio transforms map (col, row) of pixel *corners* to map (x, y) ---------

def affine_from_transform(t: Affine) -> np.ndarray:
    """Centre affine (row, col) -> (x, y) from a rasterio/GDAL transform (rotation kept)."""
    c = t @ Affine.translation(0.5, 0.5)
    return np.array([[c.b, c.a, c.c], [c.e, c.d, c.f], [0.0, 0.0, 1.0]])


def transform_from_affine(a: np.ndarray) -> Affine:
    """rasterio transform (corner convention) from a centre affine (row, col) -> (x, y)."""
    c = Affine(a[0, 1], a[0, 0], a[0, 2], a[1, 1], a[1, 0], a[1, 2])
    return c @ Affine.translation(-0.5, -0.5)


# --- NIfTI: nibabel affines map (i, j, k) of the stored array; we hold it as (k, j, i) -----

def affine_from_nifti(nib_affine: np.ndarray) -> np.ndarray:
    """Our (z, y, x) affine from a nibabel (i, j, k) affine."""
    a = np.asarray(nib_affine, dtype=float)
    return a[:, [2, 1, 0, 3]]


def nifti_from_affine(affine: np.ndarray) -> np.ndarray:
    """nibabel (i, j, k) affine from our (z, y, x) affine."""
    return np.asarray(affine, dtype=float)[:, [2, 1, 0, 3]]


def convert_frame(affine: np.ndarray, src: str, dst: str) -> np.ndarray:
    """Re-express a 3-D affine between patient frames 'LPS' (DICOM) and 'RAS' (NIfTI)."""
    if src == dst:
        return np.asarray(affine, dtype=float)
    if {src, dst} != {"LPS", "RAS"}:
        raise ValueError(f"cannot convert world frame {src} to {dst}")
    return LPS_TO_RAS @ np.asarray(affine, dtype=float)


# --- viewer world: one convention per frame so that layers of one patient/CRS overlay -------

_DISPLAY_ROWS = {
    "LPS": np.array([[0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1.0]]),  # (z, y, x) of LPS
    "map": np.array([[0, -1, 0], [1, 0, 0], [0, 0, 1.0]]),  # (-northing, easting): rows go south
}


def display_affine(affine: np.ndarray, frame: str) -> np.ndarray:
    """Square affine from array index to the viewer's world axes.

    Medical images (LPS or RAS) map to (z, y, x) of patient LPS, so a DICOM series and a NIfTI of
    the same patient overlay; rasters map to (−northing, easting) in their CRS units.
    """
    affine = np.asarray(affine, dtype=float)
    if frame in ("LPS", "RAS"):
        return _DISPLAY_ROWS["LPS"] @ convert_frame(affine, frame, "LPS")
    return _DISPLAY_ROWS[frame] @ affine


def scale_translate(display: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(scale, translate) when a display affine is axis-aligned with positive scales, else None
    (the viewer then needs the full affine)."""
    linear = display[:-1, :-1]
    diag = np.diag(linear)
    if np.allclose(linear, np.diag(diag), atol=1e-9 * np.abs(diag).max()) and np.all(diag > 0):
        return diag.copy(), display[:-1, -1].copy()
    return None
