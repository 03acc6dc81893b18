from pathlib import Path

import pytest

from support import SAMPLES


@pytest.fixture
def samples() -> Path:
    return SAMPLES


@pytest.fixture
def ct_volume():
    """The bundled real CT NIfTI crop as an Image."""
    from hires_domain.io.nifti import read_nifti

    return read_nifti(SAMPLES / "ct_head.nii.gz")
