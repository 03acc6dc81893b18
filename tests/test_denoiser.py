"""The blind CT denoiser's network (models/denoisers.py) and the shipped ct-denoise on real slices:
receptive field, exact tiling at odd sizes and tile settings, blind across doses."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import hires_domain as hd
from hires_domain.data import degradations as deg
from hires_domain.errors import HiresError
from hires_domain.image import Image
from hires_domain.models.denoisers import DilatedDenoiser
from hires_domain.models.generators import build_generator


def _net(zero_last=True):
    torch.manual_seed(0)
    return build_generator("dilated", 1, 1, 1, zero_last=zero_last, nf=8, dilations=[1, 2, 1])


@pytest.mark.parametrize("shape", [(16, 16), (15, 9), (7, 12)])
def test_odd_and_even_sizes_keep_their_shape_and_start_as_identity(shape):
    x = torch.rand(2, 1, *shape)
    assert torch.equal(_net()(x), x)  # zero last layer: exactly the input
    assert _net(zero_last=False)(x).shape == x.shape


def test_scale_other_than_one_refused():
    with pytest.raises(HiresError, match="scale 1 only"):
        DilatedDenoiser(1, 1, 2)


@pytest.mark.parametrize("phase", [(0, 0), (1, 0), (0, 1), (1, 1)])
def test_declared_halo_covers_the_receptive_field_at_every_sub_image_phase(phase):
    net = _net(zero_last=False).double()
    r = net.receptive_radius()
    assert r % 2 == 0 and net.phase == 2
    n = 2 * r + 10
    x = torch.rand(1, 1, n, n, dtype=torch.float64, requires_grad=True)
    c = (n // 2 + phase[0], n // 2 + phase[1])
    g, = torch.autograd.grad(net(x)[0, 0, c[0], c[1]], x)
    rows, cols = np.nonzero(g[0, 0].numpy())
    reach = max(np.abs(rows - c[0]).max(), np.abs(cols - c[1]).max())
    assert r - 1 <= reach <= r


def _ct_slice(name: str = "CT_small.dcm") -> np.ndarray:
    import pydicom
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file(name))
    return ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept), float(ds.PixelSpacing[0])


def _as_image(hu: np.ndarray, pixel: float) -> Image:
    affine = np.diag([1.0, pixel, pixel, 1.0])
    return Image(hu.astype(np.float32)[None, None], affine, "LPS", "nifti", "HU", None, ("HU",))


@pytest.mark.parametrize("crop,tile,overlap", [((128, 128), 64, 0), ((127, 93), 64, 8), ((101, 117), 100, 7)])
def test_shipped_denoiser_tiles_equal_the_whole_image(crop, tile, overlap):
    """The seam test on the reserved real slice, at odd sizes and tiles off the 64 grid."""
    hu, pixel = _ct_slice()
    noisy = deg.low_dose_ct(hu, pixel, 1.0, np.random.default_rng(0), i0=2e4, n_angles=360)
    img = _as_image(noisy[: crop[0], : crop[1]], pixel)
    whole = hd.enhance(img, "ct-denoise", tile=512, overlap=0, device="cpu", precision="fp32").data
    tiled = hd.enhance(img, "ct-denoise", tile=tile, overlap=overlap, batch_size=3, device="cpu",
                       precision="fp32").data
    np.testing.assert_allclose(tiled, whole, rtol=0, atol=0.05)  # HU; float rounding only
    assert np.abs(whole - img.data).max() > 5.0  # and it did denoise


def _soft_psnr_before_after(photons: float, filt: str, seed: int = 1) -> tuple[float, float]:
    """Soft-tissue PSNR of the low-dose CT_small slice (reserved, never trained on) and of the
    blind model's output, against the noise-free reconstruction of the same protocol."""
    from hires_domain.metrics import psnr

    hu, pixel = _ct_slice()
    soft = lambda a: np.clip(a, -160.0, 240.0)[None]  # noqa: E731
    clean = deg.low_dose_ct(hu, pixel, 1.0, None, n_angles=720, filter_name=filt)
    noisy = deg.low_dose_ct(hu, pixel, 1.0, np.random.default_rng(seed), i0=photons, n_angles=720, filter_name=filt)
    out = hd.enhance(_as_image(noisy, pixel), "ct-denoise", device="cpu").data[0, 0]
    return tuple(psnr(soft(a), soft(clean), 400.0).value for a in (noisy, out))


@pytest.mark.parametrize("photons,filt", [(5e3, "ramp"), (1e4, "shepp-logan"), (2e4, "ramp")])
def test_blind_denoiser_helps_at_heavy_noise_on_a_reserved_slice(photons, filt):
    """Not told the dose nor the kernel (card, protocol E: +3.3 to +6.1 dB at 5e3-2e4 photons)."""
    before, after = _soft_psnr_before_after(photons, filt)
    assert after > before + 2.0, (before, after)


@pytest.mark.xfail(strict=True, reason="known defect (docs/models/ct-denoise.md): on CT_small, whose own "
                   "scanner striation looks like noise to a model trained on isotropic scanner noise, the "
                   "blind model removes it at mild noise (1e6 photons: 41.9 -> 33.6 dB soft tissue)")
def test_blind_denoiser_never_worse_than_its_input_at_mild_noise():
    before, after = _soft_psnr_before_after(1e6, "ramp")
    assert after >= before, (before, after)


def test_blind_denoiser_leaves_a_nearly_noiseless_scan_alone():
    """Far below the trained noise (1e7 photons; training 3e3-1e7, a fifth at 1e6-1e7): on a
    reserved slice whose truth is clean (693_UNCI) the model must not make it worse (card: 50.2 ->
    52.2 dB; CT_small's own texture is still taken out: the strict xfail below)."""
    from hires_domain.metrics import psnr

    hu, pixel = _ct_slice("693_UNCI.dcm")
    soft = lambda a: np.clip(a, -160.0, 240.0)[None]  # noqa: E731
    clean = deg.low_dose_ct(hu, pixel, 1.0, None, n_angles=720)
    noisy = deg.low_dose_ct(hu, pixel, 1.0, np.random.default_rng(0), i0=1e7, n_angles=720)
    out = hd.enhance(_as_image(noisy, pixel), "ct-denoise", device="cpu").data[0, 0]
    before, after = (psnr(soft(a), soft(clean), 400.0).value for a in (noisy, out))
    assert after >= before, (before, after)


def _ensemble_model(tmp_path, ensemble: int):
    from hires_domain.intensity import Normaliser
    from hires_domain.models.neural import load_model, save_model

    norm = Normaliser("hu", bands=["HU"])
    st, js = save_model(tmp_path, f"t-ens{ensemble}", _net(zero_last=False), norm, "medical", ["HU"],
                        self_ensemble=ensemble)
    return load_model(js)


@pytest.mark.parametrize("shape", [(24, 24), (23, 17)])
def test_self_ensemble_averages_the_eight_rotations_and_flips(tmp_path, shape):
    """The averaged model commutes with every rotation/flip (the single network does not), and a
    flip of an odd-sized input keeps each pixel's sub-image phase (one replicated row/column
    first): the averaged model equals the mean of the eight plain runs done by hand."""
    one, ens = _ensemble_model(tmp_path, 1), _ensemble_model(tmp_path, 8)
    x = torch.rand(1, 1, *shape, dtype=torch.float32) * 400 - 200
    y = ens.predict(x, 1)
    assert y.shape == x.shape
    pad = torch.nn.functional.pad(x, (0, shape[1] % 2, 0, shape[0] % 2), mode="replicate")
    by_hand = sum(torch.rot90(f(one.predict(f(torch.rot90(pad, k, (2, 3))), 1)), -k, (2, 3))
                  for k in range(4) for f in (lambda v: v, lambda v: v.flip(-1))) / 8
    torch.testing.assert_close(y, by_hand[..., : shape[0], : shape[1]], rtol=0, atol=1e-3)
    if shape[0] == shape[1]:
        torch.testing.assert_close(ens.predict(torch.rot90(x, 1, (2, 3)), 1), torch.rot90(y, 1, (2, 3)), rtol=0, atol=1e-3)
        assert (one.predict(torch.rot90(x, 1, (2, 3)), 1) - torch.rot90(one.predict(x, 1), 1, (2, 3))).abs().max() > 0.1


def test_self_ensemble_other_than_one_or_eight_refused(tmp_path):
    import json

    from hires_domain.models.neural import load_model

    m = _ensemble_model(tmp_path, 8)
    meta = json.loads(m.path.read_text())
    assert meta["self_ensemble"] == 8
    meta["self_ensemble"] = 4
    m.path.write_text(json.dumps(meta))
    with pytest.raises(HiresError, match="self_ensemble must be 1 or 8"):
        load_model(m.path)
