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
