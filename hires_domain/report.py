"""Reports people can look at: one self-contained HTML file (images embedded) and PNG figures.

Pure rendering: callers pass metric results (the ``metrics.evaluate_pair`` schema) and arrays;
nothing here computes a metric. Every panel of one comparison uses the same display mapping
(the reference's window or stretch), so differences in the pictures are differences in data.
"""

from __future__ import annotations

import base64
import html
import io as _io
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .intensity import ct_window, true_colour_bands  # noqa: E402


@dataclass(frozen=True)
class Display:
    """How arrays become RGB: a CT window, or raster bands with fixed per-band limits."""

    kind: str  # 'medical' | 'raster'
    window: str = "soft-tissue"
    bands: tuple[int, ...] = (0, 0, 0)
    limits: tuple[tuple[float, float], ...] = ()

    def rgb(self, arr: np.ndarray) -> np.ndarray:
        """(C, H, W) → (H, W, 3) in [0, 1]."""
        if self.kind == "medical":
            g = ct_window(arr[0], self.window)
            return np.repeat(g[..., None], 3, axis=2)
        out = np.stack([(arr[b] - lo) / max(hi - lo, 1e-12) for b, (lo, hi) in zip(self.bands, self.limits)], -1)
        return np.clip(np.nan_to_num(out), 0, 1)


def rgb_bands(band_names, bands: list[int] | None = None) -> tuple[int, int, int]:
    """A true-colour band triplet: given, or found by name (``true_colour_bands``), else 0,1,2."""
    if bands:
        return tuple(bands[:3]) if len(bands) >= 3 else (bands[0],) * 3
    return true_colour_bands([{"name": str(n), "colorinterp": "", "wavelength": None} for n in band_names])[0]


def display_for(ref: np.ndarray, kind: str, band_names=(), window: str | None = None,
                bands: list[int] | None = None) -> Display:
    """Display mapping fixed from the reference (2–98 % per band for rasters)."""
    if kind != "raster":
        return Display("medical", window or "soft-tissue")
    triplet = rgb_bands(band_names, bands)
    limits = []
    for b in triplet:
        v = ref[b][np.isfinite(ref[b])]
        limits.append(tuple(np.percentile(v, [2, 98])) if v.size else (0.0, 1.0))
    return Display("raster", bands=triplet, limits=tuple(limits))


def uncertainty_rgb(std: np.ndarray) -> np.ndarray:
    """(C, H, W) per-pixel std → (H, W, 3): the band mean scaled to its 99th percentile in magma."""
    from matplotlib import colormaps

    u = std.mean(0)
    u = np.clip(u / max(float(np.nanpercentile(u, 99)), 1e-12), 0, 1)
    return colormaps["magma"](np.nan_to_num(u))[..., :3]


def middle_slice(arr: np.ndarray) -> np.ndarray:
    """(C, Z, Y, X) → (C, Y, X) at the middle slice; 2-D arrays pass through."""
    return arr[:, arr.shape[1] // 2] if arr.ndim == 4 else arr


def centre_crop(arr: np.ndarray, size: int, factor: int = 1) -> np.ndarray:
    """Centre crop of ``size`` output pixels from an array on a grid ``factor`` times coarser."""
    h, w = arr.shape[-2:]
    s = max(1, size // factor)
    y0, x0 = max(0, (h - s) // 2), max(0, (w - s) // 2)
    return arr[..., y0:y0 + s, x0:x0 + s]


def upsample_nearest(arr: np.ndarray, factor: int) -> np.ndarray:
    return arr.repeat(factor, axis=-2).repeat(factor, axis=-1) if factor > 1 else arr


def png_bytes(fig) -> bytes:
    buf = _io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def panels_figure(panels: list[tuple[str, np.ndarray]], title: str = "") -> bytes:
    """Side-by-side RGB panels (all the same size, same zoom) as PNG bytes."""
    fig, axes = plt.subplots(1, len(panels), figsize=(2.6 * len(panels), 2.9), squeeze=False)
    for ax, (name, rgb) in zip(axes[0], panels):
        ax.imshow(rgb, interpolation="nearest")
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    return png_bytes(fig)


def error_figure(errors: list[tuple[str, np.ndarray]], unit: str = "") -> bytes:
    """Absolute error maps on one shared colour scale."""
    vmax = max(float(np.nanpercentile(e, 99.5)) for _, e in errors) or 1.0
    fig, axes = plt.subplots(1, len(errors), figsize=(2.8 * len(errors), 2.9), squeeze=False)
    for ax, (name, e) in zip(axes[0], errors):
        im = ax.imshow(e, cmap="magma", vmin=0, vmax=vmax, interpolation="nearest")
        ax.set_title(f"|{name} − reference|", fontsize=9)
        ax.axis("off")
    fig.colorbar(im, ax=list(axes[0]), shrink=0.8, label=unit)
    return png_bytes(fig)


def histogram_figure(series: list[tuple[str, np.ndarray]], unit: str = "") -> bytes:
    """Intensity histograms (valid pixels) of each image on shared bins."""
    finite = [v[np.isfinite(v)] for _, v in series]
    lo = min(float(np.percentile(v, 0.5)) for v in finite if v.size)
    hi = max(float(np.percentile(v, 99.5)) for v in finite if v.size)
    bins = np.linspace(lo, hi, 128)
    fig, ax = plt.subplots(figsize=(6, 2.8))
    for (name, _), v in zip(series, finite):
        ax.hist(v, bins=bins, histtype="step", density=True, label=name)
    ax.set_xlabel(unit or "value")
    ax.set_ylabel("density")
    ax.legend(fontsize=8)
    return png_bytes(fig)


def _fmt(entry) -> str:
    if not isinstance(entry, dict):
        return html.escape(str(entry))
    v = entry.get("value")
    if v is None:
        why = entry.get("reason") or entry.get("status") or "n/a"
        return f'<span class="na" title="{html.escape(str(why))}">n/a</span>'
    text = ("∞" if v == float("inf") else f"{v:.4g}") if isinstance(v, float) else html.escape(str(v))
    ref = entry.get("ref_value")
    return text + (f" <small>(ref {ref:.4g})</small>" if isinstance(ref, (int, float)) else "")


def metric_table(rows: list[tuple[str, dict]]) -> str:
    """HTML table: one row per model, one column per metric, best value in bold."""
    names = []
    for _, metrics in rows:
        names += [k for k in metrics if k not in names]
    head = "".join(f"<th>{html.escape(k)}<br><small>{_direction(rows, k)}</small></th>" for k in names)
    body = []
    for model, metrics in rows:
        cells = []
        for k in names:
            best = _is_best(rows, k, metrics.get(k))
            cells.append(f"<td{' class=best' if best else ''}>{_fmt(metrics.get(k, ''))}</td>")
        body.append(f"<tr><th>{html.escape(model)}</th>{''.join(cells)}</tr>")
    return f"<table><tr><th>model</th>{head}</tr>{''.join(body)}</table>"


def _direction(rows, key) -> str:
    for _, m in rows:
        entry = m.get(key)
        if isinstance(entry, dict) and entry.get("better"):
            return {"higher": "↑ better", "lower": "↓ better", "closer to 1": "≈1 best",
                    "closer to ref_value": "≈ref best"}.get(
                entry["better"], html.escape(entry["better"]))
    return ""


def _is_best(rows, key, entry) -> bool:
    if not isinstance(entry, dict) or not isinstance(entry.get("value"), (int, float)) or len(rows) < 2:
        return False
    vals = [m.get(key, {}).get("value") for _, m in rows if isinstance(m.get(key), dict)]
    vals = [v for v in vals if isinstance(v, (int, float))]
    better = entry.get("better")
    if better == "higher":
        return entry["value"] == max(vals)
    if better == "lower":
        return entry["value"] == min(vals)
    ref = entry.get("ref_value")
    if better == "closer to ref_value" and isinstance(ref, (int, float)):
        return abs(entry["value"] - ref) == min(abs(v - ref) for v in vals)
    return False


CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;
margin:1em 0;font-size:13px}td,th{border:1px solid #ccc;padding:3px 5px;text-align:right}th{background:#f4f4f4}
td.best{font-weight:bold;background:#e8f5e9}.na{color:#999}img{max-width:100%}pre{background:#f8f8f8;
padding:8px;overflow:auto}figure{margin:1em 0}figcaption{color:#555;font-size:90%}"""


def write_html(path: Path, title: str, settings: dict, table_html: str,
               figures: list[tuple[str, bytes]], notes: list[str] = ()) -> Path:
    """One self-contained HTML file; figures are embedded as base64 PNG."""
    import json

    figs = "".join(
        f'<figure><img alt="{html.escape(cap)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'
        f"<figcaption>{html.escape(cap)}</figcaption></figure>" for cap, png in figures)
    items = "".join(f"<li>{html.escape(n)}</li>" for n in notes)
    doc = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
           f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>"
           f"<h2>Metrics</h2>{table_html}<ul>{items}</ul><h2>Figures</h2>{figs}"
           f"<h2>Settings</h2><pre>{html.escape(json.dumps(settings, indent=2, default=str, ensure_ascii=False))}</pre>"
           f"</body></html>")
    Path(path).write_text(doc, encoding="utf-8")
    return Path(path)
