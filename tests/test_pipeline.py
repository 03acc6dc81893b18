"""End-to-end enhance runs on the bundled real samples: seams, nodata, COG, formats, demo."""

import re
import shutil

import numpy as np
import pydicom
import pytest
import rasterio
from PIL import Image as PILImage

import hires_domain as hd
from hires_domain import geometry
from hires_domain.demo import run_demo

from support import dciodvfy_errors

S = hd.Settings


def test_raster_tiled_equals_whole(samples, tmp_path):
    """Seam test through the whole pipeline: tiny tiles vs one tile give the same GeoTIFF."""
    src = samples / "s2_crop.tif"
    hd.enhance_file(src, tmp_path / "tiled.tif", S("bicubic", 4, 48, 8, device="cpu"))
    hd.enhance_file(src, tmp_path / "whole.tif", S("bicubic", 4, 256, 0, device="cpu"))
    with rasterio.open(tmp_path / "tiled.tif") as a, rasterio.open(tmp_path / "whole.tif") as b:
        x, y = a.read().astype(int), b.read().astype(int)
        assert a.transform == b.transform and a.crs == b.crs
    diff = np.abs(x - y)
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-4  # only float ties at .5 may round apart


def test_raster_footprint_metadata_and_values(samples, tmp_path):
    src, out = samples / "s2_crop.tif", tmp_path / "x4.tif"
    hd.enhance_file(src, out, S("lanczos", 4, 64, 16, device="cpu"))
    with rasterio.open(src) as a, rasterio.open(out) as b:
        assert b.bounds == a.bounds and b.crs == a.crs and (b.width, b.height) == (4 * a.width, 4 * a.height)
        assert b.descriptions == a.descriptions and b.scales == a.scales and b.nodata == a.nodata
        assert b.colorinterp == a.colorinterp and b.dtypes == a.dtypes
        assert "model=lanczos" in b.tags()["HIRES_PROVENANCE"]
        lr, hr = a.read().astype(float), b.read().astype(float)
    # area-averaging the x4 output back gives the input (interpolation invents no low frequencies)
    back = hr.reshape(4, 256, 4, 256, 4).mean(axis=(2, 4))
    assert np.abs(back - lr).mean() < 0.02 * lr.mean()


def test_raster_nodata_region_stays_nodata(samples, tmp_path):
    src = tmp_path / "holes.tif"
    with rasterio.open(samples / "s2_crop.tif") as ds:
        profile, data = ds.profile, ds.read()
    data[:, 100:140, 30:200] = 0  # nodata = 0
    with rasterio.open(src, "w", **profile) as dst:
        dst.write(data)
    hd.enhance_file(src, tmp_path / "x2.tif", S("bicubic", 2, 64, 16, device="cpu"))
    with rasterio.open(tmp_path / "x2.tif") as out:
        hr = out.read()
    hole = np.zeros((256, 256), bool)
    hole[100:140, 30:200] = True
    hole2 = hole.repeat(2, 0).repeat(2, 1)
    assert (hr[:, hole2] == 0).all()
    assert (hr[:, ~hole2] > 0).all()
    # valid pixels next to the hole are not dragged towards 0 (no smearing)
    ring = hr[:, 198:200, 60:400].astype(float)  # output rows just above the hole
    assert ring.min() > 0.5 * data[:, 97:100, 30:200].min()


def test_cog_from_cli(samples, tmp_path):
    from rio_cogeo.cogeo import cog_validate

    out = tmp_path / "x2_cog.tif"
    hd.enhance_file(samples / "s2_crop.tif", out, S("bicubic", 2, 128, 16, device="cpu"), cog=True)
    valid, errors, _ = cog_validate(str(out))
    assert valid and not errors


def test_dicom_to_derived_series_and_to_nifti(samples, tmp_path):
    import nibabel as nib

    src = samples / "ct_head_series"
    hd.enhance_file(src, tmp_path / "x2", S("bicubic", 2, 64, 16, device="cpu"))
    hd.enhance_file(src, tmp_path / "x2.nii.gz", S("bicubic", 2, 64, 16, device="cpu"))
    img_d, img_n = hd.read(tmp_path / "x2"), hd.read(tmp_path / "x2.nii.gz")
    # the same HU and the same patient geometry whichever format carried them
    np.testing.assert_allclose(img_d.data, img_n.data, atol=0.51)
    np.testing.assert_allclose(geometry.convert_frame(img_d.affine, "LPS", "RAS"), img_n.affine, atol=1e-4)
    src_img = hd.read(src)
    np.testing.assert_allclose(img_d.affine, geometry.upscaled_affine(src_img.affine, (1, 2, 2)), atol=1e-4)
    assert nib.load(tmp_path / "x2.nii.gz").shape == (256, 256, 12)


def test_inputs_never_modified(samples, tmp_path):
    src = tmp_path / "series"
    shutil.copytree(samples / "ct_head_series", src)
    before = {p.name: p.read_bytes() for p in src.iterdir()}
    hd.enhance_file(src, tmp_path / "out", S("nearest", 2, 64, 8, device="cpu"))
    assert {p.name: p.read_bytes() for p in src.iterdir()} == before


def test_raster_failure_mid_stream_leaves_nothing(samples, tmp_path, monkeypatch):
    from hires_domain import models

    calls = {"n": 0}
    real = models.baselines.Bicubic.predict

    def flaky(self, x, scale):
        calls["n"] += 1
        if calls["n"] == 5:
            raise RuntimeError("out of memory")
        return real(self, x, scale)

    monkeypatch.setattr(models.baselines.Bicubic, "predict", flaky)
    with pytest.raises(RuntimeError):
        hd.enhance_file(samples / "s2_crop.tif", tmp_path / "o.tif", S("bicubic", 2, 32, 8, batch_size=1))
    assert list(tmp_path.iterdir()) == []


def test_demo_runs_on_bundled_samples(tmp_path):
    rows = run_demo(tmp_path / "demo", device="cpu", quiet=True)
    assert [r["out_shape"] for r in rows] == [[1, 1, 512, 512], [1, 1, 512, 512], [1, 12, 256, 256],
                                              [1, 32, 256, 256], [4, 1024, 1024], [4, 1024, 1024], [12, 192, 192],
                                              [4, 1024, 1024]]
    assert rows[0]["model"] == rows[1]["model"] == "ct-denoise"  # the radiologist's job comes first
    assert rows[4]["model"] == "s2-sr-x4"  # the shipped model runs in the demo
    assert rows[6]["model"] == "s2-sharpen"  # the GIS analyst's product job: every band at 10 m
    assert rows[7]["model"] == "s2-ldm-x4" and rows[7]["uncertainty"] == "s2_crop_x4_ldm_uncertainty.tif"
    summary = (tmp_path / "demo" / "summary.md").read_text()
    psnr = {m[0]: float(m[1]) for m in re.findall(r"^\| ([^|]+?) \| ([\d.]+) \| [\d.]+ \|$", summary, re.M)}
    assert psnr["ct_lowdose_denoised.nii.gz"] > psnr["ct_lowdose_denoised_s05.nii.gz"] > psnr["low-dose input"] + 3
    with PILImage.open(tmp_path / "demo" / "ct_lowdose_preview.png") as png:  # input | result | 0.5 | truth
        assert png.size == (4 * 200 + 3 * 6, 200)
    for name in ["ct_lowdose_denoised.nii.gz", "ct_lowdose_denoised_s05.nii.gz", "ct_lowdose_preview.png",
                 "ct_series_x2", "ct_head_x2.nii.gz", "s2_crop_x4.tif", "summary.md", "summary.json",
                 "ct_series_x2_preview.png", "s2_crop_x4_preview.png", "s2_crop_x4_ldm.tif",
                 "s2_crop_x4_ldm_uncertainty.tif", "s2_crop_x4_ldm_preview.png", "s2_product_10m.tif",
                 "s2_product_10m_preview.png"]:
        assert (tmp_path / "demo" / name).exists(), name
    with PILImage.open(tmp_path / "demo" / "s2_crop_x4_ldm_preview.png") as png:  # input | mean | uncertainty
        assert png.size == (3 * 1024 + 16, 1024)
    with PILImage.open(tmp_path / "demo" / "s2_product_10m_preview.png") as png:  # B05/B11/B12: cubic | sharpened
        assert png.size == (2 * 192 + 8, 3 * 192 + 2 * 8)
    ds = pydicom.dcmread(sorted((tmp_path / "demo" / "ct_series_x2").glob("*.dcm"))[0])
    assert ds.ImageType[0] == "DERIVED" and "model=bicubic" in ds.DerivationDescription
    for p in (tmp_path / "demo" / "ct_series_x2").glob("*.dcm"):
        assert dciodvfy_errors(p) == [], p


def test_streamed_geotiff_is_not_bloated(samples, tmp_path):
    """Each compressed block is written once: re-encoding the output does not shrink it."""
    import rasterio.shutil

    out = tmp_path / "x4.tif"
    hd.enhance_file(samples / "s2_crop.tif", out, S("bicubic", 4, 40, 8, device="cpu"))
    rasterio.shutil.copy(out, tmp_path / "copy.tif", driver="GTiff", tiled=True, blockxsize=256,
                         blockysize=256, compress="deflate", predictor=2)
    assert out.stat().st_size <= 1.02 * (tmp_path / "copy.tif").stat().st_size
