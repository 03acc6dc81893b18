"""Physical degradations that turn a high-resolution (HR) image into its low-resolution or
low-dose counterpart. Pure numpy functions, parameters in physical units, deterministic given
an ``np.random.Generator``. Images are ``(..., H, W)`` float arrays (any leading axes: bands,
slices); blurs and decimation act on the last two axes, ``thick_slices`` on axis -3.

Gaussian PSF and its MTF
------------------------
A Gaussian PSF of standard deviation σ (HR pixels) has the transfer function
``MTF(f) = exp(-2 π² σ² f²)`` (f in cycles per HR pixel). After decimation by ``scale`` the
LR Nyquist frequency is ``f_N = 0.5 / scale`` cycles per HR pixel, so requiring
``MTF(f_N) = m`` gives ``σ = sqrt(-ln m / (2 π² f_N²)) = scale · sqrt(-2 ln m) / π``.
Sentinel-2's MSI specification puts the MTF at Nyquist between 0.15 and 0.3 for the 10 m bands.

Low-dose CT
-----------
HU → linear attenuation ``μ = μ_water (1 + HU/1000)`` with ``μ_water = 0.0192 /mm`` (water at
about 70 keV, the effective energy of a 120 kVp spectrum; NIST XCOM μ/ρ ≈ 0.19 cm²/g).
Line integrals ``p = ∫ μ dl`` come from a parallel-beam Radon transform scaled by the pixel size
in mm. Detector counts are ``N ~ Poisson(I0 · dose · exp(-p))`` plus optional Gaussian
electronic noise, ``p̂ = -ln(max(N, 0.5) / (I0 · dose))``, and filtered back-projection maps
``p̂`` back to μ and HU. Noise variance of ``p̂`` is ≈ ``exp(p) / (I0 · dose)``, so the image noise
standard deviation scales as ``1/√dose``.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

MU_WATER_PER_MM = 0.0192
FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))
TRUNCATE = 4.0  # Gaussian kernels are cut at 4 σ: their support (radius) is ceil(4 σ) + 1 pixels


def sigma_for_mtf(mtf_nyquist: float, scale: int) -> float:
    """σ (HR pixels) of the Gaussian PSF whose MTF at the LR Nyquist frequency is ``mtf_nyquist``
    (1.0: no blur, σ = 0)."""
    if not 0.0 < mtf_nyquist <= 1.0:
        raise ValueError("mtf_nyquist must be in (0, 1]")
    return scale * math.sqrt(-2.0 * math.log(mtf_nyquist)) / math.pi


def support(sigma: float) -> int:
    """Pixels beyond a window that a Gaussian blur of ``sigma`` (with a half-pixel offset) reads."""
    return int(math.ceil(TRUNCATE * sigma)) + 1 if sigma > 0 else 0


def _kernel(sigma: float, offset: float) -> np.ndarray:
    r = support(sigma)
    x = np.arange(-r, r + 1) - offset
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def gaussian_blur(img: np.ndarray, sigma: float | tuple[float, float], offset: float = 0.0) -> np.ndarray:
    """Gaussian blur of the last two axes (σ in pixels per axis, edges reflected).

    Output pixel ``j`` is the blurred image evaluated at position ``j + offset``: an offset of
    0.5 lets ``decimate`` sample exactly at LR pixel centres for even scales.
    """
    out = np.asarray(img, dtype=np.float64)
    sigmas = (sigma, sigma) if np.isscalar(sigma) else sigma
    for axis, s in zip((-2, -1), sigmas):
        if s > 0:
            out = ndimage.correlate1d(out, _kernel(s, offset), axis=axis, mode="reflect")
    return out


def centre_offset(scale: int) -> float:
    """Offset from the pixel ``decimate(mode='sample')`` keeps to the LR pixel centre: 0 or 0.5."""
    return (scale - 1) / 2 - (scale - 1) // 2


def mtf_blur(img: np.ndarray, mtf_nyquist: float, scale: int, offset: float = 0.0) -> np.ndarray:
    """Sensor PSF: Gaussian blur whose MTF at the LR Nyquist frequency (0.5/scale) is ``mtf_nyquist``."""
    return gaussian_blur(img, sigma_for_mtf(mtf_nyquist, scale), offset)


def decimate(img: np.ndarray, scale: int, mode: str = "sample") -> np.ndarray:
    """Reduce the last two axes by ``scale`` (their sizes must be multiples of it).

    LR pixel ``i`` covers HR pixels ``[i·scale, (i+1)·scale)`` (footprint kept). ``'sample'``
    keeps HR pixel ``i·scale + (scale-1)//2`` (the block centre for odd scales, half a pixel
    before it for even ones: blur with ``offset=centre_offset(scale)`` first); ``'area'`` is the
    block mean (an ideal detector integrating over the LR pixel).
    """
    *lead, h, w = img.shape
    if h % scale or w % scale:
        raise ValueError(f"image {h}x{w} is not a multiple of scale {scale}")
    if mode == "sample":
        c = (scale - 1) // 2
        return img[..., c::scale, c::scale]
    if mode == "area":
        return img.reshape(*lead, h // scale, scale, w // scale, scale).mean(axis=(-3, -1))
    raise ValueError(f"unknown decimation mode '{mode}'")


def add_noise(img: np.ndarray, rng: np.random.Generator, sigma_add: float = 0.0,
              sigma_signal: float = 0.0) -> np.ndarray:
    """Additive plus signal-dependent Gaussian noise, in the image's units (DN).

    Per pixel ``std = sqrt(sigma_add² + sigma_signal² · max(img, 0))``: ``sigma_add`` is the
    read/dark noise in DN, ``sigma_signal`` the shot-noise factor in √DN.
    """
    std = np.sqrt(sigma_add ** 2 + sigma_signal ** 2 * np.maximum(img, 0.0))
    return img + rng.standard_normal(img.shape) * std


def quantise(img: np.ndarray, dtype) -> np.ndarray:
    """Round and clip to ``dtype``'s range (returned as float64 holding integer values)."""
    info = np.iinfo(np.dtype(dtype))
    return np.clip(np.rint(img), info.min, info.max)


def satellite_lr(hr: np.ndarray, scale: int, mtf_nyquist: float, rng: np.random.Generator,
                 sigma_add: float = 0.0, sigma_signal: float = 0.0, dtype=None,
                 mode: str = "sample") -> np.ndarray:
    """HR bands (C, H, W) in DN → LR: MTF blur, decimation, noise at LR, optional quantisation."""
    offset = centre_offset(scale) if mode == "sample" else 0.0
    lr = decimate(mtf_blur(hr, mtf_nyquist, scale, offset), scale, mode)
    lr = add_noise(lr, rng, sigma_add, sigma_signal)
    return quantise(lr, dtype) if dtype is not None else lr


def inplane_lr(img: np.ndarray, scale: int, fwhm_mm: float, pixel_mm: tuple[float, float],
               mode: str = "area") -> np.ndarray:
    """Medical in-plane SR degradation: Gaussian blur of FWHM ``fwhm_mm`` (given the row/column
    pixel spacing in mm), then decimation by ``scale``."""
    sigma = tuple(fwhm_mm / FWHM_PER_SIGMA / p for p in pixel_mm)
    offset = centre_offset(scale) if mode == "sample" else 0.0
    return decimate(gaussian_blur(img, sigma, offset), scale, mode)


def box_kernel(width: float, offset: float = 0.0) -> np.ndarray:
    """Taps of a box of ``width`` pixels centred at ``offset``: each tap is the overlap of its
    pixel ``[j - 0.5, j + 0.5]`` with the box (fractional at the ends), normalised to sum 1."""
    r = int(math.ceil(width / 2 + abs(offset))) + 1
    j = np.arange(-r, r + 1, dtype=np.float64)
    lo, hi = offset - width / 2, offset + width / 2
    k = np.clip(np.minimum(j + 0.5, hi) - np.maximum(j - 0.5, lo), 0.0, None)
    return k / k.sum()


def thick_slices(volume: np.ndarray, factor: int, profile: str = "box", width: float | None = None) -> np.ndarray:
    """Thick-slice simulation along axis -3: slice ``k`` of the result integrates input slices
    around the centre of block ``[k·factor, (k+1)·factor)`` with a ``'box'`` profile of ``width``
    slices (default ``factor``: the block's mean) or a ``'gaussian'`` profile of FWHM ``width``
    slices. Edges are reflected; trailing slices that do not fill a block are dropped."""
    n = volume.shape[-3] // factor * factor
    v = np.asarray(volume[..., :n, :, :], dtype=np.float64)
    w = float(factor if width is None else width)
    if w <= 0:
        raise ValueError(f"slice profile width must be positive, got {w:g}")
    if profile == "box" and w == factor:
        return v.reshape(*v.shape[:-3], n // factor, factor, *v.shape[-2:]).mean(axis=-3)
    if profile == "box":
        kernel = box_kernel(w, centre_offset(factor))
    elif profile == "gaussian":
        kernel = _kernel(w / FWHM_PER_SIGMA, centre_offset(factor))
    else:
        raise ValueError(f"unknown slice profile '{profile}'")
    blurred = ndimage.correlate1d(v, kernel, axis=-3, mode="reflect")
    return blurred[..., (factor - 1) // 2::factor, :, :]


def hu_to_mu(hu: np.ndarray, mu_water: float = MU_WATER_PER_MM) -> np.ndarray:
    """HU → linear attenuation coefficient (/mm)."""
    return mu_water * (1.0 + np.asarray(hu, dtype=np.float64) / 1000.0)


def mu_to_hu(mu: np.ndarray, mu_water: float = MU_WATER_PER_MM) -> np.ndarray:
    """Linear attenuation coefficient (/mm) → HU."""
    return 1000.0 * (mu / mu_water - 1.0)


def ct_sinogram(hu: np.ndarray, pixel_mm: float, n_angles: int) -> np.ndarray:
    """Noise-free line integrals ``p = ∫ μ dl`` of one square HU slice: parallel beam, ``n_angles``
    over 180° (``skimage.transform.radon``), scaled by the pixel size in mm."""
    from skimage.transform import radon

    h, w = hu.shape
    if h != w:
        raise ValueError(f"CT simulation needs a square slice, got {h}x{w}")
    return radon(hu_to_mu(hu), ct_angles(n_angles), circle=False) * pixel_mm


def ct_counts(p: np.ndarray, photons: float | np.ndarray, rng: np.random.Generator, electronic_sigma: float = 0.0) -> np.ndarray:
    """Measured line integrals: ``N ~ Poisson(photons · exp(-p))`` (+ Gaussian electronic noise of
    ``electronic_sigma`` counts), ``p̂ = -ln(max(N, 0.5) / photons)``; ``photons`` is the
    unattenuated count per detector bin (I0 · dose): one number, or one per view angle (the
    sinogram's last axis)."""
    counts = rng.poisson(photons * np.exp(-p)).astype(np.float64)
    if electronic_sigma > 0:
        counts += rng.normal(0.0, electronic_sigma, counts.shape)
    return -np.log(np.maximum(counts, 0.5) / photons)


def ct_reconstruct(p: np.ndarray, pixel_mm: float, size: int, filter_name: str = "ramp") -> np.ndarray:
    """Filtered back-projection (``skimage.transform.iradon``, ``filter_name``) of line integrals
    over ``p.shape[1]`` angles back to a ``size``² HU slice."""
    from skimage.transform import iradon

    mu = iradon(p / pixel_mm, ct_angles(p.shape[1]), output_size=size, circle=False, filter_name=filter_name)
    return mu_to_hu(mu)


def ct_angles(n: int) -> np.ndarray:
    """The view angles in degrees: ``n`` over 180°, parallel beam."""
    return np.linspace(0.0, 180.0, n, endpoint=False)


def low_dose_ct(hu: np.ndarray, pixel_mm: float, dose_fraction: float, rng: np.random.Generator | None,
                i0: float = 1e5, electronic_sigma: float = 0.0, n_angles: int = 360,
                filter_name: str = "ramp") -> np.ndarray:
    """Simulate a low-dose acquisition of one square HU slice (H, W) and reconstruct it in HU.

    ``i0`` is the unattenuated photon count per detector bin at full dose, ``dose_fraction``
    scales it, ``electronic_sigma`` is Gaussian detector noise in counts; ``rng=None`` gives the
    noise-free reconstruction (the FBP round trip alone).
    """
    p = ct_sinogram(hu, pixel_mm, n_angles)
    if rng is not None:
        p = ct_counts(p, i0 * dose_fraction, rng, electronic_sigma)
    return ct_reconstruct(p, pixel_mm, hu.shape[0], filter_name)
