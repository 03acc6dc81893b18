"""A small Python client of the ``hires serve`` API (needs httpx).

    from hires_domain import client
    c = client.Client("http://gpu-box:8000", token="...")
    task = c.submit("scene.tif", model="s2-sr-x4")
    c.wait(task)
    c.download(task, "scene_x4.tif")
    task = c.submit_image(open("ct.nii.gz", "rb").read(), model="ct-denoise", strength=0.5)  # JSON, base64
    task = c.submit_image(url="https://pacs.example.org/ct.nii.gz", model="ct-sr-x2")  # fetched by the server
"""

from __future__ import annotations

import base64
import time
from pathlib import Path

from .errors import HiresError
from .io import atomic_output


class ServerError(HiresError):
    """A non-2xx answer: ``status`` and the server's one-line message."""

    def __init__(self, status: int, message: str):
        super().__init__(f"{status}: {message}")
        self.status = status


ACTIVE = ("queued", "running", "processing")  # 'processing': the seed API's word for queued or running


class Client:
    def __init__(self, url: str, token: str | None = None, timeout: float = 60.0):
        import httpx

        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _check(self, r):
        if r.status_code >= 400:
            try:
                message = r.json().get("error", r.text)
            except ValueError:
                message = r.text
            raise ServerError(r.status_code, message)
        return r

    def submit(self, path=None, *, source: str | None = None, **fields) -> str:
        """Queue ``path`` (uploaded) or ``source`` (a path under the server's --allow-root);
        fields: model, scale_factor, strength, tile, overlap, output_format, steps, seed, samples.
        Returns the task id."""
        if (path is None) == (source is None):
            raise HiresError("give a file path to upload or a source path on the server, not both")
        fields = {k: v for k, v in fields.items() if v is not None}
        if source is not None:
            r = self.http.post("/v1/images/upscale", json={"source": source, **fields})
        else:
            with open(path, "rb") as f:
                r = self.http.post("/v1/images/upscale", files={"file": (Path(path).name, f)},
                                   data={k: str(v) for k, v in fields.items()})
        return self._check(r).json()["task_id"]

    def submit_image(self, image=None, *, url: str | None = None, **fields) -> str:
        """Queue an image sent in the JSON body (the seed's form ``{"source_image": ...}``):
        ``image`` as bytes or a file path (sent as base64; the body counts against the
        server's --max-upload, so multipart ``submit`` suits large files better), or ``url``, an
        http(s) URL that the server fetches (its host must be in the server's --allow-url-host).
        Fields as ``submit``: model, scale_factor, strength, tile, overlap, output_format, steps,
        seed, samples. Returns the task id."""
        if (image is None) == (url is None):
            raise HiresError("give the image (bytes or a file path) or a URL, not both")
        if url is None:
            data = image if isinstance(image, (bytes, bytearray, memoryview)) else Path(image).read_bytes()
            url = base64.b64encode(data).decode("ascii")
        body = {"source_image": url, **{k: v for k, v in fields.items() if v is not None}}
        return self._check(self.http.post("/v1/images/upscale", json=body)).json()["task_id"]

    def status(self, task_id: str) -> dict:
        return self._check(self.http.get(f"/v1/tasks/{task_id}")).json()

    def wait(self, task_id: str, poll: float = 0.5, timeout: float | None = None) -> dict:
        """Poll until the task is done (its status); failed or cancelled raise HiresError. Queued,
        running and 'processing' (the seed API's word for either) mean wait."""
        end = None if timeout is None else time.monotonic() + timeout
        while True:
            s = self.status(task_id)
            if s["status"] == "done":
                return s
            if s["status"] in ("failed", "cancelled"):
                raise HiresError(f"task {task_id} {s['status']}: {s['error'] or 'cancelled'}")
            if s["status"] not in ACTIVE:
                raise HiresError(f"task {task_id}: unknown status {s['status']!r}")
            if end is not None and time.monotonic() > end:
                raise HiresError(f"task {task_id} still {s['status']} after {timeout:g} s")
            time.sleep(poll)

    def download(self, task_id: str, dst, what: str = "result") -> Path:
        """Stream the result (or ``what="uncertainty"``) to ``dst``, written atomically."""
        dst = Path(dst)
        with self.http.stream("GET", f"/v1/tasks/{task_id}/{what}") as r:
            if r.status_code >= 400:
                r.read()
                self._check(r)
            with atomic_output(dst) as tmp, open(tmp, "wb") as f:
                for chunk in r.iter_bytes(1 << 20):
                    f.write(chunk)
        return dst

    def cancel(self, task_id: str) -> dict:
        return self._check(self.http.delete(f"/v1/tasks/{task_id}")).json()

    def models(self) -> list[dict]:
        return self._check(self.http.get("/v1/models")).json()["models"]


def submit(url: str, path=None, token: str | None = None, **fields) -> str:
    """One-shot: queue ``path`` (or ``source=...``) on the server at ``url``; returns the task id."""
    with Client(url, token) as c:
        return c.submit(path, **fields)
