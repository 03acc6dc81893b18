"""LPIPS/FID wiring with injected networks, the Fréchet distance against closed forms, and the
offline weights lookup; on the bundled real CT and Sentinel-2 crops."""

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

import hires_domain
from hires_domain import HiresError
from hires_domain.metrics import perceptual as P
from hires_domain.metrics import weights as W

ALEX, INCEPTION = "alexnet-owt-7be5be79.pth", "weights-inception-2015-12-05-6726825d.pth"
S2 = dict(kind="raster", bands=[2, 1, 0], data_range=(0, 10000))  # B04, B03, B02 of B02 B03 B04 B08


SAMPLES = Path(hires_domain.__file__).parent / "samples"


@pytest.fixture(scope="module")
def ct():
    return hires_domain.read(SAMPLES / "ct_head.nii.gz").array()  # (1, 32, 128, 128), HU clipped at 0


@pytest.fixture(scope="module")
def s2():
    return hires_domain.read(SAMPLES / "s2_crop.tif").array()  # (4, 256, 256) DN


@pytest.fixture
def no_weights(tmp_path, monkeypatch):
    """Empty --weights-dir and hub cache, $HIRES_WEIGHTS_DIR unset; returns the weights dir."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv(W.ENV_VAR, raising=False)
    (tmp_path / "w").mkdir()
    return tmp_path / "w"


def tiny_net():
    """A fixed random conv backbone: per-sample mean squared feature difference."""
    torch.manual_seed(0)
    conv = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3, stride=2))
    return lambda x, y: ((conv(x) - conv(y)) ** 2).mean(dim=(1, 2, 3))


def stats_extractor(x):
    """uint8 (N, 3, H, W) -> per-channel mean, std and RMS gradient (N, 9)."""
    assert x.dtype == torch.uint8 and x.shape[1] == 3
    x = x.double() / 255
    grad = (x[..., 1:, :] - x[..., :-1, :]).pow(2).mean(dim=(2, 3)) + (x[..., 1:] - x[..., :-1]).pow(2).mean(dim=(2, 3))
    return torch.cat([x.mean(dim=(2, 3)), x.std(dim=(2, 3)), grad.sqrt()], dim=1)


# Fréchet distance: closed forms


def test_frechet_identical_gaussians_is_zero():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(5, 5))
    sigma = a @ a.T + np.eye(5)
    assert P.frechet_distance(np.ones(5), sigma, np.ones(5), sigma) == pytest.approx(0, abs=1e-9)


def test_frechet_shifted_means_is_squared_distance():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(4, 4))
    sigma, mu1, mu2 = a @ a.T + np.eye(4), rng.normal(size=4), rng.normal(size=4)
    assert P.frechet_distance(mu1, sigma, mu2, sigma) == pytest.approx(np.sum((mu1 - mu2) ** 2), rel=1e-9)


def test_frechet_diagonal_covariances():
    v1, v2 = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 0.25])
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    expected = np.sum((np.sqrt(v1) - np.sqrt(v2)) ** 2) + np.sum((mu1 - mu2) ** 2)
    assert P.frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2)) == pytest.approx(expected, rel=1e-9)


def test_frechet_full_covariance_against_eigen_computation():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(6, 6)), rng.normal(size=(6, 6))
    s1, s2 = a @ a.T + 0.1 * np.eye(6), b @ b.T + 0.1 * np.eye(6)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    # tr sqrt(s1 s2) = tr sqrt(r s2 r) with r = s1^(1/2), a symmetric PSD matrix: via eigenvalues
    w, v = np.linalg.eigh(s1)
    r = v @ np.diag(np.sqrt(w)) @ v.T
    tr_sqrt = np.sum(np.sqrt(np.clip(np.linalg.eigvalsh(r @ s2 @ r), 0, None)))
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt
    assert P.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-8)


def test_frechet_singular_covariances_stay_finite():
    f = np.random.default_rng(3).normal(size=(4, 10))  # 4 samples, 10 dims: rank-deficient
    sigma = np.cov(f, rowvar=False)
    assert abs(P.frechet_distance(f.mean(0), sigma, f.mean(0), sigma)) < 1e-4


# RGB preparation


def test_ct_becomes_three_equal_channels_in_unit_range(ct):
    rgb = P.prepare_rgb(ct, "nifti", window="brain")  # C40/W80 -> [0, 80] HU
    assert rgb.shape == (32, 3, 128, 128) and rgb.dtype == torch.float32
    assert rgb.min() == -1 and rgb.max() == 1
    assert torch.equal(rgb[:, 0], rgb[:, 1]) and torch.equal(rgb[:, 0], rgb[:, 2])
    z, y, x = np.argwhere(ct[0] == 40)[0]
    assert rgb[z, 0, y, x] == pytest.approx(0.0, abs=1e-6)  # the window centre maps to the middle


def test_band_triplet_order_and_scale(s2):
    rgb = P.prepare_rgb(s2, **S2)
    assert rgb.shape == (1, 3, 256, 256)
    for channel, band in enumerate([2, 1, 0]):
        np.testing.assert_allclose(rgb[0, channel].numpy(), np.clip(s2[band] / 10000, 0, 1) * 2 - 1, atol=1e-6)


def test_all_triplets_and_explicit_range_required(s2):
    assert P.prepare_rgb(s2, "raster", bands="all-triplets", data_range=(0, 10000)).shape == (4, 3, 256, 256)
    assert P.describe_bands(4, "all-triplets") == "all 4 triplets of 4 bands, averaged"
    with pytest.raises(HiresError, match="explicit intensity range"):
        P.prepare_rgb(s2, "raster", bands=[2, 1, 0])
    with pytest.raises(HiresError, match="name a triplet"):
        P.prepare_rgb(s2, "raster", data_range=(0, 10000))
    with pytest.raises(HiresError, match="CT windows"):
        P.prepare_rgb(s2, "raster", window="lung", bands=[2, 1, 0])


# LPIPS wiring (injected backbone)


def test_lpips_identical_is_zero_and_blur_is_positive(ct):
    net, settings = tiny_net(), {"window": "brain"}
    assert P.perceptual_metrics(ct, ct, settings, net=net)["lpips"]["value"] == 0.0
    blurred = ndimage.gaussian_filter(ct, sigma=(0, 0, 1.5, 1.5))
    entry = P.perceptual_metrics(blurred, ct, settings, net=net)["lpips"]
    assert entry["value"] > 1e-4 and entry["status"] == "ok" and entry["samples"] == 32
    assert entry["bands"] == "1 band repeated to 3 channels" and entry["better"] == "lower"


def test_lpips_ignores_hu_below_the_window(ct):
    net, settings = tiny_net(), {"window": "brain"}  # floor 0 HU
    blurred = ndimage.gaussian_filter(ct, sigma=(0, 0, 1.5, 1.5))
    base = P.perceptual_metrics(blurred, ct, settings, net=net)["lpips"]["value"]
    pred, ref = np.where(blurred <= 0, -1000.0, blurred), np.where(ct <= 0, -300.0, ct)  # still below the floor
    assert P.perceptual_metrics(pred, ref, settings, net=net)["lpips"]["value"] == pytest.approx(base, rel=1e-6)
    raw = {"data_range": (-1000, 240)}  # without the window the same change does matter
    assert P.perceptual_metrics(pred, ref, raw, net=net)["lpips"]["value"] != pytest.approx(
        P.perceptual_metrics(blurred, ct, raw, net=net)["lpips"]["value"], rel=1e-3)


def test_lpips_uses_only_the_named_bands(s2):
    net = tiny_net()
    blurred = ndimage.gaussian_filter(s2, sigma=(0, 1.5, 1.5))
    base = P.perceptual_metrics(blurred, s2, S2, net=net)["lpips"]
    assert base["bands"] == "bands 2,1,0 as RGB (0-based)"
    nir_changed = blurred.copy()
    nir_changed[3] = 0  # B08 is not in the triplet
    assert P.perceptual_metrics(nir_changed, s2, S2, net=net)["lpips"]["value"] == base["value"]
    blue_changed = blurred.copy()
    blue_changed[0] *= 1.5  # B02 is
    assert P.perceptual_metrics(blue_changed, s2, S2, net=net)["lpips"]["value"] > base["value"]


def test_data_range_as_recorded_by_evaluate(s2):
    net, settings = tiny_net(), {**S2, "data_range": {"name": "dn", "lo": 0, "hi": 10000}}
    blurred = ndimage.gaussian_filter(s2, sigma=(0, 1.5, 1.5))
    assert P.perceptual_metrics(blurred, s2, settings, net=net) == P.perceptual_metrics(blurred, s2, S2, net=net)


def test_lpips_mask_excludes_pixels_and_empty_slices(ct):
    net = tiny_net()
    valid = np.zeros(ct.shape[1:], bool)
    valid[:20, 20:100, 20:100] = True
    pred = np.where(valid, ct, ct + 50)  # differs only outside the mask
    entry = P.perceptual_metrics(pred, ct, {"window": "brain"}, net=net, valid=valid)["lpips"]
    assert entry["value"] == 0.0 and entry["samples"] == 20
    assert P.perceptual_metrics(pred, ct, {"window": "brain"}, net=net)["lpips"]["value"] > 0


def test_lpips_without_weights_is_unavailable_not_raised(ct, no_weights):
    entry = P.perceptual_metrics(ct, ct, {"window": "soft-tissue"}, weights_dir=no_weights)["lpips"]
    assert entry["status"] == "unavailable" and entry["value"] is None
    assert entry["missing"] == [ALEX] and ALEX in entry["reason"] and "torchvision" in entry["reason"]


def test_default_lpips_loads_from_weights_dir_through_a_temporary_hub(no_weights, monkeypatch):
    (no_weights / ALEX).write_bytes(b"fake")
    monkeypatch.setattr(W, "_package_problem", lambda name: None)  # pretend torchvision imports
    seen = {}

    class FakeLPIPS:
        def __init__(self, net_type, reduction):
            seen.update(net_type=net_type, reduction=reduction)
            seen["visible"] = (Path(torch.hub.get_dir()) / "checkpoints" / ALEX).read_bytes()

    import torchmetrics.image.lpip

    monkeypatch.setattr(torchmetrics.image.lpip, "LearnedPerceptualImagePatchSimilarity", FakeLPIPS)
    monkeypatch.setattr(P, "_LPIPS_NETS", {})
    P.lpips_net("alex", no_weights)
    assert seen == {"net_type": "alex", "reduction": "none", "visible": b"fake"}
    assert torch.hub.get_dir() == str(no_weights.parent / "torch" / "hub")  # restored, follows $TORCH_HOME


# FID wiring (injected extractor)


def test_fid_on_patches_of_the_s2_crop(s2):
    settings = {**S2, "patch": 64}
    same = P.fid_metric([s2], [s2], settings, extractor=stats_extractor)["fid"]
    assert same["value"] == pytest.approx(0, abs=1e-6) and same["status"] == "ok"
    assert same["set"] == "16 patches of 64x64 from one image"
    blurred = ndimage.gaussian_filter(s2, sigma=(0, 2, 2))
    assert P.fid_metric([blurred], [s2], settings, extractor=stats_extractor)["fid"]["value"] > 1e-4


def test_fid_set_of_volume_slices(ct):
    entry = P.fid_metric([ct, ct], [ct, ct], {"window": "brain"}, extractor=stats_extractor)["fid"]
    assert entry["set"] == "64 slices from 2 volumes" and entry["value"] == pytest.approx(0, abs=1e-6)


def test_patches_and_uint8_conversion():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    p = P.patches(x, 4, stride=4)
    assert p.shape == (8, 3, 4, 4) and torch.equal(p[1], x[0, :, :4, 4:]) and torch.equal(p[4], x[1, :, :4, :4])
    assert P.patches(x, 4, stride=2).shape == (18, 3, 4, 4)
    assert P.to_uint8(torch.tensor([-1.0, 0.0, 1.0, 2.0])).tolist() == [0, 128, 255, 255]


def test_default_fid_extractor_resizes_without_antialias(no_weights, monkeypatch):
    (no_weights / INCEPTION).write_bytes(b"fake")
    monkeypatch.setattr(W, "_package_problem", lambda name: None)
    seen = {}

    class FakeFID:
        def __init__(self, **kwargs):
            seen.update(kwargs)
            self.inception = stats_extractor

    import torchmetrics.image.fid

    monkeypatch.setattr(torchmetrics.image.fid, "FrechetInceptionDistance", FakeFID)
    monkeypatch.setattr(P, "_FID_EXTRACTORS", {})
    assert P.fid_extractor(no_weights) is stats_extractor
    assert seen == {"feature": 2048, "antialias": False, "feature_extractor_weights_path": str(no_weights / INCEPTION)}


def test_fid_without_weights_is_unavailable_not_raised(s2, no_weights):
    entry = P.fid_metric([s2], [s2], {**S2, "patch": 64}, weights_dir=no_weights)["fid"]
    assert entry["status"] == "unavailable" and entry["value"] is None and entry["missing"] == [INCEPTION]
    assert "torch-fidelity" in entry["reason"] and entry["set"] == "16 patches of 64x64 from one image"


# Offline weights lookup


def test_weights_status_with_nothing_present(no_weights):
    status = {s["metric"]: s for s in W.weights_status(no_weights)}
    assert set(status) == {"lpips-alex", "lpips-vgg", "fid", "is"}
    expected = {"lpips-alex": ALEX, "lpips-vgg": "vgg16-397923af.pth", "fid": INCEPTION, "is": INCEPTION}
    for s, name in ((status[m], f) for m, f in expected.items()):
        assert not s["available"] and s["files"] == {name: None} and s["missing_files"] == [name]
        assert name in s["reason"] and str(no_weights) in s["reason"] and "torch hub cache" in s["reason"]
        assert "torchvision" in s["missing_packages"]
    assert status["fid"]["searched"] == [str(no_weights), str(no_weights.parent / "torch" / "hub" / "checkpoints")]


def test_weights_status_finds_files_in_search_order(no_weights, tmp_path, monkeypatch):
    (no_weights / ALEX).write_bytes(b"fake")
    s = W.metric_status("lpips-alex", no_weights)
    assert s["files"] == {ALEX: str(no_weights / ALEX)} and s["missing_files"] == []
    assert not s["available"] and s["reason"] == "LPIPS (alex) unavailable: torchvision not installed"
    env_dir, hub = tmp_path / "env", tmp_path / "torch" / "hub" / "checkpoints"
    for d in (env_dir, hub):
        d.mkdir(parents=True)
        (d / INCEPTION).write_bytes(b"fake")
    assert W.find_file(INCEPTION) == hub / INCEPTION
    monkeypatch.setenv(W.ENV_VAR, str(env_dir))
    assert W.find_file(INCEPTION) == env_dir / INCEPTION
    (no_weights / INCEPTION).write_bytes(b"fake")
    assert W.find_file(INCEPTION, no_weights) == no_weights / INCEPTION


def test_render_weights_status_lines(no_weights):
    lines = W.render_weights_status(W.weights_status(no_weights))
    assert lines[0] == "LPIPS (alex): UNAVAILABLE"
    assert f"  {ALEX}: not found (download: https://download.pytorch.org/models/{ALEX})" in lines
    assert "  package torch-fidelity: missing (pip install torch-fidelity)" in lines
    assert lines[-1].startswith("searched: ")
