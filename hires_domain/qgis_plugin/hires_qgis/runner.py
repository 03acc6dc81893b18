"""Running the recorded `hires` executable: progress, cancel, one-line errors. Standard library
only (no QGIS, no hires_domain), so that it runs in QGIS's Python and is tested in ours."""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Callable, Iterable, Optional

CONFIG = Path(__file__).with_name("hires.json")
STOP_GRACE_S = 0.8  # after SIGTERM (hires removes its temporary output), then SIGKILL
TEMP_SUFFIX = ".hires-tmp"  # hires_domain.io.common.TEMP_SUFFIX: `.<name>.<pid>-<host>.<random>.hires-tmp`
# QGIS's own GDAL/PROJ/Python settings would mislead the hires environment's rasterio and Python
FOREIGN_ENV = ("PYTHONPATH", "PYTHONHOME", "GDAL_DATA", "GDAL_DRIVER_PATH", "PROJ_LIB", "PROJ_DATA")


class Failed(Exception):
    """A run that did not complete; the message is one line, for the QGIS log."""


def load_config(path: Path = CONFIG) -> dict:
    """The config `hires qgis install` wrote: the hires executable and its models."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise Failed(f"cannot read {path} ({exc.__class__.__name__}): reinstall with `hires qgis install`") from None


def executable(config: dict) -> str:
    exe = config.get("hires", "")
    if not Path(exe).is_file():
        raise Failed(f"the hires executable {exe!r} recorded by `hires qgis install` does not exist: run "
                     "`hires qgis install` again from the environment hires-domain is installed in")
    return exe


def _reader(stream, tag: str, lines: queue.Queue) -> None:
    for line in stream:
        lines.put((tag, line.rstrip("\n")))
    lines.put((tag, None))


def _progress(line: str) -> Optional[float]:
    """Percent done from a `--progress jsonl` line; None for any other line."""
    if not line.startswith("{"):
        return None
    try:
        event = json.loads(line)
        return 100.0 * event["done"] / event["total"] if event.get("total") else None
    except (ValueError, KeyError, TypeError):
        return None


def remove_temporaries(outputs: Iterable[str], pid: int) -> None:
    """Remove what a killed hires process ``pid`` left beside ``outputs`` (its finally blocks did not run)."""
    for out in outputs:
        dst = Path(out)
        for tmp in dst.parent.glob(f".{dst.name}.{pid}-*{TEMP_SUFFIX}"):
            shutil.rmtree(tmp, ignore_errors=True)


def _stop(proc: subprocess.Popen, outputs: Iterable[str]) -> None:
    proc.terminate()
    try:
        proc.wait(STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        remove_temporaries(outputs, proc.pid)


def run(args: list, config: dict, outputs: Iterable[str] = (), progress: Callable[[float], None] = lambda p: None,
        canceled: Callable[[], bool] = lambda: False, log: Callable[[str], None] = lambda line: None,
        poll_s: float = 0.05) -> None:
    """Run ``hires *args``; ``progress(percent)`` from its jsonl stream, other lines to ``log``.
    Raises ``Failed`` with hires's ``error:`` line, or when ``canceled()`` (the process is ended
    within a second and its temporary ``outputs`` are gone)."""
    env = {k: v for k, v in os.environ.items() if k not in FOREIGN_ENV}
    try:
        proc = subprocess.Popen([executable(config), *map(str, args)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, encoding="utf-8", errors="replace",
                                env=env, creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0))
    except OSError as exc:
        raise Failed(f"cannot start {config.get('hires')}: {exc.strerror or exc}") from None
    lines: queue.Queue = queue.Queue()
    readers = [threading.Thread(target=_reader, args=(stream, tag, lines), daemon=True)
               for stream, tag in ((proc.stdout, "out"), (proc.stderr, "err"))]
    with proc:
        for reader in readers:
            reader.start()
        try:
            errors = _watch(proc, lines, progress, canceled, log, poll_s)
        except BaseException:  # canceled, or a callback failed: the process must not outlive the run
            _stop(proc, outputs)
            raise
        finally:
            for reader in readers:
                reader.join(1.0)
    if proc.returncode != 0:
        raise Failed(errors[-1] if errors else f"hires exited with status {proc.returncode}")


def _watch(proc, lines: queue.Queue, progress, canceled, log, poll_s: float) -> list:
    """Relay ``lines`` until the process ends; its ``error:`` messages. Raises ``Failed`` on cancel."""
    errors, open_streams = [], 2
    while open_streams or proc.poll() is None:
        if canceled():
            raise Failed("canceled; no output was written")
        try:
            tag, line = lines.get(timeout=poll_s)
        except queue.Empty:
            continue
        if line is None:
            open_streams -= 1
            continue
        percent = _progress(line) if tag == "err" else None
        if percent is not None:
            progress(percent)
        elif line.startswith("error:"):  # becomes the failure's message
            errors.append(line[len("error:"):].strip())
        else:
            log(line)
    return errors


# ------------------------------------------------------------------ true colour
# The band-name rule of hires_domain.intensity.true_colour_bands (tests keep the two in step):
# Sentinel-2 B04/B03/B02, Landsat 8/9 B4/B3/B2 (also as suffixes like SR_B4), or red/green/blue.
_NUMBER = {"red": "4", "green": "3", "blue": "2"}


def _is(name: str, colour: str) -> bool:
    n = name.strip().lower()
    return n == colour or re.search(rf"(?:^|[^a-z0-9])b0?{_NUMBER[colour]}(?:$|[^a-z0-9])", n) is not None


def true_colour(names: list) -> Optional[tuple]:
    """0-based red, green, blue bands found by name, else the first three; None below three bands."""
    if len(names) < 3:
        return None
    picks = [next((k for k, n in enumerate(names) if _is(n, c)), None) for c in ("red", "green", "blue")]
    return tuple(picks) if None not in picks and len(set(picks)) == 3 else (0, 1, 2)
