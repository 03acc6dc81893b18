"""Blind low-dose CT denoising at protocols the model was never trained on, against the
strongest classical denoisers given what the model is not: non-local means with h tuned on the
truth per case, and BM3D given the true noise σ per case.

    pip install bm3d    # non-commercial licence: benchmarks only, never a dependency of the package
    python benchmarks/ct_denoise_protocols.py [--model ct-denoise] [--json OUT.json] [--figure OUT.png]

Cases: the reserved real slices of datasets/ct-denoise.yaml (CT_small, 693_UNCI, both frames of
eCT_Supplemental; never trained on) simulated by the recipe's own physics (hires prepare's code)
at its validation protocols A–D, plus a dose curve (protocol E: 720 views, ramp, electronic noise
1 count, photons 5e3 … 1e7). The truth is the noise-free reconstruction of the same protocol.
Per case: soft-tissue window (C40/W400) PSNR/SSIM, raw-HU PSNR, and a texture ratio (Laplacian
energy of the result over the truth's on soft-tissue pixels, in the window: < 1 waxy, > 1 noisy).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from skimage.restoration import denoise_nl_means

import hires_domain as hd
from hires_domain.data import prepare as prep
from hires_domain.data.recipes import CtProtocol, load_recipe
from hires_domain.metrics import evaluate_pair
from hires_domain.metrics.domain import hf_energy_ratio

sys.path.insert(0, str(Path(__file__).parent))
from heldout_models import as_image  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SOFT = (-160.0, 240.0)
DOSE_CURVE = [5e3, 1e4, 2e4, 5e4, 1e5, 3e5, 1e6, 1e7]  # 1e7: far below the trained noise
NLM_H = (0.4, 0.55, 0.7, 0.85, 1.0, 1.2)  # h / σ grid for the truth-tuned NLM


def protocols(recipe, curve: bool, named: bool = True) -> list[CtProtocol]:
    out = list(recipe.degradation.val_protocols) if named else []
    if curve:
        out += [CtProtocol(name=f"E{int(p)}", photons=p, n_angles=720, filter="ramp", electronic_sigma=1.0)
                for p in DOSE_CURVE]
    return out


def bm3d_denoise(noisy: np.ndarray, sigma: float) -> np.ndarray:
    import bm3d

    return bm3d.bm3d(noisy / 1000.0, sigma_psd=sigma / 1000.0) * 1000.0


def scores(pred: np.ndarray, clean: np.ndarray, valid: np.ndarray, manifest: dict) -> dict:
    ref = as_image(clean[None], manifest, valid)
    img = as_image(pred[None], manifest)
    soft = evaluate_pair(img, ref, window="soft-tissue")["metrics"]
    raw = evaluate_pair(img, ref)["metrics"]
    tissue = valid & (clean > SOFT[0]) & (clean < SOFT[1])
    texture = hf_energy_ratio(np.clip(pred, *SOFT)[None], np.clip(clean, *SOFT)[None], tissue[None]).value
    return {"psnr_soft": soft["psnr"]["value"], "ssim_soft": soft["ssim"]["value"],
            "psnr_hu": raw["psnr"]["value"], "texture": texture}


def run_case(noisy, clean, valid, manifest, model: str, keep: dict | None = None) -> dict:
    sigma = float(np.std((noisy - clean)[valid]))
    out = {"sigma_hu": sigma}
    t = time.perf_counter()
    den = hd.enhance(as_image(noisy[None], manifest), model=model, scale=1, device="cpu")
    out["model_seconds"] = time.perf_counter() - t
    results = {"input": scores(noisy, clean, valid, manifest), model: scores(den.data[0, 0], clean, valid, manifest)}
    best = None
    for k in NLM_H:
        s = scores(denoise_nl_means(noisy, h=k * sigma, sigma=sigma, patch_size=5, patch_distance=6, fast_mode=True),
                   clean, valid, manifest)
        if best is None or s["psnr_soft"] > best[1]["psnr_soft"]:
            best = (k, s)
    results["nlm (h tuned on truth)"] = {**best[1], "h_over_sigma": best[0]}
    t = time.perf_counter()
    bm = bm3d_denoise(noisy, sigma)
    out["bm3d_seconds"] = time.perf_counter() - t
    results["bm3d (true sigma)"] = scores(bm, clean, valid, manifest)
    if keep is not None:  # images for the figure
        nlm = denoise_nl_means(noisy, h=best[0] * sigma, sigma=sigma, patch_size=5, patch_distance=6, fast_mode=True)
        keep.update({"input": noisy, model: den.data[0, 0], "NLM (tuned on truth)": nlm, "BM3D (true σ)": bm,
                     "truth": clean})
    out["methods"] = results
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="ct-denoise")
    ap.add_argument("--recipe", type=Path, default=ROOT / "datasets" / "ct-denoise.yaml")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--no-curve", action="store_true", help="protocols A-D only")
    ap.add_argument("--curve-only", action="store_true", help="the dose curve (protocol E) only")
    ap.add_argument("--only", help="cases whose id contains this text (e.g. CT_small)")
    ap.add_argument("--figures", type=Path, help="directory for the crops figure and the dose curve (PNG)")
    ap.add_argument("--figure-case", default="693_UNCI-z0-A", help="case shown in the crops figure")
    ap.add_argument("--figure-name", default="ct-denoise-protocols.png", help="file name of the crops figure")
    args = ap.parse_args()
    warnings.filterwarnings("ignore", module="pydicom")  # the test files' own invalid UIDs
    recipe = load_recipe(args.recipe)
    recipe = recipe.model_copy(update={"degradation": recipe.degradation.model_copy(
        update={"val_protocols": protocols(recipe, not args.no_curve, not args.curve_only)})})
    manifest = {"domain": "low-dose-ct"}
    cases, shown = [], {}
    for item in (it for it in prep.plan(recipe) if it.split == "val" and (args.only or "") in it.id):
        arrays = prep.process(item, recipe)
        noisy, clean, valid = (arrays[k][0].astype(np.float64) if k != "valid" else arrays[k]
                               for k in ("lr", "hr", "valid"))
        case = {"id": item.id, "scan": item.source, "protocol": item.id.rsplit("-", 1)[-1],
                "params": {k: item.params[k] for k in ("photons", "n_angles", "filter", "electronic_sigma")},
                **run_case(noisy, clean, valid, manifest, args.model,
                           shown if args.figure_case in item.id else None)}
        m = case["methods"]
        print(f"{case['id']}: σ {case['sigma_hu']:.0f} HU; soft PSNR input {m['input']['psnr_soft']:.2f} "
              f"model {m[args.model]['psnr_soft']:.2f} nlm {m['nlm (h tuned on truth)']['psnr_soft']:.2f} "
              f"bm3d {m['bm3d (true sigma)']['psnr_soft']:.2f}", flush=True)
        cases.append(case)
    summary = summarise(cases, args.model)
    print(table(summary, args.model))
    if args.figures:
        args.figures.mkdir(parents=True, exist_ok=True)
        if shown:
            crops_figure(shown, args.figure_case, args.figures / args.figure_name)
        curve_figure(cases, args.model, args.figures / "ct-denoise-dose-curve.png")
    if args.json:
        args.json.write_text(json.dumps({"model": args.model, "recipe": str(args.recipe.relative_to(ROOT)),
                                         "summary": summary, "cases": cases}, indent=1))
    return 0


def crops_figure(images: dict, case: str, png: Path) -> None:
    """Soft-tissue-window crops of one case, side by side, with each one's soft-tissue PSNR."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    truth = images["truth"]
    h, w = truth.shape
    r, c = min(100, h // 2), min(100, w // 2)  # a 200² centre crop, or the whole of a smaller slice
    crop = (slice(h // 2 - r, h // 2 + r), slice(w // 2 - c, w // 2 + c))
    fig, axes = plt.subplots(1, len(images), figsize=(3.2 * len(images), 3.6))
    for ax, (label, img) in zip(axes, images.items()):
        ax.imshow(np.clip(img[crop], *SOFT), cmap="gray", vmin=SOFT[0], vmax=SOFT[1])
        mse = np.mean((np.clip(img[crop], *SOFT) - np.clip(truth[crop], *SOFT)) ** 2)
        ax.set_title(label if label == "truth" else f"{label}\n{10 * np.log10(400 ** 2 / mse):.2f} dB (crop)",
                     fontsize=9)
        ax.axis("off")
    fig.suptitle(f"{case}: soft-tissue window C40/W400", fontsize=10)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def curve_figure(cases: list[dict], model: str, png: Path) -> None:
    """Soft-tissue PSNR against photons per detector bin (protocol E), mean over the scans."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curve = [c for c in cases if c["protocol"].startswith("E")]
    photons = sorted({c["params"]["photons"] for c in curve})
    if len(photons) < 2:  # e.g. --only one case: keep the curve drawn by a whole run
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    for method in curve[0]["methods"]:
        ys = [np.mean([c["methods"][method]["psnr_soft"] for c in curve if c["params"]["photons"] == p])
              for p in photons]
        ax.semilogx(photons, ys, marker="o", label=method)
    ax.set_xlabel("photons per detector bin (720 views, ramp, electronic noise 1 count)")
    ax.set_ylabel("soft-tissue PSNR, dB (mean over reserved scans)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def summarise(cases: list[dict], model: str) -> dict:
    """Per (scan, protocol) means (eCT's two frames averaged), then per protocol over scans."""
    rows: dict = {}
    for c in cases:
        for method, s in c["methods"].items():
            rows.setdefault((c["protocol"], c["scan"], method), []).append(s)
    per_case = {" | ".join(k): {n: float(np.mean([s[n] for s in v])) for n in ("psnr_soft", "ssim_soft", "psnr_hu",
                                                                               "texture")}
                for k, v in rows.items()}
    return per_case


def table(summary: dict, model: str) -> str:
    lines = ["| protocol | scan | method | PSNR soft | SSIM soft | PSNR HU | texture |", "|---|---|---|---|---|---|---|"]
    for key, v in summary.items():
        lines.append(f"| {key} | {v['psnr_soft']:.2f} | {v['ssim_soft']:.4f} | {v['psnr_hu']:.2f} | {v['texture']:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
