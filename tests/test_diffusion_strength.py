"""Repaint strength of diffusion models (SDEdit), with the shipped ``s2-ldm-x4`` on a crop of the
bundled Sentinel-2 sample: 0 returns the embedded first stage (``s2-sr-x4`` at fp32), 1 is the
full sampling as without a strength, the result moves further from the first stage as the
strength grows, fewer steps run below 1, and the choice is recorded and checked everywhere."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
import torch

import hires_domain as hd
from hires_domain import geometry, io
from hires_domain.errors import HiresError
from hires_domain.models import ldm
from hires_domain.models.ldm import Sampling, steps_skipped
from hires_domain.pipeline import Settings
from support import SAMPLES, hires

MODEL = "s2-ldm-x4"


@pytest.fixture(scope="module")
def crop():
    """A 40 × 48 crop (odd to the latent grid: padding is on the path) of the bundled 10 m bands."""
    image = io.read(SAMPLES / "s2_crop.tif")
    out = image.with_data(np.ascontiguousarray(image.array()[:, 30:70, 100:148]))
    out.affine = geometry.cropped_affine(image.affine, (30, 100))
    return out


def run(crop, **kw):
    return hd.enhance(crop, MODEL, device="cpu", steps=10, **kw).array().astype(np.float64)


def test_zero_is_the_first_stage_and_one_the_full_sampling(crop):
    first = hd.enhance(crop, "s2-sr-x4", device="cpu", precision="fp32").array().astype(np.float64)
    zero = run(crop, strength=0.0, samples=2)
    assert np.abs(zero - first).max() <= 0.01  # DN: the same generator at the same precision
    full = run(crop)
    assert np.array_equal(run(crop, strength=1.0), full)
    distances = [np.sqrt(((run(crop, strength=s) - first) ** 2).mean()) for s in (0.3, 0.6)]
    distances.append(np.sqrt(((full - first) ** 2).mean()))
    assert 0 < distances[0] < distances[1] < distances[2], distances  # further from the first stage


@pytest.mark.parametrize("tile,overlap", [(None, None), (32, 8), (40, 12)])
def test_zero_is_the_first_stage_at_odd_sizes_and_any_tiling(tile, overlap):
    """97 × 81 (odd to the latent grid): the first stage runs on each tile as given, so its padding
    never differs from s2-sr-x4's own."""
    image = io.read(SAMPLES / "s2_crop.tif")
    odd = image.with_data(np.ascontiguousarray(image.array()[:, 10:107, 20:101]))
    first = hd.enhance(odd, "s2-sr-x4", device="cpu", precision="fp32").array().astype(np.float64)
    zero = hd.enhance(odd, MODEL, device="cpu", strength=0.0, tile=tile, overlap=overlap).array()
    assert np.abs(zero - first).max() <= 0.01


def test_zero_is_the_first_stage_for_ct_too():
    """ct-ldm-x2 enforces consistency on its samples; at strength 0 there is no sample: the
    output is its embedded ct-sr-x2, as that model gives it (fp32)."""
    ct = io.read(SAMPLES / "ct_head.nii.gz")
    crop = ct.with_data(np.ascontiguousarray(ct.array()[:, 14:15, 40:88, 40:88]))
    crop.affine = geometry.cropped_affine(ct.affine, (14, 40, 40))
    first = hd.enhance(crop, "ct-sr-x2", device="cpu", precision="fp32").array()
    zero = hd.enhance(crop, "ct-ldm-x2", device="cpu", strength=0.0).array()
    assert np.abs(zero.astype(np.float64) - first).max() <= 0.01


def test_fewer_steps_run_below_one(crop, monkeypatch):
    seen = []
    real = ldm.denoise_jointly
    monkeypatch.setattr(ldm, "denoise_jointly", lambda *a, **kw: seen.append(kw.get("start", 0)) or real(*a, **kw))
    done = []
    hd.enhance(crop, MODEL, device="cpu", steps=10, strength=0.3, progress=lambda d, t: done.append((d, t)))
    assert seen == [7] and done[-1] == (3, 3)  # the last 3 of 10 steps; progress counts those
    assert [steps_skipped(20, s) for s in (0, 0.3, 0.6, 1)] == [20, 14, 8, 0]


def test_strength_noises_the_first_stage_to_its_step(crop, monkeypatch):
    """The sampler starts from r = 0 (the first stage) noised to step ``start``: at 0.3 of 10
    DPM-Solver++ steps the start latent's spread is that step's sigma × temperature, well below
    the full-strength start (sigma = 1)."""
    starts = []
    real = ldm.denoise_jointly
    monkeypatch.setattr(ldm, "denoise_jointly", lambda net, x, *a, **kw: starts.append(x.std().item()) or real(
        net, x, *a, **kw))
    run(crop, strength=0.3)
    run(crop, strength=1.0)
    model = hd.models.get_model(MODEL)
    scheduler = ldm.make_scheduler(model.diffusion["scheduler"], "dpm++", 10)
    sigma = scheduler.add_noise(torch.zeros(1), torch.ones(1), scheduler.timesteps[7:8]).item()
    tau = model.defaults["temperature"]  # the model's calibrated temperature
    assert 0.05 < sigma < 0.9
    assert starts[0] == pytest.approx(tau * sigma, rel=0.05) and starts[1] == pytest.approx(tau, rel=0.05), starts


def test_settings_describe_and_refuse(crop, tmp_path, capsys):
    s = Settings(MODEL, strength=0.6)
    assert s.sampling.strength == 0.6 and " strength=0.6 " in s.describe()
    assert "strength" not in Settings("s2-sr-x4").describe()
    with pytest.raises(HiresError, match="strength must be"):
        Settings(MODEL, strength=1.2)
    with pytest.raises(HiresError, match="strength must be"):
        Sampling(strength=float("nan"))
    with pytest.raises(HiresError, match="s2-sr-x4 runs at x4"):
        Settings("s2-sr-x4", strength=0.5)

    src, dst = tmp_path / "in.tif", tmp_path / "out.tif"
    io.write(crop, src)
    code, _, err = hires(capsys, "enhance", src, dst, "--model", MODEL, "--strength", "0.3", "--steps", "4",
                         "--device", "cpu", "-q")
    assert code == 0, err
    with rasterio.open(dst) as f:
        assert " strength=0.3 " in f.tags()["HIRES_PROVENANCE"]
    code, _, err = hires(capsys, "enhance", src, tmp_path / "x.tif", "--model", "s2-sr-x4", "--strength", "0.5")
    assert code == 2 and "diffusion models" in err and not (tmp_path / "x.tif").exists()
