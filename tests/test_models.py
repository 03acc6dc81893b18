"""SRGAN-family networks, losses, normalisation and trained models in the registry (tiny, CPU)."""

import math
from dataclasses import replace

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

import hires_domain
from hires_domain.errors import HiresError
from hires_domain.intensity import Normaliser
from hires_domain.models import get_model, losses as L
from hires_domain.models.discriminators import UNetDiscriminatorSN, VGGStyleDiscriminator
from hires_domain.models.generators import MSRResNet, RRDBNet, build_generator
from hires_domain.models.neural import NeuralModel, register_dir, save_model
from support import SAMPLES

TINY = {"msrresnet": dict(nf=8, nb=1), "rrdb": dict(nf=8, nb=1, gc=4)}


def _net(arch, c_in, c_out, scale, zero_last=True):
    torch.manual_seed(0)
    return build_generator(arch, c_in, c_out, scale, zero_last=zero_last, **TINY[arch])


@pytest.mark.parametrize("arch", ["msrresnet", "rrdb"])
@pytest.mark.parametrize("scale", [1, 2, 4])
@pytest.mark.parametrize("c_in,c_out", [(1, 1), (4, 4), (3, 1)])
def test_generator_shapes(arch, scale, c_in, c_out):
    y = _net(arch, c_in, c_out, scale)(torch.rand(2, c_in, 12, 10))
    assert y.shape == (2, c_out, 12 * scale, 10 * scale)


@pytest.mark.parametrize("arch", ["msrresnet", "rrdb"])
@pytest.mark.parametrize("scale", [1, 2, 4])
def test_zero_last_layer_is_exactly_the_bicubic_or_identity_path(arch, scale):
    net = _net(arch, 4, 4, scale)
    net.set_stats([0.1, 0.2, 0.3, 0.4], [0.05, 0.1, 0.2, 0.3])  # standardisation must not change it
    x = torch.rand(1, 4, 16, 16)
    expected = get_model("bicubic").predict(x, scale)
    assert torch.equal(net(x), expected)


def test_unsupported_scale_refused():
    with pytest.raises(HiresError, match="scales 1, 2, 4"):
        MSRResNet(1, 1, 3)
    with pytest.raises(HiresError, match="scales"):
        RRDBNet(1, 1, 8)


@pytest.mark.parametrize("arch", ["msrresnet", "rrdb"])
@pytest.mark.parametrize("scale", [1, 2, 4])
def test_declared_halo_covers_the_receptive_field(arch, scale):
    """Gradient probe: no output pixel depends on input pixels further away than the halo."""
    net = _net(arch, 1, 1, scale, zero_last=False).double()
    n = 2 * net.receptive_radius() + 9
    x = torch.rand(1, 1, n, n, dtype=torch.float64, requires_grad=True)
    y = net(x)
    for oy in range(scale):  # every phase of the output pixel within its LR pixel
        for ox in range(scale):
            c = n // 2
            g, = torch.autograd.grad(y[0, 0, c * scale + oy, c * scale + ox], x, retain_graph=True)
            rows, cols = np.nonzero(g[0, 0].abs().numpy() > 0)
            reach = max(np.abs(rows - c).max(), np.abs(cols - c).max())
            assert reach <= net.receptive_radius()
            assert reach >= net.receptive_radius() - 1  # and the halo is not wildly generous


def test_unet_discriminator_has_spectral_norm_and_per_pixel_output():
    d = UNetDiscriminatorSN(4, nf=8)
    sn = [m for m in d.modules() if isinstance(m, torch.nn.Conv2d) and hasattr(m, "weight_u")]
    assert len(sn) == 8  # every conv but the first and the output head
    logits, feats = d(torch.rand(2, 4, 32, 32))
    assert logits.shape == (2, 1, 32, 32) and len(feats) == 6
    with pytest.raises(HiresError, match="multiples of 8"):
        d(torch.rand(1, 4, 20, 20))


def test_vgg_discriminator_patch_output():
    d = VGGStyleDiscriminator(1, nf=8, depth=3)
    logits, feats = d(torch.rand(2, 1, 32, 32))
    assert logits.shape == (2, 1, 4, 4) and len(feats) == 3
    assert any(hasattr(m, "weight_u") for m in d.modules())


# ---------------------------------------------------------------- losses


def test_spectral_angle_zero_for_identical_and_right_for_orthogonal():
    x = torch.rand(2, 4, 8, 8) + 0.1
    x.requires_grad_(True)
    loss = L.sam_loss(x, x.detach())
    assert float(loss.detach()) == 0.0
    loss.backward()
    assert torch.isfinite(x.grad).all()
    a = torch.zeros(1, 2, 1, 1)
    a[0, 0] = 1
    b = torch.zeros(1, 2, 1, 1)
    b[0, 1] = 3
    assert abs(float(L.sam_loss(a, b)) - np.pi / 2) < 1e-6
    assert abs(float(L.sam_loss(a, 2 * a))) < 1e-7  # angle ignores brightness


def test_masks_exclude_nodata_from_every_loss():
    torch.manual_seed(0)
    pred, target = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    mask = torch.ones(2, 1, 32, 32)
    mask[:, :, :, 20:] = 0  # right strip is nodata
    garbage = pred.clone()
    garbage[..., 20:] = 1e6
    tgarbage = target.clone()
    tgarbage[..., 20:] = -1e6
    for fn in (L.l1_loss, L.sam_loss, lambda p, t, m: L.ssim_loss(p, t, m, 1.0)):
        a, b = fn(pred, target, mask), fn(garbage, tgarbage, mask)
        assert torch.allclose(a, b), (a, b)
        assert a > 0
    # the masked mean is the mean over valid pixels only
    assert torch.allclose(L.l1_loss(pred, target, mask), (pred - target)[..., :20].abs().mean())
    # GAN and feature-matching losses: logits/features in nodata do not count
    real, fake = torch.randn(2, 1, 32, 32), torch.randn(2, 1, 32, 32)
    r2, f2 = real.clone(), fake.clone()
    r2[..., 20:], f2[..., 20:] = 50.0, -50.0
    for fn in (L.relativistic_d_loss, L.relativistic_g_loss):
        assert torch.allclose(fn(real, fake, mask), fn(r2, f2, mask))
    feats = [torch.rand(2, 4, 32, 32), torch.rand(2, 4, 16, 16)]
    feats2 = [f.clone() for f in feats]
    feats2[0][..., 20:] = 9.0
    feats2[1][..., 10:] = 9.0
    assert torch.allclose(L.feature_matching_loss(feats, feats, mask), torch.tensor(0.0))
    assert torch.allclose(L.feature_matching_loss(feats2, feats, mask), torch.tensor(0.0))


def test_relativistic_gan_signs():
    real, fake = torch.full((1, 1, 8, 8), 5.0), torch.full((1, 1, 8, 8), -5.0)
    # D separates well: low D loss, high G loss; reversed when fakes look more real
    assert L.relativistic_d_loss(real, fake) < 0.01 < L.relativistic_g_loss(real, fake)
    assert L.relativistic_d_loss(fake, real) > 5 > L.relativistic_g_loss(fake, real)
    same = torch.zeros(1, 1, 8, 8)
    assert torch.isclose(L.relativistic_d_loss(same, same), torch.tensor(np.log(2), dtype=torch.float32))
    # the generator's gradient pushes fake logits up
    f = fake.clone().requires_grad_(True)
    L.relativistic_g_loss(real, f).backward()
    assert (f.grad < 0).all()


def test_ssim_loss_zero_for_identical_positive_otherwise():
    x = torch.rand(1, 2, 24, 24)
    assert abs(float(L.ssim_loss(x, x, data_range=1.0))) < 1e-5
    assert float(L.ssim_loss(x, torch.rand(1, 2, 24, 24), data_range=1.0)) > 0.5


def test_perceptual_status_reports_missing_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.delenv("HIRES_WEIGHTS_DIR", raising=False)
    path, why = L.perceptual_status(tmp_path)
    assert path is None and L.VGG19_FILE in why


def vgg19_file(directory) -> dict:
    """A VGG19 state dict in torchvision's layout (``features.N.*`` + classifier) saved under its
    download name. Random values: the real file cannot be fetched offline; the layout is the point."""
    torch.manual_seed(0)
    state, ch, i = {}, 3, 0
    for v in L._VGG19_CFG + ["M"]:
        if v == "M":
            i += 1
            continue
        state[f"features.{i}.weight"] = torch.randn(v, ch, 3, 3) * (2.0 / (9 * ch)) ** 0.5
        state[f"features.{i}.bias"] = torch.zeros(v)
        ch, i = v, i + 2
    state["classifier.0.weight"] = torch.zeros(4, 4)
    torch.save(state, Path(directory) / L.VGG19_FILE)
    return state


def test_perceptual_loss_reads_torchvision_weights_to_conv5_4_and_respects_masks(tmp_path, monkeypatch):
    state = vgg19_file(tmp_path)
    monkeypatch.setenv("HIRES_WEIGHTS_DIR", str(tmp_path))
    path, why = L.perceptual_status()
    assert why is None and Path(path) == tmp_path / L.VGG19_FILE
    loss = L.PerceptualLoss(path, lo=-1.0, hi=3.0)
    assert len(loss.features) == L._CONV5_4 + 1 and isinstance(loss.features[-1], torch.nn.Conv2d)
    assert torch.equal(loss.features[0].weight, state["features.0.weight"])
    assert torch.equal(loss.features[L._CONV5_4].weight, state[f"features.{L._CONV5_4}.weight"])
    assert not any(p.requires_grad for p in loss.features.parameters())
    x = torch.rand(1, 2, 48, 48)
    assert float(loss(x, x)) == 0.0
    y = x.clone()
    y[..., :16, :16] += 0.5
    assert float(loss(y, x)) > 0.0
    mask = torch.ones(1, 1, 48, 48)
    mask[..., :16, :16] = 0
    assert float(loss(y, x, mask)) == 0.0  # differences under the mask add nothing
    y.requires_grad_(True)
    loss(y, x).backward()
    assert y.grad.abs().sum() > 0


# ---------------------------------------------------------------- normalisation


def test_normaliser_ct_clips_and_scales():
    n = Normaliser.from_manifest({"units": "HU", "suggested_clip": [-1024.0, 3071.0]})
    hu = torch.tensor([-3000.0, -1000.0, 0.0, 1000.0, 5000.0]).view(1, 1, 1, 5)
    assert torch.allclose(n.forward(hu).flatten(), torch.tensor([-1.024, -1.0, 0.0, 1.0, 3.071]))
    assert torch.allclose(n.inverse(n.forward(hu))[..., 1:4], hu[..., 1:4])
    assert abs(n.data_range - 4.095) < 1e-9


def test_normaliser_reflectance_not_clamped_and_round_trips():
    n = Normaliser.from_manifest({"units": "DN", "bands": ["a", "b"], "reflectance_scale": [1e-4, 2e-4],
                                  "reflectance_offset": [-0.1, 0.0]})
    dn = torch.tensor([[0.0, 500.0, 12000.0], [0.0, 100.0, 9000.0]]).view(1, 2, 1, 3)
    r = n.forward(dn)
    assert float(r[0, 0, 0, 0]) == pytest.approx(-0.1)  # below 0 kept
    assert float(r[0, 1, 0, 2]) == pytest.approx(1.8)  # above 1 kept
    assert torch.allclose(n.inverse(r), dn, atol=1e-3)
    again = Normaliser.from_dict(n.to_dict())
    assert torch.equal(again.forward(dn), r)


# ---------------------------------------------------------------- trained models in the registry


@settings(max_examples=25, deadline=None)
@given(arch=st.sampled_from(["msrresnet", "rrdb"]), scale=st.sampled_from([1, 2, 4]),
       size=st.tuples(st.integers(3, 40), st.integers(3, 40)), margins=st.tuples(*[st.integers(0, 12)] * 4))
def test_cropped_halo_leaves_the_kept_output_unchanged(arch, scale, size, margins):
    """``forward(x, margins)`` skips the tail on the halo: every output pixel outside the margins
    is what the full forward pass gives; the margins hold the base path."""
    net = _net(arch, 2, 2, scale, zero_last=False)
    t, b, left, r = margins
    h, w = size[0] + t + b, size[1] + left + r
    x = torch.rand(1, 2, h, w)
    with torch.inference_mode():
        full, cropped = net(x), net(x, margins)
    k = scale
    core = (..., slice(t * k, (h - b) * k), slice(left * k, (w - r) * k))
    torch.testing.assert_close(cropped[core], full[core], rtol=1e-5, atol=1e-5)
    if max(margins) > math.ceil(net.tail_radius):  # the tail really skipped part of the halo
        assert not torch.allclose(cropped, full, atol=1e-5)


def test_the_tiler_passes_each_tiles_margins_to_the_network(monkeypatch):
    """Tiles at the image edge have no halo on that side, inner ones have the whole halo."""
    from hires_domain import read
    from hires_domain.models.generators import _Residual

    seen = []
    original = _Residual.forward
    monkeypatch.setattr(_Residual, "forward", lambda self, x, margins=None: seen.append(margins)
                        or original(self, x, margins))
    img = read(SAMPLES / "s2_crop.tif")
    hires_domain.enhance(img, "s2-sr-x4", scale=4, tile=64, overlap=0, precision="fp32", device="cpu")
    halo = get_model("s2-sr-x4").info.halo
    assert (0, halo, 0, halo) in seen and (halo, halo, halo, halo) in seen and (halo, 0, halo, 0) in seen
    assert len(seen) == 16


@pytest.fixture
def s2_model(tmp_path, monkeypatch):
    from hires_domain import models

    monkeypatch.setattr(models, "_REGISTRY", dict(models._REGISTRY))  # registrations end with the test
    torch.manual_seed(1)
    net = MSRResNet(4, 4, 2, nf=8, nb=2, zero_last=False)
    net.set_stats([0.1] * 4, [0.05] * 4)
    norm = Normaliser("reflectance", [1e-4] * 4, [0.0] * 4, bands=["B02", "B03", "B04", "B08"])
    save_model(tmp_path, "t-s2-x2", net, norm, "raster", norm.bands, summary="test model")
    return net.eval(), norm, tmp_path


def test_model_files_are_safetensors_and_json_only(s2_model):
    _, _, d = s2_model
    assert sorted(p.name for p in d.iterdir()) == ["t-s2-x2.json", "t-s2-x2.safetensors"]
    assert not (d / "t-s2-x2.safetensors").read_bytes().startswith(b"\x80")  # not a pickle


def test_neural_model_round_trip(s2_model):
    net, norm, d = s2_model
    assert register_dir(d) == ["t-s2-x2"]
    m = get_model("t-s2-x2")
    assert isinstance(m, NeuralModel)
    assert m.info.scales == (2,) and m.info.bands == 4 and m.info.domains == ("raster",)
    assert m.info.halo == net.receptive_radius() == 7
    dn = torch.rand(1, 4, 20, 20) * 3000
    with torch.no_grad():
        expected = norm.inverse(net(norm.forward(dn)))
    assert torch.allclose(m.predict(dn, 2), expected, rtol=1e-5, atol=1e-2)
    with pytest.raises(HiresError, match="x2"):
        m.check(4, 4, "raster")
    with pytest.raises(HiresError, match="4 band"):
        m.check(2, 3, "raster")


def test_tiled_equals_whole_image_for_the_network(s2_model):
    """The seam test: with the declared halo, tiling changes nothing (up to float rounding)."""
    from hires_domain import read

    _, _, d = s2_model
    register_dir(d)
    img = read(SAMPLES / "s2_crop.tif")
    img = replace(img, data=img.array()[:, :80, :72].copy())
    whole = hires_domain.enhance(img, "t-s2-x2", scale=2, tile=128, overlap=0, device="cpu").data
    tiled = hires_domain.enhance(img, "t-s2-x2", scale=2, tile=24, overlap=6, batch_size=3, device="cpu").data
    assert whole.shape == (4, 160, 144)
    assert np.isfinite(whole).all()
    np.testing.assert_allclose(tiled, whole, rtol=0, atol=0.05)  # DN; float32 rounding only
    # and the network is not the identity/bicubic: it changed the pixels
    base = hires_domain.enhance(img, "bicubic", scale=2, tile=128, overlap=0, device="cpu").data
    assert np.abs(whole - base).max() > 1.0


def test_neural_model_refuses_mismatched_weights(s2_model):
    import json

    _, _, d = s2_model
    meta = json.loads((d / "t-s2-x2.json").read_text())
    meta["generator"]["nf"] = 16
    meta["name"] = "broken"
    (d / "broken.json").write_text(json.dumps(meta))
    (d / "broken.safetensors").write_bytes((d / "t-s2-x2.safetensors").read_bytes())
    register_dir(d)
    with pytest.raises(HiresError, match="do not match"):
        get_model("broken").predict(torch.rand(1, 4, 8, 8), 2)
