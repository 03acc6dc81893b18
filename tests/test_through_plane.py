"""--z-scale: the refined slice grid, the z baselines, self-sr on real CT, DICOM/NIfTI output,
refusals, the weight cache and cancelling (on the bundled real CT head samples)."""

import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import time

import nibabel as nib
import numpy as np
import psutil
import pydicom
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.transform import Rotation

from hires_domain import geometry, pipeline, through_plane
from hires_domain.data.degradations import thick_slices
from hires_domain.errors import HiresError
from hires_domain.io.dicom import read_dicom
from hires_domain.io.nifti import read_nifti
from hires_domain.models import self_sr

from support import SAMPLES, dciodvfy_errors, fails, hires

SERIES = SAMPLES / "ct_head_series"


def thick_version(image, k, crop=(slice(None), slice(None))):
    """The thin volume made thick by averaging k slices, on the grid whose ×k refinement is the thin grid."""
    thin = image.array()[0][(slice(None), *crop)]
    starts = [0, crop[0].start or 0, crop[1].start or 0]
    affine = geometry.cropped_affine(image.affine, starts)
    thick = thick_slices(thin, k).astype(np.float32)
    return thin, dataclasses.replace(image, data=thick[None], affine=geometry.upscaled_affine(affine, (1 / k, 1, 1)))


def psnr(a, b):
    return 10 * np.log10(float(np.ptp(b)) ** 2 / float(np.mean((a - b) ** 2)))


# ------------------------------------------------------------------------------ geometry

@settings(max_examples=60, deadline=None)
@given(k=st.integers(1, 8), s=st.integers(1, 4), spacing=st.tuples(*[st.floats(0.2, 6.0)] * 3),
       quat=st.tuples(*[st.floats(-1, 1)] * 4).filter(lambda q: np.linalg.norm(q) > 0.1),
       origin=st.tuples(*[st.floats(-500, 500)] * 3))
def test_refined_slice_grid(k, s, spacing, quat, origin):
    affine = np.eye(4)
    affine[:3, :3] = Rotation.from_quat(quat).as_matrix() * np.asarray(spacing)
    affine[:3, 3] = origin
    new = geometry.upscaled_affine(affine, (k, s, s))
    np.testing.assert_allclose(geometry.spacing(new), np.asarray(spacing) / (k, s, s), rtol=1e-9)
    np.testing.assert_allclose(geometry.directions(new), geometry.directions(affine), atol=1e-9)
    # first centre moves by (1/K - 1)/2 old slice steps along the slice normal (and likewise in-plane)
    shift = (1 / k - 1) / 2 * affine[:3, 0] + (1 / s - 1) / 2 * (affine[:3, 1] + affine[:3, 2])
    np.testing.assert_allclose(geometry.world_of(new, (0, 0, 0)), np.asarray(origin) + shift, atol=1e-7)
    # the K new slices of old slice j average to its centre: the footprint is kept
    j = 3
    centres = geometry.world_of(new, np.stack([np.arange(j * k, (j + 1) * k), np.zeros(k), np.zeros(k)], -1))
    old = geometry.world_of(affine, (j, (1 / s - 1) / 2, (1 / s - 1) / 2))
    np.testing.assert_allclose(centres.mean(axis=0), old, atol=1e-7)


def test_thick_grid_refined_is_the_thin_grid(ct_volume):
    thin, thick = thick_version(ct_volume, 4)
    out = pipeline.enhance(thick, "linear", z_scale=4)
    assert out.shape == (1, 32, 128, 128)
    np.testing.assert_allclose(out.affine, ct_volume.affine, atol=1e-9)


@pytest.mark.parametrize("k", [2, 3, 4])
def test_baselines_sample_the_stated_positions(ct_volume, k):
    vol = ct_volume.array()[:, :6]
    ramp = np.arange(6, dtype=np.float32)[None, :, None, None] * 7.0 + vol * 0  # a ramp along z
    pos = (np.arange(6 * k) + 0.5) / k - 0.5  # old index of each new slice
    inner = (pos >= 0) & (pos <= 5)  # inside the first and last centres
    out = through_plane.interpolate(ramp, k, "linear")
    np.testing.assert_allclose(out[0, inner, 5, 5], 7.0 * pos[inner], atol=1e-4)
    for method in ("linear", "cubic"):  # odd K: every (K-1)/2-th new slice is an old one, unchanged
        if k % 2:
            out = through_plane.interpolate(vol, k, method)
            np.testing.assert_allclose(out[:, (k - 1) // 2::k], vol, atol=1e-3)
    np.testing.assert_array_equal(through_plane.interpolate(vol, k, "nearest"), np.repeat(vol, k, axis=1))
    # on real data: linear along z is the mean of the two neighbouring slices at a midpoint (k = 2, odd new slice)
    if k == 2:
        out = through_plane.interpolate(vol, 2, "linear")
        np.testing.assert_allclose(out[:, 3], 0.75 * vol[:, 1] + 0.25 * vol[:, 2], atol=1e-3)


def test_thick_slices_box_width_generalises_the_block_mean(ct_volume):
    vol = ct_volume.array()[0, :, 40:48, 40:48]
    inner = slice(1, -1)  # away from the reflected edges
    np.testing.assert_allclose(thick_slices(vol, 4, "box", 4.0 + 1e-12)[inner], thick_slices(vol, 4)[inner], atol=1e-6)
    wide = thick_slices(vol, 4, "box", 6.0)  # block 1 is slices 4..7 (centre 5.5): the box covers 3..8
    np.testing.assert_allclose(wide[1], vol[3:9].mean(0), rtol=1e-6, atol=1e-4)
    narrow = thick_slices(vol, 4, "box", 3.0)  # [4, 7]: slices 5 and 6 whole, 4 and 7 by half
    np.testing.assert_allclose(narrow[1], (0.5 * vol[4] + vol[5] + vol[6] + 0.5 * vol[7]) / 3, rtol=1e-6, atol=1e-4)


# ------------------------------------------------------------------------------ self-sr

def test_untrained_self_sr_is_the_cubic_baseline(ct_volume):
    _, thick = thick_version(ct_volume, 4, (slice(32, 96), slice(32, 96)))
    net = self_sr.AxialSR(4, **self_sr.HPARAMS).eval()  # zero last layer: exactly the base path
    out = self_sr.apply(net, thick.array()[0])
    cubic = through_plane.interpolate(thick.array(), 4, "cubic")[0]
    np.testing.assert_allclose(out, cubic, atol=2e-3)


def test_self_sr_beats_linear_and_cubic_on_held_out_slices(ct_volume, monkeypatch):
    """Trained on the thick volume alone for 120 seeded steps (a step budget, not a time budget,
    so the result does not depend on the machine's speed); scored against the thin truth it
    never saw."""
    monkeypatch.setattr(self_sr, "MAX_STEPS", 120)
    thin, thick = thick_version(ct_volume, 4, (slice(32, 96), slice(32, 96)))
    seen = []
    out = pipeline.enhance(thick, "self-sr", z_scale=4, train_seconds=600, progress=lambda d, t: seen.append((d, t)))
    linear = pipeline.enhance(thick, "linear", z_scale=4)
    cubic = pipeline.enhance(thick, "bicubic", z_scale=4)
    got, lin, cub = (psnr(x.array()[0], thin) for x in (out, linear, cubic))
    assert got > lin + 1.0 and got > cub + 0.5, (got, lin, cub)
    assert seen[-1] == (120 + 64 + 64, 120 + 64 + 64)  # training steps, then (z, x) and (z, y) planes
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert "z_scale=4 z_method=self-sr" in out.meta["provenance"]


@pytest.mark.parametrize("phase", ["training", "inference"])
def test_raising_in_progress_stops_within_one_step(ct_volume, phase):
    _, thick = thick_version(ct_volume, 2, (slice(0, 64), slice(0, 64)))
    calls = []

    class Stop(Exception):
        pass

    def progress(done, total):
        calls.append(done)
        if (phase == "training" and done == 3) or (phase == "inference" and done > total - 64 - 64 + 2):
            raise Stop

    with pytest.raises(Stop):
        pipeline.enhance(thick, "self-sr", z_scale=2, train_seconds=3 if phase == "inference" else 60,
                         progress=progress)
    if phase == "training":
        assert calls == [1, 2, 3]
    else:
        assert calls[-1] - calls[-2] <= self_sr.PLANES_PER_CALL


def test_weights_cached_and_keyed_by_input(tmp_path, capsys):
    src = tmp_path / "thick.nii.gz"
    vol = read_nifti(SAMPLES / "ct_head.nii.gz")
    _, thick = thick_version(vol, 2, (slice(0, 64), slice(0, 64)))
    nib.save(nib.Nifti1Image(thick.array()[0].T, geometry.nifti_from_affine(thick.affine)), src)
    args = ["--model", "self-sr", "--z-scale", "2", "--train-seconds", "3", "--keep-model", "-q"]
    assert hires(capsys, "enhance", src, tmp_path / "a.nii.gz", *args)[0] == 0
    (cached,) = tmp_path.glob("self-sr-*.safetensors")
    stamp = cached.stat().st_mtime_ns
    seen = []
    s = pipeline.enhance_file(src, tmp_path / "b.nii.gz", pipeline.Settings(
        "self-sr", z_scale=2, train_seconds=3, keep_model=True), progress=lambda d, t: seen.append(t))
    assert any("reused" in n for n in s.notes)
    assert seen and max(seen) == 64 + 64  # no training steps counted: inference over the planes only
    assert cached.stat().st_mtime_ns == stamp
    a, b = (nib.load(tmp_path / n).get_fdata() for n in ("a.nii.gz", "b.nii.gz"))
    np.testing.assert_array_equal(a, b)
    # another input (one voxel changed) never reuses those weights
    other = thick.array()[0].copy()
    other[3, 10, 10] += 50
    nib.save(nib.Nifti1Image(other.T, geometry.nifti_from_affine(thick.affine)), tmp_path / "other.nii.gz")
    s = pipeline.enhance_file(tmp_path / "other.nii.gz", tmp_path / "c.nii.gz", pipeline.Settings(
        "self-sr", z_scale=2, train_seconds=2, keep_model=True))
    assert any("trained" in n for n in s.notes)
    assert len(list(tmp_path.glob("self-sr-*.safetensors"))) == 2


# ------------------------------------------------------------------------------ output files

def test_dicom_series_z4_geometry_and_validator(tmp_path, capsys):
    code, out, err = hires(capsys, "enhance", SERIES, tmp_path / "thin", "--model", "bicubic", "--z-scale", "4")
    assert code == 0, err
    source = read_dicom(SERIES)
    written = sorted((pydicom.dcmread(p) for p in (tmp_path / "thin").glob("*.dcm")), key=lambda d: d.InstanceNumber)
    assert [d.InstanceNumber for d in written] == list(range(1, 49))
    expected = geometry.upscaled_affine(source.affine, (4, 1, 1))
    positions = np.array([np.asarray(d.ImagePositionPatient, float) for d in written])
    np.testing.assert_allclose(positions, geometry.world_of(expected, np.stack(
        [np.arange(48), np.zeros(48), np.zeros(48)], -1)), atol=1e-4)
    step = geometry.spacing(source.affine)[0]
    np.testing.assert_allclose(positions[0], geometry.world_of(source.affine, ((1 / 4 - 1) / 2, 0, 0)), atol=1e-4)
    assert float(written[0].SpacingBetweenSlices) == pytest.approx(step / 4)
    old_thickness = float(source.meta["headers"][0].SliceThickness)
    assert float(written[0].SliceThickness) == pytest.approx(old_thickness / 4)
    assert written[0].SeriesInstanceUID != source.meta["headers"][0].SeriesInstanceUID
    assert "DERIVED" in written[0].ImageType and "z_scale=4" in written[0].DerivationDescription
    back = read_dicom(tmp_path / "thin")
    np.testing.assert_allclose(back.affine, expected, atol=1e-4)
    assert dciodvfy_errors(next((tmp_path / "thin").glob("*.dcm"))) == []


def test_cubic_is_the_bicubic_kernel_along_z(tmp_path, ct_volume):
    a = pipeline.enhance(ct_volume, "cubic", z_scale=4)
    b = pipeline.enhance(ct_volume, "bicubic", z_scale=4)
    np.testing.assert_array_equal(a.array(), b.array())
    assert "z_method=cubic" in a.meta["provenance"]


def test_nifti_z3_with_inplane_scale(tmp_path, capsys):
    code, _, err = hires(capsys, "enhance", SAMPLES / "ct_head.nii.gz", tmp_path / "o.nii.gz", "--model", "bicubic",
                         "--z-scale", "3", "--scale", "2", "-q")
    assert code == 0, err
    src, out = read_nifti(SAMPLES / "ct_head.nii.gz"), read_nifti(tmp_path / "o.nii.gz")
    assert out.shape == (1, 96, 256, 256)
    descrip = nib.load(tmp_path / "o.nii.gz").header["descrip"].item().decode()
    assert "scale=2 z_scale=3 z_method=cubic" in descrip  # within NIfTI's 80 characters
    np.testing.assert_allclose(out.affine, geometry.upscaled_affine(src.affine, (3, 2, 2)), atol=1e-5)
    # the mean of each 3x2x2 block is close to the source voxel (footprint kept)
    blocks = out.array()[0].reshape(32, 3, 128, 2, 128, 2).mean(axis=(1, 3, 5))
    assert np.median(np.abs(blocks - src.array()[0])) < 5.0


# ------------------------------------------------------------------------------ refusals

def test_refusals(tmp_path, capsys, ct_volume):
    fails(capsys, "enhance", SAMPLES / "s2_crop.tif", tmp_path / "o.tif", "--z-scale", "2", match="not rasters")
    fails(capsys, "enhance", SERIES, tmp_path / "o.nii.gz", "--z-scale", "0", match="--z-scale must be")
    fails(capsys, "enhance", SERIES, tmp_path / "o.nii.gz", "--z-scale", "-2", match="--z-scale must be")
    fails(capsys, "enhance", SERIES, tmp_path / "o.nii.gz", "--model", "self-sr", match="give --z-scale")
    fails(capsys, "enhance", SERIES, tmp_path / "o.nii.gz", "--z-scale", "2", "--keep-model", match="self-sr option")
    fails(capsys, "enhance", SERIES, tmp_path / "o.nii.gz", "--model", "self-sr", "--z-scale", "2",
          "--slice-profile", "triangle", match="--slice-profile")
    single = dataclasses.replace(ct_volume, data=ct_volume.array()[:, :1])
    with pytest.raises(HiresError, match="at least 2 slices"):
        pipeline.enhance(single, "bicubic", z_scale=2)
    flat = dataclasses.replace(ct_volume, data=ct_volume.array()[:, 0], affine=np.eye(3))
    with pytest.raises(HiresError, match="needs a 3-D volume"):
        pipeline.enhance(flat, "bicubic", z_scale=2)
    tilted = ct_volume.affine.copy()
    tilted[:3, 0] += 0.3 * tilted[:3, 1]  # slice step leans 17 degrees towards y
    nib.save(nib.Nifti1Image(ct_volume.array()[0].T, geometry.nifti_from_affine(tilted)), tmp_path / "tilt.nii.gz")
    fails(capsys, "enhance", tmp_path / "tilt.nii.gz", tmp_path / "o.nii.gz", "--z-scale", "2", match="gantry tilt")
    uneven = tmp_path / "uneven"
    shutil.copytree(SERIES, uneven)
    f = sorted(uneven.glob("*.dcm"))[0]
    ds = pydicom.dcmread(f)
    ds.ImagePositionPatient = [float(v) + (0.7 if i == 2 else 0) for i, v in enumerate(ds.ImagePositionPatient)]
    ds.save_as(f)
    fails(capsys, "enhance", uneven, tmp_path / "o.nii.gz", "--z-scale", "2", match="uneven slice spacing")
    assert not (tmp_path / "o.nii.gz").exists() and not (tmp_path / "o.tif").exists()


def test_slice_profile_from_the_header_or_the_options(ct_volume):
    series = read_dicom(SERIES)  # 2 mm spacing, SliceThickness 1 mm in the headers
    assert through_plane.slice_profile(series, 2) == ("box", 1.0, 1.0)
    assert through_plane.slice_profile(series, 4, "gaussian", 3.0) == ("gaussian", 6.0, 3.0)
    assert through_plane.slice_profile(ct_volume, 4) == ("box", 4.0, 1.0)  # NIfTI: the spacing


@pytest.mark.skipif(not hasattr(signal, "SIGINT") or sys.platform == "win32", reason="POSIX signals")
def test_ctrl_c_during_self_sr_training(tmp_path):
    """A real `hires enhance` subprocess, interrupted once it has spent 8 s of CPU (imports take
    about 3): exit 130, one line, no output and no kept weights."""
    out = tmp_path / "thin.nii.gz"
    env = {k: v for k, v in os.environ.items() if k != "HIRES_DEBUG"}
    proc = subprocess.Popen([sys.executable, "-m", "hires_domain", "enhance", str(SERIES), str(out), "--model",
                             "self-sr", "--z-scale", "2", "--keep-model"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    watch = psutil.Process(proc.pid)
    deadline = time.monotonic() + 120
    while watch.cpu_times().user + watch.cpu_times().system < 8.0:
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)  # the default budget is 180 s: only the signal ends it early
    assert proc.returncode == 130 and stderr.splitlines() == ["error: interrupted; no output was written"], stderr
    assert list(tmp_path.iterdir()) == []
