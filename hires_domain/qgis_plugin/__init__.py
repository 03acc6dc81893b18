"""`hires qgis install/uninstall`: the QGIS plugin ``hires_qgis`` (shipped beside this file) copied
into a QGIS profile, with a config recording this environment's ``hires`` executable and models."""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from dataclasses import asdict
from pathlib import Path

from ..errors import HiresError

PLUGIN = "hires_qgis"
SOURCE = Path(__file__).parent / PLUGIN
CONFIG = "hires.json"  # written into the installed plugin, never shipped


def qgis_root() -> Path:
    """QGIS 3's settings root: QGIS_CUSTOM_CONFIG_PATH when set (as QGIS reads it), else the platform's."""
    if os.environ.get("QGIS_CUSTOM_CONFIG_PATH"):
        return Path(os.environ["QGIS_CUSTOM_CONFIG_PATH"])
    if sys.platform == "win32":
        return Path(os.environ.get("APPDATA", Path.home())) / "QGIS" / "QGIS3"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "QGIS" / "QGIS3"
    return Path.home() / ".local" / "share" / "QGIS" / "QGIS3"


def default_profile() -> Path:
    """The default profile; refused when QGIS has never run here (no settings root) and is not on PATH."""
    root = qgis_root()
    if not root.is_dir() and not any(shutil.which(exe) for exe in ("qgis", "qgis_process", "qgis_process.bin")):
        raise HiresError(f"no QGIS found: {root} does not exist and qgis is not on PATH; start QGIS once or "
                         "give --profile-dir")
    return root / "profiles" / "default"


def _profile(profile_dir: Path | None) -> Path:
    if profile_dir is None:
        return default_profile()
    if not profile_dir.is_dir():
        raise HiresError(f"QGIS profile directory {profile_dir} does not exist")
    return profile_dir


def hires_executable() -> Path:
    """The ``hires`` script of this environment (beside ``sys.executable``), else the one on PATH."""
    name = "hires.exe" if sys.platform == "win32" else "hires"
    exe = Path(sys.executable).with_name(name)
    if not exe.is_file():
        found = shutil.which("hires")
        if found is None:
            raise HiresError(f"no hires executable beside {sys.executable} nor on PATH")
        exe = Path(found)
    return exe.absolute()


def install(profile_dir: Path | None = None) -> Path:
    """Copy the plugin into ``<profile>/python/plugins/hires_qgis`` (replacing an older copy) with
    its config; returns where it went."""
    from .. import __version__
    from ..models import list_models

    dst = _profile(profile_dir) / "python" / "plugins" / PLUGIN
    config = {"hires": str(hires_executable()), "version": __version__,
              "models": [asdict(m) for m in list_models()]}
    tmp = dst.with_name(f".{PLUGIN}.installing")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(SOURCE, tmp, ignore=shutil.ignore_patterns("__pycache__", CONFIG))
    (tmp / CONFIG).write_text(json.dumps(config, indent=2))
    meta = tmp / "metadata.txt"  # QGIS's plugin manager shows the hires-domain version
    meta.write_text(re.sub(r"(?m)^version=.*$", f"version={__version__}", meta.read_text()))
    shutil.rmtree(dst, ignore_errors=True)
    os.replace(tmp, dst)
    return dst


def uninstall(profile_dir: Path | None = None) -> Path:
    """Remove the plugin from the profile; returns the directory removed."""
    dst = _profile(profile_dir) / "python" / "plugins" / PLUGIN
    if not dst.is_dir():
        raise HiresError(f"the hires QGIS plugin is not installed in {dst.parent}")
    shutil.rmtree(dst)
    return dst
