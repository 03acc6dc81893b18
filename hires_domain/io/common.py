"""Output safety shared by every writer: checks before work starts, temp name, atomic rename."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import tempfile
import zlib
from pathlib import Path

import numpy as np

from ..errors import HiresError


def check_output(dst: Path, overwrite: bool = False, src: Path | None = None) -> Path:
    """Refuse an output that exists (unless ``overwrite``), equals the input, or is unwritable."""
    dst = Path(dst)
    if src is not None and Path(src).exists() and dst.exists() and os.path.samefile(src, dst):
        raise HiresError(f"output {dst} is the input: choose another output path")
    if src is not None and dst.resolve() == Path(src).resolve():
        raise HiresError(f"output {dst} is the input: choose another output path")
    if dst.exists() and not overwrite:
        raise HiresError(f"output {dst} exists: pass --overwrite to replace it")
    parent = dst.resolve().parent
    if not parent.is_dir():
        raise HiresError(f"cannot write {dst}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise HiresError(f"cannot write {dst}: directory {parent} is not writable")
    return dst


TEMP_SUFFIX = ".hires-tmp"


def is_temporary(path: Path) -> bool:
    """True for a path inside (or naming) an ``atomic_output`` temporary: never input data."""
    return any(part.startswith(".") and part.endswith(TEMP_SUFFIX) for part in Path(path).parts)


def _owner_tag() -> str:
    """``PID-HOST``: who owns a temporary (the host hash keeps a shared filesystem safe)."""
    host = zlib.crc32(socket.gethostname().encode()) & 0xFFFFFFFF
    return f"{os.getpid()}-{host:08x}"


def _alive(pid: int) -> bool:
    if os.name == "nt":  # os.kill(pid, 0) would send CTRL_C_EVENT there: never assume dead
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    except OSError:
        return True  # unknown: keep its temporary
    return True


def remove_stale_temporaries(dst: Path) -> list[Path]:
    """Remove the temporaries of earlier runs writing ``dst`` whose process is gone (killed,
    power cut), i.e. ``.<name>.<pid>-<host>.<random>.hires-tmp`` beside ``dst`` with this
    host and a pid that is not running. A live process's temporary is never touched; neither
    is a name this function cannot parse. Returns what was removed."""
    dst = Path(dst)
    parent = dst.resolve().parent
    prefix, host = f".{dst.name}.", _owner_tag().split("-")[1]
    removed = []
    try:
        entries = list(parent.iterdir())
    except OSError:
        return removed
    for entry in entries:
        name = entry.name
        if not (name.startswith(prefix) and name.endswith(TEMP_SUFFIX)):
            continue
        middle = name[len(prefix):-len(TEMP_SUFFIX)].split(".")
        if len(middle) != 2 or middle[0].count("-") != 1:
            continue  # another output's temporary (its name extends ours) or not one of ours
        pid, owner_host = middle[0].split("-")
        if not pid.isdigit() or owner_host != host or _alive(int(pid)):
            continue
        shutil.rmtree(entry, ignore_errors=True)
        if not entry.exists():
            removed.append(entry)
    return removed


@contextlib.contextmanager
def atomic_output(dst: Path, is_dir: bool = False):
    """Yield a temporary path beside ``dst``; rename it to ``dst`` only on success.

    On any exception the temporary file or directory is removed, so no partial output is
    ever left under the final name. An existing ``dst`` (``--overwrite``) is replaced only
    after the new output is complete. The temporary directory's name carries the owner's pid
    and host, so that a later run for the same ``dst`` removes what a killed run (SIGKILL,
    power cut: no ``finally`` runs) left behind (``remove_stale_temporaries``).
    """
    dst = Path(dst)
    parent = dst.resolve().parent
    remove_stale_temporaries(dst)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{dst.name}.{_owner_tag()}.", suffix=TEMP_SUFFIX, dir=parent))
    tmp = tmp_dir / dst.name
    if is_dir:
        tmp.mkdir()
    try:
        yield tmp
        if dst.is_dir() and not dst.is_symlink():
            old = tmp_dir / ".replaced"
            os.replace(dst, old)
        os.replace(tmp, dst)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def cast_to_dtype(data: np.ndarray, dtype, valid: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """Float pixels to ``dtype``: integers are rounded and clipped; returns (array, n clipped),
    counting only ``valid`` pixels when a mask is given."""
    dtype = np.dtype(dtype)
    if not np.issubdtype(dtype, np.integer):
        return data.astype(dtype), 0
    info = np.iinfo(dtype)
    rounded = np.rint(data)
    clipped = 0
    if rounded.size and (rounded.min() < info.min or rounded.max() > info.max):  # else no pass per pixel
        outside = (rounded < info.min) | (rounded > info.max)
        clipped = int(np.count_nonzero(outside if valid is None else outside & valid))
        rounded = np.clip(rounded, info.min, info.max)
    return rounded.astype(dtype), clipped
