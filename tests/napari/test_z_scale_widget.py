"""The Enhance widget's z-scale (issue 15): offered for 3-D medical layers only, the result of a
z refinement overlays the input in world coordinates, progress covers self-sr's training and
inference, and Cancel stops training within a step (bundled real CT head samples)."""

from __future__ import annotations

import numpy as np
import pytest

from hires_domain import geometry, read

napari = pytest.importorskip("napari")

from hires_napari import layers  # noqa: E402
from test_widgets import add_sample, edge_worlds  # noqa: E402

TIMEOUT = 60_000


@pytest.fixture
def viewer(make_napari_viewer_proxy):
    return make_napari_viewer_proxy()


def run_and_wait(qtbot, w, on_yield=None):
    w.run_button.click()
    if on_yield is not None:
        w.worker.yielded.connect(on_yield)
    qtbot.waitUntil(lambda: not w.busy, timeout=TIMEOUT)


def test_z_scale_only_for_volumes(viewer, enhance):
    add_sample(viewer, "s2_crop.tif", [2])
    w = enhance()
    assert w.z_scale.isHidden() and not w.z_scale.isEnabled()
    assert w.settings().z_scale == 1
    from pydicom.data import get_testdata_file

    image = read(get_testdata_file("CT_small.dcm"))  # one real CT slice
    [(data, kwargs, _)] = layers.to_layer_data(image, "ct_small")
    viewer.add_image(data, **kwargs)
    w.layer_combo.setCurrentText("ct_small")
    assert w.z_scale.isHidden() and "self-sr" not in {w.model_combo.itemText(i) for i in range(w.model_combo.count())}
    [ct] = add_sample(viewer, "ct_head_series")
    w.layer_combo.setCurrentText(ct.name)
    assert not w.z_scale.isHidden() and w.z_scale.isEnabled()
    w.model_combo.setCurrentText("self-sr")
    assert w.z_scale.value() == 2  # self-sr refines the slice axis: never x1
    assert w.strength.isHidden()  # x1 in-plane, but no denoiser


@pytest.mark.parametrize("sample", ["ct_head_series", "ct_head.nii.gz"])
def test_z_refined_result_overlays_the_input(viewer, enhance, qtbot, sample):
    [layer] = add_sample(viewer, sample)
    w = enhance(model="bicubic", scale=2)
    w.z_scale.setValue(3)
    run_and_wait(qtbot, w)
    assert w.last_outcome == "added", w.status.text()
    out = viewer.layers[-1]
    assert out.name == f"{layer.name} [bicubic x2 z x3]"
    n = np.shape(layer.data)
    assert np.shape(out.data) == (3 * n[0], 2 * n[1], 2 * n[2])
    np.testing.assert_allclose(edge_worlds(out), edge_worlds(layer), atol=1e-6)
    src, back = layers.to_image(layer.data, layer.metadata), layers.to_image(out.data, out.metadata)
    np.testing.assert_allclose(back.affine, geometry.upscaled_affine(src.affine, (3, 2, 2)), atol=1e-9)
    assert "z_scale=3 z_method=cubic" in back.meta["provenance"]


def test_self_sr_progress_covers_training_and_inference(viewer, enhance, qtbot, monkeypatch):
    from hires_domain.models import self_sr

    monkeypatch.setattr(self_sr, "DEFAULT_TRAIN_SECONDS", 2.0)
    [layer] = add_sample(viewer, "ct_head_series")  # 12 x 128 x 128, 2 mm slices
    w = enhance(model="self-sr", scale=1)
    w.z_scale.setValue(2)
    seen = []
    run_and_wait(qtbot, w, on_yield=seen.append)
    assert w.last_outcome == "added", w.status.text()
    done, total = seen[-1]
    assert done == total and total > 256  # training steps, then 128 + 128 planes
    assert any(d < total - 256 for d, _ in seen)  # reports during training
    out = viewer.layers[-1]
    assert np.shape(out.data) == (24, 128, 128)
    np.testing.assert_allclose(edge_worlds(out), edge_worlds(layer), atol=1e-6)


def test_cancel_stops_self_sr_training(viewer, enhance, qtbot):
    add_sample(viewer, "ct_head_series")
    w = enhance(model="self-sr", scale=1)
    w.z_scale.setValue(2)  # default budget: minutes, unless Cancel works
    seen = []

    def on_yield(value):
        seen.append(value)
        if len(seen) == 3:
            w.cancel()

    run_and_wait(qtbot, w, on_yield=on_yield)
    assert w.last_outcome == "cancelled" and "cancelled" in w.status.text()
    assert seen[-1][0] <= 5 and len(viewer.layers) == 1
