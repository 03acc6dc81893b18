"""Sentinel-2 products in napari: every band at its own resolution, overlaid exactly, true colour on
top; the Enhance widget runs s2-sharpen on the whole product, equal to `hires enhance`."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio

from s2_support import CROP, make_l1c, zip_safe

from hires_domain.pipeline import Settings, enhance_file
from hires_napari import jobs, layers

PLUGIN = "hires-domain"
TIMEOUT = 60_000


@pytest.fixture
def product(tmp_path):
    """A zipped L1C SAFE of the bundled product crop, named as downloaded."""
    safe = make_l1c(tmp_path)
    return zip_safe(safe, tmp_path / (safe.name[:-5] + ".zip")), safe


def test_product_opens_band_by_band_on_each_grid_with_true_colour_on_top(viewer, product):
    zpath, _ = product
    added = viewer.open(str(zpath), plugin=PLUGIN)
    name = zpath.name[:-4]
    assert added[-1].rgb and added[-1].visible and added[-1].name == f"{name} [RGB B04,B03,B02]"
    assert viewer.layers[-1] is added[-1]  # on top
    bands = added[:-1]
    assert [ly.name for ly in bands] == [f"{name} [{b}]" for b in
                                         ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A",
                                          "B09", "B10", "B11", "B12")]
    assert not any(ly.visible for ly in bands)
    for ly in bands:  # each band where its own file puts it: (-northing, easting) of pixel corners
        band = ly.name[-4:-1]
        with rasterio.open(CROP / f"s2_{band}.jp2") as ds:
            t, (h, w), pixels = ds.transform, ds.shape, ds.read(1)
        np.testing.assert_array_equal(np.asarray(ly.data), pixels)  # values as stored
        for row, col in ((-0.5, -0.5), (h - 0.5, w - 0.5)):
            x, y = t * (col + 0.5, row + 0.5)
            np.testing.assert_allclose(ly.data_to_world((row, col)), (-y, x), atol=1e-6)
    res = {ly.name[-4:-1]: abs(ly.scale[-1]) for ly in bands}
    assert res["B02"] == 10 and res["B05"] == 20 and res["B01"] == 60


def test_enhance_widget_sharpens_the_whole_product_as_the_cli_does(viewer, product, qtbot, tmp_path):
    from hires_napari.widgets import EnhanceWidget

    zpath, safe = product
    viewer.open(str(zpath), plugin=PLUGIN)
    name = zpath.name[:-4]
    w = EnhanceWidget(viewer)
    choice = f"{name} [whole product]"
    assert choice in [w.layer_combo.itemText(i) for i in range(w.layer_combo.count())]
    w.layer_combo.setCurrentText(choice)
    offered = [w.model_combo.itemText(i) for i in range(w.model_combo.count())]
    assert {"s2-sharpen", "s2-sharpen+x4"} <= set(offered) and "s2-sr-x4" not in offered
    w.model_combo.setCurrentText("s2-sharpen")
    w.device_combo.setCurrentText("cpu")
    w.precision.setCurrentText("fp32")
    w.region_combo.setCurrentText(jobs.DRAWN)
    w.run_button.click()
    assert w.last_outcome == "error" and "enhanced as a whole" in w.status.text()
    w.region_combo.setCurrentText(jobs.WHOLE)
    w.run_button.click()
    qtbot.waitUntil(lambda: not w.busy, timeout=TIMEOUT)
    assert w.last_outcome == "added", w.status.text()
    enhance_file(safe, tmp_path / "cli.tif", Settings("s2-sharpen", None, precision="fp32", device="cpu"))
    with rasterio.open(tmp_path / "cli.tif") as ds:
        ref, names = ds.read(), ds.descriptions
    results = [ly for ly in viewer.layers if ly.name.startswith(f"{name} [s2-sharpen") and not ly.rgb]
    assert [ly.name.rsplit("[", 1)[1][:-1] for ly in results] == list(names)
    got = np.stack([np.asarray(ly.data) for ly in results])
    valid = ref != 0
    np.testing.assert_allclose(got[valid], ref[valid], atol=0.5)  # the layers are float, the file uint16
    b02 = next(ly for ly in viewer.layers if ly.name == f"{name} [B02]")
    np.testing.assert_allclose(results[1].data_to_world((0, 0)), b02.data_to_world((0, 0)))
    assert viewer.layers[-1].rgb and layers.RGB_SOURCES in viewer.layers[-1].metadata
    w.close()
