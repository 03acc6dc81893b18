"""The HTTP API (FastAPI): submit, poll, fetch, cancel; models; the page at ``/``."""

from __future__ import annotations

import contextlib
import functools
import logging
import shutil
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from fastapi import Depends, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from starlette.datastructures import UploadFile

from ..errors import HiresError, one_line
from .runner import remove_files, settings_for
from .security import Limits, owner_of, under_root
from .store import FINISHED, Store
from .uploads import CHUNK, inspect_source, output_format, place_upload

log = logging.getLogger("hires.serve")
STATIC = Path(__file__).parent / "static"
FIELDS = {"model": str, "scale_factor": int, "tile": int, "overlap": int, "output_format": str,
          "steps": int, "seed": int, "samples": int}
MEDIA = {".tif": "image/tiff", ".gz": "application/gzip", ".zip": "application/zip"}


@dataclass
class Config:
    data_dir: Path
    limits: Limits
    tokens: dict[str, str] | None = None  # sha256 → name; None: no tokens, local use only
    allow_root: Path | None = None
    pool: object | None = None  # has start() and stop(): the workers


class ApiError(Exception):
    """An answer other than 2xx: status and one line a person understands."""

    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers


class TooLarge(Exception):
    pass


def _error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": one_line(message)}, status_code=status, headers=headers)


class BodyLimit:
    """ASGI middleware: a request body above ``max_bytes`` gets 413, by its Content-Length before
    anything is read, or (chunked uploads) as soon as the bytes received pass the limit."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return await _error(413, self._message())(scope, receive, send)
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise TooLarge(self._message())
            return message

        await self.app(scope, counted, send)

    def _message(self) -> str:
        return f"upload too large: the limit is {self.max_bytes} bytes"


def _iso(t: float | None) -> str | None:
    return None if t is None else datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="milliseconds")


def _fields(raw: dict) -> dict:
    """Typed request fields; unknown names and unreadable values are one-line errors."""
    unknown = sorted(set(raw) - set(FIELDS) - {"source"})
    if unknown:
        raise ApiError(400, f"unknown field(s) {', '.join(unknown)}; known: {', '.join(['source', *FIELDS])}")
    out = {}
    for name, kind in FIELDS.items():
        value = raw.get(name)
        if value is None or value == "":
            continue
        try:
            if kind is int and (isinstance(value, bool) or not isinstance(value, (int, str))):
                raise ValueError
            out[name] = kind(value)
        except (TypeError, ValueError):
            raise ApiError(400, f"field '{name}' must be {'an integer' if kind is int else 'a string'}, "
                                f"got {str(value)[:40]!r}") from None
    out.setdefault("model", "bicubic")
    return out


def _copy_upload(upload: UploadFile, dest: Path) -> None:
    upload.file.seek(0)
    with open(dest, "wb") as f:
        shutil.copyfileobj(upload.file, f, CHUNK)


@functools.lru_cache(maxsize=None)
def _model_for_checks(name: str):
    """One instance per model name in the server process, for checks only (workers run models):
    a submit does not load weights again."""
    from ..models import get_model

    return get_model(name)


def _warm_up() -> None:
    """Import what a submit needs (torch, GDAL, the model registry) before the first request,
    so that a burst of first submits does not queue behind these imports."""
    from .. import io  # noqa: F401

    settings_for({"model": "bicubic"})
    _model_for_checks("bicubic")


def _check_model(params: dict, settings, kind: str, path: Path) -> dict:
    """Model, scale, diffusion options (``settings``, from ``settings_for``) and input
    domain/bands checked before the task is queued."""
    from .. import io

    model = _model_for_checks(settings.model)
    channels, names = model.info.bands or 1, ()
    if kind == "raster":  # opened lazily: the header only
        image = io.read(path)
        channels, names = image.channels, image.band_names
    model.check(settings.scale, channels, "raster" if kind == "raster" else "medical", names)
    return {**params, "scale_factor": settings.scale, "unit": "tiles" if settings.sampling is None else "steps"}


def create_app(config: Config) -> FastAPI:
    store = Store(config.data_dir)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        await run_in_threadpool(_warm_up)
        requeued, failed = store.recover()
        if requeued or failed:
            log.info("restart: %d running task(s) queued again, %d failed", len(requeued), len(failed))
        _sweep(store)
        if config.pool is not None:
            config.pool.start()
        yield
        if config.pool is not None:
            config.pool.stop()

    app = FastAPI(title="hires-domain upscale API", version="1", lifespan=lifespan,
                  description="Asynchronous super-resolution of DICOM/NIfTI volumes and satellite rasters.")
    app.add_middleware(BodyLimit, max_bytes=config.limits.max_upload)

    @app.exception_handler(ApiError)
    async def api_error(request, exc: ApiError):
        return _error(exc.status, exc.message, exc.headers)

    @app.exception_handler(HiresError)
    async def hires_error(request, exc: HiresError):
        return _error(400, str(exc))

    @app.exception_handler(TooLarge)
    async def too_large(request, exc: TooLarge):
        return _error(413, str(exc))

    async def owner(request: Request) -> str:  # async: no thread hop (cheap, runs on every call)
        name = owner_of(request.headers.get("authorization"), config.tokens)
        if name is None:
            raise ApiError(401, "missing or unknown token: send 'Authorization: Bearer TOKEN'",
                           {"WWW-Authenticate": "Bearer"})
        return name

    def own_task(task_id: str, who: str) -> dict:
        task = store.get(task_id, owner=who)
        if task is None:
            raise ApiError(404, f"no task {task_id[:64]}")
        return task

    def queue(who: str, params: dict, upload: UploadFile | None, source: str | None):
        """Check a request, store its input and create the task (one thread hop per submit);
        returns (task id, input kind, params)."""
        settings = settings_for(params)  # unknown model, bad scale or options: 400 before any copying
        if store.count_active(who) >= config.limits.max_queued:
            raise ApiError(429, f"this token has {config.limits.max_queued} tasks queued or running, the limit; "
                                "wait for some to finish")
        task_id = store.new_id()
        d = store.task_dir(task_id)
        d.mkdir(parents=True)
        try:
            if upload is not None:
                _copy_upload(upload, d / "upload")
                path, kind = place_upload(d / "upload", d, config.limits)
            else:
                path, kind = inspect_source(under_root(source, config.allow_root), d, config.limits)
            params["output_format"] = output_format(kind, params.get("output_format"))
            params = _check_model(params, settings, kind, path)
        except BaseException:
            shutil.rmtree(d, ignore_errors=True)
            raise
        store.create(task_id, who, {**params, "input": str(path), "kind": kind})
        return task_id, kind, params

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page():
        return HTMLResponse((STATIC / "index.html").read_text())

    @app.get("/v1/health")
    async def health():
        return {"status": "ok", "tokens": config.tokens is not None}

    models_cache: list = []

    @app.get("/v1/models")
    def models(who: str = Depends(owner)):
        """Every model: scales, default scale, bands, domains, family and its card."""
        if not models_cache:
            from ..models import available, get_model

            for name in available():
                m = get_model(name)
                meta = getattr(m, "meta", {})
                models_cache.append({**asdict(m.info), "default_scale": m.info.default_scale,
                                     "training": meta.get("training", {}), "input_domain": m.input_domain})
        return {"models": models_cache}

    @app.post("/v1/images/upscale", status_code=202, openapi_extra={"requestBody": {"content": {
        "multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
            "file": {"type": "string", "format": "binary"},
            **{k: {"type": "integer" if t is int else "string"} for k, t in FIELDS.items()}}}},
        "application/json": {"schema": {"type": "object", "required": ["source"], "properties": {
            "source": {"type": "string"}, **{k: {"type": "integer" if t is int else "string"}
                                            for k, t in FIELDS.items()}}}}}}})
    async def upscale(request: Request, who: str = Depends(owner)):
        """Queue one input (a multipart ``file`` or a JSON ``source`` under --allow-root); 202 with
        the task id. Fields: model, scale_factor, tile, overlap, output_format (cog, gtiff, nifti,
        dicom-zip), and for diffusion models steps, seed, samples."""
        start = time.perf_counter()
        ctype = request.headers.get("content-type", "")
        upload = None
        if ctype.startswith("multipart/form-data"):
            form = await request.form(max_files=1, max_fields=len(FIELDS) + 1)
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                raise ApiError(400, "a multipart upload needs the file in a field named 'file'")
            raw = {k: v for k, v in form.items() if k != "file"}
            if "source" in raw:
                raise ApiError(400, "give either an uploaded 'file' or a JSON 'source', not both")
        elif ctype.startswith("application/json"):
            try:
                raw = await request.json()
            except ValueError:
                raise ApiError(400, "the body is not valid JSON") from None
            if not isinstance(raw, dict) or not isinstance(raw.get("source"), str):
                raise ApiError(400, "a JSON request needs a 'source' path (string)")
        else:
            raise ApiError(415, "send multipart/form-data with a 'file' field, or JSON with a 'source' path")
        params = _fields(raw)
        received = time.perf_counter()  # the body is in (read from the client and parsed)
        task_id, kind, params = await run_in_threadpool(queue, who, params, upload, raw.get("source"))
        log.info("task %s queued (owner %s, %s input, model %s)", task_id, who, kind, params["model"])
        now = time.perf_counter()
        timing = f"receive;dur={(received - start) * 1000:.1f}, queue;dur={(now - received) * 1000:.1f}"
        return JSONResponse({"task_id": task_id, "status": "queued"}, status_code=202,
                            headers={"Location": f"/v1/tasks/{task_id}", "Server-Timing": timing})

    @app.get("/v1/tasks/{task_id}")
    async def task_status(task_id: str, who: str = Depends(owner)):  # async: polled often, a sub-ms read
        """Status, progress (tiles or diffusion steps done / total), timings, error, warning, links."""
        t = own_task(task_id, who)
        p, now = t["params"], time.time()
        base = f"/v1/tasks/{task_id}"
        d = store.task_dir(task_id)
        links = {"self": base}
        if t["status"] == "done":
            links.update({k: f"{base}/{k}" for k in t["outputs"]})
        previews = {n: f"{base}/preview/{n}" for n in ("input", "result", "uncertainty")
                    if (d / f"{n}.png").exists() and (n == "input" or t["status"] == "done")}
        return {
            "task_id": task_id, "status": t["status"], "model": p["model"], "scale_factor": p["scale_factor"],
            "output_format": p["output_format"], "input_kind": p["kind"],
            "progress": {"done": t["done"], "total": t["total"], "unit": p["unit"],
                         "fraction": round(t["done"] / t["total"], 4) if t["total"] else
                         (1.0 if t["status"] == "done" else 0.0)},
            "created": _iso(t["created"]), "started": _iso(t["started"]), "finished": _iso(t["finished"]),
            "timings": {"queued_s": round(((t["started"] or now) - t["created"]), 3),
                        "running_s": None if t["started"] is None else round((t["finished"] or now) - t["started"], 3)},
            "error": t["error"], "warning": t["warning"], "links": links, "previews": previews,
        }

    def _file(task_id: str, who: str, key: str) -> FileResponse:
        t = own_task(task_id, who)
        if t["status"] != "done":
            why = f": {t['error']}" if t["error"] else ""
            raise ApiError(409, f"task {task_id} is {t['status']}{why}; its files are served when it is done")
        name = t["outputs"].get(key)
        if name is None:
            raise ApiError(404, f"task {task_id} has no {key} (diffusion models with samples > 1 give one)")
        path = store.task_dir(task_id) / name
        return FileResponse(path, filename=f"{task_id}-{name}", media_type=MEDIA.get(path.suffix))

    @app.get("/v1/tasks/{task_id}/result")
    def result(task_id: str, who: str = Depends(owner)):
        """The output file (a zip of the derived series for dicom-zip), once the task is done."""
        return _file(task_id, who, "result")

    @app.get("/v1/tasks/{task_id}/uncertainty")
    def uncertainty(task_id: str, who: str = Depends(owner)):
        """The per-pixel standard deviation over the samples (diffusion models, samples > 1)."""
        return _file(task_id, who, "uncertainty")

    @app.get("/v1/tasks/{task_id}/preview/{which}")
    def preview(task_id: str, which: str, who: str = Depends(owner)):
        """PNG previews of one centre crop: input, result, uncertainty."""
        t = own_task(task_id, who)
        path = store.task_dir(task_id) / f"{which}.png"
        if which not in ("input", "result", "uncertainty") or not path.exists() or (
                which != "input" and t["status"] != "done"):
            raise ApiError(404, f"no {which[:20]} preview for task {task_id}")
        return FileResponse(path, media_type="image/png")

    @app.delete("/v1/tasks/{task_id}")
    def cancel(task_id: str, who: str = Depends(owner)):
        """Cancel a queued or running task (a running one stops within one tile) and delete its
        files; a finished task is deleted with its files."""
        own_task(task_id, who)
        before = store.cancel(task_id)
        if before == "running":  # its worker stops at the next tile and removes the files
            return {"task_id": task_id, "status": "cancelled"}
        remove_files(store, task_id)
        if before in FINISHED:
            store.delete(task_id)
            return {"task_id": task_id, "status": "deleted"}
        return {"task_id": task_id, "status": "cancelled"}

    return app


def _sweep(store: Store) -> None:
    """At startup: files of cancelled tasks and of submissions that never became tasks go."""
    root = store.data_dir / "tasks"
    for d in root.iterdir() if root.exists() else ():
        if store.status(d.name) in (None, "cancelled"):
            shutil.rmtree(d, ignore_errors=True)


def serve(config: Config, host: str, port: int) -> None:
    """Run the API with uvicorn until Ctrl-C / SIGTERM (workers stop within one tile)."""
    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(levelname)s:     %(message)s")
    uvicorn.run(create_app(config), host=host, port=port, log_level="info")
