"""A run resolved once: precision (auto/fp32/bf16/fp16), automatic tiling, the overlapped I/O."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import rasterio
import torch

import hires_domain as hd
from hires_domain import pipeline, precision, tiling
from hires_domain.errors import HiresError
from hires_domain.models import get_model
from support import SAMPLES, fails, hires


@pytest.fixture(scope="module")
def s2():
    """A 72 x 88 crop of the bundled Sentinel-2 scene."""
    image = hd.read(SAMPLES / "s2_crop.tif")
    crop = image.array()[:, 50:122, 20:108]
    return image.with_data(crop, meta=dict(image.meta))


def test_auto_precision_follows_hardware_and_the_recorded_check(monkeypatch):
    model, cpu = get_model("s2-sr-x4"), torch.device("cpu")
    assert model.precision_checks["bf16"]["delta_db"] >= -precision.MAX_LOSS_DB  # recorded by precision_check.py
    monkeypatch.setattr(precision, "fast_precisions", lambda device: ["bf16"])
    assert precision.resolve_precision("auto", model, cpu) == "bf16"
    # monkeypatch restores the instance: once a batch ran in this process (keep_models), get_model
    # returns one shared instance, and a changed check would turn later runs here to fp32
    monkeypatch.setattr(model, "precision_checks", {"bf16": {"delta_db": -0.4}})  # lost > 0.1 dB: not trusted
    assert precision.resolve_precision("auto", model, cpu) == "fp32"
    monkeypatch.setattr(model, "precision_checks", None)  # never checked
    assert precision.resolve_precision("auto", model, cpu) == "fp32"
    assert precision.resolve_precision("bf16", model, cpu) == "bf16"  # asked for: honoured
    monkeypatch.setattr(precision, "fast_precisions", lambda device: [])  # no fast bf16 on this CPU
    assert precision.resolve_precision("auto", get_model("s2-sr-x4"), cpu) == "fp32"
    assert precision.resolve_precision("auto", get_model("bicubic"), cpu) == "fp32"


def test_precision_refusals(capsys, tmp_path):
    src = SAMPLES / "s2_crop.tif"
    fails(capsys, "enhance", src, tmp_path / "a.tif", "--precision", "fp8", match="unknown precision 'fp8'")
    fails(capsys, "enhance", src, tmp_path / "b.tif", "--precision", "bf16", match="runs in fp32 only")
    assert not list(tmp_path.iterdir())


def test_bf16_close_to_fp32_and_recorded(s2, tmp_path, capsys):
    a = hd.enhance(s2, "s2-sr-x4", precision="fp32", device="cpu")
    b = hd.enhance(s2, "s2-sr-x4", precision="bf16", device="cpu")
    assert "precision=fp32" in a.meta["provenance"] and "precision=bf16" in b.meta["provenance"]
    diff = np.abs(a.array() - b.array())
    psnr = 10 * np.log10(10000.0 ** 2 / np.mean(diff ** 2))  # reflectance 0..1 = 0..10000 DN
    assert psnr > 60 and 0 < diff.max() < 200, (psnr, diff.max())  # close, yet really bf16
    src, out = tmp_path / "in.tif", tmp_path / "out.tif"
    hd.write(s2, src)
    code, stdout, err = hires(capsys, "enhance", src, out, "--model", "s2-sr-x4", "--precision", "bf16")
    assert code == 0, err
    assert "cpu bf16" in stdout
    with rasterio.open(out) as ds:
        assert "precision=bf16" in ds.tags()["HIRES_PROVENANCE"]


def test_auto_tiling(s2):
    run = pipeline.resolve_run(s2, pipeline.Settings("s2-sr-x4", device="cpu", precision="fp32"))
    h = run.model.info.halo
    assert run.overlap == 0 and run.tile % 64 == 0 and run.batch_size == 1  # exact tiles: no blending
    assert (run.tile + 2 * h) ** 2 * run.model.activation_bytes() <= pipeline.TILE_BUDGET
    bf16 = pipeline.resolve_run(s2, pipeline.Settings("s2-sr-x4", device="cpu", precision="bf16"))
    assert bf16.tile >= run.tile  # half the activation memory: tiles at least as large
    given = pipeline.resolve_run(s2, pipeline.Settings("s2-sr-x4", tile=48, device="cpu"))
    assert (given.tile, given.overlap) == (48, 0)
    ldm = pipeline.resolve_run(s2, pipeline.Settings("s2-ldm-x4", tile=128, device="cpu"))
    assert (ldm.tile, ldm.overlap, ldm.precision) == (128, 32, "fp32")  # diffusion: blended tiles
    with pytest.raises(HiresError, match="overlap < tile"):
        pipeline.Settings("bicubic", tile=32, overlap=32)


def test_default_tiles_equal_the_whole_image(s2, monkeypatch):
    """No blending overlap by default: the halo alone makes tiles exact (within float rounding)."""
    model = get_model("s2-sr-x4")
    monkeypatch.setattr(model, "precision", "fp32")  # a shared instance may hold the last run's precision
    whole = model.predict(torch.from_numpy(s2.array())[None], 4)[0].numpy()
    for tile in (None, 32, 40):  # automatic (one tile here), and tiles with many seams
        out = hd.enhance(s2, "s2-sr-x4", tile=tile, precision="fp32", device="cpu").array()
        assert np.abs(out - whole).max() < 0.05, tile


class _FailingSink(tiling.ArraySink):
    def __init__(self, shape, fail_at: int):
        super().__init__(shape)
        self.calls, self.fail_at = 0, fail_at

    def write(self, region, data, valid):
        self.calls += 1
        if self.calls == self.fail_at:
            raise OSError("disk full")
        super().write(region, data, valid)


def _io_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith(("hires-read", "hires-write"))}


def test_write_behind_errors_surface_and_threads_stop(s2):
    spec = tiling.TileSpec((16, 16), (4, 4), (2, 2), (2, 2))
    bicubic = lambda x: get_model("bicubic").predict(x, 2)  # noqa: E731
    source = tiling.ArraySource(s2.array())
    sink = _FailingSink((4, 144, 176), fail_at=5)
    before = _io_threads()  # (other tests' unfinished generators may hold theirs)
    with pytest.raises(OSError, match="disk full"):
        for _ in tiling.iter_tiled(source, sink, bicubic, spec, batch_size=2):
            pass
    assert _io_threads() <= before
    gen = tiling.iter_tiled(source, tiling.ArraySink((4, 144, 176)), bicubic, spec, batch_size=2)
    next(gen)
    assert len(_io_threads() - before) == 2
    gen.close()  # a consumer that stops (napari's cancel): both helpers are joined
    assert _io_threads() <= before


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_run_matches_cpu(s2):
    """On a GPU: pinned, non-blocking copies, a batch of several tiles and auto precision give the
    CPU's fp32 result within the held-out precision rule's noise."""
    run = pipeline.resolve_run(s2, pipeline.Settings("s2-sr-x4", device="cuda"))
    assert run.precision in ("bf16", "fp16") and run.batch_size >= 1
    gpu = hd.enhance(s2, "s2-sr-x4", tile=32, batch_size=4, device="cuda").array()
    cpu = hd.enhance(s2, "s2-sr-x4", tile=32, precision="fp32", device="cpu").array()
    diff = np.abs(gpu - cpu)
    assert 10 * np.log10(10000.0 ** 2 / np.mean(diff ** 2)) > 60
