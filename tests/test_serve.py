"""`hires serve`: the upscale API on a real server subprocess, real samples, tokens, limits, restarts."""

import io as _io
import os
import shutil
import signal
import sqlite3
import sys
import time
import zipfile

import numpy as np
import psutil
import pydicom
import pytest

from serve_support import SLOW, Server, crop_raster, pixels, serving, wait_running
from s2_support import CROP, make_l1c, zip_safe
from support import SAMPLES, fails, hires

from hires_domain.client import Client, ServerError
from hires_domain.errors import HiresError
from hires_domain.pipeline import Settings, enhance_file
from hires_domain.serve.security import hash_token, load_tokens
from hires_domain.serve.security import add_token

PATIENT = "SECRETNAME^TESTPATIENT"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve")
    tokens = tmp / "tokens"
    alice, bob = add_token(tokens, "alice"), add_token(tokens, "bob")
    root = tmp / "root"
    root.mkdir()
    shutil.copy(SAMPLES / "ct_head.nii.gz", root / "ct_head.nii.gz")
    (tmp / "outside.nii.gz").write_bytes((SAMPLES / "ct_head.nii.gz").read_bytes())
    crop_raster(SAMPLES / "s2_crop.tif", tmp / "crop64.tif", 64)
    # a DICOM series carrying a patient name, in its files and its zip member names
    zpath = tmp / "series.zip"
    with zipfile.ZipFile(zpath, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in sorted((SAMPLES / "ct_head_series").iterdir()):
            ds = pydicom.dcmread(f, force=True)
            ds.PatientName = PATIENT
            buf = _io.BytesIO()
            ds.save_as(buf)
            zf.writestr(f"{PATIENT}/{f.name}", buf.getvalue())
    server = Server(tmp, "--tokens", str(tokens), "--allow-root", str(root), "--max-upload", "3MiB",
                    "--jobs", "1")
    try:
        yield {"tmp": tmp, "server": server, "alice": Client(server.url, alice), "bob": Client(server.url, bob),
               "anon": Client(server.url), "root": root, "zip": zpath, "crop": tmp / "crop64.tif"}
    finally:
        server.kill()


def test_raster_upload_equals_cli_and_format_is_sniffed(env, tmp_path):
    c = env["alice"]
    renamed = tmp_path / "scene.nii.gz"  # the name lies: the content (a GeoTIFF) decides
    shutil.copy(SAMPLES / "s2_crop.tif", renamed)
    task = c.submit(renamed, model="bicubic", scale_factor=4, tile=64, overlap=16)
    status = c.wait(task, poll=0.2, timeout=120)
    assert status["input_kind"] == "raster" and status["output_format"] == "gtiff"
    p = status["progress"]
    assert p["done"] == p["total"] > 1 and p["unit"] == "tiles" and p["fraction"] == 1
    assert status["timings"]["running_s"] > 0 and status["error"] is None
    got = c.download(task, tmp_path / "got.tif")
    ref = enhance_file(SAMPLES / "s2_crop.tif", tmp_path / "ref.tif", Settings("bicubic", 4, 64, 16))
    assert ref.out_shape == (4, 1024, 1024)
    np.testing.assert_array_equal(pixels(got), pixels(tmp_path / "ref.tif"))
    for which in ("input", "result"):
        png = c.http.get(f"/v1/tasks/{task}/preview/{which}")
        assert png.status_code == 200 and png.content.startswith(b"\x89PNG")


def test_dicom_zip_to_derived_series_and_no_patient_name_logged(env, tmp_path):
    c = env["alice"]
    task = c.submit(env["zip"], model="bicubic", tile=64, overlap=16)
    status = c.wait(task, poll=0.2, timeout=120)
    assert status["output_format"] == "dicom-zip" and status["scale_factor"] == 2
    got = c.download(task, tmp_path / "got.zip")
    with zipfile.ZipFile(got) as zf:
        zf.extractall(tmp_path / "got")
    files = sorted((tmp_path / "got" / "series").iterdir())
    assert len(files) == 12
    derived = pydicom.dcmread(files[0])
    assert "DERIVED" in derived.ImageType and (derived.Rows, derived.Columns) == (256, 256)
    enhance_file(SAMPLES / "ct_head_series", tmp_path / "ref", Settings("bicubic", 2, 64, 16))
    np.testing.assert_array_equal(pixels(tmp_path / "got" / "series"), pixels(tmp_path / "ref"))
    # no patient identifier in the server's log or task store
    log = env["server"].text_log()
    assert f"task {task} done" in log
    assert "SECRETNAME" not in log
    db = sqlite3.connect(env["server"].data_dir / "tasks.sqlite3")
    assert "SECRETNAME" not in "\n".join(str(r) for r in db.execute("SELECT * FROM tasks"))


def test_source_under_allow_root_only(env, tmp_path):
    c = env["alice"]
    task = c.submit(source="ct_head.nii.gz", model="bicubic", tile=64, overlap=16)
    assert c.wait(task, poll=0.2, timeout=120)["output_format"] == "nifti"
    got = c.download(task, tmp_path / "got.nii.gz")
    enhance_file(SAMPLES / "ct_head.nii.gz", tmp_path / "ref.nii.gz", Settings("bicubic", 2, 64, 16))
    np.testing.assert_array_equal(pixels(got), pixels(tmp_path / "ref.nii.gz"))
    for bad in ("../outside.nii.gz", str(env["tmp"] / "outside.nii.gz"), "/etc/passwd"):
        with pytest.raises(ServerError, match="outside the allowed root") as e:
            c.submit(source=bad, model="bicubic")
        assert e.value.status == 400


def test_zipped_safe_upload_and_product_directory_source(env, tmp_path):
    """A zipped SAFE is uploaded as downloaded (read through /vsizip/, never unpacked) and a band
    directory under the root is a product source: both equal `hires enhance` on the same files."""
    c = env["alice"]
    safe = make_l1c(tmp_path)
    zpath = zip_safe(safe, tmp_path / "upload.bin")  # the name says nothing: the content decides
    task = c.submit(zpath, model="s2-sharpen")
    status = c.wait(task, poll=0.2, timeout=180)
    assert status["input_kind"] == "raster" and status["output_format"] == "gtiff"
    got = c.download(task, tmp_path / "got.tif")
    enhance_file(safe, tmp_path / "ref.tif", Settings("s2-sharpen", None))
    np.testing.assert_array_equal(pixels(got), pixels(tmp_path / "ref.tif"))
    assert not any(p.is_dir() for p in (env["server"].data_dir).rglob("*.SAFE"))
    for which in ("input", "result"):
        png = c.http.get(f"/v1/tasks/{task}/preview/{which}")
        assert png.status_code == 200 and png.content.startswith(b"\x89PNG")
    shutil.copytree(CROP, env["root"] / "bands")
    task = c.submit(source="bands", model="s2-sharpen")
    got = c.download(c.wait(task, poll=0.2, timeout=180) and task, tmp_path / "dir.tif")
    enhance_file(CROP, tmp_path / "ref_dir.tif", Settings("s2-sharpen", None))
    np.testing.assert_array_equal(pixels(got), pixels(tmp_path / "ref_dir.tif"))


@pytest.mark.parametrize("fields, message", [
    ({"model": "no-such-model"}, "unknown model 'no-such-model'; available: bicubic"),
    ({"model": "s2-sr-x4", "scale_factor": 3}, "model 's2-sr-x4' cannot do x3; it supports x4"),
    ({"model": "ct-sr-x2"}, "model 'ct-sr-x2' takes 1 band(s), the input has 4"),
    ({"model": "bicubic", "output_format": "nifti"}, "output_format 'nifti' does not fit a raster input"),
    ({"model": "bicubic", "steps": 5}, "diffusion-only option(s) given (steps)"),
    ({"model": "bicubic", "scale": 2}, "unknown field(s) scale"),
])
def test_bad_requests_are_one_line_json(env, fields, message):
    with pytest.raises(ServerError) as e:
        env["alice"].submit(env["crop"], **fields)
    assert e.value.status == 400 and message in str(e.value) and "\n" not in str(e.value)


def test_unsupported_and_corrupt_files(env, tmp_path):
    c = env["alice"]
    text = tmp_path / "notes.tif"
    text.write_text("not an image at all\n")
    truncated = tmp_path / "cut.tif"
    truncated.write_bytes((SAMPLES / "s2_crop.tif").read_bytes()[:4000])
    with pytest.raises(ServerError, match="unsupported or corrupt file"):
        c.submit(text, model="bicubic")
    with pytest.raises(ServerError, match="cannot read raster") as e:
        c.submit(truncated, model="bicubic")
    assert e.value.status == 400


def test_tokens_and_owners(env):
    a, b, anon = env["alice"], env["bob"], env["anon"]
    with pytest.raises(ServerError) as e:
        anon.submit(env["crop"], model="bicubic")
    assert e.value.status == 401
    task = a.submit(env["crop"], model="bicubic")
    for method, path in (("GET", ""), ("GET", "/result"), ("GET", "/preview/input"), ("DELETE", "")):
        r = b.http.request(method, f"/v1/tasks/{task}{path}")
        assert r.status_code == 404 and r.json()["error"] == f"no task {task}"
    a.wait(task, poll=0.2, timeout=120)
    assert a.cancel(task)["status"] == "deleted"
    with pytest.raises(ServerError):
        a.status(task)


def test_upload_limit_is_413(env, tmp_path):
    big = tmp_path / "big.tif"
    big.write_bytes((SAMPLES / "s2_crop.tif").read_bytes() * 11)  # 3.4 MB > 3 MiB
    with pytest.raises(ServerError, match="upload too large") as e:
        env["alice"].submit(big, model="bicubic")
    assert e.value.status == 413
    # chunked (no Content-Length): stopped once the bytes received pass the limit
    head = b'--zz\r\nContent-Disposition: form-data; name="file"; filename="a.tif"\r\n\r\n'
    chunks = (head if i == 0 else b"x" * 65536 for i in range(60))
    r = env["alice"].http.post("/v1/images/upscale", content=chunks,
                               headers={"Content-Type": "multipart/form-data; boundary=zz"})
    assert r.status_code == 413


def _zip(path, members):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members:
            zf.writestr(name, data)
    return path


def test_zip_bomb_and_traversal_refused(env, tmp_path):
    c = env["alice"]
    tasks = env["server"].data_dir / "tasks"
    before = set(tasks.iterdir())
    bomb = _zip(tmp_path / "bomb.zip", [(f"{i}.dcm", b"\0" * (8 << 20)) for i in range(3)])  # 24 MiB unpacked
    assert bomb.stat().st_size < 200_000
    with pytest.raises(ServerError, match="zip would unpack to 25165824 bytes, more than the limit"):
        c.submit(bomb, model="bicubic")
    dcm = (SAMPLES / "ct_head_series" / "CT00001.dcm").read_bytes()
    for name in ("../escape.dcm", "/abs/escape.dcm", "a/../../escape.dcm"):
        with pytest.raises(ServerError, match="unsafe path") as e:
            c.submit(_zip(tmp_path / "t.zip", [("ok.dcm", dcm), (name, dcm)]), model="bicubic")
        assert e.value.status == 400
    assert not list(env["tmp"].rglob("escape.dcm"))
    assert set(tasks.iterdir()) == before  # nothing kept from refused requests


def test_cancel_running_task_stops_and_deletes_files(env):
    c = env["alice"]
    task = c.submit(env["crop"], **SLOW)
    s = wait_running(c, task)
    assert s["progress"]["unit"] == "steps" and s["progress"]["total"] == 6
    r = c.http.get(f"/v1/tasks/{task}/result")
    assert r.status_code == 409 and "running" in r.json()["error"]
    assert c.cancel(task)["status"] == "cancelled"
    d = env["server"].data_dir / "tasks" / task
    end = time.monotonic() + 30
    while d.exists() and time.monotonic() < end:
        time.sleep(0.1)
    assert not d.exists()
    s = c.status(task)
    assert s["status"] == "cancelled" and s["progress"]["done"] < 6
    with pytest.raises(HiresError, match="cancelled"):
        c.wait(task)


def test_dead_worker_is_replaced_and_its_task_runs_again(env, tmp_path):
    c = env["alice"]
    crop = crop_raster(SAMPLES / "s2_crop.tif", tmp_path / "crop32.tif", 32)
    task = c.submit(crop, **SLOW)
    wait_running(c, task)
    db = sqlite3.connect(env["server"].data_dir / "tasks.sqlite3")
    worker = db.execute("SELECT worker FROM tasks WHERE id = ?", (task,)).fetchone()[0]
    os.kill(worker, signal.SIGKILL)  # as the kernel's OOM killer would
    s = c.wait(task, poll=0.2, timeout=180)
    assert s["progress"]["done"] == s["progress"]["total"] == 6
    assert db.execute("SELECT attempts, worker FROM tasks WHERE id = ?", (task,)).fetchone()[0] == 2
    assert f"worker {worker} died (exit code -9): 1 task(s) queued again" in env["server"].text_log()
    db.close()


@pytest.mark.slow
def test_sigterm_mid_task_requeues_without_counting(tmp_path):
    with serving(tmp_path) as (server, c, crop):
        task = c.submit(crop, **SLOW)
        wait_running(c, task)
        server.proc.send_signal(signal.SIGTERM)  # a clean stop: the task is queued again, not counted
        assert server.proc.wait(30) == 0
        server.proc = None
        assert "hires serve: stopped" in server.text_log()
        db = sqlite3.connect(server.data_dir / "tasks.sqlite3")
        assert db.execute("SELECT status, attempts FROM tasks WHERE id = ?", (task,)).fetchone() == ("queued", 0)
        db.close()
        server.start()
        assert c.wait(task, poll=0.2, timeout=180)["progress"]["done"] == 6


def test_sigkill_mid_task_then_restart_requeues(tmp_path, one_torch_thread):
    with serving(tmp_path) as (server, c, crop):
        task = c.submit(crop, **SLOW)
        wait_running(c, task)
        workers = psutil.Process(server.proc.pid).children()
        assert workers
        server.proc.send_signal(signal.SIGKILL)  # the server only: its workers notice and stop
        server.proc.wait(10)
        psutil.wait_procs(workers, timeout=30)
        assert not [w for w in workers if w.is_running()]
        d = server.data_dir / "tasks" / task
        assert not (d / "result.tif").exists() and not list(d.glob(".result.tif.*"))
        db = sqlite3.connect(server.data_dir / "tasks.sqlite3")
        assert db.execute("SELECT status FROM tasks WHERE id = ?", (task,)).fetchone()[0] == "running"
        db.close()
        server.start()  # the same data directory: the task is queued again and runs
        s = c.wait(task, poll=0.2, timeout=180)
        assert s["progress"]["done"] == s["progress"]["total"] == 6
        assert "queued again" in server.text_log()
        got = c.download(task, tmp_path / "got.tif")
        c.download(task, tmp_path / "got_unc.tif", "uncertainty")
        assert c.http.get(f"/v1/tasks/{task}/preview/uncertainty").content.startswith(b"\x89PNG")
        enhance_file(crop, tmp_path / "ref.tif", Settings(**SLOW), uncertainty=tmp_path / "ref_unc.tif")
        np.testing.assert_array_equal(pixels(got), pixels(tmp_path / "ref.tif"))
        np.testing.assert_array_equal(pixels(tmp_path / "got_unc.tif"), pixels(tmp_path / "ref_unc.tif"))


def test_cli_refusals_and_add_token(capsys, tmp_path):
    fails(capsys, "serve", "--host", "0.0.0.0", "--data-dir", tmp_path, match="refusing to serve 0.0.0.0 without --tokens")
    fails(capsys, "serve", "--add-token", "x y", "--tokens", tmp_path / "t", match="token name 'x y'")
    code, out, _ = hires(capsys, "serve", "--add-token", "carol", "--tokens", tmp_path / "t")
    token = out.strip()
    assert code == 0 and len(token) >= 40
    assert load_tokens(tmp_path / "t") == {hash_token(token): "carol"}
    assert token not in (tmp_path / "t").read_text()  # only its hash is stored
    fails(capsys, "serve", "--add-token", "carol", "--tokens", tmp_path / "t", match="already has a token named")


def test_without_the_serve_extra_one_line(capsys, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "fastapi", None)  # import fastapi now raises ImportError
    fails(capsys, "serve", "--data-dir", tmp_path, match="hires serve needs fastapi: pip install 'hires-domain[serve]'")


def test_source_directory_with_a_link_outside_the_root_is_refused(tmp_path):
    from hires_domain.errors import HiresError
    from hires_domain.serve.security import under_root

    root, outside = tmp_path / "root", tmp_path / "secret"
    (root / "series").mkdir(parents=True)
    outside.mkdir()
    (outside / "patient.dcm").write_bytes(b"x")
    shutil.copy(SAMPLES / "ct_head.nii.gz", root / "series" / "ok.nii.gz")
    assert under_root("series", root) == (root / "series").resolve()
    (root / "series" / "leak.dcm").symlink_to(outside / "patient.dcm")
    with pytest.raises(HiresError, match="links to files outside the allowed root"):
        under_root("series", root)
