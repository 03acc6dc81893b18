"""Screenshots for docs/napari.md, taken from a real napari viewer on a virtual screen.

    xvfb-run -a python docs/scripts/napari_screenshots.py [OUT_DIR]     # default docs/images

Opens the bundled CT series through the plugin's reader, runs the Enhance widget (bicubic x2) and
the Compare widget, opens a real CT slice saved as NIfTI (no modality: recognised as CT and shown in
the soft-tissue window) and denoises it at strength 0.5 and 1.0, opens the Sentinel-2 crop as File →
Open does (true-colour composite, band layers hidden), shows it before and after x4, and saves the
whole window (widgets included) each time.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import napari
from qtpy.QtWidgets import QApplication

import hires_domain as hd
from hires_napari.layers import RGB, to_layer_data
from hires_napari.widgets import CompareWidget, EnhanceWidget

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "hires_domain" / "samples"


def wait_for(widget) -> None:
    """Process Qt events until the widget's worker is done."""
    while widget.busy:
        QApplication.processEvents()


def enhance(viewer, layer_name: str, scale: int, tile: int, model: str = "bicubic",
            strength: float = 1.0) -> EnhanceWidget:
    w = EnhanceWidget(viewer)
    viewer.window.add_dock_widget(w, name="Enhance", area="right")
    w.layer_combo.setCurrentText(layer_name)
    w.model_combo.setCurrentText(model)
    w.scale.setValue(scale)
    w.tile.setValue(tile)
    w.overlap.setValue(tile // 8)
    w.strength.setValue(strength)
    w.run()
    wait_for(w)
    return w


def shot(viewer, path: Path) -> None:
    for _ in range(5):
        QApplication.processEvents()
    viewer.screenshot(str(path), canvas_only=False, flash=False)
    print("wrote", path)


def main(out: Path = ROOT / "docs" / "images") -> None:
    out.mkdir(parents=True, exist_ok=True)
    viewer = napari.Viewer(show=True)
    viewer.window.resize(1400, 850)

    # CT: the series before and after, side by side on the same world grid
    viewer.open(str(SAMPLES / "ct_head_series"), plugin="hires-domain")
    ct = viewer.layers[-1].name
    viewer.dims.set_current_step(0, 5)
    enhance(viewer, ct, 2, 64)
    viewer.layers[-1].contrast_limits = viewer.layers[ct].contrast_limits = (0, 80)  # brain window
    viewer.grid.enabled = True
    viewer.reset_view()
    shot(viewer, out / "napari_ct_before_after.png")

    # Compare: enhanced CT against the original (resampled onto the reference grid)
    viewer.window.remove_dock_widget("all")
    compare = CompareWidget(viewer)
    viewer.window.add_dock_widget(compare, name="Compare", area="right")
    compare.result_combo.setCurrentText(viewer.layers[-1].name)
    compare.ref_combo.setCurrentText(ct)
    compare.window_combo.setCurrentText("brain")
    compare.compare()
    wait_for(compare)  # the comparison runs in a worker
    shot(viewer, out / "napari_compare.png")

    # a real CT slice as NIfTI (no modality in the header) opens in the soft-tissue window;
    # ct-denoise at strength 0.5 and 1.0 beside it (CT_small: a chest slice, soft-tissue window)
    viewer.layers.clear()
    viewer.window.remove_dock_widget("all")
    with tempfile.TemporaryDirectory() as tmp:
        from pydicom.data import get_testdata_file

        nii = Path(tmp) / "ct_slice.nii.gz"
        hd.write(hd.read(get_testdata_file("CT_small.dcm")), nii)
        viewer.open(str(nii), plugin="hires-domain")
    ct = viewer.layers[-1].name
    viewer.dims.set_current_step(0, 0)  # the one slice (the viewer still holds the series' z point)
    viewer.reset_view()
    shot(viewer, out / "napari_ct_nifti_soft_tissue.png")
    for strength in (0.5, 1.0):
        viewer.window.remove_dock_widget("all")
        enhance(viewer, ct, 1, 256, model="ct-denoise", strength=strength)
    viewer.grid.enabled = True
    viewer.reset_view()
    shot(viewer, out / "napari_ct_denoise_strength.png")
    viewer.grid.enabled = False

    # Sentinel-2 as File → Open shows it: the true-colour composite, band layers hidden above it
    viewer.layers.clear()
    viewer.window.remove_dock_widget("all")
    viewer.open(str(SAMPLES / "s2_crop.tif"), plugin="hires-domain")
    viewer.window.add_dock_widget(EnhanceWidget(viewer), name="Enhance", area="right")
    viewer.layers.selection = {viewer.layers[0]}  # the composite: its controls on the left
    QApplication.processEvents()  # let the dock settle so the view fits the canvas
    viewer.reset_view()
    shot(viewer, out / "napari_s2_true_colour.png")

    # Sentinel-2: true-colour composite of the crop before and after x4 (bicubic), side by side
    viewer.layers.clear()
    viewer.window.remove_dock_widget("all")
    with tempfile.TemporaryDirectory() as tmp:
        up = Path(tmp) / "s2_crop_x4.tif"
        hd.enhance_file(SAMPLES / "s2_crop.tif", up, hd.Settings("bicubic", 4, 128, 16))
        for path, name in [(SAMPLES / "s2_crop.tif", "s2 crop"), (up, "s2 crop [bicubic x4]")]:
            for data, kwargs, _ in to_layer_data(hd.read(path), name, mode=RGB):
                viewer.add_image(data, **kwargs)
    viewer.grid.enabled = True
    viewer.reset_view()
    shot(viewer, out / "napari_s2_before_after.png")
    viewer.close()


if __name__ == "__main__":
    main(*(Path(a) for a in sys.argv[1:]))
