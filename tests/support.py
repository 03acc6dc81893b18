"""Plain helpers shared by test modules (imported as ``support``; conftest files hold fixtures)."""

import os
import shutil
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest

from hires_domain import cli

SAMPLES = Path(str(resources.files("hires_domain") / "samples"))
DATA = Path(__file__).parent / "data"

# a small `hires prepare` recipe on the bundled Sentinel-2 crop (x4, S2-like MTF and noise)
S2_RECIPE = {
    "name": "t-s2", "domain": "satellite", "sources": [{"path": str(SAMPLES / "s2_crop.tif")}],
    "bands": ["B02", "B03", "B04", "B08"],
    "degradation": {"scale": 4, "mtf_nyquist": 0.3, "noise": {"sigma_add": 2.0, "sigma_signal": 0.3},
                    "quantise": "uint16"},
    "patches": {"size": 64, "stride": 32},
    "split": {"holdout": {"rows": [0.5, 1.0], "cols": [0.0, 0.5]}},
}


def dciodvfy_errors(path: Path) -> list[str]:
    """'Error' lines of dicom3tools' validator; skips when it is missing (fails in CI instead)."""
    exe = shutil.which("dciodvfy")
    if exe is None:
        if os.environ.get("HIRES_REQUIRE_DCIODVFY"):
            pytest.fail("dciodvfy (Debian dicom3tools) is required but not installed")
        pytest.skip("dciodvfy not installed (apt-get install dicom3tools)")
    proc = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("Error")]


def hires(capsys, *args):
    """Run the CLI in-process; returns (exit code, stdout, stderr)."""
    old = sys.argv
    sys.argv = ["hires", *map(str, args)]
    try:
        with pytest.raises(SystemExit) as e:
            cli.main()
    finally:
        sys.argv = old
    o, r = capsys.readouterr()
    return e.value.code, o, r


def fails(capsys, *args, match=""):
    code, _, errtext = hires(capsys, *args)
    lines = [ln for ln in errtext.splitlines() if ln.strip()]
    assert code != 0, errtext
    assert len(lines) == 1 and lines[0].startswith("error: "), errtext
    assert "Traceback" not in errtext
    assert match.lower() in lines[0].lower(), lines[0]
    return lines[0]
