"""The plugin's widgets driven headless (xvfb) on the bundled samples: Enhance (run, cancel, stale
results, errors, region preview), Compare, CT window presets."""

from __future__ import annotations

import itertools
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

from hires_domain import geometry, read
from hires_domain.models import _REGISTRY as REGISTRY
from hires_domain.models import Model, ModelInfo

napari = pytest.importorskip("napari")

from napari.utils.notifications import NotificationSeverity, notification_manager  # noqa: E402

from hires_napari import jobs, layers  # noqa: E402
from hires_napari.widgets import CompareWidget, WindowPresetsWidget  # noqa: E402

SAMPLES = Path(str(resources.files("hires_domain") / "samples"))
TIMEOUT = 30_000


@pytest.fixture
def viewer(make_napari_viewer_proxy):
    return make_napari_viewer_proxy()  # widgets keep references: no leak check


def add_sample(viewer, name: str, bands=None) -> list:
    """Open a bundled sample with the core reader and add its layers (``bands``: which ones)."""
    image = read(SAMPLES / name)
    try:
        specs = layers.to_layer_data(image, name.split(".")[0])
    finally:
        if hasattr(image.data, "close"):
            image.data.close()
    keep = range(len(specs)) if bands is None else bands
    return [viewer.add_image(specs[i][0], **specs[i][1]) for i in keep]


def edge_worlds(layer) -> np.ndarray:
    """World coordinates of the outer pixel *edges* (corners at −0.5 and n−0.5) of a layer."""
    shape = np.shape(layer.data)
    pts = itertools.product(*[(-0.5, n - 0.5) for n in shape])
    return np.array([layer.data_to_world(p) for p in pts])


def notes(severity) -> list[str]:
    return [str(n.message) for n in notification_manager.records if n.severity == severity]


def run_and_wait(qtbot, w, on_first_yield=None):
    w.run_button.click()
    assert w.busy and not w.run_button.isEnabled() and w.cancel_button.isEnabled()
    if on_first_yield is not None:
        fired = []

        def once(_):
            if not fired:
                fired.append(True)
                on_first_yield()

        w.worker.yielded.connect(once)
    qtbot.waitUntil(lambda: not w.busy, timeout=TIMEOUT)
    assert w.run_button.isEnabled() and not w.cancel_button.isEnabled()


def compare_and_wait(qtbot, c):
    """Click Compare and wait for its worker (the table fills when it finishes)."""
    c.compare_button.click()
    assert c.busy and not c.compare_button.isEnabled()
    qtbot.waitUntil(lambda: not c.busy, timeout=TIMEOUT)
    assert c.compare_button.isEnabled()


@pytest.mark.parametrize("sample,bands,factors", [("ct_head_series", None, (1, 2, 2)),
                                                  ("ct_head.nii.gz", None, (1, 2, 2)),
                                                  ("s2_crop.tif", [2], (2, 2))])
def test_enhance_output_overlays_input(viewer, enhance, qtbot, sample, bands, factors):
    [layer] = add_sample(viewer, sample, bands)
    w = enhance()
    assert w.layer_combo.currentText() == layer.name
    assert {"bicubic", "nearest", "lanczos"} <= {w.model_combo.itemText(i) for i in range(w.model_combo.count())}
    assert w.device_label.text() == "in use: cpu"
    assert w.diffusion_box.isHidden()  # only for diffusion models
    run_and_wait(qtbot, w)
    assert w.last_outcome == "added"
    assert len(viewer.layers) == 2
    out = viewer.layers[-1]
    assert out.name == f"{layer.name} [bicubic x2]"
    assert np.shape(out.data) == tuple(n * f for n, f in zip(np.shape(layer.data), factors))
    assert np.allclose(edge_worlds(out), edge_worlds(layer), atol=1e-6)
    assert out.contrast_limits == layer.contrast_limits
    src = layers.to_image(layer.data, layer.metadata)
    back = layers.to_image(out.data, out.metadata)
    assert np.allclose(back.affine, geometry.upscaled_affine(src.affine, factors))
    assert back.kind == src.kind and "model=bicubic" in back.meta["provenance"]
    # a second run replaces the first result instead of piling up layers
    run_and_wait(qtbot, w)
    assert len(viewer.layers) == 2


class _Counting(Model):
    """Nearest neighbour that counts the tiles it was given (one tile per batch in the widget)."""

    info = ModelInfo("test-counting", "test only: counts tiles", "interpolation", ("medical", "raster"), (2,))
    calls = 0

    def predict(self, x, scale):
        type(self).calls += x.shape[0]
        return x.repeat_interleave(scale, dim=-2).repeat_interleave(scale, dim=-1)


def test_cancel_stops_within_a_tile(viewer, enhance, qtbot, monkeypatch):
    monkeypatch.setitem(REGISTRY, "test-counting", _Counting)
    monkeypatch.setattr(_Counting, "calls", 0)
    [layer] = add_sample(viewer, "ct_head.nii.gz")  # 32 x 128 x 128
    w = enhance(model="test-counting", tile=8, overlap=0)  # 32 * 16 * 16 = 8192 tiles
    at_cancel = []

    def cancel():
        at_cancel.append(_Counting.calls)
        w.cancel()

    run_and_wait(qtbot, w, on_first_yield=cancel)
    done, total = w.last_progress
    assert total == 8192 and 1 <= done < total // 4
    # the worker ran at most one more tile after Cancel, and the widget saw every tile it ran
    assert at_cancel[0] <= _Counting.calls <= at_cancel[0] + 1
    assert done == _Counting.calls
    assert w.last_outcome == "cancelled" and "cancelled" in w.status.text()
    assert [ly.name for ly in viewer.layers] == [layer.name]


@pytest.mark.parametrize("change", ["replace", "edit", "move", "remove"])
def test_result_for_a_changed_layer_is_not_attached(viewer, enhance, qtbot, change):
    [layer] = add_sample(viewer, "ct_head_series")  # 12 x 128 x 128
    w = enhance(tile=16, overlap=0)  # 12 * 8 * 8 = 768 tiles

    def mutate():
        if change == "replace":
            layer.data = layer.data + 1
        elif change == "edit":
            layer.data[3, 10, 10] += 500
            layer.refresh()
        elif change == "move":
            layer.translate = np.asarray(layer.translate) + 1.0
        else:
            viewer.layers.remove(layer)

    before = len(notes(NotificationSeverity.WARNING))
    run_and_wait(qtbot, w, on_first_yield=mutate)
    assert w.last_outcome == "stale"
    warnings = notes(NotificationSeverity.WARNING)[before:]
    assert len(warnings) == 1 and "result was not added" in warnings[0]
    assert len(viewer.layers) == (0 if change == "remove" else 1)


class _ThreeBands(Model):
    info = ModelInfo("test-rgb-only", "test only: takes 3 bands", "srgan", ("medical", "raster"), (2,), bands=3)

    def predict(self, x, scale):  # pragma: no cover - refused before running
        raise AssertionError("must not run")


def test_errors_become_notifications(viewer, enhance, qtbot, monkeypatch):
    monkeypatch.setitem(REGISTRY, "test-rgb-only", _ThreeBands)
    [layer] = add_sample(viewer, "ct_head_series")
    w = enhance()
    offered = {w.model_combo.itemText(i) for i in range(w.model_combo.count())}
    assert "test-rgb-only" not in offered  # filtered: it cannot take a 1-band layer
    w.model_combo.addItem("test-rgb-only")  # forced anyway
    w.model_combo.setCurrentText("test-rgb-only")
    before = len(notes(NotificationSeverity.ERROR))
    w.run_button.click()
    errors = notes(NotificationSeverity.ERROR)[before:]
    assert errors == ["model 'test-rgb-only' takes 3 band(s), the input has 1"]
    assert not w.busy and w.run_button.isEnabled() and w.last_outcome == "error"
    # a drawn-rectangle region without a rectangle
    w.model_combo.setCurrentText("bicubic")
    w.region_combo.setCurrentText(jobs.DRAWN)
    w.run_button.click()
    assert "draw a rectangle" in notes(NotificationSeverity.ERROR)[-1]
    assert [ly.name for ly in viewer.layers] == [layer.name]


def test_region_preview_of_a_drawn_rectangle(viewer, enhance, qtbot):
    [layer] = add_sample(viewer, "s2_crop.tif", bands=[2])  # B04, 256 x 256 at 10 m
    w = enhance(tile=32, overlap=4)
    shapes = w.add_region_layer()
    assert shapes.name == jobs.REGION_LAYER
    # rows 40..79, cols 100..163 (drawn a little inside the pixel edges)
    a, b = layer.data_to_world((39.6, 99.6)), layer.data_to_world((79.4, 163.4))
    shapes.add_rectangles(np.array([shapes.world_to_data(a), shapes.world_to_data(b)]))
    w.region_combo.setCurrentText(jobs.DRAWN)
    run_and_wait(qtbot, w)
    assert w.last_outcome == "added"
    out = viewer.layers[-1]
    assert out.name == f"{layer.name} [bicubic x2] preview"
    assert np.shape(out.data) == (80, 128)
    expected = np.array([layer.data_to_world(p) for p in itertools.product((39.5, 79.5), (99.5, 163.5))])
    assert np.allclose(edge_worlds(out), expected, atol=1e-6)
    assert np.allclose(out.data[::2, ::2], layer.data[40:80, 100:164], atol=0.35 * np.ptp(layer.data))
    assert len(viewer.layers) == 3  # input, region shapes, preview


def test_all_band_layers_of_a_raster_feed_the_four_band_model(viewer, enhance, qtbot):
    """A GIS analyst picks 's2_crop [all 4 bands]' and runs s2-sr-x4 on a drawn rectangle: four
    result band layers overlay the input; closing a band layer withdraws the choice."""
    bands = add_sample(viewer, "s2_crop.tif")
    w = enhance(scale=4, tile=32, overlap=8)
    label = "s2_crop [all 4 bands]"
    assert w.layer_combo.findText(label) >= 0
    w.layer_combo.setCurrentText(label)
    models = [w.model_combo.itemText(i) for i in range(w.model_combo.count())]
    assert "s2-sr-x4" in models and "bicubic" in models
    w.model_combo.setCurrentText("s2-sr-x4")
    shapes = w.add_region_layer()
    a, b = bands[0].data_to_world((99.6, 59.6)), bands[0].data_to_world((131.4, 107.4))  # rows 100..131, cols 60..107
    shapes.add_rectangles(np.array([shapes.world_to_data(a), shapes.world_to_data(b)]))
    w.region_combo.setCurrentText(jobs.DRAWN)
    run_and_wait(qtbot, w)
    assert w.last_outcome == "added", w.status.text()
    assert w.domain_note.isHidden() and not w.domain_note.text()  # the model's own kind of data: no warning
    outs = [viewer.layers[f"s2_crop [s2-sr-x4 x4] preview [{b}]"] for b in ("B02", "B03", "B04", "B08")]
    composite = viewer.layers[-1]  # the result shows in true colour, its bands hidden (not washed out)
    assert composite.rgb and composite.visible and not any(o.visible for o in outs)
    assert np.shape(composite.data)[:2] == (128, 192)
    expected = np.array([bands[0].data_to_world(p) for p in itertools.product((99.5, 131.5), (59.5, 107.5))])
    for out, band in zip(outs, bands):
        assert np.shape(out.data) == (128, 192)
        assert np.allclose(edge_worlds(out), expected, atol=1e-6)
        lr = band.data[100:132, 60:108].astype(np.float32)
        back = out.data.reshape(32, 4, 48, 4).mean(axis=(1, 3))  # consistent with its input
        assert np.abs(back - lr).mean() < 0.05 * np.ptp(lr)
    viewer.layers.remove(bands[3])
    assert w.layer_combo.findText(label) < 0


def test_enhance_widget_shows_the_input_domain_warning(viewer, enhance, qtbot):
    """The same bands as float reflectance 0-1 (another processing level than the L1C DN the
    model was trained on): the run goes ahead and the widget shows the guard's warning; a
    baseline on the same input shows none."""
    bands = add_sample(viewer, "s2_crop.tif")
    for layer in bands:
        layer.data = (np.asarray(layer.data) / 10000.0).astype(np.float32)
    w = enhance(scale=4, tile=16, overlap=4)
    w.layer_combo.setCurrentText("s2_crop [all 4 bands]")
    w.model_combo.setCurrentText("s2-sr-x4")
    shapes = w.add_region_layer()
    a, b = bands[0].data_to_world((99.6, 59.6)), bands[0].data_to_world((115.4, 75.4))  # 16 x 16 px
    shapes.add_rectangles(np.array([shapes.world_to_data(a), shapes.world_to_data(b)]))
    w.region_combo.setCurrentText(jobs.DRAWN)
    run_and_wait(qtbot, w)
    assert w.last_outcome == "added", w.status.text()
    text = w.domain_note.text()
    assert not w.domain_note.isHidden() and text.startswith("warning: input unlike what model 's2-sr-x4'")
    assert "far below the training level" in text and "worse than bicubic" in text
    w.model_combo.setCurrentText("bicubic")
    run_and_wait(qtbot, w)
    assert w.last_outcome == "added" and w.domain_note.isHidden() and not w.domain_note.text()


def test_region_preview_of_the_current_view_of_a_volume(viewer, enhance, qtbot):
    [layer] = add_sample(viewer, "ct_head_series")  # 12 x 128 x 128, 2 mm slices
    w = enhance()
    z = 5
    centre = layer.data_to_world((z, 64, 64))
    viewer.dims.set_point(0, centre[0])
    viewer.scene.camera.center = centre[1:]
    viewer.scene.camera.zoom = 3 * max(viewer.canvas.size) / 128 / float(np.min(layer.scale[1:]))  # a third
    w.region_combo.setCurrentText(jobs.VIEW)
    run_and_wait(qtbot, w)
    assert w.last_outcome == "added"
    out = viewer.layers[-1]
    region = w.job.region
    assert region.starts[0] == z and region.shape[0] == 1  # the current slice only
    assert 0 < region.shape[1] < 128 and 0 < region.shape[2] < 128
    assert region.starts[1] <= 64 < region.stops[1] and region.starts[2] <= 64 < region.stops[2]
    assert np.shape(out.data) == (1, 2 * region.shape[1], 2 * region.shape[2])
    expected = np.array([layer.data_to_world(np.array(p)) for p in itertools.product(
        *[(a - 0.5, b - 0.5) for a, b in zip(region.starts, region.stops)])])
    assert np.allclose(edge_worlds(out), expected, atol=1e-6)


def test_compare_table_difference_fade_and_grid(viewer, enhance, qtbot):
    [layer] = add_sample(viewer, "ct_head_series")
    w = enhance()
    run_and_wait(qtbot, w)
    result = viewer.layers[-1]
    c = CompareWidget(viewer)
    viewer.window.add_dock_widget(c, name="hires compare")
    c.result_combo.setCurrentText(result.name)
    c.ref_combo.setCurrentText(layer.name)
    assert c.window_combo.isVisibleTo(c)  # CT: windows offered
    c.window_combo.setCurrentText("soft-tissue")
    compare_and_wait(qtbot, c)
    rows = {c.table.item(i, 0).text(): [c.table.item(i, j).text() for j in range(1, 4)]
            for i in range(c.table.rowCount())}
    assert {"psnr", "ssim", "hu_mae"} <= set(rows)
    assert rows["psnr"][1:] == ["dB", "higher"] and float(rows["psnr"][0]) > 30
    assert "soft" in c.summary.text().lower()
    assert len(viewer.layers) == 3
    diff = viewer.layers[-1]
    assert diff.name == f"{result.name} − {layer.name}"
    assert np.allclose(edge_worlds(diff), edge_worlds(layer))
    compare_and_wait(qtbot, c)  # again: replaces the difference layer
    assert len(viewer.layers) == 3
    # fade: the upper of result/reference fades; grid: side by side
    c.fade.setValue(30)
    assert result.opacity == pytest.approx(0.3) and layer.opacity == 1.0
    c.side_by_side.setChecked(True)
    assert viewer.canvas.grid.enabled
    c.side_by_side.setChecked(False)
    assert not viewer.canvas.grid.enabled
    # comparing a layer with itself is refused
    c.result_combo.setCurrentText(layer.name)
    c.compare_button.click()
    assert "same layer" in notes(NotificationSeverity.ERROR)[-1]


def test_compare_raster_band_shows_bands(viewer, enhance, qtbot):
    [layer] = add_sample(viewer, "s2_crop.tif", bands=[1])
    w = enhance(model="nearest")
    run_and_wait(qtbot, w)
    c = CompareWidget(viewer)
    viewer.window.add_dock_widget(c, name="hires compare")
    c.result_combo.setCurrentText(viewer.layers[-1].name)
    c.ref_combo.setCurrentText(layer.name)
    assert not c.window_combo.isVisibleTo(c) and c.bands_label.text() == "B03"
    compare_and_wait(qtbot, c)
    rows = {c.table.item(i, 0).text() for i in range(c.table.rowCount())}
    assert {"psnr", "ssim"} <= rows
    assert len(viewer.layers) == 3


def test_window_presets(viewer):
    [ct] = add_sample(viewer, "ct_head_series")
    [band] = add_sample(viewer, "s2_crop.tif", bands=[0])
    wp = WindowPresetsWidget(viewer)
    viewer.window.add_dock_widget(wp, name="hires windows")
    assert set(wp.buttons) == {"soft-tissue", "lung", "bone", "brain"}
    viewer.layers.selection = {ct}
    wp.buttons["lung"].click()
    assert tuple(ct.contrast_limits) == (-1350.0, 150.0)
    wp.buttons["bone"].click()
    assert tuple(ct.contrast_limits) == (-500.0, 1300.0)
    before = tuple(band.contrast_limits)
    viewer.layers.selection = {ct, band}
    wp.buttons["brain"].click()
    assert tuple(ct.contrast_limits) == (0.0, 80.0) and tuple(band.contrast_limits) == (0.0, 80.0)
    assert before != (0.0, 80.0)
    viewer.layers.selection = set()
    assert wp.apply("lung") == []
    assert len(viewer.layers) == 2


def test_layer_combos_follow_the_layer_list(viewer, enhance):
    w = enhance()
    assert w.layer_combo.count() == 0 and w.model_combo.count() == 0
    [layer] = add_sample(viewer, "s2_crop.tif", bands=[3])
    assert w.layer_combo.currentText() == layer.name and w.model_combo.count() >= 3
    viewer.add_image(np.zeros((8, 8), np.float32), name="not ours")  # no hires metadata: not offered
    layer.name = "nir"
    assert [w.layer_combo.itemText(i) for i in range(w.layer_combo.count())] == ["nir"]
    viewer.layers.remove(layer)
    assert w.layer_combo.count() == 0


def test_scale_follows_the_model(viewer, enhance):
    """At the default scale 2 the x4-only s2-sr-x4 is still offered; choosing it sets the scale to
    4, choosing ct-denoise on CT sets 1; a baseline keeps what the user set."""
    add_sample(viewer, "s2_crop.tif")
    w = enhance(scale=2)
    w.layer_combo.setCurrentText("s2_crop [all 4 bands]")
    assert w.model_combo.findText("s2-sr-x4") >= 0
    w.model_combo.setCurrentText("s2-sr-x4")
    assert w.scale.value() == 4 and w.settings().scale == 4
    w.scale.setValue(3)
    w.model_combo.setCurrentText("bicubic")
    assert w.scale.value() == 3
    add_sample(viewer, "ct_head.nii.gz")
    w.layer_combo.setCurrentText(viewer.layers[-1].name)
    w.model_combo.setCurrentText("ct-denoise")
    assert w.scale.value() == 1
