"""What a radiologist or GIS analyst meets first in the widgets (issue 13, items 8-11), driven
headless with real viewers on the bundled samples: result names carry model and scale, saved
results record what made them, Compare offers all bands / warns about different bands / shows the
reference's value / runs in a worker, and the small things (status after an error, overlap kept
below the tile, the diffusion row, axis labels)."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from hires_domain import __version__, metrics
from hires_domain.models import _REGISTRY as REGISTRY
from hires_domain.models import Model, ModelInfo
from hires_domain.pipeline import resolve_run

napari = pytest.importorskip("napari")

from napari.utils.notifications import NotificationSeverity  # noqa: E402
from test_io import PLUGIN, dicom_writer  # noqa: E402
from test_widgets import add_sample, compare_and_wait, edge_worlds, notes, run_and_wait  # noqa: E402

from hires_napari import jobs, layers, writers  # noqa: E402
from hires_napari.widgets import CompareWidget, EnhanceWidget  # noqa: E402


@pytest.fixture
def viewer(make_napari_viewer_proxy):
    return make_napari_viewer_proxy()  # widgets keep references: no leak check


def compare_widget(viewer, result: str, reference: str) -> CompareWidget:
    c = CompareWidget(viewer)
    viewer.window.add_dock_widget(c, name="hires compare")
    c.result_combo.setCurrentText(result)
    c.ref_combo.setCurrentText(reference)
    assert (c.result_combo.currentText(), c.ref_combo.currentText()) == (result, reference)
    return c


def table(c: CompareWidget) -> dict[str, list[str]]:
    return {c.table.item(i, 0).text(): [c.table.item(i, j).text() for j in range(1, 4)]
            for i in range(c.table.rowCount())}


# --- 8. names ----------------------------------------------------------------------------------

def test_result_names_carry_model_and_scale(viewer, enhance, qtbot):
    """x2 then x2 again replaces; x3 and another model add; the status names the layer."""
    [layer] = add_sample(viewer, "ct_head_series")
    w = enhance("nearest")
    run_and_wait(qtbot, w)
    first = viewer.layers[-1]
    assert first.name == f"{layer.name} [nearest x2]"
    run_and_wait(qtbot, w)  # same settings: replaces its layer
    assert [ly.name for ly in viewer.layers] == [layer.name, f"{layer.name} [nearest x2]"]
    assert first not in viewer.layers
    w.scale.setValue(3)
    run_and_wait(qtbot, w)
    w.model_combo.setCurrentText("bicubic")
    assert w.scale.value() == 3  # a baseline keeps the scale
    run_and_wait(qtbot, w)
    assert [ly.name for ly in viewer.layers] == [layer.name] + [f"{layer.name} [{m}]" for m in
                                                               ("nearest x2", "nearest x3", "bicubic x3")]
    assert w.status.text() == f"added '{layer.name} [bicubic x3]'"
    assert np.shape(viewer.layers[-1].data) == (12, 384, 384)


# --- 9. provenance in saved files ----------------------------------------------------------------

def test_saved_results_record_what_made_them(viewer, enhance, qtbot, tmp_path):
    """A result saved from napari says model, scale, settings and version as the CLI writes them:
    NIfTI descrip and DICOM DerivationDescription; an unenhanced layer says only where it was saved."""
    import nibabel
    import pydicom

    [layer] = add_sample(viewer, "ct_head_series")
    w = enhance("nearest", tile=64, overlap=8)
    run_and_wait(qtbot, w)
    out = viewer.layers[-1]
    expected = resolve_run(w.job.image, w.job.settings).describe()  # what `hires enhance` writes
    assert expected == f"hires-domain {__version__} model=nearest scale=2 tile=64 overlap=8 precision=fp32"

    nii = tmp_path / "result.nii.gz"
    assert out.save(str(nii), plugin=PLUGIN) == [str(nii)]
    assert nibabel.load(nii).header["descrip"].item().decode() == expected[:79]  # NIfTI's 80-byte field

    viewer.layers.selection = {out}
    series = tmp_path / "result_series"
    assert viewer.layers.save(str(series), selected=True, _writer=dicom_writer()) == [str(series)]
    files = sorted(series.glob("*.dcm"))
    assert len(files) == 12
    ds = pydicom.dcmread(files[0])
    assert ds.DerivationDescription == expected
    assert "nearest" in ds.SeriesDescription and "DERIVED" in list(ds.ImageType)

    plain = tmp_path / "input.nii.gz"
    layer.save(str(plain), plugin=PLUGIN)
    assert nibabel.load(plain).header["descrip"].item().decode() == writers.DESCRIPTION


# --- 10. compare -------------------------------------------------------------------------------

def test_compare_runs_in_a_worker_and_shows_the_reference_values(viewer, enhance, qtbot):
    """The metrics are computed off the main thread (the table is empty until the worker is
    done); 'closer to' metrics show the reference's own value."""
    [layer] = add_sample(viewer, "ct_head_series")
    w = enhance("nearest")
    run_and_wait(qtbot, w)
    result = viewer.layers[-1]
    c = compare_widget(viewer, result.name, layer.name)
    c.compare_button.click()
    assert c.busy and not c.compare_button.isEnabled() and c.table.rowCount() == 0  # not filled yet
    qtbot.waitUntil(lambda: not c.busy, timeout=30_000)
    assert c.compute_thread is not None and c.compute_thread is not threading.main_thread()
    rows = table(c)
    assert {"psnr", "ssim", "hu_mae", "noise_std_flat", "hf_energy_ratio"} <= set(rows)
    pred = jobs.layer_image(result.data, result.metadata)
    ref = jobs.layer_image(layer.data, layer.metadata)
    ref_value = metrics.evaluate_pair(pred, ref, resample=True)["metrics"]["noise_std_flat"]["ref_value"]
    assert rows["noise_std_flat"][2] == f"closer to the reference's {ref_value:.4g} HU"
    assert rows["hf_energy_ratio"][2] == "closer to 1"
    assert c.band_warning.isHidden()  # CT: no bands to mix up
    assert viewer.layers[-1].name == f"{result.name} − {layer.name}"


def test_compare_all_bands_gives_sam_and_ergas(viewer, enhance, qtbot):
    """'<raster> [all 4 bands]' on both sides: SAM and ERGAS appear; the difference layer has a
    band axis and overlays the reference."""
    bands = add_sample(viewer, "s2_crop.tif")
    w = enhance("nearest", tile=128, overlap=8)
    w.layer_combo.setCurrentText("s2_crop [all 4 bands]")
    run_and_wait(qtbot, w)
    assert w.last_outcome == "added", w.status.text()
    c = compare_widget(viewer, "s2_crop [nearest x2] [all 4 bands]", "s2_crop [all 4 bands]")
    assert c.bands_label.text() == "B02, B03, B04, B08" and c.band_warning.isHidden()
    compare_and_wait(qtbot, c)
    rows = table(c)
    assert {"psnr", "ssim", "sam", "ergas"} <= set(rows)
    assert rows["sam"][1:] == ["degrees", "lower"] and float(rows["sam"][0]) < 5
    assert float(rows["ergas"][0]) >= 0
    assert "bands: B02, B03, B04, B08" in c.summary.text() and "resampled" in c.summary.text()
    diff = viewer.layers[-1]
    assert np.shape(diff.data) == (4, 256, 256) and diff.axis_labels == ("band", "y", "x")
    assert np.allclose(edge_worlds(diff)[:4, 1:], edge_worlds(bands[0]))  # band axis at its first edge
    back = jobs.layer_image(diff.data, diff.metadata, diff.name)  # usable again (Compare, saving)
    assert back.shape == (4, 256, 256) and back.band_names == ("B02", "B03", "B04", "B08")


def test_compare_warns_when_bands_differ(viewer, qtbot):
    """B02 against B03: a warning before and after comparing (and a notification)."""
    b02, b03 = add_sample(viewer, "s2_crop.tif", bands=[0, 1])
    c = compare_widget(viewer, b02.name, b03.name)
    assert not c.band_warning.isHidden()
    assert c.band_warning.text() == "warning: different bands: B02 (result) against B03 (reference)"
    before = len(notes(NotificationSeverity.WARNING))
    compare_and_wait(qtbot, c)
    assert "psnr" in table(c)
    warnings = notes(NotificationSeverity.WARNING)[before:]
    assert len(warnings) == 1 and warnings[0].startswith("different bands compared: B02 (result) against B03")
    assert "B02 (result) against B03" in c.band_warning.text()
    c.result_combo.setCurrentText("s2_crop [B02] − s2_crop [B03]")  # the difference: no band names
    assert c.band_warning.isHidden() and not c.band_warning.text()


# --- 11. small things ----------------------------------------------------------------------------

class _Diffusion(Model):
    info = ModelInfo("test-diffusion", "test only: a diffusion model", "diffusion", ("medical", "raster"), (2,))

    def predict(self, x, scale):  # pragma: no cover - never run here
        raise AssertionError("must not run")


def test_small_things(viewer, qtbot, monkeypatch):
    """Tile 16 with the default overlap runs (overlap kept below the tile); an error after a
    success replaces 'added …'; the diffusion row (label and box) shows for diffusion models only."""
    monkeypatch.setitem(REGISTRY, "test-diffusion", _Diffusion)
    [layer] = add_sample(viewer, "ct_head_series")
    w = EnhanceWidget(viewer)
    viewer.window.add_dock_widget(w, name="hires enhance")
    assert (w.tile.value(), w.overlap.value()) == (256, 32)  # the defaults
    w.device_combo.setCurrentText("cpu")
    w.model_combo.setCurrentText("nearest")
    w.tile.setValue(16)
    assert w.overlap.maximum() == 15 and w.overlap.value() == 2  # 32 no longer fits: tile/8
    w.overlap.setValue(40)
    assert w.overlap.value() == 15  # typed too high: clamped
    w.overlap.setValue(0)
    w.tile.setValue(64)
    assert (w.overlap.maximum(), w.overlap.value()) == (63, 0)  # a value that fits is kept
    w.tile.setValue(16)
    run_and_wait(qtbot, w)
    assert w.last_outcome == "added" and w.status.text().startswith("added")

    w.region_combo.setCurrentText(jobs.DRAWN)  # no rectangle drawn: refused
    w.run_button.click()
    assert w.last_outcome == "error" and not w.status.text().startswith("added")
    assert "draw a rectangle" in w.status.text()

    assert w.diffusion_label.isHidden() and w.diffusion_box.isHidden()
    assert w.model_combo.findText("test-diffusion") >= 0
    w.model_combo.setCurrentText("test-diffusion")
    assert w.diffusion_label.isVisibleTo(w) and w.diffusion_box.isVisibleTo(w)
    w.model_combo.setCurrentText("bicubic")
    assert w.diffusion_label.isHidden() and w.diffusion_box.isHidden()


def test_axis_labels_name_the_axes(viewer, enhance, qtbot, nifti_path, s2_path):
    """z/y/x for volumes, y/x for raster bands, opened through the reader or made by a run."""
    [ct] = viewer.open(str(nifti_path), plugin=PLUGIN)
    assert ct.axis_labels == ("z", "y", "x") and tuple(viewer.dims.axis_labels) == ("z", "y", "x")
    band = next(ly for ly in viewer.open(str(s2_path), plugin=PLUGIN) if jobs.is_hires_layer(ly.metadata))
    assert band.axis_labels == ("y", "x")
    assert tuple(viewer.dims.axis_labels) == ("z", "y", "x")
    w = enhance("nearest")
    w.layer_combo.setCurrentText(band.name)
    run_and_wait(qtbot, w)
    assert viewer.layers[-1].axis_labels == ("y", "x")
    assert layers.axis_labels(layers.to_image(ct.data, ct.metadata)) == ("z", "y", "x")

