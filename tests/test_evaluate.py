"""`hires evaluate` / `hires benchmark` on real crops: JSON numbers, HTML report, bad input."""

import json

import numpy as np
import pytest
import rasterio

from support import fails, hires


@pytest.fixture
def s2_pair(samples, tmp_path):
    """LR = 4x4 block mean of the real Sentinel-2 crop (same georeferencing), HR = the crop."""
    with rasterio.open(samples / "s2_crop.tif") as src:
        profile, data, desc, scales = src.profile, src.read().astype(float), src.descriptions, src.scales
    lr = np.rint(data.reshape(4, 64, 4, 64, 4).mean(axis=(2, 4))).astype("uint16")
    profile.update(width=64, height=64, transform=profile["transform"] @ rasterio.Affine.scale(4))
    with rasterio.open(tmp_path / "lr.tif", "w", **profile) as dst:
        dst.write(lr)
        dst.descriptions, dst.scales = desc, scales
    return tmp_path / "lr.tif", samples / "s2_crop.tif"


def test_evaluate_pair_json_and_report(capsys, s2_pair, tmp_path):
    lr, hr = s2_pair
    assert hires(capsys, "enhance", lr, tmp_path / "x4.tif", "--scale", "4", "-q")[0] == 0
    code, o, _ = hires(capsys, "evaluate", tmp_path / "x4.tif", hr, "--lr", lr, "--json", tmp_path / "m.json",
                       "--report", tmp_path / "r.html", "--figures", tmp_path / "figs", "--tile", "256")
    assert code == 0 and "psnr" in o
    m = json.loads((tmp_path / "m.json").read_text())
    s = m["settings"]
    assert s["data_range"]["name"] == "reflectance" and s["bands"] == ["B02", "B03", "B04", "B08"]
    assert 30 < m["metrics"]["psnr"]["value"] < 60 and m["metrics"]["consistency_psnr"]["value"] > 40
    assert m["metrics"]["sam"]["unit"] == "degrees" and m["metrics"]["ergas"]["value"] > 0
    for key in ("lpips", "fid"):  # no backbone weights here: said so, with the file to provide
        e = m["metrics"][key]
        assert e["value"] is None and e["status"] == "unavailable" and e["missing"]
    assert "patches of 64x64" in m["metrics"]["fid"]["set"]
    # the bicubic baseline on the same LR is the prediction's own method (unrounded): same numbers
    assert m["baselines"]["bicubic"]["psnr"]["value"] == pytest.approx(m["metrics"]["psnr"]["value"], abs=0.01)
    page = (tmp_path / "r.html").read_text()
    assert page.count("data:image/png;base64,") == 3 and "consistency_psnr" in page and "<table>" in page
    assert "bicubic (baseline)" in page
    assert len(list((tmp_path / "figs").glob("*.png"))) == 3


def test_evaluate_directories_gives_means_and_set_fid(capsys, s2_pair, tmp_path):
    lr, hr = s2_pair
    (tmp_path / "pred").mkdir()
    (tmp_path / "ref").mkdir()
    for name in ("a.tif", "b.tif"):
        hires(capsys, "enhance", lr, tmp_path / "pred" / name, "--scale", "4", "--model", "nearest", "-q")
        (tmp_path / "ref" / name).write_bytes(hr.read_bytes())
    code, _, _ = hires(capsys, "evaluate", tmp_path / "pred", tmp_path / "ref", "--json", tmp_path / "m.json")
    m = json.loads((tmp_path / "m.json").read_text())
    assert code == 0 and len(m["items"]) == 2 and m["metrics"]["psnr"]["n"] == 2
    assert m["metrics"]["psnr"]["value"] == pytest.approx(m["items"][0]["metrics"]["psnr"]["value"])
    assert "2 images" in m["metrics"]["fid"]["set"]


def test_benchmark_ranks_models(capsys, s2_pair, tmp_path):
    lr, hr = s2_pair
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"items": [{"id": "s2", "lr": str(lr), "hr": str(hr)}]}))
    code, _, _ = hires(capsys, "benchmark", manifest, "--models", "bicubic,nearest", "--tile", "32",
                       "--overlap", "8", "--json", tmp_path / "b.json", "--report", tmp_path / "b.html")
    b = json.loads((tmp_path / "b.json").read_text())["models"]
    assert code == 0
    assert b["bicubic"]["metrics"]["psnr"]["value"] > b["nearest"]["metrics"]["psnr"]["value"]
    assert b["bicubic"]["metrics"]["seam_score"]["value"] < 1.1  # the tiler leaves no seams
    page = (tmp_path / "b.html").read_text()
    assert "bicubic" in page and "nearest" in page and "class=best" in page


def test_medical_window_sets_the_range(capsys, samples, tmp_path):
    code, _, _ = hires(capsys, "evaluate", samples / "ct_head.nii.gz", samples / "ct_head.nii.gz",
                       "--window", "brain", "--json", tmp_path / "m.json")
    m = json.loads((tmp_path / "m.json").read_text())
    assert code == 0 and m["settings"]["data_range"]["hi"] - m["settings"]["data_range"]["lo"] == 80
    assert m["metrics"]["ssim"]["value"] == pytest.approx(1.0) and m["metrics"]["hu_mae"]["value"] == 0


def test_evaluate_bad_input(capsys, s2_pair, samples, tmp_path):
    lr, hr = s2_pair
    fails(capsys, "evaluate", lr, hr, match="differs from reference")
    fails(capsys, "evaluate", samples / "ct_head.nii.gz", samples / "ct_head.nii.gz", "--window", "liver",
          match="unknown window")
    bad = tmp_path / "bad.json"
    bad.write_text('{"things": []}')
    fails(capsys, "benchmark", bad, match="bad manifest")
    fails(capsys, "benchmark", bad, "--models", "magic", match="unknown model")
    (tmp_path / "r.html").write_text("keep")
    fails(capsys, "evaluate", hr, hr, "--report", tmp_path / "r.html", match="exists")
    assert (tmp_path / "r.html").read_text() == "keep"


def test_weights_command_names_missing_files(capsys):
    code, o, _ = hires(capsys, "weights")
    assert code == 0 and "alexnet-owt-7be5be79.pth" in o and "weights-inception-2015-12-05" in o


def test_report_table_shows_the_reference_value_of_closer_to_ref_metrics():
    from hires_domain.report import metric_table

    entry = {"unit": "HU", "better": "closer to ref_value", "ref_value": 10.0}
    page = metric_table([("a", {"noise_std_flat": {**entry, "value": 12.0}}),
                         ("b", {"noise_std_flat": {**entry, "value": 7.0}})])
    assert "≈ref best" in page and page.count("(ref 10)") == 2
    row_a, row_b = page.split("<tr><th>")[2:]
    assert "class=best" in row_a and "class=best" not in row_b
