"""Latent diffusion at inference, with small random-weight models (``support.make_ldm``) on crops
of the bundled samples: conditioning reaches the denoiser, the noise is keyed by global position,
the jointly-tiled sampler gives the same image for any inner tile size and the outer tiler adds
no seams, seeds/samples/uncertainty/consistency/samplers behave, and the CLI writes the
uncertainty in the output's format and geometry or refuses bad options with one line."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from hires_domain import geometry, io
from hires_domain.errors import HiresError
from hires_domain.metrics import consistency, psnr, seam_score
from hires_domain.models import _REGISTRY as REGISTRY
from hires_domain.models.ldm import Sampling
from hires_domain.models.ldm_nets import Denoiser
from hires_domain.models.ldm_sampling import noise_field
from hires_domain.models.neural import load_model
from hires_domain.pipeline import enhance
from support import SAMPLES, hires, make_ldm

S2 = "td-s2-x4"  # raster, 4 bands, x4 (tile 64, overlap 16, halo 16)
CT = "td-ct-x2"  # medical, 1 band, x2, consistency enforced by default
REFLECTANCE = 1e-4  # s2_crop.tif: reflectance = DN / 10000


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: these networks are small, and on a loaded machine (tests beside a
    training run) two OpenMP threads wait on each other for far longer than they compute."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """The two models, registered for this module only."""
    saved = dict(REGISTRY)
    d = tmp_path_factory.mktemp("ldm")
    paths = {S2: make_ldm(d, S2, bands=4, scale=4, domain="raster"),
             CT: make_ldm(d, CT, bands=1, scale=2, domain="medical", channels=(8, 16))}
    yield paths
    REGISTRY.clear()
    REGISTRY.update(saved)


def crop(image, starts, size):
    """A crop of an Image (spatial ``starts``, in-plane ``size``), geometry moved with it."""
    region = tuple(slice(s, s + n) for s, n in zip(starts, size))
    out = image.with_data(np.ascontiguousarray(image.array()[(slice(None), *region)]))
    out.affine = geometry.cropped_affine(image.affine, starts)
    return out


@pytest.fixture(scope="module")
def s2():
    return io.read(SAMPLES / "s2_crop.tif")


@pytest.fixture(scope="module")
def s2_small(s2):
    return crop(s2, (40, 60), (32, 32))


@pytest.fixture(scope="module")
def ct_small():
    ct = io.read(SAMPLES / "ct_head.nii.gz")
    return crop(ct, (14, 40, 40), (2, 48, 48))


def refl(image) -> np.ndarray:
    return image.array().astype(np.float64) * REFLECTANCE


def differ_db(a, b) -> float:
    """PSNR between two reflectance arrays (range 1); inf when identical."""
    return psnr(a, b, 1.0).value


# ---------------------------------------------------------------- the denoiser and the noise


def test_conditioning_and_level_reach_the_denoiser():
    torch.manual_seed(0)
    net = Denoiser(16, 4 + 16, (16, 32)).eval()
    x, cond = torch.randn(1, 16, 16, 16), torch.randn(1, 20, 16, 16)
    with torch.no_grad():
        base = net(x, 500, cond, 0.0)
        assert torch.equal(net(x, 500, cond.clone(), 0.0), base)  # nothing changed: the same output
        lr_changed = cond.clone()
        lr_changed[:, :4] += 0.5  # the LR part of the conditioning
        assert (net(x, 500, lr_changed, 0.0) - base).abs().max() > 1e-4
        assert (net(x, 500, cond, 0.5) - base).abs().max() > 1e-4  # the augmentation level
        assert (net(x, 200, cond, 0.0) - base).abs().max() > 1e-4  # and the timestep


def test_every_pixel_of_a_small_denoiser_sees_its_neighbours():
    """Per-pixel group norm over groups of one or two channels erases a layer's input (one
    channel: a constant; two: about ±1); small channel counts must still give a network whose
    output depends on the neighbourhood (it did not for channels (8, 16))."""
    from hires_domain.models.ldm_nets import KLCodec, receptive_radius

    torch.manual_seed(0)
    for channels in ((8, 16), (16, 32)):
        assert receptive_radius(Denoiser(16, 20, channels).eval(), size=96) > 4, channels
    codec = KLCodec(4, 4, 4, (8, 8, 8)).eval()
    a, b = torch.randn(1, 4, 32, 32), torch.randn(1, 4, 32, 32)
    with torch.no_grad():
        assert (codec.encode(a) - codec.encode(b)).abs().max() > 1e-3  # the encoder reads its input


def test_noise_field_is_keyed_by_global_position():
    big = noise_field(7, 0, (0, 0), (100, 90), 3)
    assert big.shape == (3, 100, 90)
    for origin, shape in (((5, 7), (20, 30)), ((31, 30), (40, 35)), ((64, 0), (36, 90))):
        (y, x), (h, w) = origin, shape
        assert torch.equal(noise_field(7, 0, origin, shape, 3), big[:, y:y + h, x:x + w]), origin
    assert abs(float(big.mean())) < 0.05 and abs(float(big.std()) - 1) < 0.05  # standard normal
    window = noise_field(7, 0, (5, 7), (20, 30), 3)
    for other in (noise_field(8, 0, (5, 7), (20, 30), 3),  # another seed
                  noise_field(7, 1, (5, 7), (20, 30), 3),  # another sample
                  noise_field(7, 0, (5, 7), (20, 30), 3, lead=(1,)),  # another slice
                  noise_field(7, 0, (5, 8), (20, 30), 3)):  # shifted by one pixel
        assert not torch.allclose(other, window)
    # a volume's slices: each slice's window equals the same crop of its larger window
    assert torch.equal(noise_field(7, 0, (3, 4), (8, 8), 3, lead=(2,)),
                       noise_field(7, 0, (0, 0), (16, 16), 3, lead=(2,))[:, 3:11, 4:12])


# ---------------------------------------------------------------- tiling


def test_inner_tile_size_does_not_change_the_image(models, s2):
    """Joint tiled denoising (one latent, tiles blended every step) on a real 96x96 crop: inner
    tiles of 32, 64 and 128 latent pixels give the same image, far closer to each other than two
    seeds are (~+60 dB here; tiles read without their halo come to only ~+20 dB, and tiles
    denoised apart or noise keyed by tile to ~0)."""
    x = torch.from_numpy(s2.array()[:, 40:136, 60:156].copy())[None]
    m = load_model(models[S2])
    out = {}
    for tile in (32, 64, 128):
        m.defaults = {**m.defaults, "tile": tile, "overlap": 8, "halo": 16}
        m.with_sampling(Sampling(steps=2, seed=3))
        out[tile] = m.predict_at(x, 4, [(0, 0)])[0].double().numpy() * REFLECTANCE
    m.with_sampling(Sampling(steps=2, seed=4))
    other_seed = m.predict_at(x, 4, [(0, 0)])[0].double().numpy() * REFLECTANCE
    seeds_db = differ_db(out[128], other_seed)
    for a, b in ((32, 64), (32, 128), (64, 128)):
        db = differ_db(out[a], out[b])
        assert db >= 40 and db >= seeds_db + 35, (a, b, db, seeds_db)


def test_outer_tiles_add_no_seams(models, s2):
    """Small outer tiles (the pipeline's tiler) on a real crop: no seams, and the same image as
    one tile (the noise is keyed by global position, not by tile)."""
    image = crop(s2, (100, 120), (64, 64))
    tiled = refl(enhance(image, S2, tile=48, overlap=8, steps=3, seed=0, device="cpu"))
    whole = refl(enhance(image, S2, tile=256, overlap=8, steps=3, seed=0, device="cpu"))
    other = refl(enhance(image, S2, tile=256, overlap=8, steps=3, seed=1, device="cpu"))
    assert seam_score(tiled, 48, 8, 4) < 1.1
    assert differ_db(tiled, whole) >= max(40, differ_db(whole, other) + 20)


# ---------------------------------------------------------------- sampling choices


def test_seed_samples_and_uncertainty(models, s2_small):
    run = lambda **kw: enhance(s2_small, S2, device="cpu", steps=2, **kw)  # noqa: E731
    a = refl(run(seed=5))
    assert np.array_equal(a, refl(run(seed=5)))  # same seed: identical
    assert not np.allclose(a, refl(run(seed=6)))  # another seed: another image

    mean, std = run(seed=5, samples=3, uncertainty=True)
    first = run(seed=5, samples=3, sample_output=True)
    mean, first = mean.array().astype(np.float64), first.array().astype(np.float64)
    std = std.array().astype(np.float64)
    assert std.shape == mean.shape and np.isfinite(std).all() and (std >= 0).all()
    assert (std > 0).mean() > 0.9  # three samples differ almost everywhere
    assert not np.allclose(first, mean)  # one sample is not the mean of three
    # sample 0 of three is the one sample of a one-sample run (noise is keyed by sample index)
    np.testing.assert_allclose(first, a / REFLECTANCE, atol=0.05)
    # every sample lies within sqrt(n - 1) population standard deviations of the mean
    assert (np.abs(first - mean) <= np.sqrt(2) * std + 0.01).all()

    one, zero = run(seed=5, samples=1, uncertainty=True)
    assert np.array_equal(refl(one), a) and np.array_equal(zero.array(), np.zeros_like(zero.array()))


def test_consistency_enforce_and_off_on_ct(models, ct_small):
    lr = ct_small.array()
    scores = {}
    for mode in ("enforce", "off", "auto"):
        out = enhance(ct_small, CT, steps=3, seed=0, consistency=mode, device="cpu").array()
        assert out.shape == (1, 2, 96, 96)
        scores[mode] = consistency(out, lr, 2, 4095.0)["psnr"].value
    assert scores["enforce"] >= 45
    assert scores["off"] < scores["enforce"] - 10
    assert scores["auto"] == scores["enforce"]  # a medical model enforces by default


def test_ddim_sampler_runs_and_differs_from_dpm(models, s2_small):
    dpm = refl(enhance(s2_small, S2, steps=3, seed=0, sampler="dpm++", device="cpu"))
    ddim = refl(enhance(s2_small, S2, steps=3, seed=0, sampler="ddim", device="cpu"))
    assert np.isfinite(ddim).all() and ddim.shape == dpm.shape
    assert not np.allclose(ddim, dpm)
    assert differ_db(ddim, dpm) > 30  # both are samples of the same model, not noise


def test_sampling_values_are_checked():
    for bad in (dict(steps=0), dict(samples=0), dict(seed=-1), dict(sampler="foo"), dict(consistency="foo"),
                dict(steps=True), dict(level=2.0), dict(temperature=-0.1)):
        with pytest.raises(HiresError):
            Sampling(**bad)


# ---------------------------------------------------------------- CLI


def out_files(directory: Path) -> set[str]:
    return {p.name for p in directory.iterdir()}


@pytest.fixture(scope="module")
def s2_tif(tmp_path_factory, s2):
    path = tmp_path_factory.mktemp("in") / "s2_small.tif"
    io.write(crop(s2, (40, 60), (24, 24)), path)
    return path


def test_cli_raster_uncertainty_matches_the_output(models, s2_tif, tmp_path, capsys):
    import rasterio

    out, unc = tmp_path / "out.tif", tmp_path / "unc.tif"
    code, stdout, err = hires(capsys, "enhance", s2_tif, out, "--model", S2, "--samples", "3", "--steps", "2",
                              "--uncertainty", unc, "--device", "cpu")
    assert code == 0, err
    assert str(unc) in stdout
    with rasterio.open(out) as a, rasterio.open(unc) as b:
        assert (a.width, a.height, a.count) == (b.width, b.height, b.count) == (96, 96, 4)
        assert a.crs == b.crs and a.crs is not None
        assert a.transform == b.transform
        assert a.descriptions == b.descriptions and all(a.descriptions)
        assert set(b.dtypes) == {"float32"}
        values = b.read()
        assert np.isfinite(values).all() and (values >= 0).all() and values.max() > 0


def test_cli_nifti_uncertainty_keeps_the_affine(models, ct_small, tmp_path, capsys):
    import nibabel as nib

    src = tmp_path / "ct.nii.gz"
    io.write(ct_small, src)
    out, unc = tmp_path / "out.nii.gz", tmp_path / "unc.nii.gz"
    code, _, err = hires(capsys, "enhance", src, out, "--model", CT, "--samples", "2", "--steps", "2",
                         "--uncertainty", unc, "--device", "cpu")
    assert code == 0, err
    a, b = nib.load(out), nib.load(unc)
    assert a.shape == b.shape == (96, 96, 2)
    np.testing.assert_allclose(a.affine, b.affine)
    values = np.asarray(b.dataobj, dtype=np.float64)
    assert (values >= 0).all() and values.max() > 0


def test_cli_dicom_uncertainty_is_a_series_on_the_output_grid(models, tmp_path, capsys):
    import pydicom

    src = tmp_path / "series"
    src.mkdir()
    for f in sorted((SAMPLES / "ct_head_series").glob("*.dcm"))[5:7]:
        shutil.copy(f, src / f.name)
    out, unc = tmp_path / "out", tmp_path / "unc"
    code, _, err = hires(capsys, "enhance", src, out, "--model", CT, "--samples", "2", "--steps", "2",
                         "--uncertainty", unc, "--device", "cpu")
    assert code == 0, err

    def geometry_of(d):
        rows = []
        for f in sorted(d.iterdir()):
            ds = pydicom.dcmread(f)
            rows.append((tuple(float(v) for v in ds.ImagePositionPatient),
                         tuple(float(v) for v in ds.ImageOrientationPatient),
                         tuple(float(v) for v in ds.PixelSpacing), ds.Rows, ds.Columns))
        return sorted(rows)

    g_out, g_unc = geometry_of(out), geometry_of(unc)
    assert len(g_out) == 2 and g_out == g_unc and g_out[0][3:] == (256, 256)
    uids = {pydicom.dcmread(f).SeriesInstanceUID for d in (out, unc) for f in d.iterdir()}
    assert len(uids) == 2  # two series
    values = np.stack([pydicom.dcmread(f).pixel_array * float(pydicom.dcmread(f).RescaleSlope)
                       for f in sorted(unc.iterdir())])
    assert (values >= 0).all() and values.max() > 0


def refused(capsys, directory: Path, *args, match: str = "", usage: bool = False) -> str:
    """Exit 2, one 'error:' line (after click's usage lines for a usage error), no output."""
    before = out_files(directory)
    code, _, err = hires(capsys, "enhance", *args)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error: ")]
    assert code == 2, err
    assert len(errors) == 1 and "Traceback" not in err, err
    assert usage or len(lines) == 1, err
    assert match.lower() in errors[0].lower(), errors[0]
    assert out_files(directory) == before  # nothing written, no temporary left behind
    return errors[0]


@pytest.mark.parametrize("args,match,usage", [
    (["--model", "bicubic", "--steps", "4"], "diffusion", False),
    (["--model", "bicubic", "--samples", "2"], "diffusion", False),
    (["--model", "bicubic", "--seed", "1"], "diffusion", False),
    (["--model", "bicubic", "--sample-output"], "diffusion", False),
    (["--model", "bicubic", "--uncertainty", "{dir}/u.tif"], "diffusion", False),
    (["--model", "bicubic", "--temperature", "0.5"], "diffusion", False),
    (["--model", S2, "--steps", "0"], "steps", False),
    (["--model", S2, "--samples", "0"], "samples", False),
    (["--model", S2, "--sampler", "foo"], "sampler", False),
    (["--model", S2, "--consistency", "foo"], "consistency", False),
    (["--model", S2, "--temperature", "2"], "temperature", False),
    (["--model", S2, "--seed", "abc"], "seed", True),
    (["--model", S2, "--uncertainty", "{dir}/out.tif"], "output path", False),
    (["--model", S2, "--uncertainty", "{dir}/u.nii.gz"], "u.nii.gz", False),
])
def test_cli_refusals(models, s2_tif, tmp_path, capsys, args, match, usage):
    args = [a.replace("{dir}", str(tmp_path)) for a in args]
    refused(capsys, tmp_path, s2_tif, tmp_path / "out.tif", *args, "--device", "cpu", match=match, usage=usage)
