"""Interrupted runs: Ctrl-C and SIGTERM stop cleanly; a SIGKILLed run's temporary is cleaned later.

Real subprocesses (`python -m hires_domain`) stream a 1500x1500 4-band uint16 raster (the real
Sentinel-2 crop reflect-padded) x4, which runs for several seconds; the signal is sent once the
temporary output file has data in it.
"""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from hires_domain import pipeline
from hires_domain.io import common
from hires_domain.io.common import TEMP_SUFFIX, atomic_output, is_temporary, remove_stale_temporaries

from support import SAMPLES, fails, hires

pytestmark = [pytest.mark.timeout(180),
              pytest.mark.skipif(os.name != "posix", reason="POSIX signals and process ids")]
WAIT_S = 90  # bound on every wait for a subprocess (imports included)


@pytest.fixture(scope="module")
def big_raster(tmp_path_factory) -> Path:
    import rasterio

    path = tmp_path_factory.mktemp("big") / "big.tif"
    with rasterio.open(SAMPLES / "s2_crop.tif") as src:
        data = src.read()
        profile = {**src.profile, "width": 1500, "height": 1500, "tiled": True, "blockxsize": 256,
                   "blockysize": 256, "compress": "deflate"}
    data = np.pad(data, ((0, 0), (0, 1500 - data.shape[1]), (0, 1500 - data.shape[2])), mode="reflect")
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


def _start(src: Path, out: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "HIRES_DEBUG"}
    return subprocess.Popen([sys.executable, "-m", "hires_domain", "enhance", str(src), str(out),
                             "--model", "bicubic", "--scale", "4"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _temporaries(directory: Path, name: str) -> list[Path]:
    return [p for p in directory.iterdir() if p.name.startswith(f".{name}.") and p.name.endswith(TEMP_SUFFIX)]


def _wait_for_output_data(proc: subprocess.Popen, directory: Path, name: str) -> Path:
    """Block until the run is writing: its temporary output file holds data."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the run ended early: {proc.communicate()}"
        for tmp in _temporaries(directory, name):
            if any(f.is_file() and f.stat().st_size > 0 for f in tmp.rglob("*")):
                return tmp
        time.sleep(0.05)
    proc.kill()
    pytest.fail("the run never started writing")


@pytest.mark.parametrize("sig,code,message", [
    (signal.SIGINT, 130, "error: interrupted; no output was written"),
    (signal.SIGTERM, 143, "error: stopped by SIGTERM; no output was written"),
], ids=["SIGINT", "SIGTERM"])
def test_signal_stops_cleanly(big_raster, tmp_path, sig, code, message):
    out = tmp_path / "out.tif"
    proc = _start(big_raster, out)
    _wait_for_output_data(proc, tmp_path, out.name)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=WAIT_S)
    assert proc.returncode == code, stderr
    assert stderr.splitlines() == [message], repr(stderr)  # exactly one line: no traceback, no blank line
    assert stdout == ""
    assert list(tmp_path.iterdir()) == [], "output or temporary left behind"


def test_sigkill_leaves_a_temporary_the_next_run_removes(big_raster, tmp_path):
    out = tmp_path / "out.tif"
    proc = _start(big_raster, out)
    tmp = _wait_for_output_data(proc, tmp_path, out.name)
    proc.kill()  # SIGKILL: no handler, no finally
    proc.communicate(timeout=WAIT_S)
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists()
    assert tmp.is_dir() and str(proc.pid) in tmp.name  # what a killed run leaves: its own temporary

    # a temporary of a live process writing the same output is not touched
    live = tmp_path / f".out.tif.{common._owner_tag()}.livetmp1{TEMP_SUFFIX}"
    live.mkdir()
    small = tmp_path / "small" / "s2.tif"
    small.parent.mkdir()
    shutil.copy(SAMPLES / "s2_crop.tif", small)
    done = subprocess.run([sys.executable, "-m", "hires_domain", "enhance", str(small), str(out),
                           "--model", "bicubic", "--scale", "2", "-q"], capture_output=True, text=True, timeout=WAIT_S)
    assert done.returncode == 0, done.stderr
    assert out.is_file() and not tmp.exists() and live.is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, "out.tif", "small"])


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temporaries_only_of_dead_processes_on_this_host(tmp_path):
    host = common._owner_tag().split("-")[1]
    dead, live = _dead_pid(), os.getpid()
    names = {
        "dead": f".out.tif.{dead}-{host}.abc123{TEMP_SUFFIX}",
        "live": f".out.tif.{live}-{host}.abc123{TEMP_SUFFIX}",
        "other_host": f".out.tif.{dead}-00000000.abc123{TEMP_SUFFIX}",
        "other_output": f".out.tif.7.{dead}-{host}.abc123{TEMP_SUFFIX}",  # the temporary of 'out.tif.7'
        "old_format": f".out.tif.k2j3h4_x{TEMP_SUFFIX}",  # no owner recorded: left alone
    }
    if host == "00000000":
        pytest.skip("this host's tag collides with the test's foreign one")
    for name in names.values():
        (tmp_path / name / "out.tif").mkdir(parents=True)
    removed = remove_stale_temporaries(tmp_path / "out.tif")
    assert removed == [tmp_path / names["dead"]]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(v for k, v in names.items() if k != "dead")


def test_atomic_output_names_its_owner_and_cleans_up(tmp_path):
    dst = tmp_path / "x.nii.gz"
    with atomic_output(dst) as tmp:
        assert is_temporary(tmp) and f".x.nii.gz.{os.getpid()}-" in tmp.parent.name
        tmp.write_bytes(b"done")
    assert dst.read_bytes() == b"done" and list(tmp_path.iterdir()) == [dst]
    with pytest.raises(KeyboardInterrupt), atomic_output(dst):
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == [dst]


def test_stale_temporary_is_never_read_as_data(capsys, tmp_path):
    """A killed DICOM run's temporary (a half-written series) inside a directory given to `info`
    or `enhance` is skipped, alone it is 'no DICOM images'."""
    series = tmp_path / "series"
    shutil.copytree(SAMPLES / "ct_head_series", series)
    stale = series / f".derived.{_dead_pid()}-{common._owner_tag().split('-')[1]}.abc123{TEMP_SUFFIX}" / "derived"
    stale.mkdir(parents=True)
    import pydicom

    other = pydicom.dcmread(pydicom.data.get_testdata_file("CT_small.dcm"))
    other.save_as(stale / "IM00001.dcm")  # another series: would make the directory ambiguous
    code, out, err = hires(capsys, "info", series, "--json")
    assert code == 0, err
    assert '"slices": 12' in out and other.SeriesInstanceUID not in out

    only_stale = tmp_path / "only"
    shutil.copytree(stale.parent, only_stale / stale.parent.name)
    fails(capsys, "info", only_stale, match="no DICOM images")


def test_keyboard_interrupt_in_process(capsys, tmp_path, monkeypatch):
    """typer turns KeyboardInterrupt into a bare exit code in non-standalone mode: main() still
    prints the one line, and SIGINT (handled by main) gives the same."""
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "enhance_file", interrupted)
    code, out, err = hires(capsys, "enhance", SAMPLES / "s2_crop.tif", tmp_path / "o.tif", "-q")
    assert (code, err.splitlines(), out) == (130, ["error: interrupted; no output was written"], "")

    before = signal.getsignal(signal.SIGINT)

    def signalled(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(5)
        raise AssertionError("the signal did not stop the command")

    monkeypatch.setattr(pipeline, "enhance_file", signalled)
    code, out, err = hires(capsys, "enhance", SAMPLES / "s2_crop.tif", tmp_path / "o.tif", "-q")
    assert (code, err.splitlines()) == (130, ["error: interrupted; no output was written"])
    assert signal.getsignal(signal.SIGINT) is before  # main() puts the caller's handler back
    assert list(tmp_path.iterdir()) == []
