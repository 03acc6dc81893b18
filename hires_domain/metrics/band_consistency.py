"""Consistency of a sharpened Sentinel-2 cube with its product: each sharpened coarse band,
averaged over the 10 m pixels of each of its own pixels (with that band's own origin), against the
band as delivered. PSNR in reflectance (range 1 = the product's quantification)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import rasterio


def coarse_consistency(sharpened: Path, product) -> dict[str, float]:
    """Band name → PSNR (dB) over the coarse pixels wholly inside the sharpened grid."""
    from ..io.s2_product import open_product

    p = open_product(product)
    out = {}
    with rasterio.open(sharpened) as ds:
        names, t = list(ds.descriptions), ds.transform
        for b, f in p.bands.items():
            if b not in names or f.resolution <= abs(t.a) * 1.01:
                continue
            k = int(round(f.resolution / abs(t.a)))
            sharp = ds.read(names.index(b) + 1).astype(np.float64)
            with rasterio.open(f.path) as src:
                ref = src.read(1).astype(np.float64)
            # coarse pixel i covers fine rows r0 + i·k .. r0 + (i+1)·k
            c0, r0 = round((f.transform[2] - t.c) / t.a), round((f.transform[5] - t.f) / t.e)
            i0, j0 = max(0, -(r0 // k)), max(0, -(c0 // k))
            ni = min(ref.shape[0], (sharp.shape[0] - r0) // k) - i0
            nj = min(ref.shape[1], (sharp.shape[1] - c0) // k) - j0
            block = sharp[r0 + i0 * k:r0 + (i0 + ni) * k, c0 + j0 * k:c0 + (j0 + nj) * k]
            mean = block.reshape(ni, k, nj, k).mean(axis=(1, 3))
            mse = float(np.mean((mean - ref[i0:i0 + ni, j0:j0 + nj]) ** 2)) / p.quantification ** 2
            out[b] = round(10 * math.log10(1 / mse), 2) if mse > 0 else float("inf")
    return out
