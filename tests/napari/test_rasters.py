"""Rasters in napari as a GIS analyst meets them (issue 13, items 1-4): a multi-band GeoTIFF opens
in true colour with its band layers hidden; "Add RGB composite" is in Layers > Visualize and the
Enhance widget and never duplicates; a composite of an enhanced band set shows the enhanced
pixels; the band layers of one raster (or its composite) save as ONE multi-band GeoTIFF/COG.

Driven through the real reader, writer, npe2 commands and widgets on the bundled Sentinel-2 crop
(B02 B03 B04 B08, uint16, nodata 0) and on small GeoTIFFs written here.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

import hires_domain
from hires_domain.errors import HiresError
from hires_domain.intensity import true_colour_bands
from hires_napari import layers, readers

PLUGIN = "hires-domain"
BANDS = ("B02", "B03", "B04", "B08")
TIMEOUT = 30_000


def open_raster(viewer, path):
    return viewer.open(str(path), plugin=PLUGIN)


def composites(viewer) -> list:
    return [ly for ly in viewer.layers if layers.RGB_SOURCES in ly.metadata]


def expected_channel(band: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """2-98 % of the valid pixels to 0-255, computed independently of layers.stretch_to_uint8."""
    lo, hi = np.percentile(band[valid], [2, 98])
    return np.rint(np.clip((band - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)


def edge_worlds(layer) -> np.ndarray:
    shape = np.shape(layer.data)[: layer.ndim]
    return np.array([layer.data_to_world(p) for p in itertools.product(*[(-0.5, n - 0.5) for n in shape])])


def write_tif(path, data, descriptions=None, nodata=None, colorinterp=None, band_tags=None, dtype=None):
    data = np.asarray(data)
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0],
                       dtype=dtype or data.dtype, crs="EPSG:32633", transform=from_origin(500000, 4000000, 20, 20),
                       nodata=nodata) as ds:
        ds.write(data.astype(dtype or data.dtype))
        for b, d in enumerate(descriptions or [], 1):
            ds.set_band_description(b, d)
        if colorinterp:
            ds.colorinterp = colorinterp
        for b, tags in enumerate(band_tags or [], 1):
            ds.update_tags(b, **tags)
    return path


# --- 1. true colour on opening ------------------------------------------------------------------

def test_multiband_geotiff_opens_in_true_colour_with_band_layers_hidden(viewer, s2_path, corner_worlds):
    added = open_raster(viewer, s2_path)
    rgb, bands = added[0], added[1:]
    assert rgb.name == "s2_crop [RGB B04,B03,B02]" and rgb.rgb and rgb.visible
    assert rgb.data.dtype == np.uint8 and rgb.data.shape == (256, 256, 3)  # no nodata pixels: no alpha
    assert rgb.metadata["rgb_reason"] == "band names"
    assert [b.name for b in bands] == [f"s2_crop [{b}]" for b in BANDS]
    assert not any(b.visible for b in bands) and {b.blending for b in bands} == {"translucent"}
    # each channel is its band's own 2-98 % stretch (nodata 0 excluded)
    src = hires_domain.read(s2_path).array()
    valid = (src[[2, 1, 0]] != 0).all(axis=0)
    for channel, b in enumerate((2, 1, 0)):
        np.testing.assert_array_equal(rgb.data[..., channel], expected_channel(src[b], valid))
    shown, expected = corner_worlds(rgb, hires_domain.read(s2_path))
    np.testing.assert_allclose(shown, expected, atol=1e-6 * np.abs(expected).max())
    assert np.allclose(edge_worlds(rgb), edge_worlds(bands[0]))
    # the band layers still make the 'all bands' input of the Enhance widget; the composite is no input
    from hires_napari.widgets import EnhanceWidget

    w = EnhanceWidget(viewer)
    offered = [w.layer_combo.itemText(i) for i in range(w.layer_combo.count())]
    assert "s2_crop [all 4 bands]" in offered and rgb.name not in offered
    w.close()


def test_true_colour_band_choice_and_nodata(viewer, tmp_path):
    """Wavelengths beat names, names beat GDAL's colour interpretation (which GDAL sets to RGB for
    any 3-4 band 8-bit file), else the first three bands; nodata is excluded from the stretch and
    transparent; fewer than three bands open grey as before."""
    rng = np.random.default_rng(0)
    data = rng.integers(1, 200, (4, 20, 30)).astype(np.uint8)
    data[:, :5, :5] = 0  # nodata corner
    by_wavelength = write_tif(tmp_path / "wl.tif", data, ["a", "b", "c", "d"], nodata=0,
                              band_tags=[{"wavelength": w} for w in ("0.842", "0.665", "0.560", "0.490")])
    added = open_raster(viewer, by_wavelength)
    rgb = added[0]
    assert rgb.name == "wl [RGB b,c,d]" and rgb.metadata["rgb_reason"] == "band wavelengths"
    assert rgb.data.shape == (20, 30, 4)  # RGBA: alpha 0 on nodata
    valid = (data[[1, 2, 3]] != 0).all(axis=0)
    np.testing.assert_array_equal(rgb.data[..., 3], np.where(valid, 255, 0))
    np.testing.assert_array_equal(rgb.data[..., 0][valid], expected_channel(data[1].astype(np.float32), valid)[valid])
    # Landsat 8/9 collection names; GDAL's default RGB colour interpretation of 8-bit files ignored
    landsat = write_tif(tmp_path / "l8.tif", data, ["SR_B5", "SR_B4", "SR_B3", "SR_B2"])
    assert open_raster(viewer, landsat)[0].name == "l8 [RGB SR_B4,SR_B3,SR_B2]"
    by_interp = write_tif(tmp_path / "ci.tif", data.astype(np.uint16),
                          colorinterp=[rasterio.enums.ColorInterp[c] for c in ("gray", "blue", "green", "red")])
    rgb = open_raster(viewer, by_interp)[0]
    assert rgb.name == "ci [RGB band 4,band 3,band 2]" and rgb.metadata["rgb_reason"] == "colour interpretation"
    plain = write_tif(tmp_path / "plain.tif", data.astype(np.uint16))
    assert open_raster(viewer, plain)[0].metadata["rgb_reason"] == "first three bands"
    two = write_tif(tmp_path / "two.tif", data[:2].astype(np.uint16), ["B04", "B08"])
    assert [ly.name for ly in open_raster(viewer, two)] == ["two [B04]", "two [B08]"]
    assert all(ly.visible and not ly.rgb for ly in viewer.layers[-2:])


def test_true_colour_rules_without_a_viewer():
    def info(name, ci="", wl=None):
        return {"name": name, "colorinterp": ci, "wavelength": wl}

    s2 = [info(n) for n in ("B01", "B02", "B03", "B04", "B05", "B8A", "B11", "B12")]
    assert true_colour_bands(s2) == ((3, 2, 1), "band names")
    assert true_colour_bands([info("Red edge"), info("Red"), info("Green"), info("Blue")]) \
        == ((1, 2, 3), "band names")
    assert true_colour_bands([info("x", "red"), info("y", "green"), info("z", "blue")])[1] \
        == "colour interpretation"
    assert true_colour_bands([info("B12"), info("B11"), info("B1")]) == ((0, 1, 2), "first three bands")


# --- 2. the command: Layers > Visualize, the Enhance widget, no duplicates ------------------------

def test_composite_command_in_layers_menu_and_enhance_button_replaces(viewer, s2_path):
    from napari._app_model import get_app_model

    app = get_app_model()
    ids = [getattr(item, "command", None) and item.command.id for item in app.menus.get_menu("napari/layers/visualize")]
    assert "hires-domain.show_rgb_composite" in ids  # Layers > Visualize in napari 0.9
    added = open_raster(viewer, s2_path)
    first = added[0]
    viewer.layers.selection = {added[3]}
    app.commands.execute_command("hires-domain.show_rgb_composite").result()
    app.commands.execute_command("hires-domain.show_rgb_composite").result()
    assert len(composites(viewer)) == 1 and len(viewer.layers) == 5
    assert viewer.layers[0].name == first.name and viewer.layers[0] is not first  # rebuilt in place
    from hires_napari.widgets import EnhanceWidget

    w = EnhanceWidget(viewer)
    viewer.layers.selection = {viewer.layers[0]}  # the composite itself stands for its bands
    w.composite_button.click()
    assert w.status.text().startswith(f"replaced '{first.name}' (red B04, green B03, blue B02: band names)")
    assert len(composites(viewer)) == 1 and len(viewer.layers) == 5
    viewer.add_image(np.zeros((4, 4), np.float32), name="not a raster")
    viewer.layers.selection = {viewer.layers[-1]}
    w.composite_button.click()
    assert w.status.text().startswith("no composite: select the band layers")
    w.close()


# --- 3. composites of enhanced bands show the enhanced data -------------------------------------

def test_composite_of_an_enhanced_band_set_is_built_from_its_layers(viewer, s2_path, qtbot):
    from hires_napari.widgets import EnhanceWidget

    added = open_raster(viewer, s2_path)
    w = EnhanceWidget(viewer)
    w.device_combo.setCurrentText("cpu")
    w.layer_combo.setCurrentText("s2_crop [all 4 bands]")
    w.model_combo.setCurrentText("bicubic")
    w.scale.setValue(2)
    w.tile.setValue(128)
    w.overlap.setValue(16)
    w.run_button.click()
    qtbot.waitUntil(lambda: not w.busy, timeout=TIMEOUT)
    assert w.last_outcome == "added", w.status.text()
    results = list(viewer.layers[-5:-1])  # the bands, then their composite, added on return
    assert all(np.shape(r.data) == (512, 512) for r in results) and not any(r.visible for r in results)
    assert viewer.layers[-1].rgb and len(composites(viewer)) == 2
    viewer.layers.selection = {results[0]}
    w.composite_button.click()
    rgb = viewer.layers[-1]
    group = results[0].metadata[layers.GROUP]["name"]
    assert rgb.name == f"{group} [RGB B04,B03,B02]" and rgb.rgb
    assert rgb.data.shape == (512, 512, 3)  # the 5 m result, not the 10 m source file re-read
    r = np.asarray(results[2].data)  # B04 as enhanced
    valid = np.all([np.asarray(x.data) != 0 for x in results[:3]], axis=0)
    diff = rgb.data[..., 0].astype(int) - expected_channel(r, valid)
    assert np.abs(diff).max() <= 1 and np.count_nonzero(diff) < 10  # float32 vs float64 rounding
    assert np.allclose(edge_worlds(rgb), edge_worlds(added[0]), atol=1e-6)  # overlays the original
    assert np.allclose(rgb.data_to_world((0, 0)), results[0].data_to_world((0, 0)))
    assert len(composites(viewer)) == 2
    w.close()


def test_composite_of_separately_chosen_bands():
    """Three single-band layers of no common band set (each enhanced on its own, say)."""
    image = hires_domain.read(hires_domain.__path__[0] + "/samples/s2_crop.tif")
    specs = layers.to_layer_data(image, "s2")
    singles = []
    for d, kw, _ in specs[:3]:
        meta = {k: v for k, v in kw["metadata"].items() if k != layers.GROUP}
        singles.append((kw["name"], d, meta))
    members, name = layers.band_members(singles, singles)
    assert name == "RGB of s2 [B02], s2 [B03], s2 [B04]" and len(members) == 3
    data, kwargs, _ = layers.composite(members, name)
    assert kwargs["name"].endswith("[RGB B04,B03,B02]") and data.shape == (256, 256, 3)
    with pytest.raises(HiresError, match="select the band layers"):
        layers.band_members(singles, [("x", np.zeros((2, 2)), {})])


# --- 4. saving: one multi-band GeoTIFF ---------------------------------------------------------

def test_selected_band_layers_save_as_one_multiband_geotiff(viewer, s2_path, tmp_path):
    added = open_raster(viewer, s2_path)
    viewer.layers.selection = set(added[1:])
    out = tmp_path / "bands.tif"
    assert viewer.layers.save(str(out), selected=True) == [str(out)]  # what File > Save Selected Layers does
    with rasterio.open(s2_path) as src, rasterio.open(out) as dst:
        assert dst.count == 4 and dst.crs == src.crs and dst.transform.almost_equals(src.transform)
        assert dst.descriptions == BANDS and dst.scales == src.scales and dst.offsets == src.offsets
        assert dst.nodata == src.nodata and dst.dtypes == src.dtypes
        assert [c.name for c in dst.colorinterp] == ["blue", "green", "red", "undefined"]
        np.testing.assert_array_equal(dst.read(), src.read())
    # a subset, selected in any order, is written in band order; the composite alone writes all bands as a COG
    viewer.layers.selection = {added[3], added[1], added[2]}
    sub = tmp_path / "rgb_bands.tif"
    viewer.layers.save(str(sub), selected=True, plugin=PLUGIN)
    with rasterio.open(sub) as dst:
        assert dst.descriptions == ("B02", "B03", "B04")
    viewer.layers.selection = {added[0]}  # one RGB layer: napari's own TIFF writer takes it too, so
    cog = tmp_path / "scene.cog.tif"  # which one napari tries first depends on discovery order: name ours
    assert viewer.layers.save(str(cog), selected=True, plugin=PLUGIN) == [str(cog)]
    with rasterio.open(cog) as dst:
        assert dst.count == 4 and dst.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        assert dst.descriptions == BANDS


def test_enhanced_band_set_saves_with_refined_transform_and_provenance(viewer, s2_path, tmp_path, ct_series_dir):
    added = open_raster(viewer, s2_path)
    members = [(ly.name, ly.data, ly.metadata) for ly in added[1:]]
    image = layers.stack_bands(members)
    from hires_napari import jobs
    from hires_domain.pipeline import Settings

    job = jobs.capture_bands([(ly.data, ly.metadata, ly.unique_id, None) for ly in added[1:]], "s2_crop",
                             Settings("nearest", scale=2, tile=128, overlap=0, device="cpu"))
    outcome = jobs.run_all(job)
    for data, kwargs, _ in jobs.output_layers(job, outcome.image):
        viewer.add_image(data, **kwargs)
    results = viewer.layers[-4:]
    readers.add_composite(viewer, [results[1]])
    viewer.layers.selection = {viewer.layers[-1]}  # the result's composite
    out = tmp_path / "x2.tif"
    viewer.layers.save(str(out), selected=True, plugin=PLUGIN)
    with rasterio.open(s2_path) as src, rasterio.open(out) as dst:
        assert dst.count == 4 and dst.width == 512 and dst.crs == src.crs
        assert dst.transform.a == pytest.approx(src.transform.a / 2) and dst.descriptions == BANDS
        assert dst.bounds == pytest.approx(src.bounds) and dst.scales == src.scales and dst.nodata == 0
        assert "model=nearest" in dst.tags().get("HIRES_PROVENANCE", "")
        np.testing.assert_array_equal(dst.read()[:, ::2, ::2], src.read())
    assert image.band_names == BANDS
    # band layers of a raster and a CT layer cannot make one GeoTIFF
    (ct,) = viewer.open(str(ct_series_dir), plugin=PLUGIN)
    viewer.layers.selection = {ct, added[1]}
    with pytest.raises(HiresError, match="is not a raster band"):
        viewer.layers.save(str(tmp_path / "mixed.tif"), selected=True, plugin=PLUGIN)
    assert not (tmp_path / "mixed.tif").exists()
