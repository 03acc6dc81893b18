"""Peak memory of streamed raster enhancement: does it stay flat as the scene grows?

Generates 2048² and 4096² 4-band uint16 GeoTIFFs (tiled, deflate; texture mirrored from the
bundled Sentinel-2 crop) in a temporary directory, then runs, in a fresh process per size,

    hires enhance in.tif out.tif --model bicubic --scale 4 --tile 256 --overlap 32 --quiet

(``--model s2-ldm-x4 --extra "--steps 2" --sizes 512 1024 --json benchmarks/results/memory_streaming_ldm.json``
measures a diffusion model the same way: memory does not depend on the number of steps.)
Peak RSS is the kernel's high-water mark of that process
(``getrusage(RUSAGE_CHILDREN).ru_maxrss`` read by a wrapper process that runs only it).
Requirement: the 4096² peak within 1.2× the 2048² peak and under 1.5 GiB.

    python benchmarks/memory_streaming.py [--sizes 2048 4096] [--json results.json]
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
import psutil
import rasterio

ROOT = Path(__file__).resolve().parents[1]
CROP = ROOT / "hires_domain" / "samples" / "s2_crop.tif"
DEFAULT_JSON = ROOT / "benchmarks" / "results" / "memory_streaming.json"
MAX_RATIO, MAX_PEAK_MIB = 1.2, 1536
WRAPPER = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True); "
           "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")


def make_input(path: Path, size: int) -> None:
    """A size² scene tiled from the crop, mirrored at every edge so the texture is continuous."""
    with rasterio.open(CROP) as src:
        crop, profile, descriptions = src.read(), src.profile, src.descriptions
    n = crop.shape[-1]
    profile.update(width=size, height=size, blockxsize=256, blockysize=256, tiled=True, zlevel=6)
    with rasterio.open(path, "w", **profile) as dst:
        dst.descriptions = descriptions
        for i in range(size // n):
            row = np.concatenate([crop[:, ::(-1) ** i, ::(-1) ** j] for j in range(size // n)], axis=2)
            dst.write(row, window=rasterio.windows.Window(0, i * n, size, n))


def measure(src: Path, dst: Path, model: str = "bicubic", extra: list[str] = ()) -> dict:
    cmd = [sys.executable, "-m", "hires_domain", "enhance", str(src), str(dst), "--model", model,
           "--scale", "4", "--tile", "256", "--overlap", "32", "--quiet", *extra]
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", WRAPPER, *cmd], check=True, capture_output=True, text=True)
    wall = time.perf_counter() - start
    return {"peak_rss_mib": round(int(out.stdout.split()[-1]) / 1024, 1), "wall_s": round(wall, 1),
            "output_bytes": dst.stat().st_size}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2048, 4096])
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    parser.add_argument("--model", default="bicubic")
    parser.add_argument("--extra", default="", help="more `hires enhance` options, e.g. '--steps 2'")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="hires-mem-") as tmp:
        for size in args.sizes:
            src, dst = Path(tmp) / f"in_{size}.tif", Path(tmp) / f"out_{size}.tif"
            make_input(src, size)
            rows.append({"size": size, "input_bytes": src.stat().st_size,
                         **measure(src, dst, args.model, args.extra.split())})
            dst.unlink()
    peaks = [r["peak_rss_mib"] for r in rows]
    ratio = peaks[-1] / peaks[0]
    ok = ratio <= MAX_RATIO and max(peaks) <= MAX_PEAK_MIB
    result = {
        "command": f"hires enhance in.tif out.tif --model {args.model} --scale 4 --tile 256 --overlap 32 --quiet "
                   f"{args.extra}".strip(),
        "machine": f"{platform.platform()}, {os.cpu_count()} CPUs, "
                   f"{psutil.virtual_memory().total / 1024**3:.0f} GiB RAM, Python {platform.python_version()}",
        "rows": rows, "ratio_largest_to_smallest": round(ratio, 3), "pass": ok,
    }
    print("| size | peak RSS (MiB) | wall (s) | output bytes |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['size']}² | {r['peak_rss_mib']} | {r['wall_s']} | {r['output_bytes']:,} |")
    print(f"ratio {args.sizes[-1]}/{args.sizes[0]}: {ratio:.3f} (need ≤ {MAX_RATIO}); "
          f"max peak {max(peaks)} MiB (need ≤ {MAX_PEAK_MIB}): {'PASS' if ok else 'FAIL'}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
