"""Compare a prediction with its reference (and LR input) on one grid: every metric, with settings.

``evaluate_pair`` returns a JSON-able dict (non-finite numbers become None) that the report
writer and the CLI read; its schema is documented in docs/metrics.md.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Callable

import numpy as np
from scipy import ndimage

from .. import geometry, tiling
from ..errors import HiresError
from ..image import Image
from . import domain, fidelity
from .ranges import resolve_range

MAX_BYTES = 2 * 1024**3
GRID_ATOL = 1e-3  # affine tolerance, as a fraction of the smallest pixel spacing
MASK_RULE = "valid pixels of pred & ref (& nodata)"

Perceptual = Callable[[np.ndarray, np.ndarray, dict], dict]


# --- grids ---------------------------------------------------------------------------------

def _unit(image: Image) -> str:
    if image.kind != "raster":
        return "mm"
    try:
        from rasterio.crs import CRS

        unit = CRS.from_wkt(image.crs).linear_units if image.crs else ""
    except Exception:  # an unparsable CRS only loses the unit in a message
        unit = ""
    return {"metre": "m", "meter": "m", "metres": "m"}.get(unit, unit or "units")


def _grid_text(image: Image) -> str:
    sp = image.spacing
    spacing = f"{sp[0]:g}" if np.allclose(sp, sp[0]) else "x".join(f"{s:g}" for s in sp)
    return f"{'x'.join(str(n) for n in image.spatial_shape)} at {spacing} {_unit(image)}"


def _affine_in(image: Image, frame: str) -> np.ndarray:
    if image.frame == frame:
        return image.affine
    try:
        return geometry.convert_frame(image.affine, image.frame, frame)
    except ValueError as e:
        raise HiresError(f"cannot compare a {image.frame} grid with a {frame} grid") from e


def _same_crs(a: Image, b: Image) -> bool:
    if a.crs == b.crs:
        return True
    if a.crs is None or b.crs is None:
        return False
    from rasterio.crs import CRS

    return CRS.from_wkt(a.crs) == CRS.from_wkt(b.crs)


def check_same_grid(pred: Image, ref: Image, what: str = "prediction") -> None:
    """HiresError (one line) unless ``pred`` and ``ref`` share spatial shape, affine and CRS."""
    hint = "pass --resample to resample the prediction onto the reference grid"
    if pred.kind == "raster" and ref.kind == "raster" and not _same_crs(pred, ref):
        raise HiresError(f"{what} CRS differs from the reference CRS; reproject it first (resampling "
                         "does not change CRS)")
    if len(pred.spatial_shape) != len(ref.spatial_shape):
        raise HiresError(f"{what} is {len(pred.spatial_shape)}-D but the reference is {len(ref.spatial_shape)}-D")
    tol = GRID_ATOL * float(np.min(ref.spacing))
    same_affine = np.allclose(_affine_in(pred, ref.frame), ref.affine, rtol=0, atol=tol)
    if pred.spatial_shape != ref.spatial_shape or not same_affine:
        detail = "" if pred.spatial_shape != ref.spatial_shape or not np.allclose(
            pred.spacing, ref.spacing, rtol=0, atol=tol) else " (origin or orientation)"
        raise HiresError(f"{what} grid {_grid_text(pred)} differs from reference {_grid_text(ref)}"
                         f"{detail}; {hint}")


def resample_to(pred: Image, ref: Image) -> Image:
    """``pred`` resampled onto ``ref``'s grid: linear interpolation (``map_coordinates``, order 1)
    through the two affines. Pixels outside ``pred`` or next to its invalid pixels become NaN."""
    if pred.kind == "raster" and not _same_crs(pred, ref):
        raise HiresError("prediction CRS differs from the reference CRS; reproject it first")
    data, valid = load_pixels(pred)
    data = np.where(valid, data, np.nan)
    idx = np.indices(ref.spatial_shape, dtype=np.float64).reshape(len(ref.spatial_shape), -1).T
    coords = geometry.index_of(_affine_in(pred, ref.frame), geometry.world_of(ref.affine, idx)).T
    out = np.stack([ndimage.map_coordinates(band, coords, order=1, mode="constant", cval=np.nan)
                    .reshape(ref.spatial_shape) for band in data]).astype(np.float32)
    return replace(pred, data=out, affine=np.array(ref.affine, dtype=float), frame=ref.frame)


# --- loading -------------------------------------------------------------------------------

def load_pixels(image: Image) -> tuple[np.ndarray, np.ndarray]:
    """All pixels as float32 plus the valid mask (finite, not nodata, and the file's own masks)."""
    need = 4 * image.channels * math.prod(image.spatial_shape)
    if need > MAX_BYTES:
        raise HiresError(f"{image.source_path or 'image'} is {need / 1024**3:.1f} GiB as float32: "
                         "evaluate patches or crops of it (at most 2 GiB)")
    if isinstance(image.data, np.ndarray):
        data = image.data.astype(np.float32, copy=False)
        return data, tiling.valid_mask(data, image.nodata)
    data, valid = image.data.read(tuple(slice(0, n) for n in image.spatial_shape))
    return data, valid & tiling.valid_mask(data, image.nodata)


def _scale_from_lr(pred: Image, lr: Image, scale: int | None) -> int:
    """The integer in-plane factor from LR to prediction; refuses an LR on any other grid."""
    f = [p / q for p, q in zip(pred.spatial_shape, lr.spatial_shape)]
    k = int(f[-1])
    factors = (1,) * (len(f) - 2) + (k, k)
    tol = GRID_ATOL * float(np.min(pred.spacing))
    if len(pred.spatial_shape) != len(lr.spatial_shape) or k < 1 or list(factors) != f \
            or (lr.kind == "raster" and not _same_crs(lr, pred)) \
            or not np.allclose(geometry.upscaled_affine(_affine_in(lr, pred.frame), factors), pred.affine,
                               rtol=0, atol=tol):
        raise HiresError(f"LR grid {_grid_text(lr)} is not the prediction grid {_grid_text(pred)} "
                         "coarsened by one integer in-plane factor (same footprint and CRS)")
    if scale is not None and scale != k:
        raise HiresError(f"scale {scale} given but the LR input implies x{k}")
    return k


# --- evaluation ----------------------------------------------------------------------------

def _entry(value, unit: str, better: str, per_band=None, **extra) -> dict:
    e = {"value": value}
    if per_band is not None:
        e["per_band"] = per_band
    return {**e, "unit": unit, "better": better, **extra}


def _score_entry(score: fidelity.Score, unit: str, better: str) -> dict:
    extra = {"reason": score.reason} if score.reason else {}
    if score.value == math.inf:
        extra["note"] = "infinite (prediction equals reference); reported as null"
    return _entry(score.value, unit, better, score.per_band, **extra)


def _clean(obj):
    """JSON-able copy: numpy scalars to Python, NaN/inf to None."""
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, (np.generic, float)):
        v = obj.item() if isinstance(obj, np.generic) else obj
        return v if not isinstance(v, float) or math.isfinite(v) else None
    return obj


def evaluate_pair(pred: Image, ref: Image, lr: Image | None = None, window: str | None = None,
                  bands: list[int] | None = None, data_range: tuple | None = None, resample: bool = False,
                  scale: int | None = None, tiling: dict | None = None,
                  perceptual: Perceptual | None = None) -> dict:
    """Every applicable metric of ``pred`` against ``ref`` (and ``lr``), with the settings used.

    ``bands``: 0-based band indices (default all). ``data_range``: (lo, hi) on stored values,
    instead of a ``window``/the default range. ``resample``: put ``pred`` on ``ref``'s grid first
    instead of refusing a different grid. ``scale``: SR factor (inferred from ``lr``). ``tiling``:
    ``{'tile': t, 'overlap': o}`` of the run that made ``pred``, for the seam score.
    ``perceptual(pred, ref, settings)``: optional callable adding LPIPS/FID entries; it gets the
    selected bands only, in metric units (windowed HU / reflectance), channels first, and the
    settings plus ``kind`` (the reference's) and ``valid`` (the spatial mask array).
    """
    if resample:
        try:
            check_same_grid(pred, ref)
        except HiresError:
            pred = resample_to(pred, ref)
    else:
        check_same_grid(pred, ref)
    if pred.channels != ref.channels:
        raise HiresError(f"prediction has {pred.channels} bands, the reference {ref.channels}")
    rng = resolve_range(ref, window, data_range)
    idx = list(range(ref.channels)) if bands is None else [int(b) for b in bands]
    if any(not 0 <= b < ref.channels for b in idx):
        raise HiresError(f"bands {idx} out of range: the images have {ref.channels} (0-based indices)")
    if lr is not None:
        scale = _scale_from_lr(pred, lr, scale)
    (p_raw, p_ok), (r_raw, r_ok) = load_pixels(pred), load_pixels(ref)
    mask = p_ok & r_ok
    p_raw, r_raw = p_raw[idx], r_raw[idx]
    p, r = rng.apply(p_raw, pred, idx), rng.apply(r_raw, ref, idx)
    names = [ref.band_names[b] if b < len(ref.band_names) else f"band {b + 1}" for b in idx]
    settings = {"data_range": rng.to_dict(), "window": window, "bands": names, "band_indices": idx,
                "mask": MASK_RULE, "scale": scale}

    w = rng.width
    m = {"psnr": _score_entry(fidelity.psnr(p, r, w, mask), "dB", "higher"),
         "ssim": _score_entry(fidelity.ssim(p, r, w, mask), "", "higher"),
         "ms_ssim": _score_entry(fidelity.ms_ssim(p, r, w, mask), "", "higher")}
    if len(idx) > 1:
        m["sam"] = _entry(domain.sam(p, r, mask), "degrees", "lower")
        if scale is not None:
            m["ergas"] = _entry(domain.ergas(p, r, scale, mask), "", "lower")
    if ref.kind != "raster":
        m["hu_mae"] = _entry(domain.hu_mae(p_raw, r_raw, mask), "HU", "lower")
        m["noise_std_flat"] = _entry(domain.flat_noise_std(p_raw, mask, reference=r_raw), "HU",
                                     "closer to ref_value", ref_value=domain.flat_noise_std(r_raw, mask))
    if lr is not None:
        l_raw, l_ok = load_pixels(lr)
        for ax in (-2, -1):
            l_ok = np.repeat(l_ok, scale, axis=ax)
        c = domain.consistency(p_raw, l_raw[idx], scale, w, mask & l_ok,
                               to_metric=lambda x: rng.apply(x, ref, idx))
        degr = "prediction block-averaged by the scale (area) onto the LR grid, vs the LR input"
        m["consistency_psnr"] = _score_entry(c["psnr"], "dB", "higher") | {"degradation": degr}
        m["consistency_mae"] = _entry(c["mae"], rng.units, "lower", degradation=degr)
    hf = domain.hf_energy_ratio(p, r, mask)
    m["hf_energy_ratio"] = _score_entry(hf, "", "closer to 1")
    if tiling is not None:
        if scale is None:
            raise HiresError("the seam score needs the scale: give scale or the LR input")
        t, o = int(tiling["tile"]), int(tiling.get("overlap", 0))
        m["seam_score"] = _entry(domain.seam_score(p, t, o, scale, mask), "", "lower (1 = no seams)",
                                 tile=t, overlap=o)
    if perceptual is not None:
        m.update(perceptual(p, r, {**settings, "kind": ref.kind, "valid": mask}))
    return _clean({"settings": settings, "metrics": m})
