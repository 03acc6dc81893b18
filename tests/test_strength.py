"""Denoising strength for x1 models: output = input + strength × (model − input), per tile, on a
real CT slice (pydicom's J2K_pixelrep_mismatch.dcm: head CT with −2000 HU padding)."""

from __future__ import annotations

from pathlib import Path

import nibabel
import re

import numpy as np
import pytest
from pydicom.data import get_testdata_file

import hires_domain as hd
from hires_domain import geometry
from hires_domain.errors import HiresError
from hires_domain.io.dicom import read_dicom
from support import SAMPLES, fails, hires


@pytest.fixture(scope="module")
def ct_crop():
    path = get_testdata_file("J2K_pixelrep_mismatch.dcm")
    if path is None:
        pytest.skip("J2K_pixelrep_mismatch.dcm not installed (pydicom)")
    image = read_dicom(Path(path))
    data = image.array()[:, :, 20:116, 20:116].copy()  # straddles the FOV edge
    fov = data != -2000.0  # a normal-dose scan, which the model leaves nearly alone: add 30 HU of noise
    noisy = data[fov] + np.random.default_rng(0).normal(0.0, 30.0, fov.sum())
    data[fov] = np.maximum(noisy, -1024.0).astype(data.dtype)  # CT's floor, as a scanner writes it
    out = image.with_data(data)
    out.affine = geometry.cropped_affine(image.affine, (0, 20, 20))
    return out


@pytest.fixture(scope="module")
def runs(ct_crop):
    return {s: hd.enhance(ct_crop, "ct-denoise", strength=s, tile=64, overlap=8, device="cpu")
            for s in (0.0, 0.5, 1.0)}


def test_strength_zero_is_the_input(ct_crop, runs):
    np.testing.assert_allclose(runs[0.0].array(), ct_crop.array(), atol=1e-3)
    assert np.abs(runs[1.0].array() - ct_crop.array()).max() > 30  # the model does change it


def test_half_strength_is_the_midpoint(runs):
    a0, a5, a1 = (runs[s].array() for s in (0.0, 0.5, 1.0))
    np.testing.assert_allclose(a5, (a0 + a1) / 2, atol=1e-3)


def test_padding_untouched_and_provenance(ct_crop, runs):
    pad = ct_crop.array() == -2000.0
    assert 0.1 < pad.mean() < 0.9
    for s, result in runs.items():
        np.testing.assert_array_equal(result.array() == -2000.0, pad)
        assert result.array()[~pad].min() >= -1024.0
        assert re.search(f"model=ct-denoise scale=1 strength={s:g} tile=64 overlap=8 precision=(fp32|bf16)$",
                         result.meta["provenance"])


def test_settings_refuse_bad_strengths():
    assert " scale=1 strength=0.5 tile=auto" in hd.Settings("ct-denoise", strength=0.5).describe()
    assert "strength" not in hd.Settings("bicubic").describe()  # x2: no strength to record
    for bad in (-0.1, 1.5, float("nan"), "lots"):
        with pytest.raises(HiresError, match="strength must be"):
            hd.Settings("ct-denoise", strength=bad)
    with pytest.raises(HiresError, match="x1 .denoising. models .* and to diffusion models"):
        hd.Settings("s2-sr-x4", strength=0.5)
    with pytest.raises(HiresError, match="bicubic runs at x2"):
        hd.enhance(hd.read(SAMPLES / "ct_head.nii.gz"), "bicubic", strength=0.5)


def test_cli_strength(tmp_path, capsys, ct_crop):
    src = tmp_path / "ct.nii.gz"  # one 96 x 96 slice: the bundled volume takes half a minute on 2 CPUs
    hd.write(ct_crop, src)
    out = tmp_path / "half.nii.gz"
    code, _, err = hires(capsys, "enhance", src, out, "--model", "ct-denoise", "--strength", "0.5",
                         "--tile", "64", "--device", "cpu", "-q")
    assert code == 0, err
    assert "strength=0.5" in nibabel.load(out).header["descrip"].item().decode()
    fails(capsys, "enhance", src, tmp_path / "a.nii.gz", "--model", "ct-denoise", "--strength", "2",
          match="from 0 to 1")
    fails(capsys, "enhance", src, tmp_path / "b.nii.gz", "--strength", "0.5", match="bicubic runs at x2")
    fails(capsys, "enhance", src, tmp_path / "c.nii.gz", "--strength", "1", match="x1 (denoising) models")
    assert not any(tmp_path.glob("[abc].nii.gz"))
