"""`hires batch` takes Sentinel-2 products (band directories, SAFE, zipped SAFE) as items."""

import shutil
from pathlib import Path

import numpy as np
import rasterio

from s2_support import CROP, make_l1c, zip_safe
from support import hires


def test_products_are_items_found_whole_and_equal_to_enhance(tmp_path, capsys):
    tree = tmp_path / "in"
    tree.mkdir()
    shutil.copytree(CROP, tree / "bands")
    safe = make_l1c(tree)
    zip_safe(safe, tree / (safe.name[:-5] + ".zip"))
    shutil.rmtree(safe)
    code, out, err = hires(capsys, "batch", tree, "-o", tmp_path / "out", "--model", "s2-sharpen",
                           "--precision", "fp32", "-q")
    assert code == 0, err
    outputs = sorted(p.name for p in (tmp_path / "out").glob("*.tif"))
    assert outputs == sorted(["bands.tif", safe.name[:-5] + ".tif"])  # one output per product, none per band file
    code, _, err = hires(capsys, "enhance", CROP, tmp_path / "single.tif", "--model", "s2-sharpen",
                         "--precision", "fp32", "-q")
    assert code == 0, err
    with rasterio.open(tmp_path / "single.tif") as a, rasterio.open(tmp_path / "out" / "bands.tif") as b, \
            rasterio.open(tmp_path / "out" / (safe.name[:-5] + ".tif")) as c:
        np.testing.assert_array_equal(a.read(), b.read())
        np.testing.assert_array_equal(a.read(), c.read())
        assert c.nodata == 0 and b.count == 12


def test_a_directory_of_other_rasters_is_still_searched(tmp_path):
    """Only SAFE trees, `*_MSIL*.zip` and directories with the four 10 m bands are products in batch."""
    from hires_domain.cluster.batch import discover

    tree = tmp_path / "in"
    (tree / "few").mkdir(parents=True)
    for name in ("s2_B05.jp2", "x4.tif"):
        shutil.copy(CROP / "s2_B05.jp2", tree / "few" / name)
    shutil.copy(CROP / "s2_B05.jp2", tree / "notes.zip")          # a zip not named like a product
    items = discover([str(tree)], tmp_path / "out")
    assert sorted(Path(i.input).name for i in items) == ["s2_B05.jp2", "x4.tif"]
