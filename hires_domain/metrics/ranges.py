"""The data range every fidelity metric uses, always explicit and never per-batch min/max.

A ``DataRange`` says which values the metrics see and how wide their range is:

- ``soft-tissue`` / ``lung`` / ``bone`` / ``brain`` (``intensity.CT_WINDOWS``): HU clipped to the
  window, range = window width;
- ``hu`` (the default for medical images): raw HU clipped to the 12-bit CT range −1024..3071,
  range 4095 (also in ``CT_WINDOWS``);
- ``reflectance``: raster DN converted per band with ``DN·scale + offset`` (the file's
  scales/offsets; 1/10000 for uint16 DN without any), range 1.0, not clipped;
- ``dn``: integer rasters other than uint16 without scales: the dtype's full range, not clipped;
- ``explicit``: ``lo,hi`` given by the user, on the stored values, clipped to [lo, hi].
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import HiresError
from ..image import Image
from ..intensity import CT_WINDOWS

DEFAULT_REFLECTANCE_SCALE = 1e-4


@dataclass(frozen=True)
class DataRange:
    """Values are mapped by ``apply`` into [lo, hi] (or reflectance); metrics use ``width``."""

    name: str
    lo: float
    hi: float
    description: str
    units: str = ""
    clip: bool = True

    @property
    def width(self) -> float:
        return self.hi - self.lo

    def apply(self, data: np.ndarray, image: Image, bands: list[int]) -> np.ndarray:
        """``data`` (the image's ``bands``, stored values) in metric units, float64."""
        out = np.asarray(data, dtype=np.float64)
        if self.name == "reflectance":
            scales, offsets = _reflectance_params(image)
            shape = (-1,) + (1,) * (out.ndim - 1)
            out = out * np.asarray([scales[b] for b in bands]).reshape(shape) \
                + np.asarray([offsets[b] for b in bands]).reshape(shape)
        return np.clip(out, self.lo, self.hi) if self.clip else out

    def to_dict(self) -> dict:
        return {"name": self.name, "lo": self.lo, "hi": self.hi, "description": self.description}


def _scales_offsets(image: Image):
    """The file's per-band scales/offsets, or (None, None) when it declares none (all 1 and 0)."""
    scales = image.meta.get("scales") or []
    offsets = image.meta.get("offsets") or [0.0] * len(scales)
    if len(scales) != image.channels or (all(s == 1 for s in scales) and all(o == 0 for o in offsets)):
        return None, None
    return [float(s) for s in scales], [float(o) for o in offsets]


def _dtype(image: Image) -> np.dtype:
    return np.dtype(image.meta.get("dtype", getattr(image.data, "dtype", "float32")))


def _reflectance_params(image: Image):
    """Per-band (scales, offsets) to reflectance; 1/10000 for uint16 DN without any."""
    scales, offsets = _scales_offsets(image)
    if scales is not None:
        return scales, offsets
    if _dtype(image) == np.uint16:
        return [DEFAULT_REFLECTANCE_SCALE] * image.channels, [0.0] * image.channels
    raise HiresError(f"{image.source_path or 'image'}: {_dtype(image)} raster declares no reflectance "
                     "scale/offset: pass --range lo,hi")


def resolve_range(image: Image, window: str | None = None, data_range=None) -> DataRange:
    """The DataRange for ``image`` (the reference) from the user's ``window`` or ``data_range``."""
    if data_range is not None:
        if window is not None:
            raise HiresError("give either a window or an explicit data range, not both")
        lo, hi = (float(v) for v in data_range)
        if not hi > lo:
            raise HiresError(f"data range needs lo < hi, got {lo},{hi}")
        return DataRange("explicit", lo, hi, f"explicit range {lo:g}..{hi:g} on stored values, clipped",
                         image.units)
    if image.kind != "raster":
        name = window or "hu"
        if name not in CT_WINDOWS:
            raise HiresError(f"unknown window '{name}'; known: {', '.join(CT_WINDOWS)}")
        c, w = CT_WINDOWS[name]
        lo, hi = c - w / 2, c + w / 2
        what = "raw HU" if name == "hu" else f"{name} window C{c:g}/W{w:g}: HU"
        return DataRange(name, lo, hi, f"{what} clipped to {lo:g}..{hi:g}, range {w:g}", "HU")
    if window is not None:
        raise HiresError(f"window '{window}' applies to CT; for rasters use the reflectance default or --range lo,hi")
    dtype = _dtype(image)
    scales, _ = _scales_offsets(image)
    if scales is not None:
        return DataRange("reflectance", 0.0, 1.0, "reflectance = DN·scale + offset from the file's "
                         "per-band scales/offsets; range 1.0, not clipped", "reflectance", clip=False)
    if dtype == np.uint16:
        return DataRange("reflectance", 0.0, 1.0, "reflectance = DN/10000 (file declares no scale: "
                         "default for uint16 DN); range 1.0, not clipped", "reflectance", clip=False)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return DataRange("dn", float(info.min), float(info.max),
                         f"{dtype} DN, full dtype range {info.min}..{info.max}, not clipped", "DN", clip=False)
    raise HiresError(f"cannot tell the data range of a {dtype} raster without scales: pass --range lo,hi")
