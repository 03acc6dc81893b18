"""Image ↔ napari layer data, Qt-free. Geometry comes from ``hires_domain.geometry`` only.

Every layer keeps its source ``Image`` (without pixels) in ``metadata["hires"]``: the writers
and the widgets rebuild the exact Image from it, so geometry, DICOM headers and raster
georeferencing survive a trip through the viewer.
"""

from __future__ import annotations

import uuid
from dataclasses import replace
from typing import Any, Sequence

import numpy as np

from hires_domain import geometry
from hires_domain.image import Image
from hires_domain.intensity import CT_WINDOWS, true_colour_bands
from hires_domain.tiling import valid_mask

META = "hires"
RGB = "rgb"
BANDS = "bands"
GROUP = "group"  # band layers of one multi-band raster share {"id", "name"}: models taking all bands
TRUE_COLOUR = "true-colour"  # the reader's mode: a raster of >= 3 bands as a composite + hidden band layers
PRODUCT = "s2_product"  # band layers of one Sentinel-2 product share {"id", "name", "path"}
RGB_SOURCES = "rgb_sources"  # a composite's band layers (name, data, metadata): what saving it writes
STRETCH = (2.0, 98.0)  # composite display stretch, percent of each band's valid pixels


def geometry_kwargs(image: Image) -> dict:
    """napari ``scale``/``translate`` (axis-aligned) or ``affine`` (oblique) for an Image, and
    its ``axis_labels`` (z/y/x, not napari's −3/−2/−1)."""
    display = geometry.display_affine(image.affine, image.frame)
    st = geometry.scale_translate(display)
    labels = {"axis_labels": axis_labels(image)}
    if st is None:
        return {"affine": display, **labels}
    scale, translate = st
    return {"scale": tuple(scale), "translate": tuple(translate), **labels}


def axis_labels(image: Image) -> tuple[str, ...]:
    """Names of the spatial axes as the viewer shows them: (z,) y, x (patient LPS for medical
    images, −northing/easting for rasters)."""
    n = np.shape(image.affine)[0] - 1
    return ("z", "y", "x")[-n:] if n <= 3 else tuple(f"axis {i}" for i in range(n - 2)) + ("y", "x")


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


WINDOW_REASON = "hires_window_reason"  # layer metadata: why a medical layer opened as it did


def window_reason(image: Image) -> str:
    """Why a medical image opens in the soft-tissue window (CT in HU) or at its 1–99 % range."""
    if image.units == "HU":
        why = image.meta.get("ct_evidence") or (
            f"DICOM {image.meta.get('modality') or 'image'} in HU (rescale slope/intercept)"
            if image.kind == "dicom" else "values in HU")
        return f"{why}: soft-tissue window"
    if image.kind == "dicom":
        return f"DICOM {image.meta.get('modality') or 'image'} without HU: 1-99 % range"
    return "no CT-like intensities (hires_domain.intensity.ct_evidence): 1-99 % range"


def _why(image: Image) -> dict:
    return {WINDOW_REASON: window_reason(image)} if image.kind != "raster" else {}


def to_layer_data(image: Image, name: str, mode: str = BANDS) -> list[tuple]:
    """Layer data tuples for an Image: one layer per band (``BANDS``), one RGB composite
    (``RGB``, rasters), or for a raster of three or more bands the composite followed by its
    band layers, hidden (``TRUE_COLOUR``, what the reader returns; fewer bands: as ``BANDS``)."""
    data = image.array()
    geo = geometry_kwargs(image)
    if image.kind != "raster" or (mode == BANDS and image.channels == 1):
        layers = []
        for b in range(image.channels):
            label = name if image.channels == 1 else f"{name} [{band_label(image, b)}]"
            layers.append((data[b], {"name": label, "contrast_limits": contrast_limits(image, data[b]),
                                     "colormap": "gray", "metadata": _ref(image, band=b, **_why(image)), **geo},
                           "image"))
        return layers
    group = {"id": uuid.uuid4().hex, "name": name}
    bands = [(data[b], {"name": f"{name} [{image.band_names[b]}]", "contrast_limits": contrast_limits(image, data[b]),
                        "colormap": "gray", "blending": "additive" if b else "translucent",
                        "metadata": _ref(image, band=b, **{GROUP: group}), **geo}, "image")
             for b in range(image.channels)]
    if mode == RGB:
        return [composite([(kw["name"], d, kw["metadata"]) for d, kw, _ in bands], name)]
    if mode == TRUE_COLOUR and image.channels >= 3:
        # what GIS tools show first: true colour on the bottom, the band layers (kept for
        # 'all bands' models, Compare and saving) hidden above it, opaque when shown one by one
        for _, kw, _ in bands:
            kw.update(visible=False, blending="translucent")
        return [composite([(kw["name"], d, kw["metadata"]) for d, kw, _ in bands], name), *bands]
    return bands


def product_layer_data(bands: Sequence[Image], name: str, path: str) -> list[tuple]:
    """A Sentinel-2 product: one layer per band (one-band Images), each on its own grid so they
    overlay exactly, hidden, with the true-colour composite of the finest bands on top. Every
    band layer carries ``metadata[PRODUCT]``: the Enhance widget offers the whole product."""
    product = {"id": uuid.uuid4().hex, "name": name, "path": str(path)}
    out = []
    for image in bands:
        (data, kwargs, kind), = to_layer_data(image, f"{name} [{image.band_names[0]}]")
        kwargs["metadata"][PRODUCT] = product
        out.append((data, {**kwargs, "visible": False}, kind))
    areas = [abs(float(np.linalg.det(np.asarray(b.affine)[:2, :2]))) for b in bands]  # pixel areas
    fine = [(kw["name"], d, kw["metadata"]) for (d, kw, _), a in zip(out, areas) if np.isclose(a, min(areas))]
    return [*out, composite(fine, name)]


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
    pixels = np.asarray(data, dtype=np.float32)
    if band is None and channels > 1 and pixels.ndim == np.shape(ref.affine)[0]:
        return replace(image, data=pixels)  # a layer with a leading band axis (an all-bands difference)
    return replace(image, data=pixels[None])


def select_band(image: Image, band: int, channels: int) -> Image:
    """One band of a ``channels``-band Image, with that band's entry of every per-band meta list."""
    meta = {k: ([v[band]] if isinstance(v, (list, tuple)) and len(v) == channels else v)
            for k, v in image.meta.items()}
    return replace(image, band_names=(image.band_names[band],) if image.band_names else (), meta=meta)


def band_label(image: Image, b: int) -> str:
    """Band ``b``'s name; medical images have none (a 4-D NIfTI's channels): 'channel n'."""
    return image.band_names[b] if b < len(image.band_names) else f"channel {b + 1}"


# --- true-colour composites and band sets (built from the layers' own data) -------------------

# (colour, centre nm, accepted range nm): Sentinel-2 B02/B03/B04 492/560/665, Landsat 8 OLI 482/561/655
_WAVELENGTH_TAGS = ("wavelength", "central_wavelength_um", "central_wavelength_nm", "center_wavelength")
PER_BAND_META = ("scales", "offsets", "descriptions", "colorinterp", "units", "band_tags", "mask_flags")


def _band_index(metadata: dict) -> int:
    band = metadata.get("band")
    return 0 if band is None else int(band)


def _per_band(ref: Image, key: str, b: int, channels: int):
    values = (ref.meta or {}).get(key)
    return values[b] if isinstance(values, (list, tuple)) and len(values) == channels else None


def band_info(metadata: dict) -> dict:
    """What a raster band layer says about its band: name, GDAL colour interpretation and centre
    wavelength in nm (from band tags such as ENVI's ``wavelength``; values below 30 read as µm)."""
    ref: Image = metadata[META]
    b, channels = _band_index(metadata), metadata.get("channels", 1)
    name = ref.band_names[b] if b < len(ref.band_names) else f"band {b + 1}"
    wavelength = None
    tags = _per_band(ref, "band_tags", b, channels) or {}
    for key, value in tags.items():
        if str(key).lower() in _WAVELENGTH_TAGS:
            try:
                w = float(str(value).split()[0])
            except (ValueError, IndexError):
                continue
            wavelength = w * 1000.0 if w < 30 else w
            break
    return {"name": str(name), "colorinterp": str(_per_band(ref, "colorinterp", b, channels) or "").lower(),
            "wavelength": wavelength}


def stretch_to_uint8(band: np.ndarray, valid: np.ndarray, percent=STRETCH) -> tuple[np.ndarray, tuple[float, float]]:
    """A band stretched between its ``percent`` percentiles of the valid pixels (a strided
    sample of at most 1 Mi values) to 0–255."""
    values = band[valid]
    values = values[:: max(1, values.size // 1_000_000)]
    lo, hi = (float(v) for v in np.percentile(values, percent)) if values.size else (0.0, 1.0)
    hi = hi if hi > lo else lo + 1.0
    out = np.clip((np.where(valid, band, lo) - lo) * (255.0 / (hi - lo)), 0, 255)
    return np.rint(out).astype(np.uint8), (lo, hi)


def composite(members: Sequence[tuple[str, Any, dict]], name: str) -> tuple:
    """A true-colour RGB layer data tuple from raster band layers ``(name, data, metadata)``.

    Red, green and blue are chosen by ``true_colour_bands``; each is stretched 2–98 % over the
    pixels valid in all three (nodata and NaN excluded), as uint8; nodata pixels are transparent
    (RGBA) when there are any. The geometry is the bands' own (``geometry_kwargs``), so the
    composite overlays them, enhanced or not. ``metadata[RGB_SOURCES]`` keeps the members, so
    saving the composite writes the band set."""
    from hires_domain.errors import HiresError

    if not members:
        raise HiresError("no band layers for an RGB composite")
    refs = [m[2][META] for m in members]
    shapes = {tuple(np.shape(m[1])) for m in members}
    if len(shapes) > 1 or len(next(iter(shapes))) != 2:
        raise HiresError(f"an RGB composite needs 2-D bands of one size, got {sorted(shapes)}")
    if any(r.kind != "raster" for r in refs) or not all(np.allclose(r.affine, refs[0].affine) for r in refs):
        raise HiresError("an RGB composite needs raster bands on one grid")
    infos = [band_info(m[2]) for m in members]
    picks, why = true_colour_bands(infos)
    arrays = [np.asarray(members[k][1], dtype=np.float32) for k in picks]
    valid = np.logical_and.reduce([valid_mask(a[None], refs[k].nodata) for a, k in zip(arrays, picks)])
    channels = [stretch_to_uint8(a, valid)[0] for a in arrays]
    if not valid.all():
        channels.append(np.where(valid, 255, 0).astype(np.uint8))
    rgb = np.stack(channels, axis=-1)
    labels = [infos[k]["name"] for k in picks]
    ref = refs[picks[0]]
    metadata = {META: ref, "channels": members[picks[0]][2].get("channels", 1), "band": None,
                "rgb_bands": tuple(picks), "rgb_reason": why, RGB_SOURCES: [tuple(m) for m in members]}
    geo = geometry_kwargs(ref)
    return (rgb, {"name": f"{name} [RGB {','.join(labels)}]", "rgb": True, "metadata": metadata, **geo}, "image")


def is_band_layer(metadata: dict | None) -> bool:
    """A single-band layer of a raster opened or enhanced by hires-domain (not a composite)."""
    return bool(metadata) and META in metadata and metadata.get("rgb_bands") is None \
        and getattr(metadata[META], "kind", None) == "raster"


def _band_key(member) -> tuple:
    meta = member[2]
    group = meta.get(GROUP)
    return ("group", group["id"], meta.get("band")) if group else ("data", id(member[1]))


def band_members(everything: Sequence[tuple[str, Any, dict]], chosen: Sequence[tuple[str, Any, dict]]):
    """The band layers a composite or a multi-band file is made of, and the raster's name.

    ``everything``/``chosen``: ``(name, data, metadata)`` of the viewer's layers and of the
    selected ones. A composite stands for its band layers. When the chosen bands all belong to
    one raster (or one enhanced band set), that raster's band layers still in the viewer are
    used, in band order; otherwise the chosen band layers themselves, in the order given."""
    from hires_domain.errors import HiresError

    picked = []
    for member in chosen:
        meta = member[2] or {}
        if meta.get(RGB_SOURCES):
            picked.extend(meta[RGB_SOURCES])
        elif is_band_layer(meta):
            picked.append(tuple(member))
    if not picked:
        raise HiresError("select the band layers of a raster opened by hires-domain, or its RGB composite")
    unique = list({_band_key(m): m for m in picked}.values())
    groups = {m[2].get(GROUP, {}).get("id") for m in unique}
    if len(groups) == 1 and None not in groups:
        group = unique[0][2][GROUP]
        present = {_band_key(m): tuple(m) for m in everything
                   if is_band_layer(m[2]) and (m[2].get(GROUP) or {}).get("id") == group["id"]}
        merged = {**{_band_key(m): m for m in unique}, **present}
        return sorted(merged.values(), key=lambda m: m[2].get("band") or 0), group["name"]
    if len(unique) == 1:
        return unique, unique[0][0]
    return unique, "RGB of " + ", ".join(m[0] for m in unique)


def stack_bands(members: Sequence[tuple[str, Any, dict]]) -> Image:
    """One multi-band Image from raster band layers on one grid: the pixels as shown, every
    band's name, scale/offset, description, colour interpretation, units and tags, and the
    shared CRS, transform and nodata (for the GeoTIFF writer)."""
    from hires_domain.errors import HiresError

    images = [to_image(data, meta) for _, data, meta in members]
    first = images[0]
    for (name, _, _), im in zip(members, images):
        if im.kind != "raster":
            raise HiresError(f"layer '{name}' is not a raster band: save it on its own")
        if im.spatial_shape != first.spatial_shape or not np.allclose(im.affine, first.affine) or im.crs != first.crs:
            raise HiresError(f"layer '{name}' is not on the grid of '{members[0][0]}': bands of one file "
                             "need the same size, transform and CRS")
        same_nodata = im.nodata == first.nodata or (im.nodata is not None and first.nodata is not None
                                                    and np.isnan(im.nodata) and np.isnan(first.nodata))
        if not same_nodata:
            raise HiresError(f"layer '{name}' has nodata {im.nodata}, '{members[0][0]}' {first.nodata}")
    meta = dict(first.meta)
    for key in PER_BAND_META:
        values = [im.meta.get(key) for im in images]
        if all(isinstance(v, (list, tuple)) and len(v) == 1 for v in values):
            meta[key] = [v[0] for v in values]
        else:
            meta.pop(key, None)
    if len({im.meta.get("dtype") for im in images}) > 1:
        meta["dtype"] = "float32"
    names = tuple(im.band_names[0] if im.band_names else f"band {k + 1}" for k, im in enumerate(images))
    return replace(first, data=np.concatenate([im.data for im in images]), band_names=names, meta=meta)
