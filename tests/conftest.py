import os
from importlib import resources
from pathlib import Path

import pytest

SAMPLES = Path(str(resources.files("hires_domain") / "samples"))
DATA = Path(__file__).parent / "data"


@pytest.fixture
def samples() -> Path:
    return SAMPLES


@pytest.fixture
def ct_volume():
    """The bundled real CT NIfTI crop as an Image."""
    from hires_domain.io.nifti import read_nifti

    return read_nifti(SAMPLES / "ct_head.nii.gz")
