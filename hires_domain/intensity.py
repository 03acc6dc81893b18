"""Intensity conventions in one place: named CT windows, display scaling, true-colour band choice,
CT padding and CT detection, and the Normaliser."""

from __future__ import annotations

import re
from typing import Sequence

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
WINDOW_LABELS = {"hu": "full HU range"}  # how a UI lists a window (the CLI and the API keep the name)


def window_label(name: str) -> str:
    """A window's name as shown in a user interface ('hu' → 'full HU range')."""
    return WINDOW_LABELS.get(name, name)


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


# ---------------------------------------------------------------- true colour

# (colour, centre wavelength nm, accepted range nm)
RGB_WAVELENGTHS = (("red", 665.0, (620.0, 700.0)), ("green", 560.0, (530.0, 590.0)), ("blue", 490.0, (440.0, 520.0)))
_BAND_NUMBER = {"red": "4", "green": "3", "blue": "2"}  # Sentinel-2 B04/B03/B02 and Landsat 8/9 B4/B3/B2


def _name_matches(name: str, colour: str) -> bool:
    n = name.strip().lower()
    return n == colour or re.search(rf"(?:^|[^a-z0-9])b0?{_BAND_NUMBER[colour]}(?:$|[^a-z0-9])", n) is not None


def true_colour_bands(infos: Sequence[dict]) -> tuple[tuple[int, int, int], str]:
    """Which of the bands ``infos`` are red, green, blue, and why. Each info is a dict: ``name``,
    ``colorinterp`` (GDAL's, lower case) and ``wavelength`` (centre, nm, or None); napari's
    ``layers.band_info`` reads them from a band layer, reports pass names only (``report.rgb_bands``).

    In order: centre wavelengths (red 620–700, green 530–590, blue 440–520 nm); band names
    (Sentinel-2 B04/B03/B02, Landsat 8/9 B4/B3/B2 — also as suffixes like SR_B4 — or
    red/green/blue); GDAL colour interpretation red/green/blue; else the first three bands.
    Names come before the colour interpretation because GDAL marks any 3- or 4-band 8-bit
    GeoTIFF red, green, blue(, alpha) whatever its bands are. Landsat 4–7 number their bands
    differently (B3/B2/B1): give such files wavelengths or red/green/blue names.
    """
    picks = []
    for colour, centre, (lo, hi) in RGB_WAVELENGTHS:
        near = [(abs(i["wavelength"] - centre), k) for k, i in enumerate(infos)
                if i["wavelength"] is not None and lo <= i["wavelength"] <= hi]
        picks.append(min(near)[1] if near else None)
    if None not in picks and len(set(picks)) == 3:
        return tuple(picks), "band wavelengths"
    for rule, test in (("band names", lambda i, c: _name_matches(i["name"], c)),
                       ("colour interpretation", lambda i, c: i["colorinterp"] == c)):
        picks = [next((k for k, i in enumerate(infos) if test(i, c)), None) for c, _, _ in RGB_WAVELENGTHS]
        if None not in picks and len(set(picks)) == 3:
            return tuple(picks), rule
    n = len(infos)
    return (0, min(1, n - 1), min(2, n - 1)), "first three bands" if n >= 3 else f"only {n} band(s)"


# ---------------------------------------------------------------- CT padding

HU_PADDING_BELOW = -1024.0  # no tissue (nor air) is below: CT values under it are padding


NOISY_PADDING_MEDIAN = -2000.0  # reconstructions outside the FOV: noisy values around −3000 HU


def mark_ct_padding(hu: np.ndarray, padding_hu: tuple[float, float] | None = None) -> float | None:
    """Turn CT padding into one nodata value, in place; returns it (None: no padding).

    Padding is every pixel below −1024 HU (outside the reconstruction circle; no tissue is
    there) and, when the header gives one, the DICOM PixelPaddingValue..PixelPaddingRangeLimit
    range ``padding_hu`` (in HU). The nodata value is the header's PixelPaddingValue, else the
    padding's fill value (e.g. −3024 or −2000: one value for ≥ 90 % of it), else — noisy
    padding, as scanners reconstruct outside the field of view — its median, rounded.
    """
    lo, hi = sorted(padding_hu) if padding_hu is not None else (np.nan, np.nan)
    pad = (hu < HU_PADDING_BELOW) | ((hu >= lo) & (hu <= hi))
    if padding_hu is not None:
        nodata = float(padding_hu[0])
    elif pad.any():
        values, counts = np.unique(hu[pad], return_counts=True)
        fill = counts.max() >= 0.9 * counts.sum()
        nodata = float(values[np.argmax(counts)] if fill else np.round(np.median(hu[pad])))
    else:
        return None
    hu[pad] = nodata
    return nodata


def _padding_kind(data: np.ndarray) -> str | None:
    """'fill' or 'noisy' when the values below −1024 HU look like a scanner's padding outside the
    field of view (with some air in −1024..−900 HU), else None: one constant for ≥ 90 % of them,
    or noisy values with a median below −2000 HU (around −3000: never tissue nor air) and at most
    0.1 % of the volume above 3071 HU (a phase image spreads both ways)."""
    below = data[data < HU_PADDING_BELOW]
    if below.size == 0 or np.count_nonzero((data >= -1024) & (data <= -900)) < 0.001 * data.size:
        return None
    _, counts = np.unique(below, return_counts=True)
    if counts.max() >= 0.9 * below.size:
        return "fill"
    noisy = np.median(below) <= NOISY_PADDING_MEDIAN and np.mean(data > HU_CLIP[1]) <= 0.001
    return "noisy" if noisy else None


def looks_like_padded_ct(data: np.ndarray) -> bool:
    """A volume without units that is CT with padding below −1024 HU (``_padding_kind``)."""
    return _padding_kind(data) is not None


CT_EVIDENCE_SAMPLE = 2_000_000  # values looked at (every k-th voxel of a larger volume)


def ct_evidence(data: np.ndarray) -> str | None:
    """Why a volume whose header does not say what its values are holds CT numbers (HU), in one
    line, or None. NIfTI has no modality, so the reader asks this (``io/nifti.py``); the reason is
    kept in ``Image.meta['ct_evidence']`` and shown by napari (layer metadata
    ``hires_window_reason``). CT-like means, on the finite values:

    0. padded CT (``looks_like_padded_ct``): a constant fill, or noisy values around −3000 HU,
       below −1024 HU and some air; else
    1. nothing below −1024 HU, at most 0.1 % above 3071 HU (metal), and either
       a. air or lung: ≥ 1 % of the voxels in −1024..−500 HU (an MR magnitude image is never
          negative; z-scored or phase images spread far beyond the CT range or are not this), or
       b. soft tissue without air (a brain or body crop, e.g. the bundled ct_head.nii.gz, an
          atlas clipped to 0..229 HU): integer values, ≥ 100 distinct non-zero values, ≥ 90 % of
          the non-zero voxels in −100..+100 HU with their median in 0..80 HU (water to grey
          matter). An MR's arbitrary units spread much wider (pydicom's MR_small: 127..2145);
          a label map has few distinct values. A dark 8-bit MR with a mostly black head could
          pass b; the reason says so and any window can be chosen.
    """
    flat = np.ravel(data)
    a = flat[:: max(1, flat.size // CT_EVIDENCE_SAMPLE)]
    a = a[np.isfinite(a)]
    if a.size == 0:
        return None
    kind = _padding_kind(a)
    if kind is not None:
        pad = float(np.mean(a < HU_PADDING_BELOW))
        air = float(np.mean((a >= -1024) & (a <= -900)))
        what = "one padding value" if kind == "fill" else "noisy padding (outside the field of view)"
        return f"CT-like intensities: {pad:.0%} of voxels {what} below -1024 HU, {air:.0%} in air (-1024..-900 HU)"
    if np.any(a < HU_PADDING_BELOW) or np.mean(a > HU_CLIP[1]) > 0.001:
        return None
    air = float(np.mean(a <= -500))
    if air >= 0.01:
        return (f"CT-like intensities: {air:.0%} of voxels in air or lung (-1024..-500 HU), "
                f"none outside the CT range -1024..3071 HU")
    if not np.array_equal(a, np.round(a)):
        return None
    nz = a[a != 0]
    if nz.size < 0.05 * a.size or np.unique(nz).size < 100:
        return None
    soft, median = float(np.mean((nz >= -100) & (nz <= 100))), float(np.median(nz))
    if soft >= 0.9 and 0 <= median <= 80:
        return (f"CT-like intensities: integer values, {soft:.0%} of the non-zero voxels in soft tissue "
                f"(-100..100 HU), median {median:g} HU (no air in the volume)")
    return None


# ---------------------------------------------------------------- network normalisation

HU_CLIP = (-1024.0, 3071.0)  # the 12-bit CT range (CT_WINDOWS['hu'])
HU_SCALE = 1000.0  # network units: HU / 1000 (air -1.0, water 0.0, dense bone ~ +2 to +3)


class Normaliser:
    """Physical units <-> network units, the ONE place where trained networks see intensities.

    - ``hu`` (CT): ``forward`` clips HU to ``clip`` (default −1024..3071, the 12-bit CT range:
      below is padding/air, above is metal beyond what CT stores) then divides by 1000, so air
      is −1.0, water 0.0 and cortical bone about +1 to +2; ``inverse`` multiplies by 1000 (not
      clipped: the network's output is returned as is).
    - ``reflectance`` (rasters): ``forward`` is ``DN·scale + offset`` per band, ``inverse``
      ``(r − offset) / scale``; nothing is clamped, values outside [0, 1] are kept both ways.

    Tensors are ``(B, C, H, W)`` (any float dtype/device); ``from_manifest`` reads a prepared
    dataset's ``normalisation`` hint, ``to_dict``/``from_dict`` round-trip through model JSON.
    """

    def __init__(self, kind: str, scale=None, offset=None, clip=HU_CLIP, bands=None):
        if kind not in ("hu", "reflectance"):
            raise HiresError(f"unknown normalisation '{kind}' (hu or reflectance)")
        self.kind = kind
        self.bands = list(bands) if bands else None
        if kind == "reflectance":
            if scale is None:
                raise HiresError("reflectance normalisation needs per-band scales")
            self.scale = [float(s) for s in scale]
            self.offset = [float(o) for o in (offset if offset is not None else [0.0] * len(self.scale))]
            if len(self.offset) != len(self.scale) or any(s == 0 for s in self.scale):
                raise HiresError("reflectance normalisation needs one non-zero scale and one offset per band")
            self.clip = None
        else:
            self.scale, self.offset = None, None
            self.clip = (float(clip[0]), float(clip[1]))

    @classmethod
    def from_manifest(cls, hint: dict) -> "Normaliser":
        if hint.get("units") == "HU":
            return cls("hu", clip=hint.get("suggested_clip") or HU_CLIP, bands=["HU"])
        if "reflectance_scale" in hint:
            return cls("reflectance", hint["reflectance_scale"], hint.get("reflectance_offset"),
                       bands=hint.get("bands"))
        raise HiresError(f"dataset normalisation hint not understood: {sorted(hint)}")

    @classmethod
    def from_dict(cls, d: dict) -> "Normaliser":
        return cls(d["kind"], d.get("scale"), d.get("offset"), d.get("clip") or HU_CLIP, d.get("bands"))

    def to_dict(self) -> dict:
        d = {"kind": self.kind, "bands": self.bands}
        if self.kind == "hu":
            d.update(clip=list(self.clip), divide_by=HU_SCALE,
                     note="network = clip(HU, clip) / 1000; HU = network * 1000")
        else:
            d.update(scale=self.scale, offset=self.offset,
                     note="network = DN * scale + offset per band (not clamped); DN = (network - offset) / scale")
        return d

    def _per_band(self, values, x):
        import torch

        return torch.as_tensor(values, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)

    def forward(self, x):
        """Physical (HU or DN) -> network units."""
        if self.kind == "hu":
            return x.clamp(*self.clip) / HU_SCALE
        return x * self._per_band(self.scale, x) + self._per_band(self.offset, x)

    def inverse(self, y):
        """Network units -> physical (HU or DN), never clamped."""
        if self.kind == "hu":
            return y * HU_SCALE
        return (y - self._per_band(self.offset, y)) / self._per_band(self.scale, y)

    @property
    def data_range(self) -> float:
        """Width of the metric range in network units (HU: 4095/1000; reflectance: 1.0)."""
        return (self.clip[1] - self.clip[0]) / HU_SCALE if self.kind == "hu" else 1.0

    def __repr__(self) -> str:
        return f"Normaliser({self.to_dict()})"
