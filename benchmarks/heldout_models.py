"""Held-out numbers for a shipped model against its baselines, on a prepared dataset's val split.

    python benchmarks/heldout_models.py DATASET_DIR --model NAME [--json OUT.json]

DATASET_DIR is the output of ``hires prepare datasets/<recipe>.yaml DATASET_DIR``; only its
``val`` items (held out by the recipe's split rule) are used.

- Super-resolution datasets: every val HR is degraded two ways — plain block averaging (area)
  and the recipe's own degradation (the stored LR) — then enhanced by bicubic and by the model;
  PSNR/SSIM (explicit data range: reflectance for rasters; raw HU −1024..3071 and the soft-tissue
  window for CT), SAM for multi-band, and LR consistency come from ``hires_domain.metrics``.
  CT rows are also given per reserved scan and as the mean over scans.
- Low-dose CT datasets: the noisy val slices (stored LR, same grid) against the model and
  scikit-image's non-local means and total variation, whose strength is tuned on the train split,
  per validation protocol (benchmarks/ct_denoise_protocols.py adds BM3D and truth-tuned NLM).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from skimage.restoration import denoise_nl_means, denoise_tv_chambolle

import hires_domain as hd
from hires_domain.image import Image
from hires_domain.metrics import block_mean, evaluate_pair

CT_RANGES = (None, "soft-tissue")  # raw HU (-1024..3071) and the C40/W400 window


def items(dataset: Path, split: str):
    manifest = json.loads((dataset / "manifest.json").read_text())
    for rec in manifest["items"]:
        if rec["split"] == split:
            with np.load(dataset / rec["file"]) as z:
                yield rec, {k: z[k] for k in z.files}


def as_image(arr: np.ndarray, manifest: dict, valid: np.ndarray | None = None, coarser: int = 1) -> Image:
    """A prepared (C, H, W) array as an Image on a unit HR grid (``coarser``: an LR grid whose
    ×coarser refinement is that HR grid); rasters keep reflectance scale/offset, CT is HU."""
    if valid is not None and not valid.all():
        arr = np.where(valid, arr, np.nan)
    raster = manifest["domain"] == "satellite"
    n = 2 if raster else 3
    affine = np.eye(n + 1)
    for ax in (n - 2, n - 1):  # in-plane axes: spacing k, first centre at (k - 1) / 2
        affine[ax, ax], affine[ax, n] = coarser, (coarser - 1) / 2
    if raster:
        norm = manifest["normalisation"]
        return Image(arr.astype(np.float32), affine, "map", "raster", "DN", None, tuple(manifest["bands"]),
                     meta={"scales": norm["reflectance_scale"], "offsets": norm["reflectance_offset"]})
    return Image(arr.astype(np.float32)[:, None], affine, "LPS", "nifti", "HU", None, ("HU",))


def sr_rows(dataset: Path, manifest: dict, model: str) -> dict:
    scale = manifest["scale"]
    raster = manifest["domain"] == "satellite"
    windows = (None,) if raster else CT_RANGES
    results: dict = {}
    for rec, z in items(dataset, "val"):
        hr = as_image(z["hr"], manifest, z["valid"])
        lrs = {"area": block_mean(np.nan_to_num(z["hr"]), (scale, scale)), "recipe": z["lr"]}
        for how, lr_arr in lrs.items():
            lr = as_image(lr_arr, manifest, coarser=scale)
            for method in ("bicubic", model):
                pred = hd.enhance(lr, model=method, scale=scale, tile=256, overlap=32, device="cpu")
                for w in windows:
                    m = evaluate_pair(pred, hr, lr, window=w)["metrics"]
                    keys = [(how, method, w or "default")]
                    if not raster:  # CT: also per reserved scan (a scan may give several slices)
                        keys.append((how, method, w or "default", rec["source"]))
                    for name in ("psnr", "ssim", "sam", "consistency_psnr"):
                        if name in m and m[name]["value"] is not None:
                            for key in keys:
                                results.setdefault(key, {}).setdefault(name, []).append(m[name]["value"])
    rows = {" | ".join(key): {k: float(np.mean(v)) for k, v in vals.items()} for key, vals in results.items()}
    for how, method, w in {key[:3] for key in results if len(key) == 4}:  # mean of the per-scan means
        scans = [v for key, v in rows.items() if key.startswith(f"{how} | {method} | {w} | ")]
        rows[f"{how} | {method} | {w} | mean over scans"] = {k: float(np.mean([v[k] for v in scans])) for k in scans[0]}
    return rows


def _blocks(a: np.ndarray, b: int = 16) -> np.ndarray:
    """(C, H, W) → per b×b block means (NaN-aware), pooled over bands: (H//b · W//b,)."""
    c, h, w = a.shape
    a = a[:, :h // b * b, :w // b * b].reshape(c, h // b, b, w // b, b)
    return np.nanmean(a, axis=(0, 2, 4)).ravel()


def _at(strength: float) -> str:
    """A row label's strength suffix: nothing at the default strength 1."""
    return "" if strength == 1 else f", strength {strength:g}"


def diffusion_rows(dataset: Path, manifest: dict, model: str, samples: int, limit: int | None,
                   every: int = 1, strengths: tuple[float, ...] = (1.0,)) -> dict:
    """A diffusion model's sample mean (``samples`` draws) and one sample against bicubic and
    its first stage (the SRGAN model it was trained on), both degradations, at each repaint
    ``strength``; plus the high-frequency energy ratio, consistency with and without enforcement
    (strength 1), and the Spearman correlation between the per-16×16-block mean uncertainty and
    the block RMSE of the mean."""
    from scipy.stats import spearmanr

    from hires_domain.models import get_model

    info = get_model(model)
    first = info.diffusion["first_stage"].get("from")
    scale = manifest["scale"]
    raster = manifest["domain"] == "satellite"
    to_metric = (lambda a: a * np.asarray(manifest["normalisation"]["reflectance_scale"])[:, None, None]) if raster \
        else (lambda a: np.clip(a[:, 0] if a.ndim == 4 else a, -1024, 3071))
    results: dict = {}
    pairs: dict = {}
    for i, (rec, z) in enumerate(items(dataset, "val")):
        if limit and i >= limit * every:
            break
        if i % every:
            continue
        hr = as_image(z["hr"], manifest, z["valid"])
        lrs = {"area": block_mean(np.nan_to_num(z["hr"]), (scale, scale)), "recipe": z["lr"]}
        for how, lr_arr in lrs.items():
            lr = as_image(lr_arr, manifest, coarser=scale)
            preds = {m: hd.enhance(lr, model=m, scale=scale, device="cpu") for m in ("bicubic", first) if m}
            for strength in strengths:
                at = _at(strength)
                mean, std = hd.enhance(lr, model=model, device="cpu", samples=samples, uncertainty=True,
                                       strength=strength)
                preds[f"{model} mean of {samples}{at}"] = mean
                preds[f"{model} one sample{at}"] = hd.enhance(lr, model=model, device="cpu", samples=1,
                                                                strength=strength)
                err = (to_metric(np.asarray(mean.data).reshape(z["hr"].shape)) - to_metric(z["hr"])) ** 2
                err = np.where(z["valid"], err, np.nan)
                sd = np.where(z["valid"], to_metric(np.asarray(std.data).reshape(z["hr"].shape)), np.nan)
                blocks = pairs.setdefault((how, strength), ([], []))
                blocks[0].append(_blocks(sd))
                blocks[1].append(np.sqrt(_blocks(err)))
            if 1.0 in strengths:
                other = "off" if info.enforce else "enforce"
                preds[f"{model} mean of {samples}, consistency {other}"] = hd.enhance(
                    lr, model=model, device="cpu", samples=samples, consistency=other)
            for method, pred in preds.items():
                m = evaluate_pair(pred, hr, lr)["metrics"]
                vals = {k: m[k]["value"] for k in ("psnr", "ssim", "sam", "consistency_psnr") if k in m}
                vals["hf_energy_ratio"] = hd.metrics.hf_energy_ratio(
                    np.asarray(pred.data, np.float64).reshape(z["hr"].shape), z["hr"].astype(np.float64),
                    z["valid"]).value
                for k, v in vals.items():
                    if v is not None:
                        results.setdefault((how, method, "default"), {}).setdefault(k, []).append(v)
    rows = {" | ".join(key): {k: float(np.mean(v)) for k, v in vals.items()} for key, vals in results.items()}
    for (how, strength), (u, e) in pairs.items():
        u, e = np.concatenate(u), np.concatenate(e)
        ok = np.isfinite(u) & np.isfinite(e)
        at = _at(strength)
        rows[f"{how} | uncertainty vs error (16x16 blocks, Spearman){at} | default"] = {
            "spearman": float(spearmanr(u[ok], e[ok]).statistic) if u[ok].std() > 0 else float("nan"),
            "blocks": int(ok.sum())}
    return rows


def seconds_256(model: str, manifest: dict, strength: float = 1.0) -> dict:
    """Seconds for a 256 × 256 LR input at default settings (1 sample), after one warm-up."""
    import time

    c = len(manifest["bands"])
    rng = np.random.default_rng(0)
    if manifest["domain"] == "satellite":
        arr = (rng.random((c, 256, 256)) * 2000 + 500).astype(np.float32)
    else:
        arr = (rng.random((c, 256, 256)) * 1000 - 500).astype(np.float32)
    lr = as_image(arr, manifest)
    hd.enhance(lr, model=model, device="cpu", steps=2)
    start = time.perf_counter()
    hd.enhance(lr, model=model, device="cpu", strength=strength)
    return {"seconds_256_lr": time.perf_counter() - start}


def _tune(method, train) -> float:
    """The strength of a classical denoiser that maximises mean PSNR (HU range) on train items."""
    grid = {"nlm": [20, 40, 80, 120, 160, 240, 320], "tv": [10, 40, 80, 160, 240, 320, 480]}[method]
    best, best_psnr = grid[0], -np.inf
    for p in grid:
        scores = [hd.metrics.psnr(_classical(method, p, lr)[None], hr[None], 4095.0).value for lr, hr in train]
        if np.mean(scores) > best_psnr:
            best, best_psnr = p, float(np.mean(scores))
    return best


def _classical(method: str, strength: float, noisy: np.ndarray) -> np.ndarray:
    """Non-local means (h in HU) or TV (weight in HU) on one (H, W) slice in HU."""
    if method == "nlm":
        return denoise_nl_means(noisy, h=strength, patch_size=5, patch_distance=6, fast_mode=True)
    return denoise_tv_chambolle(noisy / 1000.0, weight=strength / 1000.0) * 1000.0


def denoise_rows(dataset: Path, manifest: dict, model: str) -> dict:
    train = [(z["lr"][0], np.clip(z["hr"][0], -1024, 3071)) for _, z in items(dataset, "train")][:6]
    params = {m: _tune(m, train) for m in ("nlm", "tv")}
    results: dict = {}
    for rec, z in items(dataset, "val"):
        protocol = rec["id"].rsplit("-", 1)[-1]
        hr = as_image(z["hr"], manifest, z["valid"])
        noisy = as_image(z["lr"], manifest)
        preds = {"noisy input": noisy, model: hd.enhance(noisy, model=model, scale=1, device="cpu")}
        for m, p in params.items():
            preds[f"{m} (tuned {p:g})"] = noisy.with_data(_classical(m, p, z["lr"][0])[None, None].astype(np.float32))
        for method, pred in preds.items():
            for w in CT_RANGES:
                metrics = evaluate_pair(pred, hr, window=w)["metrics"]
                key = (f"protocol {protocol}", method, w or "HU")
                for name in ("psnr", "ssim"):
                    results.setdefault(key, {}).setdefault(name, []).append(metrics[name]["value"])
    return {" | ".join(k): {n: float(np.mean(v)) for n, v in vals.items()} for k, vals in results.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dataset", type=Path)
    ap.add_argument("--model", required=True)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--samples", type=int, default=8, help="diffusion models: samples per mean (and uncertainty)")
    ap.add_argument("--limit", type=int, help="diffusion models: at most N val items")
    ap.add_argument("--every", type=int, default=1, help="diffusion models: every K-th val item (spread over the split)")
    ap.add_argument("--strengths", default="1", help="diffusion models: repaint strengths, e.g. 0.3,0.6,1")
    args = ap.parse_args()
    manifest = json.loads((args.dataset / "manifest.json").read_text())
    from hires_domain.models import get_model
    from hires_domain.models.ldm import is_diffusion

    if is_diffusion(get_model(args.model)):
        strengths = tuple(float(v) for v in args.strengths.split(","))
        rows = diffusion_rows(args.dataset, manifest, args.model, args.samples, args.limit, args.every, strengths)
        for strength in strengths:
            rows[f"timing | 256x256 LR, 1 sample, default steps{_at(strength)} | -"] = seconds_256(args.model, manifest, strength)
    else:
        rows = (denoise_rows if manifest["domain"] == "low-dose-ct" else sr_rows)(args.dataset, manifest, args.model)
    names = sorted({n for v in rows.values() for n in v})
    scans = any(key.count(" | ") == 3 for key in rows)  # CT SR: rows per reserved scan too
    print("| degradation | method | range | " + ("scan | " if scans else "") + " | ".join(names) + " |")
    print("|---|---|---|" + ("---|" if scans else "") + "---|" * len(names))
    for key, vals in rows.items():
        label = key + (" | all slices" if scans and key.count(" | ") == 2 else "")
        print(f"| {label} | " + " | ".join(f"{vals[n]:.4f}" if n in vals else "" for n in names) + " |")
    if args.json:
        args.json.write_text(json.dumps({"dataset": str(args.dataset), "model": args.model, "rows": rows,
                                         "samples": args.samples, "limit": args.limit, "every": args.every,
                                         "strengths": args.strengths},
                                        indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
