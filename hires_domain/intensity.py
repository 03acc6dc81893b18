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


# ---------------------------------------------------------------- CT padding

HU_PADDING_BELOW = -1024.0  # no tissue (nor air) is below: CT values under it are padding


def mark_ct_padding(hu: np.ndarray, padding_hu: tuple[float, float] | None = None) -> float | None:
    """Turn CT padding into one nodata value, in place; returns it (None: no padding).

    Padding is every pixel below −1024 HU (outside the reconstruction circle; no tissue is
    there) and, when the header gives one, the DICOM PixelPaddingValue..PixelPaddingRangeLimit
    range ``padding_hu`` (in HU). The nodata value is the header's PixelPaddingValue, else the
    most common padding value in the data (e.g. −3024 or −2000), so it is written back as it was.
    """
    lo, hi = sorted(padding_hu) if padding_hu is not None else (np.nan, np.nan)
    pad = (hu < HU_PADDING_BELOW) | ((hu >= lo) & (hu <= hi))
    if padding_hu is not None:
        nodata = float(padding_hu[0])
    elif pad.any():
        values, counts = np.unique(hu[pad], return_counts=True)
        nodata = float(values[np.argmax(counts)])
    else:
        return None
    hu[pad] = nodata
    return nodata


def looks_like_padded_ct(data: np.ndarray) -> bool:
    """A volume without units that is CT with padding: air between −1024 and −900 HU, and the
    values below −1024 mostly (≥ 90 %) one constant fill, as scanners write outside the FOV."""
    below = data[data < HU_PADDING_BELOW]
    if below.size == 0 or np.count_nonzero((data >= -1024) & (data <= -900)) < 0.001 * data.size:
        return False
    _, counts = np.unique(below, return_counts=True)
    return counts.max() >= 0.9 * below.size


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
