"""The shipped models on real held-out data they never saw in training (the reserved CT slice
CT_small from pydicom; a crop of the reserved bottom-left quadrant of the Sentinel-2 scene):
they must beat bicubic as their model cards say. Guards loading, normalisation and tiling of
the shipped weights, not only that they run."""

from __future__ import annotations

import numpy as np
import pytest

import hires_domain as hd
from hires_domain.image import Image
from hires_domain.metrics import block_mean, evaluate_pair
from support import DATA


def _on_unit_grid(arr: np.ndarray, like: Image, coarser: int = 1) -> Image:
    """``arr`` (C, H, W) on an axis-aligned grid whose ×coarser refinement is the unit grid."""
    n = 2 if like.kind == "raster" else 3
    affine = np.eye(n + 1)
    for ax in (n - 2, n - 1):
        affine[ax, ax], affine[ax, n] = coarser, (coarser - 1) / 2
    data = arr if like.kind == "raster" else arr[:, None]
    return Image(data.astype(np.float32), affine, like.frame, like.kind, like.units, None, like.band_names,
                 meta={k: like.meta[k] for k in ("scales", "offsets") if k in like.meta})


def _sr_against_bicubic(hr: Image, scale: int, model: str, **evaluate) -> dict:
    arr = hr.array().reshape(hr.channels, *hr.spatial_shape[-2:]).astype(np.float64)
    ref = _on_unit_grid(arr, hr)
    lr = _on_unit_grid(block_mean(arr, (scale, scale)), hr, coarser=scale)
    out = {}
    for name in ("bicubic", model):
        pred = hd.enhance(lr, model=name, scale=scale, tile=128, overlap=32, device="cpu")
        out[name] = {k: v["value"] for k, v in evaluate_pair(pred, ref, lr, **evaluate)["metrics"].items()}
    return out


def test_ct_sr_x2_beats_bicubic_on_the_reserved_ct_small_slice():
    from pydicom.data import get_testdata_file

    m = _sr_against_bicubic(hd.read(get_testdata_file("CT_small.dcm")), 2, "ct-sr-x2")
    base, model = m["bicubic"], m["ct-sr-x2"]
    assert model["psnr"] > base["psnr"] + 1.0  # card: 45.58 -> 47.09 dB (raw HU range)
    assert model["ssim"] > base["ssim"]
    assert model["consistency_psnr"] > base["consistency_psnr"]  # invents no low frequencies


def test_s2_sr_x4_beats_bicubic_on_a_reserved_quadrant_crop():
    """tests/data/s2_heldout_crop.tif: 128 x 128 px from the bottom-left quadrant of the scene
    (datasets/samples/make_s2_crop.py --heldout), area-downsampled x4."""
    image = hd.read(DATA / "s2_heldout_crop.tif")
    try:
        m = _sr_against_bicubic(image, 4, "s2-sr-x4")
    finally:
        image.data.close()
    base, model = m["bicubic"], m["s2-sr-x4"]
    assert model["psnr"] > base["psnr"] + 0.5  # card: +0.72 dB over the quadrant, +0.89 dB on this crop
    assert model["ssim"] > base["ssim"] and model["sam"] < base["sam"]
    assert model["consistency_psnr"] > base["consistency_psnr"]
