"""Image ↔ napari layer data, Qt-free. Geometry comes from ``hires_domain.geometry`` only.

Every layer keeps its source ``Image`` (without pixels) in ``metadata["hires"]``: the writers
and the widgets rebuild the exact Image from it, so geometry, DICOM headers and raster
georeferencing survive a trip through the viewer.
"""

from __future__ import annotations

import uuid
from dataclasses import replace

import numpy as np

from hires_domain import geometry
from hires_domain.image import Image
from hires_domain.intensity import CT_WINDOWS

META = "hires"
RGB = "rgb"
BANDS = "bands"
GROUP = "group"  # band layers of one multi-band raster share {"id", "name"}: models taking all bands


def geometry_kwargs(image: Image) -> dict:
    """napari ``scale``/``translate`` (axis-aligned) or ``affine`` (oblique) for an Image."""
    display = geometry.display_affine(image.affine, image.frame)
    st = geometry.scale_translate(display)
    if st is None:
        return {"affine": display}
    scale, translate = st
    return {"scale": tuple(scale), "translate": tuple(translate)}


def _ref(image: Image, **extra) -> dict:
    return {META: replace(image, data=None), "channels": image.channels, **extra}


def contrast_limits(image: Image, data: np.ndarray) -> tuple[float, float]:
    """CT opens in the soft-tissue window; anything else at its 1–99 % range."""
    if image.units == "HU":
        c, w = CT_WINDOWS["soft-tissue"]
        return (c - w / 2, c + w / 2)
    finite = data[np.isfinite(data)]
    if finite.size == 0:
        return (0.0, 1.0)
    lo, hi = np.percentile(finite[:: max(1, finite.size // 1_000_000)], [1, 99])
    return (float(lo), float(hi) if hi > lo else float(lo) + 1.0)


def to_layer_data(image: Image, name: str, mode: str = BANDS) -> list[tuple]:
    """Layer data tuples for an Image: one layer per band, or one RGB composite (rasters)."""
    data = image.array()
    geo = geometry_kwargs(image)
    if image.kind != "raster" or (mode == BANDS and image.channels == 1):
        layers = []
        for b in range(image.channels):
            label = name if image.channels == 1 else f"{name} [{band_label(image, b)}]"
            layers.append((data[b], {"name": label, "contrast_limits": contrast_limits(image, data[b]),
                                     "colormap": "gray", "metadata": _ref(image, band=b), **geo}, "image"))
        return layers
    if mode == RGB:
        from hires_domain.report import display_for

        disp = display_for(data, "raster", image.band_names)
        rgb = disp.rgb(data).astype(np.float32)
        return [(rgb, {"name": f"{name} [RGB {','.join(image.band_names[b] for b in disp.bands)}]", "rgb": True,
                       "metadata": _ref(image, band=None, rgb_bands=disp.bands), **geo}, "image")]
    group = {"id": uuid.uuid4().hex, "name": name}
    return [(data[b], {"name": f"{name} [{image.band_names[b]}]", "contrast_limits": contrast_limits(image, data[b]),
                       "colormap": "gray", "blending": "additive" if b else "translucent",
                       "metadata": _ref(image, band=b, **{GROUP: group}), **geo}, "image")
            for b in range(image.channels)]


def to_image(data: np.ndarray, metadata: dict) -> Image:
    """The Image behind a layer: its pixels (as shown) with the source's geometry and metadata.

    A band layer of a multi-band raster becomes a one-band Image with that band's metadata.
    """
    ref: Image = metadata[META]
    if metadata.get("rgb_bands") is not None:
        from hires_domain.errors import HiresError

        raise HiresError("an RGB composite is for display only: use the band layers")
    band, channels = metadata.get("band"), metadata.get("channels", 1)
    image = ref if band is None or channels == 1 else select_band(ref, band, channels)
    return replace(image, data=np.asarray(data, dtype=np.float32)[None])


def select_band(image: Image, band: int, channels: int) -> Image:
    """One band of a ``channels``-band Image, with that band's entry of every per-band meta list."""
    meta = {k: ([v[band]] if isinstance(v, (list, tuple)) and len(v) == channels else v)
            for k, v in image.meta.items()}
    return replace(image, band_names=(image.band_names[band],) if image.band_names else (), meta=meta)


def band_label(image: Image, b: int) -> str:
    """Band ``b``'s name; medical images have none (a 4-D NIfTI's channels): 'channel n'."""
    return image.band_names[b] if b < len(image.band_names) else f"channel {b + 1}"
