"""Domain metrics on ``(C, *spatial)`` arrays: spectral (SAM, ERGAS), CT (HU MAE, flat-region
noise), super-resolution (consistency with the LR input, seams, high-frequency energy).

``mask`` is always a spatial boolean array of valid pixels (None: all valid). In-plane axes are
the last two; volumes are (C, z, y, x) and ``scale`` refines y and x only unless given per axis.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from scipy import ndimage

from .. import tiling
from .fidelity import Score, _check, _mean, psnr

FLAT_WINDOW = 8  # px, in-plane side of the windows flat_noise_std looks at
FLAT_DECILE = 10  # percent of windows with the lowest gradient kept
AIR_HU = -500.0  # windows whose mean is below this are air, not tissue


def _ratio(values, pred_shape) -> tuple[int, ...]:
    """Per-spatial-axis integer factors from ``values`` (int: in-plane axes; tuple: every axis)."""
    nd = len(pred_shape)
    if np.ndim(values) == 0:
        return (1,) * (nd - 2) + (int(values),) * 2
    return tuple(int(v) for v in values)


def sam(pred: np.ndarray, ref: np.ndarray, mask=None) -> float | None:
    """Mean spectral angle in degrees between band vectors, over valid pixels where neither
    vector is zero (the angle is undefined there); invariant to per-pixel brightness."""
    mask = _check(pred, ref, mask)
    p, r = pred[:, mask].astype(np.float64), ref[:, mask].astype(np.float64)
    np_, nr = np.linalg.norm(p, axis=0), np.linalg.norm(r, axis=0)
    ok = (np_ > 0) & (nr > 0)
    if not ok.any():
        return None
    u, v = p[:, ok] / np_[ok], r[:, ok] / nr[ok]
    # 2·atan2(|u−v|, |u+v|): exact near 0 where arccos of the cosine loses precision
    angle = 2 * np.arctan2(np.linalg.norm(u - v, axis=0), np.linalg.norm(u + v, axis=0))
    return float(np.degrees(angle).mean())


def ergas(pred: np.ndarray, ref: np.ndarray, scale: float, mask=None) -> float | None:
    """ERGAS = 100/scale · sqrt(mean_b (RMSE_b / mean_b(ref))²) over valid pixels; lower is better.

    ``scale`` is the SR factor (the resolution ratio high/low is 1/scale). Bands whose reference
    mean is 0 make it undefined (None).
    """
    mask = _check(pred, ref, mask)
    if not mask.any():
        return None
    p, r = pred[:, mask].astype(np.float64), ref[:, mask].astype(np.float64)
    means = r.mean(axis=1)
    if np.any(means == 0):
        return None
    rmse = np.sqrt(((p - r) ** 2).mean(axis=1))
    return float(100.0 / scale * np.sqrt(np.mean((rmse / means) ** 2)))


def hu_mae(pred: np.ndarray, ref: np.ndarray, mask=None) -> float | None:
    """Mean absolute difference over valid pixels and bands, in the images' units (raw HU)."""
    mask = _check(pred, ref, mask)
    if not mask.any():
        return None
    return float(np.abs(pred[:, mask].astype(np.float64) - ref[:, mask]).mean())


def flat_windows(image: np.ndarray, mask=None) -> np.ndarray:
    """Boolean spatial mask of the flattest 8x8 in-plane windows of a CT image (band 0).

    Rule: cut each slice into non-overlapping 8x8 windows; keep windows that are fully valid,
    not air (mean ≥ −500 HU) and not constant (std > 0: padding or clipped values); rank them by
    their largest gradient magnitude (Gaussian derivative, σ = 1 px, in-plane; the largest, so a
    window an edge crosses anywhere is not flat) and keep the lowest decile.
    """
    band = image[0].astype(np.float64)
    mask = np.ones(band.shape, bool) if mask is None else np.asarray(mask, bool)
    sigma = (0,) * (band.ndim - 2) + (1.0, 1.0)
    grad = ndimage.gaussian_gradient_magnitude(band, sigma)
    w = FLAT_WINDOW
    h, wd = (band.shape[-2] // w) * w, (band.shape[-1] // w) * w

    def blocks(a):  # (..., H/w, W/w, w*w)
        a = a[..., :h, :wd]
        a = a.reshape(*a.shape[:-2], h // w, w, wd // w, w).swapaxes(-3, -2)
        return a.reshape(*a.shape[:-2], w * w)

    vb, gb, bb = blocks(mask), blocks(grad), blocks(band)
    eligible = vb.all(-1) & (bb.mean(-1) >= AIR_HU) & (bb.std(-1) > 0)
    out = np.zeros(band.shape, bool)
    if not eligible.any():
        return out
    g = gb.max(-1)
    chosen = eligible & (g <= np.percentile(g[eligible], FLAT_DECILE))
    out[..., :h, :wd] = np.repeat(np.repeat(chosen, w, axis=-2), w, axis=-1)
    return out


def flat_noise_std(image: np.ndarray, mask=None, reference: np.ndarray | None = None) -> float | None:
    """Noise std (HU) in flat regions: the root mean within-window variance over the windows
    ``flat_windows`` picks on ``reference`` (default: on ``image`` itself), so a prediction and
    its reference are measured in the same places."""
    flat = flat_windows(image if reference is None else reference, mask)
    if not flat.any():
        return None
    band = image[0].astype(np.float64)
    labels, n = ndimage.label(flat)
    var = ndimage.variance(band, labels, np.arange(1, n + 1))
    sizes = ndimage.sum(flat, labels, np.arange(1, n + 1))
    return float(np.sqrt(np.sum(np.asarray(var) * sizes) / sizes.sum()))


def block_mean(data: np.ndarray, factors) -> np.ndarray:
    """Area-average ``(C, *spatial)`` over non-overlapping blocks of ``factors`` (shape must divide)."""
    f = _ratio(factors, data.shape[1:])
    shape = [data.shape[0]]
    for n, k in zip(data.shape[1:], f):
        if n % k:
            raise ValueError(f"size {n} is not divisible by the factor {k}")
        shape += [n // k, k]
    return data.reshape(shape).mean(axis=tuple(range(2, 2 * len(f) + 1, 2)))


def consistency(pred: np.ndarray, lr: np.ndarray, scale, data_range: float, mask=None,
                degrade: Callable[[np.ndarray], np.ndarray] | None = None,
                to_metric: Callable[[np.ndarray], np.ndarray] | None = None) -> dict:
    """The prediction degraded back to the LR grid against the LR input: PSNR (dB) and MAE.

    ``degrade`` defaults to ``block_mean`` by ``scale`` (area averaging; a dataset recipe's own
    degradation can be passed instead). It acts on the stored values; ``to_metric`` (e.g. a
    window's clipping) is then applied to both sides and PSNR uses the same ``data_range``.
    ``mask`` is on the HR grid; an LR pixel counts when its whole HR block is valid.
    """
    f = _ratio(scale, pred.shape[1:])
    down = block_mean(pred, f) if degrade is None else degrade(pred)
    if down.shape != lr.shape:
        raise ValueError(f"degraded prediction {down.shape} does not match the LR input {lr.shape}")
    if to_metric is not None:
        down, lr = to_metric(down), to_metric(lr)
    lr_mask = None
    if mask is not None:
        lr_mask = block_mean(np.asarray(mask, np.float32)[None], f)[0] == 1
    score = psnr(down, lr, data_range, lr_mask)
    ok = np.ones(lr.shape[1:], bool) if lr_mask is None else lr_mask
    mae = float(np.abs(down[:, ok].astype(np.float64) - lr[:, ok]).mean()) if ok.any() else None
    return {"psnr": score, "mae": mae}


def seam_lines(out_shape, tile: int, overlap: int, scale: int) -> list[np.ndarray]:
    """Per in-plane axis, the output-grid positions b where a tile starts or ends (boundary
    between pixels b−1 and b) of a ``TilePlan`` run with this tile/overlap (input pixels)."""
    lr = tuple(n // scale for n in out_shape[-2:])
    plan = tiling.TilePlan(lr, tiling.TileSpec((tile, tile), (overlap, overlap), (0, 0), (scale, scale)))
    return [a.breaks[(a.breaks > 0) & (a.breaks < n * scale)] for a, n in zip(plan.axes, lr)]


SEAM_BASELINE = (2, 8)  # baseline lines lie this far (exclusive) from the nearest boundary


def seam_score(pred: np.ndarray, tile: int, overlap: int, scale: int, mask=None) -> float | None:
    """Mean |second difference| on tile boundary lines over the same on lines near them.

    Along each in-plane axis the second difference x[i−1] − 2x[i] + x[i+1] is taken on the two
    lines that straddle every boundary b (b−1 and b) and, as the baseline, on the lines 2.5 to
    7.5 px from the nearest boundary (same content nearby: far lines would add scene variance);
    values touching an invalid pixel are left out; bands pooled. ≈1: no seams; >1: seams.
    """
    mask = np.ones(pred.shape[1:], bool) if mask is None else np.asarray(mask, bool)
    on, off = [], []
    for axis_i, lines in zip((-2, -1), seam_lines(pred.shape, tile, overlap, scale)):
        if not lines.size:
            continue
        ax = pred.ndim + axis_i
        d2 = np.moveaxis(np.abs(np.diff(pred.astype(np.float64), 2, axis=ax)), ax, -1)  # j ↔ line j+1
        m = np.moveaxis(mask, ax - 1, -1)
        m = m[..., :-2] & m[..., 1:-1] & m[..., 2:]  # all three pixels valid
        centre = np.arange(1, pred.shape[ax] - 1)
        dist = np.abs(centre[:, None] - (lines[None, :] - 0.5)).min(axis=1)
        for sel, acc in ((dist == 0.5, on), ((dist > SEAM_BASELINE[0]) & (dist < SEAM_BASELINE[1]), off)):
            acc.append(d2[..., sel][np.broadcast_to(m[..., sel], d2[..., sel].shape)])
    if not on:
        return None
    on, off = np.concatenate(on), np.concatenate(off)
    if not on.size or not off.size or off.mean() == 0:
        return None
    return float(on.mean() / off.mean())


def hf_energy_ratio(pred: np.ndarray, ref: np.ndarray, mask=None) -> Score:
    """High-frequency energy of pred over ref, per band: mean squared in-plane Laplacian
    (5-point stencil) over pixels whose 3x3 neighbourhood is valid. <1 blurrier, >1 sharper/noisier."""
    mask = _check(pred, ref, mask)
    footprint = np.zeros((1,) * (mask.ndim - 2) + (3, 3), bool)
    footprint[..., 1, :] = footprint[..., :, 1] = True
    inner = ndimage.binary_erosion(mask, footprint, border_value=0)
    kernel = np.zeros((1,) * (mask.ndim - 2) + (3, 3))
    kernel[..., 1, :] = kernel[..., :, 1] = 1.0
    kernel[..., 1, 1] = -4.0
    per_band = []
    for p, r in zip(pred, ref):
        ep, er = (float(np.mean(ndimage.convolve(np.where(mask, x, 0.0), kernel)[inner] ** 2))
                  if inner.any() else 0.0 for x in (p, r))
        per_band.append(ep / er if er > 0 else None)
    return Score(_mean(per_band), per_band, None if any(v is not None for v in per_band)
                 else "reference has no high-frequency energy")
