"""The napari plugin's Qt-free job logic (hires_napari.jobs), tested without Qt or napari."""

from __future__ import annotations

import subprocess
import sys
from importlib import resources
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from hires_domain import geometry, read
from hires_domain.errors import HiresError
from hires_domain.models import Model, ModelInfo
from hires_domain.models import _REGISTRY as REGISTRY
from hires_domain.pipeline import Settings, enhance
from hires_napari import jobs, layers

SAMPLES = Path(str(resources.files("hires_domain") / "samples"))
CPU = dict(batch_size=1, device="cpu")


def _layer(path, band=0):
    image = read(SAMPLES / path)
    try:
        specs = layers.to_layer_data(image, Path(path).name.split(".")[0])
    finally:
        if hasattr(image.data, "close"):
            image.data.close()
    data, kwargs, _ = specs[band]
    return data, kwargs


def _image(layer):
    data, kwargs = layer
    return layers.to_image(data, kwargs["metadata"])


@pytest.fixture(scope="module")
def ct():
    return _layer("ct_head_series")


@pytest.fixture(scope="module")
def s2():
    return _layer("s2_crop.tif", band=2)


def test_importing_jobs_does_not_import_qt_or_napari():
    code = ("import sys, hires_napari.jobs; bad = [m for m in sys.modules if m.split('.')[0] in "
            "('qtpy', 'PyQt5', 'PyQt6', 'PySide2', 'PySide6', 'napari', 'magicgui', 'vispy')]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cropped_affine_moves_origin_to_the_crop_start(ct):
    image = _image(ct)
    starts = (3, 10, 20)
    a = geometry.cropped_affine(image.affine, starts)
    assert np.allclose(geometry.world_of(a, [0, 0, 0]), geometry.world_of(image.affine, starts))
    assert np.allclose(geometry.world_of(a, [1, 5, 7]), geometry.world_of(image.affine, [4, 15, 27]))
    assert np.allclose(geometry.spacing(a), image.spacing)
    with pytest.raises(ValueError):
        geometry.cropped_affine(image.affine, (1, 2))


def test_capture_is_a_read_only_snapshot(ct):
    data, kwargs = ct
    data = data.copy()
    job = jobs.capture(data, kwargs["metadata"], "ct", Settings("bicubic", 2, 64, 8, **CPU), layer_id="L1")
    assert not job.image.data.flags.writeable
    before = job.image.data.copy()
    data[:] += 100  # editing the layer afterwards does not reach the job
    assert np.array_equal(job.image.data, before)
    assert job.image.shape == (1, *data.shape)
    assert job.output_name == "ct [bicubic x2]"


def test_run_yields_per_tile_and_matches_pipeline_enhance(ct):
    data, kwargs = ct
    s = Settings("bicubic", 2, 64, 8, **CPU)
    job = jobs.capture(data, kwargs["metadata"], "ct", s, layer_id=1)
    gen = jobs.run(job)
    steps = []
    while True:
        try:
            steps.append(next(gen))
        except StopIteration as stop:
            outcome = stop.value
            break
    total = steps[-1][1]
    assert [d for d, _ in steps] == list(range(1, total + 1))  # one tile per yield
    assert total == 12 * 3 * 3
    assert outcome.error is None
    image = layers.to_image(data, kwargs["metadata"])
    ref = enhance(image, "bicubic", 2, 64, 8, device="cpu")
    assert np.allclose(outcome.image.affine, geometry.upscaled_affine(image.affine, (1, 2, 2)))
    assert np.allclose(outcome.image.data, ref.data, atol=1e-4)
    assert "model=bicubic" in outcome.image.meta["provenance"]


def test_stale_reason_detects_every_change(ct):
    data, kwargs = ct
    data = data.copy()
    geo = np.eye(4)
    job = jobs.capture(data, kwargs["metadata"], "ct", Settings("nearest", 2, 64, 0, **CPU), "L", geo=geo)
    assert jobs.stale_reason(job, "L", data, geo) is None
    assert "removed" in jobs.stale_reason(job, None)
    assert "removed" in jobs.stale_reason(job, "other", data, geo)
    assert "new data" in jobs.stale_reason(job, "L", data.copy(), geo)
    assert "new data" in jobs.stale_reason(job, "L", data[:, :64], geo)
    moved = geo.copy()
    moved[0, 3] = 5
    assert "moved" in jobs.stale_reason(job, "L", data, moved)
    data[5, 60, 60] += 1  # an in-place edit of one pixel
    assert "edited" in jobs.stale_reason(job, "L", data, geo)


def test_large_data_checksum_samples(monkeypatch):
    monkeypatch.setattr(jobs, "FULL_CHECKSUM_BYTES", 1000)
    a = np.arange(100_000, dtype=np.float32)
    c = jobs.checksum(a)
    b = a.copy()
    b[0] = -1
    assert jobs.checksum(b) != c


def test_region_from_points():
    r = jobs.region_from_points([[3.0, 10.2, 20.0], [3.0, 40.0, 70.6]], (12, 128, 128))
    assert r == jobs.Region((3, 10, 20), (4, 41, 72)) and r.shape == (1, 31, 52)
    # clipped at the layer's edges; points may carry extra leading world axes
    r = jobs.region_from_points([[9, -50.0, -3.0], [9, 300.0, 10.0]], (128, 128))
    assert r == jobs.Region((0, 0), (128, 11))
    with pytest.raises(HiresError, match="does not overlap"):
        jobs.region_from_points([[-40.0, -40.0], [-20.0, -30.0]], (128, 128))


def test_view_corners():
    c = jobs.view_corners(point=(7.0, 0.0, 0.0), displayed=(1, 2), center=(0.0, 50.0, 100.0),
                          canvas_size=(200, 400), zoom=4.0)
    assert c.shape == (4, 3)
    assert np.all(c[:, 0] == 7.0)
    assert c[:, 1].min() == 25.0 and c[:, 1].max() == 75.0
    assert c[:, 2].min() == 50.0 and c[:, 2].max() == 150.0
    with pytest.raises(HiresError, match="2-D view"):
        jobs.view_corners((0, 0, 0), (0, 1, 2), (0, 0, 0), (10, 10), 1.0)


def test_region_job_is_placed_where_the_region_is(s2):
    data, kwargs = s2
    region = jobs.Region((40, 100), (80, 164))
    job = jobs.capture(data, kwargs["metadata"], "s2", Settings("bicubic", 2, 32, 4, **CPU), 1, region=region)
    assert job.output_name == "s2 [bicubic x2] preview"
    full = layers.to_image(data, kwargs["metadata"])
    assert np.array_equal(job.image.data[0], data[40:80, 100:164])
    assert np.allclose(job.image.affine, jobs.crop(full, region).affine)
    out = jobs.run_all(job).image
    assert out.spatial_shape == (80, 128)
    # the output's outer pixel edges are the region's outer pixel edges in map coordinates
    edges_out = geometry.world_of(out.affine, [[-0.5, -0.5], [79.5, 127.5]])
    edges_in = geometry.world_of(full.affine, [[39.5, 99.5], [79.5, 163.5]])
    assert np.allclose(edges_out, edges_in)
    with pytest.raises(HiresError, match="axes"):
        jobs.capture(data, kwargs["metadata"], "s2", Settings(**CPU), 1, region=jobs.Region((0,), (4,)))


class _FourBands(Model):
    info = ModelInfo("test-4band", "test only", "srgan", ("raster",), (2,), bands=4)

    def predict(self, x, scale):  # pragma: no cover - never run
        raise AssertionError


def test_models_for_filters_by_domain_bands_and_scale(ct, s2, monkeypatch):
    monkeypatch.setitem(REGISTRY, "test-4band", _FourBands)
    ct_image = _image(ct)
    band = _image(s2)
    names = [m.name for m in jobs.models_for(band, 2)]
    assert {"bicubic", "nearest", "lanczos"} <= set(names) and "test-4band" not in names
    four = read(SAMPLES / "s2_crop.tif")
    assert "test-4band" in [m.name for m in jobs.models_for(four, 2)]
    assert "test-4band" not in [m.name for m in jobs.models_for(four, 3)]
    assert "test-4band" not in [m.name for m in jobs.models_for(ct_image)]
    with pytest.raises(HiresError, match="takes 4 band"):
        jobs.capture(s2[0], s2[1]["metadata"], "s2", Settings("test-4band", 2, **CPU), 1)
    four.data.close()


def test_capture_refuses_what_the_run_would(ct):
    data, kwargs = ct
    with pytest.raises(HiresError, match="not opened by hires-domain"):
        jobs.capture(data, {}, "mine", Settings(**CPU), 1)
    with pytest.raises(HiresError, match="cannot do x9"):
        jobs.capture(data, kwargs["metadata"], "ct", Settings("bicubic", 9, **CPU), 1)
    with pytest.raises(HiresError, match="overlap"):
        jobs.capture(data, kwargs["metadata"], "ct", Settings("bicubic", 2, 16, 16, **CPU), 1)
    with pytest.raises(HiresError, match="unknown model"):
        jobs.capture(data, kwargs["metadata"], "ct", Settings("nope", 2, **CPU), 1)
    rgb = {**kwargs["metadata"], "rgb_bands": (2, 1, 0)}
    with pytest.raises(HiresError, match="RGB"):
        jobs.capture(data, rgb, "ct", Settings(**CPU), 1)


def test_device_in_use():
    assert jobs.device_in_use("cpu") == "cpu"
    assert jobs.device_in_use("auto") in ("cpu", "cuda", "mps")
    assert jobs.device_in_use("tpu").startswith("unavailable: unknown device")


def test_output_layers_overlay_and_round_trip(s2):
    data, kwargs = s2
    job = jobs.capture(data, kwargs["metadata"], "s2 [B04]", Settings("nearest", 2, 64, 0, **CPU), 1)
    out = jobs.run_all(job).image
    [(odata, okw, kind)] = jobs.output_layers(job, out, contrast_limits=(0, 3000), colormap="gray")
    assert kind == "image" and okw["name"] == "s2 [B04] [nearest x2]"
    assert okw["contrast_limits"] == (0.0, 3000.0)
    assert odata.shape == (512, 512)
    back = layers.to_image(odata, okw["metadata"])
    assert np.allclose(back.affine, geometry.upscaled_affine(layers.to_image(data, kwargs["metadata"]).affine, 2))
    assert back.band_names == ("B04",) and back.crs == out.crs
    # scale halves, translate keeps the outer edge: edge = translate − scale/2 is unchanged
    s_in, t_in = np.array(kwargs["scale"]), np.array(kwargs["translate"])
    s_out, t_out = np.array(okw["scale"]), np.array(okw["translate"])
    assert np.allclose(s_out, s_in / 2) and np.allclose(t_out - s_out / 2, t_in - s_in / 2)


def test_compare_rows_and_difference(ct):
    data, kwargs = ct
    job = jobs.capture(data, kwargs["metadata"], "ct", Settings("bicubic", 2, 64, 8, **CPU), 1)
    pred = jobs.run_all(job).image
    ref = layers.to_image(data, kwargs["metadata"])
    c = jobs.compare(pred, ref, window="soft-tissue")
    names = [r[0] for r in c.rows]
    assert {"psnr", "ssim", "hu_mae"} <= set(names)
    psnr = dict((r[0], r) for r in c.rows)["psnr"]
    assert float(psnr[1]) > 30 and psnr[2] == "dB" and psnr[3] == "higher"
    assert c.resampled and "resampled" in c.summary and "soft" in c.summary.lower()
    same = jobs.compare(ref, ref)
    assert dict((r[0], r[1]) for r in same.rows)["psnr"] == "inf (identical)"
    ddata, dkw, _ = jobs.difference_layer(pred, ref, "ct [bicubic]", "ct")
    assert dkw["name"] == "ct [bicubic] − ct"
    assert ddata.shape == data.shape  # on the reference grid
    assert dkw["contrast_limits"][0] == -dkw["contrast_limits"][1]
    assert dkw["scale"] == kwargs["scale"] and dkw["translate"] == kwargs["translate"]
    assert np.abs(ddata).max() < 200  # bicubic then linear resampling stays close to the input


def test_window_limits():
    assert jobs.window_limits("lung") == (-1350.0, 150.0)
    with pytest.raises(HiresError):
        jobs.window_limits("liver")


class _Lazy:
    """A dask/zarr-like array: records what is read, refuses to be loaded whole."""

    def __init__(self, array):
        self.array, self.shape, self.dtype, self.reads = array, array.shape, array.dtype, []

    def __getitem__(self, key):
        self.reads.append(key)
        return self.array[key]

    def __array__(self, *args, **kwargs):
        raise AssertionError("loaded whole")


def test_region_of_a_lazy_layer_reads_only_the_region(s2):
    data, kwargs = s2
    lazy = _Lazy(data)
    region = jobs.Region((0, 0), (32, 48))
    job = jobs.capture(lazy, kwargs["metadata"], "s2", Settings("nearest", 2, 32, 0, **CPU), 1, region=region)
    assert lazy.reads == [region.slices] and job.fingerprint.checksum == 0
    assert job.image.spatial_shape == (32, 48)
    assert jobs.stale_reason(job, 1, lazy) is None


def _s2_bands():
    image = read(SAMPLES / "s2_crop.tif")
    try:
        return layers.to_layer_data(image, "s2_crop")
    finally:
        image.data.close()


def test_band_sets_offer_complete_rasters_only():
    entries = _s2_bands_entries()
    assert jobs.band_sets(entries) == {"s2_crop [all 4 bands]": [name for name, _ in entries]}
    assert jobs.band_sets(entries[:3]) == {}  # one band layer closed: no set
    again = [(f"{name} [1]", meta) for name, meta in _s2_bands_entries()]
    sets = jobs.band_sets(entries + again)  # the same file opened twice: two sets, two labels
    assert len(sets) == 2 and all(len(v) == 4 for v in sets.values())
    _, ct_kwargs = _layer("ct_head_series")
    assert jobs.band_sets([("ct", ct_kwargs["metadata"])]) == {}


def _s2_bands_entries():
    specs = _s2_bands()
    return [(kw["name"], kw["metadata"]) for _, kw, _ in specs]


def test_capture_bands_feeds_the_shipped_four_band_model():
    """All band layers of a raster as one input: s2-sr-x4 on a region equals the library run on
    the same crop of the file, and the result is again a complete band set on the input's grid."""
    specs = _s2_bands()
    region = jobs.Region((96, 64), (160, 128))
    members = [(data, kw["metadata"], i, None) for i, (data, kw, _) in enumerate(specs)]
    s = Settings("s2-sr-x4", 4, 64, 16, **CPU)
    job = jobs.capture_bands(members, "s2_crop", s, region)
    assert job.image.channels == 4 and job.image.band_names == ("B02", "B03", "B04", "B08")
    assert [fp.layer_id for fp in job.fingerprints] == [0, 1, 2, 3]
    out = jobs.run_all(job)
    assert out.error is None and out.image.shape == (4, 256, 256)
    whole = read(SAMPLES / "s2_crop.tif")
    try:
        crop = jobs.crop(replace(whole, data=whole.array().astype(np.float32)), region)
    finally:
        whole.data.close()
    ref = enhance(crop, "s2-sr-x4", 4, 64, 16, device="cpu")
    assert np.allclose(out.image.data, ref.data, atol=1e-3)
    assert np.allclose(out.image.affine, ref.affine)
    result = jobs.output_layers(job, out.image)
    names = [kw["name"] for _, kw, _ in result]
    assert names == [f"s2_crop [s2-sr-x4 x4] preview [{b}]" for b in ("B02", "B03", "B04", "B08")]
    assert list(jobs.band_sets([(kw["name"], kw["metadata"]) for _, kw, _ in result]).values()) == [names]


def test_capture_bands_refuses_broken_sets_and_detects_a_changed_band():
    specs = _s2_bands()
    members = [(data.copy(), kw["metadata"], i, np.eye(3)) for i, (data, kw, _) in enumerate(specs)]
    s = Settings("nearest", 2, 64, 0, **CPU)
    with pytest.raises(HiresError, match="no longer a complete set"):
        jobs.capture_bands(members[:3], "s2_crop", s)
    with pytest.raises(HiresError, match="no longer a complete set"):
        jobs.capture_bands([members[1], members[0], *members[2:]], "s2_crop", s)
    moved = [*members[:3], (*members[3][:3], np.diag([2.0, 1.0, 1.0]))]
    with pytest.raises(HiresError, match="moved apart"):
        jobs.capture_bands(moved, "s2_crop", s)
    job = jobs.capture_bands(members, "s2_crop", s)
    data3 = members[3][0]
    assert all(jobs.stale_reason(job, m[2], m[0], m[3], fp) is None for m, fp in zip(members, job.fingerprints))
    data3[0, 0] += 1  # an edit in the last band only
    assert "edited" in jobs.stale_reason(job, 3, data3, members[3][3], job.fingerprints[3])
