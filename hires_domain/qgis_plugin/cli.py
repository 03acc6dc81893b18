"""`hires qgis install|uninstall`: the QGIS Processing plugin (docs/qgis.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="The QGIS plugin hires_qgis: Processing algorithms running this hires (docs/qgis.md).")
PROFILE_DIR = typer.Option(None, "--profile-dir", help="QGIS profile directory [default: the default profile, "
                                                       "e.g. ~/.local/share/QGIS/QGIS3/profiles/default]")


@app.command()
def install(profile_dir: Optional[Path] = PROFILE_DIR):
    """Copy the plugin into the profile (replacing an older copy), recording this hires executable and its models."""
    from . import install as _install

    dst = _install(profile_dir)
    print(f"installed {dst}; enable it in QGIS (Plugins > Manage and Install Plugins > hires-domain) "
          "or with: qgis_process plugins enable hires_qgis")


@app.command()
def uninstall(profile_dir: Optional[Path] = PROFILE_DIR):
    """Remove the plugin from the profile."""
    from . import uninstall as _uninstall

    print(f"removed {_uninstall(profile_dir)}")
