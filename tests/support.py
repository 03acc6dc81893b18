"""Plain helpers shared by test modules (imported as ``support``; conftest files hold fixtures)."""

import os
import shutil
import subprocess
from importlib import resources
from pathlib import Path

import pytest

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
