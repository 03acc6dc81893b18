"""PSNR, SSIM and MS-SSIM on ``(C, *spatial)`` arrays (2-D or 3-D), per band, masks respected.

Inputs are already in metric units (``ranges.DataRange.apply``) and ``data_range`` is that
range's width, never the batch's min/max. Every function scores each band and averages the
per-band values; ``Score.per_band`` keeps them. ``mask`` is a spatial boolean array of valid
pixels (None: all valid).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from scipy import ndimage
from skimage.metrics import structural_similarity
from torchmetrics.functional.image import multiscale_structural_similarity_index_measure

SSIM_WIN = 7  # scikit-image's default uniform window
MS_SSIM_KERNEL = 11
MS_SSIM_BETAS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
# the coarsest scale (side // 16 after 4 halvings) must hold a whole 11-px window: side >= 176
MS_SSIM_MIN_SIDE = MS_SSIM_KERNEL * 2 ** (len(MS_SSIM_BETAS) - 1)


class Score(NamedTuple):
    """Band-averaged ``value`` (None when undefined, with ``reason``) and ``per_band`` values."""

    value: float | None
    per_band: list
    reason: str | None = None


def _check(pred: np.ndarray, ref: np.ndarray, mask) -> np.ndarray:
    if pred.shape != ref.shape or pred.ndim not in (3, 4):
        raise ValueError(f"need equal (C, *spatial) 2-D or 3-D arrays, got {pred.shape} and {ref.shape}")
    return np.ones(pred.shape[1:], bool) if mask is None else np.asarray(mask, bool)


def _mean(values: list) -> float | None:
    ok = [v for v in values if v is not None]
    return float(np.mean(ok)) if ok else None


def psnr(pred: np.ndarray, ref: np.ndarray, data_range: float, mask=None) -> Score:
    """10·log10(range² / MSE) per band over valid pixels, in dB; identical bands give inf."""
    mask = _check(pred, ref, mask)
    per_band = []
    for p, r in zip(pred, ref):
        if not mask.any():
            per_band.append(None)
            continue
        err = np.mean((p[mask].astype(np.float64) - r[mask]) ** 2)
        per_band.append(float("inf") if err == 0 else float(10 * np.log10(data_range ** 2 / err)))
    return Score(_mean(per_band), per_band, None if mask.any() else "no valid pixels")


def _ssim_planes(pred: np.ndarray, ref: np.ndarray):
    """2-D planes of one band: the band itself, or its slices along z for a volume."""
    if pred.ndim == 2:
        return [(pred, ref)]
    return list(zip(pred, ref))


def ssim(pred: np.ndarray, ref: np.ndarray, data_range: float, mask=None) -> Score:
    """Mean SSIM (scikit-image, 7-px uniform window) over pixels whose whole window is valid.

    Volumes are scored slice by slice along z (2-D SSIM) and the maps pooled. A window touching
    an invalid pixel or the image border is left out, so masked values never leak in; with no
    mask this is exactly scikit-image's ``structural_similarity``.
    """
    mask = _check(pred, ref, mask)
    if min(pred.shape[-2:]) < SSIM_WIN:
        return Score(None, [None] * len(pred), f"image smaller than the {SSIM_WIN}-px SSIM window")
    footprint = np.ones((1,) * (mask.ndim - 2) + (SSIM_WIN, SSIM_WIN), bool)
    inner = ndimage.binary_erosion(mask, footprint, border_value=0)
    if not inner.any():
        return Score(None, [None] * len(pred), "no valid pixel has a fully valid SSIM window")
    per_band = []
    for p, r in zip(pred, ref):
        # zero the invalid pixels: their windows are left out, and large values there would
        # otherwise perturb neighbours through the running sums of the uniform filter
        p, r = np.where(mask, p, 0.0), np.where(mask, r, 0.0)
        maps = [structural_similarity(a.astype(np.float64), b.astype(np.float64), win_size=SSIM_WIN,
                                      data_range=data_range, full=True)[1] for a, b in _ssim_planes(p, r)]
        per_band.append(float(np.stack(maps).reshape(mask.shape)[inner].mean()))
    return Score(_mean(per_band), per_band)


def ms_ssim(pred: np.ndarray, ref: np.ndarray, data_range: float, mask=None) -> Score:
    """Multi-scale SSIM (torchmetrics, 5 scales, 11-px Gaussian window), slice-wise for volumes.

    None with a reason when a side is under 176 px (the 5th scale, side/16, needs 11 px) or pixels are
    masked (MS-SSIM's downsampling pyramid cannot leave pixels out).
    """
    mask = _check(pred, ref, mask)
    if min(pred.shape[-2:]) < MS_SSIM_MIN_SIDE:
        return Score(None, [None] * len(pred), f"image {pred.shape[-2]}x{pred.shape[-1]} is under "
                     f"{MS_SSIM_MIN_SIDE} px per side, too small for 5 scales with an 11-px window (side/16 >= 11)")
    if not mask.all():
        return Score(None, [None] * len(pred), "MS-SSIM cannot exclude masked/nodata pixels")
    # every 2-D plane (band × slice) in one float32 batch; per band, the mean over its slices
    tp, tr = (torch.from_numpy(np.ascontiguousarray(x.reshape(-1, 1, *x.shape[-2:]), dtype=np.float32))
              for x in (pred, ref))
    values = multiscale_structural_similarity_index_measure(
        tp, tr, data_range=float(data_range), kernel_size=MS_SSIM_KERNEL, betas=MS_SSIM_BETAS,
        reduction="none").double().numpy().reshape(len(pred), -1)
    per_band = [float(v) for v in values.mean(axis=1)]
    return Score(_mean(per_band), per_band)
