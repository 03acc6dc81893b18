"""Executing tasks: ``execute`` runs one claimed task; ``LocalPool`` keeps N worker processes
that claim tasks from the store. ``execute`` needs only the store, so another executor (a Dask
cluster sharing the data directory) can run the same function."""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import signal
import threading
import time
import warnings
import zipfile
from pathlib import Path

from ..errors import HiresError, one_line
from .store import Store
from .uploads import RESULT_NAMES

log = logging.getLogger("hires.serve")
POLL_S = 0.1  # how often an idle worker looks for queued tasks
PROGRESS_EVERY_S = 0.2  # at most this often a running task's progress is written
NICE = 5  # workers yield the CPU to the API process, so that submitting and polling stay quick


class Stopped(BaseException):
    """Raised in the progress callback: the task was cancelled, or the worker must stop."""


def settings_for(params: dict, device: str = "auto"):
    """The pipeline Settings of a task's parameters (validates model, scale, strength and diffusion
    options)."""
    from ..pipeline import Settings

    given = {k: params[k] for k in ("steps", "seed", "samples", "strength") if params.get(k) is not None}
    return Settings(params["model"], params.get("scale_factor"), params.get("tile"), params.get("overlap"),
                    device=device, **given)  # tile/overlap None: automatic, as in the CLI


def wants_uncertainty(settings) -> bool:
    """Diffusion runs of more than one sample also give the per-pixel std over the samples."""
    return settings.sampling is not None and settings.sampling.samples > 1


def _zip_series(series: Path, dst: Path) -> None:
    from ..io import atomic_output

    with atomic_output(dst) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in sorted(series.iterdir()):
            zf.write(f, f"series/{f.name}")


def execute(store: Store, task: dict, device: str = "auto", must_stop=lambda: None) -> None:
    """Run a claimed (running) task to done, failed or cancelled. Results appear under their
    final names only when complete (atomic rename), and the task is marked done after that.
    ``must_stop()`` says why the worker must stop, or None: 'shutdown' (SIGTERM: the task is
    queued again, the attempt not counted) or 'orphaned' (the server is gone: the task stays
    running for the next start to re-queue); either way it stops within one tile."""
    from ..pipeline import enhance_file
    from .previews import write_previews

    tid, params = task["id"], task["params"]
    d = store.task_dir(tid)
    src = Path(params["input"])
    last = [0.0]

    def progress(done: int, total: int) -> None:
        now = time.monotonic()
        if now - last[0] >= PROGRESS_EVERY_S or done == total:
            last[0] = now
            store.progress(tid, done, total)
        if must_stop() or store.status(tid) != "running":
            raise Stopped(must_stop())

    started = time.monotonic()
    log.info("task %s started (owner %s, model %s)", tid, task["owner"], params["model"])
    try:
        settings = settings_for(params, device)
        write_previews(src, None, settings.scale, d)
        fmt = params["output_format"]
        name = RESULT_NAMES[fmt]
        series = fmt == "dicom-zip"  # the pipeline writes a derived series, zipped afterwards
        dst = d / ("result-series" if series else name)
        unc = None
        if wants_uncertainty(settings):
            unc = d / ("uncertainty-series" if series else name.replace("result", "uncertainty"))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", UserWarning)
            summary = enhance_file(src, dst, settings, overwrite=True, cog=fmt == "cog", progress=progress,
                                   uncertainty=unc)
        write_previews(src, dst, settings.scale, d, unc)
        outputs = {"result": name}
        if unc is not None:
            outputs["uncertainty"] = name.replace("result", "uncertainty")
        if series:
            for key in outputs:
                _zip_series(d / f"{key}-series", d / outputs[key])
                shutil.rmtree(d / f"{key}-series")
        notes = list(dict.fromkeys(summary.notes + [str(w.message) for w in caught
                                                    if issubclass(w.category, UserWarning)]))
        if store.finish(tid, "done", warning=one_line("; ".join(notes)) if notes else None, outputs=outputs):
            log.info("task %s done in %.1f s", tid, time.monotonic() - started)
        elif store.status(tid) == "cancelled":  # cancelled meanwhile (another state: another run finished it)
            remove_files(store, tid)
    except Stopped as stop:
        if store.status(tid) == "cancelled":
            remove_files(store, tid)
            log.info("task %s cancelled", tid)
        elif stop.args[0] == "shutdown":
            store.requeue(tid)
            log.info("task %s interrupted by shutdown; it runs again at the next start", tid)
        else:
            log.info("task %s stopped: the server is gone; the next start runs it again", tid)
        return
    except HiresError as exc:
        _fail(store, tid, one_line(str(exc).replace(f"{d}/", "")))
    except Exception as exc:  # noqa: BLE001 - a task's failure must not end the worker
        log.error("task %s: internal error (%s)", tid, type(exc).__name__)  # no message: it may name patients
        _fail(store, tid, f"internal error ({type(exc).__name__}: {one_line(str(exc).replace(f'{d}/', ''))})")


def _fail(store: Store, tid: str, message: str) -> None:
    log.info("task %s failed", tid)
    if store.finish(tid, "failed", error=message):
        remove_files(store, tid, keep_previews=True)
    elif store.status(tid) == "cancelled":
        remove_files(store, tid)


def remove_files(store: Store, tid: str, keep_previews: bool = False) -> None:
    """Delete a task's files (all, or all but its input preview)."""
    d = store.task_dir(tid)
    if not d.exists():
        return
    for p in d.iterdir():
        if keep_previews and p.name == "input.png":
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    if not keep_previews:
        shutil.rmtree(d, ignore_errors=True)


def _worker(data_dir: str, max_running: int, device: str, parent: int, threads: int) -> None:
    """A worker process: claim, execute, repeat; ends when the server process is gone."""
    os.environ["OMP_NUM_THREADS"] = str(threads)  # the pipeline keeps this budget (``pipeline.use_threads``)
    import torch

    from ..models import keep_models

    keep_models()  # one task at a time: each model's weights load once per worker
    torch.set_num_threads(threads)
    if hasattr(os, "nice"):  # not on Windows
        os.nice(NICE)
    stopping = []
    signal.signal(signal.SIGTERM, lambda *a: stopping.append(True))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C in a terminal reaches the server, which stops us
    logging.basicConfig(level=logging.INFO, format="%(levelname)s:     %(message)s")
    store = Store(Path(data_dir))

    def must_stop() -> str | None:
        return "shutdown" if stopping else "orphaned" if os.getppid() != parent else None

    while not must_stop():
        task = store.claim(max_running, os.getpid())
        if task is None:
            time.sleep(POLL_S)
            continue
        execute(store, task, device, must_stop)


class LocalPool:
    """``jobs`` worker processes on this machine (spawned: no state shared with the server). A
    worker that dies (killed, out of memory) is replaced, and its task queued again or failed."""

    def __init__(self, data_dir: Path, jobs: int, max_running: int, device: str = "auto"):
        if jobs < 1:
            raise HiresError(f"--jobs must be at least 1, got {jobs}")
        threads = int(os.environ.get("OMP_NUM_THREADS") or max(1, (os.cpu_count() or 1) // jobs))
        self.args = (str(data_dir), max_running, device, os.getpid(), threads)
        self.store = Store(Path(data_dir))
        self.jobs = jobs
        self.procs: list = []
        self.stopping = threading.Event()

    def _spawn(self):
        p = multiprocessing.get_context("spawn").Process(target=_worker, args=self.args, daemon=True,
                                                         name="hires-worker")
        p.start()
        return p

    def start(self) -> None:
        self.procs = [self._spawn() for _ in range(self.jobs)]
        threading.Thread(target=self._watch, daemon=True, name="hires-worker-watch").start()

    def _watch(self) -> None:
        while not self.stopping.wait(1.0):
            for i, p in enumerate(self.procs):
                if p.is_alive() or self.stopping.is_set():
                    continue
                requeued, failed = self.store.recover(worker=p.pid)
                log.info("worker %d died (exit code %s): %d task(s) queued again, %d failed; starting another",
                         p.pid, p.exitcode, len(requeued), len(failed))
                self.procs[i] = self._spawn()

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM: each worker stops within one tile (its task runs again at the next start)."""
        self.stopping.set()
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            p.join(timeout)
            if p.is_alive():
                p.kill()
