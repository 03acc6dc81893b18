"""The input-domain guard (hires_domain/models/domain.py): a trained model warns, once, on an input
unlike what it was trained on (another processing level, other bands, another modality, another
pixel size) and `--strict` refuses it with exit 2 and nothing written; in-domain samples and
baselines never warn; `hires train --export` records the training inputs' statistics."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import rasterio
import yaml
from rasterio.windows import Window

import hires_domain as hd
from hires_domain import geometry, pipeline
from hires_domain.models import available, get_model
from hires_domain.models.domain import MAX_PIXELS, differences, from_dataset, sample
from support import S2_RECIPE, SAMPLES, fails, hires

S2 = SAMPLES / "s2_crop.tif"


def s2_crop(path, dtype="uint16", scale=1.0, descriptions=None, size=64):
    """A size x size crop of the bundled Sentinel-2 sample (top-left), optionally as float
    reflectance (``scale`` 1e-4) or with other band descriptions; CRS and 10 m grid kept."""
    with rasterio.open(S2) as src:
        w = Window(0, 0, size, size)
        data = (src.read(window=w).astype(np.float64) * scale).astype(dtype)
        profile = dict(driver="GTiff", width=size, height=size, count=src.count, dtype=dtype, crs=src.crs,
                       transform=src.window_transform(w))
        names = descriptions or src.descriptions
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        dst.descriptions = names
    return path


def warnings_of(err: str) -> list[str]:
    return [ln for ln in err.splitlines() if ln.startswith("warning:")]


def mr_small():
    from pydicom.data import get_testdata_file

    return get_testdata_file("MR_small.dcm")  # a real MR slice, 64 x 64


# ---------------------------------------------------------------- out of domain


def test_float_reflectance_raster_warns_once_and_strict_refuses(tmp_path, capsys):
    """Another processing level: the real S2 crop as float reflectance 0-1 instead of L1C DN."""
    src = s2_crop(tmp_path / "refl.tif", "float32", 1e-4)
    code, _, err = hires(capsys, "enhance", src, tmp_path / "out.tif", "--model", "s2-sr-x4", "--scale", "4",
                         "--device", "cpu", "--quiet")
    assert code == 0, err
    [line] = warnings_of(err)
    assert "'s2-sr-x4'" in line and "worse than bicubic" in line
    assert "outside the training range 880 to 5330 DN" in line and "far below the training level" in line
    line = fails(capsys, "enhance", src, tmp_path / "strict.tif", "--model", "s2-sr-x4", "--scale", "4",
                 "--strict", "--quiet", match="refused")
    assert "far below the training level" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.tif", "refl.tif"]  # nothing written


def test_band_descriptions_naming_other_bands_are_refused_with_strict(tmp_path, capsys):
    """Landsat-8 band names (B5 is its NIR band) on an S2 model; the same bands reordered."""
    src = s2_crop(tmp_path / "l8names.tif", descriptions=("B2", "B3", "B4", "B5"))
    line = fails(capsys, "enhance", src, tmp_path / "out.tif", "--model", "s2-sr-x4", "--scale", "4", "--strict",
                 match="band descriptions name other bands (B5 where it expects B08)")
    assert "refused" in line and not (tmp_path / "out.tif").exists()
    image = hd.read(s2_crop(tmp_path / "rgb.tif", descriptions=("B04", "B03", "B02", "B08")))
    assert differences(image, get_model("s2-sr-x4").input_domain) == [
        "bands in another order (B04, B03, B02, B08; trained on B02, B03, B04, B08)"]
    image.data.close()


def test_already_upscaled_raster_is_off_in_pixel_size():
    """A 2.5 m result of a previous x4 run fed back in: more than 2x finer than 10 m."""
    image = hd.read(S2)
    try:
        small = replace(image, data=image.array()[:, :64, :64].copy())
        finer = replace(small, affine=geometry.upscaled_affine(small.affine, 4))
        assert differences(small, get_model("s2-sr-x4").input_domain) == []
        [why] = differences(finer, get_model("s2-sr-x4").input_domain)
        assert why.startswith("pixel spacing 2.5 m is more than 2x off the training data (10 m data, 40 m inputs)")
    finally:
        image.data.close()


@pytest.mark.parametrize("model", ["ct-sr-x2", "ct-denoise"])
def test_mr_given_to_a_ct_model_warns_and_strict_refuses(tmp_path, capsys, model):
    scale = "2" if model == "ct-sr-x2" else "1"
    code, _, err = hires(capsys, "enhance", mr_small(), tmp_path / "out.nii.gz", "--model", model, "--scale", scale,
                         "--device", "cpu", "--quiet")
    assert code == 0, err
    [line] = warnings_of(err)
    assert f"'{model}'" in line and "modality MR, trained on CT" in line
    assert line.endswith("worse than the input itself" if model == "ct-denoise" else "worse than bicubic")
    fails(capsys, "enhance", mr_small(), tmp_path / "strict.nii.gz", "--model", model, "--scale", scale, "--strict",
          match="modality MR, trained on CT")
    assert not (tmp_path / "strict.nii.gz").exists()


def test_python_api_warns_or_refuses_with_strict(tmp_path):
    image = hd.read(s2_crop(tmp_path / "refl.tif", "float32", 1e-4, size=32))
    try:
        with pytest.warns(UserWarning, match="worse than bicubic") as caught:
            hd.enhance(image, model="s2-sr-x4", scale=4, device="cpu")
        assert len(caught) == 1  # once per run, not per tile
        with pytest.raises(hd.HiresError, match="refused"):
            hd.enhance(image, model="s2-sr-x4", scale=4, strict=True)
        with pytest.raises(hd.HiresError, match="refused"):
            hd.enhance_file(tmp_path / "refl.tif", tmp_path / "o.tif", hd.Settings("s2-sr-x4", 4, strict=True))
        assert not (tmp_path / "o.tif").exists()
    finally:
        image.data.close()


# ---------------------------------------------------------------- in domain, baselines


def test_in_domain_samples_do_not_warn(tmp_path, capsys):
    src = s2_crop(tmp_path / "s2.tif")
    code, _, err = hires(capsys, "enhance", src, tmp_path / "out.tif", "--model", "s2-sr-x4", "--scale", "4",
                         "--device", "cpu", "--strict", "--quiet")
    assert code == 0 and not warnings_of(err), err
    whole = hd.read(S2)
    try:
        assert pipeline.domain_note(whole, get_model("s2-sr-x4"), strict=True) is None
    finally:
        whole.data.close()
    for name in ("ct_head_series", "ct_head.nii.gz"):  # the bundled real CT head
        ct = hd.read(SAMPLES / name)
        for model in ("ct-sr-x2", "ct-denoise"):
            assert differences(ct, get_model(model).input_domain) == [], (name, model)


def test_baselines_are_never_checked(tmp_path, capsys):
    refl = s2_crop(tmp_path / "refl.tif", "float32", 1e-4, size=32)
    for model in ("bicubic", "lanczos", "nearest"):
        assert get_model(model).input_domain is None
        code, _, err = hires(capsys, "enhance", refl, tmp_path / f"{model}.tif", "--model", model, "--scale", "4",
                             "--strict", "--quiet")
        assert code == 0 and not warnings_of(err), err
    code, _, err = hires(capsys, "enhance", mr_small(), tmp_path / "mr.nii.gz", "--model", "bicubic", "--strict",
                         "--quiet")
    assert code == 0 and not warnings_of(err), err
    trained = [n for n in available() if get_model(n).info.family != "interpolation"]
    assert {"s2-sr-x4", "ct-sr-x2", "ct-denoise"} <= set(trained)
    assert all(get_model(n).input_domain for n in ("s2-sr-x4", "ct-sr-x2", "ct-denoise"))


# ---------------------------------------------------------------- sampling, export


class _HugeSource:
    """A 4 x 100,000 x 100,000 lazy raster that records what is read (never the whole scene)."""

    shape = (4, 100_000, 100_000)
    dtype = np.dtype("uint16")

    def __init__(self):
        self.read_pixels = 0

    def read(self, region):
        shape = tuple(s.stop - s.start for s in region)
        self.read_pixels += int(np.prod(shape))
        return np.full((4, *shape), 1500, np.float32), np.ones(shape, bool)


def test_sampling_a_huge_lazy_raster_reads_a_few_windows_only():
    src = _HugeSource()
    image = hd.Image(src, np.array([[10.0, 0, 5], [0, -10.0, 5], [0, 0, 1]]), "map", "raster", "DN")
    values = sample(image)
    assert values.shape[0] == 4 and 0 < values.shape[1] == src.read_pixels <= MAX_PIXELS


def test_export_records_the_training_inputs(tmp_path, capsys):
    """`hires train --export` writes the same block as datasets/input_domain.py (from_dataset)."""
    from hires_domain.data.prepare import prepare

    (tmp_path / "r.yaml").write_text(yaml.safe_dump(S2_RECIPE))
    prepare(tmp_path / "r.yaml", tmp_path / "ds")
    cfg = yaml.safe_load((SAMPLES.parents[1] / "configs" / "tiny-test.yaml").read_text())
    cfg.update(dataset=str(tmp_path / "ds"), output=str(tmp_path / "run"), discriminator=None)
    cfg["train"].update(pretrain_steps=2, gan_steps=0, val_every=2, checkpoint_every=2, log_every=1)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    code, _, err = hires(capsys, "train", tmp_path / "c.yaml", "--quiet", "--device", "cpu", "--export", "tiny",
                         "--export-dir", tmp_path / "export")
    assert code == 0, err
    block = json.loads((tmp_path / "export" / "tiny.json").read_text())["input_domain"]
    assert block == from_dataset(tmp_path / "ds")
    assert block["bands"] == S2_RECIPE["bands"] and block["units"] == "DN" and block["domain"] == "raster"
    assert block["spacing"] == {"units": "m", "lr": [40.0, 40.0], "native": [10.0, 10.0]}
    for k in ("p1", "p50", "p99"):
        assert len(block["percentiles"][k]) == 4
    assert all(lo <= p1 <= p50 <= p99 <= hi for lo, p1, p50, p99, hi in zip(
        block["min"], *(block["percentiles"][k] for k in ("p1", "p50", "p99")), block["max"]))
