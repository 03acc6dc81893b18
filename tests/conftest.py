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


@pytest.fixture
def one_torch_thread(monkeypatch):
    """Torch on one thread here and in processes started meanwhile (the servers' workers; Dask's
    workers have one already): float sums such as the uncertainty map differ in their last bits
    between thread counts, so results compared with a reference run here must use the same."""
    import torch

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
