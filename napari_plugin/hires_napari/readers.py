"""npe2 reader: DICOM series/files, NIfTI volumes and rasters (one layer per band, plus a true-colour
composite for rasters of three or more bands), and the "Add RGB composite" command.

``get_reader``/``get_rgb_reader`` only look at the path (suffix, DICOM magic, a header probe) and
return None for anything they do not handle; they never raise. The returned reader function
reads through ``hires_domain.read`` and raises ``HiresError`` with a one-line message on failure
(napari shows it as a notification).
"""

from __future__ import annotations

import itertools
import warnings
from pathlib import Path

from hires_domain.errors import HiresError, one_line

from . import layers

NIFTI_SUFFIXES = (".nii", ".nii.gz")
RASTER_SUFFIXES = (".tif", ".tiff", ".jp2")
DICOM_SUFFIXES = (".dcm",)
DIRECTORY_PROBE_LIMIT = 200  # files looked at before a directory is declared "not DICOM"


def get_reader(path):
    """Reader for a DICOM directory, .dcm, .nii/.nii.gz, .tif/.tiff/.jp2 and Sentinel-2 products:
    one layer per band; a raster of three or more bands (and a product) also gets a true-colour
    composite, shown, with its band layers hidden (``layers.TRUE_COLOUR``)."""
    try:
        path = _single(path)
        kind = _probe(path) if path is not None else None
    except Exception:  # a probe must never raise into napari
        return None
    if kind is None:
        return None
    return lambda p: read_layers(p, layers.TRUE_COLOUR)


def get_rgb_reader(path):
    """Reader for .tif/.tiff/.jp2 rasters with at least two bands, shown as one RGB composite
    (not a manifest reader: see ``show_rgb_composite``)."""
    try:
        path = _single(path)
        if path is None or _probe(path) != "raster" or _raster_bands(path) < 2:
            return None
    except Exception:
        return None
    return lambda p: read_layers(p, layers.RGB)


def read_layers(path, mode: str = layers.BANDS) -> list[tuple]:
    """Layer data tuples for ``path`` (a Sentinel-2 product: ``read_product_layers``); failures
    become a one-line ``HiresError``."""
    import hires_domain

    path = _single(path) or path
    try:
        if _probe(str(path)) == "product":
            return read_product_layers(path)
        image = hires_domain.read(path)
        return layers.to_layer_data(image, layer_name(path, image), mode)
    except HiresError:
        raise
    except Exception as exc:  # any library error, reported in one line
        detail = one_line(exc) or type(exc).__name__
        raise HiresError(f"cannot open {path}: {detail}") from exc


def read_product_layers(path) -> list[tuple]:
    """Every band of a Sentinel-2 product (SAFE, zipped SAFE, band directory) at its own
    resolution and on its own grid, values as stored (DN), true colour on top."""
    from dataclasses import replace

    from hires_domain.io.raster import read_raster
    from hires_domain.io.s2_product import open_product, product_stem

    product = open_product(path)
    bands = [replace(read_raster(f.path), band_names=(name,), nodata=f.nodata)
             for name, f in product.bands.items()]
    return layers.product_layer_data(bands, product_stem(path), product.path)


def layer_name(path, image) -> str:
    """The file name without its image suffix; DICOM adds the series description."""
    p = Path(path)
    name = p.name
    for suffix in (*NIFTI_SUFFIXES, *RASTER_SUFFIXES, *DICOM_SUFFIXES):
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            name = name[: -len(suffix)]
            break
    if image.kind == "dicom":
        headers = image.meta.get("headers") or []
        description = str(headers[0].get("SeriesDescription", "")).strip() if headers else ""
        if description and description != name:
            name = f"{name} ({description})"
    return name


# --- cheap probes ---------------------------------------------------------------------------

def _single(path) -> str | None:
    """One path (napari passes a list when stacking); None for several."""
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    path = str(path)
    return path or None


def _probe(path: str) -> str | None:
    """'product' (Sentinel-2), 'dicom', 'nifti' or 'raster' when this plugin can read ``path``,
    else None."""
    from hires_domain.io.dicom import is_dicom_file
    from hires_domain.io.s2_product import is_product

    p = Path(path)
    if is_product(p):
        return "product"
    if p.is_dir():
        files = (f for f in p.rglob("*") if f.is_file() and not f.name.startswith("."))
        return "dicom" if any(is_dicom_file(f) for f in itertools.islice(files, DIRECTORY_PROBE_LIMIT)) else None
    if not p.is_file():
        return None
    name = p.name.lower()
    if name.endswith(NIFTI_SUFFIXES):
        return "nifti" if _nifti_ok(p) else None
    if name.endswith(DICOM_SUFFIXES):
        return "dicom" if is_dicom_file(p) else None
    if name.endswith(RASTER_SUFFIXES):
        return "raster" if _raster_bands(p) > 0 else None
    return None


def _nifti_ok(path: Path) -> bool:
    import nibabel as nib

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img = nib.load(str(path))  # header only: pixels stay on disk
        return 2 <= len(img.shape) <= 4
    except Exception:
        return False


def _raster_bands(path) -> int:
    """Band count of a raster GDAL can open (0 when it cannot)."""
    import rasterio

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with rasterio.open(str(path)) as ds:
                return int(ds.count)
    except Exception:
        return 0


def show_rgb_composite(viewer: "napari.viewer.Viewer") -> None:  # noqa: F821 (resolved by napari)
    """Command "Add RGB composite of this raster" (Layers → Visualize, the command palette, the
    Enhance widget's button): ``add_composite`` on the selected layers, its message as a
    notification."""
    from napari.utils.notifications import show_info

    _, message = add_composite(viewer)
    show_info(message)


def add_composite(viewer, chosen=None) -> tuple:
    """Add the true-colour composite of the raster whose band layers (or composite) are
    ``chosen`` (default: the selected layers), built from the layers' own data
    (``layers.band_members``, ``layers.composite``) so an enhanced band set shows enhanced.
    A composite of the same name made before is replaced in place, never duplicated.
    Returns ``(layer, message)``; raises ``HiresError`` when nothing chosen is a raster band.
    """
    from napari.layers import Image as ImageLayer, Layer

    chosen = list(viewer.layers.selection) if chosen is None else list(chosen)
    everything = [(ly.name, ly.data, ly.metadata) for ly in viewer.layers if isinstance(ly, ImageLayer)]
    members, name = layers.band_members(everything, [(ly.name, ly.data, ly.metadata) for ly in chosen
                                                     if isinstance(ly, ImageLayer)])
    data, kwargs, kind = layers.composite(members, name)
    meta = kwargs["metadata"]
    colours = ", ".join(f"{c} {layers.band_info(members[k][2])['name']}"
                        for c, k in zip(("red", "green", "blue"), meta["rgb_bands"]))
    old = next((ly for ly in viewer.layers if ly.name == kwargs["name"] and layers.RGB_SOURCES in ly.metadata), None)
    layer = Layer.create(data, kwargs, kind)
    if old is None:
        viewer.layers.append(layer)
        return layer, f"added '{layer.name}' ({colours}: {meta['rgb_reason']})"
    index = viewer.layers.index(old)
    viewer.layers.remove(old)
    viewer.layers.insert(index, layer)
    return layer, f"replaced '{layer.name}' ({colours}: {meta['rgb_reason']})"
