"""Shared set-up for the napari plugin tests (test_io.py, test_widgets.py).

The whole directory is skipped, with the reason shown by ``pytest -rs``, when napari, Qt, npe2 or
pytest-qt cannot be imported, or when there is no display to draw on. napari's vispy canvas
needs OpenGL, which Qt's ``offscreen`` platform does not provide, so a headless run needs an X
server: CI runs ``xvfb-run -a python -m pytest``; a plain ``python -m pytest`` without
``$DISPLAY`` starts a private ``Xvfb`` for the session when one is installed (apt: xvfb).

napari's pytest plugin (``napari.utils._testsupport``, registered by napari's entry point) gives
``make_napari_viewer``/``make_napari_viewer_proxy``, which close every viewer after the test and
fail it when a viewer leaks. napari's settings go to a temporary file, never the user's.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from support import SAMPLES

_TMP = Path(tempfile.mkdtemp(prefix="hires-napari-tests-"))
atexit.register(shutil.rmtree, _TMP, True)
os.environ.setdefault("NAPARI_CONFIG", str(_TMP / "napari-settings.yaml"))


def _start_xvfb() -> str | None:
    """Start a private Xvfb and return its DISPLAY (None when Xvfb is missing or fails)."""
    exe = shutil.which("Xvfb")
    if exe is None:
        return None
    read_fd, write_fd = os.pipe()
    try:
        proc = subprocess.Popen([exe, "-displayfd", str(write_fd), "-screen", "0", "1280x1024x24", "-nolisten", "tcp"],
                                pass_fds=(write_fd,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except OSError:
        return None
    finally:
        os.close(write_fd)
    with os.fdopen(read_fd) as pipe:
        number = pipe.readline().strip()
    if not number.isdigit():
        proc.kill()
        proc.wait()
        return None

    def stop():
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()

    atexit.register(stop)
    return f":{number}"


def _unavailable() -> str | None:
    """Why the napari tests cannot run here, or None when they can."""
    try:
        import napari  # noqa: F401
        import npe2  # noqa: F401
        import pytestqt  # noqa: F401
        from qtpy import QtWidgets  # noqa: F401
    except Exception as exc:  # ImportError, or a Qt binding that fails to load
        return f"napari plugin tests need napari, npe2, pytest-qt and a Qt binding: {type(exc).__name__}: {exc}"
    if sys.platform.startswith("linux") and not os.environ.get("DISPLAY") \
            and os.environ.get("QT_QPA_PLATFORM") not in ("xcb",):
        display = _start_xvfb()
        if display is None:
            return ("no display for napari's OpenGL canvas: run under `xvfb-run -a python -m pytest` "
                    "or install Xvfb (apt-get install xvfb)")
        os.environ["DISPLAY"] = display
        os.environ.pop("QT_QPA_PLATFORM", None)  # 'offscreen' has no OpenGL for vispy
    return None


_REASON = _unavailable()


class _SkippedModule(pytest.File):
    """Stands in for a test module here when napari cannot run: one skip with the reason."""

    def collect(self):
        pytest.skip(_REASON)


@pytest.hookimpl(tryfirst=True)
def pytest_pycollect_makemodule(module_path, parent):
    # The test modules import napari/Qt: with none usable, do not even import them.
    if _REASON:
        return _SkippedModule.from_parent(parent, path=module_path)
    return None




@pytest.fixture
def ct_series_dir() -> Path:
    """The bundled CT head DICOM series (12 slices, soft tissue CT in HU)."""
    return SAMPLES / "ct_head_series"


@pytest.fixture
def nifti_path() -> Path:
    """The bundled CT head NIfTI (RAS, shown through an affine in the viewer's LPS world)."""
    return SAMPLES / "ct_head.nii.gz"


@pytest.fixture
def s2_path() -> Path:
    """The bundled Sentinel-2 crop: 4 bands B02 B03 B04 B08, 10 m, EPSG:32618."""
    return SAMPLES / "s2_crop.tif"


@pytest.fixture
def viewer(make_napari_viewer):
    """A hidden napari viewer with plugins initialised; closed and leak-checked after the test."""
    return make_napari_viewer()


def _corners(shape) -> np.ndarray:
    """Array indices of the 2**n corner pixel centres of an array of ``shape``."""
    grids = np.meshgrid(*[[0, n - 1] for n in shape], indexing="ij")
    return np.stack([g.ravel() for g in grids], -1).astype(float)


@pytest.fixture
def corner_worlds():
    """``f(layer, image) -> (napari world, expected world)`` of the layer's corner pixels, where
    expected = ``geometry.display_affine(image.affine, image.frame)`` applied to the indices."""
    from hires_domain import geometry

    def compute(layer, image):
        idx = _corners(layer.data.shape[: layer.ndim])  # an RGB layer's last axis is colour
        shown = np.array([layer.data_to_world(i) for i in idx])
        display = geometry.display_affine(image.affine, image.frame)
        expected = geometry.world_of(display, idx)
        return shown, expected

    return compute


@pytest.fixture
def enhance(viewer):
    """Factory of Enhance widgets docked in ``viewer`` (cpu; model, scale, tile, overlap set)."""
    def make(model="bicubic", scale=2, tile=64, overlap=8):
        from hires_napari.widgets import EnhanceWidget

        w = EnhanceWidget(viewer)
        viewer.window.add_dock_widget(w, name="hires enhance")
        w.device_combo.setCurrentText("cpu")
        w.scale.setValue(scale)
        w.tile.setValue(tile)
        w.overlap.setValue(overlap)
        w.model_combo.setCurrentText(model)
        return w

    return make
