"""``hires batch``: enhance many inputs, in-process or on a Dask cluster, resumably.

Inputs are files, DICOM series directories, directories searched for supported files, globs,
or a manifest (CSV or JSON lines with ``input``, optional ``output``, ``model``, ``scale``).
Outputs mirror the input tree under the output directory; collisions and existing outputs are
refused before anything runs. Each item is one ``pipeline.enhance_file`` call (written to a
temporary name and renamed), so an output that exists is complete: ``--resume`` skips those.
Every finished item appends one JSON line to the results file; a lock file keeps a second run
off the same output directory.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import glob
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

from ..errors import HiresError, one_line
from ..io import RASTER_SUFFIXES
from ..io.common import is_temporary, remove_stale_temporaries
from ..pipeline import Settings

MEDICAL_SUFFIXES = (".nii", ".nii.gz", ".dcm")
LOCK_NAME = ".hires-batch.lock"
RESULTS_NAME = "results.jsonl"


@dataclass(frozen=True)
class Item:
    """One input and where its output goes; ``model``/``scale`` override the run's (manifest)."""

    input: str
    output: str
    model: str | None = None
    scale: int | None = None


@dataclass(frozen=True)
class Options:
    """The run's enhancement settings and output choices."""

    settings: Settings = Settings()
    cog: bool = False
    overwrite: bool = False


# ---------------------------------------------------------------- discovery


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def _is_dicom_dir(path: Path) -> bool:
    from ..io.dicom import is_dicom_file

    return any(f.is_file() and (f.suffix.lower() == ".dcm" or (not f.suffix and is_dicom_file(f)))
               for f in path.iterdir() if not f.name.startswith("."))


def _is_product(path: Path) -> bool:
    """A Sentinel-2 product as batch sees one (one item, never searched into): a ``.SAFE``
    directory, a zipped SAFE named ``*_MSIL*.zip``, or a directory holding all four 10 m band
    files. Stricter than ``enhance``'s test, so a directory of other rasters is still searched."""
    from ..io.s2_product import band_of

    name = path.name.upper()
    if path.is_file():
        return name.endswith(".ZIP") and "_MSIL" in name
    if not path.is_dir():
        return False
    if name.endswith(".SAFE"):
        return True
    try:
        found = [band_of(f.name) for f in path.iterdir() if f.is_file() and not f.name.startswith(".")]
    except OSError:
        return False
    return {"B02", "B03", "B04", "B08"} <= {b[0] for b in found if b}


def _product_output(rel: Path) -> Path:
    """``S2A_…SAFE.zip`` / ``S2A_….SAFE`` / ``bands/`` → ``S2A_….tif`` / ``bands.tif``."""
    from ..io.s2_product import product_stem

    return rel.with_name(product_stem(rel) + ".tif")


def _output_name(rel: Path, is_dir: bool, product: bool = False) -> Path:
    """Output path relative to the output directory for an input at ``rel`` under its root:
    rasters become GeoTIFF, NIfTI keeps its name, DICOM (a series directory or file) a series
    directory, a Sentinel-2 product one GeoTIFF."""
    if product:
        return _product_output(rel)
    if is_dir:
        return rel
    suffix = _suffix(rel)
    if suffix in RASTER_SUFFIXES:
        return rel if suffix in (".tif", ".tiff") else rel.with_suffix(".tif")
    if suffix == ".dcm":
        return rel.with_suffix("")
    return rel


def _search(root: Path, skip: Path) -> Iterator[Path]:
    """Supported files, DICOM series directories and Sentinel-2 products (``*_MSIL*.zip``, SAFE or
    band directories) under ``root`` (series and products are not descended into: each is read
    whole), sorted; ``skip`` (the output directory) excluded."""
    for current, dirs, files in os.walk(root):
        here = Path(current)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and (here / d).resolve() != skip)
        for d in list(dirs):
            if _is_dicom_dir(here / d) or _is_product(here / d):
                dirs.remove(d)
                yield here / d
        for f in sorted(files):
            if not f.startswith(".") and (_suffix(Path(f)) in RASTER_SUFFIXES + MEDICAL_SUFFIXES
                                          or _is_product(here / f)):
                yield here / f


def _glob_root(pattern: str) -> Path:
    """The directory part of a glob before its first wildcard."""
    parts = Path(pattern).parts
    fixed = next((parts[:i] for i, p in enumerate(parts) if glob.has_magic(p)), parts)
    return Path(*fixed) if fixed else Path(".")


def discover(inputs: Iterable[str], out_dir: Path) -> list[Item]:
    """Items for the command line's INPUTS (files, directories, globs), outputs under ``out_dir``."""
    out_dir, skip = Path(out_dir), Path(out_dir).resolve()
    items = []

    def add(path: Path, root: Path):
        rel = path.relative_to(root) if path != root else Path(path.name)
        product = _is_product(path)
        items.append(Item(str(path), str(out_dir / _output_name(rel, path.is_dir(), product))))

    for text in inputs:
        path = Path(text)
        if glob.has_magic(text) and not path.exists():
            root = _glob_root(text)
            found = sorted(Path(p) for p in glob.glob(text, recursive=True))
            found = [p for p in found if not is_temporary(p) and skip not in (p.resolve(), *p.resolve().parents)]
            if not found:
                raise HiresError(f"no input matches {text}")
            for p in found:
                add(p, root)
        elif not path.exists():
            raise HiresError(f"no such file or directory: {path}")
        elif path.is_file():
            add(path, path.parent)
        elif _is_dicom_dir(path) or _is_product(path):
            add(path, path.parent)
        else:
            found = sorted(_search(path, skip))
            if not found:
                raise HiresError(f"no supported inputs (rasters, NIfTI, DICOM series) under {path}")
            for p in found:
                add(p, path)
    return items


def read_manifest(path: Path, out_dir: Path) -> list[Item]:
    """Items of a CSV (header row) or JSON-lines manifest: ``input`` (relative to the manifest),
    optional ``output`` (relative to ``out_dir``), ``model``, ``scale``."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise HiresError(f"cannot read manifest {path}: {exc.strerror}") from None
    if path.suffix.lower() in (".jsonl", ".json", ".ndjson"):
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except ValueError as exc:
                    raise HiresError(f"manifest {path} line {n}: not JSON ({exc})") from None
    else:
        rows = list(csv.DictReader(text.splitlines()))
    items = []
    for n, row in enumerate(rows, 1):
        if not isinstance(row, dict) or not row.get("input"):
            raise HiresError(f"manifest {path} item {n}: needs an 'input'")
        unknown = set(row) - {"input", "output", "model", "scale"}
        if unknown:
            raise HiresError(f"manifest {path} item {n}: unknown field(s) {', '.join(sorted(unknown))}")
        src = path.parent / row["input"]
        if not src.exists():
            raise HiresError(f"manifest {path} item {n}: no such file or directory: {src}")
        product = _is_product(src)
        out = Path(out_dir) / (row.get("output") or _output_name(Path(src.name), src.is_dir(), product))
        try:
            scale = int(row["scale"]) if row.get("scale") not in (None, "") else None
        except ValueError:
            raise HiresError(f"manifest {path} item {n}: scale must be an integer, got {row['scale']!r}") from None
        items.append(Item(str(src), str(out), row.get("model") or None, scale))
    if not items:
        raise HiresError(f"manifest {path} lists no items")
    return items


def check_plan(items: list[Item], out_dir: Path, resume: bool, overwrite: bool) -> tuple[list[Item], list[Item]]:
    """Refuse colliding outputs, outputs that are inputs, and (without ``resume``/``overwrite``)
    existing outputs; returns (items to run, items already done)."""
    seen: dict[str, Item] = {}
    inputs = {str(Path(i.input).resolve()) for i in items}
    root = Path(out_dir).resolve()
    for item in items:
        out = Path(item.output).resolve()
        if root not in out.parents:
            raise HiresError(f"output {item.output} of {item.input} is outside the output directory {out_dir}")
        key = os.path.normcase(str(out))
        if key in seen:
            raise HiresError(f"outputs collide: {seen[key].input} and {item.input} both map to {item.output}; "
                             "rename one or list them in a --manifest with explicit outputs")
        if str(out) in inputs:
            raise HiresError(f"output {item.output} is an input: choose another output directory")
        seen[key] = item
    done = [i for i in items if Path(i.output).exists()]
    if done and not (resume or overwrite):
        raise HiresError(f"{len(done)} of {len(items)} outputs exist already (first: {done[0].output}): "
                         "pass --resume to skip them or --overwrite to replace them")
    if overwrite:
        return items, []
    return [i for i in items if i not in done], done


# ---------------------------------------------------------------- one item


def run_item(item: Item, options: Options) -> dict:
    """Enhance one item; returns its results record (never raises for a bad input: a
    HiresError is recorded as ``failed``; other exceptions are marked ``retry``)."""
    from ..models import keep_models
    from ..pipeline import enhance_file

    keep_models()
    start = time.perf_counter()
    record = {"input": item.input, "output": item.output, "status": "ok", "seconds": 0.0, "error": None}
    try:
        s = options.settings
        if item.model or item.scale:  # the manifest's choice; a model without a scale runs at its own
            s = dataclasses.replace(s, model=item.model or s.model, scale=item.scale)
        Path(item.output).parent.mkdir(parents=True, exist_ok=True)
        summary = enhance_file(item.input, item.output, s, overwrite=options.overwrite, cog=options.cog)
        record.update(model=s.model, scale=s.scale, clipped=summary.clipped, notes=summary.notes)
    except HiresError as exc:
        record.update(status="failed", error=one_line(exc))
    except Exception as exc:  # noqa: BLE001 - recorded (and retried), never lost: one line each
        record.update(status="failed", error=one_line(f"{type(exc).__name__}: {exc}"), retry=True)
    record["seconds"] = round(time.perf_counter() - start, 3)
    return record


# ---------------------------------------------------------------- lock and results


class OutDirLock:
    """An exclusive ``flock`` on ``<out_dir>/.hires-batch.lock`` (released by the OS if the
    process dies); a second run on the same directory is refused with the holder's pid."""

    def __init__(self, out_dir: Path):
        self.path = Path(out_dir) / LOCK_NAME
        self._fd = None

    def __enter__(self):
        import fcntl

        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise HiresError(f"another hires batch run (pid {holder}) is writing {self.path.parent}: "
                             "wait for it, or choose another --out-dir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc):
        os.ftruncate(self._fd, 0)
        os.close(self._fd)  # closing releases the lock
        self._fd = None


@dataclass
class Outcome:
    ok: int = 0
    failed: int = 0
    skipped: int = 0
    seconds: float = 0.0
    results: str = ""

    def line(self) -> str:
        return (f"batch: {self.ok} ok, {self.failed} failed, {self.skipped} skipped in {self.seconds:.1f} s "
                f"(results: {self.results})")


def _execute(todo: list[Item], options: Options, retries: int, client) -> Iterator[dict]:
    """Records of ``todo`` as items finish: in-process in order, or on the cluster in any order.
    A failure that is not a HiresError (a crash, a lost worker) is tried again up to ``retries`` times."""
    tries = collections.Counter()

    def again(item, record) -> bool:
        tries[item] += 1
        return record.pop("retry", False) and tries[item] <= retries

    if client is None:
        queue = collections.deque(todo)
        while queue:
            item = queue.popleft()
            record = run_item(item, options)
            if again(item, record):
                queue.append(item)
            else:
                yield record
        return
    from distributed import as_completed

    futures = as_completed(loop=client.loop)
    running = {}  # key -> (future, item)

    def submit(item):
        fut = client.submit(run_item, item, options, pure=False)
        running[fut.key] = fut, item
        futures.add(fut)

    for item in todo:
        submit(item)
    try:
        for fut in futures:
            item = running.pop(fut.key)[1]
            try:
                record = fut.result()
            except Exception as exc:  # noqa: BLE001 - KilledWorker and the like: the task never returned
                record = {"input": item.input, "output": item.output, "status": "failed", "seconds": None,
                          "error": one_line(f"{type(exc).__name__}: {exc}"), "retry": True}
            if again(item, record):
                submit(item)
            else:
                yield record
    finally:  # interrupted: nothing more starts (a task already running still writes atomically)
        client.cancel([f for f, _ in running.values()])


def run_batch(items: list[Item], out_dir: Path, options: Options, results: Path | None = None,
              resume: bool = False, retries: int = 0, client=None,
              progress: Callable[[int, int], None] | None = None) -> Outcome:
    """Run ``items`` (from ``discover``/``read_manifest``) into ``out_dir``; ``client``: a Dask
    client (``cluster.connect``) or None for in-process. Returns the counts."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = Path(results) if results else out_dir / RESULTS_NAME
    start = time.perf_counter()
    with OutDirLock(out_dir):
        todo, done = check_plan(items, out_dir, resume, options.overwrite)
        outcome = Outcome(skipped=len(done), results=str(results))
        with results.open("a" if resume else "w") as log:
            for item in done:
                log.write(json.dumps({"input": item.input, "output": item.output, "status": "skipped",
                                      "seconds": 0.0, "error": None}) + "\n")
            log.flush()
            if progress:
                progress(0, len(todo))
            try:
                for n, record in enumerate(_execute(todo, options, retries, client), 1):
                    log.write(json.dumps(record) + "\n")
                    log.flush()
                    if record["status"] == "ok":
                        outcome.ok += 1
                    else:
                        outcome.failed += 1
                    if progress:
                        progress(n, len(todo))
            finally:
                sweep(todo)
    outcome.seconds = time.perf_counter() - start
    return outcome


def sweep(items: list[Item]) -> None:
    """Remove what killed workers left beside the items' outputs (temporaries of dead processes);
    run again after a cluster is shut down."""
    for item in items:
        remove_stale_temporaries(Path(item.output))
