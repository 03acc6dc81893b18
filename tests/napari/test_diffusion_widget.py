"""Diffusion models in the Enhance widget, driven headless with real viewers and small
random-weight latent-diffusion models (``support.make_ldm``) on crops of the bundled samples:
the diffusion controls are live for diffusion models only, progress counts denoising steps over
all tiles, Cancel stops within one step and adds nothing, an uncertainty map comes back as its
own layer over the result, and bad values are one-line errors."""

from __future__ import annotations

import threading
from dataclasses import replace

import numpy as np
import pytest

import hires_domain as hd
from hires_domain import read, tiling
from hires_domain.pipeline import Settings
from hires_domain.models import _REGISTRY as REGISTRY
from hires_domain.models import ldm
from support import SAMPLES, make_ldm

napari = pytest.importorskip("napari")

from napari.utils.notifications import NotificationSeverity  # noqa: E402
from test_io import PLUGIN  # noqa: E402
from test_widgets import edge_worlds, notes, run_and_wait  # noqa: E402

from hires_napari import jobs, layers  # noqa: E402

TIMEOUT = 120_000


@pytest.fixture
def viewer(make_napari_viewer_proxy):
    return make_napari_viewer_proxy()  # widgets keep references: no leak check


@pytest.fixture
def registry():
    """Models registered by a test (make_ldm) are gone afterwards."""
    saved = dict(REGISTRY)
    yield REGISTRY
    REGISTRY.clear()
    REGISTRY.update(saved)


@pytest.fixture
def steps_seen(monkeypatch):
    """Every call of a diffusion model's step callback (one per finished denoising step)."""
    calls = []
    real = ldm.denoise_jointly

    def counting(*args, **kwargs):
        *head, on_step = args

        def counted(step, steps):
            calls.append((step, steps))
            if on_step is not None:
                on_step(step, steps)

        return real(*head, counted, **kwargs)

    monkeypatch.setattr(ldm, "denoise_jointly", counting)
    return calls


def crop_image(sample: str, starts, stops):
    """A crop of a bundled sample read with the core reader (pixels loaded, geometry shifted)."""
    image = read(SAMPLES / sample)
    try:
        full = replace(image, data=image.array())
    finally:
        if hasattr(image.data, "close"):
            image.data.close()
    return jobs.crop(full, jobs.Region(tuple(starts), tuple(stops)))


def add_crop(viewer, sample: str, starts, stops, bands=None) -> list:
    """Add the layers of a crop (``bands``: which band layers) as the hires reader makes them."""
    specs = layers.to_layer_data(crop_image(sample, starts, stops), sample.split(".")[0])
    keep = range(len(specs)) if bands is None else bands
    return [viewer.add_image(specs[i][0], **specs[i][1]) for i in keep]


def b04(viewer):
    """Band B04 of the Sentinel-2 crop, rows 100..131, cols 60..91 (32 x 32 at 10 m)."""
    [layer] = add_crop(viewer, "s2_crop.tif", (100, 60), (132, 92), bands=[2])
    return layer


def diffusion_controls(w):
    return (w.steps, w.seed, w.samples, w.sampler)


def test_fields_live_for_diffusion_models_only(viewer, enhance, registry, tmp_path):
    make_ldm(tmp_path, name="t-ldm1", bands=1, scale=2, steps=4, sampler="ddim")
    b04(viewer)
    w = enhance("bicubic")
    assert not any(c.isEnabled() for c in diffusion_controls(w)) and not w.uncertainty.isEnabled()
    assert w.diffusion_box.isHidden()
    w.steps.setValue(0)  # ignored for a model that is no diffusion model
    assert w.settings().steps is None and w.settings().sampling is None

    w.model_combo.setCurrentText("t-ldm1")
    assert all(c.isEnabled() for c in diffusion_controls(w)) and w.diffusion_box.isVisibleTo(w)
    assert (w.steps.value(), w.sampler.currentText()) == (4, "ddim")  # the model's own defaults
    assert not w.uncertainty.isEnabled() and not w.uncertainty.isChecked()  # one sample: no spread
    w.samples.setValue(3)
    assert w.uncertainty.isEnabled() and w.uncertainty.isChecked()  # on by default from two samples
    w.steps.setValue(6)
    w.seed.setText("7")
    w.sampler.setCurrentText("dpm++")
    s = w.settings()
    assert (s.sampling.steps, s.sampling.seed, s.sampling.samples, s.sampling.sampler) == (6, 7, 3, "dpm++")
    assert s.uncertainty and "steps=6 seed=7 samples=3 sampler=dpm++" in s.describe()
    w.uncertainty.setChecked(False)
    assert not w.settings().uncertainty
    b04(viewer)  # another layer: the user's steps are kept, not reset to the model's default
    assert w.steps.value() == 6

    assert w.strength.isVisibleTo(w) and "first stage" in w.strength.toolTip()  # repaint strength
    w.strength.setValue(0.4)
    assert w.settings().sampling.strength == 0.4 and "strength=0.4" in w.settings().describe()

    w.model_combo.setCurrentText("bicubic")
    assert not any(c.isEnabled() for c in diffusion_controls(w)) and not w.uncertainty.isEnabled()
    assert w.diffusion_box.isHidden() and w.settings().sampling is None and not w.settings().uncertainty
    assert w.strength.isHidden() and w.settings().strength == 1.0


def test_progress_counts_steps_over_all_tiles(viewer, enhance, qtbot, registry, tmp_path, steps_seen):
    make_ldm(tmp_path, name="t-ldm1", bands=1, scale=2)
    layer = b04(viewer)
    w = enhance("t-ldm1", tile=16, overlap=0)
    w.steps.setValue(3)
    w.seed.setText("5")
    tiles = len(tiling.axis_starts(32, 16, 0)) ** 2
    assert tiles == 4
    run_and_wait(qtbot, w)
    assert w.last_outcome == "added", w.status.text()
    assert w.job.unit == "steps"
    assert w.last_progress == (tiles * 3, tiles * 3)  # steps x tiles, not tiles
    assert (w.progress.maximum(), w.progress.value()) == (12, 12)
    assert len(steps_seen) == 12 and {total for _, total in steps_seen} == {3}
    out = viewer.layers[-1]
    assert [ly.name for ly in viewer.layers] == [layer.name, f"{layer.name} [t-ldm1 x2]"]
    provenance = layers.to_image(out.data, out.metadata).meta["provenance"]
    assert "model=t-ldm1 scale=2" in provenance and "steps=3 seed=5 samples=1" in provenance


def test_strength_runs_fewer_steps(viewer, enhance, qtbot, registry, tmp_path, steps_seen):
    """Repaint strength 0.5 of 4 steps: each tile runs the last 2 (SDEdit), and progress says so."""
    make_ldm(tmp_path, name="t-ldm1", bands=1, scale=2)
    b04(viewer)
    w = enhance("t-ldm1", tile=16, overlap=0)
    w.steps.setValue(4)
    w.strength.setValue(0.5)
    run_and_wait(qtbot, w)
    assert w.last_outcome == "added", w.status.text()
    assert w.last_progress == (8, 8) and len(steps_seen) == 8 and {t for _, t in steps_seen} == {2}
    assert "strength=0.5" in layers.to_image(viewer.layers[-1].data, viewer.layers[-1].metadata).meta["provenance"]


def test_cancel_stops_within_one_step(viewer, enhance, qtbot, registry, tmp_path, steps_seen):
    make_ldm(tmp_path, name="t-ldm1", bands=1, scale=2)
    layer = b04(viewer)
    w = enhance("t-ldm1", tile=16, overlap=0)  # 4 tiles x 25 steps
    w.steps.setValue(25)
    at_cancel = []

    def cancel():
        at_cancel.append(len(steps_seen))
        w.cancel()

    run_and_wait(qtbot, w, on_first_yield=cancel)
    # the sampling thread is gone too (a sampler that ignored Cancel would still be running)
    qtbot.waitUntil(lambda: not any(t.name == "hires-diffusion" for t in threading.enumerate()), timeout=TIMEOUT)
    assert at_cancel and 1 <= at_cancel[0] < 100
    assert len(steps_seen) <= at_cancel[0] + 1  # the step under way finished, no other started
    assert w.last_outcome == "cancelled"
    done, total = w.last_progress
    assert total == 100 and done <= len(steps_seen)
    assert w.status.text() == f"cancelled after {done} of 100 steps"
    assert [ly.name for ly in viewer.layers] == [layer.name]  # nothing half-made


def test_samples_with_uncertainty_add_a_map_over_the_result(viewer, enhance, qtbot, registry, tmp_path):
    make_ldm(tmp_path, name="t-ldm1", bands=1, scale=2)
    layer = b04(viewer)
    w = enhance("t-ldm1", tile=32, overlap=8)
    w.steps.setValue(2)
    w.seed.setText("3")
    w.samples.setValue(3)
    assert w.uncertainty.isChecked()
    run_and_wait(qtbot, w)
    assert w.last_outcome == "added", w.status.text()
    name = f"{layer.name} [t-ldm1 x2]"
    assert [ly.name for ly in viewer.layers] == [layer.name, name, f"{name} uncertainty"]
    assert w.status.text() == f"added '{name}' and its uncertainty map"
    result, unc = viewer.layers[name], viewer.layers[f"{name} uncertainty"]
    assert np.shape(result.data) == np.shape(unc.data) == (64, 64)
    assert np.allclose(unc.scale, result.scale) and np.allclose(unc.translate, result.translate)
    assert np.allclose(unc.affine.affine_matrix, result.affine.affine_matrix)
    assert np.allclose(edge_worlds(unc), edge_worlds(layer), atol=1e-6)
    std = np.asarray(unc.data)
    assert np.isfinite(std).all() and (std >= 0).all() and std.max() > 0
    assert unc.colormap.name == "magma" and unc.visible and unc.contrast_limits[0] == 0

    # the same numbers as the library gives for these settings (seed, samples and steps reached the job)
    expected, expected_std = hd.enhance(layers.to_image(layer.data, layer.metadata), "t-ldm1", tile=32, overlap=8,
                                        device="cpu", steps=2, seed=3, samples=3, uncertainty=True)
    np.testing.assert_allclose(np.asarray(result.data), expected.array()[0], rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(std, expected_std.array()[0], rtol=1e-4, atol=1e-3)

    # the map is an Image layer the writers can save (GeoTIFF on the result's grid)
    back = layers.to_image(unc.data, unc.metadata)
    assert "output=uncertainty" in back.meta["provenance"] and back.nodata is None
    path = tmp_path / "uncertainty.tif"
    assert unc.save(str(path), plugin=PLUGIN) == [str(path)]
    saved = read(path)
    assert np.allclose(saved.affine, layers.to_image(result.data, result.metadata).affine)
    np.testing.assert_allclose(saved.array()[0], std, rtol=1e-5)

    # a rerun without the map replaces the result and drops the old map with it
    w.uncertainty.setChecked(False)
    run_and_wait(qtbot, w)
    assert [ly.name for ly in viewer.layers] == [layer.name, name]


def test_all_bands_uncertainty_is_a_hidden_band_set(viewer, enhance, qtbot, registry, tmp_path):
    make_ldm(tmp_path, name="t-ldm4", bands=4, scale=4)
    bands = add_crop(viewer, "s2_crop.tif", (100, 60), (132, 92))
    w = enhance("t-ldm4", scale=4, tile=32, overlap=8)
    w.layer_combo.setCurrentText("s2_crop [all 4 bands]")
    w.model_combo.setCurrentText("t-ldm4")
    w.steps.setValue(2)
    w.samples.setValue(3)
    run_and_wait(qtbot, w)
    assert w.last_outcome == "added", w.status.text()
    names = [f"s2_crop [t-ldm4 x4] [{b}]" for b in ("B02", "B03", "B04", "B08")]
    maps = [viewer.layers[f"{n} uncertainty"] for n in names]
    assert list(viewer.layers)[-4:] == maps  # over the result and its composite
    assert not any(m.visible for m in maps) and all(m.colormap.name == "magma" for m in maps)
    for n, m in zip(names, maps):
        assert np.shape(m.data) == (128, 128) and (np.asarray(m.data) >= 0).all()
        assert np.allclose(edge_worlds(m), edge_worlds(viewer.layers[n]), atol=1e-6)
        assert np.allclose(edge_worlds(m), edge_worlds(bands[0]), atol=1e-6)
    assert "s2_crop [t-ldm4 x4] uncertainty [all 4 bands]" in jobs.band_sets(
        [(ly.name, ly.metadata) for ly in viewer.layers])


def test_medical_volume_with_uncertainty(viewer, enhance, qtbot, registry, tmp_path, steps_seen):
    make_ldm(tmp_path, name="t-ldm-ct", bands=1, scale=2, domain="medical")
    [ct] = add_crop(viewer, "ct_head.nii.gz", (10, 40, 40), (12, 72, 72))  # 2 slices of 32 x 32
    w = enhance("t-ldm-ct", tile=32, overlap=8)
    w.samples.setValue(2)
    run_and_wait(qtbot, w)
    assert w.last_outcome == "added", w.status.text()
    result, unc = viewer.layers[-2], viewer.layers[-1]
    assert unc.name == f"{result.name} uncertainty" == f"{ct.name} [t-ldm-ct x2] uncertainty"
    assert np.shape(result.data) == np.shape(unc.data) == (2, 64, 64)
    assert np.allclose(unc.scale, result.scale) and np.allclose(unc.translate, result.translate)
    assert np.allclose(unc.affine.affine_matrix, result.affine.affine_matrix)
    assert np.allclose(edge_worlds(unc), edge_worlds(ct), atol=1e-6)
    assert (np.asarray(unc.data) >= 0).all() and unc.colormap.name == "magma"
    assert unc.contrast_limits[0] == 0 and unc.contrast_limits[1] < 400  # not the CT soft-tissue window
    assert w.last_progress == (2 * 4, 2 * 4) and len(steps_seen) == 2 * 4  # 2 slices (tiles) x 4 steps
    assert layers.to_image(unc.data, unc.metadata).spatial_shape == (2, 64, 64)


@pytest.mark.parametrize("field,value,message", [
    ("steps", 0, "steps must be an integer >= 1, got 0"),
    ("samples", 0, "samples must be an integer >= 1, got 0"),
    ("seed", "1.5", "seed must be a non-negative integer, got '1.5'"),
    ("seed", "-3", "seed must be a non-negative integer, got -3"),
])
def test_bad_values_are_one_line_errors(viewer, enhance, qtbot, registry, tmp_path, field, value, message):
    make_ldm(tmp_path, name="t-ldm1", bands=1, scale=2)
    layer = b04(viewer)
    w = enhance("t-ldm1", tile=32, overlap=8)
    control = getattr(w, field)
    control.setText(value) if field == "seed" else control.setValue(value)
    before = len(notes(NotificationSeverity.ERROR))
    w.run_button.click()
    assert notes(NotificationSeverity.ERROR)[before:] == [message]
    assert w.status.text() == f"not run: {message}" and "\n" not in w.status.text()
    assert not w.busy and w.run_button.isEnabled() and w.last_outcome == "error"
    assert [ly.name for ly in viewer.layers] == [layer.name]


def test_run_reports_steps_and_cancels_without_qt(registry, tmp_path, steps_seen):
    """jobs.run alone: (done, total) per step; a set cancel event ends it with Outcome.cancelled."""
    make_ldm(tmp_path, name="t-ldm1", bands=1, scale=2)
    data, kwargs, _ = layers.to_layer_data(crop_image("s2_crop.tif", (100, 60), (116, 76)), "s2")[2]
    s = Settings("t-ldm1", tile=16, overlap=0, device="cpu", steps=3)
    job = jobs.capture(data, kwargs["metadata"], kwargs["name"], s, layer_id=1)
    assert job.unit == "steps"
    gen = jobs.run(job)
    seen = []
    while True:
        try:
            seen.append(next(gen))
        except StopIteration as stop:
            outcome = stop.value
            break
    assert seen == [(k, 3) for k in range(1, 4)] and outcome.image is not None and outcome.uncertainty is None
    event = threading.Event()
    gen = jobs.run(job, cancel=event)
    assert next(gen) == (1, 3)
    event.set()
    with pytest.raises(StopIteration) as stop:
        next(gen)
    assert stop.value.value.cancelled and stop.value.value.image is None
