"""`s2-sharpen+x4`: every Sentinel-2 band sharpened to 10 m, then the 12-band cube x4 to 2.5 m, as
one model through the tiler. Real pixels: the bundled 13-band crop (held-out quadrant)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio

import hires_domain as hd
from hires_domain.io.s2_bands import DEFAULT_BANDS
from hires_domain.metrics import block_mean, psnr
from hires_domain.models import get_model
from hires_domain.pipeline import Settings, enhance_file
from s2_support import CROP
from support import fails

CASCADE = "s2-sharpen+x4"


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    out = tmp_path_factory.mktemp("cascade") / "whole.tif"
    enhance_file(CROP, out, Settings(CASCADE, None, precision="fp32", device="cpu"))
    return out


def test_cascade_is_one_model_of_its_stages():
    m, a, b = get_model(CASCADE), get_model("s2-sharpen"), get_model("s2-cube-x4")
    assert m.info.scales == (4,) and m.info.bands == 12 and m.info.family == "cascade"
    assert m.info.halo == a.info.halo + b.info.halo
    before = m.precision
    try:
        m.precision = "bf16"
        assert (m.first.precision, m.second.precision) == ("bf16", "bf16")
    finally:  # the stages may be this process's shared instances (keep_models)
        m.precision = before


def test_every_band_at_2_5_m_on_the_10_m_grid_refined(whole):
    with rasterio.open(whole) as ds, rasterio.open(CROP / "s2_B02.jp2") as ref:
        assert ds.count == 12 and ds.shape == (4 * ref.height, 4 * ref.width)
        assert ds.crs == ref.crs
        assert ds.transform == ref.transform * ref.transform.scale(0.25)  # same corner, 2.5 m pixels
        assert list(ds.descriptions) == list(DEFAULT_BANDS)
        assert ds.dtypes[0] == "uint16"
        out = ds.read().astype(np.float64)
    # equal to running the two stages one after the other (float in between)
    image = hd.read(CROP)
    sharp = hd.enhance(image, model="s2-sharpen", scale=1, device="cpu", precision="fp32")
    two = hd.enhance(sharp, model="s2-cube-x4", scale=4, device="cpu", precision="fp32").data
    np.testing.assert_allclose(out, np.clip(np.rint(two), 0, 65535), atol=1)
    # area-averaged back onto the 10 m grid: the sharpened cube, band by band
    back = block_mean(out, 4)
    for k in range(12):
        assert psnr(back[k:k + 1] / 1e4, sharp.data[k:k + 1] / 1e4, 1.0).value > 40, DEFAULT_BANDS[k]


def test_tiles_equal_the_whole_image(whole, tmp_path):
    tiled = tmp_path / "tiled.tif"
    enhance_file(CROP, tiled, Settings(CASCADE, None, precision="fp32", device="cpu", tile=64, overlap=0))
    with rasterio.open(whole) as a, rasterio.open(tiled) as b:
        np.testing.assert_array_equal(a.read(), b.read())


def test_b10_or_a_plain_raster_is_refused_in_one_line(capsys, tmp_path):
    every = ",".join([*DEFAULT_BANDS, "B10"])
    fails(capsys, "enhance", CROP, tmp_path / "o.tif", "--model", CASCADE, "--bands", every, match="takes 12 band(s)")
    assert not list(tmp_path.iterdir())


def test_a_cascade_naming_a_missing_stage_fails_in_one_line(capsys, tmp_path, monkeypatch):
    d = tmp_path / "models"
    d.mkdir()
    (d / "t-cascade-missing-stage.json").write_text(json.dumps({"format": "hires-model", "format_version": 1, "name": "t-cascade-missing-stage",
                                               "family": "cascade", "domain": "raster",
                                               "stages": ["s2-sharpen", "no-such-model"]}))
    from hires_domain import models
    from hires_domain.models import neural

    monkeypatch.setattr(models, "_REGISTRY", dict(models._REGISTRY))
    neural.register_dir(d)
    fails(capsys, "enhance", CROP, tmp_path / "o.tif", "--model", "t-cascade-missing-stage", match="unknown model 'no-such-model'")
    assert not (tmp_path / "o.tif").exists()
