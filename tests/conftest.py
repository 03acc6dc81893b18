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


@pytest.fixture(scope="module")
def cluster():
    """A Dask LocalCluster of 2 single-threaded worker processes: (scheduler address, client)."""
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  silence_logs=50) as c, distributed.Client(c, set_as_default=False) as client:
        yield c.scheduler_address, client
