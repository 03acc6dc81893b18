"""Output safety shared by every writer: checks before work starts, temp name, atomic rename."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
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


@contextlib.contextmanager
def atomic_output(dst: Path, is_dir: bool = False):
    """Yield a temporary path beside ``dst``; rename it to ``dst`` only on success.

    On any exception the temporary file or directory is removed, so no partial output is
    ever left under the final name. An existing ``dst`` (``--overwrite``) is replaced only
    after the new output is complete.
    """
    dst = Path(dst)
    parent = dst.resolve().parent
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".hires-tmp", dir=parent))
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
    outside = (rounded < info.min) | (rounded > info.max)
    clipped = int(np.count_nonzero(outside if valid is None else outside & valid))
    return np.clip(rounded, info.min, info.max).astype(dtype), clipped
