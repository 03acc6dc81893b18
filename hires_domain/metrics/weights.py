"""Offline lookup of the third-party backbone weights that LPIPS, FID and IS need.

Nothing is ever downloaded. Each file is searched, in order, in the ``--weights-dir`` argument,
``$HIRES_WEIGHTS_DIR`` and the torch hub cache (``torch.hub.get_dir()/checkpoints``, which honours
``$TORCH_HOME``). Files keep the names their libraries download them under, so a hub cache filled
on another machine can be copied over as is.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import shutil
import tempfile
from contextlib import contextmanager
from functools import cache
from pathlib import Path

import torch

ENV_VAR = "HIRES_WEIGHTS_DIR"

# metric: (label, {weight file: where its library downloads it from}, (import name, pip name) of
# the packages it needs). LPIPS's linear heads ship inside torchmetrics
# (functional/image/lpips_models/*.pth); its backbones come from torchvision's model zoo.
_TORCHVISION = ("torchvision", "torchvision")
_INCEPTION = ({"weights-inception-2015-12-05-6726825d.pth":  # torch-fidelity 0.4's URL_INCEPTION_V3
               "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"},
              (("torch_fidelity", "torch-fidelity"), _TORCHVISION))
REQUIREMENTS = {
    "lpips-alex": ("LPIPS (alex)", {"alexnet-owt-7be5be79.pth": "https://download.pytorch.org/models/"},
                   (_TORCHVISION,)),
    "lpips-vgg": ("LPIPS (vgg)", {"vgg16-397923af.pth": "https://download.pytorch.org/models/"},
                  (_TORCHVISION,)),
    "fid": ("FID (Inception-v3, 2048 features)", *_INCEPTION),
    "is": ("IS (Inception-v3 class logits, the FID network)", *_INCEPTION),
}


def search_dirs(weights_dir: str | os.PathLike | None = None) -> list[tuple[Path, str]]:
    """``(directory, where it came from)`` in search order."""
    dirs = []
    if weights_dir is not None:
        dirs.append((Path(weights_dir), "--weights-dir"))
    if os.environ.get(ENV_VAR):
        dirs.append((Path(os.environ[ENV_VAR]), f"${ENV_VAR}"))
    dirs.append((Path(torch.hub.get_dir()) / "checkpoints", "torch hub cache"))
    return dirs


@cache
def _package_problem(import_name: str) -> str | None:
    """Why a package cannot be used (``None`` when it imports)."""
    if importlib.util.find_spec(import_name) is None:
        return "not installed"
    try:
        importlib.import_module(import_name)
    except Exception as exc:  # a broken build (e.g. torchvision not matching torch) fails on import
        return f"fails to import ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
    return None


def find_file(name: str, weights_dir: str | os.PathLike | None = None) -> Path | None:
    """The first ``name`` found in :func:`search_dirs`."""
    for d, _ in search_dirs(weights_dir):
        if (d / name).is_file():
            return d / name
    return None


def metric_status(metric: str, weights_dir: str | os.PathLike | None = None) -> dict:
    """What one metric needs, what was found, and a one-line reason when it cannot run."""
    label, files, packages = REQUIREMENTS[metric]
    dirs = search_dirs(weights_dir)
    found = {f: find_file(f, weights_dir) for f in files}
    missing_files = [f for f, p in found.items() if p is None]
    problems = {pip: _package_problem(mod) for mod, pip in packages}
    missing_packages = [pip for pip, why in problems.items() if why]
    parts = [f"{pip} {why}" for pip, why in problems.items() if why]
    if missing_files:
        where = ", ".join(f"{d} ({src})" for d, src in dirs)
        unset = "" if os.environ.get(ENV_VAR) else f"; ${ENV_VAR} unset"
        parts.append(f"{', '.join(missing_files)} not found in {where}{unset}: "
                     f"put it in one of these, set ${ENV_VAR} or pass --weights-dir")
    return {
        "metric": metric,
        "name": label,
        "files": {f: (str(p) if p else None) for f, p in found.items()},
        "searched": [str(d) for d, _ in dirs],
        "missing_files": missing_files,
        "missing_packages": missing_packages,
        "available": not parts,
        "reason": f"{label} unavailable: {'; '.join(parts)}" if parts else None,
    }


def weights_status(weights_dir: str | os.PathLike | None = None) -> list[dict]:
    """:func:`metric_status` for every metric in :data:`REQUIREMENTS`."""
    return [metric_status(m, weights_dir) for m in REQUIREMENTS]


def render_weights_status(status: list[dict]) -> list[str]:
    """Human-readable lines for ``hires weights``."""
    lines = []
    for s in status:
        lines.append(f"{s['name']}: {'available' if s['available'] else 'UNAVAILABLE'}")
        urls = REQUIREMENTS[s["metric"]][1]
        for f, path in s["files"].items():
            lines.append(f"  {f}: {path or 'not found (download: ' + urls[f] + f + ')'}")
        for pip in s["missing_packages"]:
            lines.append(f"  package {pip}: missing (pip install {pip})")
        if s["reason"]:
            lines.append(f"  -> {s['reason']}")
    if status:
        lines.append("searched: " + ", ".join(status[0]["searched"]))
    return lines


@contextmanager
def hub_dir_with(files: dict[str, str | None]):
    """Make torch hub see ``files`` (name -> path) in its cache, so libraries load them offline.

    Files already in the hub cache need nothing; otherwise the hub dir is pointed, for the duration,
    at a temporary dir whose ``checkpoints/`` links (or, where links fail, copies) them.
    Not thread-safe: the hub dir is process-wide.
    """
    hub = Path(torch.hub.get_dir())
    if all(p and Path(p).parent == hub / "checkpoints" for p in files.values()):
        yield
        return
    with tempfile.TemporaryDirectory(prefix="hires-hub-") as tmp:
        ckpt = Path(tmp) / "checkpoints"
        ckpt.mkdir()
        for name, path in files.items():
            try:
                os.symlink(path, ckpt / name)
            except OSError:
                shutil.copy(path, ckpt / name)
        previous = torch.hub._hub_dir  # restored as is: None keeps following $TORCH_HOME
        torch.hub.set_dir(tmp)
        try:
            yield
        finally:
            torch.hub._hub_dir = previous
