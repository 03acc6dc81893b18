"""npe2 writer: one image layer to a DICOM series (directory), NIfTI or GeoTIFF.

A layer opened (or enhanced) by hires-domain carries its source ``Image`` in its metadata
(``layers.META``); the writer rebuilds the exact Image with ``layers.to_image`` and writes it with
``hires_domain.write``, which keeps geometry, DICOM headers (a derived series: new UIDs, DERIVED
image type, references to the source) and raster georeferencing, and writes atomically (temporary
name, rename when complete). napari's save dialog has already asked about replacing an existing
file, so an existing output is replaced (never the layer's own source file).

Paths:
- ``.nii``/``.nii.gz``: NIfTI (medical layers; DICOM LPS geometry converted to RAS).
- ``.tif``/``.tiff``: GeoTIFF (raster band layers; CRS, transform, band description, scale kept).
- no extension: a DICOM series directory (DICOM layers only). In napari's save dialog that is
  the "hires-domain DICOM series (directory)" filter. Note that npe2 itself appends the first
  extension (``.nii.gz``) to an extension-less path when no writer is chosen explicitly
  (``layer.save("out", plugin="hires-domain")`` writes ``out.nii.gz``).

Layers without hires metadata (a plain numpy layer): written as NIfTI only, with the geometry
the viewer shows (scale/translate/rotate/shear/affine read as patient LPS axes z, y, x, in mm);
GeoTIFF and DICOM are refused because there is no CRS or source series to write them with.
Several raster band layers (or one RGB composite) selected and saved to ``.tif``/``.tiff``: one
multi-band GeoTIFF (``write_bands``). ``*.cog.tif`` writes a Cloud Optimized GeoTIFF.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from hires_domain import geometry
from hires_domain.errors import HiresError
from hires_domain.image import Image

from . import layers

DESCRIPTION = "saved from napari (hires-domain)"


def write_image(path: str, data, meta: dict) -> list[str]:
    """npe2 single-layer writer: returns the list of written paths."""
    import hires_domain

    metadata = meta.get("metadata") or {}
    name = meta.get("name", "layer")
    if metadata.get(layers.RGB_SOURCES):  # an RGB composite stands for its band layers
        return write_bands(path, [(data, meta, "image")])
    if layers.META in metadata:
        image = layers.to_image(np.asarray(data), metadata)
        _warn_if_moved(image, meta, name)
    else:
        image = plain_image(np.asarray(data), meta)
    description = describe(metadata)
    out = hires_domain.write(image, Path(path), overwrite=True, description=description, cog=is_cog(path))
    return [str(out)]


def is_cog(path) -> bool:
    """``*.cog.tif``/``*.cog.tiff`` asks for a Cloud Optimized GeoTIFF (the CLI's ``--cog``)."""
    return str(path).lower().endswith((".cog.tif", ".cog.tiff"))


def write_bands(path: str, layer_data: list[tuple]) -> list[str]:
    """npe2 multi-layer writer (two or more image layers, or one RGB composite): the band layers
    of one raster (or of one enhanced band set) as ONE multi-band GeoTIFF (a COG for
    ``*.cog.tif``) with CRS, transform, nodata and each band's name, scale/offset and tags.

    A composite stands for its band layers; band layers of one raster are written in band order
    (only those selected), other band layers on one grid in the order given
    (``layers.band_members``, ``layers.stack_bands``)."""
    import hires_domain

    chosen = [(meta.get("name", "layer"), data, meta.get("metadata") or {}) for data, meta, _ in layer_data]
    for name, _, metadata in chosen:
        if not (layers.is_band_layer(metadata) or metadata.get(layers.RGB_SOURCES)):
            raise HiresError(f"layer '{name}' is not a raster band opened by hires-domain: a multi-band GeoTIFF "
                             "is written from band layers of one grid (save other layers one at a time)")
    members, _ = layers.band_members(chosen, chosen)
    image = layers.stack_bands(members)
    for data, meta, _ in layer_data:
        _warn_if_moved(image, meta, meta.get("name", "layer"))
    out = hires_domain.write(image, Path(path), overwrite=True, description=describe(members[0][2]),
                             cog=is_cog(path))
    return [str(out)]


def describe(metadata: dict) -> str:
    """What made the layer, for the file: an enhanced layer's provenance as the CLI writes it
    (``pipeline.Settings.describe``: version, model, scale, tile, overlap; kept in the result
    Image's meta), else ``DESCRIPTION``. DICOM puts it in DerivationDescription (and the model
    name in SeriesDescription), NIfTI in descrip, GeoTIFF in its provenance tag."""
    ref = metadata.get(layers.META)
    provenance = getattr(ref, "meta", {}).get("provenance") if ref is not None else None
    return str(metadata.get("description") or provenance or DESCRIPTION)


def plain_image(data: np.ndarray, meta: dict) -> Image:
    """A NIfTI-bound Image for a layer without hires metadata, from the layer's world transform."""
    name = meta.get("name", "layer")
    if meta.get("rgb") or data.ndim not in (2, 3):
        raise HiresError(f"layer '{name}' was not opened by hires-domain and is not a 2-D/3-D grey image: "
                         "use napari's own writers")
    ndim = data.ndim
    display = layer_world_matrix(meta, ndim)
    if ndim == 2:  # one slice: z spacing 1 at z = 0
        display = np.block([[np.ones((1, 1)), np.zeros((1, 3))], [np.zeros((3, 1)), display]])
        data = data[None]
    # the viewer's world axes for medical data are (z, y, x) of patient LPS (geometry.display_affine)
    to_display = geometry.display_affine(np.eye(4), "LPS")
    return Image(data=np.asarray(data, dtype=np.float32)[None], affine=np.linalg.solve(to_display, display),
                 frame="LPS",
                 kind="nifti", meta={})


def layer_world_matrix(meta: dict, ndim: int) -> np.ndarray:
    """The square data → world matrix napari uses for a layer (its affine after scale/translate/
    rotate/shear), from a layer data tuple's ``meta``."""
    from napari.utils.transforms import Affine

    transform = Affine(scale=meta.get("scale", (1.0,) * ndim), translate=meta.get("translate", (0.0,) * ndim),
                       rotate=meta.get("rotate"), shear=meta.get("shear"), ndim=ndim)
    if meta.get("affine") is not None:
        transform = Affine(affine_matrix=np.asarray(meta["affine"], dtype=float), ndim=ndim).compose(transform)
    return np.asarray(transform.affine_matrix, dtype=float)


def _warn_if_moved(image: Image, meta: dict, name: str) -> None:
    """The file keeps the source geometry: say so when the layer was moved in the viewer."""
    expected = geometry.display_affine(image.affine, image.frame)
    shown = layer_world_matrix(meta, expected.shape[0] - 1)
    if not np.allclose(shown, expected, rtol=1e-6, atol=1e-6 * max(1.0, float(np.abs(expected).max()))):
        warnings.warn(f"layer '{name}' was moved or rescaled in the viewer; the file keeps the geometry "
                      "of its source data", stacklevel=2)
