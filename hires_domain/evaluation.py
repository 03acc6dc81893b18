"""`hires evaluate` and `hires benchmark`: metrics over files, directories and manifests,
with JSON results and a self-contained HTML report. Metrics come from ``metrics`` only."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from . import io
from .errors import HiresError
from .image import Image
from .metrics import evaluate_pair, load_pixels
from .metrics import perceptual
from .pipeline import enhance
from .report import (centre_crop, display_for, error_figure, histogram_figure, metric_table, middle_slice,
                     panels_figure, rgb_bands, upsample_nearest, write_html)

FID_PATCH = 64  # FID and IS of a single pair are computed over patches of this size (stated in the result)
CROP = 192  # output pixels shown per panel


class Perceptual:
    """The ``evaluate_pair`` hook adding LPIPS (per pair), FID and, with ``inception_score``, IS
    (over patches of the pair, or over the whole set when ``collect``); weights are looked up
    offline. IS is asked for explicitly, so without its weights the hook refuses (HiresError)
    when it is made, before any work, instead of reporting it unavailable."""

    def __init__(self, weights_dir=None, collect: bool = False, inception_score: bool = False):
        self.weights_dir, self.collect, self.inception_score = weights_dir, collect, inception_score
        if inception_score:
            perceptual.is_classifier(weights_dir)  # HiresError with the reason when it cannot run
        self.pred, self.ref, self.settings = [], [], None

    def __call__(self, p, r, s) -> dict:
        kind = s["kind"]
        triplet = list(rgb_bands(s["bands"])) if kind == "raster" and len(s["bands"]) > 3 else None
        valid = s.get("valid")
        s = {k: v for k, v in s.items() if k != "valid"} | {"bands": triplet}
        out = perceptual.perceptual_metrics(p, r, s, self.weights_dir, valid=valid)
        if self.collect:
            self.pred.append(p)
            self.ref.append(r)
            self.settings = s
            return out
        return out | self._set_metrics([p], [r], {**s, "patch": FID_PATCH, "stride": FID_PATCH})

    def set_metrics(self) -> dict:
        """FID (and IS) over every pair seen, when ``collect``."""
        return self._set_metrics(self.pred, self.ref, self.settings)

    def _set_metrics(self, pred, ref, settings) -> dict:
        out = perceptual.fid_metric(pred, ref, settings, self.weights_dir)
        if self.inception_score:
            out |= perceptual.is_metric(pred, settings, self.weights_dir, ref_list=ref)
        return out


def _pairs(pred: Path, ref: Path, lr: Path | None) -> list[tuple[str, Path, Path, Path | None]]:
    """(name, pred, ref, lr) for a file pair, or for files with the same name in directories."""
    if pred.is_dir() and _has_files(ref):
        names = sorted(p.name for p in ref.iterdir()  # an unfinished output's temporary is not data
                       if (pred / p.name).exists() and not io.common.is_temporary(Path(p.name)))
        if not names:
            raise HiresError(f"no file names shared by {pred} and {ref}")
        return [(n, pred / n, ref / n, (lr / n) if lr else None) for n in names]
    return [(pred.name, pred, ref, lr)]


def _has_files(ref: Path) -> bool:
    """A directory of images to evaluate one by one (not a DICOM series)."""
    return ref.is_dir() and any(p.suffix.lower() in (".tif", ".tiff", ".gz", ".nii") for p in ref.iterdir())


def _mean(results: list[dict]) -> dict:
    """Per-metric mean of ``value`` (and of ``ref_value``) over items (None values skipped),
    units kept; per-item spreads (``per_band``, IS's ``std``) are left to the items."""
    def mean(entries, field):
        values = [e.get(field) for e in entries if isinstance(e.get(field), (int, float))]
        return (float(np.mean(values)) if values else None), len(values)

    out = {}
    for key in results[0]["metrics"]:
        entries = [r["metrics"][key] for r in results if key in r["metrics"]]
        entry = {k: v for k, v in entries[0].items() if k not in ("value", "per_band", "std")}
        if "ref_value" in entry:
            entry["ref_value"] = mean(entries, "ref_value")[0]
        value, n = mean(entries, "value")
        out[key] = {**entry, "value": value, "n": n}
    return out


def evaluate_paths(pred, ref, lr=None, window=None, bands=None, data_range=None, resample=False,
                   tiling=None, weights_dir=None, baselines=("bicubic",), device="auto",
                   inception_score: bool = False) -> tuple[dict, list]:
    """Evaluate a file pair or two directories; returns (JSON-able result, report figures).

    With ``lr``, each of ``baselines`` is also run on the LR input and evaluated the same way, so
    the prediction's numbers stand next to the reference methods' in one table. ``inception_score``
    adds IS (HiresError at once when its weights are not found offline).
    """
    pairs = _pairs(Path(pred), Path(ref), Path(lr) if lr else None)
    names = ["prediction"] + (list(baselines) if lr else [])
    hooks = {n: Perceptual(weights_dir, collect=len(pairs) > 1, inception_score=inception_score)
             for n in names}
    items = {n: [] for n in names}
    figures = []
    for name, p, r, l_ in pairs:
        R, L = io.read(r), io.read(l_) if l_ else None
        images = {"prediction": io.read(p)}
        for b in names[1:]:
            scale = R.spatial_shape[-1] // L.spatial_shape[-1]
            images[b] = enhance(L, model=b, scale=scale, device=device)
        for n, img in images.items():
            res = evaluate_pair(img, R, L, window=window, bands=bands, data_range=data_range,
                                resample=resample and n == "prediction",
                                tiling=tiling if n == "prediction" else None, perceptual=hooks[n])
            items[n].append({"name": name, **res})
        if len(figures) < 9:
            figures += comparison_figures(name, R, images, L, window, bands)
    first = items["prediction"]
    result = {"pred": str(pred), "ref": str(ref), "lr": str(lr) if lr else None, "settings": first[0]["settings"]}
    if len(pairs) == 1:
        result["metrics"] = first[0]["metrics"]
        result["baselines"] = {n: items[n][0]["metrics"] for n in names[1:]}
        return result, figures
    for n in names:
        mean = _mean(items[n]) | hooks[n].set_metrics()
        if n == "prediction":
            result.update(metrics=mean, items=first)
        else:
            result.setdefault("baselines", {})[n] = mean
    return result, figures


def comparison_figures(name: str, ref: Image, preds: dict[str, Image], lr: Image | None, window, bands) -> list:
    """Side-by-side crops, absolute error maps and histograms, all on the reference's display."""
    r_raw, r_ok = load_pixels(ref)
    arrays = {k: load_pixels(v)[0] for k, v in preds.items()}
    disp = display_for(middle_slice(r_raw), "raster" if ref.kind == "raster" else "medical",
                       ref.band_names, window if window not in (None, "hu") else None, bands)
    panels, factor = [], 1
    if lr is not None:
        l_raw = load_pixels(lr)[0]
        factor = r_raw.shape[-1] // l_raw.shape[-1]
        panels.append(("input (LR)", disp.rgb(upsample_nearest(centre_crop(middle_slice(l_raw), CROP, factor),
                                                               factor))))
    for k, a in arrays.items():
        panels.append((k, disp.rgb(centre_crop(middle_slice(a), CROP))))
    panels.append(("reference", disp.rgb(centre_crop(middle_slice(r_raw), CROP))))
    unit = ref.units or "value"
    band = disp.bands[0] if ref.kind == "raster" else 0
    errors = [(k, np.abs(centre_crop(middle_slice(a), CROP) - centre_crop(middle_slice(r_raw), CROP))[band])
              for k, a in arrays.items()]
    hist = [(k, a[:, r_ok].ravel()) for k, a in arrays.items()] + [("reference", r_raw[:, r_ok].ravel())]
    band_note = f", band {ref.band_names[band]}" if ref.kind == "raster" and ref.band_names else ""
    return [(f"{name}: centre crop, same display for every panel", panels_figure(panels, name)),
            (f"{name}: absolute error{band_note} ({unit})", error_figure(errors, unit)),
            (f"{name}: intensity histograms of valid pixels, all compared bands pooled ({unit})", histogram_figure(hist, unit))]


def load_manifest(path: Path) -> list[dict]:
    """Benchmark manifest: JSON ``{"items": [{"id", "lr", "hr"}]}``, paths relative to the file."""
    path = Path(path)
    try:
        items = json.loads(path.read_text())["items"]
        out = [{"id": str(it.get("id", i)), "lr": path.parent / it["lr"], "hr": path.parent / it["hr"]}
               for i, it in enumerate(items)]
    except FileNotFoundError:
        raise HiresError(f"no such file: {path}")
    except (ValueError, KeyError, TypeError) as exc:
        raise HiresError(f"bad manifest {path}: expected {{\"items\": [{{\"id\", \"lr\", \"hr\"}}]}} ({exc})")
    if not out:
        raise HiresError(f"manifest {path} lists no items")
    return out


def benchmark(manifest, models: list[str], window=None, bands=None, tile=256, overlap=32, device="auto",
              weights_dir=None, inception_score: bool = False) -> tuple[dict, list]:
    """Every model on every manifest item (LR → model → compared with HR and with the LR);
    ``inception_score`` as in :func:`evaluate_paths`."""
    hook = Perceptual(weights_dir, inception_score=inception_score)  # refuses before any work
    items = load_manifest(manifest)
    per_model = {m: [] for m in models}
    figures = []
    for it in items:
        lr, hr = io.read(it["lr"]), io.read(it["hr"])
        scale = hr.spatial_shape[-1] // lr.spatial_shape[-1]
        preds = {}
        for m in models:
            preds[m] = enhance(lr, model=m, scale=scale, tile=tile, overlap=overlap, device=device)
            res = evaluate_pair(preds[m], hr, lr, window=window, bands=bands, perceptual=hook,
                                tiling={"tile": tile, "overlap": overlap})
            per_model[m].append({"id": it["id"], **res})
        if len(figures) < 9:
            figures += comparison_figures(it["id"], hr, preds, lr, window, bands)
    result = {"manifest": str(manifest), "settings": per_model[models[0]][0]["settings"],
              "models": {m: {"metrics": _mean(r), "items": r} for m, r in per_model.items()}}
    return result, figures


def write_outputs(result: dict, figures: list, title: str, json_path=None, report_path=None,
                  figures_dir=None, overwrite=False) -> None:
    """JSON, HTML report and PNG figures, each written atomically."""
    from .io.common import atomic_output, check_output

    targets = [p for p in (json_path, report_path) if p]
    for p in targets:
        check_output(Path(p), overwrite)
    if json_path:
        with atomic_output(Path(json_path)) as tmp:
            tmp.write_text(json.dumps(result, indent=2, allow_nan=False))
    if report_path:
        rows = ([(m, r["metrics"]) for m, r in result["models"].items()] if "models" in result
                else [("prediction", result["metrics"])] + [(f"{b} (baseline)", m)
                                                             for b, m in result.get("baselines", {}).items()])
        with atomic_output(Path(report_path)) as tmp:
            write_html(tmp, title, result["settings"], metric_table(rows), figures, _notes(result))
    if figures_dir:
        Path(figures_dir).mkdir(parents=True, exist_ok=True)
        for i, (_, png) in enumerate(figures):
            (Path(figures_dir) / f"figure_{i:02d}.png").write_bytes(png)


def _notes(result: dict) -> list[str]:
    s = result["settings"]
    rng = s["data_range"]
    notes = [f"data range: {rng['name']} [{rng['lo']}, {rng['hi']}] — {rng['description']}",
             f"bands: {', '.join(s['bands'])}", f"mask: {s['mask']}"]
    metrics = result.get("metrics") or next(iter(result["models"].values()))["metrics"]
    for key in ("lpips", "fid", "is"):
        e = metrics.get(key)
        if e is not None:
            text = e.get("reason") or f"{e.get('backbone', '')} {e.get('set', '')}".strip()
            notes.append(f"{'IS (Inception Score)' if key == 'is' else key}: {text}"
                         + (f"; {e['note']}" if e.get("note") else ""))
    return notes
