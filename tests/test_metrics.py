"""Metrics on real data: agreement with scikit-image, masks, data ranges, domain metrics, grids."""

import json
from dataclasses import replace

import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

import hires_domain as h
from hires_domain import metrics as M
from hires_domain import tiling
from hires_domain.errors import HiresError
from hires_domain.models import get_model


@pytest.fixture(scope="module")
def s2(request):
    from support import SAMPLES

    return h.read(SAMPLES / "s2_crop.tif")


@pytest.fixture(scope="module")
def s2_sr(s2):
    """(LR image = 2x2 block mean of the real crop, bicubic x2 of it on the crop's grid)."""
    lr = s2.with_data(M.block_mean(s2.array(), 2), factors=0.5)
    return lr, h.enhance(lr, model="bicubic", scale=2, device="cpu")


@pytest.fixture(scope="module")
def refl(s2):
    return s2.array().astype(np.float64) * 1e-4


@pytest.fixture
def ct_slice(ct_volume):
    return ct_volume.data[:, 16].astype(np.float64)  # (1, 128, 128) real HU


# --- fidelity ----------------------------------------------------------------------------

def test_psnr_ssim_equal_skimage(refl, ct_slice):
    for ref in (refl[2:3], ct_slice):
        rng = np.random.default_rng(0)
        pred = ref + rng.normal(0, 0.02 * ref.std(), ref.shape)
        dr = float(ref.max() - ref.min()) * 1.5
        assert M.psnr(pred, ref, dr).value == pytest.approx(
            peak_signal_noise_ratio(ref[0], pred[0], data_range=dr), abs=1e-6)
        assert M.ssim(pred, ref, dr).value == pytest.approx(
            structural_similarity(ref[0], pred[0], data_range=dr), abs=1e-6)


def test_volume_ssim_is_slice_wise(ct_volume):
    ref = ct_volume.data[:, 10:14].astype(np.float64)
    pred = ref + np.random.default_rng(1).normal(0, 5, ref.shape)
    want = np.mean([structural_similarity(r, p, data_range=400) for r, p in zip(ref[0], pred[0])])
    assert M.ssim(pred, ref, 400).value == pytest.approx(want, abs=1e-9)


def test_masked_garbage_does_not_change_scores(refl):
    ref = refl[:, :128, :128]
    pred = ref * 1.02
    mask = np.ones(ref.shape[1:], bool)
    mask[40:70, 50:90] = False
    garbage = pred.copy()
    garbage[:, 40:70, 50:90] = 1e4
    for f in (M.psnr, M.ssim, M.hf_energy_ratio):
        clean = f(pred, ref, 1.0, mask) if f is not M.hf_energy_ratio else f(pred, ref, mask)
        dirty = f(garbage, ref, 1.0, mask) if f is not M.hf_energy_ratio else f(garbage, ref, mask)
        unmasked = f(garbage, ref, 1.0) if f is not M.hf_energy_ratio else f(garbage, ref)
        assert dirty.per_band == clean.per_band
        assert abs(unmasked.value - clean.value) > 1e-3
    assert M.sam(garbage[::-1], ref, mask) != M.sam(pred[::-1], ref)
    assert M.sam(garbage, ref, mask) == M.sam(pred, ref, mask)


def test_window_sets_clip_and_range(ct_volume):
    rng = M.resolve_range(ct_volume, window="brain")
    assert (rng.lo, rng.hi, rng.width) == (0.0, 80.0, 80.0)
    ref = ct_volume.data[:, 16]
    pred = np.where(ref > 100, ref + 50, ref)  # differs only above the window
    assert M.psnr(rng.apply(pred, ct_volume, [0]), rng.apply(ref, ct_volume, [0]), rng.width).value == np.inf
    pred2 = ref + 4.0 * (ref < 60)
    mse = np.mean((rng.apply(pred2, ct_volume, [0]) - rng.apply(ref, ct_volume, [0])) ** 2)
    got = M.psnr(rng.apply(pred2, ct_volume, [0]), rng.apply(ref, ct_volume, [0]), rng.width).value
    assert got == pytest.approx(10 * np.log10(80.0 ** 2 / mse))
    assert M.resolve_range(ct_volume).width == 4095.0  # default: raw HU, stated range
    with pytest.raises(HiresError, match="soft-tissue, lung, bone, brain"):
        M.resolve_range(ct_volume, window="liver")


def test_raster_range_reflectance(s2):
    rng = M.resolve_range(s2)
    assert (rng.name, rng.width) == ("reflectance", 1.0)
    np.testing.assert_allclose(rng.apply(s2.array()[:, :2, :2], s2, [0, 1, 2, 3]),
                               s2.array()[:, :2, :2] * 1e-4, rtol=1e-6)
    bare = replace(s2, meta={**s2.meta, "scales": [1.0] * 4, "offsets": [0.0] * 4})
    assert "DN/10000" in M.resolve_range(bare).description
    shifted = replace(s2, meta={**s2.meta, "offsets": [-0.1] * 4})
    assert rng.apply(np.full((4, 1, 1), 2000.0), shifted, [0, 1, 2, 3]).ravel() == pytest.approx([0.1] * 4)
    assert M.resolve_range(s2, data_range=(0, 5000)).width == 5000.0


def test_ms_ssim_size_rule(refl, ct_slice):
    small = M.ms_ssim(ct_slice, ct_slice, 4095.0)
    assert small.value is None and "176" in small.reason
    edge = np.random.default_rng(6).random((1, 2, 176, 176))
    assert M.ms_ssim(edge[..., :175], edge[..., :175], 1.0).value is None
    assert M.ms_ssim(edge, edge, 1.0).value == pytest.approx(1.0, abs=1e-5)
    pred = refl + np.random.default_rng(2).normal(0, 0.005, refl.shape)
    big = M.ms_ssim(pred, refl, 1.0)
    assert 0.9 < big.value < 1.0 and len(big.per_band) == 4


# --- domain -------------------------------------------------------------------------------

def test_sam_angle_invariant_psnr_not(refl):
    assert M.sam(refl, refl) == 0.0
    gain = 1.0 + np.random.default_rng(3).uniform(0, 0.5, refl.shape[1:])
    assert M.sam(refl * gain, refl) < 1e-5
    assert M.psnr(refl * gain, refl, 1.0).value < 40
    assert M.sam(refl[::-1], refl) > 1.0


def test_ergas_known_value(refl):
    means = refl.reshape(4, -1).mean(axis=1)
    pred = refl + 0.1 * means[:, None, None]  # RMSE_b / mean_b = 0.1 for every band
    assert M.ergas(pred, refl, scale=2) == pytest.approx(100 / 2 * 0.1)
    assert M.ergas(refl, refl, scale=4) == 0.0


def test_hu_mae_and_flat_noise(ct_volume):
    ref = ct_volume.data[:, 12:20].astype(np.float64)
    noisy = ref + np.random.default_rng(4).normal(0, 10.0, ref.shape)
    assert M.hu_mae(noisy, ref) == pytest.approx(10 * np.sqrt(2 / np.pi), rel=0.02)
    base = M.flat_noise_std(ref)
    assert 0 < base < 8.0
    assert M.flat_noise_std(noisy, reference=ref) == pytest.approx(np.hypot(10.0, base), rel=0.1)


def test_consistency_real_bicubic(s2_sr, refl):
    lr, sr = s2_sr
    sr_r, lr_r = sr.array() * 1e-4, lr.array() * 1e-4
    good = M.consistency(sr_r, lr_r, 2, 1.0)
    assert good["psnr"].value > 35
    shifted = M.consistency(np.roll(sr_r, 2, axis=-1), lr_r, 2, 1.0)
    assert shifted["psnr"].value < good["psnr"].value - 10
    assert shifted["mae"] > 3 * good["mae"]


def _tiled(lr, tile, overlap, halo, k=2):
    model = get_model("bicubic")
    sink = tiling.ArraySink((lr.shape[0], *(n * k for n in lr.shape[1:])))
    spec = tiling.TileSpec((tile, tile), (overlap, overlap), (halo, halo), (k, k))
    list(tiling.iter_tiled(tiling.ArraySource(lr), sink, lambda x: model.predict(x, k), spec))
    return sink.array


def test_seam_score(s2_sr):
    lr, _ = s2_sr
    lr_r = lr.array() * 1e-4
    with_halo = h.enhance(lr.with_data(lr_r), scale=2, tile=32, overlap=8, device="cpu").array()
    assert M.seam_score(with_halo, 32, 8, 2) < 1.1
    no_halo = _tiled(lr_r, 32, 0, halo=0)
    assert M.seam_score(no_halo, 32, 0, 2) > 1.2
    stepped = with_halo.copy()
    rows, cols = M.seam_lines(stepped.shape, 32, 8, 2)
    for b in rows:
        stepped[..., b:, :] += 0.003  # 0.3 % reflectance steps at the tile boundaries
    for b in cols:
        stepped[..., b:] += 0.003
    assert M.seam_score(stepped, 32, 8, 2) > 1.2


def test_hf_energy_ratio(s2_sr, refl):
    _, sr = s2_sr
    assert M.hf_energy_ratio(refl, refl).value == 1.0
    assert M.hf_energy_ratio(sr.array() * 1e-4, refl).value < 0.5
    noisy = refl + np.random.default_rng(5).normal(0, 0.01, refl.shape)
    assert M.hf_energy_ratio(noisy, refl).value > 1.0


# --- grids and evaluate_pair --------------------------------------------------------------

def test_grid_mismatch_refused_and_resampled(ct_volume):
    sr = h.enhance(ct_volume, scale=2, device="cpu")
    with pytest.raises(HiresError) as e:
        M.check_same_grid(sr, ct_volume)
    msg = str(e.value)
    assert "\n" not in msg and "32x256x256 at" in msg and "--resample" in msg
    moved = replace(ct_volume, affine=ct_volume.affine + np.array([[0, 0, 0, 0.5], [0, 0, 0, 0], [0] * 4, [0] * 4]))
    with pytest.raises(HiresError, match="origin or orientation"):
        M.check_same_grid(moved, ct_volume)
    out = M.evaluate_pair(sr, ct_volume, resample=True)
    assert out["metrics"]["psnr"]["value"] > 40
    # a pure one-pixel shift of the grid is undone exactly by resampling
    shifted = replace(ct_volume, data=ct_volume.data[:, :, :, 1:].copy(),
                      affine=ct_volume.affine @ np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 1], [0, 0, 0, 1.0]]))
    back = M.resample_to(shifted, ct_volume).data
    np.testing.assert_allclose(back[..., 1:], ct_volume.data[..., 1:], atol=1e-4)
    assert np.isnan(back[..., 0]).all()


def test_raster_crs_mismatch(s2):
    other = replace(s2, crs='PROJCS["WGS 84 / UTM zone 19N",GEOGCS["WGS 84",DATUM["WGS_1984",SPHEROID["WGS 84",'
                            '6378137,298.257223563]],PRIMEM["Greenwich",0],UNIT["degree",0.0174532925199433]],'
                            'PROJECTION["Transverse_Mercator"],PARAMETER["latitude_of_origin",0],'
                            'PARAMETER["central_meridian",-69],PARAMETER["scale_factor",0.9996],'
                            'PARAMETER["false_easting",500000],PARAMETER["false_northing",0],UNIT["metre",1]]')
    with pytest.raises(HiresError, match="CRS"):
        M.check_same_grid(other, s2)


def test_evaluate_pair_s2_schema(s2, s2_sr):
    lr, sr = s2_sr
    out = M.evaluate_pair(sr, s2, lr=lr, tiling={"tile": 256, "overlap": 32})
    json.dumps(out, allow_nan=False)
    st = out["settings"]
    assert st["data_range"]["name"] == "reflectance" and st["data_range"]["hi"] - st["data_range"]["lo"] == 1.0
    assert st["bands"] == ["B02", "B03", "B04", "B08"] and st["band_indices"] == [0, 1, 2, 3]
    assert st["scale"] == 2 and st["window"] is None and "mask" in st
    m = out["metrics"]
    assert set(m) == {"psnr", "ssim", "ms_ssim", "sam", "ergas", "consistency_psnr", "consistency_mae",
                      "hf_energy_ratio", "seam_score"}
    for key in ("psnr", "ssim", "ms_ssim", "consistency_psnr", "hf_energy_ratio"):
        assert len(m[key]["per_band"]) == 4 and {"value", "unit", "better"} <= set(m[key])
    assert m["psnr"]["unit"] == "dB" and m["psnr"]["better"] == "higher"
    assert 30 < m["psnr"]["value"] < 60 and 0.9 < m["ssim"]["value"] < 1
    assert m["consistency_psnr"]["value"] > 35 and m["hf_energy_ratio"]["value"] < 1
    assert m["seam_score"]["value"] is None  # one tile: no boundaries
    with pytest.raises(HiresError, match="coarsened by one integer"):
        M.evaluate_pair(sr, s2, lr=replace(lr, affine=lr.affine + [[0, 0, 5], [0, 0, 0], [0, 0, 0]]))
    with pytest.raises(HiresError, match="implies x2"):
        M.evaluate_pair(sr, s2, lr=lr, scale=4)
    hook = lambda p, r, s: {"lpips": {"value": None, "status": "unavailable", "shape": p.shape,
                                    "valid": s["valid"].mean(), "kind": s["kind"]}}  # noqa: E731
    rgb = M.evaluate_pair(sr, s2, bands=[2, 1, 0], perceptual=hook)
    assert rgb["settings"]["bands"] == ["B04", "B03", "B02"] and rgb["metrics"]["lpips"]["shape"] == [3, 256, 256]
    assert rgb["metrics"]["lpips"]["valid"] == 1.0 and rgb["metrics"]["lpips"]["kind"] == "raster"
    assert "ergas" not in rgb["metrics"]  # no scale without lr


def test_evaluate_pair_ct_identical_and_nodata(ct_volume):
    out = M.evaluate_pair(ct_volume, ct_volume, window="soft-tissue")
    json.dumps(out, allow_nan=False)
    m = out["metrics"]
    assert m["psnr"]["value"] is None and "infinite" in m["psnr"]["note"]
    assert m["ssim"]["value"] == pytest.approx(1.0) and m["hu_mae"]["value"] == 0.0
    assert m["noise_std_flat"]["value"] == m["noise_std_flat"]["ref_value"]
    assert out["settings"]["data_range"]["name"] == "soft-tissue" and "sam" not in m
    # NaN pixels in the prediction are excluded, not compared
    pred = ct_volume.data.copy()
    pred[:, :, :20] = np.nan
    assert M.evaluate_pair(replace(ct_volume, data=pred), ct_volume)["metrics"]["hu_mae"]["value"] == 0.0


def test_too_big_refused(s2):
    huge = replace(s2, data=np.broadcast_to(np.float32(0), (4, 16384, 16384)))
    with pytest.raises(HiresError, match="patches or crops"):
        M.evaluate_pair(huge, huge)
