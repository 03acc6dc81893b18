"""`hires serve`: the seed's JSON request (`source_image` as base64 or an allowed URL,
`enhance_face`, `strength`) and the OpenAPI contract, held to it by schemathesis with every check,
against a real server subprocess."""

import base64
import http.server
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from serve_support import Server, crop_raster, pixels
from support import SAMPLES

from hires_domain.client import Client
from hires_domain.pipeline import Settings, enhance_file
from hires_domain.serve import source_image
from hires_domain.serve.app import FIELDS, JSON_ONLY
from hires_domain.serve.security import TooLarge, add_token

CT = SAMPLES / "ct_lowdose.nii.gz"  # one real low-dose CT slice, for the x1 model ct-denoise
BIG = 4 << 20  # above the server's --max-upload 3MiB


class Files(http.server.BaseHTTPRequestHandler):
    """A tiny HTTP server's handler: /<name> serves a file of ``files``; /same and /away redirect
    to /crop.tif on 127.0.0.1 and on localhost; /big streams BIG bytes with no Content-Length;
    /slow waits before answering."""

    files: dict = {}
    port = 0

    def do_GET(self):
        name = self.path.lstrip("/")
        if name in ("same", "away"):
            host = "127.0.0.1" if name == "same" else "localhost"
            self.send_response(302)
            self.send_header("Location", f"http://{host}:{self.port}/crop.tif")
            self.end_headers()
        elif name == "big":  # HTTP/1.0, no Content-Length: the body ends when the connection closes
            self.send_response(200)
            self.end_headers()
            for _ in range(BIG // 65536):
                self.wfile.write(b"\0" * 65536)
        elif name == "slow":
            time.sleep(2)
            self.send_response(200)
            self.end_headers()
        elif name in self.files:
            data = self.files[name]
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        else:
            self.send_error(404)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("contract")
    tokens = tmp / "tokens"
    alice, fuzz = add_token(tokens, "alice"), add_token(tokens, "fuzz")
    (tmp / "root" / "scans").mkdir(parents=True)
    shutil.copy(CT, tmp / "root" / "scans" / "ct_lowdose.nii.gz")  # the OpenAPI example's `source`
    crop = crop_raster(SAMPLES / "s2_crop.tif", tmp / "crop32.tif", 32)
    Files.files = {"crop.tif": crop.read_bytes()}
    files = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Files)
    Files.port = files.server_address[1]
    threading.Thread(target=files.serve_forever, daemon=True).start()
    server = Server(tmp, "--tokens", str(tokens), "--allow-root", str(tmp / "root"), "--max-upload", "3MiB",
                    "--allow-url-host", "127.0.0.1,pacs.example.org", "--jobs", "1")
    try:
        yield {"tmp": tmp, "server": server, "c": Client(server.url, alice), "fuzz": fuzz, "crop": crop,
               "files": f"http://127.0.0.1:{Files.port}"}
    finally:
        server.kill()
        files.shutdown()


def _same_result(c, task: str, reference: str, tmp_path: Path) -> None:
    """Both tasks finish and their results (rasters) have the same pixels."""
    got, ref = (c.download(t, tmp_path / f"{t}.tif") for t in (task, reference)
                if c.wait(t, poll=0.2, timeout=120))
    np.testing.assert_array_equal(pixels(got), pixels(ref))


def test_the_seed_request_equals_the_multipart_upload(env, tmp_path):
    """The seed's literal body (base64, scale_factor 4, a model, enhance_face false) is queued
    ("queued", Location) and gives the multipart route's result for the same file."""
    c = env["c"]
    data = env["crop"].read_bytes()
    r = c.http.post("/v1/images/upscale", json={"source_image": base64.b64encode(data).decode(), "scale_factor": 4,
                                                "model": "s2-sr-x4", "enhance_face": False})
    assert r.status_code == 202 and set(r.json()) == {"task_id", "status"} and r.json()["status"] == "queued"
    assert r.headers["Location"] == f"/v1/tasks/{r.json()['task_id']}"
    upload = c.submit(env["crop"], model="s2-sr-x4", scale_factor=4)
    _same_result(c, r.json()["task_id"], upload, tmp_path)
    # a data: URL with MIME line breaks in its base64: the same
    text = base64.b64encode(data).decode()
    lines = "\r\n".join(text[i:i + 76] for i in range(0, len(text), 76))
    r = c.http.post("/v1/images/upscale", json={"source_image": f"data:image/tiff;base64,{lines}", "model": "s2-sr-x4"})
    assert r.status_code == 202, r.text
    _same_result(c, r.json()["task_id"], upload, tmp_path)


def test_strength_reaches_the_pipeline_base64_and_form(env, tmp_path):
    """strength 0.5 on ct-denoise (x1): the JSON number (client.submit_image, base64 bytes) and
    the form string give enhance_file's result with Settings(strength=0.5), not strength 1's."""
    c = env["c"]
    by_json = c.submit_image(CT.read_bytes(), model="ct-denoise", strength=0.5)
    by_form = c.submit(CT, model="ct-denoise", strength=0.5)  # sent as the form field "0.5"
    enhance_file(CT, tmp_path / "half.nii.gz", Settings("ct-denoise", None, strength=0.5))
    enhance_file(CT, tmp_path / "full.nii.gz", Settings("ct-denoise", None))
    half = pixels(tmp_path / "half.nii.gz")
    assert not np.array_equal(half, pixels(tmp_path / "full.nii.gz"))
    for task in (by_json, by_form):
        assert c.wait(task, poll=0.2, timeout=120)["input_kind"] == "nifti"
        np.testing.assert_array_equal(pixels(c.download(task, tmp_path / f"{task}.nii.gz")), half)


def test_url_source_fetched_from_allowed_hosts_and_redirects_within_them(env, tmp_path):
    c = env["c"]
    upload = c.submit(env["crop"], model="bicubic")
    for path in ("/crop.tif", "/same"):  # /same: a redirect to 127.0.0.1, which is allowed
        _same_result(c, c.submit_image(url=env["files"] + path, model="bicubic"), upload, tmp_path)


def _tasks(env) -> tuple[int, set]:
    db = sqlite3.connect(env["server"].data_dir / "tasks.sqlite3")
    try:
        rows = db.execute("SELECT COUNT(*) FROM tasks").fetchone()[0]
    finally:
        db.close()
    return rows, set((env["server"].data_dir / "tasks").iterdir())


TEXT = base64.b64encode(b"Patient notes, not an image\n" * 20).decode()


@pytest.mark.parametrize("body, status, message", [
    ({"source_image": TEXT}, 400, "unsupported or corrupt file"),
    ({"source_image": "this is not base64!"}, 400, "'source_image' is not valid base64"),
    ({"source_image": "data:image/tiff,AAAA"}, 400, "a data: URL in 'source_image' must be base64"),
    ({"source_image": "file:///etc/passwd"}, 400, "URLs must be http or https, not file:"),
    ({"source_image": "http://localhost:{port}/crop.tif"}, 400, "URL names host 'localhost', which is not in"),
    ({"source_image": "http://127.0.0.1:{port}/away"}, 400, "URL redirects to host 'localhost', which is not in"),
    ({"source_image": "http://127.0.0.1:{port}/missing"}, 400, "127.0.0.1 answered 404"),
    ({"source_image": "http://127.0.0.1:{port}/big"}, 413, "the image at the URL is larger than the limit of 3145728"),
    ({"source_image": "A" * BIG}, 413, "upload too large: the limit is 3145728 bytes"),
    ({"source_image": TEXT, "scale": 4}, 400, "unknown field(s) scale; known: source, source_image, enhance_face"),
    ({"source_image": TEXT, "enhance_face": True}, 400,
     "face restoration is for photographs of people, and this service enhances CT/MR volumes"),
    ({"source_image": TEXT, "enhance_face": "no"}, 400, "'enhance_face' must be true or false"),
    ({"source_image": TEXT, "source": "scans/ct_lowdose.nii.gz"}, 400, "either 'source_image'"),
    ({"model": "bicubic"}, 400, "a JSON request needs either 'source_image'"),
    ({"source_image": TEXT, "strength": "0.5"}, 400, "field 'strength' must be a number, got '0.5'"),
    ({"source": "scans/ct_lowdose.nii.gz", "model": "ct-denoise", "strength": 1.5}, 400, "strength must be from 0 to 1"),
    ({"source": "scans/ct_lowdose.nii.gz", "scale_factor": "2"}, 400, "field 'scale_factor' must be an integer"),
])
def test_bad_json_requests_are_one_line_4xx_and_leave_nothing(env, body, status, message):
    body = {k: v.format(port=Files.port) if isinstance(v, str) and "{port}" in v else v for k, v in body.items()}
    before = _tasks(env)
    r = env["c"].http.post("/v1/images/upscale", json=body)
    assert r.status_code == status, r.text
    assert list(r.json()) == ["error"] and message in r.json()["error"] and "\n" not in r.json()["error"]
    assert _tasks(env) == before  # nothing queued, no task directory left


def test_source_path_still_works_and_processing_is_a_running_word(env, monkeypatch):
    c = env["c"]
    task = c.submit(source="scans/ct_lowdose.nii.gz", model="ct-denoise")
    assert c.wait(task, poll=0.2, timeout=120)["status"] == "done"
    # a server speaking the seed's vocabulary: 'processing' means wait, like queued and running
    answers = iter(["processing", "processing", "done"])
    monkeypatch.setattr(Client, "status", lambda self, t: {"status": next(answers), "error": None})
    assert c.wait("x", poll=0)["status"] == "done"


def test_fetch_stops_at_the_timeout_and_the_byte_cap(env, tmp_path):
    hosts = frozenset({"127.0.0.1"})
    t = time.monotonic()
    with pytest.raises(source_image.HiresError, match="127.0.0.1 did not answer within 0.5 s"):
        source_image.fetch(env["files"] + "/slow", tmp_path / "x", hosts, 1 << 20, timeout=0.5)
    assert time.monotonic() - t < 1.9
    with pytest.raises(TooLarge, match="larger than the limit of 1000 bytes"):
        source_image.fetch(env["files"] + "/big", tmp_path / "x", hosts, 1000)
    with pytest.raises(TooLarge, match=r"is \d+ bytes, above the limit of 1000"):  # by Content-Length
        source_image.fetch(env["files"] + "/crop.tif", tmp_path / "x", hosts, 1000)
    assert source_image.parse_hosts(["a.example.org, 127.0.0.1", "[::1]", "B.example.org."]) == \
        {"a.example.org", "127.0.0.1", "::1", "b.example.org"}
    with pytest.raises(source_image.HiresError, match="give a host name or an IP address"):
        source_image.parse_hosts(["https://a.example.org:8443/"])


def test_openapi_declares_every_status_and_the_json_form(env):
    doc = httpx.get(env["server"].url + "/openapi.json").json()
    assert "HTTPValidationError" not in json.dumps(doc)  # request errors are 400, declared as such
    expected = {("post", "/v1/images/upscale"): {"202", "400", "401", "413", "415", "429"},
                ("get", "/v1/tasks/{task_id}"): {"200", "401", "404"},
                ("delete", "/v1/tasks/{task_id}"): {"200", "401", "404"},
                ("get", "/v1/tasks/{task_id}/result"): {"200", "401", "404", "409"},
                ("get", "/v1/tasks/{task_id}/uncertainty"): {"200", "401", "404", "409"},
                ("get", "/v1/tasks/{task_id}/preview/{which}"): {"200", "400", "401", "404"},
                ("get", "/v1/models"): {"200", "401"}, ("get", "/v1/health"): {"200"}}
    got = {(m, p): set(op["responses"]) for p, ops in doc["paths"].items() for m, op in ops.items()}
    assert got == expected
    for (m, p), codes in expected.items():
        for code in codes - {"200", "202"}:
            ref = doc["paths"][p][m]["responses"][code]["content"]["application/json"]["schema"]["$ref"]
            assert ref == "#/components/schemas/Error"
    assert doc["components"]["schemas"]["Error"]["properties"] == {"error": {"type": "string", "title": "Error",
                                                                             "description": "one line a person understands"}}
    body = doc["components"]["schemas"]["UpscaleJson"]
    assert body["additionalProperties"] is False
    assert set(body["properties"]) == {*JSON_ONLY, *FIELDS}  # the schema names what the server reads
    assert set(doc["components"]["schemas"]["UpscaleForm"]["properties"]) == {"file", *FIELDS}
    assert {"source", "source_image", "enhance_face", "strength", "model", "scale_factor"} <= set(body["properties"])
    assert body["properties"]["enhance_face"]["enum"] == [False]
    assert "ct-denoise" in body["properties"]["model"]["enum"]
    r = env["c"].http.request("OPTIONS", "/v1/tasks/abc")
    assert r.status_code == 405 and r.headers["Allow"] == "GET, DELETE" and "error" in r.json()


def test_schemathesis_every_check_is_clean(env, tmp_path):
    """`st run` with every check (examples, coverage, fuzzing and stateful phases; 25 examples per
    operation; a fixed seed, HIRES_FUZZ_SEED to try another) against the running server, with a
    token. The two narrowed checks are in tests/schemathesis.toml with the reason for each."""
    pytest.importorskip("schemathesis")
    seed = os.environ.get("HIRES_FUZZ_SEED", "20261207")
    cmd = [str(Path(sys.executable).with_name("st")), "--config-file", str(Path(__file__).with_name("schemathesis.toml")),
           "run", env["server"].url + "/openapi.json", "--max-examples", "25", "--seed", seed,
           "--workers", "1", "--generation-database", "none", "--request-timeout", "20", "--no-color",
           "-H", f"Authorization: Bearer {env['fuzz']}"]
    started = time.monotonic()
    r = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=180)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-6000:]
    assert "Tested: 8" in out and "failure" not in out.split("SUMMARY")[-1].lower(), out[-3000:]
    assert time.monotonic() - started < 90
