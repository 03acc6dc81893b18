"""Load test of `hires serve` on localhost: concurrent clients submit small real rasters and poll.

Starts a real server (its own data directory, one token per client, ``--jobs`` workers), then
``--clients`` threads each submit ``--tasks`` crops of the bundled Sentinel-2 sample, poll until
done, download the result and compare it with ``enhance_file`` (what ``hires enhance`` runs)
on the same crop and settings. Bounded: clients stop at ``--max-seconds`` and the server is
killed at the end. Reports submit latency (p50/p95/max), errors, mismatches and the server's
RSS over the run (sampled every 0.25 s).

    python benchmarks/serve_load.py --clients 50 --json benchmarks/results/serve_load.json
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from importlib import resources
from pathlib import Path

import httpx
import numpy as np
import psutil

POLL_S = 0.5  # each client polls its task this often (hires_domain.client's default)


def _crops(out: Path, n: int, size: int) -> list[Path]:
    import rasterio
    from rasterio.windows import Window

    src = Path(str(resources.files("hires_domain") / "samples" / "s2_crop.tif"))
    paths = []
    with rasterio.open(src) as ds:
        for i in range(n):
            y0, x0 = (i * 37) % (ds.height - size), (i * 61) % (ds.width - size)
            w = Window(x0, y0, size, size)
            profile = {**ds.profile, "width": size, "height": size, "transform": ds.window_transform(w)}
            for k in ("blockxsize", "blockysize", "tiled"):
                profile.pop(k, None)
            p = out / f"crop{i}.tif"
            with rasterio.open(p, "w", **profile) as dst:
                dst.write(ds.read(window=w))
            paths.append(p)
    return paths


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _decode(content: bytes) -> np.ndarray:
    from rasterio.io import MemoryFile

    with MemoryFile(content) as mem, mem.open() as ds:
        return ds.read()


def _percentiles(ms: np.ndarray) -> dict | None:
    if not ms.size:
        return None
    return {"p50": round(float(np.percentile(ms, 50)), 1), "p95": round(float(np.percentile(ms, 95)), 1),
            "max": round(float(ms.max()), 1)}


def run(clients: int = 50, tasks: int = 2, jobs: int = 2, size: int = 32, model: str = "bicubic",
        max_seconds: float = 120.0, workdir: Path | None = None) -> dict:
    from hires_domain import io
    from hires_domain.pipeline import Settings, enhance_file
    from hires_domain.serve.security import add_token

    tmp = Path(workdir or tempfile.mkdtemp(prefix="hires-serve-load-"))
    crops = _crops(tmp, 8, size)
    refs = []
    for p in crops:
        enhance_file(p, p.with_suffix(".ref.tif"), Settings(model), overwrite=True)
        refs.append(io.read(p.with_suffix(".ref.tif")).array())
    tokens = [add_token(tmp / "tokens", f"client{i}") for i in range(clients)]
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(tmp / "server.log", "wb")
    server = subprocess.Popen([sys.executable, "-m", "hires_domain", "serve", "--port", str(port), "--jobs", str(jobs),
                               "--data-dir", str(tmp / "data"), "--tokens", str(tmp / "tokens")],
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    rss, latencies, received, handler, errors, mismatches, done = [], [], [], [], [], [], []
    later = []  # False: a client's first submit (all clients send theirs at the same instant)
    rss_half = []
    lock = threading.Lock()
    try:
        end = time.monotonic() + 60
        while time.monotonic() < end:
            try:
                if httpx.get(url + "/v1/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        proc = psutil.Process(server.pid)
        stop = threading.Event()

        def sample():
            while not stop.is_set():
                rss.append((proc.memory_info().rss, sum(c.memory_info().rss for c in proc.children())))
                stop.wait(0.25)

        deadline = time.monotonic() + max_seconds

        def client(i: int):
            with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {tokens[i]}"}, timeout=60) as c:
                for t in range(tasks):
                    k = (i * tasks + t) % len(crops)
                    try:
                        t0 = time.perf_counter()
                        with open(crops[k], "rb") as f:
                            r = c.post("/v1/images/upscale", files={"file": (crops[k].name, f)}, data={"model": model})
                        took = time.perf_counter() - t0
                        if r.status_code != 202:
                            raise RuntimeError(f"submit {r.status_code}: {r.text}")
                        with lock:
                            latencies.append(took)
                            later.append(t > 0)
                            parts = dict(m.split(";dur=") for m in r.headers["Server-Timing"].split(", "))
                            received.append(float(parts["receive"]))
                            handler.append(float(parts["queue"]))
                        task = r.json()["task_id"]
                        while True:
                            s = c.get(f"/v1/tasks/{task}").json()
                            if s["status"] in ("done", "failed", "cancelled"):
                                break
                            if time.monotonic() > deadline:
                                raise RuntimeError("deadline passed")
                            time.sleep(POLL_S)
                        if s["status"] != "done":
                            raise RuntimeError(f"task {s['status']}: {s['error']}")
                        got = _decode(c.get(f"/v1/tasks/{task}/result").content).astype(np.float32)
                        with lock:
                            done.append(task)
                            if len(done) == clients * tasks // 2:
                                rss_half.append(proc.memory_info().rss)
                            if not np.array_equal(got, refs[k]):
                                mismatches.append(task)
                    except Exception as exc:  # noqa: BLE001 - every failure is counted and reported
                        with lock:
                            errors.append(f"client {i}: {type(exc).__name__}: {exc}")
                        return

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        start = time.monotonic()
        threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()) + 30)
        wall = time.monotonic() - start
        stop.set()
        sampler.join()
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(10)
        log.close()
    lat = np.array(latencies) * 1000
    server_rss = np.array([r[0] for r in rss]) / 2**20
    return {
        "clients": clients, "tasks_per_client": tasks, "jobs": jobs, "model": model, "crop": size,
        "tasks_done": len(done), "errors": errors, "mismatches": len(mismatches), "wall_s": round(wall, 1),
        "submit_ms": _percentiles(lat),  # as the clients saw it
        # the submits after each client's first: made while the workers are busy with earlier tasks,
        # not in the opening burst of all clients at once
        "submit_ms_after_first": _percentiles(lat[np.array(later, dtype=bool)]),
        # inside the server (its Server-Timing header): receiving + parsing the body, then checking,
        # storing and queueing the task
        "submit_receive_ms": _percentiles(np.array(received)),
        "submit_queue_ms": _percentiles(np.array(handler)),
        "server_rss_mib": {"first": round(float(server_rss[0]), 1), "peak": round(float(server_rss.max()), 1),
                           "half_done": round(rss_half[0] / 2**20, 1) if rss_half else None,
                           "last": round(float(server_rss[-1]), 1)} if server_rss.size else None,
        "workers_rss_mib_peak": round(max(r[1] for r in rss) / 2**20, 1) if rss else None,
        "cpus": os.cpu_count(),
    }


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--tasks", type=int, default=2, help="tasks per client")
    ap.add_argument("--jobs", type=int, default=2, help="server worker processes")
    ap.add_argument("--size", type=int, default=32, help="crop side, input pixels")
    ap.add_argument("--model", default="bicubic")
    ap.add_argument("--max-seconds", type=float, default=120.0)
    ap.add_argument("--json", type=Path, help="write the result here")
    a = ap.parse_args(argv)
    result = run(a.clients, a.tasks, a.jobs, a.size, a.model, a.max_seconds)
    text = json.dumps(result, indent=2)
    print(text)
    if a.json:
        a.json.write_text(text + "\n")
    return result


if __name__ == "__main__":
    main()
