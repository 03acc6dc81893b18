"""A real `hires dicom-node` subprocess, a real Orthanc PACS and dcmtk's storescu/echoscu as the
scanner, for tests/test_dicom_node.py. Without Orthanc/dcmtk/pynetdicom the tests skip, except
under CI (CI=true or HIRES_REQUIRE_ORTHANC set), where they fail."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REQUIRED = os.environ.get("CI", "").lower() not in ("", "0", "false") or bool(os.environ.get("HIRES_REQUIRE_ORTHANC"))


def require(ok: bool, what: str) -> None:
    if not ok:
        if REQUIRED:
            pytest.fail(f"{what} is required under CI but missing")
        pytest.skip(f"{what} missing")


def require_tools() -> None:
    missing = [t for t in ("Orthanc", "storescu", "echoscu") if shutil.which(t) is None]
    require(not missing, f"{', '.join(missing)} (apt-get install orthanc dcmtk)")


def require_pynetdicom() -> None:
    try:
        import pynetdicom  # noqa: F401
    except ImportError:
        require(False, "pynetdicom (pip install 'hires-domain[dicom-node]')")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(check, what: str, timeout: float = 60.0, every: float = 0.2):
    """Poll ``check()`` until it returns something truthy (returned) or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    pytest.fail(f"timed out after {timeout:g} s waiting for {what}")


class Orthanc:
    """Debian's Orthanc on free ports with a temporary storage, the node declared as a modality."""

    def __init__(self, tmp: Path, node_port: int, aet: str = "PACS"):
        self.dir = tmp / "orthanc"
        self.dir.mkdir()
        self.aet, self.port, self.http = aet, free_port(), free_port()
        self.config = self.dir / "config.json"
        self.config.write_text(json.dumps({
            "Name": "hires-test", "StorageDirectory": str(self.dir / "storage"),
            "IndexDirectory": str(self.dir / "index"), "HttpPort": self.http, "DicomPort": self.port,
            "DicomAet": aet, "RemoteAccessAllowed": False, "AuthenticationEnabled": False, "Plugins": [],
            "DicomModalities": {"hires": ["HIRES", "127.0.0.1", node_port]}}))
        self.proc = None

    def start(self) -> None:
        with open(self.dir / "orthanc.log", "ab") as log:
            self.proc = subprocess.Popen(["Orthanc", str(self.config)], stdout=log, stderr=subprocess.STDOUT)
        wait_for(lambda: self._alive(), "Orthanc to start", timeout=30)

    def _alive(self) -> bool:
        if self.proc.poll() is not None:
            pytest.fail(f"Orthanc exited: {(self.dir / 'orthanc.log').read_text()[-2000:]}")
        try:
            self.get("/system")
            return True
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(30)
            self.proc = None

    def get(self, path: str, raw: bool = False):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http}{path}", timeout=10) as r:
            body = r.read()
        return body if raw else json.loads(body)

    def series(self) -> list[dict]:
        """Every series Orthanc holds: its MainDicomTags, study's tags and instance ids."""
        out = []
        for sid in self.get("/series"):
            s = self.get(f"/series/{sid}")
            study = self.get(f"/studies/{s['ParentStudy']}")
            out.append({"uid": s["MainDicomTags"]["SeriesInstanceUID"], "tags": s["MainDicomTags"],
                        "study_uid": study["MainDicomTags"]["StudyInstanceUID"], "instances": s["Instances"]})
        return out

    def download(self, instances: list[str], out: Path) -> Path:
        out.mkdir(parents=True)
        for i, iid in enumerate(instances):
            (out / f"{i:03d}.dcm").write_bytes(self.get(f"/instances/{iid}/file", raw=True))
        return out


class Node:
    """``hires dicom-node`` on a free port with ARGS; ``kill()`` sends SIGKILL, ``start()`` restarts it."""

    def __init__(self, tmp: Path, *args: str, env: dict | None = None):
        self.port = free_port()
        self.data_dir = tmp / "node"
        self.stderr = tmp / "node-stderr.log"
        self.args = ["--aet", "HIRES", "--port", str(self.port), "--data-dir", str(self.data_dir), *args]
        self.env = {**os.environ, **(env or {})}
        self.proc = None

    def start(self) -> None:
        with open(self.stderr, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "hires_domain", "dicom-node", *self.args],
                                         stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True)
        wait_for(lambda: self._ready(), "the node to listen", timeout=90)

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            pytest.fail(f"node exited {self.proc.returncode}: {self.stderr.read_text()[-2000:]}")
        return echo(self.port, "CT1") == 0

    def kill(self, sig=signal.SIGKILL) -> None:
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass
            self.proc.wait(30)
            self.proc = None

    def series(self) -> list[dict]:
        from hires_domain.dicom_node.queue import Queue

        return Queue(self.data_dir).select()

    def one(self, status: str, **where) -> dict | None:
        """The series in ``status`` whose fields equal ``where`` (None while there is none)."""
        return next((s for s in self.series() if s["status"] == status
                     and all(s[k] == v for k, v in where.items())), None)

    def logs(self) -> str:
        return self.stderr.read_text(errors="replace") + (self.data_dir / "node.log").read_text(errors="replace")


def echo(port: int, aet: str) -> int:
    return subprocess.run(["echoscu", "-aet", aet, "-aec", "HIRES", "127.0.0.1", str(port)],
                          capture_output=True, timeout=30).returncode


def store(port: int, aet: str, *files: Path) -> subprocess.CompletedProcess:
    """storescu as a scanner: one association, going on after a refused instance (--no-halt)."""
    return subprocess.run(["storescu", "-v", "--no-halt", "-aet", aet, "-aec", "HIRES", "127.0.0.1", str(port),
                           *map(str, files)], capture_output=True, text=True, timeout=120)
