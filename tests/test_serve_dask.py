"""`hires serve --scheduler ADDR`: tasks run on a real Dask cluster (a LocalCluster of worker
processes sharing the data directory), with cancel and a server restart mid-task."""

from __future__ import annotations

import os
import signal
import sqlite3
import time

import numpy as np
import pytest

from serve_support import SLOW, pixels, serving, wait_running
from support import fails

from hires_domain.io.common import TEMP_SUFFIX
from hires_domain.pipeline import Settings, enhance_file

pytest.importorskip("distributed")


def _idle(client, timeout: float = 60) -> None:
    """No task of ours left on the cluster (a stopped execution has returned)."""
    end = time.monotonic() + timeout
    while client.processing() and any(client.processing().values()) and time.monotonic() < end:
        time.sleep(0.2)
    assert not any(client.processing().values())


@pytest.fixture
def served(cluster, tmp_path, one_torch_thread):
    """A server on the cluster, its client and a 32² crop of the real Sentinel-2 sample."""
    with serving(tmp_path, "--scheduler", cluster[0]) as served:
        yield served


def test_tasks_run_on_the_cluster_and_equal_the_cli(cluster, served, tmp_path):
    (address, client), (server, c, crop) = cluster, served
    tasks = {m: c.submit(crop, model=m, scale_factor=4) for m in ("bicubic", "s2-sr-x4", "lanczos")}
    for model, task in tasks.items():
        s = c.wait(task, poll=0.2, timeout=180)
        assert s["progress"]["done"] == s["progress"]["total"] >= 1
        got = c.download(task, tmp_path / f"{model}.tif")
        enhance_file(crop, tmp_path / f"ref-{model}.tif", Settings(model, 4))
        np.testing.assert_array_equal(pixels(got), pixels(tmp_path / f"ref-{model}.tif"))
    assert "2 Dask worker(s) at " + address in server.text_log()
    task = c.submit(crop, **SLOW)  # cancel while it runs on a worker: it stops, its files go
    wait_running(c, task)
    assert c.cancel(task)["status"] == "cancelled"
    _idle(client)
    assert not (server.data_dir / "tasks" / task).exists()
    assert c.status(task)["status"] == "cancelled" and c.status(task)["progress"]["done"] < 6


def test_server_killed_mid_task_then_restarted_runs_it_once_more(cluster, served, tmp_path):
    (_, client), (server, c, crop) = cluster, served
    task = c.submit(crop, **SLOW)
    wait_running(c, task)
    pids = list(client.run(os.getpid).values())
    for pid in pids:  # hold the workers, so that the old execution cannot finish meanwhile
        os.kill(pid, signal.SIGSTOP)
    try:
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait(10)
        server.start()  # recovery takes the claim back: the old execution stops, a new one runs
        end = time.monotonic() + 60
        while "queued again" not in server.text_log() and time.monotonic() < end:
            time.sleep(0.2)
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
    assert "queued again" in server.text_log() and "2 worker(s) did not answer within" in server.text_log()
    s = c.wait(task, poll=0.2, timeout=180)
    assert s["progress"]["done"] == s["progress"]["total"] == 6
    db = sqlite3.connect(server.data_dir / "tasks.sqlite3")
    assert db.execute("SELECT attempts FROM tasks WHERE id = ?", (task,)).fetchone()[0] == 2
    db.close()
    got = c.download(task, tmp_path / "got.tif")
    c.download(task, tmp_path / "unc.tif", "uncertainty")
    enhance_file(crop, tmp_path / "ref.tif", Settings(**SLOW))
    np.testing.assert_array_equal(pixels(got), pixels(tmp_path / "ref.tif"))
    _idle(client)
    d = server.data_dir / "tasks" / task
    assert not [p for p in d.rglob("*") if p.name.endswith(TEMP_SUFFIX)]  # the stopped run left nothing


def test_scheduler_refusals_are_one_line(capsys, tmp_path):
    fails(capsys, "serve", "--scheduler", "tcp://127.0.0.1:9", "--data-dir", tmp_path / "d",
          match="cannot reach the Dask scheduler at tcp://127.0.0.1:9")
    fails(capsys, "serve", "--scheduler", "tcp://127.0.0.1:9", "--jobs", "2", "--data-dir", tmp_path / "d",
          match="give --jobs (a local cluster) or --scheduler (an existing one), not both")
