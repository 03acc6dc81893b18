"""`hires serve`: the asynchronous upscale API (FastAPI), its SQLite task store and workers.

Needs the ``serve`` extra (fastapi, uvicorn, python-multipart); the rest of hires-domain does not.
"""

from __future__ import annotations

from ..errors import HiresError


def require() -> None:
    """One-line HiresError when the serve extra is not installed."""
    missing = []
    for name in ("fastapi", "uvicorn", "multipart"):
        try:
            __import__(name)
        except ImportError:
            missing.append("python-multipart" if name == "multipart" else name)
    if missing:
        raise HiresError(f"hires serve needs {', '.join(missing)}: pip install 'hires-domain[serve]'")


def start(host: str, port: int, jobs: int, scheduler: str | None, data_dir, tokens_file, max_upload: str,
          max_unzipped: str | None, allow_root, max_running: int, max_queued: int, device: str, say,
          allow_url_hosts=()) -> None:
    """``hires serve``: check the options, then run the API until stopped. ``say`` prints a line.
    ``allow_url_hosts``: the --allow-url-host values (host names, or comma lists of them)."""
    from pathlib import Path

    from .security import Limits, is_loopback, load_tokens, parse_size

    from ..cluster import wants_cluster

    require()
    wants_cluster(jobs, scheduler)  # checks --jobs, and refuses both at once
    tokens = load_tokens(tokens_file) if tokens_file is not None else None
    if tokens is not None and not tokens:
        raise HiresError(f"tokens file {tokens_file} holds no tokens: add one with --add-token NAME")
    if tokens is None and not is_loopback(host):
        raise HiresError(f"refusing to serve {host} without --tokens FILE: without tokens the server "
                         "binds to localhost only")
    if allow_root is not None and not Path(allow_root).is_dir():
        raise HiresError(f"--allow-root {allow_root} is not a directory")
    from .source_image import parse_hosts

    url_hosts = parse_hosts(allow_url_hosts)
    upload = parse_size(max_upload)
    limits = Limits(max_upload=upload, max_unzipped=parse_size(max_unzipped) if max_unzipped else 4 * upload,
                    max_running=max_running, max_queued=max_queued)
    from .app import Config, serve
    if scheduler:
        from .dask_pool import DaskPool

        pool = DaskPool(Path(data_dir), scheduler, max_running, device, say)
        workers = f"{pool.workers} Dask worker(s) at {scheduler}"
    else:
        from .runner import LocalPool

        pool, workers = LocalPool(Path(data_dir), jobs, max_running, device), f"{jobs} worker(s)"
    if tokens is None:
        say(f"no --tokens: bound to {host} only; every local user shares one task list")
    say(f"hires serve: http://{host}:{port}/ (API docs at /docs), {workers}, data in {data_dir}")
    if url_hosts:
        say(f"source_image URLs may name: {', '.join(sorted(url_hosts))}")
    serve(Config(Path(data_dir), limits, tokens, Path(allow_root) if allow_root else None, pool, url_hosts),
          host, port)
