"""--scale defaults to the model's own scale (CLI, Python API); an impossible scale is one line."""

from __future__ import annotations

import numpy as np
import rasterio
from rasterio.windows import Window

import hires_domain as hd
from hires_domain.io.nifti import read_nifti
from support import SAMPLES, fails, hires


def small_s2(path):
    with rasterio.open(SAMPLES / "s2_crop.tif") as src:
        profile = {**src.profile, "width": 40, "height": 36}
        data = src.read(window=Window(100, 80, 40, 36))
        names = src.descriptions
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        dst.descriptions = names
    return path


def test_cli_uses_the_models_own_scale(tmp_path, capsys):
    src = small_s2(tmp_path / "s2.tif")
    code, out, err = hires(capsys, "enhance", src, tmp_path / "x4.tif", "--model", "s2-sr-x4")
    assert code == 0, err
    assert "x4" in out
    with rasterio.open(tmp_path / "x4.tif") as ds:
        assert (ds.height, ds.width) == (144, 160)
        assert "scale=4" in ds.tags()["HIRES_PROVENANCE"]
    code, _, err = hires(capsys, "enhance", src, tmp_path / "b.tif", "--model", "bicubic", "-q")
    assert code == 0, err
    with rasterio.open(tmp_path / "b.tif") as ds:
        assert (ds.height, ds.width) == (72, 80)  # baselines keep 2


def test_explicit_impossible_scale_is_one_line(tmp_path, capsys):
    src = small_s2(tmp_path / "s2.tif")
    fails(capsys, "enhance", src, tmp_path / "o.tif", "--model", "s2-sr-x4", "--scale", "2",
          match="model 's2-sr-x4' cannot do x2; it supports x4")
    assert not (tmp_path / "o.tif").exists()


def test_api_uses_the_models_own_scale():
    ct = read_nifti(SAMPLES / "ct_head.nii.gz")
    ct = ct.with_data(ct.array()[:, :2, :24, :20].copy())
    assert hd.enhance(ct, "ct-sr-x2").spatial_shape == (2, 48, 40)
    assert hd.enhance(ct, "ct-denoise").spatial_shape == (2, 24, 20)
    assert hd.enhance(ct, "bicubic").spatial_shape == (2, 48, 40)
    assert hd.Settings("s2-sr-x4").scale == 4 and hd.Settings("ct-denoise").scale == 1
    assert hd.Settings("lanczos", 3).scale == 3
    np.testing.assert_array_equal(hd.enhance(ct, "nearest", 1).array(), ct.array())
