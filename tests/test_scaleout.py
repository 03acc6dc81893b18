"""Scale-out on Dask: `hires batch`, distributed `hires prepare`, one raster split into row bands,
and the fault cases (worker SIGKILL, scheduler unreachable, Ctrl-C, two runs on one out-dir).

One LocalCluster of 2 worker processes serves the module (its startup costs seconds); runs that
must own their cluster (Ctrl-C shuts it down) start one through `--jobs 2`. Inputs are the real
bundled Sentinel-2 crops, CT NIfTI and DICOM series.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
import yaml

from hires_domain.io.common import TEMP_SUFFIX
from hires_domain.pipeline import Settings, enhance_file

from support import DATA, S2_RECIPE, SAMPLES, fails, hires

pytest.importorskip("distributed")
pytestmark = [pytest.mark.timeout(240),
              pytest.mark.skipif(os.name != "posix", reason="POSIX signals, flock and process ids")]
WAIT_S = 120


def _pixels(path: Path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read()


def _temporaries(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith(TEMP_SUFFIX)]


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """in/a/x.tif, in/b/y.tif (Sentinel-2), in/b/ct.nii.gz, in/ser/ (DICOM series), in/a/bad.tif (junk)."""
    root = tmp_path_factory.mktemp("tree") / "in"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    shutil.copy(SAMPLES / "s2_crop.tif", root / "a" / "x.tif")
    shutil.copy(DATA / "s2_heldout_crop.tif", root / "b" / "y.tif")
    shutil.copy(SAMPLES / "ct_head.nii.gz", root / "b" / "ct.nii.gz")
    shutil.copytree(SAMPLES / "ct_head_series", root / "ser")
    (root / "a" / "bad.tif").write_bytes(b"not a raster")
    return root


def _run(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hires_domain", *map(str, args)], capture_output=True, text=True,
                          timeout=WAIT_S, **kw)


def test_batch_in_process_mirrors_the_tree_records_each_item_and_resumes(tree, tmp_path):
    out = tmp_path / "out"
    code = ("import sys; from hires_domain import cli; sys.argv = ['hires', 'batch', %r, '--out-dir', %r, '-q']\n"
            "try:\n    cli.main()\nexcept SystemExit as e:\n    print(e.code, 'distributed' in sys.modules, "
            "'dask' in sys.modules)" % (str(tree), str(out)))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=WAIT_S)
    summary, status = proc.stdout.strip().splitlines()
    assert status == "1 False False", proc.stdout + proc.stderr  # exit 1 (one failed), Dask never imported
    assert summary.startswith("batch: 4 ok, 1 failed, 0 skipped") and proc.stderr == ""
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.parent.name != "ser") == [
        ".hires-batch.lock", "a", "a/x.tif", "b", "b/ct.nii.gz", "b/y.tif", "results.jsonl", "ser"]
    assert len(list((out / "ser").glob("*.dcm"))) == len(list((tree / "ser").glob("*.dcm")))
    records = {Path(r["input"]).name: r for r in _records(out / "results.jsonl")}
    assert set(records) == {"x.tif", "y.tif", "ct.nii.gz", "ser", "bad.tif"}
    assert records["bad.tif"]["status"] == "failed" and "cannot read raster" in records["bad.tif"]["error"]
    assert "\n" not in records["bad.tif"]["error"]
    assert all(r["status"] == "ok" and r["seconds"] > 0 for k, r in records.items() if k != "bad.tif")
    with rasterio.open(tree / "a" / "x.tif") as src, rasterio.open(out / "a" / "x.tif") as dst:
        assert dst.shape == (src.height * 2, src.width * 2) and dst.crs == src.crs

    # again: refused (outputs exist); with --resume the 4 done are skipped, the bad one fails again
    again = _run("batch", tree, "--out-dir", out)
    assert again.returncode == 2 and again.stderr.startswith("error: 4 of 5 outputs exist already")
    mtime = (out / "a" / "x.tif").stat().st_mtime_ns
    resumed = _run("batch", tree, "--out-dir", out, "--resume")
    assert resumed.returncode == 1 and "batch: 0 ok, 1 failed, 4 skipped" in resumed.stdout
    assert (out / "a" / "x.tif").stat().st_mtime_ns == mtime
    statuses = [r["status"] for r in _records(out / "results.jsonl")]
    assert statuses.count("skipped") == 4 and statuses.count("failed") == 2
    assert _temporaries(out) == []


def test_batch_on_a_cluster_equals_in_process_and_reads_manifests(cluster, tree, tmp_path, capsys):
    address, _ = cluster
    manifest = tmp_path / "items.jsonl"
    manifest.write_text("\n".join(json.dumps(r) for r in [
        {"input": str(tree / "b" / "y.tif"), "output": "s2/x4.tif", "model": "s2-sr-x4"},
        {"input": str(tree / "a" / "x.tif"), "scale": 3},
        {"input": str(tree / "b" / "ct.nii.gz")}]))
    code, stdout, _ = hires(capsys, "batch", "--manifest", manifest, "--out-dir", tmp_path / "dask",
                            "--scheduler", address, "--tile", 64)
    assert code == 0, stdout
    assert f"worker(s) at {address}" in stdout and "batch: 3 ok, 0 failed, 0 skipped" in stdout
    for name, src, s in [("s2/x4.tif", "b/y.tif", Settings("s2-sr-x4", tile=64)),
                         ("x.tif", "a/x.tif", Settings("bicubic", 3, tile=64))]:
        ref = tmp_path / "ref" / name
        ref.parent.mkdir(parents=True, exist_ok=True)
        enhance_file(tree / src, ref, s)
        assert np.array_equal(_pixels(tmp_path / "dask" / name), _pixels(ref)), name
    import nibabel

    assert nibabel.load(tmp_path / "dask" / "ct.nii.gz").shape[:2] == tuple(
        2 * n for n in nibabel.load(tree / "b" / "ct.nii.gz").shape[:2])

    csv_manifest = tmp_path / "items.csv"
    csv_manifest.write_text(f"input,output\n{tree / 'a' / 'x.tif'},same.tif\n{tree / 'b' / 'y.tif'},same.tif\n")
    code, _, err = hires(capsys, "batch", "--manifest", csv_manifest, "--out-dir", tmp_path / "c", "--jobs", 2)
    assert code == 2 and err.strip().splitlines() == [
        f"error: outputs collide: {tree / 'a' / 'x.tif'} and {tree / 'b' / 'y.tif'} both map to "
        f"{tmp_path / 'c' / 'same.tif'}; rename one or list them in a --manifest with explicit outputs"]
    assert not (tmp_path / "c").exists()  # refused before anything ran


def test_unreachable_scheduler_is_one_line_naming_it(tree, tmp_path, capsys):
    line = fails(capsys, "batch", tree / "a" / "x.tif", "--out-dir", tmp_path / "o", "--scheduler",
                 "tcp://127.0.0.1:9", match="error: cannot reach the Dask scheduler at tcp://127.0.0.1:9 ")
    assert "Timed out" in line and not (tmp_path / "o").exists()


@pytest.fixture(scope="module")
def slow_inputs(tmp_path_factory) -> Path:
    """Three copies of a 384x384 reflect-padded real Sentinel-2 raster: ~1-2 s each at x4 bicubic."""
    root = tmp_path_factory.mktemp("slow")
    with rasterio.open(SAMPLES / "s2_crop.tif") as src:
        data, profile = src.read(), src.profile
    data = np.pad(data, ((0, 0), (0, 384 - data.shape[1]), (0, 384 - data.shape[2])), mode="reflect")
    profile.update(width=384, height=384)
    for k in range(3):
        with rasterio.open(root / f"s{k}.tif", "w", **profile) as dst:
            dst.write(data)
    return root


def _wait_for_temporary(proc: subprocess.Popen, out: Path) -> None:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        if out.is_dir() and any(f.is_file() and f.stat().st_size > 0 for t in _temporaries(out) for f in t.rglob("*")):
            return
        time.sleep(0.05)
    proc.kill()
    pytest.fail("the batch never started writing")


def _start(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "hires_domain", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_worker_killed_mid_run_the_batch_still_completes_every_output(cluster, slow_inputs, tmp_path):
    address, client = cluster
    out = tmp_path / "out"
    proc = _start("batch", slow_inputs, "--out-dir", out, "--scheduler", address, "--scale", 4, "-q")
    _wait_for_temporary(proc, out)
    victim = next(iter(client.run(os.getpid).values()))
    os.kill(victim, signal.SIGKILL)
    stdout, stderr = proc.communicate(timeout=WAIT_S)
    assert proc.returncode == 0, stderr
    ref = tmp_path / "ref.tif"
    enhance_file(slow_inputs / "s0.tif", ref, Settings("bicubic", 4))
    expected = _pixels(ref)
    for k in range(3):
        assert np.array_equal(_pixels(out / f"s{k}.tif"), expected)
    assert [r["status"] for r in _records(out / "results.jsonl")] == ["ok"] * 3
    assert _temporaries(out) == [], "a killed worker's temporary was left"
    client.wait_for_workers(2, timeout=60)  # the nanny restarted it


def test_ctrl_c_shuts_the_cluster_down_and_leaves_no_partial_output(slow_inputs, tmp_path):
    import psutil

    out = tmp_path / "out"
    proc = _start("batch", slow_inputs, "--out-dir", out, "--jobs", 2, "--scale", 4, "-q")
    _wait_for_temporary(proc, out)
    workers = psutil.Process(proc.pid).children(recursive=True)
    assert len(workers) >= 2
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=WAIT_S)
    assert proc.returncode == 130 and stderr.splitlines() == ["error: interrupted; no output was written"], stderr
    _, alive = psutil.wait_procs(workers, timeout=10)
    assert alive == [], "cluster processes outlived the run"
    assert _temporaries(out) == []
    for path in out.glob("*.tif"):  # items that finished (recorded or not: --resume skips them) are whole
        assert _pixels(path).shape == (4, 384 * 4, 384 * 4)


def test_two_runs_on_one_out_dir_the_second_refuses(slow_inputs, tmp_path, capsys):
    out = tmp_path / "out"
    first = _start("batch", slow_inputs, "--out-dir", out, "--scale", 4, "-q")
    _wait_for_temporary(first, out)
    code, _, err = hires(capsys, "batch", slow_inputs, "--out-dir", out, "--resume", "--scale", 4)
    assert code == 2 and err.strip().splitlines() == [
        f"error: another hires batch run (pid {first.pid}) is writing {out}: wait for it, or choose another --out-dir"]
    first.send_signal(signal.SIGINT)  # Ctrl-C of an in-process run: no partial output either
    first.communicate(timeout=WAIT_S)
    assert first.returncode == 130 and _temporaries(out) == []


def test_distributed_prepare_is_byte_identical(cluster, tmp_path, capsys):
    address, _ = cluster
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(S2_RECIPE))
    assert hires(capsys, "prepare", recipe, tmp_path / "one", "-q")[0] == 0
    code, stdout, _ = hires(capsys, "prepare", recipe, tmp_path / "many", "--scheduler", address)
    assert code == 0, stdout
    files = sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one").rglob("*.npz"))
    assert len(files) > 10
    assert files == sorted(p.relative_to(tmp_path / "many") for p in (tmp_path / "many").rglob("*.npz"))
    for f in files:
        assert (tmp_path / "one" / f).read_bytes() == (tmp_path / "many" / f).read_bytes(), f
    one, many = (json.loads((tmp_path / d / "manifest.json").read_text()) for d in ("one", "many"))
    assert one.pop("created") and many.pop("created")  # the only difference: when
    assert one == many


@pytest.mark.parametrize("model,tile,overlap,bands", [
    ("s2-sr-x4", 48, 12, 3), ("bicubic", 48, 12, 3),  # tile rows at 0, 36, 72, 108: bands decoded and rewritten
    ("s2-sr-x4", 64, 0, 2)])  # rows at 0, 64: bands on the output block grid, their compressed blocks adopted
def test_one_raster_split_into_row_bands_equals_a_single_run(cluster, model, tile, overlap, bands, tmp_path):
    from hires_domain.cluster.bands import enhance_bands

    _, client = cluster
    src = DATA / "s2_heldout_crop.tif"  # 128x128
    s = Settings(model, 4, tile=tile, overlap=overlap)
    enhance_file(src, tmp_path / "one.tif", s)
    summary = enhance_bands(src, tmp_path / "bands.tif", s, client, n_bands=3)
    assert len(summary.bands) == bands and summary.bands[0]["rows"][1] == summary.bands[1]["rows"][0]
    assert np.array_equal(_pixels(tmp_path / "bands.tif"), _pixels(tmp_path / "one.tif"))
    with rasterio.open(tmp_path / "one.tif") as a, rasterio.open(tmp_path / "bands.tif") as b:
        assert a.profile == b.profile and a.tags() == b.tags() and a.descriptions == b.descriptions
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bands.tif", "one.tif"]


def test_enhance_with_a_scheduler_writes_a_cog(cluster, tmp_path, capsys):
    address, _ = cluster
    code, stdout, _ = hires(capsys, "enhance", DATA / "s2_heldout_crop.tif", tmp_path / "o.tif", "--scale", 4,
                            "--tile", 32, "--cog", "--scheduler", address)
    assert code == 0 and "Dask worker(s)" in stdout
    enhance_file(DATA / "s2_heldout_crop.tif", tmp_path / "ref.tif", Settings("bicubic", 4, tile=32), cog=True)
    assert np.array_equal(_pixels(tmp_path / "o.tif"), _pixels(tmp_path / "ref.tif"))
    with rasterio.open(tmp_path / "o.tif") as ds:
        assert ds.overviews(1)  # a COG
    assert hires(capsys, "enhance", SAMPLES / "ct_head.nii.gz", tmp_path / "ct.nii.gz", "--scheduler", address)[0] == 2


def test_without_dask_the_cluster_options_ask_for_the_extra(tree, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)  # as if not installed: import fails
    fails(capsys, "batch", tree / "a" / "x.tif", "--out-dir", tmp_path / "o", "--jobs", 2,
          match="pip install 'hires-domain[cluster]'")
    fails(capsys, "enhance", tree / "a" / "x.tif", tmp_path / "x.tif", "--jobs", 2, match="hires-domain[cluster]")
    assert not (tmp_path / "o").exists() and not (tmp_path / "x.tif").exists()


def test_retries_cover_crashes_not_bad_inputs(tree, tmp_path, monkeypatch):
    from hires_domain import pipeline
    from hires_domain.cluster.batch import Options, discover, run_batch

    real, calls = pipeline.enhance_file, []

    def flaky(src, dst, *a, **kw):  # the first call of each input crashes (not a HiresError)
        calls.append(Path(src).name)
        if calls.count(Path(src).name) == 1:
            raise RuntimeError("worker hiccup")
        return real(src, dst, *a, **kw)

    monkeypatch.setattr(pipeline, "enhance_file", flaky)
    items = discover([str(tree / "a")], tmp_path / "none")  # x.tif and the junk bad.tif
    outcome = run_batch(items, tmp_path / "none", Options(), retries=0)
    assert (outcome.ok, outcome.failed) == (0, 2)
    assert {r["error"] for r in _records(tmp_path / "none" / "results.jsonl")} == {"RuntimeError: worker hiccup"}
    calls.clear()
    items = discover([str(tree / "a")], tmp_path / "retry")
    outcome = run_batch(items, tmp_path / "retry", Options(), retries=1)
    assert (outcome.ok, outcome.failed) == (1, 1) and sorted(calls) == ["bad.tif"] * 2 + ["x.tif"] * 2
    bad = next(r for r in _records(tmp_path / "retry" / "results.jsonl") if r["status"] == "failed")
    assert bad["error"].startswith("cannot read raster")  # tried again after the crash; a bad input is final
