"""Sentinel-2 products as users download them: a ``*.SAFE`` directory, its ``.zip``, or a directory
of band files (``…_B02.jp2``, ``B11.tif``, ``s2_B8A.jp2``).

``open_product`` finds each band's file at its native resolution and records that file's own grid:
a product's 10, 20 and 60 m grids need not share an origin, so nothing here assumes they nest.
From the SAFE metadata (``MTD_MSIL1C.xml``/``MTD_MSIL2A.xml``) it takes the level, the processing
baseline, the quantification value and the per-band additive DN offsets (``RADIO_ADD_OFFSET`` /
``BOA_ADD_OFFSET``, −1000 from baseline 04.00): reflectance = (DN + offset) / quantification.
No pixels are read here. Rasters are opened with rasterio/GDAL only, zips through ``/vsizip/``
(never extracted; ``zipfile`` lists members and reads the metadata XML).
"""

from __future__ import annotations

import os
import re
import warnings
import xml.etree.ElementTree as ET
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from ..errors import HiresError, one_line

S2_ORDER = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12")
NATIVE_M = {"B01": 60, "B02": 10, "B03": 10, "B04": 10, "B05": 20, "B06": 20, "B07": 20, "B08": 10,
            "B8A": 20, "B09": 60, "B10": 60, "B11": 20, "B12": 20}
TEN_M = ("B02", "B03", "B04", "B08")
RASTER_SUFFIXES = (".jp2", ".tif", ".tiff")
SAME_AREA_M = 60.0  # every band's footprint within this of the 10 m bands' footprint, edge by edge

_BAND = re.compile(r"(?:^|[_.-])(B0[1-9]|B1[0-2]|B8A)(?:_(10|20|60)m)?$", re.I)
_LANDSAT = re.compile(r"(?:^|[_.-])B([1-9]|1[01])$", re.I)  # B1..B11, no leading zero
_NOT_BAND = re.compile(r"^MSK_", re.I)  # quality masks are named after bands too (MSK_DETFOO_B01)
_IMG = re.compile(r"^GRANULE/([^/]+)/IMG_DATA/(?:R(?:10|20|60)m/)?([^/]+)$", re.I)


@dataclass(frozen=True)
class BandFile:
    """One band's file and its own grid (rasterio's affine as a 6-tuple ``(a, b, c, d, e, f)``)."""

    name: str
    path: str  # what rasterio.open takes (a /vsizip/ path inside a zip)
    resolution: float  # metres, abs(transform.a)
    transform: tuple
    shape: tuple[int, int]  # (height, width)
    crs: str  # WKT
    dtype: str
    nodata: float | None  # 0 in SAFE products; a band directory's own files' nodata (may be None)


@dataclass(frozen=True)
class S2Product:
    """A product's bands (in ``S2_ORDER``) and radiometry: reflectance = (DN + offset) / quantification."""

    path: str
    kind: str  # 'SAFE', 'SAFE zip' or 'band directory'
    level: str | None  # 'L1C', 'L2A' or None (band directory)
    baseline: str | None  # PROCESSING_BASELINE, e.g. '05.09'
    quantification: float
    offsets: dict[str, float]  # band -> additive DN offset, 0.0 where the metadata has none
    bands: dict[str, BandFile]
    provenance: str  # one line: where the radiometry came from


def band_of(name: str) -> tuple[str, int | None] | None:
    """``('B8A', 20)`` for ``T32TQM_20230101T101421_B8A_20m.jp2``, ``('B02', None)`` for ``s2_B02.jp2``;
    None for a file that is not a Sentinel-2 band (TCI, AOT, WVP, SCL, preview, MSK_*, other suffixes)."""
    p = Path(name)
    if p.suffix.lower() not in RASTER_SUFFIXES or _NOT_BAND.search(p.name):
        return None
    m = _BAND.search(p.stem)
    return (m.group(1).upper(), int(m.group(2)) if m.group(2) else None) if m else None


def _landsat_band(name: str) -> int | None:
    p = Path(name)
    m = _LANDSAT.search(p.stem) if p.suffix.lower() in RASTER_SUFFIXES else None
    return int(m.group(1)) if m else None


def product_stem(path) -> str:
    """``S2B_MSIL1C_…`` for ``S2B_MSIL1C_….SAFE`` or ``….SAFE.zip``; a band directory's own name."""
    name = Path(path).name
    for suffix in (".zip", ".SAFE", ".safe"):
        name = name[: -len(suffix)] if name.endswith(suffix) and len(name) > len(suffix) else name
    return name


def is_product(path) -> bool:
    """Cheap test (no raster opened): a ``*.SAFE`` directory, a ``.zip`` file (``open_product`` says
    what is wrong with one that holds no SAFE tree), or a directory without DICOM files holding
    rasters named after Sentinel-2 bands (or Landsat bands, so that ``open_product`` can say why
    those are not read)."""
    p = Path(path)
    try:
        if p.is_file():
            return p.suffix.lower() == ".zip"
        if not p.is_dir():
            return False
        if p.suffix.lower() == ".safe":
            return True
        files = [f for f in p.iterdir() if f.is_file() and not f.name.startswith(".")]
    except OSError:
        return False
    if not any(band_of(f.name) or _landsat_band(f.name) for f in files):
        return False
    from .dicom import is_dicom_file

    return not any(f.name.upper() == "DICOMDIR" or f.suffix.lower() in (".dcm", ".dicom")
                   or (f.suffix.lower() not in RASTER_SUFFIXES and is_dicom_file(f)) for f in files)


def open_product(path) -> S2Product:
    """Find a product's bands and radiometry (one-line ``HiresError`` when it cannot be read)."""
    p = Path(path)
    if not p.exists():
        raise HiresError(f"no such file or directory: {p}")
    if p.is_file():
        if p.suffix.lower() != ".zip":
            raise HiresError(f"{p}: not a Sentinel-2 product (a .SAFE directory, its .zip, or a directory of "
                             f"band files)")
        return _open_safe(p, *_zip_tree(p))
    if p.suffix.lower() == ".safe":
        names = [f.relative_to(p).as_posix() for f in p.iterdir() if f.is_file()]
        names += [f.relative_to(p).as_posix() for f in p.glob("GRANULE/*/IMG_DATA/**/*") if f.is_file()]
        return _open_safe(p, "SAFE", str(p), names, lambda name: (p / name).read_bytes())
    return _open_band_dir(p)


# --- SAFE directories and zips -------------------------------------------------------------------

def _zip_tree(p: Path):
    """('SAFE zip', rasterio prefix of the SAFE root, member names under it, reader of a member)."""
    try:
        with zipfile.ZipFile(p) as z:
            members = z.namelist()
    except (zipfile.BadZipFile, OSError) as e:
        raise HiresError(f"{p}: not a readable zip archive (empty or corrupt: {one_line(e)})") from None
    roots = sorted({m.group(1) for m in map(re.compile(r"^(.*?[^/]\.SAFE)/", re.I).match, members) if m})
    if not roots:
        shown = ", ".join(members[:3]) + (", …" if len(members) > 3 else "") or "nothing"
        raise HiresError(f"{p}: no *.SAFE folder in the zip (it holds {shown}): not a Sentinel-2 product zip")
    if len(roots) > 1:
        raise HiresError(f"{p}: the zip holds {len(roots)} SAFE products ({', '.join(roots)}): give one at a time")
    root = roots[0]
    names = [m[len(root) + 1:] for m in members if m.startswith(root + "/") and not m.endswith("/")]

    def read(name: str) -> bytes:
        with zipfile.ZipFile(p) as z:
            return z.read(f"{root}/{name}")

    return "SAFE zip", f"/vsizip/{os.path.abspath(p)}/{root}", names, read


def _open_safe(p: Path, kind: str, prefix: str, names: list[str], read) -> S2Product:
    images = [(m.group(1), m.group(2), n) for n in names if (m := _IMG.match(n))]
    granules = sorted({g for g, _, _ in images})
    if not granules:
        raise HiresError(f"{p}: no band images under GRANULE/*/IMG_DATA: not a complete Sentinel-2 SAFE product")
    if len(granules) > 1:
        raise HiresError(f"{p}: {len(granules)} granules ({', '.join(granules)}): only single-granule products "
                         f"are read")
    found = {}
    for _, base, name in images:
        if (b := band_of(base)) is not None:
            found.setdefault(b[0], []).append((f"{prefix}/{name}", b[1]))
    mtd = [n for n in names if n.upper() in ("MTD_MSIL1C.XML", "MTD_MSIL2A.XML")]
    if mtd:
        try:
            xml = read(mtd[0])
        except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as e:
            raise HiresError(f"{p}: cannot read {mtd[0]} ({one_line(e)})") from None
        meta = _metadata(xml, f"{p}: {mtd[0]}", mtd[0])
    else:
        meta = _no_metadata(p, names)
    bands = _band_files(p, found, nodata=0.0)
    return _product(p, kind, bands, **meta)


def _tag(el) -> str:
    return el.tag.rsplit("}", 1)[-1] if isinstance(el.tag, str) else ""


def _metadata(xml: bytes, where: str, name: str) -> dict:
    """level, baseline, quantification, offsets (by band) and provenance from an MTD_MSI XML."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as e:
        raise HiresError(f"{where}: corrupt metadata XML ({one_line(e)})") from None
    elements = list(root.iter())

    def text(tag: str) -> str | None:
        return next(((el.text or "").strip() for el in elements if _tag(el) == tag), None)

    stated = f"{text('PROCESSING_LEVEL') or ''} {text('PRODUCT_TYPE') or ''}".upper()
    level = ("L2A" if "2A" in stated else "L1C" if "1C" in stated else
             "L2A" if "MSIL2A" in name.upper() else "L1C")
    q_tag, off_tag = ("BOA_QUANTIFICATION_VALUE", "BOA_ADD_OFFSET") if level == "L2A" else \
        ("QUANTIFICATION_VALUE", "RADIO_ADD_OFFSET")

    def number(value, what: str) -> float:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise HiresError(f"{where}: {what} is {value!r}, not a number") from None

    q = number(text(q_tag) or 10000, q_tag)
    offsets = {}
    for el in (el for el in elements if _tag(el) == off_tag):
        band_id = el.get("band_id", "")
        if not band_id.isdigit() or int(band_id) >= len(S2_ORDER):
            raise HiresError(f"{where}: {off_tag} with band_id {band_id!r}: expected 0-12")
        offsets[S2_ORDER[int(band_id)]] = number(el.text, f"{off_tag} of band_id {band_id}")
    if not q > 0:
        raise HiresError(f"{where}: {q_tag} is {q:g}: it must be positive")
    baseline = text("PROCESSING_BASELINE") or None
    values = sorted(set(offsets.values()))
    off = (f"no {off_tag}" if not values else f"{off_tag} {values[0]:g}" if len(values) == 1
           else f"{off_tag} {values[0]:g} to {values[-1]:g} by band")
    provenance = (f"Sentinel-2 {level} (baseline {baseline or 'unknown'}, {off}, "
                  f"quantification {q:g})")
    return dict(level=level, baseline=baseline, quantification=q, offsets=offsets, provenance=provenance)


def _no_metadata(p: Path, names: list[str]) -> dict:
    """A SAFE without its MTD XML: level and baseline from the product name, offsets unknown (0)."""
    name = p.name.upper()
    level = "L2A" if "MSIL2A" in name or any(re.search(r"/IMG_DATA/R\d\dm/", n) for n in names) else \
        "L1C" if "MSIL1C" in name else None
    m = re.search(r"_N(\d\d)(\d\d)_", name)
    baseline = f"{m.group(1)}.{m.group(2)}" if m else None
    mtd = f"MTD_MSI{level or 'L1C/L2A'}.xml"
    provenance = (f"Sentinel-2 {level or 'SAFE'} without {mtd}: offsets unknown (taken as 0), quantification "
                  f"10000 assumed")
    if baseline and baseline >= "04.00":
        warnings.warn(f"{p}: {mtd} is missing; products of baseline {baseline} carry DN offsets (-1000) "
                      f"that are then ignored", stacklevel=3)
    return dict(level=level, baseline=baseline, quantification=10000.0, offsets={}, provenance=provenance)


# --- band directories ----------------------------------------------------------------------------

def _open_band_dir(p: Path) -> S2Product:
    files = sorted(f for f in p.iterdir() if f.is_file() and not f.name.startswith("."))
    landsat = sorted({n for f in files if (n := _landsat_band(f.name)) is not None})
    s2_only = sorted({b[0] for f in files if (b := band_of(f.name)) and b[0] not in ("B10", "B11")})
    if any(n < 10 for n in landsat):
        if not s2_only:
            raise HiresError(f"{p}: Landsat band files found ({', '.join(f'B{n}' for n in landsat)}): only "
                             f"Sentinel-2 products are read as products; stack the bands into one GeoTIFF")
        raise HiresError(f"{p}: both Landsat-style (B1 … B9) and Sentinel-2-style ({', '.join(s2_only)}) "
                         f"band file names: keep one product per directory")
    found = {}
    for f in files:
        if (b := band_of(f.name)) is not None:
            found.setdefault(b[0], []).append((str(f), b[1]))
    if not found:
        rasters = [f.name for f in files if f.suffix.lower() in RASTER_SUFFIXES]
        shown = ", ".join(rasters[:4]) + (", …" if len(rasters) > 4 else "") if rasters else "no rasters"
        raise HiresError(f"{p}: no Sentinel-2 band files (names ending in B01 … B12 or B8A, e.g. T32TQM_B02.jp2) "
                         f"found ({shown})")
    bands = _band_files(p, found, nodata=None)
    return _product(p, "band directory", bands, level=None, baseline=None, quantification=10000.0, offsets={},
                    provenance="band directory without product metadata: values taken as DN")


# --- bands, checks -------------------------------------------------------------------------------

def _band_files(p: Path, found: dict, nodata: float | None) -> dict[str, BandFile]:
    """One file per band: its native resolution where a band comes at several (L2A), else the finest."""
    from .raster import _open

    missing = [b for b in TEN_M if not any(r in (10, None) for _, r in found.get(b, ()))]
    if missing:
        have = ", ".join(f"{b}" + ("" if any(r in (NATIVE_M[b], None) for _, r in found[b]) else
                                   f" (at {min(r for _, r in found[b])} m)") for b in S2_ORDER if b in found)
        raise HiresError(f"{p}: missing 10 m bands {', '.join(missing)} (found {have or 'none'})")
    bands = {}
    for name in (b for b in S2_ORDER if b in found):
        files = sorted(found[name], key=lambda f: (f[1] != NATIVE_M[name], f[1] or 0))
        if len(files) > 1 and files[0][1] == files[1][1]:
            raise HiresError(f"{p}: several files for band {name} "
                             f"({', '.join(Path(f).name for f, r in files if r == files[0][1])}): keep one")
        path = files[0][0]
        with _open(path) as ds:
            if ds.count != 1:
                raise HiresError(f"{path}: {ds.count} bands in a band file: expected one")
            t = ds.transform
            bands[name] = BandFile(name=name, path=path, resolution=abs(t.a), transform=tuple(t)[:6],
                                   shape=(ds.height, ds.width), crs=ds.crs.to_wkt() if ds.crs else "",
                                   dtype=ds.dtypes[0], nodata=nodata if nodata is not None else ds.nodata)
    _check(p, bands)
    return bands


def _check(p: Path, bands: dict[str, BandFile]) -> None:
    """One CRS, square unrotated 10/20/60 m pixels, at least one coarse band, one common footprint."""
    if all(b.resolution <= 10 * 1.01 for b in bands.values()):
        raise HiresError(f"{p}: only 10 m bands found ({', '.join(bands)}): a product needs at least one "
                         f"20 m or 60 m band")
    crss = {}
    for b in bands.values():
        crss.setdefault(b.crs, []).append(b.name)
        a, rb, _, rd, e, _ = b.transform
        if rb or rd or abs(abs(e) - abs(a)) > 0.01 * abs(a):
            raise HiresError(f"{p}: band {b.name} has rotated or non-square pixels ({abs(a):g} x {abs(e):g} m)")
        if b.name in TEN_M and abs(b.resolution - 10) > 0.1:
            raise HiresError(f"{p}: band {b.name} has {b.resolution:g} m pixels: the 10 m bands "
                             f"({', '.join(TEN_M)}) must be at 10 m")
        if not any(abs(b.resolution - r) <= 0.01 * r for r in (10, 20, 60)):
            raise HiresError(f"{p}: band {b.name} has {b.resolution:g} m pixels: Sentinel-2 bands are 10, 20 or "
                             f"60 m (resampled bands are not a product)")
    if len(crss) > 1:
        raise HiresError(f"{p}: bands in {len(crss)} different CRSs ("
                         + "; ".join(f"{_crs_name(c)}: {', '.join(n)}" for c, n in crss.items()) + ")")
    ref = _bounds(bands["B02"])
    for b in bands.values():
        off = max(abs(x - y) for x, y in zip(_bounds(b), ref))
        if off > SAME_AREA_M:
            raise HiresError(f"{p}: band {b.name} covers another area than B02 (edges up to {off:g} m apart, more "
                             f"than {SAME_AREA_M:g} m): bands of different products or crops?")


def _bounds(b: BandFile) -> tuple[float, float, float, float]:
    a, _, c, _, e, f = b.transform
    xs, ys = (c, c + a * b.shape[1]), (f, f + e * b.shape[0])
    return min(xs), min(ys), max(xs), max(ys)


def _crs_name(wkt: str) -> str:
    from rasterio.crs import CRS
    from rasterio.errors import CRSError

    try:
        return CRS.from_wkt(wkt).to_string() if wkt else "no CRS"
    except CRSError:
        return one_line(wkt)[:40]


def _product(p: Path, kind: str, bands: dict[str, BandFile], level, baseline, quantification, offsets,
             provenance) -> S2Product:
    return S2Product(path=str(p), kind=kind, level=level, baseline=baseline, quantification=quantification,
                     offsets={b: float(offsets.get(b, 0.0)) for b in bands}, bands=bands, provenance=provenance)
