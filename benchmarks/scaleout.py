"""Scale-out on Dask: many small items on 1 vs 2 workers, and one large raster split into row bands.

Items: 64 small rasters (copies of the real 128² × 4-band Sentinel-2 held-out crop, ``s2-sr-x4``)
and 16 CT series (copies of the bundled 12-slice DICOM head series, ``ct-sr-x2``). Each set runs

- as a plain loop of ``pipeline.enhance_file`` in this process (the baseline),
- through ``hires batch``'s code in-process (``run_batch``, no Dask),
- on a LocalCluster of 1 worker process and of 2 worker processes (``run_batch`` with a client;
  cluster start-up and the workers' first imports timed apart),

``--rounds`` times, interleaved; the best round of each configuration is reported (the machine
may be shared).

Reported: seconds per item; the speed-up of 2 workers over 1 worker, and over the plain loop on
all cores (what a shell loop of ``hires enhance`` gets); and the Dask overhead per item: 1
worker against the plain loop on one torch thread (each worker has one), both one item at a time.

Large raster: a ``--large``² 4-band uint16 GeoTIFF (texture mirrored from the bundled crop),
``--large-model`` ×4 at default settings, as one ``hires enhance`` process (peak RSS by
``ru_maxrss``) and as row bands on 2 workers (``cluster.bands.enhance_bands``; each worker reports
its own peak RSS). The serial part is measured (cluster start-up, and the run's tail after the
busiest worker's last band: assembling the output), and the speed-up curve for 1–64 workers is
drawn from it on paper (Amdahl: T(N) = serial + band work / min(N, bands the plan allows)).

    python benchmarks/scaleout.py [--items 64] [--series 16] [--rounds 2] [--large 4096 ...] [--json PATH]
    python benchmarks/scaleout.py --items 0 --large 1024 4096 --large-model s2-sr-x4 \
        --json benchmarks/results/scaleout_bands.json
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from memory_streaming import WRAPPER, make_input  # noqa: E402

from hires_domain.cluster import connect  # noqa: E402
from hires_domain.cluster.bands import enhance_bands  # noqa: E402
from hires_domain.cluster.batch import Options, discover, run_batch  # noqa: E402
from hires_domain.pipeline import Settings, enhance_file  # noqa: E402

S2 = ROOT / "tests" / "data" / "s2_heldout_crop.tif"
CT = ROOT / "hires_domain" / "samples" / "ct_head_series"
DEFAULT_JSON = ROOT / "benchmarks" / "results" / "scaleout.json"


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def make_items(root: Path, n_rasters: int, n_series: int) -> dict[str, Path]:
    sets = {"s2-sr-x4": root / "rasters", "ct-sr-x2": root / "series"}
    sets["s2-sr-x4"].mkdir(parents=True)
    for k in range(n_rasters):
        shutil.copy(S2, sets["s2-sr-x4"] / f"s2_{k:03d}.tif")
    for k in range(n_series):
        shutil.copytree(CT, sets["ct-sr-x2"] / f"ct_{k:03d}", ignore=shutil.ignore_patterns("*.txt"))
    return sets


def plain_loop(src: Path, out: Path, model: str, threads: int | None = None) -> float:
    """``enhance_file`` per item in this process: on torch's default threads (all cores, as
    ``hires enhance`` runs), or on ``threads`` (1: what each single-threaded Dask worker has)."""
    import torch

    items = discover([str(src)], out)
    before = torch.get_num_threads()
    if threads is not None:
        os.environ["OMP_NUM_THREADS"] = str(threads)  # pipeline.use_threads keeps it
        torch.set_num_threads(threads)
    try:
        start = time.perf_counter()
        for item in items:
            Path(item.output).parent.mkdir(parents=True, exist_ok=True)
            enhance_file(item.input, item.output, Settings(model))
        return time.perf_counter() - start
    finally:
        os.environ.pop("OMP_NUM_THREADS", None)
        torch.set_num_threads(before)


def batch(src: Path, out: Path, model: str, client=None) -> float:
    items = discover([str(src)], out)
    outcome = run_batch(items, out, Options(Settings(model)), client=client)
    assert outcome.failed == 0 and outcome.ok == len(items), outcome.line()
    return outcome.seconds


def small_items(root: Path, sets: dict[str, Path], rounds: int) -> dict:
    """Each configuration ``rounds`` times, interleaved (the machine is shared: the best round
    of each is the least disturbed); the clusters stay up between rounds."""
    rows = {model: {"items": len(list(src.iterdir())), "load_before": load()} for model, src in sets.items()}
    for model, src in sets.items():  # imports and first-call costs out of the measurement
        enhance_file(next(src.iterdir()), root / (f"warm-{model}.tif" if "s2" in model else f"warm-{model}"),
                     Settings(model))
    clients = {}
    with connect(1) as one, connect(2) as two:
        for workers, client in ((1, one), (2, two)):
            start = time.perf_counter()
            client.run(importlib.import_module, "hires_domain.pipeline")  # workers import torch & co
            clients[workers] = client
            for r in rows.values():
                r[f"dask_{workers}_warmup_s"] = round(time.perf_counter() - start, 2)
        for k in range(rounds):
            for model, src in sets.items():
                times = rows[model].setdefault("rounds", [])
                times.append({"plain_loop_s": plain_loop(src, root / f"plain{k}-{model}", model),
                              "plain_loop_1_thread_s": plain_loop(src, root / f"plain1-{k}-{model}", model, 1),
                              "batch_in_process_s": batch(src, root / f"inproc{k}-{model}", model),
                              "dask_1_s": batch(src, root / f"dask1-{k}-{model}", model, clients[1]),
                              "dask_2_s": batch(src, root / f"dask2-{k}-{model}", model, clients[2])})
    for model, r in rows.items():
        n = r["items"]
        r["load_after"] = load()
        r["rounds"] = [{k: round(v, 2) for k, v in t.items()} for t in r["rounds"]]
        best = {k: min(t[k] for t in r["rounds"]) for k in r["rounds"][0]}
        r["best"] = best
        r["plain_per_item_s"] = round(best["plain_loop_s"] / n, 3)
        r["batch_in_process_per_item_s"] = round(best["batch_in_process_s"] / n, 3)
        r["dask_1_per_item_s"] = round(best["dask_1_s"] / n, 3)
        r["dask_2_per_item_s"] = round(best["dask_2_s"] / n, 3)
        r["plain_1_thread_per_item_s"] = round(best["plain_loop_1_thread_s"] / n, 3)
        r["speedup_2_workers"] = round(best["dask_1_s"] / best["dask_2_s"], 2)  # 1 vs 2 workers
        r["speedup_over_plain_loop"] = round(best["plain_loop_s"] / best["dask_2_s"], 2)
        # overhead: one single-threaded worker against the same loop on one thread
        r["dask_overhead_per_item_s"] = round((best["dask_1_s"] - best["plain_loop_1_thread_s"]) / n, 3)
        r["dask_overhead_pct"] = round(100 * (best["dask_1_s"] / best["plain_loop_1_thread_s"] - 1), 1)
    return rows


def large_raster(root: Path, size: int, model: str) -> dict:
    src = root / f"large{size}.tif"
    make_input(src, size)
    cmd = [sys.executable, "-m", "hires_domain", "enhance", str(src), str(root / f"one{size}.tif"), "--model", model,
           "--scale", "4", "--quiet"]
    r = {"input": f"{size}x{size}x4 uint16", "model": model, "load_before": load()}
    start = time.perf_counter()
    peak = subprocess.run([sys.executable, "-c", WRAPPER, *cmd], check=True, capture_output=True, text=True)
    r["one_process_s"] = round(time.perf_counter() - start, 1)
    r["one_process_peak_rss_mib"] = round(int(peak.stdout.split()[-1]) / 1024, 1)
    start = time.perf_counter()
    with connect(2) as client:
        r["dask_startup_s"] = round(time.perf_counter() - start, 2)
        s = enhance_bands(src, root / f"bands{size}.tif", Settings(model, 4), client)
    r["two_workers_s"] = round(s.seconds, 1)
    r["bands"] = [{"rows": b["rows"], "seconds": round(b["seconds"], 1), "worker_pid": b["pid"],
                   "worker_peak_rss_mib": round(b["peak_rss"] / 2**20, 1)} for b in s.bands]
    busiest = max(sum(b["seconds"] for b in s.bands if b["pid"] == pid) for pid in {b["pid"] for b in s.bands})
    r["serial_tail_s"] = round(s.seconds - busiest, 2)  # after the busiest worker's last band: assembly
    r["speedup"] = round(r["one_process_s"] / (r["two_workers_s"] + r["dask_startup_s"]), 2)
    r["two_workers_over_one_process"] = round((r["two_workers_s"] + r["dask_startup_s"]) / r["one_process_s"], 2)
    r["curve"] = curve(r, len(_tile_rows(src, model)))
    r["load_after"] = load()
    import numpy as np
    import rasterio

    with rasterio.open(root / f"one{size}.tif") as a, rasterio.open(root / f"bands{size}.tif") as b:
        r["pixels_equal"] = all(np.array_equal(a.read(window=w), b.read(window=w)) for _, w in a.block_windows(1))
    return r


def _tile_rows(src: Path, model: str) -> list[int]:
    from hires_domain import io, pipeline
    from hires_domain.cluster.bands import _tile_plan

    image = io.read(src)
    try:
        return _tile_plan(image, pipeline.resolve_run(image, Settings(model, 4))).axes[0].starts
    finally:
        image.data.close()


def curve(r: dict, max_bands: int, workers=(1, 2, 4, 8, 16, 32, 64)) -> dict:
    """Speed-up on paper of N single-threaded workers over one, from this run's measured parts:
    serial = start-up + tail, work = Σ band seconds (one thread each), at most ``max_bands`` bands
    (tile rows) running at once for this raster; and for a 10980² Sentinel-2 tile at the same
    tile size (work scaled by area, bands by rows)."""
    serial = r["dask_startup_s"] + r["serial_tail_s"]
    work = sum(b["seconds"] for b in r["bands"])
    side = int(r["input"].split("x")[0])
    out = {"serial_s": round(serial, 2), "band_work_s": round(work, 1), "max_bands": max_bands}
    for name, w, bands in (("this raster", work, max_bands),
                           ("10980² tile", work * (10980 / side) ** 2, -(-max_bands * 10980 // side))):
        t1 = serial + w
        out[name] = {n: round(t1 / (serial + w / min(n, bands)), 2) for n in workers}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=64, help="small rasters (0: skip the small items)")
    ap.add_argument("--series", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=2, help="repetitions of the small-item runs (best kept)")
    ap.add_argument("--large", type=int, nargs="+", default=[4096], help="sides of the large rasters (0: skip)")
    ap.add_argument("--large-model", default="bicubic")
    ap.add_argument("--json", type=Path, default=DEFAULT_JSON)
    args = ap.parse_args()
    result = {"machine": f"{platform.platform()}, {psutil.cpu_count()} CPUs, "
                         f"{psutil.virtual_memory().total / 2**30:.0f} GiB RAM, Python {platform.python_version()}",
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "load_at_start": load()}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if args.items:
            result["small_items"] = small_items(root, make_items(root, args.items, args.series), args.rounds)
            print(json.dumps(result["small_items"], indent=1), flush=True)
        for size in (n for n in args.large if n):
            result[f"large_raster_{size}"] = large_raster(root, size, args.large_model)
            print(json.dumps(result[f"large_raster_{size}"]), flush=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
