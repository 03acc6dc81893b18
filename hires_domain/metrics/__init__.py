"""Metrics, one implementation each, for evaluation, training and the napari plugin.

Fidelity (PSNR, SSIM, MS-SSIM) always with an explicit data range (``ranges``); domain metrics
(SAM, ERGAS, HU MAE, flat-region noise, LR consistency, seam score, high-frequency energy);
``evaluate_pair`` runs all that apply to two images on one grid. See docs/metrics.md.
"""

from .domain import (block_mean, consistency, ergas, flat_noise_std, flat_windows, hf_energy_ratio,
                     hu_mae, sam, seam_lines, seam_score)
from .evaluate import check_same_grid, evaluate_pair, load_pixels, resample_to
from .fidelity import Score, ms_ssim, psnr, ssim
from .ranges import DataRange, resolve_range

__all__ = [
    "DataRange", "Score", "block_mean", "check_same_grid", "consistency", "ergas", "evaluate_pair",
    "flat_noise_std", "flat_windows", "hf_energy_ratio", "hu_mae", "load_pixels", "ms_ssim", "psnr", "resample_to",
    "resolve_range", "sam", "seam_lines", "seam_score", "ssim",
]
