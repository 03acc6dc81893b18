"""Medical details in a real viewer (issue 13, items 5 and 6): a CT NIfTI (no modality in its
header) opens in the soft-tissue window and says why, an MR NIfTI does not; the Compare window
list says 'full HU range'; the Enhance widget's denoising strength (x1 models only) reaches the
job and the result's provenance. Real slices: pydicom's CT_small.dcm and MR_small.dcm written
as NIfTI."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from pydicom.data import get_testdata_file

import hires_domain as hd

napari = pytest.importorskip("napari")

from hires_napari import jobs, layers  # noqa: E402
from hires_napari.widgets import CompareWidget, EnhanceWidget  # noqa: E402

PLUGIN = "hires-domain"
SOFT_TISSUE = (-160.0, 240.0)
TIMEOUT = 30_000


def nifti_of(name: str, tmp_path: Path) -> Path:
    src = get_testdata_file(name)
    if src is None:
        pytest.skip(f"{name} not installed (pydicom)")
    out = tmp_path / f"{Path(name).stem}.nii.gz"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hd.write(hd.read(src), out)
    return out


@pytest.fixture
def viewer(make_napari_viewer_proxy):
    return make_napari_viewer_proxy()


def test_ct_nifti_opens_in_soft_tissue_window_with_reason(viewer, tmp_path):
    (ct,) = viewer.open(str(nifti_of("CT_small.dcm", tmp_path)), plugin=PLUGIN)
    assert tuple(ct.contrast_limits) == SOFT_TISSUE
    reason = ct.metadata[layers.WINDOW_REASON]
    assert reason.startswith("CT-like intensities: 21% of voxels in air or lung") and "soft-tissue window" in reason
    (mr,) = viewer.open(str(nifti_of("MR_small.dcm", tmp_path)), plugin=PLUGIN)
    data = np.asarray(mr.data)
    assert tuple(mr.contrast_limits) == pytest.approx(tuple(np.percentile(data, [1, 99])))
    assert "1-99 % range" in mr.metadata[layers.WINDOW_REASON]


def test_compare_lists_full_hu_range(viewer, tmp_path, qtbot, monkeypatch):
    path = nifti_of("CT_small.dcm", tmp_path)
    a, = viewer.open(str(path), plugin=PLUGIN)
    b = viewer.add_image(np.asarray(a.data) + 5.0, name="shifted", metadata=dict(a.metadata),
                         contrast_limits=a.contrast_limits)
    c = CompareWidget(viewer)
    viewer.window.add_dock_widget(c, name="hires compare")
    labels = [c.window_combo.itemText(i) for i in range(c.window_combo.count())]
    assert "full HU range" in labels and "hu" not in labels
    seen = []
    real = jobs.run_compare
    monkeypatch.setattr(jobs, "run_compare", lambda *args: seen.append(args[-1]) or real(*args))
    c.result_combo.setCurrentText(b.name)
    c.ref_combo.setCurrentText(a.name)
    c.window_combo.setCurrentText("full HU range")
    c.compare_button.click()
    qtbot.waitUntil(lambda: not c.busy, timeout=TIMEOUT)
    assert seen == ["hu"]  # the internal (and CLI) name
    assert c.table.rowCount() > 0 and "raw HU" in c.summary.text(), c.summary.text()


def test_strength_only_for_x1_models_and_passed_to_the_job(viewer, tmp_path, qtbot):
    (ct,) = viewer.open(str(nifti_of("CT_small.dcm", tmp_path)), plugin=PLUGIN)
    w = EnhanceWidget(viewer)
    viewer.window.add_dock_widget(w, name="hires enhance")
    w.device_combo.setCurrentText("cpu")
    w.model_combo.setCurrentText("bicubic")
    assert w.strength.isHidden() and w.strength_label.isHidden()
    assert w.settings().strength == 1.0
    w.model_combo.setCurrentText("ct-denoise")
    assert w.strength.isVisibleTo(w) and w.strength_label.isVisibleTo(w) and w.scale.value() == 1
    w.strength.setValue(0.5)
    w.run_button.click()
    assert w.job.settings.strength == 0.5
    qtbot.waitUntil(lambda: not w.busy, timeout=TIMEOUT)
    assert w.last_outcome == "added", w.status.text()
    out = viewer.layers[-1]
    back = layers.to_image(out.data, out.metadata)
    assert "model=ct-denoise scale=1" in back.meta["provenance"] and "strength=0.5" in back.meta["provenance"]
    full = hd.enhance(layers.to_image(ct.data, ct.metadata), "ct-denoise", tile=w.tile.value(),
                      overlap=w.overlap.value(), device="cpu").array()[0]
    np.testing.assert_allclose(np.asarray(out.data), (np.asarray(ct.data) + full) / 2, atol=1e-2)
    w.model_combo.setCurrentText("bicubic")  # hidden again, and not applied to a x2 model
    assert w.strength.isHidden() and w.settings().strength == 1.0


def test_precision_choice_for_networks_only(viewer, tmp_path, qtbot):
    """Precision is a choice for networks (ct-sr-x2 runs bf16 when asked, and the result's
    provenance says so); for a baseline the control is disabled at auto (fp32)."""
    viewer.open(str(nifti_of("CT_small.dcm", tmp_path)), plugin=PLUGIN)
    w = EnhanceWidget(viewer)
    viewer.window.add_dock_widget(w, name="hires enhance")
    w.device_combo.setCurrentText("cpu")
    w.model_combo.setCurrentText("bicubic")
    assert not w.precision.isEnabled() and w.precision.currentText() == "auto"
    w.model_combo.setCurrentText("ct-sr-x2")
    assert w.precision.isEnabled()
    w.precision.setCurrentText("bf16")
    w.run_button.click()
    qtbot.waitUntil(lambda: not w.busy, timeout=TIMEOUT)
    assert w.last_outcome == "added", w.status.text()
    out = viewer.layers[-1]
    assert "model=ct-sr-x2 scale=2 tile=256 overlap=32 precision=bf16" in \
        layers.to_image(out.data, out.metadata).meta["provenance"]
    w.model_combo.setCurrentText("nearest")
    assert not w.precision.isEnabled() and w.precision.currentText() == "auto"
