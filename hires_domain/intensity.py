"""Intensity conventions in one place: named CT windows and display scaling."""

from __future__ import annotations

import numpy as np

from .errors import HiresError

# name: (centre, width) in HU
CT_WINDOWS = {
    "soft-tissue": (40.0, 400.0),
    "lung": (-600.0, 1500.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
    "hu": (1023.5, 4095.0),  # raw HU: the full 12-bit CT range -1024..3071
}


def ct_window(hu: np.ndarray, name: str = "soft-tissue") -> np.ndarray:
    """HU mapped to [0, 1] through a named window (values outside clipped)."""
    if name not in CT_WINDOWS:
        raise HiresError(f"unknown window '{name}'; known: {', '.join(CT_WINDOWS)}")
    c, w = CT_WINDOWS[name]
    return np.clip((hu - (c - w / 2)) / w, 0.0, 1.0)


def stretch(data: np.ndarray, valid: np.ndarray | None = None, lo: float = 2, hi: float = 98) -> np.ndarray:
    """Per-band percentile stretch to [0, 1] for display of rasters (C, H, W)."""
    out = np.empty(data.shape, dtype=np.float32)
    for c, band in enumerate(data):
        vals = band[valid] if valid is not None else band[np.isfinite(band)]
        a, b = np.percentile(vals, [lo, hi]) if vals.size else (0.0, 1.0)
        out[c] = np.clip((band - a) / max(b - a, 1e-12), 0, 1)
    return out
