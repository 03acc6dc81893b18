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
from typing import Literal

from fastapi import Depends, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.routing import Match

from . import schema, source_image
from ..errors import HiresError, one_line
from .runner import remove_files, settings_for
from .security import Limits, TooLarge, owner_of, under_root
from .store import FINISHED, Store
from .uploads import CHUNK, inspect_source, output_format, place_upload

log = logging.getLogger("hires.serve")
STATIC = Path(__file__).parent / "static"
FIELDS = {"model": str, "scale_factor": int, "tile": int, "overlap": int, "output_format": str,
          "steps": int, "seed": int, "samples": int, "strength": float}
JSON_ONLY = ("source", "source_image", "enhance_face")
KINDS = {int: "an integer", float: "a number", str: "a string"}
JSON_TYPES = {int: int, float: (int, float), str: str}
NO_FACES = ("'enhance_face' is not supported: face restoration is for photographs of people, and this service "
            "enhances CT/MR volumes (DICOM, NIfTI) and satellite rasters (GeoTIFF/COG, JPEG 2000, Sentinel-2); "
            "send false or leave it out")
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
MEDIA = {".tif": "image/tiff", ".gz": "application/gzip", ".zip": "application/zip"}


@dataclass
class Config:
    data_dir: Path
    limits: Limits
    tokens: dict[str, str] | None = None  # sha256 → name; None: no tokens, local use only
    allow_root: Path | None = None
    pool: object | None = None  # has start() and stop(): the workers
    allow_url_hosts: frozenset[str] = frozenset()  # hosts a JSON source_image URL may name


class ApiError(Exception):
    """An answer other than 2xx: status and one line a person understands."""

    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers


def _error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    """``{"error": message}`` on one line; text echoed from a request that is not valid Unicode
    (lone surrogates in JSON strings) is escaped, not a 500."""
    text = one_line(message).encode("utf-8", "backslashreplace").decode("utf-8")
    return JSONResponse({"error": text}, status_code=status, headers=headers)


class BodyLimit:
    """ASGI middleware: a POST body above ``max_bytes`` gets 413, by its Content-Length before
    anything is read, or (chunked uploads) as soon as the bytes received pass the limit. (No
    other route reads a body.)"""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST":
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


def _fields(raw: dict, json: bool) -> dict:
    """Typed request fields; unknown names and unreadable values are one-line errors. Form
    fields are text ("" means the default); JSON values must have their own JSON type."""
    known = [*(JSON_ONLY if json else ()), *FIELDS]
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise ApiError(400, f"unknown field(s) {', '.join(unknown)[:200]}; known: {', '.join(known)}")
    out = {}
    for name, kind in FIELDS.items():
        if name not in raw or not json and raw[name] == "":
            continue
        value = raw[name]
        try:
            if isinstance(value, bool) or not isinstance(value, JSON_TYPES[kind] if json else str):
                raise ValueError
            out[name] = kind(value)
        except (TypeError, ValueError):
            got = "null" if value is None else repr(value)[:40]
            raise ApiError(400, f"field '{name}' must be {KINDS[kind]}, got {got}") from None
    out.setdefault("model", "bicubic")
    return out


def _json_input(raw: dict) -> tuple[str, str]:
    """The JSON form's input: ('source', path) or ('source_image', base64 or URL)."""
    given = [k for k in ("source", "source_image") if k in raw]
    if len(given) != 1:
        raise ApiError(400, "a JSON request needs either 'source_image' (the file as base64, or an http(s) URL) "
                            "or 'source' (a path under the server's --allow-root)"
                       + (", not both" if given else ""))
    name, value = given[0], raw[given[0]]
    if not isinstance(value, str) or not value:
        raise ApiError(400, f"field '{name}' must be a non-empty string")
    face = raw.get("enhance_face", False)
    if not isinstance(face, bool):
        raise ApiError(400, "field 'enhance_face' must be true or false (and only false is accepted)")
    if face:
        raise ApiError(400, NO_FACES)
    return name, value


def _allowed(app: FastAPI, scope: dict) -> list[str]:
    """The methods of every route whose path matches the request's (for a 405's Allow)."""
    methods = set()
    for route in app.router.routes:
        if route.matches(scope)[0] != Match.NONE:
            methods |= set(getattr(route, "methods", None) or ())
    return [m for m in METHODS if m in methods]


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

    def openapi():
        if app.openapi_schema is None:
            from ..models import available

            doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            app.openapi_schema = schema.finish(doc, available(), config.tokens is not None)
        return app.openapi_schema

    app.openapi = openapi

    @app.exception_handler(HTTPException)
    async def http_error(request, exc: HTTPException):
        """Starlette's own answers (unknown path, wrong method, unreadable form) as one-line errors;
        a 405 names every method of the path in Allow (Starlette names only the first route's)."""
        if exc.status_code == 405:
            allowed = _allowed(app, request.scope)
            return _error(405, f"{request.method[:20]} is not allowed here; use {', '.join(allowed)}",
                          {"Allow": ", ".join(allowed)})
        message = f"no such path {request.url.path[:100]}" if exc.status_code == 404 else str(exc.detail)
        return _error(exc.status_code, message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request, exc: RequestValidationError):
        first = (exc.errors() or [{}])[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        return _error(400, f"{where}: {first.get('msg', 'invalid request')}")

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

    def queue(who: str, params: dict, upload: UploadFile | None, source: tuple[str, str] | None):
        """Check a request, store its input (``upload``, or ``source``: ('source', path) or
        ('source_image', base64 or URL)) and create the task (one thread hop per submit);
        returns (task id, input kind, params)."""
        settings = settings_for(params)  # unknown model, bad scale or options: 400 before any copying
        if store.count_active(who) >= config.limits.max_queued:
            raise ApiError(429, f"this token has {config.limits.max_queued} tasks queued or running, the limit; "
                                "wait for some to finish")
        task_id = store.new_id()
        d = store.task_dir(task_id)
        d.mkdir(parents=True)
        try:
            if upload is not None or source[0] == "source_image":  # the same path for both
                if upload is not None:
                    _copy_upload(upload, d / "upload")
                else:
                    source_image.write(source[1], d / "upload", config.allow_url_hosts, config.limits.max_upload)
                path, kind = place_upload(d / "upload", d, config.limits)
            else:
                path, kind = inspect_source(under_root(source[1], config.allow_root), d, config.limits)
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

    @app.get("/v1/health", responses={200: {"model": schema.Health}})
    async def health():
        return {"status": "ok", "tokens": config.tokens is not None}

    models_cache: list = []

    @app.get("/v1/models", responses={200: {"model": schema.Models}})
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

    @app.post("/v1/images/upscale", status_code=202, responses={
        202: {"model": schema.Queued, "description": "queued; poll the task at Location",
              "headers": {"Location": {"schema": {"type": "string"}, "required": True,
                                       "description": "the task's status URL"}}},
        **schema.errors(400, 413, 415, 429)}, openapi_extra={"requestBody": {"required": True, "content": {
            "multipart/form-data": {"schema": {"$ref": "#/components/schemas/UpscaleForm"}},
            "application/json": {"schema": {"$ref": "#/components/schemas/UpscaleJson"},
                                 "examples": schema.JSON_EXAMPLES}}}})
    async def upscale(request: Request, who: str = Depends(owner)):
        """Queue one input; 202 with the task id. Either a multipart ``file``, or JSON with
        ``source_image`` (the file as base64, or an http(s) URL on a host listed by
        --allow-url-host; the seed's form) or ``source`` (a path under --allow-root). Fields:
        model, scale_factor, tile, overlap, output_format (cog, gtiff, nifti, dicom-zip),
        strength, and for diffusion models steps, seed, samples."""
        start = time.perf_counter()
        ctype = request.headers.get("content-type", "")
        upload = source = None
        if ctype.startswith("multipart/form-data"):
            form = await request.form(max_files=1, max_fields=len(FIELDS) + 1)
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                raise ApiError(400, "a multipart upload needs the file in a field named 'file'")
            raw = {k: v for k, v in form.items() if k != "file"}
            if "source" in raw:
                raise ApiError(400, "give either an uploaded 'file' or a JSON 'source', not both")
            params = _fields(raw, json=False)
        elif ctype.startswith("application/json"):
            try:
                raw = await request.json()
            except ValueError:
                raise ApiError(400, "the body is not valid JSON") from None
            if not isinstance(raw, dict):
                raise ApiError(400, "the JSON body must be an object")
            params = _fields(raw, json=True)
            source = _json_input(raw)
        else:
            raise ApiError(415, "send multipart/form-data with a 'file' field, or JSON with 'source_image' or 'source'")
        received = time.perf_counter()  # the body is in (read from the client and parsed)
        task_id, kind, params = await run_in_threadpool(queue, who, params, upload, source)
        log.info("task %s queued (owner %s, %s input, model %s)", task_id, who, kind, params["model"])
        now = time.perf_counter()
        timing = f"receive;dur={(received - start) * 1000:.1f}, queue;dur={(now - received) * 1000:.1f}"
        return JSONResponse({"task_id": task_id, "status": "queued"}, status_code=202,
                            headers={"Location": f"/v1/tasks/{task_id}", "Server-Timing": timing})

    @app.get("/v1/tasks/{task_id}", responses={200: {"model": schema.TaskStatus}, **schema.errors(404)})
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

    @app.get("/v1/tasks/{task_id}/result", responses={**schema.files(
        *MEDIA.values(), description="the result: GeoTIFF/COG, NIfTI (gzip) or a zip of a DICOM series"),
        **schema.errors(404, 409)})
    def result(task_id: str, who: str = Depends(owner)):
        """The output file (a zip of the derived series for dicom-zip), once the task is done."""
        return _file(task_id, who, "result")

    @app.get("/v1/tasks/{task_id}/uncertainty", responses={**schema.files(
        *MEDIA.values(), description="the per-pixel standard deviation, in the result's format"),
        **schema.errors(404, 409)})
    def uncertainty(task_id: str, who: str = Depends(owner)):
        """The per-pixel standard deviation over the samples (diffusion models, samples > 1)."""
        return _file(task_id, who, "uncertainty")

    @app.get("/v1/tasks/{task_id}/preview/{which}", responses={
        **schema.files("image/png", description="a PNG preview"), **schema.errors(400, 404)})
    def preview(task_id: str, which: Literal["input", "result", "uncertainty"], who: str = Depends(owner)):
        """PNG previews of one centre crop: input, result, uncertainty (none once cancelled)."""
        t = own_task(task_id, who)
        path = store.task_dir(task_id) / f"{which}.png"
        if not path.exists() or t["status"] == "cancelled" or which != "input" and t["status"] != "done":
            raise ApiError(404, f"no {which} preview for task {task_id}")
        return FileResponse(path, media_type="image/png")

    @app.delete("/v1/tasks/{task_id}", responses={200: {"model": schema.Cancelled}, **schema.errors(404)})
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
