"""A real `hires serve` subprocess for the serve tests (ephemeral port, killed with its workers)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("multipart")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``hires serve --port <free> ARGS`` in its own session; ``kill()`` ends it and its workers."""

    def __init__(self, tmp: Path, *args: str, data_dir: Path | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data_dir = data_dir or tmp / "data"
        self.log = tmp / f"server-{self.port}.log"
        self.args = ["--port", str(self.port), "--data-dir", str(self.data_dir), *args]
        self.proc = None
        self.start()

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "hires_domain", "serve", *self.args],
                                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"hires serve exited {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(self.url + "/v1/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.kill()
        raise RuntimeError(f"hires serve did not start: {self.log.read_text()[-2000:]}")

    def kill(self) -> None:
        """SIGKILL the server's whole session (server and worker processes)."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)
        self.proc = None

    def text_log(self) -> str:
        return self.log.read_text(errors="replace")


def crop_raster(src: Path, dst: Path, size: int, y0: int = 0, x0: int = 0) -> Path:
    """A real ``size``² window of a GeoTIFF, georeferencing kept."""
    import rasterio
    from rasterio.windows import Window

    with rasterio.open(src) as ds:
        w = Window(x0, y0, size, size)
        profile = {**ds.profile, "width": size, "height": size, "transform": ds.window_transform(w)}
        profile.pop("blockxsize", None), profile.pop("blockysize", None), profile.pop("tiled", None)
        data = ds.read(window=w)
    with rasterio.open(dst, "w", **profile) as out:
        out.write(data)
    return dst


def pixels(path: Path) -> np.ndarray:
    from hires_domain import io

    return io.read(path).array()


SLOW = dict(model="s2-ldm-x4", steps=6, samples=2, seed=0, tile=64, overlap=16)  # about 4 s on 2 cores


def wait_running(client, task: str, timeout: float = 120) -> dict:
    """Wait until ``task`` runs and has made progress; its status."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        s = client.status(task)
        if s["status"] == "running" and s["progress"]["done"] >= 1:
            return s
        assert s["status"] in ("queued", "running"), s
        time.sleep(0.1)
    raise AssertionError("task never ran")


@contextlib.contextmanager
def serving(tmp: Path, *args: str):
    """A server started with ``args``, a client of it and a 32² crop of the real Sentinel-2
    sample: (server, client, crop); the server and its workers are killed afterwards."""
    from hires_domain.client import Client
    from support import SAMPLES

    crop = crop_raster(SAMPLES / "s2_crop.tif", tmp / "crop32.tif", 32)
    server = Server(tmp, *args)
    try:
        yield server, Client(server.url), crop
    finally:
        server.kill()
