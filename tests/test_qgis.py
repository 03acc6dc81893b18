"""The QGIS plugin hires_qgis: `hires qgis install/uninstall`, `--progress jsonl`, the plugin's
subprocess runner, and its Processing algorithms in a real QGIS (qgis_process, and PyQGIS in the
system Python: tests/qgis/pyqgis_checks.py). Debian's /usr/bin/qgis_process wrapper adds
--noversioncheck, which qgis_process 3.22 rejects: the binary is called directly."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio import shutil as rio_shutil

from hires_domain import __version__, enhance_file
from hires_domain.intensity import true_colour_bands
from hires_domain.io.common import TEMP_SUFFIX
from hires_domain.pipeline import Settings
from hires_domain.qgis_plugin import PLUGIN, install
from hires_domain.qgis_plugin.hires_qgis import runner
from support import DATA, SAMPLES, fails, hires

QGIS_PROCESS = Path("/usr/bin/qgis_process.bin")
SYSTEM_PYTHON = "/usr/bin/python3"
CHECKS = Path(__file__).parent / "qgis" / "pyqgis_checks.py"
HELDOUT = DATA / "s2_heldout_crop.tif"


def _crop(src: Path, dst: Path, size: int, bands=None) -> Path:
    """The top-left ``size`` x ``size`` pixels of ``src`` (its transform unchanged), of ``bands``."""
    with rasterio.open(src) as s:
        window = rasterio.windows.Window(0, 0, size, size)
        profile = {**s.profile, "width": size, "height": size}
        indexes = bands or list(range(1, s.count + 1))
        profile["count"] = len(indexes)
        with rasterio.open(dst, "w", **profile) as d:
            d.write(s.read(indexes, window=window))
            d.descriptions = tuple(s.descriptions[i - 1] for i in indexes)
    return dst


def _area_down(src: Path, dst: Path, k: int) -> Path:
    """``src`` area-averaged by ``k`` (the low-resolution input of a x``k`` test)."""
    with rasterio.open(src) as s:
        c, h, w = s.count, s.height // k, s.width // k
        lr = s.read().astype(np.float64)[:, :h * k, :w * k].reshape(c, h, k, w, k).mean(axis=(2, 4))
        profile = {**s.profile, "width": w, "height": h, "transform": s.transform @ s.transform.scale(k, k)}
        with rasterio.open(dst, "w", **profile) as d:
            d.write(np.rint(lr).astype(s.dtypes[0]))
            d.descriptions = s.descriptions
    return dst


# ---------------------------------------------------------------- hires qgis install / uninstall


def test_install_upgrade_uninstall(tmp_path, capsys):
    profile = tmp_path / "profile"
    profile.mkdir()
    code, out, err = hires(capsys, "qgis", "install", "--profile-dir", profile)
    assert code == 0, err
    plugin = profile / "python" / "plugins" / PLUGIN
    assert str(plugin) in out
    assert {"__init__.py", "metadata.txt", "plugin.py", "algorithms.py", "runner.py", "hires.json"} <= \
        {p.name for p in plugin.iterdir()}
    config = json.loads((plugin / "hires.json").read_text())
    exe = Path(config["hires"])
    assert exe.is_absolute() and exe.is_file() and exe.name.startswith("hires")
    assert {"bicubic", "s2-sr-x4", "s2-sharpen"} <= {m["name"] for m in config["models"]}
    assert f"version={__version__}\n" in (plugin / "metadata.txt").read_text()

    (plugin / "stale.py").write_text("")  # a file an older version shipped
    (plugin / "hires.json").write_text("{}")
    assert hires(capsys, "qgis", "install", "--profile-dir", profile)[0] == 0
    assert not (plugin / "stale.py").exists()
    assert json.loads((plugin / "hires.json").read_text()) == config
    assert not list(plugin.parent.glob(".*"))  # no temporary copy left

    code, out, _ = hires(capsys, "qgis", "uninstall", "--profile-dir", profile)
    assert code == 0 and not plugin.exists()
    fails(capsys, "qgis", "uninstall", "--profile-dir", profile, match="not installed")


def test_install_refusals(tmp_path, capsys, monkeypatch):
    assert "does not exist" in fails(capsys, "qgis", "install", "--profile-dir", tmp_path / "nowhere")
    monkeypatch.delenv("QGIS_CUSTOM_CONFIG_PATH", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path))  # no qgis, qgis_process on it
    assert "no QGIS found" in fails(capsys, "qgis", "install", match="--profile-dir")
    root = tmp_path / ".local" / "share" / "QGIS" / "QGIS3"
    root.mkdir(parents=True)  # QGIS has run once: the default profile is used
    assert hires(capsys, "qgis", "install")[0] == 0
    assert (root / "profiles" / "default" / "python" / "plugins" / PLUGIN / "hires.json").is_file()
    monkeypatch.setenv("QGIS_CUSTOM_CONFIG_PATH", str(tmp_path / "custom"))  # as QGIS reads it
    (tmp_path / "custom").mkdir()
    assert hires(capsys, "qgis", "install")[0] == 0
    assert (tmp_path / "custom" / "profiles" / "default" / "python" / "plugins" / PLUGIN).is_dir()


# ---------------------------------------------------------------- --progress jsonl


def test_progress_jsonl(tmp_path, capsys):
    src = _crop(HELDOUT, tmp_path / "in.tif", 128)
    code, out, err = hires(capsys, "enhance", src, tmp_path / "out.tif", "--scale", "2", "--tile", "64",
                           "--progress", "jsonl", "-q")
    assert code == 0 and out == ""
    events = [json.loads(line) for line in err.splitlines()]
    assert [e["done"] for e in events] == [1, 2, 3, 4]
    assert all(e["total"] == 4 and e["unit"] == "tiles" for e in events)
    fails(capsys, "enhance", src, tmp_path / "o2.tif", "--progress", "dots", match="--progress must be bar or jsonl")
    assert not (tmp_path / "o2.tif").exists()


# ---------------------------------------------------------------- the plugin's runner (no QGIS needed)


def _fake_hires(tmp_path: Path, body: str) -> dict:
    """A config whose `hires` is a Python script with ``body``."""
    exe = tmp_path / "hires"
    exe.write_text(f"#!{sys.executable}\nimport json, os, signal, sys, time\n{body}\n")
    exe.chmod(0o755)
    return {"hires": str(exe)}


def test_runner_progress_log_and_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", "/qgis/python")  # QGIS's: not passed on to hires
    config = _fake_hires(tmp_path, """
for done in (1, 2):
    print(json.dumps({"done": done, "total": 2, "unit": "tiles"}), file=sys.stderr, flush=True)
print("PYTHONPATH=%s" % os.environ.get("PYTHONPATH"))
print("warning: something odd", file=sys.stderr)
print("error: model 's2-sr-x4' takes 4 band(s), the input has 1", file=sys.stderr)
sys.exit(2)""")
    percents, lines = [], []
    with pytest.raises(runner.Failed, match=r"^model 's2-sr-x4' takes 4 band\(s\), the input has 1$"):
        runner.run(["enhance"], config, progress=percents.append, log=lines.append)
    assert percents == [50.0, 100.0]
    assert sorted(lines) == ["PYTHONPATH=None", "warning: something odd"]
    with pytest.raises(runner.Failed, match="exited with status 3"):
        runner.run([], _fake_hires(tmp_path, "sys.exit(3)"), log=lines.append)


def test_runner_cancel_kills_and_cleans(tmp_path):
    """A process ignoring SIGTERM is killed after the grace period; what it left beside the output goes."""
    out = tmp_path / "out.tif"
    config = _fake_hires(tmp_path, f"""
signal.signal(signal.SIGTERM, signal.SIG_IGN)
os.mkdir({str(tmp_path)!r} + "/.out.tif.%d-0badf00d.x1.hires-tmp" % os.getpid())
print(json.dumps({{"done": 1, "total": 9, "unit": "tiles"}}), file=sys.stderr, flush=True)
time.sleep(60)""")
    first = []
    start = time.monotonic()
    with pytest.raises(runner.Failed, match="canceled; no output was written"):
        runner.run(["enhance"], config, [str(out)], progress=first.append, canceled=lambda: bool(first))
    assert time.monotonic() - start < 10
    assert first == [100 / 9]
    assert not list(tmp_path.glob(".out.tif.*")) and not out.exists()
    assert runner.TEMP_SUFFIX == TEMP_SUFFIX  # the plugin's copy of how hires names its temporaries


def test_runner_missing_executable(tmp_path):
    with pytest.raises(runner.Failed, match="does not exist: run `hires qgis install` again"):
        runner.run(["enhance"], {"hires": str(tmp_path / "gone" / "hires")})
    with pytest.raises(runner.Failed, match="reinstall with `hires qgis install`"):
        runner.load_config(tmp_path / "hires.json")


@pytest.mark.parametrize("names", [
    ["B02", "B03", "B04", "B08"], ["B01", "B02", "B03", "B04", "B05", "B8A", "B12"],
    ["SR_B2", "SR_B3", "SR_B4", "SR_B5"], ["blue", "green", "red"], ["band 1", "band 2", "band 3"], ["B04", "B04", "B03", "B02"], ["x", "y", "z", "B04"]])
def test_true_colour_matches_core(names):
    """The plugin's band choice (QGIS's Python cannot import ours) is the product's, by name."""
    infos = [{"name": n, "colorinterp": "", "wavelength": None} for n in names]
    assert runner.true_colour(names) == true_colour_bands(infos)[0]
    assert runner.true_colour(names[:2]) is None


# ---------------------------------------------------------------- in a real QGIS


def _require_qgis():
    has_pyqgis = Path(SYSTEM_PYTHON).exists() and subprocess.run(
        [SYSTEM_PYTHON, "-c", "import qgis.core"], capture_output=True).returncode == 0
    if QGIS_PROCESS.exists() and has_pyqgis:
        return
    if os.environ.get("CI") == "true" or os.environ.get("HIRES_REQUIRE_QGIS"):
        pytest.fail("QGIS is required in CI (apt-get install qgis python3-qgis)")
    pytest.skip("QGIS not installed (apt-get install qgis python3-qgis)")


def _qgis_process(env, *args):
    proc = subprocess.run([str(QGIS_PROCESS), *map(str, args)], env=env, capture_output=True, text=True, timeout=180)
    return proc.returncode, proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def qgis(tmp_path_factory):
    """The plugin installed in a fresh profile, enabled and run by qgis_process and PyQGIS: what they said."""
    _require_qgis()
    tmp = tmp_path_factory.mktemp("qgis")
    root = tmp / "QGIS3"
    profile = root / "profiles" / "default"
    profile.mkdir(parents=True)
    plugins = install(profile).parent
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "QGIS_CUSTOM_CONFIG_PATH": str(root),
           "QGIS_PREFIX_PATH": "/usr", "XDG_RUNTIME_DIR": str(tmp)}
    heldout, scene = (Path(shutil.copy(p, tmp)) for p in (HELDOUT, SAMPLES / "s2_crop.tif"))  # QGIS may add .aux.xml
    lr = _area_down(heldout, tmp / "lr.tif", 4)
    one_band = _crop(heldout, tmp / "one_band.tif", 64, bands=[1])
    whole = tmp / "whole.tif"  # a GeoTIFF with its directory first, truncated: opens, pixels unreadable
    rio_shutil.copy(heldout, whole, driver="GTiff", compress="deflate")
    corrupt = tmp / "corrupt.tif"
    corrupt.write_bytes(whole.read_bytes()[: whole.stat().st_size * 6 // 10])
    found = {"tmp": tmp, "lr": lr, "enable": _qgis_process(env, "plugins", "enable", PLUGIN),
             "list": _qgis_process(env, "list"),
             "run": _qgis_process(env, "run", "hires:enhance", "--", f"INPUT={lr}", "MODEL=bicubic", "SCALE=4",
                                  f"OUTPUT={tmp / 'qp_x4.tif'}"),
             "run_bands": _qgis_process(env, "run", "hires:enhance", "--", f"INPUT={one_band}", "MODEL=s2-sr-x4",
                                        f"OUTPUT={tmp / 'qp_bands.tif'}"),
             "small": (small := _crop(heldout, tmp / "small.tif", 24)),
             "run_ldm": _qgis_process(env, "run", "hires:enhance", "--", f"INPUT={small}", "MODEL=s2-ldm-x4",
                                      "SAMPLES=2", "STEPS=4", "SEED=3", "STRENGTH=0.5",
                                      f"OUTPUT={tmp / 'qp_ldm.tif'}", f"UNCERTAINTY={tmp / 'qp_unc.tif'}")}
    spec = {
        "progress": {"INPUT": str(heldout), "MODEL": "bicubic", "SCALE": 2, "TILE": 64,
                     "OUTPUT": str(tmp / "progress.tif")},
        "cancel": {"INPUT": str(scene), "MODEL": "s2-sr-x4", "TILE": 64,
                   "OUTPUT": str(tmp / "cancel.tif")},
        "corrupt": {"INPUT": str(corrupt), "MODEL": "bicubic", "OUTPUT": str(tmp / "corrupt_x2.tif")},
        "evaluate": {"PREDICTION": str(tmp / "qp_x4.tif"), "REFERENCE": str(heldout),
                     "OUTPUT": str(tmp / "report.html"), "METRICS": str(tmp / "metrics.json")},
        "sharpen": {"INPUT": str(SAMPLES / "s2_product" / "s2_B02.jp2"), "MODEL": "s2-sharpen",
                    "OUTPUT": str(tmp / "sharpened.tif")},
        "missing_hires": str(tmp / "gone" / "hires"),
        "missing": {"INPUT": str(heldout), "MODEL": "bicubic", "OUTPUT": str(tmp / "missing.tif")},
    }
    (tmp / "spec.json").write_text(json.dumps(spec))
    proc = subprocess.run([SYSTEM_PYTHON, str(CHECKS), str(plugins), str(tmp / "spec.json")], env=env,
                          capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found.update(json.loads(proc.stdout.strip().splitlines()[-1]))
    return found


def _no_output(path: Path) -> bool:
    return not path.exists() and not list(path.parent.glob(f".{path.name}.*"))


def test_qgis_process_enables_lists_and_runs(qgis, tmp_path):
    code, text = qgis["enable"]
    assert code == 0 and "hires_qgis" in text, text
    code, text = qgis["list"]
    assert code == 0, text
    assert {"hires:enhance", "hires:evaluate", "hires:sharpen_s2"} <= set(text.split()), text
    assert "Enhance raster (super-resolution)" in text

    code, text = qgis["run"]
    assert code == 0, text
    expected = tmp_path / "cli_x4.tif"
    enhance_file(qgis["lr"], expected, Settings("bicubic", scale=4))
    with rasterio.open(qgis["tmp"] / "qp_x4.tif") as got, rasterio.open(expected) as want:
        assert got.crs == want.crs and got.transform == want.transform and got.descriptions == want.descriptions
        assert got.nodata == want.nodata and got.dtypes == want.dtypes
        np.testing.assert_array_equal(got.read(), want.read())

    code, text = qgis["run_bands"]
    assert code != 0 and "model 's2-sr-x4' takes 4 band(s), the input has 1" in text, text
    assert "Traceback" not in text and _no_output(qgis["tmp"] / "qp_bands.tif")


def test_diffusion_options_and_uncertainty_output(qgis, tmp_path, capsys):
    """Samples, steps, seed, repaint strength and the optional UNCERTAINTY output reach `hires enhance`:
    both files equal the CLI's."""
    code, text = qgis["run_ldm"]
    assert code == 0, text
    mean, unc = tmp_path / "mean.tif", tmp_path / "unc.tif"
    code, _, err = hires(capsys, "enhance", qgis["small"], mean, "--model", "s2-ldm-x4", "--samples", "2",
                         "--steps", "4", "--seed", "3", "--strength", "0.5", "--uncertainty", unc, "-q")
    assert code == 0, err
    for got, want in ((qgis["tmp"] / "qp_ldm.tif", mean), (qgis["tmp"] / "qp_unc.tif", unc)):
        with rasterio.open(got) as g, rasterio.open(want) as w:
            assert g.transform == w.transform and g.crs == w.crs
            np.testing.assert_array_equal(g.read(), w.read())
    with rasterio.open(unc) as f:
        assert f.read().max() > 0  # two samples differ: a real spread


def test_progress_and_true_colour_style(qgis):
    run = qgis["progress"]
    assert run["ok"], run["error"]
    values = run["progress"]
    assert len(values) >= 3 and values == sorted(set(values)) and values[-1] == 100, values
    style = qgis["style"]  # B02,B03,B04,B08: red B04 = band 3, green 2, blue 1; 2-98 % of each band
    assert style["renderer"] == "multibandcolor" and style["bands"] == [3, 2, 1] and style["cut"] == [0.02, 0.98]
    with rasterio.open(qgis["tmp"] / "progress.tif") as f:
        for band, (lo, hi) in zip(style["bands"], style["limits"]):
            data = f.read(band)
            want = np.percentile(data[data != f.nodata], [2, 98]) * f.scales[band - 1]
            assert np.allclose([lo, hi], want, atol=0.05 * (want[1] - want[0])), (band, lo, hi, want)


def test_cancel_ends_the_run_without_output(qgis):
    run = qgis["cancel"]
    assert not run["ok"] and run["error"] == "canceled; no output was written"
    assert len(run["progress"]) == 1 and run["canceled_after"] < 2.0, run
    assert _no_output(qgis["tmp"] / "cancel.tif")


def test_failures_are_one_line(qgis):
    for key, message in (("corrupt", "cannot read raster"), ("missing", "does not exist: run `hires qgis install`")):
        run = qgis[key]
        assert not run["ok"] and message in run["error"], run
        assert "\n" not in run["error"] and "Traceback" not in run["error"]
    assert _no_output(qgis["tmp"] / "corrupt_x2.tif") and _no_output(qgis["tmp"] / "missing.tif")


def test_evaluate_writes_report_and_metrics(qgis):
    run = qgis["evaluate"]
    assert run["ok"], run["error"]
    metrics = json.loads((qgis["tmp"] / "metrics.json").read_text())["metrics"]
    assert run["results"]["PSNR"] == pytest.approx(metrics["psnr"]["value"]) and 30 < metrics["psnr"]["value"] < 80
    assert run["results"]["SSIM"] == pytest.approx(metrics["ssim"]["value"])
    assert "<html" in (qgis["tmp"] / "report.html").read_text()[:500].lower()


def test_sharpen_s2_product(qgis):
    run = qgis["sharpen"]
    assert run["ok"], run["error"]
    with rasterio.open(qgis["tmp"] / "sharpened.tif") as f, \
            rasterio.open(SAMPLES / "s2_product" / "s2_B02.jp2") as b02:
        assert f.descriptions[:4] == ("B01", "B02", "B03", "B04") and f.count == 12
        assert f.shape == b02.shape and f.transform == b02.transform
    assert qgis["sharpen_style"]["bands"] == [4, 3, 2]
