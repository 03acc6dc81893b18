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
                   "blind model removes it at mild noise (1e6 photons: 41.9 -> 32.4 dB soft tissue)")
def test_blind_denoiser_never_worse_than_its_input_at_mild_noise():
    before, after = _soft_psnr_before_after(1e6, "ramp")
    assert after >= before, (before, after)
