"""Dataset preparation: degradation physics, leak-free splits, atomic output, reproducibility,
bad recipes. Real data: the bundled Sentinel-2 crop, CT series/NIfTI and DICOM test files."""

import json
import math
from pathlib import Path

import nibabel
import numpy as np
import pytest
import yaml

from hires_domain.data import degradations as deg
from hires_domain.data import prepare as prep
from hires_domain.data.recipes import load_recipe, parse_recipe
from hires_domain.errors import HiresError
from support import S2_RECIPE, SAMPLES, fails, hires

ROOT = Path(__file__).resolve().parents[1]
DICOM = Path(__file__).parent / "data" / "dicom"
MR_NIFTI = Path(nibabel.__file__).parent / "tests" / "data" / "anatomical.nii"  # MR: not CT by its values
RESERVED = ("CT_small", "693_", "eCT_Supplemental")

S2 = {**S2_RECIPE, "seed": 3}
CT = {
    "name": "t-ct", "domain": "medical-sr",
    "sources": [{"path": str(DICOM / "bad_sequence.dcm")}, {"path": str(DICOM / "explicit_VR-UN.dcm")},
                {"package": "pydicom", "file": "CT_small.dcm", "split": "val"}],
    "degradation": {"scale": 2, "fwhm_lr_pixels": 1.0},
}


def write(tmp_path, recipe, name="r.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(recipe))
    return path


def with_(base, **changes):
    return json.loads(json.dumps({**base, **changes}))


# ---------------------------------------------------------------- degradation physics


@pytest.mark.parametrize("mtf,scale", [(0.3, 4), (0.15, 4), (0.3, 2)])
def test_mtf_at_lr_nyquist_matches_parameter(mtf, scale):
    n = 256
    impulse = np.zeros((1, n))
    impulse[0, n // 2] = 1.0
    response = deg.mtf_blur(impulse, mtf, scale)[0]
    spectrum = np.abs(np.fft.rfft(response))
    measured = spectrum[int(n * 0.5 / scale)] / spectrum[0]
    assert measured == pytest.approx(mtf, rel=0.03)


def test_decimation_keeps_footprint_and_samples_lr_pixel_centres():
    x = np.arange(16, dtype=float)
    img = np.tile(x, (16, 1))
    assert np.allclose(deg.decimate(img, 4, "area")[0], [1.5, 5.5, 9.5, 13.5])  # block means
    assert np.allclose(deg.decimate(img, 4, "sample")[0], [1, 5, 9, 13])  # pixel (s-1)//2 of each block
    # the composition blurs with a half-pixel offset: a linear ramp lands exactly on LR centres 4i + 1.5
    ramp = np.tile(np.arange(64, dtype=float), (3, 64, 1))
    lr = deg.satellite_lr(ramp, 4, 0.3, np.random.default_rng(0))
    assert np.allclose(lr[:, 8, 3:-3], 4 * np.arange(3, 13) + 1.5, atol=1e-6)
    with pytest.raises(ValueError):
        deg.decimate(np.zeros((10, 10)), 4)


def test_noise_level_and_quantisation():
    rng = np.random.default_rng(1)
    flat = np.full((400, 400), 1000.0)
    noisy = deg.add_noise(flat, rng, sigma_add=2.0, sigma_signal=0.3)
    assert noisy.std() == pytest.approx(math.sqrt(2.0 ** 2 + 0.3 ** 2 * 1000.0), rel=0.03)
    assert noisy.mean() == pytest.approx(1000.0, abs=0.2)
    q = deg.quantise(np.array([-3.0, 1.4, 1.6, 70000.0]), "uint16")
    assert q.tolist() == [0, 1, 2, 65535]


def test_inplane_blur_fwhm_in_mm():
    line = np.zeros((1, 201))
    line[0, 100] = 1.0
    out = deg.gaussian_blur(line, (0.0, 3.0 / deg.FWHM_PER_SIGMA / 0.5))  # FWHM 3 mm at 0.5 mm pixels
    x = (np.arange(201) - 100) * 0.5
    sigma_mm = math.sqrt((out[0] * x ** 2).sum() / out[0].sum())
    assert sigma_mm * deg.FWHM_PER_SIGMA == pytest.approx(3.0, rel=0.01)
    ct = deg.inplane_lr(np.ones((64, 64)), 2, 1.2, (0.6, 0.6))
    assert ct.shape == (32, 32) and np.allclose(ct, 1.0)


def test_thick_slices_average_along_z(ct_volume):
    vol = ct_volume.array()[0]  # (32, 128, 128) real CT
    box = deg.thick_slices(vol, 4)
    assert box.shape == (8, 128, 128)
    assert np.allclose(box[2], vol[8:12].mean(axis=0), atol=1e-3)
    ramp = np.broadcast_to(np.arange(48.0)[:, None, None], (48, 4, 4))  # centred profiles keep a ramp
    assert np.allclose(deg.thick_slices(ramp, 3, "gaussian")[4:12, 0, 0], 3 * np.arange(4, 12) + 1, atol=1e-6)
    assert np.allclose(deg.thick_slices(ramp, 4, "gaussian")[3:9, 0, 0], 4 * np.arange(3, 9) + 1.5, atol=1e-6)


def _water_phantom(n=128, radius=50):
    yy, xx = np.mgrid[:n, :n] - (n - 1) / 2
    return np.where(np.hypot(yy, xx) < radius, 0.0, -1000.0)


def test_low_dose_round_trip_on_real_ct_interior():
    import pydicom
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    rec = deg.low_dose_ct(hu, float(ds.PixelSpacing[0]), 1.0, rng=None, n_angles=360)
    from scipy import ndimage

    soft = ndimage.binary_erosion((hu > -200) & (hu < 200), iterations=3)
    soft[:16], soft[-16:], soft[:, :16], soft[:, -16:] = False, False, False, False
    rms = math.sqrt(np.mean((rec - hu)[soft] ** 2))
    assert soft.sum() > 500 and rms < 25.0, rms  # measured: 11 HU


def test_low_dose_noise_scales_with_inverse_sqrt_dose_and_keeps_mean():
    hu = _water_phantom()
    clean = deg.low_dose_ct(hu, 0.7, 1.0, rng=None, i0=1e4, n_angles=180)
    centre = (slice(49, 79), slice(49, 79))
    stds, means, recs = {}, {}, {}
    for dose in (1.0, 0.25):
        recs[dose] = deg.low_dose_ct(hu, 0.7, dose, np.random.default_rng(7), i0=1e4, n_angles=180)
        stds[dose] = (recs[dose] - clean)[centre].std()
        means[dose] = recs[dose][centre].mean()
    assert stds[0.25] / stds[1.0] == pytest.approx(2.0, rel=0.15)
    assert abs(means[0.25] - clean[centre].mean()) < 0.2 * stds[0.25]
    assert abs(clean[centre].mean()) < 5.0  # water stays at 0 HU
    again = deg.low_dose_ct(hu, 0.7, 0.25, np.random.default_rng(7), i0=1e4, n_angles=180)
    assert np.array_equal(again, recs[0.25])  # deterministic given the generator


# ---------------------------------------------------------------- splits and format


def test_satellite_split_cannot_leak(tmp_path):
    recipe = load_recipe(write(tmp_path, S2))
    items = prep.plan(recipe)
    halo = prep._halo(recipe)
    assert halo >= deg.support(deg.sigma_for_mtf(0.3, 4))
    rows_h, cols_h = (128, 256), (0, 128)  # bottom-left quadrant of the 256 x 256 crop
    splits = {"train": 0, "val": 0}
    for it in items:
        (r0, r1), (c0, c1) = it.location["rows"], it.location["cols"]
        splits[it.split] += 1
        if it.split == "val":
            assert rows_h[0] <= r0 and r1 <= rows_h[1] and cols_h[0] <= c0 and c1 <= cols_h[1]
        else:  # what a training patch reads (patch + halo) never touches the held-out quadrant
            assert r1 + halo <= rows_h[0] or c0 - halo >= cols_h[1], it.id
    assert splits["train"] > 0 and splits["val"] > 0
    assert len({it.id for it in items}) == len(items)


def test_prepare_writes_documented_format_and_is_reproducible(tmp_path):
    path = write(tmp_path, S2)
    m1 = prep.prepare(path, tmp_path / "a")
    m2 = prep.prepare(path, tmp_path / "b")
    man = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert man["format_version"] == prep.FORMAT_VERSION and man["domain"] == "satellite" and man["scale"] == 4
    assert man["bands"] == ["B02", "B03", "B04", "B08"]
    assert man["normalisation"]["reflectance_scale"] == [1e-4] * 4
    assert man["counts"]["train"] + man["counts"]["val"] == len(man["items"]) == len(m2["items"])
    for r1, r2 in zip(m1["items"], m2["items"]):
        a, b = np.load(tmp_path / "a" / r1["file"]), np.load(tmp_path / "b" / r2["file"])
        assert set(a.files) == {"hr", "lr", "valid", "lr_valid"}
        assert a["hr"].shape == (4, 64, 64) and a["lr"].shape == (4, 16, 16) and a["hr"].dtype == np.float32
        assert a["valid"].shape == (64, 64) and a["valid"].dtype == bool
        for k in a.files:
            assert np.array_equal(a[k], b[k])
    # one item rebuilt from its manifest record alone gives the same arrays
    rec = m1["items"][5]
    item = prep.Item(**{k: rec[k] for k in ("id", "source", "input", "location", "split", "params")})
    again = prep.process(item, load_recipe(path))
    stored = np.load(tmp_path / "a" / rec["file"])
    assert all(np.array_equal(again[k], stored[k]) for k in stored.files)
    # hr is the source window itself; lr is a noisy, quantised, blurred copy of it
    (r0, r1), (c0, c1) = rec["location"]["rows"], rec["location"]["cols"]
    import rasterio

    with rasterio.open(SAMPLES / "s2_crop.tif") as ds:
        assert np.array_equal(stored["hr"], ds.read()[:, r0:r1, c0:c1].astype(np.float32))
    assert np.array_equal(stored["lr"], np.rint(stored["lr"]))
    assert abs(stored["lr"].mean() - stored["hr"].mean()) < 5.0


def test_failure_mid_way_leaves_no_dataset(tmp_path, monkeypatch):
    calls = []
    real = prep.process

    def flaky(item, recipe):
        calls.append(item.id)
        if len(calls) == 4:
            raise RuntimeError("disk full")
        return real(item, recipe)

    monkeypatch.setattr(prep, "process", flaky)
    with pytest.raises(RuntimeError):
        prep.prepare(write(tmp_path, S2), tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.yaml"]  # no temporary left either


def test_medical_split_by_file_and_formats(tmp_path):
    m = prep.prepare(write(tmp_path, CT), tmp_path / "ct")
    assert m["counts"] == {"train": 2, "val": 1} and m["units"] == "HU" and m["scale"] == 2
    for rec in m["items"]:
        z = np.load(tmp_path / "ct" / rec["file"])
        assert z["lr"].shape[1:] == tuple(s // 2 for s in z["hr"].shape[1:])
        assert (rec["split"] == "val") == ("CT_small" in rec["source"])
        assert z["hr"][0][z["valid"]].min() >= -1024
    assert m["items"][0]["params"]["fwhm_mm"] == pytest.approx(2 * 0.28710938, rel=1e-5)


def test_slice_block_split_with_gap_on_a_volume(tmp_path):
    recipe = {"name": "t", "domain": "medical-sr", "degradation": {"scale": 2, "fwhm_mm": 1.5},
              "sources": [{"path": str(SAMPLES / "ct_head.nii.gz"), "split": "blocks", "units": "HU"}],
              "split": {"size": 4, "val_every": 3, "gap": 1}}
    items = prep.plan(load_recipe(write(tmp_path, recipe)))
    by_split = {s: {it.location["slice"] for it in items if it.split == s} for s in ("train", "val")}
    assert by_split["val"] == {9, 10, 21, 22}  # blocks 2 and 5 minus one slice each side of their edges
    for z in by_split["train"]:
        assert all(abs(z - v) > 1 for v in by_split["val"])


def test_low_dose_recipe_items(tmp_path):
    recipe = {"name": "t", "domain": "low-dose-ct",
              "sources": [{"path": str(SAMPLES / "ct_head_series")},
                          {"package": "pydicom", "file": "CT_small.dcm", "split": "val"}],
              "degradation": {"photons": [1e4, 1e5], "per_slice": 2, "n_angles": [60, 90], "filter": ["ramp", "hann"],
                              "electronic_sigma": [0.0, 2.0],
                              "val_protocols": [{"name": "lo", "photons": 5e3, "n_angles": 90},
                                                {"name": "hi", "photons": 5e5, "n_angles": 90, "filter": "hann"}]}}
    recipe = load_recipe(write(tmp_path, recipe))
    items = prep.plan(recipe)
    train = [it for it in items if it.split == "train"]
    assert len(train) == 24 and all(1e4 <= it.params["photons"] <= 1e5 for it in train)
    assert {it.params["n_angles"] for it in train} == {60, 90} and {it.params["filter"] for it in train} == {"ramp", "hann"}
    assert all(0.0 <= it.params["electronic_sigma"] <= 2.0 for it in train)
    val = [it for it in items if it.split == "val"]
    assert [it.id.rsplit("-", 1)[1] for it in val] == ["lo", "hi"]
    lo, hi = (prep.process(it, recipe) for it in val)
    assert lo["hr"].shape == lo["lr"].shape == (1, 128, 128)
    # the target is the noise-free reconstruction of the same protocol: the Hann kernel's is smoother
    assert not np.allclose(lo["hr"], hi["hr"])
    assert np.abs(np.diff(hi["hr"][0], axis=1)).mean() < np.abs(np.diff(lo["hr"][0], axis=1)).mean()
    noise = {k: np.std(a["lr"] - a["hr"]) for k, a in (("lo", lo), ("hi", hi))}
    assert 5.0 < noise["hi"] < noise["lo"] / 5 and noise["lo"] < 500.0


def test_low_dose_binning_simulates_the_slice_on_a_coarser_grid(tmp_path):
    """A binned acquisition: the slice area-averaged b x b, pixels b times larger, the same
    physics; validation items are never binned."""
    recipe = {"name": "t", "domain": "low-dose-ct",
              "sources": [{"path": str(SAMPLES / "ct_head_series")},
                          {"package": "pydicom", "file": "CT_small.dcm", "split": "val"}],
              "degradation": {"photons": [1e5, 1e5], "per_slice": 2, "n_angles": [90], "binning": [1, 2],
                              "val_protocols": [{"name": "a", "photons": 1e5, "n_angles": 90}]}}
    recipe = load_recipe(write(tmp_path, recipe))
    items = prep.plan(recipe)
    train = [it for it in items if it.split == "train"]
    assert {it.params["binning"] for it in train} == {1, 2}
    assert all("binning" not in it.params for it in items if it.split == "val")
    one = next(it for it in train if it.params["binning"] == 2)
    same = next(it for it in train if it.params["binning"] == 1 and it.location == one.location)
    plain, binned = prep.process(same, recipe), prep.process(one, recipe)
    h, w = plain["hr"].shape[1] // 2, plain["hr"].shape[2] // 2
    assert binned["hr"].shape == binned["lr"].shape == (1, h, w) and binned["valid"].shape == (h, w)
    # the noise-free reconstruction is the block mean of the slice's own (up to the FBP round trip)
    blocks = plain["hr"][0][:2 * h, :2 * w].reshape(h, 2, w, 2).mean(axis=(1, 3))
    inner = (slice(8, -8), slice(8, -8))
    assert np.abs(binned["hr"][0][inner] - blocks[inner]).mean() < 25.0
    with pytest.raises(HiresError, match="binning"):
        load_recipe(write(tmp_path, {**recipe.model_dump(exclude={"sources"}), "sources": recipe.model_dump()["sources"],
                                     "degradation": {**recipe.degradation.model_dump(), "binning": [0]}}))


def test_scanner_noise_goes_into_the_target_and_the_input(tmp_path):
    """An acquisition of a slice carrying a scanner's own noise: the target is no longer the
    noise-free reconstruction of the slice but of the slice with that noise in it."""
    base = {"name": "t", "domain": "low-dose-ct",
            "sources": [{"path": str(SAMPLES / "ct_head_series")},
                        {"package": "pydicom", "file": "CT_small.dcm", "split": "val"}],
            "degradation": {"photons": [1e5, 1e5], "per_slice": 4, "n_angles": [90],
                            "val_protocols": [{"name": "a", "photons": 1e5, "n_angles": 90}]}}
    noisy = {**base, "degradation": {**base["degradation"], "scanner_noise": {"fraction": 0.5, "photons": [2e4, 2e4]}}}
    plain_recipe = load_recipe(write(tmp_path, base, "plain.yaml"))
    recipe = load_recipe(write(tmp_path, noisy, "noisy.yaml"))
    items = [it for it in prep.plan(recipe) if it.split == "train"]
    with_noise = [it for it in items if "scanner_photons" in it.params]
    assert 0 < len(with_noise) < len(items) and all(it.params["scanner_photons"] == pytest.approx(2e4) for it in with_noise)
    it = with_noise[0]
    same = next(p for p in prep.plan(plain_recipe) if p.id == it.id)
    a, b = prep.process(it, recipe), prep.process(same, plain_recipe)
    own = (a["hr"] - b["hr"])[0][a["valid"]]
    assert 3.0 < own.std() < 300.0  # the scanner's noise is in the target
    assert 3.0 < np.std((a["lr"] - a["hr"])[0][a["valid"]]) < 300.0  # and this acquisition's on top
    with pytest.raises(HiresError, match="scanner_noise"):
        load_recipe(write(tmp_path, {**base, "degradation": {**base["degradation"],
                                                              "scanner_noise": {"photons": [2e4, 1e4]}}}))


def test_anisotropic_scanner_noise_is_streaky_along_its_angle(tmp_path):
    """scanner_noise.anisotropy: the scanner's photons vary with the view angle, so the noise the
    target keeps is streaky (more energy across the streaks than along them), in the drawn
    orientation; the acquisition's own noise stays isotropic."""
    base = {"name": "t", "domain": "low-dose-ct",
            "sources": [{"package": "pydicom", "file": "CT_small.dcm"},  # 128²: cheap to simulate
                        {"path": str(DICOM / "bad_sequence.dcm"), "split": "val"}],
            "degradation": {"photons": [1e6, 1e6], "per_slice": 6, "n_angles": [180],
                            "val_protocols": [{"name": "a", "photons": 1e5, "n_angles": 90}]}}
    noisy = {**base, "degradation": {**base["degradation"], "scanner_noise": {
        "fraction": 1.0, "photons": [2e4, 2e4], "anisotropy": [20.0, 20.0]}}}
    recipe, plain = load_recipe(write(tmp_path, noisy, "n.yaml")), load_recipe(write(tmp_path, base, "p.yaml"))
    items = [it for it in prep.plan(recipe) if it.split == "train"]
    assert all(it.params["scanner_anisotropy"] == pytest.approx(20.0) for it in items)
    assert len({round(it.params["scanner_angle"]) for it in items}) == len(items)  # drawn per acquisition
    it = items[0]
    photons = prep._scanner_photons(it.params, 180)
    assert photons.max() / photons.min() == pytest.approx(20.0, rel=0.01)
    assert np.exp(np.log(photons).mean()) == pytest.approx(2e4, rel=0.01)
    ratios = []
    for it in items:
        same = next(p for p in prep.plan(plain) if p.id == it.id)
        own = (prep.process(it, recipe)["hr"] - prep.process(same, plain)["hr"])[0]
        gy, gx = (np.diff(own, axis=0) ** 2).mean(), (np.diff(own, axis=1) ** 2).mean()
        ratios.append((it.params["scanner_angle"], gy / gx))
    # streaks run along the views with the fewest photons: their direction follows the angle
    assert max(r for _, r in ratios) > 1.5 and min(r for _, r in ratios) < 1 / 1.5, ratios
    with pytest.raises(HiresError, match="anisotropy"):
        load_recipe(write(tmp_path, {**base, "degradation": {**base["degradation"], "scanner_noise": {
            "photons": [2e4, 2e4], "anisotropy": [0.5, 2.0]}}}))


def test_mild_dose_redraws_a_fraction_of_acquisitions_and_keeps_the_others(tmp_path):
    """degradation.mild: about ``fraction`` of the training acquisitions get photons from the mild
    range (inputs nearly their targets); every other acquisition keeps the protocol it had without
    it (drawn last), so a dataset can be extended without redoing those."""
    base = {"name": "t", "domain": "low-dose-ct",
            "sources": [{"package": "pydicom", "file": "CT_small.dcm"},
                        {"path": str(DICOM / "bad_sequence.dcm"), "split": "val"}],
            "degradation": {"photons": [1e4, 1e5], "per_slice": 40, "n_angles": [90, 180], "filter": ["ramp", "hann"],
                            "scanner_noise": {"fraction": 0.5, "photons": [1e5, 1e6]},
                            "val_protocols": [{"name": "a", "photons": 1e5, "n_angles": 90}]}}
    mild = {**base, "degradation": {**base["degradation"], "mild": {"fraction": 0.25, "photons": [5e6, 1e7]}}}
    plain = {it.id: it for it in prep.plan(load_recipe(write(tmp_path, base, "p.yaml")))}
    recipe = load_recipe(write(tmp_path, mild, "m.yaml"))
    items = [it for it in prep.plan(recipe) if it.split == "train"]
    redrawn = [it for it in items if it.params != plain[it.id].params]
    assert 4 <= len(redrawn) <= 16, len(redrawn)  # about a quarter of 40
    for it in redrawn:
        assert 5e6 <= it.params["photons"] <= 1e7
        assert {**it.params, "photons": None} == {**plain[it.id].params, "photons": None}
    a = prep.process(redrawn[0], recipe)
    heavy = prep.process(plain[redrawn[0].id], load_recipe(write(tmp_path, base, "p.yaml")))
    err = lambda arrays: np.std((arrays["lr"] - arrays["hr"])[0][arrays["valid"]])  # noqa: E731
    assert err(a) < err(heavy) / 5  # nearly its target
    with pytest.raises(HiresError, match="mild"):
        load_recipe(write(tmp_path, {**base, "degradation": {**base["degradation"], "mild": {"photons": [1e7, 1e6]}}}))


def test_low_dose_recipe_refuses_bad_protocols(tmp_path):
    base = {"name": "t", "domain": "low-dose-ct", "sources": [{"path": str(SAMPLES / "ct_head_series")}]}
    for bad, field in (({"photons": [1e5, 1e4], "val_protocols": [{"name": "a", "photons": 1e4, "n_angles": 90}]},
                        "degradation"),
                       ({"photons": [1e4, 1e5], "val_protocols": []}, "degradation.val_protocols"),
                       ({"photons": [1e4, 1e5], "val_protocols": [{"name": "a", "photons": 1e4, "n_angles": 90,
                                                                   "filter": "sharp"}]}, "degradation.val_protocols")):
        with pytest.raises(HiresError, match=f"field '{field}"):
            load_recipe(write(tmp_path, {**base, "degradation": bad}))


def test_low_dose_recipe_takes_mapped_phantom_sources(tmp_path):
    recipe = {"name": "t", "domain": "low-dose-ct",
              "degradation": {"photons": [2.5e4, 2.5e4], "n_angles": [90],
                              "val_protocols": [{"name": "a", "photons": 2.5e4, "n_angles": 90}]},
              "sources": [{"path": str(DICOM / "bad_sequence.dcm"), "to_range": [-1000.0, 1000.0]},
                          {"package": "pydicom", "file": "CT_small.dcm", "split": "val"}]}
    recipe = load_recipe(write(tmp_path, recipe))
    train = next(it for it in prep.plan(recipe) if it.split == "train")
    assert train.params["map_linear"] is not None and train.params["hu_floor"] is None
    out = prep.process(train, recipe)
    assert out["valid"].all() and 5.0 < np.std(out["lr"] - out["hr"]) < 1000.0  # 90 views: streaks too


def test_low_dose_source_acquisitions_override_per_slice(tmp_path):
    recipe = {"name": "t", "domain": "low-dose-ct",
              "degradation": {"photons": [2.5e4, 2.5e4], "n_angles": [90], "per_slice": 4,
                              "val_protocols": [{"name": "a", "photons": 2.5e4, "n_angles": 90}]},
              "sources": [{"path": str(DICOM / "bad_sequence.dcm"), "to_range": [-1000.0, 1000.0],
                           "acquisitions": 2},
                          {"path": str(DICOM / "explicit_VR-UN.dcm")},
                          {"package": "pydicom", "file": "CT_small.dcm", "split": "val"}]}
    items = prep.plan(load_recipe(write(tmp_path, recipe)))
    per_source = {}
    for it in items:
        if it.split == "train":
            per_source[it.id.split("-", 1)[0]] = per_source.get(it.id.split("-", 1)[0], 0) + 1
    assert per_source == {"0": 2, "1": 4}
    assert sum(it.split == "val" for it in items) == 1
    with pytest.raises(HiresError, match="acquisitions"):
        load_recipe(write(tmp_path, {**recipe, "sources": [{**recipe["sources"][0], "acquisitions": 0},
                                                           recipe["sources"][2]]}))


def test_texture_phantoms_are_body_sized_ct_slices(tmp_path):
    """datasets/ct_texture_phantoms.py: HU slices with air around an elliptic body, soft tissue, fat,
    bone; a real pixel size; the same seed gives the same files."""
    import subprocess
    import sys

    script = ROOT / "datasets" / "ct_texture_phantoms.py"
    for out in ("a", "b"):
        subprocess.run([sys.executable, str(script), str(tmp_path / out), "--count", "3", "--size", "96"],
                       check=True, capture_output=True)
    files = sorted((tmp_path / "a").glob("phantom-*.nii.gz"))
    assert [f.name for f in files] == [f"phantom-{k:03d}.nii.gz" for k in range(3)]
    assert not list((tmp_path / "a").glob(".*"))  # no temporary left
    for f in files:
        img = nibabel.load(f)
        hu = img.get_fdata()[:, :, 0]
        assert hu.shape == (96, 96) and 0.7 <= img.header.get_zooms()[0] <= 1.4
        assert (hu[0] == -1000).all() and (hu[:, -1] == -1000).all()  # air around the body
        body = hu > -990
        assert 0.2 < body.mean() < 0.75
        tissue = hu[body]
        assert ((tissue > -150) & (tissue < -60)).mean() > 0.03  # a fat rim at least
        assert ((tissue > -60) & (tissue < 150)).mean() > 0.3 and np.std(tissue[(tissue > -60) & (tissue < 150)]) > 2
        assert np.array_equal(hu, nibabel.load(tmp_path / "b" / f.name).get_fdata()[:, :, 0])
    recipe = load_recipe(write(tmp_path, {
        "name": "t", "domain": "low-dose-ct",
        "degradation": {"photons": [2.5e4, 2.5e4], "n_angles": [90], "per_slice": 1,
                        "val_protocols": [{"name": "a", "photons": 2.5e4, "n_angles": 90}]},
        "sources": [{"path": str(tmp_path / "a"), "units": "HU", "acquisitions": 1},
                    {"package": "pydicom", "file": "CT_small.dcm", "split": "val"}]}))
    train = [it for it in prep.plan(recipe) if it.split == "train"]
    assert len(train) == 3
    out = prep.process(train[0], recipe)
    assert out["hr"].shape == (1, 96, 96) and 3.0 < np.std((out["lr"] - out["hr"])[0]) < 500.0


def test_committed_recipes_never_train_on_reserved_slices():
    for name in ("ct-sr-x2", "ct-denoise", "ct-denoise-texture"):
        recipe = parse_recipe(ROOT / "datasets" / f"{name}.yaml")
        labels = {s.label: s.split for s in recipe.sources}
        reserved = {k: v for k, v in labels.items() if any(r in k for r in RESERVED)}
        assert len(reserved) == 3 and set(reserved.values()) == {"val"}, name
        assert "train" in labels.values()
    s2 = parse_recipe(ROOT / "datasets" / "s2-sr-x4.yaml")
    assert s2.split.holdout.rows == (0.5, 1.0) and s2.split.holdout.cols == (0.0, 0.5)
    # a PSF range from plain area averaging (1.0) to a total MTF inside the MSI's 0.15-0.3
    lo, hi = s2.degradation.mtf_nyquist
    assert s2.degradation.scale == 4 and s2.degradation.decimation == "area"
    assert hi == 1.0 and 0.15 <= 0.637 * lo <= 0.3


def test_committed_ct_recipe_plan_keeps_reserved_in_val():
    pytest.importorskip("data_store", reason="pydicom-data not installed")
    recipe = load_recipe(ROOT / "datasets" / "ct-denoise.yaml")
    items = prep.plan(recipe)
    for it in items:
        if any(r in Path(it.input).name for r in RESERVED):
            assert it.split == "val", it.id
    assert {it.split for it in items} == {"train", "val"}


def test_degradation_ranges_draw_per_item_and_variants_multiply_training_patches(tmp_path):
    recipe = with_(S2, degradation={**S2["degradation"], "mtf_nyquist": [0.3, 1.0],
                                    "decimation": ["sample", "area"], "variants": 3})
    items = prep.plan(load_recipe(write(tmp_path, recipe)))
    single = prep.plan(load_recipe(write(tmp_path, with_(S2, degradation={**S2["degradation"], "mtf_nyquist": 0.3}))))
    train = [it for it in items if it.split == "train"]
    val = [it for it in items if it.split == "val"]
    # every training location three times, validation once; the halo covers the blurriest draw
    assert len(train) == 3 * sum(it.split == "train" for it in single)
    assert len(val) == sum(it.split == "val" for it in single) and not any("-v" in it.id for it in val)
    assert {it.id.rsplit("-v", 1)[1] for it in train} == {"0", "1", "2"}
    assert {it.params["halo"] for it in items} == {single[0].params["halo"]}
    mtfs = [it.params["mtf_nyquist"] for it in items]
    assert 0.3 <= min(mtfs) and max(mtfs) <= 1.0 and len(set(mtfs)) == len(items)
    assert {it.params["decimation"] for it in items} == {"sample", "area"}
    # reproducible: the same recipe plans the same draws
    again = prep.plan(load_recipe(write(tmp_path, recipe, "again.yaml")))
    assert [it.params for it in again] == [it.params for it in items]


def test_no_blur_and_area_decimation_is_the_block_mean(tmp_path):
    recipe = with_(S2, degradation={"scale": 4, "mtf_nyquist": 1.0, "decimation": "area"})
    recipe_ = load_recipe(write(tmp_path, recipe))
    item = prep.plan(recipe_)[0]
    out = prep.process(item, recipe_)
    block = out["hr"].reshape(4, 16, 4, 16, 4).mean(axis=(2, 4))
    np.testing.assert_allclose(out["lr"], block, rtol=1e-6)
    ct = load_recipe(write(tmp_path, with_(CT, degradation={"scale": 2, "fwhm_lr_pixels": [0.0, 1.0],
                                                               "variants": 2}), "ct.yaml"))
    items = prep.plan(ct)
    assert sum(it.split == "train" for it in items) == 4 and sum(it.split == "val" for it in items) == 1
    assert all(0.0 <= it.params["fwhm_mm"] <= 2 * max(it.params["pixel_mm"]) for it in items)
    flat = load_recipe(write(tmp_path, with_(CT, degradation={"scale": 2, "fwhm_mm": 0.0}), "flat.yaml"))
    out = prep.process(prep.plan(flat)[0], flat)
    h, w = out["lr"].shape[1:]
    np.testing.assert_allclose(out["lr"][0], out["hr"][0].reshape(h, 2, w, 2).mean(axis=(1, 3)), rtol=1e-5, atol=1e-3)


# ---------------------------------------------------------------- bad recipes


BAD = [
    (with_(S2, colour="red"), "colour", "unknown field"),
    (with_(S2, degradation={**S2["degradation"], "blur": 1}), "degradation.blur", "unknown field"),
    (with_(S2, degradation={**S2["degradation"], "scale": "four"}), "degradation.scale", ""),
    (with_(S2, degradation={**S2["degradation"], "scale": 3}), "degradation.scale", ""),
    (with_(S2, patches={"size": "big"}), "patches.size", ""),
    (with_(S2, sources=[{"path": "nowhere.tif"}]), "sources[0]", "not found"),
    (with_(S2, sources=[{"package": "nopackage", "file": "x.tif"}]), "sources[0].package", "unknown package"),
    (with_(S2, sources=[]), "sources", ""),
    (with_(S2, bands=["B02", "B99"]), "bands", "B99"),
    (with_(S2, patches={"size": 512}), "patches.size", "bigger than the image"),
    (with_(S2, patches={"size": 66}), "patches.size", "multiple of the scale"),
    (with_(S2, split={"holdout": {"rows": [0.0, 1.0], "cols": [0.0, 1.0]}}), "split", "no train"),
    (with_(S2, domain="radar"), "domain", ""),
    (with_(CT, sources=[{"path": str(DICOM / "bad_sequence.dcm")}]), "split", "no val"),
    (with_(CT, degradation={"scale": 2}), "degradation", "fwhm"),
    (with_(S2, degradation={**S2["degradation"], "mtf_nyquist": [0.5, 0.3]}), "degradation", "lo <= hi"),
    (with_(S2, degradation={**S2["degradation"], "mtf_nyquist": 1.5}), "degradation", "mtf_nyquist 1.5"),
    (with_(S2, degradation={**S2["degradation"], "variants": 0}), "degradation.variants", ""),
    (with_(S2, degradation={**S2["degradation"], "decimation": []}), "degradation.decimation", ""),
    (with_(CT, degradation={"scale": 2, "fwhm_mm": -1.0}), "degradation", "fwhm_mm -1.0"),
    # an MR NIfTI (nibabel's test volume): no CT-like values, so not HU without 'units: HU'
    # (the bundled ct_head.nii.gz is read as HU: intensity.ct_evidence)
    (with_(CT, sources=[{"path": str(MR_NIFTI)}, CT["sources"][2]]), "sources[0]", "not in HU"),
]


@pytest.mark.parametrize("recipe,field,text", BAD, ids=[b[1] + ":" + b[2] for b in BAD])
def test_bad_recipe_one_line_error_naming_the_field(tmp_path, recipe, field, text):
    path = write(tmp_path, recipe)
    with pytest.raises(HiresError) as e:
        prep.plan(load_recipe(path))
    msg = str(e.value)
    assert "\n" not in msg and f"field '{field}'" in msg and text in msg, msg
    assert msg.startswith(f"recipe {path}:")


def test_missing_sample_package_says_how_to_install(tmp_path, monkeypatch):
    from hires_domain.data import recipes

    monkeypatch.setitem(recipes.PACKAGES, "pydicom-data", ("no_such_module_xyz", "data", "pip install pydicom-data"))
    path = write(tmp_path, with_(CT, sources=[{"package": "pydicom-data", "file": "bad_sequence.dcm"}]))
    with pytest.raises(HiresError, match=r"source pydicom-data:bad_sequence.dcm not found: pip install pydicom-data"):
        load_recipe(path)


def test_cli_bad_recipe_exits_non_zero_without_traceback(tmp_path, capsys):
    path = write(tmp_path, with_(S2, colour="red"))
    line = fails(capsys, "prepare", path, tmp_path / "out", match="field 'colour'")
    assert line.startswith("error: recipe ")
    assert not (tmp_path / "out").exists()


def test_cli_prepare_and_refuses_existing_output(tmp_path, capsys):
    path = write(tmp_path, S2)
    assert hires(capsys, "prepare", path, tmp_path / "out", "--quiet")[0] == 0
    fails(capsys, "prepare", path, tmp_path / "out", "--quiet", match="exists")
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["counts"] == {"train": 24, "val": 9}
