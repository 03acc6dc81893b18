"""Every bad input: one-line error, non-zero exit, no output left behind, input unchanged."""

import hashlib
import shutil
import sys
from pathlib import Path

import pytest

from hires_domain import models
from hires_domain.models import Model, ModelInfo

from support import fails, hires


def digest(path: Path) -> str:
    files = sorted(path.rglob("*")) if path.is_dir() else [path]
    return hashlib.sha256(b"".join(f.read_bytes() for f in files if f.is_file())).hexdigest()


def no_leftovers(directory: Path, *allowed):
    left = {p.name for p in directory.iterdir()} - set(allowed)
    assert not left, f"left behind: {left}"


@pytest.fixture
def nii(samples, tmp_path):
    p = tmp_path / "in.nii.gz"
    shutil.copy(samples / "ct_head.nii.gz", p)
    return p


def test_missing_path(capsys, tmp_path):
    fails(capsys, "enhance", tmp_path / "nope.nii.gz", tmp_path / "o.nii.gz", match="no such file")
    fails(capsys, "info", tmp_path / "nope", match="no such file")
    no_leftovers(tmp_path)


def test_corrupt_and_unsupported(capsys, tmp_path):
    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"II*\x00" + bytes(range(256)) * 8)
    fails(capsys, "enhance", bad, tmp_path / "o.tif", match="bad.tif")
    txt = tmp_path / "notes.txt"
    txt.write_text("hello")
    fails(capsys, "info", txt, match="notes.txt")
    no_leftovers(tmp_path, "bad.tif", "notes.txt")


def test_directory_without_dicom(capsys, tmp_path):
    d = tmp_path / "empty"
    d.mkdir()
    (d / "readme.txt").write_text("x")
    fails(capsys, "enhance", d, tmp_path / "out", match="no DICOM")
    no_leftovers(tmp_path, "empty")


def test_truncated_dicom(capsys, tmp_path, samples):
    d = tmp_path / "series"
    shutil.copytree(samples / "ct_head_series", d)
    victim = sorted(d.glob("*.dcm"))[3]
    victim.write_bytes(victim.read_bytes()[:3000])
    fails(capsys, "enhance", d, tmp_path / "out", match=victim.name)
    no_leftovers(tmp_path, "series")


def test_mixed_series_needs_choice(capsys, tmp_path, samples):
    import pydicom

    d = tmp_path / "mixed"
    shutil.copytree(samples / "ct_head_series", d)
    ds = pydicom.dcmread(pydicom.data.get_testdata_file("CT_small.dcm"))
    ds.save_as(d / "other.dcm")
    line = fails(capsys, "enhance", d, tmp_path / "out", match="--series")
    assert str(ds.SeriesInstanceUID) in line
    code, _, _ = hires(capsys, "enhance", d, tmp_path / "out", "--series", ds.SeriesInstanceUID, "-q")
    assert code == 0 and len(list((tmp_path / "out").glob("*.dcm"))) == 1


def test_unknown_model_and_bad_scale(capsys, nii, tmp_path):
    fails(capsys, "enhance", nii, tmp_path / "o.nii.gz", "--model", "magic", match="unknown model 'magic'")
    fails(capsys, "enhance", nii, tmp_path / "o.nii.gz", "--scale", "9", match="cannot do x9")
    fails(capsys, "enhance", nii, tmp_path / "o.nii.gz", "--tile", "16", "--overlap", "16", match="overlap")
    no_leftovers(tmp_path, "in.nii.gz")


class FourBand(Model):
    info = ModelInfo("four-band-test", "test model taking exactly 4 bands", "interpolation",
                     ("medical", "raster"), (2,), bands=4)


def test_band_count(capsys, nii, tmp_path, monkeypatch):
    monkeypatch.setitem(models._REGISTRY, "four-band-test", FourBand)
    fails(capsys, "enhance", nii, tmp_path / "o.nii.gz", "--model", "four-band-test",
          match="takes 4 band(s), the input has 1")
    no_leftovers(tmp_path, "in.nii.gz")


def test_output_exists_then_overwrite(capsys, nii, tmp_path):
    out = tmp_path / "o.nii.gz"
    out.write_bytes(b"keep me")
    fails(capsys, "enhance", nii, out, match="exists")
    assert out.read_bytes() == b"keep me"
    code, _, _ = hires(capsys, "enhance", nii, out, "--overwrite", "-q")
    assert code == 0 and out.read_bytes() != b"keep me"
    no_leftovers(tmp_path, "in.nii.gz", "o.nii.gz")


def test_output_equals_input(capsys, nii, tmp_path):
    before = digest(nii)
    fails(capsys, "enhance", nii, nii, "--overwrite", match="is the input")
    assert digest(nii) == before


def test_unwritable_output(capsys, nii, tmp_path):
    fails(capsys, "enhance", nii, tmp_path / "no" / "such" / "o.nii.gz", match="does not exist")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    fails(capsys, "enhance", nii, blocker / "o.nii.gz", match="cannot write")


def test_wrong_output_format(capsys, nii, tmp_path):
    fails(capsys, "enhance", nii, tmp_path / "o.tif", match="use a .nii.gz path")
    fails(capsys, "enhance", nii, tmp_path / "o.png", match="cannot write '.png'")
    fails(capsys, "enhance", nii, tmp_path / "out_dir", match="DICOM output needs a DICOM source")
    no_leftovers(tmp_path, "in.nii.gz")


def test_absurd_size_refused_before_allocating(capsys, tmp_path):
    import rasterio

    huge = tmp_path / "huge.tif"
    with rasterio.open(huge, "w", driver="GTiff", width=400_000, height=400_000, count=4, dtype="uint16",
                       tiled=True, blockxsize=512, blockysize=512, compress="deflate", sparse_ok=True,
                       BIGTIFF="YES", crs="EPSG:32633",
                       transform=rasterio.transform.from_origin(300000, 5000000, 10, 10)):
        pass
    line = fails(capsys, "enhance", huge, tmp_path / "o.tif", "--scale", "8", match="output would be")
    assert "TiB" in line or "GiB" in line
    no_leftovers(tmp_path, "huge.tif")


def test_failure_mid_run_leaves_nothing(capsys, nii, tmp_path, monkeypatch):
    calls = {"n": 0}
    real = models.baselines.Bicubic.predict

    def flaky(self, x, scale):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("device fell over")
        return real(self, x, scale)

    monkeypatch.setattr(models.baselines.Bicubic, "predict", flaky)
    before = digest(nii)
    code, _, errtext = hires(capsys, "enhance", nii, tmp_path / "o.nii.gz", "--tile", "32", "-q")
    assert code == 1 and "device fell over" in errtext and "Traceback" not in errtext
    no_leftovers(tmp_path, "in.nii.gz")
    assert digest(nii) == before


def test_info_json_and_models(capsys, nii):
    import json

    code, o, _ = hires(capsys, "info", nii, "--json")
    d = json.loads(o)
    assert code == 0 and d["shape"] == [1, 32, 128, 128] and d["world_frame"] == "RAS"
    assert d["intensity"]["bands"][0]["min"] >= -31 and d["intensity"]["bands"][0]["max"] <= 386
    code, o, _ = hires(capsys, "models", "--json")
    names = {m["name"] for m in json.loads(o)}
    assert {"bicubic", "lanczos", "nearest"} <= names


def _usage_failure(errtext: str, command: str) -> str:
    """Click-style usage error: the command's usage line, where to get help, one `error:` line."""
    lines = [ln for ln in errtext.splitlines() if ln.strip()]
    assert "Traceback" not in errtext and "internal error" not in errtext, errtext
    assert lines[0].startswith(f"Usage: hires {command}"), errtext
    assert lines[1] == f"Try '{f'hires {command}'.strip()} --help' for help.", errtext
    assert len(lines) == 3 and lines[2].startswith("error: "), errtext
    return lines[2]


@pytest.mark.parametrize("args,expect", [
    (["--tiles", "128"], ["No such option: --tiles", "--tile"]),  # the closest valid option is named
    (["--bogus"], ["No such option: --bogus"]),
    (["--tile", "abc"], ["Invalid value for '--tile'", "integer"]),
    (["--scale"], ["--scale", "requires an argument"]),
])
def test_usage_errors(capsys, nii, tmp_path, args, expect):
    code, out, errtext = hires(capsys, "enhance", nii, tmp_path / "o.nii.gz", *args)
    line = _usage_failure(errtext, "enhance")
    assert code == 2 and out == ""
    for text in expect:
        assert text in line, line
    no_leftovers(tmp_path, "in.nii.gz")


def test_usage_errors_missing_argument_and_command(capsys):
    code, _, errtext = hires(capsys, "enhance")
    assert code == 2 and "Missing argument 'src'" in _usage_failure(errtext, "enhance")
    code, _, errtext = hires(capsys, "enhnace", "a", "b")
    assert code == 2 and "No such command 'enhnace'. Did you mean 'enhance'?" in _usage_failure(errtext, "")


def test_usage_error_real_process(tmp_path):
    import subprocess

    proc = subprocess.run([sys.executable, "-m", "hires_domain", "enhance", "a.tif", "b.tif", "--tiles", "3"],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2 and proc.stdout == ""
    assert "(Possible options:" in _usage_failure(proc.stderr, "enhance") and "--tile" in proc.stderr
    assert list(tmp_path.iterdir()) == []
