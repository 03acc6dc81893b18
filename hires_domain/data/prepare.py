"""``hires prepare``: a recipe → HR/LR training pairs on disk, as pure per-item steps.

``plan(recipe)`` lists the items (cheap: headers and slice counts), ``process(item, recipe)``
makes one item's arrays (reading only what it needs: a raster window with its blur halo, or
one slice), ``write_item`` stores them. ``prepare`` runs the three serially into a temporary
directory beside the output and writes ``manifest.json`` last, so a dataset is either
complete or absent. The on-disk format is described in docs/datasets.md.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from .. import __version__
from ..errors import HiresError
from ..io.common import atomic_output, check_output
from ..tiling import fill_invalid
from . import degradations as deg
from .recipes import DoseRecipe, MedicalRecipe, SatelliteRecipe, fail, load_recipe

FORMAT_VERSION = 1
AIR_HU = -1000.0


@dataclass(frozen=True)
class Item:
    """One output sample: which input, where in it, which split, and its degradation parameters
    (``params['seed']`` seeds its noise). Everything ``process`` needs besides the recipe."""

    id: str
    source: str  # the recipe source's label
    input: str | dict  # file/directory, or {band: file} for per-band rasters
    location: dict  # {'rows': [r0, r1], 'cols': [c0, c1]} or {'slice': z}
    split: str  # 'train' | 'val'
    params: dict = field(default_factory=dict)


def item_seed(recipe_seed: int, item_id: str) -> int:
    """The item's noise seed: a hash of the recipe seed and the item id (order-independent)."""
    return int.from_bytes(hashlib.sha256(f"{recipe_seed}/{item_id}".encode()).digest()[:8], "little")


def param_rng(seed: int) -> np.random.Generator:
    """The generator an item's degradation parameters (PSF, decimation, dose) are drawn from:
    a stream of its seed separate from the one its noise comes from."""
    return np.random.default_rng([seed, 1])


def _stem(label: str) -> str:
    name = Path(label.split(":", 1)[-1].replace("{band}", "")).name
    name = re.sub(r"(\.nii)?\.gz$|\.[A-Za-z0-9]+$", "", name)
    return re.sub(r"[^A-Za-z0-9-]+", "_", name).strip("_") or "src"


# ---------------------------------------------------------------- satellite


def _raster_sources(inp):
    from ..io.raster import RasterSource

    files = inp if isinstance(inp, dict) else {"": inp}
    return {band: RasterSource(path) for band, path in files.items()}


def _raster_info(recipe: SatelliteRecipe, inp, field_name: str) -> dict:
    """Grid size, band indices (1-based, per file) and reflectance scale/offset of one input."""
    import rasterio

    sources = _raster_sources(inp)
    shapes = {s.shape[1:] for s in sources.values()}
    if len(shapes) > 1:
        raise fail(recipe._path, field_name, f"band files have different grids {sorted(shapes)}")
    if isinstance(inp, dict):
        indices = [1] * len(inp)
        names = list(inp)
        paths = list(inp.values())
    else:
        with rasterio.open(inp) as ds:
            descriptions = [d or "" for d in ds.descriptions]
        wanted = recipe.bands or list(range(1, len(descriptions) + 1))
        indices = []
        for b in wanted:
            if isinstance(b, int):
                ok = 1 <= b <= len(descriptions)
                indices.append(b)
            else:
                ok = b in descriptions
                indices.append(descriptions.index(b) + 1 if ok else 0)
            if not ok:
                raise fail(recipe._path, "bands", f"band {b!r} not in {inp} (bands: {descriptions})")
        names = [descriptions[i - 1] or f"band {i}" for i in indices]
        paths = [inp] * len(indices)
    scales, offsets = [], []
    for path, i in zip(paths, indices):
        with rasterio.open(path) as ds:
            scales.append(ds.scales[i - 1])
            offsets.append(ds.offsets[i - 1])
            nodata = ds.nodata
    if recipe.reflectance is not None:
        scales, offsets = [recipe.reflectance.scale] * len(names), [recipe.reflectance.offset] * len(names)
    return {"shape": shapes.pop(), "indices": indices, "bands": names, "scales": scales, "offsets": offsets,
            "nodata": nodata}


def _spread(n_items: int, n_max: int | None) -> list[int]:
    """Evenly spaced subset (deterministic) of ``n_items`` when more than ``n_max``."""
    if n_max is None or n_items <= n_max:
        return list(range(n_items))
    return sorted(set(np.linspace(0, n_items - 1, n_max).round().astype(int).tolist()))


def _halo(recipe: SatelliteRecipe) -> int:
    """HR pixels of context each patch reads around itself (blur support, rounded up to the scale)."""
    d = recipe.degradation
    s = deg.support(deg.sigma_for_mtf(_lowest(d.mtf_nyquist), d.scale))
    return -(-s // d.scale) * d.scale


def _lowest(spec) -> float:
    return spec[0] if isinstance(spec, tuple) else spec


def _draw(spec, rng: np.random.Generator):
    """A recipe parameter for one item: the value itself, uniform over a ``(lo, hi)`` range, or
    one of a list's entries."""
    if isinstance(spec, tuple):
        return float(rng.uniform(*spec))
    if isinstance(spec, list):
        return spec[int(rng.integers(len(spec)))]
    return spec


def _log_uniform(spec: tuple[float, float], rng: np.random.Generator) -> float:
    """A value drawn log-uniformly over ``(lo, hi)`` (photon counts, ratios)."""
    return float(math.exp(rng.uniform(math.log(spec[0]), math.log(spec[1]))))


def _variant_ids(prefix: str, split: str, variants: int) -> list[str]:
    """Item ids of one location: ``variants`` LR versions for training, one for validation."""
    return [prefix] if split == "val" or variants == 1 else [f"{prefix}-v{k}" for k in range(variants)]


def _plan_satellite(recipe: SatelliteRecipe) -> list[Item]:
    d, p = recipe.degradation, recipe.patches
    size, stride, halo = p.size, p.stride or p.size, _halo(recipe)
    items = {"train": [], "val": []}
    for i, src in enumerate(recipe.sources):
        for j, inp in enumerate(recipe.files(src.label)):
            info = _raster_info(recipe, inp, f"sources[{i}]")
            h, w = info["shape"]
            if size > h or size > w:
                raise fail(recipe._path, "patches.size", f"patch {size} is bigger than the image {h}x{w} of {inp}")
            fr = recipe.split.holdout
            hold_r = (round(fr.rows[0] * h), round(fr.rows[1] * h))
            hold_c = (round(fr.cols[0] * w), round(fr.cols[1] * w))
            stem = f"{i}-{_stem(src.label)}" + (f"-{j}" if j else "")
            for r0 in range(0, h - size + 1, stride):
                for c0 in range(0, w - size + 1, stride):
                    split = _region_split((r0, r0 + size), (c0, c0 + size), hold_r, hold_c, halo, (h, w))
                    if split is None:
                        continue
                    for iid in _variant_ids(f"{stem}-r{r0}-c{c0}", split, d.variants):
                        seed = item_seed(recipe.seed, iid)
                        draw = param_rng(seed)
                        mtf, decimation = _draw(d.mtf_nyquist, draw), _draw(d.decimation, draw)
                        params = {"scale": d.scale, "mtf_nyquist": mtf, "sigma_px": deg.sigma_for_mtf(mtf, d.scale),
                                  "halo": halo, "decimation": decimation, "sigma_add": d.noise.sigma_add,
                                  "sigma_signal": d.noise.sigma_signal, "quantise": d.quantise,
                                  "band_indices": info["indices"], "bands": info["bands"],
                                  "reflectance_scale": info["scales"], "reflectance_offset": info["offsets"],
                                  "nodata": info["nodata"], "image_shape": [h, w],
                                  "holdout": {"rows": list(hold_r), "cols": list(hold_c)}, "seed": seed}
                        items[split].append(Item(iid, src.label, inp, {"rows": [r0, r0 + size],
                                                                       "cols": [c0, c0 + size]}, split, params))
    return [it for split in ("train", "val") for k, it in enumerate(items[split])
            if k in set(_spread(len(items[split]), p.max_per_split))]


def _region_split(rows, cols, hold_r, hold_c, halo, shape) -> str | None:
    """'val' inside the hold-out box; 'train' when the patch plus its halo (what it reads)
    stays clear of the box; None (dropped) otherwise."""
    def overlap(a, b):
        return a[0] < b[1] and b[0] < a[1]

    if hold_r[0] <= rows[0] and rows[1] <= hold_r[1] and hold_c[0] <= cols[0] and cols[1] <= hold_c[1]:
        return "val"
    read_r = (max(rows[0] - halo, 0), min(rows[1] + halo, shape[0]))
    read_c = (max(cols[0] - halo, 0), min(cols[1] + halo, shape[1]))
    return None if overlap(read_r, hold_r) and overlap(read_c, hold_c) else "train"


def _process_satellite(item: Item, recipe: SatelliteRecipe) -> dict | None:
    p = item.params
    s, halo = p["scale"], p["halo"]
    h, w = p["image_shape"]
    (r0, r1), (c0, c1) = item.location["rows"], item.location["cols"]
    rr0, cc0 = max(r0 - halo, 0), max(c0 - halo, 0)
    rr1 = rr0 + (min(r1 + halo, h) - rr0) // s * s
    cc1 = cc0 + (min(c1 + halo, w) - cc0) // s * s
    region = (slice(rr0, rr1), slice(cc0, cc1))
    parts, valid = [], np.ones((rr1 - rr0, cc1 - cc0), bool)
    for src in _raster_sources(item.input).values():
        with src:
            data, ok = src.read(region)
        parts.append(data)
        valid &= ok
    # per-band files: band 1 of each; one multi-band file: its selected bands
    window = np.concatenate(parts)[np.asarray(p["band_indices"]) - 1] if len(parts) == 1 else np.concatenate(parts)
    crop = (slice(r0 - rr0, r1 - rr0), slice(c0 - cc0, c1 - cc0))
    if valid[crop].mean() < recipe.patches.min_valid:
        return None
    filled = fill_invalid(window, valid)
    lr = deg.satellite_lr(filled, s, p["mtf_nyquist"], np.random.default_rng(p["seed"]), p["sigma_add"],
                          p["sigma_signal"], p["quantise"], p["decimation"])
    lr_crop = (slice((r0 - rr0) // s, (r1 - rr0) // s), slice((c0 - cc0) // s, (c1 - cc0) // s))
    lr_valid = _lr_valid(valid, s, deg.support(p["sigma_px"]))
    return {"hr": filled[(slice(None), *crop)], "lr": lr[(slice(None), *lr_crop)],
            "valid": valid[crop], "lr_valid": lr_valid[lr_crop]}


def _lr_valid(valid: np.ndarray, scale: int, radius: int) -> np.ndarray:
    """LR pixels whose whole support (block plus blur radius) is valid HR."""
    if valid.all():
        return np.ones((valid.shape[0] // scale, valid.shape[1] // scale), bool)
    eroded = ndimage.minimum_filter(valid, size=2 * radius + 1, mode="nearest") if radius else valid
    return deg.decimate(eroded.astype(np.float32), scale, "area") == 1.0


# ---------------------------------------------------------------- medical


@functools.lru_cache(maxsize=4)
def _volume(path: str, series: str | None) -> tuple[np.ndarray, tuple[float, float], str]:
    """(slices, rows, cols) float32, (row, col) pixel spacing in mm, units ('HU' or '')."""
    from ..io import read

    try:
        image = read(path, series=series)
    except HiresError as e:
        if "no image plane geometry" not in str(e):
            raise
        return _plain_dicom(path)
    data = image.array()[0]
    if data.ndim == 2:
        data = data[None]
    spacing = image.spacing
    return data, (float(spacing[-2]), float(spacing[-1])), "HU" if image.units == "HU" else image.units


def _plain_dicom(path: str):
    """A DICOM image without patient geometry (projection radiographs): rescaled pixels,
    MONOCHROME1 inverted so that dense is bright; spacing from (Imager)PixelSpacing, else 1 mm."""
    import pydicom
    from pydicom.pixels import apply_rescale

    ds = pydicom.dcmread(path)
    data = apply_rescale(ds.pixel_array, ds).astype(np.float32)
    if ds.get("PhotometricInterpretation") == "MONOCHROME1":
        data = data.max() + data.min() - data
    if data.ndim == 2:
        data = data[None]
    spacing = ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing")
    pixel = tuple(float(v) for v in spacing) if spacing and all(float(v) > 0 for v in spacing) else (1.0, 1.0)
    return data, pixel, ""


def _block_split(z: int, n: int, blocks) -> str | None:
    """Slice-block split with ``gap`` slices dropped either side of a train/val boundary."""
    def split_of(k):
        return "val" if (k // blocks.size) % blocks.val_every == blocks.val_every - 1 else "train"

    own = split_of(z)
    near = range(max(z - blocks.gap, 0), min(z + blocks.gap + 1, n))
    return own if all(split_of(k) == own for k in near) else None


def _plan_medical(recipe: MedicalRecipe | DoseRecipe) -> list[Item]:
    items = []
    for i, src in enumerate(recipe.sources):
        for j, inp in enumerate(recipe.files(src.label)):
            volume, pixel_mm, units = _volume(inp, src.series)
            if src.units == "HU":
                units = "HU"
            if units != "HU" and src.to_range is None:
                raise fail(recipe._path, f"sources[{i}]", f"{src.label} is not in HU (units '{units}'): add "
                                                          "'units: HU' or 'to_range: [lo, hi]'")
            mapping = None
            if src.to_range is not None:
                lo, hi = np.percentile(volume, [0.5, 99.5])
                a = (src.to_range[1] - src.to_range[0]) / max(float(hi - lo), 1e-6)
                mapping = [a, src.to_range[0] - a * float(lo)]
            base = {"pixel_mm": list(pixel_mm), "map_linear": mapping,
                    "hu_floor": recipe.hu_floor if mapping is None else None}
            stem = f"{i}-{_stem(src.label)}" + (f"-{j}" if j else "")
            n = volume.shape[0]
            for z in range(n):
                split = src.split if src.split != "blocks" else _block_split(z, n, recipe.split)
                if split is not None:
                    items += _slice_items(recipe, src, inp, f"{stem}-z{z}", z, split, base)
    return items


def _slice_items(recipe, src, inp, prefix, z, split, base) -> list[Item]:
    d, label = recipe.degradation, src.label
    if isinstance(recipe, MedicalRecipe):
        out = []
        for iid in _variant_ids(prefix, split, d.variants):
            seed = item_seed(recipe.seed, iid)
            draw = param_rng(seed)
            fwhm = _draw(d.fwhm_mm, draw) if d.fwhm_mm is not None else \
                _draw(d.fwhm_lr_pixels, draw) * d.scale * min(base["pixel_mm"])
            params = {**base, "scale": d.scale, "fwhm_mm": fwhm, "decimation": _draw(d.decimation, draw),
                      "seed": seed}
            out.append(Item(iid, label, inp, {"slice": z}, split, params))
        return out
    out = []
    if split == "val":
        protocols = [(p.name, p.model_dump(exclude={"name"})) for p in d.val_protocols]
    else:  # training: one protocol per acquisition, drawn from the item's seed
        protocols = [(f"t{k}", None) for k in range(src.acquisitions or d.per_slice)]
    for tag, proto in protocols:
        iid = f"{prefix}-{tag}"
        seed = item_seed(recipe.seed, iid)
        if proto is None:
            draw = param_rng(seed)
            proto = {"photons": _log_uniform(d.photons, draw),
                     "n_angles": int(_draw(list(d.n_angles), draw)), "filter": _draw(list(d.filter), draw),
                     "electronic_sigma": _draw(tuple(d.electronic_sigma), draw)}
            if d.binning != [1]:
                proto["binning"] = int(_draw(list(d.binning), draw))
            sn = d.scanner_noise
            if sn is not None and draw.uniform() < sn.fraction:
                proto["scanner_photons"] = _log_uniform(sn.photons, draw)
                proto["scanner_filter"] = _draw(list(d.filter), draw)
                if sn.anisotropy != (1.0, 1.0):
                    proto["scanner_anisotropy"] = _log_uniform(sn.anisotropy, draw)
                    proto["scanner_angle"] = float(draw.uniform(0.0, 180.0))
            if d.mild is not None and draw.uniform() < d.mild.fraction:
                proto["photons"] = _log_uniform(d.mild.photons, draw)
        out.append(Item(iid, label, inp, {"slice": z}, split, {**base, "scale": 1, **proto, "seed": seed}))
    return out


def _process_medical(item: Item, recipe) -> dict:
    p = item.params
    src = next(s for s in recipe.sources if s.label == item.source)
    volume, _, _ = _volume(item.input, src.series)
    img = volume[item.location["slice"]].astype(np.float64)
    s = p["scale"]
    img = img[: img.shape[0] // s * s, : img.shape[1] // s * s]
    if p["map_linear"] is not None:
        img = p["map_linear"][0] * img + p["map_linear"][1]
    valid = np.isfinite(img)
    if p["hu_floor"] is not None:
        valid &= img >= p["hu_floor"]
    hr = np.where(valid, img, AIR_HU if p["hu_floor"] is not None else fill_invalid(img[None], valid)[0])
    if "photons" in p:
        b = p.get("binning", 1)
        if b > 1:
            hr, valid = _bin(hr, valid, b)
            p = {**p, "pixel_mm": [v * b for v in p["pixel_mm"]]}
        hr, lr = _low_dose(hr, p, (item.input, item.location["slice"], tuple(p["pixel_mm"])))
        lr_valid = valid
    else:
        lr = deg.inplane_lr(hr, s, p["fwhm_mm"], p["pixel_mm"], p["decimation"])
        sigma = p["fwhm_mm"] / deg.FWHM_PER_SIGMA / min(p["pixel_mm"])
        lr_valid = _lr_valid(valid, s, deg.support(sigma))
    return {"hr": hr[None], "lr": lr[None], "valid": valid, "lr_valid": lr_valid}


def _bin(hu: np.ndarray, valid: np.ndarray, b: int) -> tuple[np.ndarray, np.ndarray]:
    """Area-average ``b`` x ``b`` pixel blocks (a coarser acquisition grid); a block is valid when
    all its pixels are."""
    h, w = hu.shape[0] // b * b, hu.shape[1] // b * b
    blocks = hu[:h, :w].reshape(h // b, b, w // b, b)
    return blocks.mean(axis=(1, 3)), valid[:h, :w].reshape(h // b, b, w // b, b).all(axis=(1, 3))


def _low_dose(hu: np.ndarray, p: dict, key: tuple) -> tuple[np.ndarray, np.ndarray]:
    """(noise-free, low-dose) reconstructions of one protocol, simulated on the slice padded to a
    square with air and cropped back. ``key`` names the slice and its grid (input, slice, pixel
    size): sinograms and noise-free reconstructions are cached per process for the current slice
    (items come slice by slice and share them)."""
    h, w = hu.shape
    n = max(h, w)
    pixel = float(np.mean(p["pixel_mm"]))
    if _CT_CACHE.get("slice") != key[:2]:  # a new slice: forget the last one's grids
        _CT_CACHE.clear()
        _CT_CACHE["slice"] = key[:2]
    cache = _CT_CACHE.setdefault(key, {})  # one entry per grid (binning) of this slice
    if "square" not in cache:
        cache["square"] = np.full((n, n), AIR_HU)
        cache["square"][:h, :w] = hu
    sino = cache.get(("sino", p["n_angles"]))
    if sino is None:
        sino = cache[("sino", p["n_angles"])] = deg.ct_sinogram(cache["square"], pixel, p["n_angles"])
    clean_key = ("clean", p["n_angles"], p["filter"])
    if clean_key not in cache:
        cache[clean_key] = deg.ct_reconstruct(sino, pixel, n, p["filter"])
    clean = cache[clean_key]
    if "scanner_photons" in p:  # the slice as a scanner left it: its own noise, then this acquisition
        own_key = ("clean", p["n_angles"], p["scanner_filter"])
        if own_key not in cache:
            cache[own_key] = deg.ct_reconstruct(sino, pixel, n, p["scanner_filter"])
        own = deg.ct_counts(sino, _scanner_photons(p, sino.shape[1]), np.random.default_rng([p["seed"], 1]))
        own = deg.ct_reconstruct(own, pixel, n, p["scanner_filter"]) - cache[own_key]
        sino = deg.ct_sinogram(cache["square"] + own, pixel, p["n_angles"])
        clean = deg.ct_reconstruct(sino, pixel, n, p["filter"])
    noisy = deg.ct_counts(sino, p["photons"], np.random.default_rng(p["seed"]), p["electronic_sigma"])
    noisy = deg.ct_reconstruct(noisy, pixel, n, p["filter"])
    return clean[:h, :w], noisy[:h, :w]


_CT_CACHE: dict = {}


def _scanner_photons(p: dict, n_angles: int):
    """The scanner's photons per detector bin: one number, or per view angle when anisotropic
    (geometric mean ``scanner_photons``, most over fewest ``scanner_anisotropy``, most along
    ``scanner_angle``)."""
    if "scanner_anisotropy" not in p:
        return p["scanner_photons"]
    theta = np.deg2rad(deg.ct_angles(n_angles) - p["scanner_angle"])
    return p["scanner_photons"] * p["scanner_anisotropy"] ** (0.5 * np.cos(2.0 * theta))


# ---------------------------------------------------------------- driver


def plan(recipe) -> list[Item]:
    """All items of a loaded recipe, train first; refuses a plan with an empty split."""
    items = _plan_satellite(recipe) if isinstance(recipe, SatelliteRecipe) else _plan_medical(recipe)
    for split in ("train", "val"):
        if not any(it.split == split for it in items):
            raise fail(recipe._path, "split", f"selects no {split} items")
    return items


def process(item: Item, recipe) -> dict | None:
    """``{'hr', 'lr', 'valid', 'lr_valid'}`` for one item (float32/bool), or None when the item's
    valid fraction is below ``patches.min_valid``."""
    arrays = _process_satellite(item, recipe) if isinstance(recipe, SatelliteRecipe) else _process_medical(item, recipe)
    if arrays is None:
        return None
    return {k: v.astype(bool if k.endswith("valid") else np.float32) for k, v in arrays.items()}


def write_item(out_dir: Path, item: Item, arrays: dict) -> str:
    """Store an item as ``{split}/{id}.npz``; returns that path relative to ``out_dir``. The
    same arrays give the same bytes (fixed zip timestamps), whichever process writes them."""
    import zipfile

    rel = f"{item.split}/{item.id}.npz"
    path = Path(out_dir) / rel
    path.parent.mkdir(exist_ok=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:  # what np.savez writes, minus the clock
        for key, value in arrays.items():
            with z.open(zipfile.ZipInfo(f"{key}.npy", ZIP_EPOCH), "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.asanyarray(value), allow_pickle=False)
    return rel


ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


def make_item(item: Item, recipe, out_dir: Path) -> dict | None:
    """``process`` and ``write_item`` for one item: its manifest record, or None when skipped."""
    arrays = process(item, recipe)
    if arrays is None:
        return None
    return {**asdict(item), "file": write_item(out_dir, item, arrays),
            "hr_shape": list(arrays["hr"].shape), "lr_shape": list(arrays["lr"].shape)}


def _serial(fn, items, progress=None):
    for k, item in enumerate(items):
        yield fn(item)
        if progress:
            progress(k + 1, len(items))


def _normalisation(recipe, items: list[Item]) -> dict:
    if isinstance(recipe, SatelliteRecipe):
        p = items[0].params
        return {"units": "DN", "bands": p["bands"], "reflectance_scale": p["reflectance_scale"],
                "reflectance_offset": p["reflectance_offset"], "nodata": p["nodata"],
                "note": "reflectance = DN * scale + offset; values outside [0, 1] are kept"}
    return {"units": "HU", "air": AIR_HU, "water": 0.0, "suggested_clip": [-1024.0, 3071.0],
            "note": "invalid pixels (padding, below hu_floor) are set to air and marked in 'valid'"}


def prepare(recipe_path, out_dir, overwrite: bool = False, progress=None, mapper=None) -> dict:
    """Build the dataset of ``recipe_path`` in ``out_dir``; returns the manifest. ``mapper(fn,
    items, progress)`` yields ``fn(item)`` in the order of ``items`` (default: one by one here;
    ``cluster.in_order`` runs them on Dask workers, which write into the shared output)."""
    out_dir = Path(out_dir)
    recipe = load_recipe(recipe_path)
    check_output(out_dir, overwrite)
    items = plan(recipe)
    with atomic_output(out_dir, is_dir=True) as tmp:
        made = list((mapper or _serial)(functools.partial(make_item, recipe=recipe, out_dir=tmp), items, progress))
        records = [r for r in made if r is not None]
        skipped = len(made) - len(records)
        scale = getattr(recipe.degradation, "scale", 1)
        manifest = {
            "format": "hires-dataset", "format_version": FORMAT_VERSION, "name": recipe.name,
            "domain": recipe.domain, "scale": scale,
            "bands": items[0].params["bands"] if isinstance(recipe, SatelliteRecipe) else ["HU"],
            "units": "DN" if isinstance(recipe, SatelliteRecipe) else "HU",
            "normalisation": _normalisation(recipe, items),
            "recipe": recipe.model_dump(mode="json"), "recipe_path": str(recipe_path),
            "sources": {s.label: recipe.files(s.label) for s in recipe.sources},
            "counts": {split: sum(r["split"] == split for r in records) for split in ("train", "val")},
            "skipped": skipped, "items": records,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "hires_domain_version": __version__,
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest
