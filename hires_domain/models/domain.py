"""Input-domain guard: does an input look like what a trained model was trained on?

A trained model's JSON holds ``input_domain`` (written by ``hires train --export`` and by
``datasets/input_domain.py``, both through ``from_dataset``): statistics of the **LR inputs of
the training split**, in their own physical units (DN for rasters, HU for CT), valid pixels only:

``{"domain", "modality", "units", "bands", "clip", "pixels", "percentiles": {"p1", "p50", "p99"}
(one value per band), "min", "max", "spacing": {"units", "lr": [lo, hi], "native": [lo, hi]},
"source"}``. ``spacing.lr`` is the pixel size of the inputs the network saw (40 m for
``s2-sr-x4``), ``spacing.native`` the grid of the data they were made from (10 m), i.e. the
resolution the model is meant to be applied to.

``check(image, info, name)`` samples the input cheaply (``sample``: at most ``MAX_PIXELS`` per
band from up to 8 slices; in-memory arrays decimated, lazy rasters read as a grid of 64 px
windows only, never whole) and returns ONE line naming what differs, or None. Each rule is
meant to fire only when the input is clearly elsewhere. Checked on the Sentinel-2 scene the
model came from: no window of 128 px or more fires, about 0.25 % of 32–64 px windows do (dark
water in B08, a bright field); no train or val item of the three shipped datasets fires.

- **modality**: the input names a modality (DICOM Modality) other than the training one (MR
  given to a CT model).
- **bands** (rasters): the input's band descriptions name other bands than the training ones,
  or the same bands in another order. Names are compared case-blind with leading zeros
  dropped (``B2`` = ``B02``), also as a word of a longer description; missing descriptions
  (``band 3``) are not compared.
- **spacing**: an in-plane pixel size outside ``[min(native, lr) / 2, max(native, lr) × 2]``,
  i.e. more than 2× off every resolution the model was trained between (rasters: metres, only
  when the CRS is projected; medical: mm).
- **range**: in some band more than 5 % of the sampled valid pixels lie outside the training
  [min, max]. HU inputs are first clipped to the model's clip (−1024..3071), as the network
  sees them, so padding far below air does not count.
- **level**: in every band the input's p99 is more than 1.5× the training p99, or below the
  training p1 (scaled or offset data: reflectance 0–1 instead of DN, 8-bit, another sensor's
  DN). Ratios are taken from the physical zero: DN 0, HU −1000 (air, μ = 0), so for CT they are
  attenuation ratios. "Every band" keeps a bright roof in one band from firing.

Baselines have no ``input_domain`` and are never checked. This module is Qt-free and knows
nothing about the pipeline: ``pipeline.check_domain`` turns the line into a warning, or into a
refusal with ``strict``.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np

MAX_PIXELS = 1 << 17  # sampled pixels per band, at most
WINDOW = 64  # side of the sampled windows (input pixels)
MAX_SLICES = 8  # sampled slices of a volume
OUTSIDE_FRACTION = 0.05  # range rule
LEVEL_RATIO = 1.5  # level rule (p99 above this × the training p99)
SPACING_FACTOR = 2.0  # spacing rule
ZERO = {"HU": -1000.0}  # physical zero of the level ratios (default 0: DN)
PERCENTILES = (1, 50, 99)


# ---------------------------------------------------------------- training statistics


def _stats(values: np.ndarray) -> dict:
    """Per-band percentiles/min/max of ``(C, N)`` values, rounded to 0.01."""
    pct = np.percentile(values, PERCENTILES, axis=1)
    r = lambda a: [round(float(v), 2) for v in a]  # noqa: E731
    return {"pixels": int(values.shape[1]),
            "percentiles": {f"p{p}": r(row) for p, row in zip(PERCENTILES, pct)},
            "min": r(values.min(axis=1)), "max": r(values.max(axis=1))}


def _crs_metres(crs) -> float | None:
    """Metres per CRS unit of a projected CRS (None: no CRS, geographic or unknown)."""
    if not crs:
        return None
    try:
        from rasterio.crs import CRS

        c = CRS.from_user_input(crs)
        if not c.is_projected:
            return None
        return float(c.linear_units_factor[1])
    except Exception:  # a CRS rasterio cannot parse: no spacing rule
        return None


def _raster_spacing(path: str) -> list[float]:
    """Pixel sizes (x, y) in metres of a raster file; [] when unknown."""
    import rasterio

    try:
        with rasterio.open(path) as ds:
            m = _crs_metres(ds.crs)
            return [] if m is None else [abs(float(r)) * m for r in ds.res]
    except Exception:  # the source is not on this machine any more: no spacing recorded
        return []


def _span(values) -> list[float] | None:
    values = [v for v in values if v is not None]
    return [round(min(values), 4), round(max(values), 4)] if values else None


def _training_spacing(manifest: dict, records: list[dict]) -> dict | None:
    """``{"units", "lr", "native"}`` of the training items (see the module docstring)."""
    scale = int(manifest.get("scale", 1))
    if manifest["domain"] == "satellite":
        inputs = {json.dumps(r["input"], sort_keys=True): r["input"] for r in records}
        native = [v for i in inputs.values()
                  for v in _raster_spacing(next(iter(i.values())) if isinstance(i, dict) else i)]
        units = "m"
    else:
        # real HU sources only: a texture source mapped onto HU (to_range) has no CT pixel size
        real = [r for r in records if r["params"].get("map_linear") is None] or records
        native = [v for r in real for v in r["params"].get("pixel_mm", [])]
        units = "mm"
    lo_hi = _span(native)
    if lo_hi is None:
        return None
    return {"units": units, "lr": [round(v * scale, 4) for v in lo_hi], "native": lo_hi}


def from_dataset(dataset_dir, manifest: dict | None = None) -> dict:
    """The ``input_domain`` block of a model trained on the prepared dataset ``dataset_dir``:
    statistics of the LR inputs of its ``train`` split (valid pixels: ``lr_valid``)."""
    from ..train.dataset import dataset_domain, load_split

    root = Path(dataset_dir)
    manifest = manifest or json.loads((root / "manifest.json").read_text())
    samples = load_split(root, manifest, "train")
    values = np.concatenate([s.lr[:, s.lr_valid] for s in samples], axis=1).astype(np.float64)
    records = [r for r in manifest["items"] if r["split"] == "train"]
    units = manifest.get("units", "")
    hint = manifest.get("normalisation", {})
    return {
        "source": f"LR inputs of the train split of dataset '{manifest['name']}' ({len(samples)} items), "
                  "valid pixels",
        "domain": dataset_domain(manifest),
        "modality": "CT" if units == "HU" else None,
        "units": units,
        "bands": list(manifest["bands"]),
        "clip": list(hint["suggested_clip"]) if units == "HU" and hint.get("suggested_clip") else None,
        **_stats(values),
        "spacing": _training_spacing(manifest, records),
    }


# ---------------------------------------------------------------- sampling an input


def _centres(n: int, size: int, count: int) -> list[int]:
    """Starts of ``count`` windows of ``size`` centred in equal cells of ``[0, n)``."""
    return sorted({min(max(int(round((i + 0.5) * n / count - size / 2)), 0), n - size) for i in range(count)})


def sample(image, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Valid pixels ``(C, N)`` of a bounded sample of ``image`` (N ≤ ``max_pixels``): up to
    ``MAX_SLICES`` evenly spaced slices of a volume; per slice, an in-memory array is decimated
    (every k-th pixel along both axes), a lazy source (a raster of any size) is read as a grid of
    ``WINDOW`` px windows only (or whole when the plane is small)."""
    from ..tiling import valid_mask

    data = image.data
    *lead, h, w = image.spatial_shape
    n_lead = int(np.prod(lead)) if lead else 1
    picks = _centres(n_lead, 1, min(MAX_SLICES, n_lead))
    budget = max(1, max_pixels // len(picks))
    parts = []
    for k in picks:
        idx = tuple(slice(int(i), int(i) + 1) for i in np.unravel_index(k, lead)) if lead else ()
        if isinstance(data, np.ndarray):
            step = max(1, math.ceil(math.sqrt(h * w / budget)))
            pix = np.asarray(data[(slice(None), *idx, slice(None, None, step), slice(None, None, step))], np.float32)
            ok = valid_mask(pix, image.nodata)
            parts.append(pix.reshape(pix.shape[0], -1)[:, ok.reshape(-1)])
            continue
        if h * w <= budget:
            windows = [(slice(0, h), slice(0, w))]
        else:
            wy, wx = min(WINDOW, h), min(WINDOW, w)
            g = max(1, math.isqrt(budget // (wy * wx)))
            windows = [(slice(y, y + wy), slice(x, x + wx)) for y in _centres(h, wy, g) for x in _centres(w, wx, g)]
        for win in windows:
            pix, ok = data.read((*idx, *win))
            parts.append(pix.reshape(pix.shape[0], -1)[:, ok.reshape(-1)])
    return np.concatenate(parts, axis=1) if parts else np.zeros((image.channels, 0), np.float32)


# ---------------------------------------------------------------- the rules


def _norm(name: str) -> str:
    return re.sub(r"(?<![0-9])0+(?=[0-9])", "", re.sub(r"[^a-z0-9]", "", name.lower()))


def _same_band(description: str, trained: str) -> bool:
    words = {_norm(w) for w in re.split(r"[^A-Za-z0-9]+", description) if w}
    return _norm(description) == _norm(trained) or _norm(trained) in words


def _band_rule(image, trained: list[str]) -> str | None:
    names = list(image.band_names)
    if len(names) != len(trained):
        return None
    known = [i for i, n in enumerate(names) if n and not re.fullmatch(r"band \d+", n)]
    wrong = [i for i in known if not _same_band(names[i], trained[i])]
    if not wrong:
        return None
    if all(any(_same_band(names[i], t) for t in trained) for i in known):
        return f"bands in another order ({', '.join(names[i] for i in known)}; trained on {', '.join(trained)})"
    pairs = ", ".join(f"{names[i]} where it expects {trained[i]}" for i in wrong)
    return f"band descriptions name other bands ({pairs})"


def _spacing_rule(image, sp: dict | None) -> str | None:
    if not sp:
        return None
    if image.kind == "raster":
        m = _crs_metres(image.crs)
        if m is None or sp.get("units") != "m":
            return None
    else:
        m = 1.0
        if sp.get("units") != "mm":
            return None
    pixel = np.asarray(image.spacing, float)[-2:] * m
    lo = min(sp["native"][0], sp["lr"][0]) / SPACING_FACTOR
    hi = max(sp["native"][1], sp["lr"][1]) * SPACING_FACTOR
    if np.all((pixel >= lo * (1 - 1e-6)) & (pixel <= hi * (1 + 1e-6))):
        return None
    u = sp["units"]
    got = "x".join(f"{v:g}" for v in np.unique(np.round(pixel, 3)))
    span = lambda a: f"{a[0]:g}" if a[0] == a[1] else f"{a[0]:g}-{a[1]:g}"  # noqa: E731
    return (f"pixel spacing {got} {u} is more than {SPACING_FACTOR:g}x off the training data "
            f"({span(sp['native'])} {u} data, {span(sp['lr'])} {u} inputs)")


def _label(b: int, bands: list[str]) -> str:
    """Band ``b`` as the input's position plus the training band name: 'band 1 (B02)'."""
    return f"band {b + 1}" + (f" ({bands[b]})" if b < len(bands) and len(bands) > 1 else "")


def _value_rules(values: np.ndarray, info: dict) -> list[str]:
    if values.shape[1] == 0:
        return []
    out = []
    units, bands = info.get("units", ""), list(info.get("bands", []))
    if info.get("clip"):
        values = np.clip(values, *info["clip"])
    lo, hi = np.asarray(info["min"], float), np.asarray(info["max"], float)
    outside = ((values < lo[:, None]) | (values > hi[:, None])).mean(axis=1)
    b = int(np.argmax(outside))
    if outside[b] > OUTSIDE_FRACTION:
        out.append(f"{outside[b]:.0%} of pixels in {_label(b, bands)} outside the training range "
                   f"{lo[b]:g} to {hi[b]:g} {units}".rstrip())
    zero = ZERO.get(units, 0.0)
    p99 = np.percentile(values, 99, axis=1)
    t99, t1 = (np.asarray(info["percentiles"][k], float) for k in ("p99", "p1"))
    ratio = (p99 - zero) / np.maximum(t99 - zero, 1e-12)
    name = _label(0, bands)
    if np.all(ratio > LEVEL_RATIO):
        out.append(f"values {float(ratio.min()):.3g}x the training level or more: p99 {p99[0]:.5g} vs "
                   f"{t99[0]:g} {units} in {name}".replace("  ", " "))
    elif np.all(p99 < t1):
        out.append(f"values far below the training level: p99 {p99[0]:.4g} under the training p1 "
                   f"{t1[0]:g} {units} in {name}".replace("  ", " "))
    return out


def differences(image, info: dict, values: np.ndarray | None = None) -> list[str]:
    """What differs between ``image`` and a model's ``input_domain`` (empty when in domain)."""
    reasons = []
    want, got = info.get("modality"), str(image.meta.get("modality") or "")
    if want and got and got != want:
        reasons.append(f"modality {got}, trained on {want}")
    if image.kind == "raster" and info.get("bands"):
        r = _band_rule(image, list(info["bands"]))
        if r:
            reasons.append(r)
    r = _spacing_rule(image, info.get("spacing"))
    if r:
        reasons.append(r)
    if info.get("percentiles") and image.channels == len(info.get("min", [])):
        reasons += _value_rules(sample(image) if values is None else values, info)
    return reasons


def check(image, info: dict | None, name: str, scale: int = 2) -> str | None:
    """One line saying how ``image`` differs from model ``name``'s training inputs, or None
    (also None when the model records no ``input_domain``, as for every baseline). ``scale``
    1 (a denoiser) compares the result with the input itself rather than with bicubic."""
    if not info:
        return None
    reasons = differences(image, info)
    if not reasons:
        return None
    return (f"input unlike what model '{name}' was trained on: {'; '.join(reasons)}; "
            f"the result may be worse than {'the input itself' if scale == 1 else 'bicubic'}")
